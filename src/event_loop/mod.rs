//! `LoopCore`: the native half of `tokioloop.Loop` — scheduling, the turn, fd readiness.
//!
//! The Python class `tokioloop.Loop` subclasses this and `asyncio.AbstractEventLoop`; it keeps
//! the per-run and per-connection logic (run_until_complete, tasks, executor, exception
//! handler, signals) while everything per-callback lives here. State that `call_soon` and the
//! turn share sits behind one short-held lock: it is never held while Python code runs or a
//! Python object is dropped, because either may re-enter the loop. The loop is driven only by
//! the thread inside `_run_native`; other threads reach it through `call_soon_threadsafe`.

mod fastcall;
mod pool;
mod ready;
mod tasks;
mod timers;
mod turn;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{ffi, PyTraverseError, PyVisit};
use tokio::runtime::Runtime;

use crate::clock;
use crate::contexts::SpareContext;
use crate::handles::{new_untracked, Args, Callback, Handle, TimerHandle};
use crate::io::{Direction, IoDriver, Target, Wake};
use crate::runtime;
use ready::Ready;
use timers::Timers;
use pool::HandlePool;

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
    runtime: Option<Runtime>,
}

pub(crate) use crate::errors::forked_error;

fn current_thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions. CPython's threading.get_ident() is this value.
    unsafe { libc::pthread_self() as u64 }
}

impl LoopCore {
    /// The open native transport using `fd`, as Python sees it (asyncio refuses add_reader and
    /// sock_* on such a descriptor).
    pub(crate) fn fd_transport(&self, py: Python<'_>, fd: RawFd) -> Option<Py<PyAny>> {
        let engine = self.io.registry().owner(py, fd)?;
        if engine.is_closing(py) {
            return None;
        }
        engine.python_transport(py)
    }

    pub(crate) fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        Ok(())
    }

    /// True in a process forked from the one that made this loop, once the fork is known.
    pub(crate) fn abandoned_by_fork(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// True in a process other than the one that made this loop (a forked child). Asks the
    /// kernel for the pid unless the fork is already known: not for per-turn use.
    fn in_other_process(&self) -> bool {
        self.abandoned_by_fork() || std::process::id() != self.creator_pid
    }

    fn check_same_process(&self) -> PyResult<()> {
        if self.in_other_process() {
            return Err(forked_error());
        }
        Ok(())
    }

    #[inline]
    fn debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// asyncio's debug-mode guard against calling non-threadsafe methods from another thread.
    fn check_thread(&self) -> PyResult<()> {
        let owner = self.thread_ident.load(Ordering::Relaxed);
        if owner != 0 && owner != current_thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Debug-mode checks and the creation stack, as asyncio records them.
    #[inline(always)]
    fn debug_prologue(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Option<Py<PyAny>>> {
        if !slf.get().debug() {
            return Ok(None);
        }
        Self::debug_checks(slf, callback, method, check_thread)
    }

    #[cold]
    fn debug_checks(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Option<Py<PyAny>>> {
        let this = slf.get();
        if check_thread {
            this.check_thread()?;
        }
        slf.call_method1(intern!(slf.py(), "_check_callback"), (callback, method))?;
        Ok(Some(
            slf.call_method0(intern!(slf.py(), "_extract_stack"))?.unbind(),
        ))
    }

    fn has_work(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
            || self.io_pending.load(Ordering::Acquire)
            || self.dns.completions.pending.load(Ordering::Acquire)
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

    /// Resolves the futures of finished getaddrinfo lookups.
    fn complete_lookups(&self, py: Python<'_>) -> PyResult<()> {
        self.dns.complete(py)
    }

    /// The loop's clock: `clock::now()`, or the `time` patched on the instance.
    #[inline]
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        if !self.time_overridden.load(Ordering::Relaxed) {
            return Ok(clock::now());
        }
        self.patched_now(py)
    }

    #[cold]
    fn patched_now(&self, py: Python<'_>) -> PyResult<f64> {
        let patched = self.time_override.lock().as_ref().map(|f| f.clone_ref(py));
        match patched {
            Some(time) => time.bind(py).call0()?.extract(),
            None => Ok(clock::now()),
        }
    }

    fn set_time_override(&self, time: Option<Py<PyAny>>) {
        self.time_overridden.store(time.is_some(), Ordering::Relaxed);
        let previous = std::mem::replace(&mut *self.time_override.lock(), time);
        drop(previous);
    }

    /// The turn's reading of the clock when `time` is patched (None: the native clock).
    fn patched_reading(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        if !self.time_overridden.load(Ordering::Relaxed) {
            return Ok(None);
        }
        self.patched_now(py).map(Some)
    }

    /// True if a busy turn must look at I/O: an fd other than the self-pipe is watched, or a
    /// signal arrived since the last look.
    fn io_to_look_at(&self) -> bool {
        self.signal_noted.swap(false, Ordering::Relaxed)
            || self.io.registry().watches_other_than(self.self_pipe_fd.load(Ordering::Relaxed))
    }

    /// The busy turn's look at I/O: a zero-timeout park, skipped when the kernel says the
    /// reactor has nothing waiting.
    fn look_at_io(&self, runtime: &Runtime) {
        if self.reactor_fd.is_none_or(crate::io::has_events) {
            runtime.block_on(tokio::task::yield_now());
        }
    }

    fn dispatch_io(&self, py: Python<'_>) {
        if !self.io_pending.load(Ordering::Acquire) {
            return;
        }
        DISPATCHED.with(|cell| {
            let (fired, retries) = &mut *cell.borrow_mut();
            self.io.registry().dispatch(py, fired, retries);
            if !fired.is_empty() || !retries.is_empty() {
                let mut state = self.state.lock();
                state.ready.extend(fired.drain(..));
                if !retries.is_empty() {
                    state.io_retries.extend(retries.drain(..));
                }
            }
        });
    }

    /// Moves due timers to the ready queue, then hands the whole queue to `batch`.
    fn take_ready(&self, py: Python<'_>, batch: &mut VecDeque<Ready>) -> PyResult<()> {
        // asyncio reads its clock once per iteration for this, so a patched one is called here.
        let patched = self.patched_reading(py)?;
        let mut garbage = Vec::new();
        {
            let mut state = self.state.lock();
            let State { ready, timers, io_retries } = &mut *state;
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

    fn push_ready(&self, item: Ready) {
        self.state.lock().ready.push_back(item);
    }

    fn schedule_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        when_object: Option<Py<PyAny>>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_open()?;
        let traceback = Self::debug_prologue(slf, &callback, "call_at", true)?;
        let counter = this.timer_cancel_counter.clone();
        let callback = Callback::new(py, callback, args, context, traceback)?;
        let handle = new_untracked(py, TimerHandle::new(callback, when, when_object, counter))?;
        this.state.lock().timers.push(when, handle.clone_ref(py));
        Ok(handle)
    }

    fn schedule_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::schedule_ready(slf, callback, args, context, false)
    }

    /// `schedule_soon` for the fast entry, which returns any object.
    #[inline]
    fn schedule_soon_any(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        Ok(Self::schedule_ready(slf, callback, args, context, false)?.into_any())
    }

    /// `call_soon_threadsafe`. Before 3.14 a native handle; from 3.14 asyncio's
    /// `events._ThreadSafeHandle` itself (gh-128340: its lock makes `cancel()` and
    /// `cancelled()` from another thread wait while the callback runs, and callers check
    /// `isinstance` against it).
    fn schedule_threadsafe(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Some(class) = threadsafe_handle_class(py)? else {
            return Ok(Self::schedule_ready(slf, callback, args, context, true)?.into_any());
        };
        let this = slf.get();
        this.check_open()?;
        if this.debug() {
            Self::debug_checks(slf, &callback, "call_soon_threadsafe", false)?;
        }
        let handle = class.call1((callback, args.to_tuple(py)?, slf, context))?;
        // Handle.__init__ records the stack from its caller, `_ThreadSafeHandle.__init__`; no
        // frame of ours is on it, so that one is all to drop.
        tasks::drop_own_frame(&handle, this.debug())?;
        this.push_ready(Ready::Locked(handle.clone().unbind()));
        this.wake.notify();
        Ok(handle.unbind())
    }

    /// Queues a new handle for the next turn; from another thread, also wakes a parked loop.
    #[inline]
    fn schedule_ready(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_open()?;
        let method = if threadsafe {
            "call_soon_threadsafe"
        } else {
            "call_soon"
        };
        let traceback = Self::debug_prologue(slf, &callback, method, !threadsafe)?;
        let callback = Callback::new(py, callback, args, context, traceback)?;
        let handle = match this.pool.take(py) {
            Some(handle) => {
                handle.get().refill(callback);
                handle
            }
            None => new_untracked(py, Handle::new(callback))?,
        };
        this.push_ready(Ready::Soon(handle.clone_ref(py)));
        if threadsafe {
            this.wake.notify();
        }
        Ok(handle)
    }

    pub(crate) fn set_fd_callback(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        direction: Direction,
        callback: Bound<'_, PyAny>,
        args: Args,
        fileobj: Option<&Bound<'_, PyAny>>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_open()?;
        this.check_same_process()?;
        let handle = new_untracked(
            py,
            Handle::new_persistent(Callback::new(py, callback, args, context, None)?),
        )?;
        let runtime = this.runtime()?;
        let _context = runtime.enter();
        let outcome = this
            .io
            .registry()
            .set(py, fd, direction, handle.clone_ref(py), fileobj);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                drop(handle.get().callback.release());
                if error.raw_os_error() == Some(libc::EBADF) {
                    // As a selector's failed modify does: the closed fd's registration goes.
                    this._forget_fd_callbacks(fd);
                }
                return Err(crate::errors::from_io(error));
            }
        };
        match outcome {
            Ok(Some(old)) => old.get().cancel_now(),
            Ok(None) => {}
            Err(engine) => {
                drop(handle.get().callback.release());
                let transport = engine
                    .python_transport(py)
                    .unwrap_or_else(|| engine.object().clone_ref(py));
                return Err(PyRuntimeError::new_err(format!(
                    "File descriptor {fd} is used by transport {}",
                    transport.bind(py).repr()?
                )));
            }
        }
        Ok(handle)
    }

    pub(crate) fn remove_fd_callback(
        &self,
        _py: Python<'_>,
        fd: RawFd,
        direction: Direction,
        expected: Option<&Py<Handle>>,
    ) -> bool {
        self.remove_fd_callback_as(fd, direction, expected, false)
            .unwrap_or(false)
    }

    /// `as_selector`: see `Registry::remove`; the error is the OSError a selector raises,
    /// and the registration is dropped as the selector drops it.
    fn remove_fd_callback_as(
        &self,
        fd: RawFd,
        direction: Direction,
        expected: Option<&Py<Handle>>,
        as_selector: bool,
    ) -> PyResult<bool> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let removed = self.io.registry().remove(fd, direction, expected, as_selector);
        let (old, fileobj) = match removed {
            Ok(removed) => removed,
            Err(error) => {
                self._forget_fd_callbacks(fd);
                return Err(crate::errors::from_io(error));
            }
        };
        drop(fileobj);
        match old {
            Some(handle) => {
                handle.get().cancel_now();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn runtime(&self) -> PyResult<&Runtime> {
        self.runtime
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let wake = Arc::new(Wake::default());
        let timers = Timers::new();
        let runtime = runtime::build()?;
        let io = IoDriver::new(wake.clone(), runtime.handle().clone());
        let io_pending = io.registry().pending_flag();
        Ok(LoopCore {
            timer_cancel_counter: timers.cancel_counter(),
            state: Mutex::new(State {
                ready: VecDeque::new(),
                timers,
                io_retries: Vec::new(),
            }),
            pool: HandlePool::default(),
            spare_context: SpareContext::default(),
            io_pending,
            self_pipe_fd: AtomicI32::new(-1),
            signal_noted: AtomicBool::new(false),
            io,
            wake,
            stopping: AtomicBool::new(false),
            running: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_ident: AtomicU64::new(0),
            task_factory: Mutex::new(None),
            dns: crate::dns::Lookups::default(),
            creator_pid: std::process::id(),
            abandoned: AtomicBool::new(false),
            time_override: Mutex::new(None),
            time_overridden: AtomicBool::new(false),
            reactor_fd: crate::io::find_reactor_fd(&runtime),
            runtime: Some(runtime),
        })
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
        delay: Option<f64>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let delay = delay.ok_or_else(|| PyTypeError::new_err("delay must not be None"))?;
        let now = slf.get().now(slf.py())?;
        Self::schedule_timer(slf, now + delay, None, callback, Args::from_tuple(args), context)
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
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let when_value: f64 = when.extract()?;
        Self::schedule_timer(slf, when_value, Some(when.unbind()), callback, Args::from_tuple(args), context)
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
        let this = slf.get();
        this.check_open()?;
        let factory = this
            .task_factory
            .lock()
            .as_ref()
            .map(|f| f.bind(slf.py()).clone());
        tasks::new_task(slf.as_any(), factory, coro, kwargs, this.debug())
    }

    /// Use `factory(loop, coro, **kwargs)` for `create_task`; None restores the default.
    fn set_task_factory(&self, factory: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let factory = factory.filter(|f| !f.is_none());
        if let Some(f) = &factory {
            if !f.is_callable() {
                return Err(PyTypeError::new_err("task factory must be a callable or None"));
            }
        }
        let previous = std::mem::replace(&mut *self.task_factory.lock(), factory.map(Bound::unbind));
        drop(previous);
        Ok(())
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
    fn __setattr__(slf: &Bound<'_, Self>, name: &Bound<'_, PyString>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        // SAFETY: live objects; the generic setter handles the subclass's instance dict.
        if unsafe { ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), value.as_ptr()) } < 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        if name.to_str()? == "time" {
            slf.get().set_time_override(Some(value.clone().unbind()));
        }
        Ok(())
    }

    fn __delattr__(slf: &Bound<'_, Self>, name: &Bound<'_, PyString>) -> PyResult<()> {
        // SAFETY: as above; a NULL value deletes.
        if unsafe { ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), std::ptr::null_mut()) } < 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        if name.to_str()? == "time" {
            slf.get().set_time_override(None);
        }
        Ok(())
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
        let this = slf.get();
        this.check_open()?;
        this.check_same_process()?;
        let pid = std::process::id();
        if RUNNING_HERE.with(|r| r.get()) == pid {
            return Err(PyRuntimeError::new_err(
                "Cannot run the event loop while another loop is running",
            ));
        }
        if this.running.swap(true, Ordering::SeqCst) {
            return Err(PyRuntimeError::new_err("This event loop is already running"));
        }
        this.thread_ident.store(current_thread_ident(), Ordering::Relaxed);
        let _running = RunningGuard(this, RUNNING_HERE.with(|r| r.replace(pid)));
        let _armed = runtime::ParkGuard::arm();
        turn::drive(slf, this.runtime()?)
    }

    /// Called in a forked child for every loop the parent had (see `_loop.py`): the child
    /// shares the parent's epoll instance, so deregistering an fd here would remove it from
    /// the parent's loop. The registrations and the runtime are forgotten, not dropped; the
    /// Python objects they referred to are released. Every later use raises RuntimeError.
    fn _abandon_after_fork(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.io.mark_abandoned();
        self.running.store(false, Ordering::SeqCst);
        self.thread_ident.store(0, Ordering::Relaxed);
        let targets = self.io.registry().abandon();
        for target in targets {
            target.release();
        }
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
        if self.running.load(Ordering::SeqCst) {
            return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
        }
        self.closed.store(true, Ordering::SeqCst);
        self.io.mark_closed();
        let (ready, timers) = self.state.lock().take_all();
        let fd_handles = if self.in_other_process() {
            self.io.registry().abandon()
        } else {
            self.io.registry().drain()
        };
        let lookups = self.dns.clear();
        release_all(ready, timers, fd_handles);
        drop(lookups);
        drop(self.pool.drain(py));
        Ok(())
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
        Self::set_fd_callback(slf, fd, Direction::Read, callback, Args::from_tuple(args), fileobj.as_ref(), None)
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
        Self::set_fd_callback(slf, fd, Direction::Write, callback, Args::from_tuple(args), fileobj.as_ref(), None)
    }

    /// The fd registered by add_reader/add_writer with `fileobj` (by identity), and whether
    /// a callback watches it for reading and for writing; None if there is no such
    /// registration. The slow path for a socket object closed since it was registered.
    fn _fileobj_registration(&self, fileobj: &Bound<'_, PyAny>) -> Option<(RawFd, bool, bool)> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        self.io.registry().find_fileobj(fileobj)
    }

    /// Drops every callback watching `fd` (cancelling its handle) and the registration
    /// itself: a selector's state after an operation on a closed file object failed.
    fn _forget_fd_callbacks(&self, fd: RawFd) {
        let targets = self.io.registry().forget_callbacks(fd);
        for target in targets {
            if let Target::Callback(handle) = &target {
                handle.get().cancel_now();
            }
            drop(target);
        }
    }

    /// The public remove_reader (`reading`) or remove_writer: as `_remove_reader`, and where
    /// the other direction stays watched on a descriptor closed since, the selector's
    /// OSError(EBADF), the registration dropped.
    fn _remove_watch_as_selector(&self, fd: RawFd, reading: bool) -> PyResult<bool> {
        let direction = if reading { Direction::Read } else { Direction::Write };
        self.remove_fd_callback_as(fd, direction, None, true)
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
        let this = slf.get();
        this.check_open()?;
        this.check_same_process()?;
        let host = crate::dns::c_string(host.as_deref())?;
        let port = crate::dns::c_string(port.as_deref())?;
        let future = tasks::new_future(slf.as_any())?;
        this.dns.start(
            this.runtime()?,
            this.wake.clone(),
            future.clone().unbind(),
            host,
            port,
            (family, r#type, proto, flags),
        );
        Ok(future)
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
        let py = slf.py();
        let this = slf.get();
        this.check_open()?;
        this.check_same_process()?;
        let host = crate::dns::c_string(Some(&host))?.unwrap_or_default();
        let address = crate::dns::parse_nameinfo_address(py, &host, port, flowinfo, scope_id, tuple_len)?;
        let future = tasks::new_future(slf.as_any())?;
        this.dns.start_nameinfo(
            this.runtime()?,
            this.wake.clone(),
            future.clone().unbind(),
            address,
            flags,
        );
        Ok(future)
    }

    /// Pending work, for leak checks: ready handles, live timers, fd callbacks.
    fn _native_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (ready, timers) = {
            let state = self.state.lock();
            (state.ready.len() + state.io_retries.len(), state.timers.live())
        };
        let (readers, writers) = self.io.registry().counts();
        let counts = PyDict::new(py);
        counts.set_item("ready", ready)?;
        counts.set_item("timers", timers)?;
        counts.set_item("readers", readers)?;
        counts.set_item("writers", writers)?;
        Ok(counts)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // While running, the loop is held by the thread running it, so nothing it queues can
        // be part of a garbage cycle; walking a long ready queue at every full collection cost
        // a 100k-task gather ~440 instructions per task. Unreported references only make their
        // targets look held from outside, which they are.
        let running = self.running.load(Ordering::Relaxed);
        if let Some(state) = self.state.try_lock().filter(|_| !running) {
            for item in state.ready.iter().chain(&state.io_retries) {
                item.traverse(&visit)?;
            }
            for handle in state.timers.references() {
                handle.get().callback.traverse(&visit)?;
            }
        }
        if let Some(io) = self.io.try_registry() {
            io.traverse(&visit)?;
        }
        self.dns.traverse(&visit)?;
        if let Some(factory) = self.task_factory.try_lock() {
            if let Some(factory) = factory.as_ref() {
                visit.call(factory)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let (ready, timers) = self.state.lock().take_all();
        let fd_handles = self.io.registry().drain();
        let factory = self.task_factory.lock().take();
        release_all(ready, timers, fd_handles);
        drop(factory);
    }
}

/// Resets the per-run state when `_run_native` ends, whether by return, error or panic; holds
/// what `RUNNING_HERE` said before this run.
struct RunningGuard<'a>(&'a LoopCore, u32);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        RUNNING_HERE.with(|r| r.set(self.1));
        let core = self.0;
        core.wake.set_waker(None);
        core.wake.set_idle(false);
        core.stopping.store(false, Ordering::Relaxed);
        core.thread_ident.store(0, Ordering::Relaxed);
        core.running.store(false, Ordering::SeqCst);
    }
}

/// Releases every pending handle's callback (close, GC clear); call with no lock held.
fn release_all(ready: VecDeque<Ready>, timers: Vec<Py<TimerHandle>>, fd_targets: Vec<Target>) {
    for item in ready {
        item.release();
    }
    timers::discard(timers);
    for target in fd_targets {
        target.release();
    }
}

impl Drop for LoopCore {
    fn drop(&mut self) {
        // Registrations deregister through the runtime's reactor: drop them first. Then let
        // the runtime go without blocking — this may run inside another loop's block_on.
        if self.in_other_process() {
            // A forked child: the reactor's epoll instance is shared with the parent, and the
            // scheduler may be mid-turn in the parent's copy. Leak both rather than touch them.
            self.io.mark_closed();
            std::mem::forget(self.io.registry().abandon());
            std::mem::forget(self.runtime.take());
            return;
        }
        self.io.mark_closed();
        let fd_targets = self.io.registry().drain();
        drop(fd_targets);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
