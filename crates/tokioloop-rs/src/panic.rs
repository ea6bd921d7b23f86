//! Panics in user futures become Python exceptions: [`RustPanic`] with the message
//! "rust future panicked: <message>", the same class and message in both modes (the fallback
//! catches the panic before pyo3-async-runtimes sees it, so its own `RustPanic` class never
//! shows). Used by `native_task` and `catch_panic` (the fallback's wrapper).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyException;
use pyo3::{create_exception, PyErr};

create_exception!(
    tokioloop_rs,
    RustPanic,
    PyException,
    "A Rust future panicked; the message is the panic's."
);

/// The Python error a caught panic becomes.
pub(crate) fn panic_error(payload: Box<dyn Any + Send>) -> PyErr {
    let message = panic_message(&*payload);
    // The payload's own drop may panic too; that one is not worth a second report.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    RustPanic::new_err(format!("rust future panicked: {message}"))
}

/// What `panic!` was given: a `&str` or a `String` (formatted); anything else (`panic_any`) is
/// "unknown error".
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown error".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_of(payload: Box<dyn Any + Send>) -> String {
        panic_message(&*payload)
    }

    #[test]
    fn the_message_is_the_panics() {
        assert_eq!(message_of(Box::new("literal")), "literal");
        assert_eq!(message_of(Box::new(format!("n = {}", 3))), "n = 3");
        assert_eq!(message_of(Box::new(7_u8)), "unknown error");
    }
}
