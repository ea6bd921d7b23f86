//! The fallback's panic catcher: a future wrapper that turns a panic in the user's future into
//! `Err(RustPanic)` before pyo3-async-runtimes sees it, so the fallback raises this crate's
//! `RustPanic` with the panic's message, as the native mode does. Only `fallback` uses it.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use pyo3::PyResult;

use crate::panic::panic_error;

/// `inner`, with a panic in its poll turned into `Err(RustPanic)`: the fallback's wrapper (native
/// tasks catch panics in their C entries).
pub(crate) struct CatchPanic<F> {
    inner: F,
}

impl<F> CatchPanic<F> {
    pub(crate) fn new(inner: F) -> Self {
        CatchPanic { inner }
    }
}

impl<F, T> Future for CatchPanic<F>
where
    F: Future<Output = PyResult<T>>,
{
    type Output = PyResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PyResult<T>> {
        // SAFETY: `inner` is structurally pinned: never moved out of `self`.
        let inner = unsafe { self.map_unchecked_mut(|this| &mut this.inner) };
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(polled) => polled,
            Err(payload) => Poll::Ready(Err(panic_error(payload))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_future_becomes_a_rust_panic_error() {
        let future = CatchPanic::new(async {
            if true {
                panic!("deliberate");
            }
            Ok(())
        });
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let outcome = std::pin::pin!(future).poll(&mut cx);
        assert!(matches!(outcome, Poll::Ready(Err(_))));
    }
}
