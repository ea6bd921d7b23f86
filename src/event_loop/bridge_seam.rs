//! What the native bridge (`crate::bridge`) may ask of a loop, and nothing more: whether the
//! loop runs on this thread, a future completed by a spawned task, the loop's clock, and a
//! timer in its heap. The bridge's tasks live in `LoopCore::bridge`; the turn polls them.

use pyo3::prelude::*;
use tokioloop_ffi as cabi;

use super::lifecycle::current_thread_ident;
use super::{tasks, LoopCore};
use crate::handles::{Args, TimerHandle};
use std::sync::atomic::Ordering;

impl LoopCore {
    /// True if this loop is running on the calling thread (the only place a task may start).
    pub(crate) fn bridge_runs_here(&self) -> bool {
        self.running.load(Ordering::Relaxed)
            && !self.closed.load(Ordering::Relaxed)
            && self.thread_ident.load(Ordering::Relaxed) == current_thread_ident()
            // A running loop in a forked child is abandoned before any Python code runs there
            // (the at-fork hook), so the flag is enough: no getpid per spawn.
            && !self.abandoned_by_fork()
    }

    /// Starts `task` (owned from here, dropped on failure) and returns its future.
    pub(crate) fn bridge_spawn<'py>(slf: &Bound<'py, Self>, task: cabi::Task) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let future = if this.bridge_runs_here() {
            tasks::new_future(slf.as_any())
        } else {
            Err(pyo3::exceptions::PyRuntimeError::new_err(
                "a bridge task can only be spawned on the thread running its loop",
            ))
        };
        this.bridge.spawn(slf.py(), task, future)
    }

    pub(crate) fn bridge_time(&self, py: Python<'_>) -> PyResult<f64> {
        self.now(py)
    }

    /// A timer at loop time `when` whose callback is `fire`, in the loop's heap.
    pub(crate) fn bridge_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        fire: Bound<'_, PyAny>,
    ) -> PyResult<Py<TimerHandle>> {
        Self::schedule_timer(slf, when, None, fire, Args::None, None)
    }
}
