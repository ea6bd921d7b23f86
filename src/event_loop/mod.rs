//! `LoopCore`: the native half of `tokioloop.Loop` — scheduling, the turn, fd readiness.
//!
//! The Python class `tokioloop.Loop` subclasses this and `asyncio.AbstractEventLoop`; it keeps
//! the per-run and per-connection logic (run_until_complete, tasks, executor, exception
//! handler, signals) while everything per-callback lives here. State that `call_soon` and the
//! turn share sits behind one short-held lock: it is never held while Python code runs or a
//! Python object is dropped, because either may re-enter the loop. The loop is driven only by
//! the thread inside `_run_native`; other threads reach it through `call_soon_threadsafe`.
//!
//! This file holds the struct, the ready queue the turn drains, and the `#[pymethods]` table
//! (pyo3 allows one per class): each entry delegates to the submodule of its concern —
//! `schedule` (call_soon, timers, tasks, the patched clock), `readiness` (add_reader & co.,
//! the per-turn I/O dispatch), `lookups` (DNS), `lifecycle` (run, close, fork, GC, drop).
//! `turn` drives the turns; `ready` is the queue's element, private to this module.

mod bridge_seam;
mod fastcall;
mod lifecycle;
mod lookups;
mod pool;
mod readiness;
mod ready;
mod schedule;
mod tasks;
mod timers;
mod turn;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use tokio::runtime::Runtime;

use crate::clock;
use crate::contexts::SpareContext;
use crate::handles::{Args, Handle, TimerHandle};
use crate::io::{Direction, IoDriver, Wake};
use crate::telemetry::LoopStats;
use pool::HandlePool;
use ready::Ready;
use timers::Timers;

/// `asyncio.events._ThreadSafeHandle` where the running asyncio has it (3.14+), else None.
fn threadsafe_handle_class(py: Python<'_>) -> PyResult<Option<&Bound<'_, PyAny>>> {
    static CLASS: pyo3::sync::PyOnceLock<Option<Py<PyAny>>> = pyo3::sync::PyOnceLock::new();
    let class = CLASS.get_or_try_init(py, || -> PyResult<_> {
        let events = py.import("asyncio.events")?;
        Ok(events.getattr_opt("_ThreadSafeHandle")?.map(Bound::unbind))
    })?;
    Ok(class.as_ref().map(|c| c.bind(py)))
}

/// Swaps in the hand-written `call_soon`/`call_soon_threadsafe` (see `fastcall`).
pub fn install_fast_paths(class: &Bound<'_, pyo3::types::PyType>) -> PyResult<()> {
    fastcall::install(class)
}

thread_local! {
    /// What one dispatch queues (fired fds, engines' retries), kept for their capacity
    /// (always left empty).
    static DISPATCHED: std::cell::RefCell<(Vec<Ready>, Vec<Ready>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// The pid of the process whose loop is running on this thread, 0 if none. A child forked
    /// from a callback inherits the parent's value, which is how it knows that loop is not its.
    static RUNNING_HERE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

struct State {
    ready: VecDeque<Ready>,
    timers: Timers,
    /// Native engines' reads and flushes to try again this turn (`IoHandle::again`, handed
    /// over by the dispatch). They join the ready queue behind what the callbacks of the last
    /// turn scheduled and what this turn's lookups completed, as a selector's events join
    /// asyncio's: a `data_received` runs the callbacks it scheduled before the same socket
    /// is read again.
    io_retries: Vec<Ready>,
}

impl State {
    /// Everything queued, for closing: the ready queue (I/O retries behind it) and the timers.
    fn take_all(&mut self) -> (VecDeque<Ready>, Vec<Py<TimerHandle>>) {
        let mut ready = std::mem::take(&mut self.ready);
        ready.extend(self.io_retries.drain(..));
        (ready, self.timers.drain())
    }
}

#[pyclass(subclass, frozen, module = "tokioloop._tokioloop")]
pub struct LoopCore {
    state: Mutex<State>,
    /// Finished `call_soon` handles to refill (see `pool`).
    pool: HandlePool,
    /// The empty context lent to callbacks scheduled from an empty one (see `contexts`).
    pub(crate) spare_context: SpareContext,
    /// The fd registrations; engines hold handles to them (see `io::IoDriver`).
    io: IoDriver,
    /// True while the fd registry may have callbacks to queue (see `Registry::pending_flag`).
    io_pending: Arc<AtomicBool>,
    /// The self-pipe's read end (-1 before it exists): watched for signals only, so it alone
    /// does not make a busy turn look at I/O (a signal sets `signal_noted` instead).
    self_pipe_fd: AtomicI32,
    /// Set by the Python-level handler of a signal the loop dispatches: the next turn looks at
    /// I/O, where the self-pipe then tells which signal it was.
    signal_noted: AtomicBool,
    wake: Arc<Wake>,
    stopping: AtomicBool,
    running: AtomicBool,
    closed: AtomicBool,
    debug: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop, 0 when not running.
    thread_ident: AtomicU64,
    /// The timer heap's count of cancelled entries, handed to each new `TimerHandle`.
    timer_cancel_counter: Arc<AtomicUsize>,
    /// getaddrinfo lookups running on the runtime's blocking pool.
    dns: crate::dns::Lookups,
    /// Set with `set_task_factory`; None for plain `asyncio.Task`s.
    task_factory: Mutex<Option<Py<PyAny>>>,
    /// The process that made this loop: its runtime does not survive a fork.
    creator_pid: u32,
    /// Set in a forked child (see `_abandon_after_fork`): the reactor is the parent's.
    abandoned: AtomicBool,
    /// A `time` set on the instance (`mock.patch.object(loop, "time")`, as test suites do):
    /// while set, it is the clock that decides which timers are due and when `call_later`
    /// fires, as on asyncio. The flag keeps the unpatched path to one relaxed load.
    time_override: Mutex<Option<Py<PyAny>>>,
    time_overridden: AtomicBool,
    /// The runtime's epoll fd, when found: a busy turn asks it whether to park at all (see
    /// `io::reactor_probe`).
    reactor_fd: Option<RawFd>,
    runtime: RwLock<Option<Runtime>>,
    /// What `metrics()` reports (see `telemetry`).
    stats: LoopStats,
    /// Rust extensions' futures polled in the turn (see `bridge`).
    bridge: crate::bridge::BridgeTasks,
    /// The park's deadline (see `io::ParkTimer`): the loop's, like its reactor's descriptors,
    /// so a run adds no descriptor; lent to the turn while it runs.
    park_timer: Mutex<Option<crate::io::ParkTimer>>,
}

impl LoopCore {
    #[inline]
    fn debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    fn has_work(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
            // Read after `set_idle(true)` when parking: with `idle` (wake.rs) the flags form a
            // Dekker handshake, ordered by SeqCst and its fences (model: dns::loom_model).
            || self.io_pending.load(Ordering::SeqCst)
            || self.dns.completions.is_pending()
            || self.bridge.is_pending()
            || {
                let state = self.state.lock();
                !state.ready.is_empty() || !state.io_retries.is_empty()
            }
    }

    fn take_stopping(&self) -> bool {
        // A plain load first: the locked swap is only needed once stop() was called.
        self.stopping.load(Ordering::Relaxed) && self.stopping.swap(false, Ordering::Relaxed)
    }

    /// The earliest live timer's deadline, after dropping cancelled ones from the top.
    fn next_deadline(&self, _py: Python<'_>) -> Option<f64> {
        let mut garbage = Vec::new();
        let deadline = {
            let mut state = self.state.lock();
            if state.timers.is_empty() {
                return None;
            }
            state.timers.prune(&mut garbage);
            state.timers.next_deadline()
        };
        timers::discard(garbage);
        deadline
    }

    /// Moves due timers to the ready queue, then hands the whole queue to `batch`.
    fn take_ready(&self, py: Python<'_>, batch: &mut VecDeque<Ready>) -> PyResult<()> {
        // asyncio reads its clock once per iteration for this, so a patched one is called here.
        let patched = self.patched_reading(py)?;
        let mut garbage = Vec::new();
        {
            let mut state = self.state.lock();
            let State {
                ready,
                timers,
                io_retries,
            } = &mut *state;
            // The transports' retries are this turn's I/O too: behind what is ready, before timers.
            ready.extend(io_retries.drain(..));
            if !timers.is_empty() {
                timers.prune(&mut garbage);
                if timers.next_deadline().is_some() {
                    timers.pop_due(patched.unwrap_or_else(clock::now), ready, &mut garbage);
                }
            }
            std::mem::swap(ready, batch);
        }
        timers::discard(garbage);
        Ok(())
    }

    /// Puts back, in front, what a turn left unrun when an exception cut it short.
    fn requeue_front(&self, batch: &mut VecDeque<Ready>) {
        let mut state = self.state.lock();
        while let Some(item) = batch.pop_back() {
            state.ready.push_front(item);
        }
    }

    /// The turn is done with `item`: its callback's references go, and an unshared
    /// `call_soon` handle goes to the pool.
    fn recycle(&self, py: Python<'_>, item: Ready) {
        if let Some(handle) = item.finish(py) {
            self.pool.give(py, handle);
        }
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Self::create()
    }

    /// Schedules `callback(*args)` for the next turn, in `context` (a copy of the current one
    /// by default). Replaced at import by the hand-written entry in `fastcall`.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::schedule_soon(slf, callback, Args::from_tuple(args), context)
    }

    /// `call_soon` from any thread: wakes the loop if it is parked.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        Self::schedule_threadsafe(slf, callback, Args::from_tuple(args), context)
    }

    /// Schedules `callback(*args)` `delay` seconds from now; never runs earlier.
    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        Self::schedule_later(slf, delay, callback, args, context)
    }

    /// Schedules `callback(*args)` at `when` on the loop's clock; never runs earlier.
    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        Self::schedule_at(slf, when, callback, args, context)
    }

    /// A new `asyncio.Future` attached to this loop.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        tasks::new_future(slf.as_any())
    }

    /// Wraps `coro` in an `asyncio.Task` (or the task factory's product) on this loop; the
    /// keywords the running version takes are in `tasks::new_task`.
    #[pyo3(signature = (coro, **kwargs))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::new_task(slf, coro, kwargs)
    }

    /// Use `factory(loop, coro, **kwargs)` for `create_task`; None restores the default.
    fn set_task_factory(&self, factory: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.replace_task_factory(factory)
    }

    /// The task factory, or None for the default.
    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task_factory.lock().as_ref().map(|f| f.clone_ref(py))
    }

    /// The loop's clock: `time.monotonic()`'s clock, in seconds.
    fn time(&self) -> f64 {
        clock::now()
    }

    /// Instance attributes as usual; a `time` set on the instance also becomes the clock the
    /// native timers are judged by (see `time_override`).
    fn __setattr__(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyString>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::set_attribute(slf, name, value)
    }

    fn __delattr__(slf: &Bound<'_, Self>, name: &Bound<'_, PyString>) -> PyResult<()> {
        Self::delete_attribute(slf, name)
    }

    /// Ends `run_forever` after the current turn (or after one turn, if not running).
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn get_debug(&self) -> bool {
        self.debug()
    }

    fn _set_native_debug(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
    }

    /// `threading.get_ident()` of the thread running the loop, or None.
    #[getter]
    fn _thread_id(&self) -> Option<u64> {
        match self.thread_ident.load(Ordering::Relaxed) {
            0 => None,
            ident => Some(ident),
        }
    }

    /// The engines' way to this loop's fd registrations (see `io::IoPort`).
    #[getter]
    fn _io_port(&self) -> crate::io::IoPort {
        crate::io::IoPort(self.io.handle())
    }

    /// Runs turns until `stop()`. The Python wrapper does asyncio's per-run bookkeeping.
    fn _run_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        crate::fault_point!("run");
        Self::run_native(slf)
    }

    /// Called in a forked child for every loop the parent had (see `_loop.py`): the child
    /// shares the parent's epoll instance, so deregistering an fd here would remove it from
    /// the parent's loop. The registrations and the runtime are forgotten, not dropped; the
    /// Python objects they referred to are released. Every later use raises RuntimeError.
    fn _abandon_after_fork(&self) {
        self.abandon_after_fork()
    }

    /// Runs one handle as the turn would (debug mode's timed path calls this).
    fn _run_handle(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let item = Ready::from_object(handle);
        if item.is_cancelled(slf.py()) {
            return Ok(());
        }
        turn::run_handle(slf, &item)
    }

    /// Forgets every pending callback, timer and fd registration. Refuses while running.
    fn _close_native(&self, py: Python<'_>) -> PyResult<()> {
        self.close_native(py)
    }

    /// Lets socket errors reach `fd`'s reader (datagram sockets); see
    /// `Registry::watch_errors_for`.
    fn _watch_errors(&self, fd: RawFd) {
        self.io.registry().watch_errors_for(fd);
    }

    /// Watches `fd`; returns the handle, which `_remove_reader` can name to remove only it.
    /// `fileobj`: the object add_reader was given, by which a closed socket is still found.
    #[pyo3(signature = (fd, callback, args, fileobj=None))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        fileobj: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::set_fd_callback(
            slf,
            fd,
            Direction::Read,
            callback,
            Args::from_tuple(args),
            fileobj.as_ref(),
            None,
        )
    }

    /// Watches `fd`; returns the handle, which `_remove_writer` can name to remove only it.
    #[pyo3(signature = (fd, callback, args, fileobj=None))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        fileobj: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::set_fd_callback(
            slf,
            fd,
            Direction::Write,
            callback,
            Args::from_tuple(args),
            fileobj.as_ref(),
            None,
        )
    }

    /// The fd registered by add_reader/add_writer with `fileobj` (by identity), and whether
    /// a callback watches it for reading and for writing; None if there is no such
    /// registration. The slow path for a socket object closed since it was registered.
    fn _fileobj_registration(&self, fileobj: &Bound<'_, PyAny>) -> Option<(RawFd, bool, bool)> {
        self.fileobj_registration(fileobj)
    }

    /// Drops every callback watching `fd` (cancelling its handle) and the registration
    /// itself: a selector's state after an operation on a closed file object failed.
    fn _forget_fd_callbacks(&self, fd: RawFd) {
        self.forget_fd_callbacks(fd)
    }

    /// The public remove_reader (`reading`) or remove_writer: as `_remove_reader`, and where
    /// the other direction stays watched on a descriptor closed since, the selector's
    /// OSError(EBADF), the registration dropped.
    fn _remove_watch_as_selector(&self, fd: RawFd, reading: bool) -> PyResult<bool> {
        self.remove_watch_as_selector(fd, reading)
    }

    /// The open native transport using `fd`, if any (asyncio refuses add_reader and sock_*
    /// on such a descriptor).
    fn _fd_transport(&self, py: Python<'_>, fd: RawFd) -> Option<Py<PyAny>> {
        self.fd_transport(py, fd)
    }

    /// The self-pipe's read end, which alone does not make busy turns look at I/O.
    fn _set_self_pipe_fd(&self, fd: RawFd) {
        self.self_pipe_fd.store(fd, Ordering::Relaxed);
    }

    /// A signal the loop dispatches arrived (called by its Python-level handler).
    fn _note_signal(&self) {
        self.signal_noted.store(true, Ordering::Relaxed);
    }

    #[pyo3(signature = (fd, handle=None))]
    fn _remove_reader(&self, py: Python<'_>, fd: RawFd, handle: Option<Py<Handle>>) -> bool {
        self.remove_fd_callback(py, fd, Direction::Read, handle.as_ref())
    }

    #[pyo3(signature = (fd, handle=None))]
    fn _remove_writer(&self, py: Python<'_>, fd: RawFd, handle: Option<Py<Handle>>) -> bool {
        self.remove_fd_callback(py, fd, Direction::Write, handle.as_ref())
    }

    /// Starts `socket.getaddrinfo(host, port, family, type, proto, flags)` on the runtime's
    /// blocking pool and returns the future it will resolve. Host and port come as bytes.
    #[pyo3(signature = (host, port, family, r#type, proto, flags))]
    fn _getaddrinfo_native<'py>(
        slf: &Bound<'py, Self>,
        host: Option<Vec<u8>>,
        port: Option<Vec<u8>>,
        family: i32,
        r#type: i32,
        proto: i32,
        flags: i32,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::start_getaddrinfo(slf, host, port, family, r#type, proto, flags)
    }

    /// Starts `socket.getnameinfo((host, port, flowinfo, scope_id), flags)`: the address is
    /// parsed here (numeric only, as CPython does), the reverse lookup runs on the blocking
    /// pool. The Python side passes only well-typed, in-range arguments.
    #[pyo3(signature = (host, port, flowinfo, scope_id, tuple_len, flags))]
    fn _getnameinfo_native<'py>(
        slf: &Bound<'py, Self>,
        host: Vec<u8>,
        port: u16,
        flowinfo: u32,
        scope_id: u32,
        tuple_len: usize,
        flags: i32,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::start_getnameinfo(slf, host, port, flowinfo, scope_id, tuple_len, flags)
    }

    /// The telemetry snapshot `Loop.metrics()` is built from (see `telemetry`), with the
    /// queues' depths now.
    fn _metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.metrics(py)
    }

    /// Report callbacks running at least `seconds` to `_report_slow_callback`; None stops.
    #[pyo3(signature = (seconds))]
    fn _set_slow_callback_threshold(&self, seconds: Option<f64>) {
        self.stats.set_slow_after(seconds)
    }

    /// Pending work, for leak checks: ready handles, live timers, fd callbacks.
    fn _native_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.native_counts(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.traverse(visit)
    }

    fn __clear__(&self) {
        self.clear()
    }
}
