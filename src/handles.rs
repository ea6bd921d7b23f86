//! `Handle` and `TimerHandle`: what `call_soon`, `call_later` and `call_at` return.
//!
//! A handle owns the callback, its positional arguments and the `contextvars.Context` it runs
//! in. Running one is context-enter, one call and context-exit, with no Python frame of ours in
//! between. Handles are immutable but for their cancelled/scheduled flags, so they need no lock;
//! they are created by `event_loop` and run only by the loop thread's turn.
//!
//! Both types take part in the cyclic GC (`__traverse__`): `self._timer = loop.call_later(1,
//! self.on_timeout)` makes a cycle through the handle, and it must be collectable.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::PyTuple;
use pyo3::{ffi, PyTraverseError, PyVisit};

/// The callable, its arguments and the context it runs in.
pub struct Callback {
    pub function: Py<PyAny>,
    pub args: Py<PyTuple>,
    pub context: Py<PyAny>,
    /// `traceback.StackSummary` of where the handle was made; only in debug mode.
    pub source_traceback: Option<Py<PyAny>>,
}

impl Callback {
    pub fn new(
        py: Python<'_>,
        function: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let context = match context {
            Some(ctx) if !ctx.is_none() => ctx.unbind(),
            _ => {
                // SAFETY: we hold the GIL; a NULL return has set a Python error.
                unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? }.unbind()
            }
        };
        Ok(Callback { function: function.unbind(), args: args.unbind(), context, source_traceback })
    }

    /// Calls the function inside its context. The error, if any, is the callback's.
    pub fn invoke(&self, py: Python<'_>) -> PyResult<()> {
        let ctx = self.context.as_ptr();
        // SAFETY: all pointers are owned by `self` and alive; the GIL is held. Enter and exit
        // are paired on every path, and the callback's error is fetched before exiting.
        unsafe {
            if ffi::PyContext_Enter(ctx) < 0 {
                return Err(PyErr::fetch(py));
            }
            let args = self.args.as_ptr();
            let result = if ffi::PyTuple_GET_SIZE(args) == 0 {
                ffi::PyObject_CallNoArgs(self.function.as_ptr())
            } else {
                ffi::PyObject_Call(self.function.as_ptr(), args, std::ptr::null_mut())
            };
            let outcome = if result.is_null() {
                Err(PyErr::fetch(py))
            } else {
                ffi::Py_DECREF(result);
                Ok(())
            };
            if ffi::PyContext_Exit(ctx) < 0 {
                let exit_error = PyErr::fetch(py);
                return outcome.and(Err(exit_error));
            }
            outcome
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.function)?;
        visit.call(&self.args)?;
        visit.call(&self.context)?;
        if let Some(tb) = &self.source_traceback {
            visit.call(tb)?;
        }
        Ok(())
    }

    /// `<Name [when=..] [cancelled] callback-source [created at file:line]>`, as asyncio shows.
    fn repr(&self, py: Python<'_>, head: &str, cancelled: bool) -> PyResult<String> {
        let mut parts = vec![head.to_owned()];
        if cancelled {
            parts.push("cancelled".to_owned());
        }
        let source = py
            .import("asyncio.format_helpers")?
            .getattr("_format_callback_source")?
            .call1((self.function.bind(py), self.args.bind(py)))?;
        parts.push(source.extract::<String>()?);
        if let Some(tb) = &self.source_traceback {
            let tb = tb.bind(py);
            if tb.len()? > 0 {
                let frame = tb.get_item(-1)?;
                let file: String = frame.getattr("filename")?.extract()?;
                let line: i64 = frame.getattr("lineno")?.extract()?;
                parts.push(format!("created at {file}:{line}"));
            }
        }
        Ok(format!("<{}>", parts.join(" ")))
    }
}

/// True for the exceptions that end `run_forever` instead of reaching the exception handler.
pub fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// A callback scheduled with `call_soon` or `call_soon_threadsafe`.
#[pyclass(frozen, weakref, module = "tokioloop._tokioloop")]
pub struct Handle {
    pub callback: Callback,
    cancelled: AtomicBool,
}

impl Handle {
    pub fn new(callback: Callback) -> Self {
        Handle { callback, cancelled: AtomicBool::new(false) }
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn cancel_now(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

#[pymethods]
impl Handle {
    fn cancel(&self) {
        self.cancel_now();
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback.context.clone_ref(py)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback.function.clone_ref(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Py<PyTuple> {
        self.callback.args.clone_ref(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.source_traceback.as_ref().map(|tb| tb.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.callback.repr(py, "Handle", self.is_cancelled())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.callback.traverse(&visit)
    }
}

/// A callback scheduled for a point in time with `call_later` or `call_at`.
#[pyclass(frozen, weakref, module = "tokioloop._tokioloop")]
pub struct TimerHandle {
    pub callback: Callback,
    pub when: f64,
    when_object: Py<PyAny>,
    cancelled: AtomicBool,
    /// True while the handle sits in the loop's timer heap.
    scheduled: AtomicBool,
    /// The loop's count of cancelled timers still in its heap (drives heap compaction).
    cancelled_in_heap: Arc<AtomicUsize>,
}

impl TimerHandle {
    pub fn new(callback: Callback, when: f64, when_object: Py<PyAny>, counter: Arc<AtomicUsize>) -> Self {
        TimerHandle {
            callback,
            when,
            when_object,
            cancelled: AtomicBool::new(false),
            scheduled: AtomicBool::new(true),
            cancelled_in_heap: counter,
        }
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Called by the loop when it takes the handle out of its heap.
    #[inline]
    pub fn unschedule(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }
}

#[pymethods]
impl TimerHandle {
    fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::Relaxed) && self.scheduled.load(Ordering::Relaxed) {
            self.cancelled_in_heap.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The absolute time, on the loop's clock, the callback is scheduled for, as it was given.
    fn when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_object.clone_ref(py)
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback.context.clone_ref(py)
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback.function.clone_ref(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Py<PyTuple> {
        self.callback.args.clone_ref(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.source_traceback.as_ref().map(|tb| tb.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let head = format!("TimerHandle when={}", self.when_object.bind(py).repr()?);
        self.callback.repr(py, &head, self.is_cancelled())
    }

    fn __hash__(&self) -> u64 {
        self.when.to_bits()
    }

    /// Ordered by `when`, as asyncio's timer handles are.
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let other = other.get();
        let same = std::ptr::eq(self, other)
            || (self.when == other.when
                && self.callback.function.bind(py).eq(other.callback.function.bind(py))?
                && self.callback.args.bind(py).eq(other.callback.args.bind(py))?
                && self.is_cancelled() == other.is_cancelled());
        let result = match op {
            CompareOp::Eq => same,
            CompareOp::Ne => !same,
            CompareOp::Lt => self.when < other.when,
            CompareOp::Gt => self.when > other.when,
            CompareOp::Le => self.when < other.when || same,
            CompareOp::Ge => self.when > other.when || same,
        };
        Ok(result.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.when_object)?;
        self.callback.traverse(&visit)
    }
}
