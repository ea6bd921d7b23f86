//! The tokio runtime behind one loop, and the GIL hand-off around its park.
//!
//! Each loop owns a current-thread runtime with the I/O and time drivers on. The thread that
//! runs the loop stays attached to the interpreter for the whole of `run_forever`; the runtime's
//! park hooks release the GIL just before the thread blocks in epoll and retake it right after,
//! so other Python threads run freely while the loop is idle and the busy path pays nothing.
//!
//! Soundness: while parked, pyo3 still believes this thread is attached. Nothing tokio runs
//! during a park may therefore own, drop or touch a Python object: our wakers, timers and fd
//! registrations hold only plain Rust data. The hooks are armed by [`ParkGuard`] only for the
//! duration of our own `block_on` on this thread, because releasing a GIL that is not held is
//! fatal. Only `LoopCore::_run_native` may arm them.

use std::cell::Cell;
use std::ptr;

use pyo3::ffi;
use tokio::runtime::{Builder, Runtime};

thread_local! {
    /// True while this thread is inside our `block_on` and holds the GIL outside a park.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// The thread state saved by the park hook, restored by the unpark hook.
    static SAVED: Cell<*mut ffi::PyThreadState> = const { Cell::new(ptr::null_mut()) };
}

fn release_gil_for_park() {
    if ARMED.with(Cell::get) {
        crate::fault_point!("park_hook");
        // SAFETY: armed means this thread holds the GIL (see ParkGuard) and nothing Python runs
        // until the matching unpark hook restores the saved state.
        let state = unsafe { ffi::PyEval_SaveThread() };
        SAVED.with(|s| s.set(state));
    }
}

fn retake_gil_after_park() {
    let state = SAVED.with(|s| s.replace(ptr::null_mut()));
    if !state.is_null() {
        // SAFETY: `state` was returned by PyEval_SaveThread on this same thread in the park hook.
        unsafe { ffi::PyEval_RestoreThread(state) };
    }
}

/// Builds the current-thread runtime one loop drives.
pub fn build() -> std::io::Result<Runtime> {
    Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .on_thread_park(release_gil_for_park)
        .on_thread_unpark(retake_gil_after_park)
        .build()
}

/// Arms the park hooks for as long as it lives; the caller must hold the GIL throughout.
pub struct ParkGuard {
    was_armed: bool,
}

impl ParkGuard {
    pub fn arm() -> Self {
        ParkGuard {
            was_armed: ARMED.with(|a| a.replace(true)),
        }
    }
}

impl Drop for ParkGuard {
    fn drop(&mut self) {
        // A panic unwinding out of a park would leave the GIL released: take it back first.
        retake_gil_after_park();
        ARMED.with(|a| a.set(self.was_armed));
    }
}
