//! `tokioloop_rs`: Rust futures handed to Python as awaitables, polled on tokioloop's own thread
//! when the running loop is a tokioloop that exports the native bridge, and handed to
//! pyo3-async-runtimes' tokio bridge on any other loop (asyncio, uvloop, an older tokioloop).
//! An extension swaps `pyo3_async_runtimes::tokio::future_into_py` for
//! [`future_into_py`] and changes nothing else.
//!
//! This file holds the public entry points and decides between the two modes; each mode and
//! each piece of the native one lives in its own module. Extension authors touch the public
//! items only; the modules are this crate's maintainers'.
//!
//! Modules: `bridge` (finding the running loop's ABI table), `polling` (the thread-local
//! "tokioloop is polling a task of this loop here"), `native_task` (the C task around a boxed
//! future), `waker` (C wakers as `std::task::Waker`s and back), `runtime` (the tokio runtime native polls
//! enter), `fallback` (pyo3-async-runtimes) and its `catch_panic`, `panic` ([`RustPanic`]), [`time`] (sleeps that use
//! the loop's own timer heap natively), [`net`] (TCP, UDP and Unix stream sockets on the loop's
//! own reactor natively), [`task`] (`spawn_blocking` on the extension's tokio pool, `yield_now`).

mod bridge;
#[cfg(any(test, feature = "pyo3-async-runtimes"))]
mod catch_panic;
mod fallback;
mod native_task;
pub mod net;
mod panic;
mod polling;
mod runtime;
pub mod task;
pub mod time;
mod waker;

use std::future::Future;
use std::marker::PhantomData;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

pub use panic::RustPanic;
pub use task::BlockingError;

/// What [`future_into_py`] would do if called here and now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The running loop is a tokioloop with a compatible bridge, running on this thread: the
    /// future is polled on this thread in the loop's turn and completes its asyncio future
    /// directly.
    Native,
    /// Anything else: pyo3-async-runtimes runs the future on its tokio runtime.
    Fallback,
}

/// The mode [`future_into_py`] picks on this thread now.
pub fn mode(py: Python<'_>) -> Mode {
    match bridge::NativeLoop::running(py) {
        Some(_) => Mode::Native,
        None => Mode::Fallback,
    }
}

/// Turns `fut` into an asyncio future of the running loop, with the signature of
/// `pyo3_async_runtimes::tokio::future_into_py`.
///
/// Natively, tokioloop polls `fut` on the loop's thread with the GIL held, inside the caller's
/// copied contextvars context and inside this extension's tokio runtime context (so
/// `tokio::time`, `tokio::spawn` and tokio's net types keep working: their I/O stays on tokio's
/// threads and wakes the task through tokioloop); it drops `fut` on the loop's thread when the
/// asyncio future is cancelled or the loop closes. Elsewhere pyo3-async-runtimes runs it. In both
/// modes a panic in `fut` raises [`RustPanic`] ("rust future panicked: <message>").
pub fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    match bridge::NativeLoop::running(py) {
        Some(native) => native_task::spawn::<F, T, true>(py, native, fut),
        None => fallback::future_into_py(py, fut),
    }
}

/// The tokioloop loop running on this thread, if its bridge is one this crate can use: exactly
/// when [`mode`] is [`Mode::Native`].
pub fn current(py: Python<'_>) -> Option<LoopRef> {
    bridge::NativeLoop::running(py).map(|native| LoopRef {
        native,
        _this_thread: PhantomData,
    })
}

/// A running tokioloop loop, from [`current`], for spawning futures on it natively only.
///
/// Bound to the thread it was found on (not `Send`): the loop only accepts work on its own
/// thread. Keeping it does not keep the loop alive; [`LoopRef::spawn`] checks that the loop is
/// still the one running here.
#[derive(Clone)]
pub struct LoopRef {
    native: bridge::NativeLoop,
    _this_thread: PhantomData<*const ()>,
}

impl LoopRef {
    /// Like [`future_into_py`]'s native path (polled on the loop's thread in its turn, the
    /// caller's context, dropped on cancel or close, a panic raises [`RustPanic`]) but without
    /// entering the extension's tokio runtime around the polls: nothing here starts a tokio
    /// thread, and a tokio leaf inside `fut` (`tokio::time::sleep`, `tokio::spawn`) fails as it
    /// fails outside any runtime, a panic that becomes [`RustPanic`]. This crate's own leaves
    /// ([`time`], [`net`], [`task`]) work.
    ///
    /// Raises RuntimeError if this loop is no longer the one running on this thread.
    pub fn spawn<'py, F, T>(&self, py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
        T: for<'a> IntoPyObject<'a> + Send + 'static,
    {
        // The pointer is only handed back to tokioloop while it names the loop running here;
        // a stopped or closed loop's pointer may dangle.
        match bridge::NativeLoop::running(py) {
            Some(now) if std::ptr::eq(now.lp, self.native.lp) => {
                native_task::spawn::<F, T, false>(py, now, fut)
            }
            _ => Err(PyRuntimeError::new_err(
                "tokioloop_rs: this LoopRef's loop is not running on this thread",
            )),
        }
    }
}

/// Turns a Python awaitable into a Rust future.
///
/// For now this is pyo3-async-runtimes' `tokio::into_future` on every loop (the awaitable is
/// scheduled with `call_soon_threadsafe` and its result comes back through a channel); a native
/// version that awaits it on tokioloop's thread without the hop is a later step. Without the
/// `pyo3-async-runtimes` feature it raises NotImplementedError.
pub fn into_future(
    awaitable: Bound<'_, PyAny>,
) -> PyResult<impl Future<Output = PyResult<Py<PyAny>>> + Send> {
    fallback::into_future(awaitable)
}

#[cfg(test)]
mod fake;
