//! The `contextvars.Context` a scheduled callback runs in, and the empty context lent to it.
//!
//! asyncio runs every callback in a copy of its caller's context, taken at scheduling time.
//! Most callers' contexts are empty, and an empty copy is only ever an empty mapping: keeping one
//! per pending callback cost a live Context object each (a 1M `call_soon` burst held 1M of
//! them). So a [`ContextSlot`] copies the caller's context, keeps the copy only when it holds
//! something, and otherwise runs the callback in an empty context lent from a per-loop spare.
//! What a holder can observe is unchanged: the same mapping, isolation between callbacks (a
//! lent context goes back to the spare only if the run left it empty and nobody else holds
//! it), and a stable `get_context()` (asking for the context makes it the slot's own).
//!
//! `handles` uses the slot; `LoopCore` owns its spare. Every function here needs the GIL.

use std::cell::UnsafeCell;
use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

/// An empty, unentered Context that only its loop holds, ready to be lent to a callback whose
/// caller's context was empty. One per loop, used only by the loop's thread with the GIL held.
#[derive(Default)]
pub struct SpareContext {
    context: UnsafeCell<Option<Py<PyAny>>>,
}

// SAFETY: every method takes a `Python` token, so the GIL serialises all access (the module
// does not declare free-threaded support), and none runs Python code while it holds the cell.
unsafe impl Sync for SpareContext {}

impl SpareContext {
    fn take(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        // SAFETY: see the Sync impl.
        match unsafe { (*self.context.get()).take() } {
            Some(context) => Ok(context),
            // SAFETY: GIL held; NULL sets an error.
            None => Ok(unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_New())? }.unbind()),
        }
    }

    fn put(&self, py: Python<'_>, context: Py<PyAny>) {
        // SAFETY: see the Sync impl.
        let previous = unsafe { (*self.context.get()).replace(context) };
        if let Some(previous) = previous {
            previous.drop_ref(py);
        }
    }
}

/// True if `object` has weak references (one could hand it to somebody later).
///
/// # Safety
/// GIL held; `object` alive.
pub(crate) unsafe fn has_weakrefs(object: *mut ffi::PyObject) -> bool {
    // SAFETY: per the contract; a positive offset is where the type keeps its weakref list.
    // A negative one (3.12's managed weakrefs) is not read here: answered "maybe", so the
    // object is never reused.
    unsafe {
        let offset = (*ffi::Py_TYPE(object)).tp_weaklistoffset;
        offset < 0
            || (offset > 0 && !(*object.cast::<u8>().offset(offset).cast::<*mut ffi::PyObject>()).is_null())
    }
}

/// True for a Context with no variables set, asked of the type's length slot directly.
///
/// # Safety
/// GIL held; `context` is a live `contextvars.Context`.
unsafe fn is_empty(context: *mut ffi::PyObject) -> bool {
    // SAFETY: per the contract; Context implements the mapping length slot, which cannot fail.
    unsafe {
        match (*ffi::Py_TYPE(context))
            .tp_as_mapping
            .as_ref()
            .and_then(|m| m.mp_length)
        {
            Some(length) => length(context) == 0,
            None => ffi::PyObject_Length(context) == 0,
        }
    }
}

/// The context of one callback: an owned Context, or none while the caller's was empty.
pub struct ContextSlot {
    context: UnsafeCell<Option<Py<PyAny>>>,
    /// The context is our own copy, taken off the GC's lists while only we hold it.
    owns_untracked: bool,
}

impl ContextSlot {
    /// `explicit` if the caller passed a context; otherwise the caller's current context.
    pub fn capture(py: Python<'_>, explicit: Option<Bound<'_, PyAny>>) -> PyResult<Self> {
        if let Some(context) = explicit.filter(|c| !c.is_none()) {
            return Ok(ContextSlot::holding(Some(context.unbind()), false));
        }
        // SAFETY: GIL held; a NULL return has set a Python error. The copy is new and ours
        // alone, so untracking it cannot hide a cycle (see Drop).
        unsafe {
            let copy = Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?;
            if is_empty(copy.as_ptr()) {
                return Ok(ContextSlot::holding(None, false));
            }
            ffi::PyObject_GC_UnTrack(copy.as_ptr().cast());
            Ok(ContextSlot::holding(Some(copy.unbind()), true))
        }
    }

    fn holding(context: Option<Py<PyAny>>, owns_untracked: bool) -> Self {
        ContextSlot {
            context: UnsafeCell::new(context),
            owns_untracked,
        }
    }

    /// The slot's content.
    ///
    /// # Safety
    /// GIL held, and no other reference from `slot()` alive (every use below is a short
    /// statement that runs no Python code while it holds one).
    #[allow(clippy::mut_from_ref)]
    unsafe fn slot(&self) -> &mut Option<Py<PyAny>> {
        // SAFETY: per the contract; the GIL serialises every access.
        unsafe { &mut *self.context.get() }
    }

    /// The context the callback runs in, made the slot's own if it was elided.
    pub fn get(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        // SAFETY: GIL held; no Python code runs while the slot is borrowed.
        let slot = unsafe { self.slot() };
        if let Some(context) = slot {
            return Ok(context.clone_ref(py));
        }
        // An empty Context is what a copy of an empty one would have been.
        // SAFETY: GIL held; NULL sets an error.
        let fresh = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_New())?.unbind() };
        *slot = Some(fresh.clone_ref(py));
        Ok(fresh)
    }

    /// Calls `call` inside the context, lending `spare`'s if the slot has none. `call` returns
    /// a new reference, or NULL with a Python error set.
    pub fn run(
        &self,
        py: Python<'_>,
        spare: &SpareContext,
        call: impl FnOnce() -> *mut ffi::PyObject,
    ) -> PyResult<()> {
        // SAFETY: GIL held; no Python code runs while the slot is borrowed.
        let lent = unsafe { self.slot() }.is_none();
        if lent {
            let spare = spare.take(py)?;
            // In the slot while it runs, so get_context() on the running handle returns it.
            // SAFETY: as above.
            *unsafe { self.slot() } = Some(spare);
        }
        // SAFETY: the slot now holds a context; nothing replaces a full slot, and the caller
        // keeps the slot alive while it runs (see `Callback::release`).
        let context = unsafe { self.slot() }
            .as_ref()
            .map_or(ptr::null_mut(), |c| c.as_ptr());
        // SAFETY: GIL held; Enter and Exit are paired on every path, and the call's error is
        // fetched before exiting.
        let outcome = unsafe {
            if ffi::PyContext_Enter(context) < 0 {
                Err(PyErr::fetch(py))
            } else {
                let result = call();
                let outcome = if result.is_null() {
                    Err(PyErr::fetch(py))
                } else {
                    ffi::Py_DECREF(result);
                    Ok(())
                };
                if ffi::PyContext_Exit(context) < 0 {
                    outcome.and(Err(PyErr::fetch(py)))
                } else {
                    outcome
                }
            }
        };
        if lent {
            self.give_back(py, spare);
        }
        outcome
    }

    /// After a run in a lent context: back to the spare if the run left it empty and unseen;
    /// otherwise the callback's own from now on, as a copy of its caller's context would be.
    fn give_back(&self, py: Python<'_>, spare: &SpareContext) {
        // SAFETY: GIL held (the loop thread, right after a run); no Python code runs while
        // the slot is borrowed.
        let slot = unsafe { self.slot() };
        let Some(context) = slot.as_ref() else {
            return;
        };
        // SAFETY: `context` is alive, owned by the slot.
        let unseen = unsafe {
            let context = context.as_ptr();
            ffi::Py_REFCNT(context) == 1 && !has_weakrefs(context) && is_empty(context)
        };
        if let Some(context) = slot.take_if(|_| unseen) {
            spare.put(py, context);
        }
    }

    /// Lets go of the context without pyo3's check for an attached thread (the caller proves
    /// it): the turn does this for every callback it ran.
    pub fn dispose(mut self, py: Python<'_>) {
        if let Some(context) = self.context.get_mut().take() {
            self.untracked_done(&context);
            context.drop_ref(py);
        }
    }

    fn untracked_done(&self, context: &Py<PyAny>) {
        if self.owns_untracked {
            // SAFETY: slots are dropped with the GIL held (handles die in tp_dealloc or in the
            // loop's turn); the context is alive; tracking an untracked GC object is allowed.
            unsafe {
                if ffi::PyObject_GC_IsTracked(context.as_ptr()) == 0 {
                    ffi::PyObject_GC_Track(context.as_ptr().cast());
                }
            }
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the collector holds the GIL and runs no Python code during traversal.
        match unsafe { self.slot() } {
            Some(context) => visit.call(&*context),
            None => Ok(()),
        }
    }
}

impl Drop for ContextSlot {
    /// A copied context is untracked while queued (a long queue of young contexts made every
    /// gen-0 collection walk them all). It goes back under the GC's watch before we let go:
    /// whoever else holds it may have put it in a cycle, and CPython's context dealloc unlinks
    /// the object from the GC list unconditionally, so it must be tracked to die.
    fn drop(&mut self) {
        if let Some(context) = self.context.get_mut().take() {
            self.untracked_done(&context);
            drop(context);
        }
    }
}
