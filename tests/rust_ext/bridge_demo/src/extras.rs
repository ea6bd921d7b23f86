//! The crate's extras beyond `future_into_py`: `current()` and `LoopRef::spawn` (native only,
//! no tokio context), `task::spawn_blocking` and `task::yield_now`. Registered by `lib.rs`;
//! called only by tests/test_rust_bridge_native.py.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokioloop_rs::future_into_py;

/// `spawned_on_loop(value)`: `value` after one yield, spawned through `LoopRef::spawn`, so it
/// exists only on a running tokioloop; elsewhere it raises RuntimeError at once.
#[pyfunction]
pub fn spawned_on_loop(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    let Some(running) = tokioloop_rs::current(py) else {
        return Err(PyRuntimeError::new_err("no tokioloop loop running here"));
    };
    running.spawn(py, async move {
        tokioloop_rs::task::yield_now().await;
        Ok(value)
    })
}

/// `spawned_tokio_sleep_ms(ms)`: a tokio sleep through `LoopRef::spawn`, which enters no tokio
/// runtime, so tokio panics at the sleep's first poll and the await raises RustPanic.
#[pyfunction]
pub fn spawned_tokio_sleep_ms(py: Python<'_>, ms: u64) -> PyResult<Bound<'_, PyAny>> {
    let Some(running) = tokioloop_rs::current(py) else {
        return Err(PyRuntimeError::new_err("no tokioloop loop running here"));
    };
    running.spawn(py, async move {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        Ok(ms)
    })
}

/// `spawned_blocking_sum(n)`: `blocking_sum` through `LoopRef::spawn`: the crate's
/// `spawn_blocking` reaches its runtime directly, so it works where no tokio context is entered.
#[pyfunction]
pub fn spawned_blocking_sum(py: Python<'_>, n: u64) -> PyResult<Bound<'_, PyAny>> {
    let Some(running) = tokioloop_rs::current(py) else {
        return Err(PyRuntimeError::new_err("no tokioloop loop running here"));
    };
    running.spawn(py, async move {
        let sum = move || (0..n).map(u128::from).sum::<u128>();
        Ok(tokioloop_rs::task::spawn_blocking(sum).await?)
    })
}

/// `blocking_sum(n)`: the sum of 0..n, computed by a closure on the tokio blocking pool.
#[pyfunction]
pub fn blocking_sum(py: Python<'_>, n: u64) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        // u128: no n a test passes can overflow it, so the closure never panics by accident.
        let sum = move || (0..n).map(u128::from).sum::<u128>();
        Ok(tokioloop_rs::task::spawn_blocking(sum).await?)
    })
}

/// `blocking_panic()`: a closure on the blocking pool that panics; raises RustPanic.
#[pyfunction]
pub fn blocking_panic(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokioloop_rs::task::spawn_blocking(|| -> u8 { panic!("in the blocking pool") }).await?;
        Ok(())
    })
}

/// `yield_now(value)`: `tokioloop_rs::task::yield_now` once, then `value`.
#[pyfunction]
pub fn yield_now(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        tokioloop_rs::task::yield_now().await;
        Ok(value)
    })
}
