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
//! A native transport engine registers its socket here too, as a [`Target::Engine`]. It keeps
//! tokio's edge semantics instead: an edge queues the engine's read or write, and the engine
//! itself re-arms the direction ([`Registry::rearm`]) once its syscall showed the socket
//! drained — or asks to look again next turn ([`Registry::again`]) when it did not — so no
//! `poll(2)` is spent on it. The registry knows engines only through [`EngineRef`].
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

use super::fdstate::{error_pending, level_ready};
use super::{Direction, EngineRef, Wake};
use crate::handles::Handle;

/// A descriptor we watch but do not own: the Python side opened it and will close it.
pub struct Watched(RawFd);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
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
        self.notices.pending.store(true, Ordering::SeqCst);
        self.notices.wake.notify();
    }
}

/// Who is told when a direction of a descriptor is ready.
pub enum Target {
    /// An `add_reader`/`add_writer` callback, queued as a handle (level-triggered).
    Callback(Py<Handle>),
    /// A native engine; its read or write runs natively in the turn (edge-triggered).
    /// (Also how a registration's owner, or a pending retry, leaves the registry on release.)
    Engine(EngineRef),
    /// A registration's file object (see `Registration::fileobj`), only on its way out of the
    /// registry's lock to be dropped: never a direction's target.
    FileObject(Py<PyAny>),
}

/// What a dispatch found ready, handed to the loop as new references.
pub enum Fired {
    /// An `add_reader`/`add_writer` callback to run.
    Callback(Py<Handle>),
    /// An engine's read or write to run; `edge` is false when the engine asked to look again.
    Engine {
        engine: EngineRef,
        direction: Direction,
        edge: bool,
    },
}

impl Target {
    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        match self {
            Target::Callback(handle) => handle.get().callback.traverse(visit),
            Target::Engine(engine) => engine.traverse(visit),
            Target::FileObject(object) => visit.call(object),
        }
    }

    /// Lets go of the target (loop close): a callback handle drops its callback's parts.
    pub fn release(self) {
        if let Target::Callback(handle) = self {
            drop(handle.get().callback.release());
        }
    }
}

/// What `Registry::remove` gives back for the caller to drop outside the lock: the callback's
/// handle, and the registration's file object when the last callback went.
pub type Removed = (Option<Py<Handle>>, Option<Py<PyAny>>);

/// One direction of one descriptor: who is told and whether it fired last turn.
struct DirectionWatch {
    target: Option<Target>,
    hot: bool,
    /// The dispatch round that last looked at this direction (no double queueing per turn).
    checked_round: u64,
    /// (Write side only.) No writer is set, but the waker is armed to hear of socket errors
    /// for the reader: tokio reports an error-only event (an ICMP refusal on a connected
    /// datagram socket) as write-closed, never as readable, while a selector reports it to
    /// readers. Its readiness was cleared for that, so a writer set later must look first.
    error_watch: bool,
    waker: Waker,
}

struct Registration {
    id: u64,
    fd: AsyncFd<Watched>,
    /// The native engine that owns the descriptor, if one does: no add_reader on it.
    owner: Option<EngineRef>,
    /// The object the first of the current callbacks was registered with (a socket, or the
    /// int itself; None for the loop's own watches), held as a selector key holds it: after
    /// that object is closed (`fileno() == -1`), remove_reader/remove_writer given it still
    /// find this registration. Cleared when the last callback goes.
    fileobj: Option<Py<PyAny>>,
    read: DirectionWatch,
    write: DirectionWatch,
    /// (dispatch round, index in that round's output) where this fd's writer was queued: a
    /// reader found ready later in the same round goes in front of it (see [`Registry::queue`]).
    writer_queued_at: (u64, usize),
}

impl Registration {
    fn is_idle(&self) -> bool {
        self.owner.is_none() && self.read.target.is_none() && self.write.target.is_none()
    }

    fn has_callbacks(&self) -> bool {
        matches!(self.read.target, Some(Target::Callback(_)))
            || matches!(self.write.target, Some(Target::Callback(_)))
    }

    fn side(&mut self, direction: Direction) -> &mut DirectionWatch {
        match direction {
            Direction::Read => &mut self.read,
            Direction::Write => &mut self.write,
        }
    }
}

/// Descriptors are small distinct integers: hashing them is wasted work on every edge.
#[derive(Default)]
pub struct FdHasher(u64);

impl std::hash::Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }

    fn write_i32(&mut self, value: i32) {
        // Fibonacci hashing: spreads small integers into the high bits hashbrown groups by.
        self.0 = u64::from(value as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FdMap<V> = HashMap<RawFd, V, std::hash::BuildHasherDefault<FdHasher>>;

pub struct Registry {
    fds: FdMap<Registration>,
    /// Directions to re-check next turn (may hold stale entries; `hot` is the truth).
    hot: Vec<(RawFd, Direction)>,
    /// Last turn's hot list and edge list, kept for their capacity: a dispatch swaps them in
    /// rather than growing fresh vectors every turn.
    spare_hot: Vec<(RawFd, Direction)>,
    spare_edges: Vec<(RawFd, u64, Direction)>,
    /// Engines that asked to run again next turn (see [`Registry::again`]).
    retries: Vec<Fired>,
    round: u64,
    next_id: u64,
    notices: Arc<Notices>,
}

impl Registry {
    pub fn new(wake: Arc<Wake>) -> Self {
        Registry {
            fds: FdMap::default(),
            hot: Vec::new(),
            spare_hot: Vec::new(),
            spare_edges: Vec::new(),
            retries: Vec::new(),
            round: 0,
            next_id: 1,
            notices: Arc::new(Notices {
                edges: Mutex::new(Vec::new()),
                pending: Arc::new(AtomicBool::new(false)),
                wake,
            }),
        }
    }

    /// Registers `fd` with the reactor if it is not yet.
    ///
    /// A registration lives exactly as long as something watches the fd, never idle: the
    /// owner of a descriptor may close it as soon as its last callback is removed, and tokio
    /// keeps the bookkeeping of a registration whose EPOLL_CTL_DEL failed (the fd already
    /// closed) until the runtime ends — about 450 bytes per closed socket. (sock_* waits
    /// kept theirs between waits to save the ADD/DEL pair, which leaked that much for every
    /// socket they had waited on.)
    /// Must be called inside the loop's runtime context (registration needs its reactor).
    fn ensure(&mut self, fd: RawFd) -> std::io::Result<&mut Registration> {
        if !self.fds.contains_key(&fd) {
            let id = self.next_id;
            self.next_id += 1;
            // SAFETY: asyncio's contract for add_reader/add_writer is that the caller keeps the
            // descriptor open until it removes the callback; remove_* (or loop close) drops this
            // AsyncFd, deregistering it, before a well-behaved caller closes the fd. A caller
            // that closes first gets what selectors give: the kernel already forgot the fd, and
            // the deregistration fails harmlessly. Transports deregister before closing theirs.
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
            let side = |direction| DirectionWatch {
                target: None,
                hot: false,
                checked_round: 0,
                error_watch: false,
                waker: waker_for(direction),
            };
            let registration = Registration {
                id,
                fd: fd_watch,
                owner: None,
                fileobj: None,
                read: side(Direction::Read),
                write: side(Direction::Write),
                writer_queued_at: (0, 0),
            };
            self.fds.insert(fd, registration);
        }
        self.fds
            .get_mut(&fd)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    /// Sets the callback for one direction of `fd`, returning the one it replaces. A direction
    /// a native transport is using is refused: the transport comes back instead. (Its idle
    /// directions may be borrowed, as sendfile borrows the write side.)
    /// `fileobj`: what add_reader/add_writer was given (see `Registration::fileobj`).
    pub fn set(
        &mut self,
        py: Python<'_>,
        fd: RawFd,
        direction: Direction,
        handle: Py<Handle>,
        fileobj: Option<&Bound<'_, PyAny>>,
    ) -> std::io::Result<Result<Option<Py<Handle>>, EngineRef>> {
        let existed = self.fds.contains_key(&fd);
        let registration = self.ensure(fd)?;
        if existed
            && registration.has_callbacks()
            && !matches!(registration.side(direction).target, Some(Target::Callback(_)))
            && descriptor_closed(fd)
        {
            // A selector asks epoll to watch one more direction here (EPOLL_CTL_MOD), which
            // fails on a descriptor closed since; tokio watches both from the start.
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        }
        let owner = registration.owner.as_ref().map(|owner| owner.clone_ref(py));
        if let (Some(Target::Engine(_)), Some(owner)) = (registration.side(direction).target.as_ref(), owner)
        {
            return Ok(Err(owner));
        }
        if !registration.has_callbacks() {
            // The first callback names the registration's object, as the first
            // selector.register does (a transport's registration holds none).
            registration.fileobj = fileobj.map(|object| object.clone().unbind());
        }
        let side = registration.side(direction);
        let old = match side.target.replace(Target::Callback(handle)) {
            Some(Target::Callback(old)) => Some(old),
            _ => None,
        };
        let was_error_watch = std::mem::take(&mut side.error_watch);
        if side.hot {
            return Ok(Ok(old));
        }
        let waker = side.waker.clone();
        if was_error_watch {
            // Our error watch cleared tokio's write readiness: only poll(2) knows it now.
            registration.side(direction).hot = true;
            self.hot.push((fd, direction));
            self.notices.pending.store(true, Ordering::SeqCst);
            return Ok(Ok(old));
        }
        // Readiness may predate this callback. If tokio has not seen the direction ready,
        // polling it registers the waker and the next edge tells (a new registration's first
        // epoll report included): no syscall. If it has, it may be stale: poll(2) next turn.
        let mut cx = Context::from_waker(&waker);
        let seen_ready = match direction {
            Direction::Read => registration.fd.poll_read_ready(&mut cx).is_ready(),
            Direction::Write => registration.fd.poll_write_ready(&mut cx).is_ready(),
        };
        if seen_ready {
            registration.side(direction).hot = true;
            self.hot.push((fd, direction));
            self.notices.pending.store(true, Ordering::SeqCst);
        }
        Ok(Ok(old))
    }

    /// Lets a socket error (POLLERR) on `fd` reach its reader callback, as a selector would:
    /// for datagram sockets, where an ICMP error arrives with nothing to read. No-op if the
    /// descriptor is not watched or a writer is set (the writer then hears of it).
    pub fn watch_errors_for(&mut self, fd: RawFd) {
        if let Some(registration) = self.fds.get_mut(&fd) {
            if registration.write.target.is_none() && !registration.write.error_watch {
                Self::watch_errors(registration);
            }
        }
    }

    /// Arms the idle write side's waker so that a socket error reaches the reader (see
    /// `DirectionWatch::error_watch`): tokio's write readiness is cleared until the waker is stored.
    fn watch_errors(registration: &mut Registration) {
        let waker = registration.write.waker.clone();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..2 {
            match registration.fd.poll_write_ready(&mut cx) {
                Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
                _ => break,
            }
        }
        registration.write.error_watch = true;
    }

    /// Removes one direction's callback — only if it is `expected`, when given — and drops the
    /// registration once neither direction is left. Returns the callback's handle and, when
    /// the last callback went, the registration's file object: both for the caller to drop
    /// outside the lock.
    ///
    /// `as_selector`: fail as a selector would when the other direction stays watched and the
    /// descriptor was closed since (EPOLL_CTL_MOD: EBADF); the caller then forgets the
    /// registration. For the public remove_reader/remove_writer; the loop's own clean-ups
    /// never fail.
    pub fn remove(
        &mut self,
        fd: RawFd,
        direction: Direction,
        expected: Option<&Py<Handle>>,
        as_selector: bool,
    ) -> std::io::Result<Removed> {
        let Some(registration) = self.fds.get_mut(&fd) else {
            return Ok((None, None));
        };
        let other = match direction {
            Direction::Read => &registration.write,
            Direction::Write => &registration.read,
        };
        let other_watched = matches!(other.target, Some(Target::Callback(_)));
        let side = registration.side(direction);
        let Some(Target::Callback(current)) = side.target.as_ref() else {
            return Ok((None, None));
        };
        if let Some(expected) = expected {
            if !expected.is(current) {
                return Ok((None, None));
            }
        }
        if as_selector && other_watched && descriptor_closed(fd) {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        }
        side.hot = false;
        let old = match side.target.take() {
            Some(Target::Callback(old)) => Some(old),
            _ => None,
        };
        let fileobj = if registration.has_callbacks() {
            None
        } else {
            registration.fileobj.take()
        };
        if registration.is_idle() {
            // Dropping the AsyncFd deregisters the fd; if its owner closed it already, the
            // kernel has forgotten it and the failed EPOLL_CTL_DEL is ignored by tokio.
            self.fds.remove(&fd);
        }
        Ok((old, fileobj))
    }

    /// The registration made with `fileobj` (compared by identity): its fd and whether a
    /// callback watches each direction. How a closed socket object is still found.
    pub fn find_fileobj(&self, fileobj: &Bound<'_, PyAny>) -> Option<(RawFd, bool, bool)> {
        self.fds.iter().find_map(|(fd, registration)| {
            let named = registration.fileobj.as_ref()?;
            if !named.is(fileobj) {
                return None;
            }
            Some((
                *fd,
                matches!(registration.read.target, Some(Target::Callback(_))),
                matches!(registration.write.target, Some(Target::Callback(_))),
            ))
        })
    }

    /// Drops `fd`'s callbacks, its file object and, unless a transport owns it, the
    /// registration: what a selector does when an operation on a closed object fails.
    /// The references come back for the caller to drop outside the lock.
    pub fn forget_callbacks(&mut self, fd: RawFd) -> Vec<Target> {
        let mut out = Vec::new();
        let Some(registration) = self.fds.get_mut(&fd) else {
            return out;
        };
        for direction in [Direction::Read, Direction::Write] {
            let side = registration.side(direction);
            if matches!(side.target, Some(Target::Callback(_))) {
                side.hot = false;
                out.extend(side.target.take());
            }
        }
        out.extend(registration.fileobj.take().map(Target::FileObject));
        if registration.owner.is_none() {
            self.fds.remove(&fd);
        }
        out
    }

    /// The native engine that owns `fd`, if any.
    pub fn owner(&self, py: Python<'_>, fd: RawFd) -> Option<EngineRef> {
        let owner = self.fds.get(&fd)?.owner.as_ref()?;
        Some(owner.clone_ref(py))
    }

    /// Registers an engine's socket; it then owns `fd` here until [`Registry::release`].
    /// False if the descriptor is already watched — by callbacks or another engine.
    pub fn attach(&mut self, fd: RawFd, engine: EngineRef) -> std::io::Result<bool> {
        let registration = self.ensure(fd)?;
        if registration.owner.is_some()
            || registration.read.target.is_some()
            || registration.write.target.is_some()
        {
            return Ok(false);
        }
        registration.owner = Some(engine);
        Ok(true)
    }

    /// Turns an engine's interest in one direction on or off. The previous target (a clone
    /// of the engine) comes back so the caller can drop it outside the lock.
    pub fn watch(&mut self, py: Python<'_>, fd: RawFd, direction: Direction, on: bool) -> Option<Target> {
        let registration = self.fds.get_mut(&fd)?;
        let target = if on {
            let owner = registration.owner.as_ref()?;
            Some(Target::Engine(owner.clone_ref(py)))
        } else {
            None
        };
        let side = registration.side(direction);
        side.hot = false;
        std::mem::replace(&mut side.target, target)
    }

    /// Deregisters an engine's socket (before the engine closes it). A retry it asked for
    /// stays queued: the engine's run finds its socket released and does nothing.
    pub fn release(&mut self, fd: RawFd) -> Vec<Target> {
        let mut out = Vec::new();
        if let Some(mut registration) = self.fds.remove(&fd) {
            out.extend(registration.read.target.take());
            out.extend(registration.write.target.take());
            out.extend(registration.owner.take().map(Target::Engine));
            out.extend(registration.fileobj.take().map(Target::FileObject));
        }
        out
    }

    /// When a transport starts reading: true if tokio already saw the direction ready (the
    /// transport should look now); otherwise the waker is left registered for the next edge.
    pub fn arm(&mut self, fd: RawFd, direction: Direction) -> bool {
        let Some(registration) = self.fds.get_mut(&fd) else {
            return false;
        };
        let waker = registration.side(direction).waker.clone();
        let mut cx = Context::from_waker(&waker);
        let poll = match direction {
            Direction::Read => registration.fd.poll_read_ready(&mut cx).map(|r| r.map(drop)),
            Direction::Write => registration.fd.poll_write_ready(&mut cx).map(|r| r.map(drop)),
        };
        poll.is_ready()
    }

    /// After a transport's syscall showed `direction` drained: forgets tokio's stale readiness
    /// and leaves the waker registered for the next edge. True if it is still ready (closed
    /// or errored states stay ready in tokio), in which case the transport should try again.
    pub fn rearm(&mut self, fd: RawFd, direction: Direction) -> bool {
        let Some(registration) = self.fds.get_mut(&fd) else {
            return false;
        };
        let waker = registration.side(direction).waker.clone();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..2 {
            let poll = match direction {
                Direction::Read => registration.fd.poll_read_ready(&mut cx),
                Direction::Write => registration.fd.poll_write_ready(&mut cx),
            };
            match poll {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                // The reactor cannot run while we hold the turn, so the tick is current and
                // this clears exactly the readiness the transport just consumed.
                Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
            }
        }
        true
    }

    /// A callback's own syscall showed `direction` drained (a native reader that read until
    /// `EAGAIN`): tokio's readiness is forgotten and the direction stops being hot, so the
    /// next turn spends no `poll(2)` confirming what the callback already knows. A direction
    /// tokio still reports ready (closed, errored) stays hot.
    pub fn settle(&mut self, fd: RawFd, direction: Direction) {
        let is_callback = match self.fds.get_mut(&fd) {
            Some(registration) => matches!(registration.side(direction).target, Some(Target::Callback(_))),
            None => false,
        };
        if !is_callback {
            return;
        }
        let still_ready = self.rearm(fd, direction);
        if let Some(registration) = self.fds.get_mut(&fd) {
            let side = registration.side(direction);
            if still_ready && !side.hot {
                self.hot.push((fd, direction));
                self.notices.pending.store(true, Ordering::SeqCst);
            }
            registration.side(direction).hot = still_ready;
        }
    }

    /// True if any fd other than `fd` is registered.
    pub fn watches_other_than(&self, fd: RawFd) -> bool {
        self.fds.len() > usize::from(self.fds.contains_key(&fd))
    }

    /// (readers, writers) currently registered, engines included.
    pub fn counts(&self) -> (usize, usize) {
        let readers = self.fds.values().filter(|r| r.read.target.is_some()).count();
        let writers = self.fds.values().filter(|r| r.write.target.is_some()).count();
        (readers, writers)
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for registration in self.fds.values() {
            for target in registration
                .read
                .target
                .iter()
                .chain(registration.write.target.iter())
            {
                target.traverse(visit)?;
            }
            if let Some(owner) = registration.owner.as_ref() {
                owner.traverse(visit)?;
            }
            if let Some(fileobj) = registration.fileobj.as_ref() {
                visit.call(fileobj)?;
            }
        }
        for retry in &self.retries {
            if let Fired::Engine { engine, .. } = retry {
                engine.traverse(visit)?;
            }
        }
        Ok(())
    }

    /// Empties the registry, deregistering every fd; returns the targets for release.
    pub fn drain(&mut self) -> Vec<Target> {
        self.take_all(drop)
    }

    /// Like [`Registry::drain`], but the reactor registrations are forgotten rather than
    /// deregistered: in a forked child, the epoll instance is the parent's too.
    pub fn abandon(&mut self) -> Vec<Target> {
        self.take_all(std::mem::forget)
    }

    fn take_all(&mut self, dispose: fn(Registration)) -> Vec<Target> {
        let mut targets = Vec::new();
        self.hot.clear();
        for retry in self.retries.drain(..) {
            if let Fired::Engine { engine, .. } = retry {
                targets.push(Target::Engine(engine));
            }
        }
        for (_, mut registration) in self.fds.drain() {
            targets.extend(registration.read.target.take());
            targets.extend(registration.write.target.take());
            targets.extend(registration.owner.take().map(Target::Engine));
            targets.extend(registration.fileobj.take().map(Target::FileObject));
            dispose(registration);
        }
        targets
    }

    /// Queues `engine`'s run in `direction` for the next dispatch, which hands it over in its
    /// own list (see [`Registry::dispatch`]). What a level-triggered selector would do for a
    /// socket whose data or room was not all used: look again next turn, without an edge.
    pub fn again(&mut self, engine: EngineRef, direction: Direction) {
        self.retries.push(Fired::Engine {
            engine,
            direction,
            edge: false,
        });
        self.notices.pending.store(true, Ordering::SeqCst);
    }

    /// Queues (as new references) the targets of every direction that is ready now into
    /// `out`, and the engines' retries ([`Registry::again`]) into `retries`: the loop runs
    /// those behind what else joins the queue this turn, as asyncio's selector events do.
    /// Hot directions are re-checked first; fresh edges then cover the rest, so no target
    /// is queued twice in one turn.
    pub fn dispatch<T: From<Fired>>(&mut self, py: Python<'_>, out: &mut Vec<T>, retries: &mut Vec<T>) {
        if !self.retries.is_empty() {
            retries.extend(self.retries.drain(..).map(T::from));
        }
        self.round += 1;
        let round = self.round;
        let mut previously_hot = std::mem::take(&mut self.spare_hot);
        std::mem::swap(&mut previously_hot, &mut self.hot);
        for (fd, direction) in previously_hot.drain(..) {
            if let Some(registration) = self.fds.get_mut(&fd) {
                let side = registration.side(direction);
                if side.hot && side.checked_round != round {
                    side.checked_round = round;
                    if Self::check(py, registration, direction, false, round, out) {
                        self.hot.push((fd, direction));
                    }
                }
            }
        }
        self.spare_hot = previously_hot;
        let mut edges = std::mem::take(&mut self.spare_edges);
        std::mem::swap(&mut edges, &mut *self.notices.edges.lock());
        for (fd, id, direction) in edges.drain(..) {
            if let Some(registration) = self.fds.get_mut(&fd) {
                let same_registration = registration.id == id;
                let side = registration.side(direction);
                if !same_registration || side.hot || side.checked_round == round {
                    continue;
                }
                side.checked_round = round;
                if direction == Direction::Write && side.target.is_none() && side.error_watch {
                    if error_pending(fd) {
                        if let Some(Target::Callback(handle)) = registration.read.target.as_ref() {
                            let fired = T::from(Fired::Callback(handle.clone_ref(py)));
                            Self::queue(out, registration, Direction::Read, round, fired);
                        }
                    }
                    Self::watch_errors(registration);
                    continue;
                }
                if let Some(Target::Engine(engine)) = side.target.as_ref() {
                    let fired = T::from(Fired::Engine {
                        engine: engine.clone_ref(py),
                        direction,
                        edge: true,
                    });
                    Self::queue(out, registration, direction, round, fired);
                } else if Self::check(py, registration, direction, true, round, out) {
                    self.hot.push((fd, direction));
                }
            }
        }
        self.spare_edges = edges;
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

    /// Decides one callback direction's readiness this turn and queues its handle if ready.
    /// `fresh`: an edge arrived since the last check, so tokio's readiness is current;
    /// otherwise the direction fired last turn and only `poll(2)` can tell if it still holds.
    fn check<T: From<Fired>>(
        py: Python<'_>,
        registration: &mut Registration,
        direction: Direction,
        fresh: bool,
        round: u64,
        out: &mut Vec<T>,
    ) -> bool {
        let Registration { fd, read, write, .. } = registration;
        let side = match direction {
            Direction::Read => read,
            Direction::Write => write,
        };
        let Some(Target::Callback(handle)) = side.target.as_ref() else {
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
            let fired = T::from(Fired::Callback(handle.clone_ref(py)));
            Self::queue(out, registration, direction, round, fired);
        }
        ready
    }

    /// Queues what fired for one direction of `registration` in dispatch round `round`, in
    /// asyncio's order for one fd: its reader runs before its writer, as a selector's event
    /// (one mask for the fd) queues them. Hot re-checks come before fresh edges here, so a
    /// writer still hot from last turn would otherwise run ahead of a reader's new edge. The
    /// reader is inserted at its writer's index: an insertion only moves later entries right,
    /// so an index recorded earlier in the round still lies at or before its writer.
    // Always inlined: it sits on every edge's path, and as a call it cost ~30 instructions
    // per queued entry (callgrind, tcp_pingpong); the reordering itself is out of line.
    #[inline(always)]
    fn queue<T>(
        out: &mut Vec<T>,
        registration: &mut Registration,
        direction: Direction,
        round: u64,
        fired: T,
    ) {
        match direction {
            Direction::Write => registration.writer_queued_at = (round, out.len()),
            Direction::Read if registration.writer_queued_at.0 == round => {
                return Self::queue_before(out, registration.writer_queued_at.1, fired);
            }
            Direction::Read => {}
        }
        out.push(fired);
    }

    #[cold]
    #[inline(never)]
    fn queue_before<T>(out: &mut Vec<T>, index: usize, fired: T) {
        out.insert(index, fired);
    }
}

/// Whether `fd` no longer names an open file. A selector's EPOLL_CTL_MOD tells it when the
/// watched directions change; tokio registered both at once and makes no such call, so ask
/// the kernel directly (one `fcntl`, only on such a change).
fn descriptor_closed(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; no memory of ours is involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags == -1 && crate::errors::last_errno() == libc::EBADF
}
