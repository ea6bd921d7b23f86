//! Finding tokioloop's ABI table from the running loop: `type(loop)._tokioloop_capi_1`, a
//! capsule holding a `tokioloop_ffi::Api`, looked up once per loop type and kept, then checked
//! for size and minor version (too old = fallback, never an error), then `loop_from_object`
//! (NULL = not a tokioloop loop running on this thread = fallback). Only this module reads
//! capsules.

use std::mem::size_of;
use std::ptr::NonNull;
use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyType};
use tokioloop_ffi as ffi;

/// A tokioloop loop running on this thread and the table of the build that runs it.
#[derive(Clone, Copy)]
pub(crate) struct NativeLoop {
    pub(crate) api: &'static ffi::Api,
    pub(crate) lp: *const ffi::Loop,
}

// The loop pointer is only handed back to tokioloop, which only accepts it on the loop's thread
// with the GIL held; every caller here checks that it is there (see `polling`).
unsafe impl Send for NativeLoop {}
unsafe impl Sync for NativeLoop {}

impl NativeLoop {
    /// The running loop of this thread if it is a tokioloop whose bridge this crate can use.
    pub(crate) fn running(py: Python<'_>) -> Option<NativeLoop> {
        let event_loop = running_loop(py)?;
        let api = api_of_type(&event_loop.get_type())?;
        // SAFETY: a compatible table (checked when it was cached); the argument is a live object.
        let lp = unsafe { (api.loop_from_object)(event_loop.as_ptr().cast()) };
        (!lp.is_null()).then_some(NativeLoop { api, lp })
    }
}

/// `asyncio._get_running_loop()`: None when no loop runs on this thread. It is the C function
/// behind `get_running_loop` without the exception, and the cheapest way asyncio offers.
fn running_loop(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let getter = GET_RUNNING_LOOP
        .get_or_try_init(py, || {
            py.import("asyncio")?
                .getattr("_get_running_loop")
                .map(Bound::unbind)
        })
        .ok()?;
    let found = getter.bind(py).call0().ok()?;
    (!found.is_none()).then_some(found)
}

/// A loop type seen before and what it offered. The type and the capsule are kept alive so
/// that neither the type's address (the key) nor the table can be reused by something else.
struct KnownType {
    loop_type: Py<PyType>,
    api: Option<&'static ffi::Api>,
    _capsule: Option<Py<PyAny>>,
}

// Processes see a handful of loop types, so a list beats a map; the lock is never held while
// Python runs (a getattr could switch threads and another thread could want it).
static KNOWN_TYPES: Mutex<Vec<KnownType>> = Mutex::new(Vec::new());

fn api_of_type(loop_type: &Bound<'_, PyType>) -> Option<&'static ffi::Api> {
    let known = |types: &[KnownType]| {
        types
            .iter()
            .find(|seen| seen.loop_type.as_ptr() == loop_type.as_ptr())
            .map(|seen| seen.api)
    };
    if let Some(api) = known(&KNOWN_TYPES.lock().unwrap_or_else(PoisonError::into_inner)) {
        return api;
    }
    let capsule = loop_type
        .getattr(ffi::TYPE_ATTRIBUTE)
        .ok()
        .filter(|attribute| attribute.is_instance_of::<PyCapsule>());
    let api = capsule.as_ref().and_then(compatible_api);
    let mut types = KNOWN_TYPES.lock().unwrap_or_else(PoisonError::into_inner);
    if known(&types).is_none() {
        types.push(KnownType {
            loop_type: loop_type.clone().unbind(),
            api,
            _capsule: capsule.map(|found| found.unbind()),
        });
    }
    api
}

fn compatible_api(capsule: &Bound<'_, PyAny>) -> Option<&'static ffi::Api> {
    let capsule = capsule.cast::<PyCapsule>().ok()?;
    let table = capsule.pointer_checked(Some(ffi::CAPSULE_NAME)).ok()?;
    // SAFETY: a capsule under this name holds an `Api` of some minor version, which starts with
    // `size`; it lives as long as the capsule, which the cache keeps.
    unsafe { checked_table(table.cast()) }
}

/// The table behind `table` if its build has every field this crate's `Api` has. Reads `size`
/// before anything else: a table from an older minor may be shorter than ours.
///
/// # Safety
/// `table` points to an exported `Api` that starts with `size` and lives for the process.
pub(crate) unsafe fn checked_table(table: NonNull<ffi::Api>) -> Option<&'static ffi::Api> {
    let size = table.cast::<usize>().read();
    if size < size_of::<ffi::Api>() {
        return None;
    }
    let api = &*table.as_ptr();
    // Always true while MINOR is 0; it is the check that matters once fields are appended.
    #[allow(clippy::absurd_extreme_comparisons)]
    let has_our_minor = api.minor >= ffi::MINOR;
    has_our_minor.then_some(api)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fake;

    /// A loop of the fake table, told apart from others by `id`.
    pub(crate) fn fake_loop(id: usize) -> NativeLoop {
        NativeLoop {
            api: &fake::API,
            lp: id as *const ffi::Loop,
        }
    }

    #[test]
    fn a_table_of_this_minor_or_newer_is_used() {
        let table = unsafe { checked_table(NonNull::from(&fake::API)) };
        assert!(table.is_some_and(|api| std::ptr::eq(api, &fake::API)));
    }

    #[test]
    fn a_shorter_table_means_fallback() {
        // Only `size` is read from a table that says it is shorter than ours.
        let mut short = [0usize; 1];
        short[0] = size_of::<usize>() + 4;
        let table = NonNull::from(&mut short).cast::<ffi::Api>();
        assert!(unsafe { checked_table(table) }.is_none());
    }
}
