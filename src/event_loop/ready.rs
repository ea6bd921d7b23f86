//! The ready queue's element: what is due to run this turn or the next.
//!
//! `call_soon` handles, due timers, fd callbacks and native engines' reads and writes share one
//! FIFO; the enum keeps them without upcasting. Private to `event_loop`: the registry hands its
//! findings over as `io::Fired`, which becomes a `Ready` here; only the loop thread's turn runs
//! them.
//!
//! From 3.14 a `call_soon_threadsafe` handle is the stdlib's own `events._ThreadSafeHandle`
//! ([`Ready::Locked`]): its lock makes `cancel()` from another thread wait for a running
//! callback (gh-128340), and its `_run` is the stdlib's.

use pyo3::prelude::*;

use pyo3::{PyTraverseError, PyVisit};

use crate::handles::{Callback, Handle, TimerHandle};
use crate::io::{Direction, EngineRef, Fired};
use crate::telemetry::CallbackKind;

pub enum Ready {
    Soon(Py<Handle>),
    Timer(Py<TimerHandle>),
    /// A native engine's read or write (see `io::Engine`). `edge` is true when a fresh edge
    /// queued it, false when the engine asked to look again.
    Io {
        engine: EngineRef,
        direction: Direction,
        edge: bool,
    },
    /// An `asyncio.events._ThreadSafeHandle` (3.14+ `call_soon_threadsafe`); run by its `_run`.
    Locked(Py<PyAny>),
}

impl Ready {
    /// When a `call_soon` handle was queued, if the loop was timing callbacks then.
    #[inline]
    pub fn queued_at(&self) -> Option<f64> {
        match self {
            Ready::Soon(h) => h.get().queued_at(),
            _ => None,
        }
    }

    /// Where this item came from, for the telemetry's callback counts.
    #[inline]
    pub fn kind(&self) -> CallbackKind {
        match self {
            Ready::Soon(h) if h.get().is_persistent() => CallbackKind::Io,
            Ready::Soon(_) | Ready::Locked(_) => CallbackKind::Ready,
            Ready::Timer(_) => CallbackKind::Timer,
            Ready::Io { .. } => CallbackKind::Io,
        }
    }

    /// The handle's callback; None for a transport's I/O, which is not a callback.
    #[inline]
    pub fn callback(&self) -> Option<&Callback> {
        match self {
            Ready::Soon(h) => Some(&h.get().callback),
            Ready::Timer(t) => Some(&t.get().callback),
            Ready::Io { .. } | Ready::Locked(_) => None,
        }
    }

    /// As asyncio's turn reads it: `_cancelled`, without the handle's lock (`_run` looks again
    /// under it).
    #[inline]
    pub fn is_cancelled(&self, py: Python<'_>) -> bool {
        match self {
            Ready::Soon(h) => h.get().is_cancelled(),
            Ready::Timer(t) => t.get().is_cancelled(),
            Ready::Io { .. } => false,
            Ready::Locked(handle) => handle
                .bind(py)
                .getattr(pyo3::intern!(py, "_cancelled"))
                .and_then(|c| c.is_truthy())
                .unwrap_or(false),
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Ready::Io { engine, .. } => engine.traverse(visit),
            Ready::Locked(handle) => visit.call(handle),
            _ => match self.callback() {
                Some(callback) => callback.traverse(visit),
                None => Ok(()),
            },
        }
    }

    /// Drops the callback's references (close, GC clear); an engine item just goes.
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
                // SAFETY: the turn runs with the GIL held; `handle` is our live reference.
                // Checked after the release, whose drops may have run Python code.
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
            Ready::Io { engine, .. } => engine.object().bind(py).clone(),
            Ready::Locked(h) => h.bind(py).clone(),
        }
    }

    /// Reads a handle object passed back from Python (debug mode's `_run_handle`): one of
    /// ours, or else a stdlib handle the loop queued.
    pub fn from_object(obj: &Bound<'_, PyAny>) -> Self {
        if let Ok(h) = obj.cast::<Handle>() {
            return Ready::Soon(h.clone().unbind());
        }
        if let Ok(t) = obj.cast::<TimerHandle>() {
            return Ready::Timer(t.clone().unbind());
        }
        Ready::Locked(obj.clone().unbind())
    }
}

impl From<Fired> for Ready {
    #[inline]
    fn from(fired: Fired) -> Self {
        match fired {
            Fired::Callback(handle) => Ready::Soon(handle),
            Fired::Engine {
                engine,
                direction,
                edge,
            } => Ready::Io {
                engine,
                direction,
                edge,
            },
        }
    }
}
