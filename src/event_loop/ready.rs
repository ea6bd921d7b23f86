//! The ready queue's element: a handle that is due to run this turn or the next.
//!
//! `call_soon` handles and due timers share one FIFO; the enum keeps both without upcasting.
//! Only `event_loop` builds these, and only the loop thread's turn runs them.

use pyo3::prelude::*;

use crate::handles::{Callback, Handle, TimerHandle};

pub enum Ready {
    Soon(Py<Handle>),
    Timer(Py<TimerHandle>),
}

impl Ready {
    #[inline]
    pub fn callback(&self) -> &Callback {
        match self {
            Ready::Soon(h) => &h.get().callback,
            Ready::Timer(t) => &t.get().callback,
        }
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        match self {
            Ready::Soon(h) => h.get().is_cancelled(),
            Ready::Timer(t) => t.get().is_cancelled(),
        }
    }

    /// Called once the turn is done with this item: drops the callback's references unless
    /// the handle will run again (a live fd callback).
    #[inline]
    pub fn finish(self) {
        let keep = match &self {
            Ready::Soon(h) => h.get().is_persistent() && !h.get().is_cancelled(),
            Ready::Timer(_) => false,
        };
        if !keep {
            drop(self.callback().release());
        }
    }

    /// The Python handle object, for the exception handler's `handle` key and debug mode.
    pub fn object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Ready::Soon(h) => h.bind(py).clone().into_any(),
            Ready::Timer(t) => t.bind(py).clone().into_any(),
        }
    }

    /// Reads a handle object passed back from Python (debug mode's `_run_handle`).
    pub fn from_object(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(h) = obj.cast::<Handle>() {
            return Ok(Ready::Soon(h.clone().unbind()));
        }
        Ok(Ready::Timer(obj.cast::<TimerHandle>()?.clone().unbind()))
    }
}
