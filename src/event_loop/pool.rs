//! A loop's pool of finished `call_soon` handles, refilled instead of allocating new ones.
//!
//! Every Task step and Future wake-up is a `call_soon` whose handle nobody keeps. Allocating
//! and freeing one per step through pyo3 (object_new, pyo3's locked freelist, GC link and
//! untrack, the dealloc trampoline) cost about 420 instructions per step under callgrind. The
//! turn gives back a handle only when nobody else holds it and it has no weak references
//! (`Handle::is_unshared`), so a refilled handle is never seen by anyone who saw it before.
//! `LoopCore` owns the pool; `schedule_ready` takes from it and the turn gives to it.

use std::cell::UnsafeCell;

use pyo3::prelude::*;

use crate::handles::Handle;

/// A thread holding the GIL for one 5 ms switch interval queues up to ~25,000 threadsafe
/// callbacks (0.2 µs each). With a smaller pool most of each burst was allocated from fresh
/// memory: callgrind's cache simulation showed obmalloc and pyo3's zeroing memset taking ~1.75
/// last-level write misses per callback, and call_soon_threadsafe cost 1.21-1.27x rloop's CPU
/// with 4096 pooled against 1.00-1.03x with 32768 (paired runs). At most ~3.5 MiB of empty
/// handles, held only after such a burst and let go when the loop closes. A burst beyond it
/// allocates as before.
const CAPACITY: usize = 32768;

#[derive(Default)]
pub struct HandlePool {
    handles: UnsafeCell<Vec<Py<Handle>>>,
}

// SAFETY: every method takes a `Python` token, so the GIL serialises all access (the module
// does not declare free-threaded support), and none runs Python code while it holds the Vec.
unsafe impl Sync for HandlePool {}

impl HandlePool {
    pub fn take(&self, _py: Python<'_>) -> Option<Py<Handle>> {
        // SAFETY: see the Sync impl.
        unsafe { (*self.handles.get()).pop() }
    }

    pub fn give(&self, _py: Python<'_>, handle: Py<Handle>) {
        // SAFETY: see the Sync impl.
        let handles = unsafe { &mut *self.handles.get() };
        if handles.len() < CAPACITY {
            handles.push(handle);
            return;
        }
        drop(handle);
    }

    /// Empties the pool (loop close, GC clear); the caller drops what it returns.
    pub fn drain(&self, _py: Python<'_>) -> Vec<Py<Handle>> {
        // SAFETY: see the Sync impl.
        std::mem::take(unsafe { &mut *self.handles.get() })
    }
}
