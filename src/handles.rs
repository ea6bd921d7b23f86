//! `Handle` and `TimerHandle`: what `call_soon`, `call_later` and `call_at` return.
//!
//! A handle owns the callback, its positional arguments and the `contextvars.Context` it runs
//! in. Running one is context-enter, one call and context-exit, with no Python frame of ours in
//! between. Handles are immutable but for their cancelled/scheduled flags, so they need no lock;
//! they are created by `event_loop` and run only by the loop thread's turn.
//!
//! Handles are not GC-tracked; see [`Callback`] for why that is safe.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::PyTuple;
use pyo3::{ffi, PyTraverseError, PyVisit};

use crate::contexts::{ContextSlot, SpareContext};

/// A callback's positional arguments. Most callbacks take none (a Task step) or one (a Future
/// wake-up, a done-callback): those are kept and called without a tuple, which is built only
/// if Python asks for `_args`.
pub enum Args {
    None,
    One(Py<PyAny>),
    Many(Py<PyTuple>),
}

impl Args {
    pub fn from_tuple(args: Bound<'_, PyTuple>) -> Self {
        match args.len() {
            0 => Args::None,
            // SAFETY: index 0 exists.
            1 => Args::One(unsafe { args.get_borrowed_item_unchecked(0) }.to_owned().unbind()),
            _ => Args::Many(args.unbind()),
        }
    }

    /// The arguments as asyncio's `_args` tuple.
    pub fn to_tuple<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        match self {
            Args::None => Ok(PyTuple::empty(py)),
            Args::One(arg) => PyTuple::new(py, [arg.bind(py)]),
            Args::Many(args) => Ok(args.bind(py).clone()),
        }
    }

    /// `function(*args)`: a new reference, or NULL with a Python error set.
    ///
    /// # Safety
    /// GIL held; `function` alive.
    unsafe fn call(&self, function: *mut ffi::PyObject) -> *mut ffi::PyObject {
        // SAFETY: per the contract; the arguments are owned by `self`.
        unsafe {
            match self {
                Args::None => ffi::PyObject_CallNoArgs(function),
                Args::One(arg) => ffi::PyObject_CallOneArg(function, arg.as_ptr()),
                Args::Many(args) => ffi::PyObject_Call(function, args.as_ptr(), std::ptr::null_mut()),
            }
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Args::None => Ok(()),
            Args::One(arg) => visit.call(arg),
            Args::Many(args) => visit.call(args),
        }
    }
}

/// The callable, its arguments and the context it runs in.
pub struct Parts {
    pub function: Py<PyAny>,
    pub args: Args,
    pub context: ContextSlot,
    /// `traceback.StackSummary` of where the handle was made; only in debug mode.
    pub source_traceback: Option<Py<PyAny>>,
}

impl Parts {
    /// Lets go of everything without pyo3's per-reference check for an attached thread (the
    /// token proves it): the turn does this for every callback it ran.
    pub fn dispose(self, py: Python<'_>) {
        let Parts {
            function,
            args,
            context,
            source_traceback,
        } = self;
        function.drop_ref(py);
        match args {
            Args::None => {}
            Args::One(arg) => arg.drop_ref(py),
            Args::Many(args) => args.drop_ref(py),
        }
        context.dispose(py);
        if let Some(tb) = source_traceback {
            tb.drop_ref(py);
        }
    }
}

/// A handle's callback, released by the loop once the handle has run or was cancelled.
///
/// Handles are not tracked by the cyclic GC (that cost a fifth of `call_soon`'s instructions
/// under callgrind: every handle is a young object at each gen-0 collection). Cycles through a
/// handle (`self._h = loop.call_soon(self.cb)`) are broken instead by releasing the parts as
/// soon as the loop is done with the handle, which is what makes not tracking them safe.
pub struct Callback {
    parts: UnsafeCell<Option<Parts>>,
    /// True while `invoke` runs: the parts must not be released under it.
    invoking: std::cell::Cell<bool>,
}

// SAFETY: the cell is written only by `release` (the loop's turn, or `cancel()`) and `refill`
// (an unshared handle), always with the GIL held and never while `invoke` of the same handle
// is on the stack (`invoking`); every read is also made with the GIL held. The GIL therefore
// serialises all access (the module does not declare free-threaded support).
unsafe impl Sync for Callback {}

impl Callback {
    pub fn new(
        py: Python<'_>,
        function: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let parts = Parts {
            function: function.unbind(),
            args,
            context: ContextSlot::capture(py, context)?,
            source_traceback,
        };
        Ok(Callback {
            parts: UnsafeCell::new(Some(parts)),
            invoking: std::cell::Cell::new(false),
        })
    }

    #[inline]
    pub fn parts(&self) -> Option<&Parts> {
        // SAFETY: see the `Sync` impl; a shared borrow never outlives a GIL-held section in
        // which `release` cannot run.
        unsafe { (*self.parts.get()).as_ref() }
    }

    /// Takes the parts out; the caller drops them where re-entering the loop is safe. Never
    /// while `invoke` runs (the loop releases only what it is not running).
    pub fn release(&self) -> Option<Parts> {
        // SAFETY: see the `Sync` impl: loop thread, GIL held, not during `invoke`.
        unsafe { (*self.parts.get()).take() }
    }

    /// Calls the function inside its context (lending `spare`'s if the caller's was empty).
    /// The error, if any, is the callback's.
    pub fn invoke(&self, py: Python<'_>, spare: &SpareContext) -> PyResult<()> {
        let Some(parts) = self.parts() else {
            return Ok(());
        };
        let function = parts.function.as_ptr();
        self.invoking.set(true);
        // SAFETY: the function and arguments are owned by `parts`, which nothing releases
        // while `invoking` is set; the GIL is held.
        let outcome = parts
            .context
            .run(py, spare, || unsafe { parts.args.call(function) });
        self.invoking.set(false);
        outcome
    }

    /// `cancel()`'s release, as asyncio's: the callback and its arguments go at once, except
    /// in debug mode (where repr still shows them) and while the callback itself is running.
    pub fn release_on_cancel(&self) {
        if self.invoking.get() || self.parts().is_none_or(|parts| parts.source_traceback.is_some()) {
            return;
        }
        drop(self.release());
    }

    /// For the loop's own GC traversal: the objects a pending handle keeps alive.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(parts) = self.parts() {
            visit.call(&parts.function)?;
            parts.args.traverse(visit)?;
            parts.context.traverse(visit)?;
            if let Some(tb) = &parts.source_traceback {
                visit.call(tb)?;
            }
        }
        Ok(())
    }

    fn function(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.parts().map(|p| p.function.clone_ref(py))
    }

    fn args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        self.parts()
            .map(|p| Ok(p.args.to_tuple(py)?.unbind()))
            .transpose()
    }

    fn context(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.parts().map(|p| p.context.get(py)).transpose()
    }

    fn source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.parts()
            .and_then(|p| p.source_traceback.as_ref().map(|tb| tb.clone_ref(py)))
    }

    /// `<Name [when=..] [cancelled] callback-source [created at file:line]>`, as asyncio shows.
    fn repr(&self, py: Python<'_>, head: &str, cancelled: bool) -> PyResult<String> {
        let mut parts = vec![head.to_owned()];
        if cancelled {
            parts.push("cancelled".to_owned());
        }
        // Owned references: the Python code below could cancel the handle, releasing its parts.
        let own = match self.parts() {
            Some(p) => Some((
                p.function.clone_ref(py),
                p.args.to_tuple(py)?.unbind(),
                p.source_traceback.as_ref().map(|tb| tb.clone_ref(py)),
            )),
            None => None,
        };
        if let Some((function, args, traceback)) = own {
            let format = py
                .import("asyncio.format_helpers")?
                .getattr("_format_callback_source")?;
            let takes_debug = py
                .import("tokioloop._compat")?
                .getattr("FORMAT_CALLBACK_TAKES_DEBUG")?
                .is_truthy()?;
            let source = if takes_debug {
                // 3.13 shows the arguments only in debug mode (asyncio asks the loop; a handle
                // made in debug mode is the one with a creation traceback).
                let kwargs = pyo3::types::PyDict::new(py);
                kwargs.set_item("debug", traceback.is_some())?;
                format.call((function.bind(py), args.bind(py)), Some(&kwargs))?
            } else {
                format.call1((function.bind(py), args.bind(py)))?
            };
            parts.push(source.extract::<String>()?);
            if let Some(tb) = &traceback {
                let tb = tb.bind(py);
                if tb.len()? > 0 {
                    let frame = tb.get_item(-1)?;
                    let file: String = frame.getattr("filename")?.extract()?;
                    let line: i64 = frame.getattr("lineno")?.extract()?;
                    parts.push(format!("created at {file}:{line}"));
                }
            }
        }
        Ok(format!("<{}>", parts.join(" ")))
    }
}

/// Allocates a handle and takes it off the cyclic GC's lists (pyo3 makes every class GC-aware;
/// a handle has nothing to traverse, see [`Callback`]), so gen-0 collections skip it.
pub fn new_untracked<T>(py: Python<'_>, value: T) -> PyResult<Py<T>>
where
    T: pyo3::PyClass + Into<pyo3::PyClassInitializer<T>>,
{
    let object = Py::new(py, value)?;
    // SAFETY: a freshly made, fully initialised object of a GC type; untracking a tracked
    // object is always allowed, and pyo3's dealloc untracks again harmlessly.
    unsafe { ffi::PyObject_GC_UnTrack(object.as_ptr().cast()) };
    Ok(object)
}

/// A callback scheduled with `call_soon` or `call_soon_threadsafe`.
#[pyclass(frozen, weakref, freelist = 1024, module = "tokioloop._tokioloop")]
pub struct Handle {
    pub callback: Callback,
    cancelled: AtomicBool,
    /// Runs again and again (an fd callback): the loop keeps its parts after running it.
    persistent: bool,
    /// When it was queued (`f64` bits), while the loop times callbacks; 0 otherwise.
    queued_at: AtomicU64,
}

impl Handle {
    pub fn new(callback: Callback) -> Self {
        Handle {
            callback,
            cancelled: AtomicBool::new(false),
            persistent: false,
            queued_at: AtomicU64::new(0),
        }
    }

    pub fn new_persistent(callback: Callback) -> Self {
        Handle {
            callback,
            cancelled: AtomicBool::new(false),
            persistent: true,
            queued_at: AtomicU64::new(0),
        }
    }

    /// True if only the caller's reference holds this handle and nothing can reach it again
    /// (no weak references): it may be refilled with another callback unseen.
    ///
    /// # Safety
    /// GIL held; `this` is a live reference to `handle`.
    pub unsafe fn is_unshared(handle: &Py<Handle>) -> bool {
        let object = handle.as_ptr();
        // SAFETY: per the contract.
        unsafe { ffi::Py_REFCNT(object) == 1 && !crate::contexts::has_weakrefs(object) }
    }

    /// Gives an unshared, finished handle a new callback (see `is_unshared`).
    pub fn refill(&self, callback: Callback) {
        // SAFETY: GIL held by the caller (it owns a `Callback`, made with the GIL); the handle
        // is unshared, so nothing else reads its parts, and its old parts were released.
        unsafe { *self.callback.parts.get() = callback.parts.into_inner() };
        self.cancelled.store(false, Ordering::Relaxed);
    }

    /// Notes when the handle was queued (0.0: not timed), for the ready-wait histogram.
    #[inline]
    pub fn set_queued_at(&self, at: f64) {
        self.queued_at.store(at.to_bits(), Ordering::Relaxed);
    }

    /// When it was queued, if the loop was timing callbacks then.
    #[inline]
    pub fn queued_at(&self) -> Option<f64> {
        let at = f64::from_bits(self.queued_at.load(Ordering::Relaxed));
        (at > 0.0).then_some(at)
    }

    #[inline]
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// `cancel()` as asyncio's remove_reader/add_reader call it on the handle they replace or
    /// remove: marked cancelled and its callback and arguments let go at once. Keeping them
    /// kept cycles through the (untracked) handle alive, e.g. a cancelled sock_recv's wait,
    /// which holds its handle, and with it the whole loop.
    pub fn cancel_and_release(&self) {
        if !self.cancelled.swap(true, Ordering::Relaxed) {
            self.callback.release_on_cancel();
        }
    }
}

#[pymethods]
impl Handle {
    fn cancel(&self) {
        crate::fault_point!("handle_cancel");
        self.cancel_and_release();
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.callback.context(py)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.function(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        self.callback.args(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.source_traceback(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.callback.repr(py, "Handle", self.is_cancelled())
    }
}

/// A callback scheduled for a point in time with `call_later` or `call_at`.
#[pyclass(frozen, weakref, freelist = 1024, module = "tokioloop._tokioloop")]
pub struct TimerHandle {
    pub callback: Callback,
    pub when: f64,
    /// What `call_at` was given, returned as is by `when()`; None for `call_later`, whose
    /// float is made on demand (most timers never have `when()` called).
    when_object: Option<Py<PyAny>>,
    cancelled: AtomicBool,
    /// True while the handle sits in the loop's timer heap.
    scheduled: AtomicBool,
    /// The loop's count of cancelled timers still in its heap (drives heap compaction).
    cancelled_in_heap: Arc<AtomicUsize>,
}

impl TimerHandle {
    pub fn new(
        callback: Callback,
        when: f64,
        when_object: Option<Py<PyAny>>,
        counter: Arc<AtomicUsize>,
    ) -> Self {
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
        crate::fault_point!("timer_cancel");
        if self.cancelled.swap(true, Ordering::Relaxed) || !self.scheduled.load(Ordering::Relaxed) {
            return;
        }
        self.cancelled_in_heap.fetch_add(1, Ordering::Relaxed);
        // A timeout's bound method must not keep its object alive until the heap is next
        // compacted.
        self.callback.release_on_cancel();
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The absolute time, on the loop's clock, the callback is scheduled for, as it was given.
    fn when(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.when_object {
            Some(when) => Ok(when.clone_ref(py)),
            None => Ok(self.when.into_pyobject(py)?.into_any().unbind()),
        }
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.callback.context(py)
    }

    /// asyncio's attribute, read by some libraries (aiohttp): the same object as `when()`, so
    /// an `int` given to `call_at` stays an `int`.
    #[getter]
    fn _when(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.when(py)
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.function(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        self.callback.args(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.source_traceback(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let head = format!("TimerHandle when={}", self.when(py)?.bind(py).repr()?);
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
        let same_callback = match (self.callback.parts(), other.callback.parts()) {
            (Some(a), Some(b)) => {
                a.function.bind(py).eq(b.function.bind(py))?
                    && a.args.to_tuple(py)?.eq(b.args.to_tuple(py)?)?
            }
            (None, None) => true,
            _ => false,
        };
        let same = std::ptr::eq(self, other)
            || (self.when == other.when && same_callback && self.is_cancelled() == other.is_cancelled());
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
}
