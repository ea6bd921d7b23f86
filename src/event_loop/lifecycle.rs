//! `LoopCore`'s life: open/closed and fork checks, `_run_native` and the per-run guard,
//! closing, abandoning after fork(), GC traversal and clearing, and the drop that lets the
//! runtime go without blocking.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};
use tokio::runtime::Runtime;

use crate::contexts::SpareContext;
use crate::errors::forked_error;
use crate::handles::TimerHandle;
use crate::io::{IoDriver, Target, Wake};
use crate::runtime;

use super::pool::HandlePool;
use super::ready::Ready;
use super::timers::{self, Timers};
use super::{turn, LoopCore, State, RUNNING_HERE};

impl LoopCore {
    /// A new loop with its own runtime and io registrations (`LoopCore()`'s body).
    pub(super) fn create() -> PyResult<Self> {
        let wake = Arc::new(Wake::default());
        let timers = Timers::new();
        let runtime = runtime::build().map_err(crate::errors::from_io)?;
        let io = IoDriver::new(wake.clone(), runtime.handle().clone());
        let io_pending = io.registry().pending_flag();
        let park_timer = {
            let _context = runtime.enter();
            crate::io::ParkTimer::new().map_err(crate::errors::from_io)?
        };
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
            bridge: crate::bridge::BridgeTasks::new(wake.clone()),
            park_timer: Mutex::new(Some(park_timer)),
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
            runtime: RwLock::new(Some(runtime)),
            stats: crate::telemetry::LoopStats::new(),
        })
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
    pub(super) fn in_other_process(&self) -> bool {
        self.abandoned_by_fork() || std::process::id() != self.creator_pid
    }

    pub(super) fn check_same_process(&self) -> PyResult<()> {
        if self.in_other_process() {
            return Err(forked_error());
        }
        Ok(())
    }

    /// The runtime, until close lets it go. Read-locked by whoever uses it (a run holds it for
    /// the whole run); close only tries for the write lock, and never while running.
    pub(super) fn runtime(&self) -> PyResult<MappedRwLockReadGuard<'_, Runtime>> {
        RwLockReadGuard::try_map(self.runtime.read_recursive(), Option::as_ref)
            .map_err(|_| PyRuntimeError::new_err("Event loop is closed"))
    }

    /// `_run_native`: refuses a closed loop, another process's, a nested or second run.
    pub(super) fn run_native(slf: &Bound<'_, Self>) -> PyResult<()> {
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
        turn::drive(slf, &*this.runtime()?)
    }

    /// `_abandon_after_fork`: forget, never deregister, what the parent's reactor holds.
    pub(super) fn abandon_after_fork(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.io.mark_abandoned();
        self.running.store(false, Ordering::SeqCst);
        self.thread_ident.store(0, Ordering::Relaxed);
        let targets = self.io.registry().abandon();
        for target in targets {
            target.release();
        }
        self.bridge.abandon();
        // Registered in the epoll instance the parent shares: deregistering would end the
        // parent's timer.
        std::mem::forget(self.park_timer.lock().take());
    }

    /// `_close_native`: everything pending goes; io handles answer "closed" from now on.
    pub(super) fn close_native(&self, py: Python<'_>) -> PyResult<()> {
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
        if self.in_other_process() {
            self.bridge.abandon();
        } else {
            self.bridge.drain(py);
        }
        release_all(ready, timers, fd_handles);
        drop(lookups);
        let park_timer = self.park_timer.lock().take();
        if self.in_other_process() {
            std::mem::forget(park_timer);
        } else {
            drop(park_timer);
        }
        drop(self.pool.drain(py));
        // As asyncio's close() closes its selector: the reactor's descriptors go now, not when
        // the loop object is collected (a closed loop still referenced kept three fds).
        if let Some(mut slot) = self.runtime.try_write() {
            if let Some(runtime) = slot.take() {
                if self.in_other_process() {
                    std::mem::forget(runtime);
                } else {
                    runtime.shutdown_background();
                }
            }
        }
        Ok(())
    }

    /// `__traverse__`: the queue (only while not running), timers, the registry, lookups.
    pub(super) fn traverse(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
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
        self.bridge.traverse(&visit)?;
        if let Some(factory) = self.task_factory.try_lock() {
            if let Some(factory) = factory.as_ref() {
                visit.call(factory)?;
            }
        }
        Ok(())
    }

    /// `__clear__`: drops what `traverse` reports.
    pub(super) fn clear(&self) {
        let (ready, timers) = self.state.lock().take_all();
        let fd_handles = self.io.registry().drain();
        let factory = self.task_factory.lock().take();
        // SAFETY: `__clear__` runs with the GIL held.
        self.bridge.drain(unsafe { Python::assume_attached() });
        release_all(ready, timers, fd_handles);
        drop(factory);
    }
}

pub(super) fn current_thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions. CPython's threading.get_ident() is this value.
    unsafe { libc::pthread_self() as u64 }
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
        crate::fault_point!("loop_drop");
        // Registrations deregister through the runtime's reactor: drop them first. Then let
        // the runtime go without blocking — this may run inside another loop's block_on.
        if self.in_other_process() {
            // A forked child: the reactor's epoll instance is shared with the parent, and the
            // scheduler may be mid-turn in the parent's copy. Leak both rather than touch them.
            self.io.mark_closed();
            // The registry's lock is shared with the handles now (it was the loop's own field,
            // reached without locking): never wait on it in a child.
            if let Some(mut registry) = self.io.try_registry() {
                std::mem::forget(registry.abandon());
            }
            std::mem::forget(self.park_timer.get_mut().take());
            std::mem::forget(self.runtime.get_mut().take());
            return;
        }
        self.io.mark_closed();
        let fd_targets = self.io.registry().drain();
        drop(fd_targets);
        drop(self.park_timer.get_mut().take());
        if let Some(runtime) = self.runtime.get_mut().take() {
            runtime.shutdown_background();
        }
    }
}
