//! One tokio `AsyncFd` per watched descriptor, presented to Python with selector semantics.
//!
//! tokio's readiness is edge-driven; asyncio's selectors are level-triggered: a reader whose
//! data was not all consumed is called again next turn. We bridge the two here. A fresh edge
//! (our per-fd waker fired during the last reactor poll) queues the callback at once and marks
//! the direction "hot". Next turn a hot direction is checked with a zero-timeout `poll(2)`:
//! still ready, the callback is queued again; not ready, tokio's readiness is cleared — which
//! its tick check makes race-free, since the reactor cannot run while we hold the turn — and
//! the waker is re-armed for the next edge.
//!
//! The wakers hold only Rust data (fd, registration id, an `Arc` of notices), so they may fire
//! while the loop thread is parked without the GIL. The registry is owned by the loop and only
//! touched with the GIL held; Python handles leave it only as new references.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake as TaskWake, Waker};

use parking_lot::Mutex;
use pyo3::prelude::*;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::event_loop::wake::Wake;
use crate::handles::Handle;

/// A descriptor we watch but do not own: the Python side opened it and will close it.
pub struct Watched(RawFd);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    Read,
    Write,
}

/// What the reactor's wakers report: (fd, registration id, direction) that saw an edge.
pub struct Notices {
    edges: Mutex<Vec<(RawFd, u64, Direction)>>,
    /// Set when an edge arrives or a direction turns hot: lets the turn skip the registry
    /// entirely (no lock) while nothing fd-related is pending, the common case.
    pending: Arc<AtomicBool>,
    wake: Arc<Wake>,
}

struct FdWaker {
    fd: RawFd,
    id: u64,
    direction: Direction,
    notices: Arc<Notices>,
}

impl TaskWake for FdWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notices.edges.lock().push((self.fd, self.id, self.direction));
        self.notices.pending.store(true, Ordering::Release);
        self.notices.wake.notify();
    }
}

/// One direction of one descriptor: the callback and whether it fired last turn.
struct Interest1 {
    handle: Option<Py<Handle>>,
    hot: bool,
    /// The dispatch round that last looked at this direction (no double queueing per turn).
    checked_round: u64,
    waker: Waker,
}

struct Registration {
    id: u64,
    fd: AsyncFd<Watched>,
    read: Interest1,
    write: Interest1,
}

impl Registration {
    fn side(&mut self, direction: Direction) -> &mut Interest1 {
        match direction {
            Direction::Read => &mut self.read,
            Direction::Write => &mut self.write,
        }
    }
}

pub struct Registry {
    fds: HashMap<RawFd, Registration>,
    /// Directions to re-check next turn (may hold stale entries; `hot` is the truth).
    hot: Vec<(RawFd, Direction)>,
    round: u64,
    next_id: u64,
    notices: Arc<Notices>,
}

impl Registry {
    pub fn new(wake: Arc<Wake>) -> Self {
        Registry {
            fds: HashMap::new(),
            hot: Vec::new(),
            round: 0,
            next_id: 1,
            notices: Arc::new(Notices {
                edges: Mutex::new(Vec::new()),
                pending: Arc::new(AtomicBool::new(false)),
                wake,
            }),
        }
    }

    /// Sets the callback for one direction of `fd`, returning the one it replaces.
    /// Must be called inside the loop's runtime context (registration needs its reactor).
    pub fn set(
        &mut self,
        fd: RawFd,
        direction: Direction,
        handle: Py<Handle>,
    ) -> std::io::Result<Option<Py<Handle>>> {
        if !self.fds.contains_key(&fd) {
            let id = self.next_id;
            self.next_id += 1;
            // SAFETY: asyncio's contract for add_reader/add_writer is that the caller keeps the
            // descriptor open until it removes the callback; remove_* (or loop close) drops this
            // AsyncFd, deregistering it, before a well-behaved caller closes the fd. A caller
            // that closes first gets what selectors give: the kernel already forgot the fd, and
            // the deregistration fails harmlessly.
            let fd_watch = unsafe {
                AsyncFd::register_with_interest(Watched(fd), Interest::READABLE | Interest::WRITABLE)
            }
            .map_err(|e| e.into_parts().1)?;
            let waker_for = |direction| {
                Waker::from(Arc::new(FdWaker {
                    fd,
                    id,
                    direction,
                    notices: self.notices.clone(),
                }))
            };
            let registration = Registration {
                id,
                fd: fd_watch,
                read: Interest1 {
                    handle: None,
                    hot: false,
                    checked_round: 0,
                    waker: waker_for(Direction::Read),
                },
                write: Interest1 {
                    handle: None,
                    hot: false,
                    checked_round: 0,
                    waker: waker_for(Direction::Write),
                },
            };
            self.fds.insert(fd, registration);
        }
        let Some(registration) = self.fds.get_mut(&fd) else {
            return Ok(None);
        };
        let side = registration.side(direction);
        // Readiness may predate this callback: check it on the next turn.
        if !side.hot {
            side.hot = true;
            self.hot.push((fd, direction));
            self.notices.pending.store(true, Ordering::Release);
        }
        Ok(side.handle.replace(handle))
    }

    /// Removes one direction's callback — only if it is `expected`, when given — and drops the
    /// registration once neither direction is left.
    pub fn remove(
        &mut self,
        fd: RawFd,
        direction: Direction,
        expected: Option<&Py<Handle>>,
    ) -> Option<Py<Handle>> {
        let registration = self.fds.get_mut(&fd)?;
        let side = registration.side(direction);
        if let (Some(expected), Some(current)) = (expected, side.handle.as_ref()) {
            if !expected.is(current) {
                return None;
            }
        }
        side.hot = false;
        let old = side.handle.take();
        if registration.read.handle.is_none() && registration.write.handle.is_none() {
            self.fds.remove(&fd);
        }
        old
    }

    /// (readers, writers) currently registered.
    pub fn counts(&self) -> (usize, usize) {
        let readers = self.fds.values().filter(|r| r.read.handle.is_some()).count();
        let writers = self.fds.values().filter(|r| r.write.handle.is_some()).count();
        (readers, writers)
    }

    pub fn references(&self) -> impl Iterator<Item = &Py<Handle>> {
        self.fds
            .values()
            .flat_map(|r| r.read.handle.iter().chain(r.write.handle.iter()))
    }

    /// Forgets every registration (loop close); the caller drops the handles outside its lock.
    pub fn drain(&mut self) -> Vec<Py<Handle>> {
        let mut handles = Vec::new();
        self.hot.clear();
        for (_, mut registration) in self.fds.drain() {
            handles.extend(registration.read.handle.take());
            handles.extend(registration.write.handle.take());
        }
        handles
    }

    /// Queues (as new references) the callbacks of every direction that is ready now.
    /// Hot directions are re-checked first; fresh edges then cover the rest, so no callback
    /// is queued twice in one turn.
    pub fn dispatch(&mut self, py: Python<'_>, out: &mut Vec<Py<Handle>>) {
        self.round += 1;
        let round = self.round;
        let previously_hot = std::mem::take(&mut self.hot);
        for (fd, direction) in previously_hot {
            if let Some(registration) = self.fds.get_mut(&fd) {
                let side = registration.side(direction);
                if side.hot && side.checked_round != round {
                    side.checked_round = round;
                    if Self::check(py, registration, direction, false, out) {
                        self.hot.push((fd, direction));
                    }
                }
            }
        }
        let edges = std::mem::take(&mut *self.notices.edges.lock());
        for (fd, id, direction) in edges {
            if let Some(registration) = self.fds.get_mut(&fd) {
                let same_registration = registration.id == id;
                let side = registration.side(direction);
                if same_registration && !side.hot && side.checked_round != round {
                    side.checked_round = round;
                    if Self::check(py, registration, direction, true, out) {
                        self.hot.push((fd, direction));
                    }
                }
            }
        }
        // Wakers fire only inside the reactor, on this thread, never during a dispatch.
        self.notices
            .pending
            .store(!self.hot.is_empty(), Ordering::Release);
    }

    /// The flag that is true while the next dispatch may queue something (an edge arrived or
    /// a direction is hot); readable without taking the registry's lock.
    pub fn pending_flag(&self) -> Arc<AtomicBool> {
        self.notices.pending.clone()
    }

    /// Decides one direction's readiness this turn and queues its callback if ready.
    /// `fresh`: an edge arrived since the last check, so tokio's readiness is current;
    /// otherwise the direction fired last turn and only `poll(2)` can tell if it still holds.
    fn check(
        py: Python<'_>,
        registration: &mut Registration,
        direction: Direction,
        fresh: bool,
        out: &mut Vec<Py<Handle>>,
    ) -> bool {
        let Registration { fd, read, write, .. } = registration;
        let side = match direction {
            Direction::Read => read,
            Direction::Write => write,
        };
        let Some(handle) = side.handle.as_ref() else {
            side.hot = false;
            return false;
        };
        let waker = side.waker.clone();
        let mut cx = Context::from_waker(&waker);
        let poll = match direction {
            Direction::Read => fd.poll_read_ready(&mut cx),
            Direction::Write => fd.poll_write_ready(&mut cx),
        };
        let ready = match poll {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(_)) if fresh => true,
            Poll::Ready(Ok(mut guard)) => {
                if level_ready(fd.as_raw_fd(), direction) {
                    true
                } else {
                    guard.clear_ready();
                    match direction {
                        Direction::Read => fd.poll_read_ready(&mut cx).is_ready(),
                        Direction::Write => fd.poll_write_ready(&mut cx).is_ready(),
                    }
                }
            }
        };
        side.hot = ready;
        if ready {
            out.push(handle.clone_ref(py));
        }
        ready
    }
}

/// Zero-timeout `poll(2)`: is the descriptor ready in `direction` right now?
fn level_ready(fd: RawFd, direction: Direction) -> bool {
    let events = match direction {
        Direction::Read => libc::POLLIN,
        Direction::Write => libc::POLLOUT,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout; poll only reads the descriptor number.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (events | libc::POLLERR | libc::POLLHUP) != 0
}
