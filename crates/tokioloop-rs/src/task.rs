//! Task utilities for the futures this crate runs, the same in both modes: [`spawn_blocking`]
//! (a closure on the extension's tokio blocking pool) and [`yield_now`] (let the loop run
//! others once). Extension authors use these; the crate's maintainers own the file.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pyo3::PyErr;

use crate::panic::RustPanic;
use crate::runtime::runtime;

/// Runs `f` on a thread of the extension's tokio runtime's blocking pool and waits for its
/// result without blocking the loop.
///
/// The pool is always the extension's own runtime's (pyo3-async-runtimes' one with the default
/// feature), reached through the runtime itself rather than the current tokio context, so it
/// works natively, on the fallback, and inside [`LoopRef::spawn`](crate::LoopRef::spawn)'s
/// tasks, which enter no tokio context. Natively the closure's completion wakes the task through
/// tokioloop's thread-safe waker; the task is then polled on the loop's thread as usual.
///
/// Dropping the returned future does not stop `f` (a thread cannot be interrupted); its result is
/// thrown away.
pub async fn spawn_blocking<F, R>(f: F) -> Result<R, BlockingError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    runtime().spawn_blocking(f).await.map_err(|error| {
        if error.is_panic() {
            BlockingError::Panicked
        } else {
            BlockingError::Cancelled
        }
    })
}

/// Why [`spawn_blocking`] has no result. Converts into a Python exception with `?`:
/// [`RustPanic`] for a panic (as a panicking future raises), RuntimeError otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockingError {
    /// The closure panicked; the panic hook has reported its message.
    Panicked,
    /// The runtime shut down before the closure ran.
    Cancelled,
}

impl fmt::Display for BlockingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockingError::Panicked => "the blocking closure panicked",
            BlockingError::Cancelled => "the blocking closure never ran: the tokio runtime shut down",
        })
    }
}

impl Error for BlockingError {}

impl From<BlockingError> for PyErr {
    fn from(error: BlockingError) -> PyErr {
        match error {
            BlockingError::Panicked => RustPanic::new_err(error.to_string()),
            BlockingError::Cancelled => pyo3::exceptions::PyRuntimeError::new_err(error.to_string()),
        }
    }
}

/// Pending once after waking its own task, so the loop polls other ready work before this task
/// goes on; needs no runtime (natively the wake puts the task back in the loop's woken queue,
/// on the fallback it is tokio's own rescheduling).
pub async fn yield_now() {
    YieldNow { yielded: false }.await
}

struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::CountingWaker;
    use std::sync::atomic::Ordering;

    #[test]
    fn yield_now_is_pending_once_and_wakes_itself() {
        let waker = CountingWaker::new();
        let lent = waker.lent();
        let mut cache = crate::waker::WakerCache::default();
        // SAFETY: `lent` outlives every use of the waker made from it.
        let std_waker = unsafe { cache.waker_for(&lent) }.clone();
        let mut cx = Context::from_waker(&std_waker);
        let mut future = Box::pin(yield_now());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert!(future.as_mut().poll(&mut cx).is_ready());
        assert_eq!(waker.counts.wakes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn spawn_blocking_runs_on_the_pool_and_reports_a_panic() {
        let caller = std::thread::current().id();
        let ran_on = runtime().block_on(spawn_blocking(|| std::thread::current().id()));
        assert_ne!(ran_on, Ok(caller));
        assert!(ran_on.is_ok());
        let panicked = runtime().block_on(spawn_blocking(|| {
            if true {
                panic!("in the pool");
            }
        }));
        assert_eq!(panicked, Err(BlockingError::Panicked));
        assert_eq!(
            BlockingError::Panicked.to_string(),
            "the blocking closure panicked"
        );
    }
}
