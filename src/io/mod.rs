//! File-descriptor readiness for the loop, owned here and nowhere else: the registrations
//! (`add_reader`/`add_writer` callbacks and native engines), the edge-to-level bridge, the
//! wake-up of a parked loop, and the fd rules (which errno means "wait", `poll(2)` probes).
//!
//! The loop holds the [`IoDriver`] and calls its registry's dispatch once per turn; a transport
//! engine holds an [`IoHandle`] and implements [`Engine`]. `recv` is the one read transports
//! and sock_recv share; `fdio` picks the syscalls by descriptor kind; `reactor_probe` tells a
//! busy turn whether the reactor has anything waiting. Submodules are private: what others
//! may touch is re-exported below.

mod buffer;
mod engine;
mod fdio;
mod fdstate;
mod handle;
mod handoff;
mod park_timer;
mod reactor_probe;
mod recv;
mod registry;
mod wake;

#[cfg(test)]
mod tests;

pub(crate) use buffer::BufferView;
pub(crate) use engine::{Engine, EngineRef};
pub(crate) use fdio::{retry_interrupted, FdKind};
pub(crate) use fdstate::{hung_up, level_ready, would_block};
pub(crate) use handle::{IoDriver, IoHandle, IoPort};
pub(crate) use handoff::Handoff;
pub(crate) use park_timer::ParkTimer;
pub(crate) use reactor_probe::{find_reactor_fd, has_events};
pub(crate) use recv::{recv_bytes, recv_with, recvfrom_with, Received, BUFFER_SIZE, LARGE_READ};
pub(crate) use registry::{Fired, Target};
pub(crate) use wake::Wake;

/// One direction of a descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    Read,
    Write,
}
