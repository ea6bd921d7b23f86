//! The ready queue's element: a handle that is due to run this turn or the next.
//!
//! `call_soon` handles and due timers share one FIFO; the enum keeps both without upcasting.
//! Only `event_loop` builds these, and only the loop thread's turn runs them.

use pyo3::prelude::*;

use pyo3::{PyTraverseError, PyVisit};

use crate::handles::{Callback, Handle, TimerHandle};
use crate::io::registry::Direction;
use crate::transports::stream::StreamTransport;

pub enum Ready {
    Soon(Py<Handle>),
    Timer(Py<TimerHandle>),
    /// A native transport's read or write (see `transports::stream`); the flag is true when
    /// a fresh edge queued it, false when the transport queued itself to look again.
    Stream(Py<StreamTransport>, Direction, bool),
}

impl Ready {
    /// The handle's callback; None for a transport's I/O, which is not a callback.
    #[inline]
    pub fn callback(&self) -> Option<&Callback> {
        match self {
            Ready::Soon(h) => Some(&h.get().callback),
            Ready::Timer(t) => Some(&t.get().callback),
            Ready::Stream(..) => None,
        }
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        match self {
            Ready::Soon(h) => h.get().is_cancelled(),
            Ready::Timer(t) => t.get().is_cancelled(),
            Ready::Stream(..) => false,
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Ready::Stream(transport, ..) => visit.call(transport),
            _ => match self.callback() {
                Some(callback) => callback.traverse(visit),
                None => Ok(()),
            },
        }
    }

    /// Drops the callback's references (close, GC clear); a transport item just goes.
    #[inline]
    pub fn release(self) {
        if let Some(callback) = self.callback() {
            drop(callback.release());
        }
    }

    /// Called once the turn is done with this item: drops the callback's references unless
    /// the handle will run again (a live fd callback). Returns a `call_soon` handle nobody
    /// else holds, for the loop's pool of handles to refill.
    #[inline]
    pub fn finish(self, py: Python<'_>) -> Option<Py<Handle>> {
        match self {
            Ready::Soon(handle) => {
                let h = handle.get();
                if h.is_persistent() && !h.is_cancelled() {
                    return None;
                }
                if let Some(parts) = h.callback.release() {
                    parts.dispose(py);
                }
                // SAFETY: the turn runs with the GIL held; `handle` is our live reference. Checked after the release,
                // whose drops may have run Python code.
                (!h.is_persistent() && unsafe { Handle::is_unshared(&handle) }).then_some(handle)
            }
            other => {
                other.release();
                None
            }
        }
    }

    /// The Python handle object, for the exception handler's `handle` key and debug mode.
    pub fn object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self {
            Ready::Soon(h) => h.bind(py).clone().into_any(),
            Ready::Timer(t) => t.bind(py).clone().into_any(),
            Ready::Stream(s, ..) => s.bind(py).clone().into_any(),
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
