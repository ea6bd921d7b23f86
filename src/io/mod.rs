//! File-descriptor readiness for the loop: `add_reader`/`add_writer` registrations.
//!
//! Native transports register here too; the turn in `event_loop` calls
//! [`registry::Registry::dispatch`] once per turn to queue the callbacks of ready fds.
//! `recv` is the one read that transports and sock_recv share; `fdio` picks the syscalls
//! by descriptor kind (socket or pipe); `reactor_probe` tells a busy turn whether the reactor
//! has anything waiting.

pub mod fdio;
pub mod reactor_probe;
pub mod recv;
pub mod registry;
