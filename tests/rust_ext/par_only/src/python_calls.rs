//! Rust futures that call back into Python: `into_future` of a Python awaitable, a plain call, and
//! the two entries that run a loop from Rust (`pyo3_async_runtimes::tokio::run` and
//! `run_until_complete`).

use std::time::Duration;

use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::{future_into_py, get_current_loop, into_future};

/// `call_coro(awaitable, delay_ms=0)`: a Rust future that (after a Rust sleep of `delay_ms`, so
/// that it runs well after the call returned) turns `awaitable` into a Rust future with
/// `into_future` and completes with its result or exception.
///
/// `into_future` is called inside the Rust future, on a runtime thread where no loop runs: it
/// finds the loop and the contextvars through the task-local that `future_into_py` set from the
/// caller (`copy_context()` at the call), and schedules the awaitable on that loop in that context.
#[pyfunction]
#[pyo3(signature = (awaitable, delay_ms = 0))]
pub fn call_coro(py: Python<'_>, awaitable: Py<PyAny>, delay_ms: u64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        let awaited = Python::attach(|py| into_future(awaitable.into_bound(py)))?;
        awaited.await
    })
}

/// `call_sync(function)`: a Rust future that calls `function()` directly (`Python::attach` on a
/// runtime thread) and completes with its result. pyo3-async-runtimes documents that such a call
/// does not see the caller's contextvars; the tests check that this holds on every loop.
#[pyfunction]
pub fn call_sync(py: Python<'_>, function: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move { Python::attach(|py| function.call0(py)) })
}

/// The future both entries run: awaits `awaitable` through `into_future`, then reports the loop
/// that pyo3-async-runtimes ran it on (the task-local loop), as `(result, loop)`.
async fn await_and_name_loop(awaitable: Py<PyAny>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
    let awaited = Python::attach(|py| into_future(awaitable.into_bound(py)))?;
    let result = awaited.await?;
    let event_loop = Python::attach(|py| get_current_loop(py).map(Bound::unbind))?;
    Ok((result, event_loop))
}

/// `run(awaitable)`: `pyo3_async_runtimes::tokio::run`, which makes a loop with
/// `asyncio.new_event_loop()` (so the installed policy chooses it), runs the future to completion
/// on it, shuts it down and closes it. Returns `(result, loop)`.
#[pyfunction]
pub fn run(py: Python<'_>, awaitable: Py<PyAny>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
    pyo3_async_runtimes::tokio::run(py, await_and_name_loop(awaitable))
}

/// `run_until_complete(loop, awaitable)`: `pyo3_async_runtimes::tokio::run_until_complete` on a
/// loop the caller made (and still owns). Returns `(result, loop)`.
#[pyfunction]
pub fn run_until_complete(
    event_loop: Bound<'_, PyAny>,
    awaitable: Py<PyAny>,
) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
    pyo3_async_runtimes::tokio::run_until_complete(event_loop, await_and_name_loop(awaitable))
}
