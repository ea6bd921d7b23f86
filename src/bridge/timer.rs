//! An extension's sleep as an entry in the loop's own timer heap: one park timeout for every
//! timer of the loop, no tokio timer and no thread. The heap fires a [`TimerFire`] callback in
//! the turn, which wakes the C waker the extension's last poll left; the task is then polled in
//! the next turn. Loop thread only (the ABI's timer functions are); only `capi` makes these.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use tokioloop_ffi as cabi;

use super::waker::OwnedWaker;

#[derive(Default)]
pub struct TimerState {
    fired: AtomicBool,
    waker: Mutex<Option<OwnedWaker>>,
}

impl TimerState {
    pub fn new() -> Arc<Self> {
        Arc::new(TimerState::default())
    }

    /// True once due; otherwise keeps a clone of `waker` to wake then.
    ///
    /// # Safety
    /// `waker` is a valid C waker lent for this call.
    pub unsafe fn poll(&self, waker: &cabi::Waker) -> bool {
        if self.fired.load(Ordering::Acquire) {
            return true;
        }
        // SAFETY: per the contract.
        let fresh = unsafe { OwnedWaker::clone_from(waker) };
        let previous = self.waker.lock().replace(fresh);
        drop(previous);
        false
    }

    /// The timer was freed: a waker it holds goes now, not when the heap lets the entry go.
    pub fn forget_waker(&self) {
        let waker = self.waker.lock().take();
        drop(waker);
    }
}

/// The timer heap's callback for an extension's timer.
#[pyclass(frozen, module = "tokioloop._tokioloop")]
pub struct TimerFire {
    pub state: Arc<TimerState>,
}

#[pymethods]
impl TimerFire {
    fn __call__(&self) {
        self.state.fired.store(true, Ordering::Release);
        let waker = self.state.waker.lock().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}
