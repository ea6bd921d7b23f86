//! The fallback on loops without tokioloop's bridge: pyo3-async-runtimes' tokio bridge, called
//! as an extension would call it (the future only gains a panic catcher, so [`RustPanic`] is the
//! same in both modes). Without the `pyo3-async-runtimes` feature there is no fallback and the
//! entry points raise NotImplementedError naming themselves. Only `lib.rs` calls into it.
//!
//! [`RustPanic`]: crate::RustPanic

use std::future::Future;

use pyo3::prelude::*;

#[cfg(feature = "pyo3-async-runtimes")]
pub(crate) fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, crate::catch_panic::CatchPanic::new(fut))
}

#[cfg(feature = "pyo3-async-runtimes")]
pub(crate) fn into_future(
    awaitable: Bound<'_, PyAny>,
) -> PyResult<impl Future<Output = PyResult<Py<PyAny>>> + Send> {
    pyo3_async_runtimes::tokio::into_future(awaitable)
}

#[cfg(not(feature = "pyo3-async-runtimes"))]
pub(crate) fn future_into_py<F, T>(_py: Python<'_>, _fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    Err(pyo3::exceptions::PyNotImplementedError::new_err(
        "tokioloop_rs::future_into_py: the running loop is not a tokioloop with a compatible \
         bridge, and tokioloop_rs was built without its pyo3-async-runtimes fallback",
    ))
}

#[cfg(not(feature = "pyo3-async-runtimes"))]
pub(crate) fn into_future(
    _awaitable: Bound<'_, PyAny>,
) -> PyResult<impl Future<Output = PyResult<Py<PyAny>>> + Send> {
    Err::<std::future::Pending<_>, _>(pyo3::exceptions::PyNotImplementedError::new_err(
        "tokioloop_rs::into_future: only pyo3-async-runtimes' into_future exists so far, and \
         tokioloop_rs was built without its pyo3-async-runtimes feature",
    ))
}
