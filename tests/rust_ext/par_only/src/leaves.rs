//! Futures that touch only Rust (and tokio's timer): each async function the tests compare across
//! loops, handed to Python by `pyo3_async_runtimes::tokio::future_into_py`.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::future_into_py;

/// `ready(value)`: a future that is complete on its first poll.
#[pyfunction]
pub fn ready(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move { Ok(value) })
}

/// `yield_once(value)`: pending once (it wakes itself), complete on the second poll.
#[pyfunction]
pub fn yield_once(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokio::task::yield_now().await;
        Ok(value)
    })
}

/// `sleep_ms(ms)`: a tokio timer on the bridge's runtime; completes with `ms`.
#[pyfunction]
pub fn sleep_ms(py: Python<'_>, ms: u64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    })
}

/// `fail(message)`: pending once, then fails with a Python `ValueError(message)`.
#[pyfunction]
pub fn fail(py: Python<'_>, message: String) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokio::task::yield_now().await;
        Err::<(), _>(PyValueError::new_err(message))
    })
}

/// `panic(message)`: pending once, then panics with `message` on its second poll.
#[pyfunction]
pub fn panic(py: Python<'_>, message: String) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokio::task::yield_now().await;
        panic_with(&message)
    })
}

fn panic_with(message: &str) -> PyResult<()> {
    panic!("{message}")
}

/// `thread_id()`: the OS thread id (as `threading.get_native_id()` gives) of the thread that
/// polled the future to completion.
#[pyfunction]
pub fn thread_id(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        // SAFETY: gettid has no preconditions and cannot fail.
        let id = unsafe { libc::gettid() };
        Ok(i64::from(id))
    })
}
