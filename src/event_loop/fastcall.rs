//! Hand-written entry points for the hottest calls: `call_soon`, `call_soon_threadsafe`,
//! `get_debug` (C asyncio's Future and Task constructors call it) and `create_future`.
//!
//! Every Future done-callback and every Task step enters the loop through `call_soon(cb, *args,
//! context=ctx)`. pyo3's generic argument machinery (keyword matching, varargs collection, the
//! trampoline's bookkeeping) cost about 250 instructions per call under callgrind; these
//! METH_FASTCALL|METH_KEYWORDS functions parse the one shape directly and call the same
//! `LoopCore` code. `install` replaces the two attributes on the class at module init; the
//! `#[pymethods]` versions stay as the fallback definition and keep their signatures.

use std::any::Any;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::types::{PyString, PyTuple, PyType};

use crate::handles::Args;

use super::LoopCore;

type Schedule = for<'py> fn(
    &Bound<'py, LoopCore>,
    Bound<'py, PyAny>,
    Args,
    Option<Bound<'py, PyAny>>,
) -> PyResult<Py<PyAny>>;

/// The last `"context"` keyword name seen: C asyncio passes the same string object every time
/// (its own static string, which on 3.11 is not the interned one), so a pointer compare
/// recognises it. Holds a strong reference; written only with the GIL held.
static CONTEXT_KEYWORD: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// Remembers `key` (a str equal to "context") for the pointer compare.
///
/// # Safety
/// GIL held; `key` is a live borrowed reference.
unsafe fn remember_context_keyword(key: *mut ffi::PyObject) {
    // SAFETY: per the contract; the swapped-out name was a strong reference of ours.
    unsafe {
        ffi::Py_INCREF(key);
        let previous = CONTEXT_KEYWORD.swap(key, Ordering::Relaxed);
        if !previous.is_null() {
            ffi::Py_DECREF(previous);
        }
    }
}

/// Parses `(callback, *args, context=None)` and schedules through `schedule`.
///
/// # Safety
/// Called by CPython as a METH_FASTCALL|METH_KEYWORDS method: the GIL is held, `args` holds
/// `nargs` positional values followed by one value per name in `kwnames`, all borrowed.
unsafe fn entry(
    name: &'static str,
    schedule: Schedule,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython holds the GIL for the duration of a method call.
    let py = unsafe { Python::assume_attached() };
    guarded(py, || -> PyResult<*mut ffi::PyObject> {
        // SAFETY: per this function's contract, every pointer read below is a live borrowed
        // reference; PyTuple_New/SET_ITEM build an owned tuple from new references.
        unsafe {
            // The method descriptor has already checked that `slf` is a LoopCore (CPython's
            // descr_check), so the MRO walk of a checked cast would be spent twice.
            let this = Bound::from_borrowed_ptr(py, slf);
            let this = this.cast_unchecked::<LoopCore>();
            let mut callback = (nargs >= 1).then(|| Bound::from_borrowed_ptr(py, *args));
            let extra = match nargs {
                0 | 1 => Args::None,
                2 => Args::One(Bound::from_borrowed_ptr(py, *args.offset(1)).unbind()),
                _ => {
                    let tuple = ffi::PyTuple_New(nargs - 1);
                    let tuple = Bound::from_owned_ptr_or_err(py, tuple)?.cast_into_unchecked::<PyTuple>();
                    for i in 1..nargs {
                        let item = *args.offset(i);
                        ffi::Py_INCREF(item);
                        ffi::PyTuple_SET_ITEM(tuple.as_ptr(), i - 1, item);
                    }
                    Args::Many(tuple.unbind())
                }
            };
            let mut context = None;
            if !kwnames.is_null() {
                let expected = CONTEXT_KEYWORD.load(Ordering::Relaxed);
                let count = ffi::PyTuple_GET_SIZE(kwnames);
                for i in 0..count {
                    let key = ffi::PyTuple_GET_ITEM(kwnames, i);
                    let value = Bound::from_borrowed_ptr(py, *args.offset(nargs + i));
                    if key == expected {
                        context = Some(value);
                        continue;
                    }
                    let keyword = Bound::from_borrowed_ptr(py, key).cast_into::<PyString>()?;
                    match keyword.to_str()? {
                        "context" => {
                            remember_context_keyword(key);
                            context = Some(value)
                        }
                        // asyncio's signature is (callback, *args, context=None).
                        "callback" if callback.is_none() => callback = Some(value),
                        "callback" => {
                            return Err(PyTypeError::new_err(format!(
                                "{name}() got multiple values for argument 'callback'"
                            )))
                        }
                        _ => {
                            return Err(PyTypeError::new_err(format!(
                                "{name}() got an unexpected keyword argument '{}'",
                                keyword.to_str()?
                            )))
                        }
                    }
                }
            }
            let Some(callback) = callback else {
                return Err(PyTypeError::new_err(format!(
                    "{name}() missing 1 required positional argument: 'callback'"
                )));
            };
            Ok(schedule(this, callback, extra, context)?.into_ptr())
        }
    })
}

/// Runs a method body: its error, or a panic as a PanicException, becomes the raised
/// exception (NULL return), as pyo3's own trampoline would make it.
fn guarded(py: Python<'_>, body: impl FnOnce() -> PyResult<*mut ffi::PyObject>) -> *mut ffi::PyObject {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(object)) => object,
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(payload) => {
            panic_error(payload).restore(py);
            std::ptr::null_mut()
        }
    }
}

fn panic_error(payload: Box<dyn Any + Send>) -> PyErr {
    PanicException::new_err(crate::errors::panic_message(&*payload))
}

unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded from CPython's METH_FASTCALL|METH_KEYWORDS call.
    unsafe {
        entry(
            "call_soon",
            LoopCore::schedule_soon_any,
            slf,
            args,
            nargs,
            kwnames,
        )
    }
}

unsafe extern "C" fn call_soon_threadsafe(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded from CPython's METH_FASTCALL|METH_KEYWORDS call.
    unsafe {
        entry(
            "call_soon_threadsafe",
            LoopCore::schedule_threadsafe,
            slf,
            args,
            nargs,
            kwnames,
        )
    }
}

/// `get_debug()`: C asyncio's Future and Task constructors call it on their loop every time.
unsafe extern "C" fn get_debug(slf: *mut ffi::PyObject, _unused: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_NOARGS method with the GIL held and `slf` a LoopCore
    // (the method descriptor checked it); the bool singletons are immortal or refcounted here.
    unsafe {
        let py = Python::assume_attached();
        let this = Bound::from_borrowed_ptr(py, slf);
        let result = if this.cast_unchecked::<LoopCore>().get().debug() {
            ffi::Py_True()
        } else {
            ffi::Py_False()
        };
        ffi::Py_INCREF(result);
        result
    }
}

/// `create_future()`: every `await` of a fresh Future in a protocol or library starts here.
unsafe extern "C" fn create_future(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_NOARGS method with the GIL held and `slf` a LoopCore
    // (the method descriptor checked it).
    unsafe {
        let py = Python::assume_attached();
        let this = Bound::from_borrowed_ptr(py, slf);
        guarded(py, || {
            crate::fault_point!("create_future");
            Ok(super::tasks::new_future(&this)?.into_ptr())
        })
    }
}

/// A `PyMethodDef` table that lives for the whole process, as CPython requires.
struct MethodTable([ffi::PyMethodDef; 4]);
// SAFETY: the table is immutable after construction and only read by CPython under the GIL.
unsafe impl Sync for MethodTable {}

const FLAGS: std::ffi::c_int = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;

static METHODS: MethodTable = MethodTable([
    ffi::PyMethodDef {
        ml_name: c"call_soon".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: call_soon,
        },
        ml_flags: FLAGS,
        ml_doc:
            c"call_soon(callback, *args, context=None)\n--\n\nSchedule callback(*args) for the next turn."
                .as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"call_soon_threadsafe".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: call_soon_threadsafe,
        },
        ml_flags: FLAGS,
        ml_doc:
            c"call_soon_threadsafe(callback, *args, context=None)\n--\n\nLike call_soon, from any thread."
                .as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"get_debug".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: get_debug,
        },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"get_debug()\n--\n\nTrue if the loop is in debug mode.".as_ptr(),
    },
    ffi::PyMethodDef {
        ml_name: c"create_future".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: create_future,
        },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: c"create_future()\n--\n\nA new asyncio.Future attached to this loop.".as_ptr(),
    },
]);

/// Replaces `call_soon`, `call_soon_threadsafe`, `get_debug` and `create_future` on `LoopCore`
/// with the entries above.
pub fn install(class: &Bound<'_, PyType>) -> PyResult<()> {
    let py = class.py();
    for def in &METHODS.0 {
        // SAFETY: `def` is 'static; CPython only reads it. The GIL is held.
        let descriptor = unsafe {
            let raw =
                ffi::PyDescr_NewMethod(class.as_ptr().cast(), (def as *const ffi::PyMethodDef).cast_mut());
            Bound::from_owned_ptr_or_err(py, raw)?
        };
        // SAFETY: ml_name is a valid NUL-terminated static string.
        let name = unsafe { CStr::from_ptr(def.ml_name) }
            .to_str()
            .map_err(|_| PyRuntimeError::new_err("bad method name"))?;
        class.setattr(name, descriptor)?;
    }
    Ok(())
}
