//! OS errors as the Python exceptions asyncio would see: `OSError(errno, strerror)`, which
//! Python itself narrows to the right subclass (ConnectionResetError, BrokenPipeError, ...),
//! so `exc.errno` is kept. Used by the native transports and the DNS completions. Also the
//! loop's error rules that transports share: which exceptions end `run_forever`, and the
//! error for a loop used after fork().

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit};
use pyo3::prelude::*;

/// The exception for `errno`, as `socket` methods raise it.
pub fn os_error(errno: i32) -> PyErr {
    PyOSError::new_err((errno, strerror(errno)))
}

/// An `io::Error` from the OS as `OSError` with its errno (pyo3's own conversion keeps only
/// the message); one without an errno falls back to pyo3's mapping by kind.
pub fn from_io(error: std::io::Error) -> PyErr {
    match error.raw_os_error() {
        Some(errno) => os_error(errno),
        None => PyErr::from(error),
    }
}

/// The system's text for `errno`, as Python's `os.strerror` gives it.
pub fn strerror(errno: i32) -> String {
    let message = std::io::Error::from_raw_os_error(errno).to_string();
    // std appends " (os error N)"; Python's strerror is the bare text.
    match message.rfind(" (os error") {
        Some(end) => message[..end].to_string(),
        None => message,
    }
}

/// The calling thread's errno after a failed libc call.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// True for the exceptions that end `run_forever` instead of reaching the exception handler.
pub fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// The error for using a loop in a process forked from the one that made it.
pub fn forked_error() -> PyErr {
    PyRuntimeError::new_err(
        "this event loop was created in another process and cannot be used after fork(); \
         create a new one with tokioloop.new_event_loop()",
    )
}

/// A panic's message, as pyo3 puts it into the `PanicException` it raises: the `&str` or
/// `String` the panic carried, or a generic text.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic in tokioloop".to_owned())
}
