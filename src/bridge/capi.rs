//! The exported C API table (`tokioloop_ffi::Api`, major 1) and its capsule: the only way an
//! extension reaches the bridge. Every entry runs on the loop thread with the GIL held (the
//! ABI's rule, checked where cheap: `loop_from_object` answers NULL off the loop's thread), and
//! none unwinds: a panic in here becomes a Python exception and a NULL or 0 answer.
//!
//! The capsule is a class attribute of `LoopCore` (so `type(loop)._tokioloop_capi_1` finds it
//! without importing tokioloop) and `_tokioloop._C_API_1`. Only `lib.rs` installs it.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};

use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyType};
use tokioloop_ffi as cabi;

use super::fd::BridgeFd;
use super::timer::{TimerFire, TimerState};
use crate::event_loop::LoopCore;
use crate::handles::TimerHandle;
use crate::io::Direction;

static API: cabi::Api = cabi::Api {
    size: std::mem::size_of::<cabi::Api>(),
    minor: cabi::MINOR,
    loop_from_object,
    spawn,
    time,
    timer_new,
    timer_poll,
    timer_free,
    fd_new,
    fd_poll,
    fd_clear,
    fd_free,
};

/// Puts the capsule on the loop type and in the module.
pub fn install(module: &Bound<'_, PyModule>, loop_type: &Bound<'_, PyType>) -> PyResult<()> {
    let py = module.py();
    let pointer = NonNull::from(&API).cast::<c_void>();
    // SAFETY: `API` is static and immutable: valid for the process's life.
    let capsule = unsafe { PyCapsule::new_with_pointer(py, pointer, cabi::CAPSULE_NAME)? };
    loop_type.setattr(cabi::TYPE_ATTRIBUTE, &capsule)?;
    module.add("_C_API_1", capsule)
}

/// Runs `body` with the GIL the ABI says the caller holds; a panic becomes a Python exception
/// and `failed` is returned.
fn guarded<T>(failed: T, body: impl FnOnce(Python<'_>) -> PyResult<T>) -> T {
    // SAFETY: every entry of the table is called with the GIL held (the ABI's rule).
    let py = unsafe { Python::assume_attached() };
    match catch_unwind(AssertUnwindSafe(|| body(py))) {
        Ok(Ok(value)) => value,
        Ok(Err(err)) => {
            err.restore(py);
            failed
        }
        Err(payload) => {
            PanicException::new_err(crate::errors::panic_message(&*payload)).restore(py);
            failed
        }
    }
}

/// The loop object behind an ABI `Loop` pointer (which is the loop's `PyObject*`).
///
/// # Safety
/// `lp` came from `loop_from_object` and the loop object is alive (the ABI's rule).
unsafe fn loop_ref<'py>(py: Python<'py>, lp: *const cabi::Loop) -> PyResult<Bound<'py, LoopCore>> {
    // SAFETY: per the contract, a live object; borrowed, so a new strong reference is taken.
    let object = unsafe { Bound::from_borrowed_ptr(py, lp as *mut pyo3::ffi::PyObject) };
    Ok(object.cast_into::<LoopCore>()?)
}

unsafe extern "C" fn loop_from_object(obj: *mut cabi::PyObject) -> *const cabi::Loop {
    guarded(ptr::null(), |py| {
        if obj.is_null() {
            return Ok(ptr::null());
        }
        // SAFETY: the caller lends a live object.
        let object = unsafe { Bound::from_borrowed_ptr(py, obj.cast::<pyo3::ffi::PyObject>()) };
        Ok(match object.cast::<LoopCore>() {
            Ok(core) if core.get().bridge_runs_here() => obj as *const cabi::Loop,
            _ => ptr::null(),
        })
    })
}

unsafe extern "C" fn spawn(lp: *const cabi::Loop, task: cabi::Task) -> *mut cabi::PyObject {
    // The task is ours from here: `bridge_spawn` owns it at once, even if it fails.
    guarded(ptr::null_mut(), |py| {
        // SAFETY: per the ABI, `lp` came from `loop_from_object` and the loop is alive.
        let core = unsafe { loop_ref(py, lp) }?;
        let future = LoopCore::bridge_spawn(&core, task)?;
        Ok(future.into_ptr().cast::<cabi::PyObject>())
    })
}

unsafe extern "C" fn time(lp: *const cabi::Loop) -> f64 {
    guarded(f64::NAN, |py| {
        // SAFETY: per the ABI.
        let core = unsafe { loop_ref(py, lp) }?;
        core.get().bridge_time(py)
    })
}

/// What an ABI `Timer` pointer owns.
struct BridgeTimer {
    state: std::sync::Arc<TimerState>,
    handle: Py<TimerHandle>,
}

unsafe extern "C" fn timer_new(lp: *const cabi::Loop, when: f64) -> *mut cabi::Timer {
    guarded(ptr::null_mut(), |py| {
        // SAFETY: per the ABI.
        let core = unsafe { loop_ref(py, lp) }?;
        let state = TimerState::new();
        let fire = Bound::new(py, TimerFire { state: state.clone() })?;
        let handle = LoopCore::bridge_timer(&core, when, fire.into_any())?;
        Ok(Box::into_raw(Box::new(BridgeTimer { state, handle })).cast::<cabi::Timer>())
    })
}

unsafe extern "C" fn timer_poll(timer: *mut cabi::Timer, waker: *const cabi::Waker) -> u8 {
    guarded(0, |_py| {
        // SAFETY: per the ABI, a live timer from `timer_new` and a waker lent for this call.
        let timer = unsafe { &*timer.cast::<BridgeTimer>() };
        Ok(u8::from(unsafe { timer.state.poll(&*waker) }))
    })
}

unsafe extern "C" fn timer_free(timer: *mut cabi::Timer) {
    guarded((), |py| {
        if timer.is_null() {
            return Ok(());
        }
        // SAFETY: per the ABI, from `timer_new` and freed once.
        let timer = unsafe { Box::from_raw(timer.cast::<BridgeTimer>()) };
        timer.state.forget_waker();
        timer.handle.bind(py).call_method0(pyo3::intern!(py, "cancel"))?;
        Ok(())
    })
}

fn direction(code: u8) -> PyResult<Direction> {
    match code {
        cabi::READ => Ok(Direction::Read),
        cabi::WRITE => Ok(Direction::Write),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "invalid direction {other}"
        ))),
    }
}

unsafe extern "C" fn fd_new(lp: *const cabi::Loop, fd: std::ffi::c_int) -> *mut cabi::Fd {
    guarded(ptr::null_mut(), |py| {
        // SAFETY: per the ABI.
        let core = unsafe { loop_ref(py, lp) }?;
        let engine = BridgeFd::attach(core.as_any(), fd)?;
        Ok(Box::into_raw(Box::new(engine)).cast::<cabi::Fd>())
    })
}

unsafe extern "C" fn fd_poll(fd: *mut cabi::Fd, code: u8, waker: *const cabi::Waker) -> u8 {
    guarded(0, |py| {
        // SAFETY: per the ABI, a live handle from `fd_new` and a waker lent for this call.
        let engine = unsafe { &*fd.cast::<Py<BridgeFd>>() };
        Ok(u8::from(unsafe {
            engine.get().poll(py, direction(code)?, &*waker)
        }))
    })
}

unsafe extern "C" fn fd_clear(fd: *mut cabi::Fd, code: u8) -> u8 {
    guarded(0, |_py| {
        // SAFETY: per the ABI, a live handle from `fd_new`.
        let engine = unsafe { &*fd.cast::<Py<BridgeFd>>() };
        Ok(u8::from(engine.get().clear(direction(code)?)))
    })
}

unsafe extern "C" fn fd_free(fd: *mut cabi::Fd) {
    guarded((), |_py| {
        if fd.is_null() {
            return Ok(());
        }
        // SAFETY: per the ABI, from `fd_new` and freed once; the GIL is held to drop the Py.
        let engine = unsafe { Box::from_raw(fd.cast::<Py<BridgeFd>>()) };
        engine.get().release();
        Ok(())
    })
}
