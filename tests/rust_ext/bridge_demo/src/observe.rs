//! What the tests observe a future's run with: the thread that polled it, the mode
//! tokioloop_rs picks here, and the contextvars the poll sees. Registered by `lib.rs`; called
//! only by tests/test_rust_bridge_native.py.

use pyo3::prelude::*;
use tokioloop_rs::{future_into_py, Mode};

pub(crate) fn os_thread_id() -> i64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    i64::from(unsafe { libc::gettid() })
}

/// `thread_id()`: the OS thread id (as `threading.get_native_id()` gives) of the thread that
/// polled the future to completion.
#[pyfunction]
pub fn thread_id(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move { Ok(os_thread_id()) })
}

/// `current_thread_id()`: the OS thread id of the caller, to compare with `thread_id()`'s.
#[pyfunction]
pub fn current_thread_id() -> i64 {
    os_thread_id()
}

/// `mode()`: "native" or "fallback", what `future_into_py` would do if called here now.
#[pyfunction]
pub fn mode(py: Python<'_>) -> &'static str {
    match tokioloop_rs::mode(py) {
        Mode::Native => "native",
        Mode::Fallback => "fallback",
    }
}

/// `context_get(var)`: `var.get()` called from Python inside the future's poll. Natively the poll
/// runs in the caller's copied context; on the fallback it runs on a tokio thread, whose context
/// is the default one (as pyo3-async-runtimes documents).
#[pyfunction]
pub fn context_get(py: Python<'_>, var: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(
        py,
        async move { Python::attach(|py| var.call_method0(py, "get")) },
    )
}

/// `call_coro(awaitable)`: a Rust future that turns `awaitable` into a Rust future with
/// `tokioloop_rs::into_future` (pyo3-async-runtimes' for now) and completes with its result or
/// exception. Natively `into_future` is called inside the poll, on the loop's thread in the
/// caller's copied context; on the fallback, on a tokio thread with the context pyo3-async-
/// runtimes copied at the call. Either way the awaitable runs on the loop in the caller's context.
#[pyfunction]
pub fn call_coro(py: Python<'_>, awaitable: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let awaited = Python::attach(|py| tokioloop_rs::into_future(awaitable.into_bound(py)))?;
        awaited.await
    })
}
