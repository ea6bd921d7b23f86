//! Futures that touch only Rust, each one way a future can finish: at once, after waking itself,
//! after a sleep (the loop's timer natively, or tokio's: the hybrid path), with a Python error,
//! with a panic. Registered by `lib.rs`; called only by tests/test_rust_bridge_native.py.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokioloop_rs::future_into_py;

/// `ready(value)`: complete on its first poll.
#[pyfunction]
pub fn ready(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move { Ok(value) })
}

/// Pending once, after waking its own task: the smallest future that needs a second poll.
struct YieldOnce {
    yielded: bool,
}

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn yield_once_now() -> YieldOnce {
    YieldOnce { yielded: false }
}

/// `yield_once(value)`: pending once (it wakes itself), complete on the second poll.
#[pyfunction]
pub fn yield_once(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        yield_once_now().await;
        Ok(value)
    })
}

/// `sleep_ms(ms)`: `tokioloop_rs::time::sleep` (the loop's timer heap natively); completes with
/// `ms`.
#[pyfunction]
pub fn sleep_ms(py: Python<'_>, ms: u64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokioloop_rs::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    })
}

/// `tokio_sleep_ms(ms)`: `tokio::time::sleep` on the extension's runtime, even natively (its
/// timer fires on tokio's threads and wakes the task through the loop); completes with `ms`.
#[pyfunction]
pub fn tokio_sleep_ms(py: Python<'_>, ms: u64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    })
}

/// `timeout_ms(limit_ms, sleep_ms)`: `tokioloop_rs::time::timeout(limit, sleep(sleep_ms))`;
/// completes with True if the sleep finished first, False if the limit passed.
#[pyfunction]
pub fn timeout_ms(py: Python<'_>, limit_ms: u64, sleep_ms: u64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let slept = tokioloop_rs::time::sleep(Duration::from_millis(sleep_ms));
        let outcome = tokioloop_rs::time::timeout(Duration::from_millis(limit_ms), slept).await;
        Ok(outcome.is_ok())
    })
}

/// `fail(message)`: pending once, then fails with a Python `ValueError(message)`.
#[pyfunction]
pub fn fail(py: Python<'_>, message: String) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        yield_once_now().await;
        Err::<(), _>(PyValueError::new_err(message))
    })
}

/// `panic(message="boom")`: pending once, then panics with `message` on its second poll.
#[pyfunction]
#[pyo3(signature = (message = "boom".to_owned()))]
pub fn panic(py: Python<'_>, message: String) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        yield_once_now().await;
        panic_with(&message)
    })
}

fn panic_with(message: &str) -> PyResult<()> {
    panic!("{message}")
}
