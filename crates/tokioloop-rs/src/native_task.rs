//! The native mode's task: a user future boxed behind a `tokioloop_ffi::Task`, which tokioloop
//! polls on the loop's thread with the GIL held, then completes (the value converted to a Python
//! object) and drops. Every entry catches panics: nothing unwinds into tokioloop. Only
//! `future_into_py` and `LoopRef::spawn` make these; the const parameter `TOKIO` is the one
//! thing they differ in (whether each poll and drop enters the extension's tokio runtime), so
//! both share every line of the polling, completion and drop code.

use std::ffi::c_void;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::task::{Context, Poll};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use tokioloop_ffi as ffi;

use crate::bridge::NativeLoop;
use crate::panic::panic_error;
use crate::polling::PollingScope;
use crate::runtime::runtime;
use crate::waker::WakerCache;

/// Hands `fut` to tokioloop; returns the asyncio future it completes. With `TOKIO` every poll
/// and drop runs inside the extension's tokio runtime context (`future_into_py`, where tokio's
/// leaves must keep working); without it tokio is never touched, so no tokio thread starts
/// because of this task (`LoopRef::spawn`).
pub(crate) fn spawn<F, T, const TOKIO: bool>(
    py: Python<'_>,
    native: NativeLoop,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let task = ffi::Task {
        data: Box::into_raw(Box::new(NativeTask::<F, T, TOKIO>::new(native, fut))).cast(),
        vtable: &NativeTask::<F, T, TOKIO>::VTABLE,
    };
    // SAFETY: a compatible table and a loop it gave for this thread; spawn owns `task` from here.
    let future = unsafe { (native.api.spawn)(native.lp, task) };
    // SAFETY: a new reference, or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, future.cast()) }
}

pub(crate) struct NativeTask<F, T, const TOKIO: bool> {
    native: NativeLoop,
    future: PinnedFuture<F>,
    outcome: Option<PyResult<T>>,
    wakers: WakerCache,
}

impl<F, T, const TOKIO: bool> NativeTask<F, T, TOKIO>
where
    F: Future<Output = PyResult<T>>,
    T: for<'py> IntoPyObject<'py>,
{
    pub(crate) const VTABLE: ffi::TaskVTable = ffi::TaskVTable {
        poll: Self::c_poll,
        complete: Self::c_complete,
        drop: Self::c_drop,
    };

    pub(crate) fn new(native: NativeLoop, fut: F) -> Self {
        NativeTask {
            native,
            future: PinnedFuture::new(fut),
            outcome: None,
            wakers: WakerCache::default(),
        }
    }

    /// Runs `body` the way every user-code call of a task runs: this loop marked as polling on
    /// this thread (native leaves), and, with `TOKIO`, the extension's tokio runtime entered
    /// (tokio's leaves; entering builds the runtime, and with it its threads, on first use).
    fn in_task_scope<R>(native: NativeLoop, body: impl FnOnce() -> R) -> R {
        let _polling = PollingScope::enter(native);
        let _tokio = TOKIO.then(|| runtime().enter());
        body()
    }

    unsafe extern "C" fn c_poll(data: *mut c_void, lent: *const ffi::Waker) -> u8 {
        let task = &mut *data.cast::<Self>();
        let native = task.native;
        let polled = catch_unwind(AssertUnwindSafe(|| task.poll_future(&*lent)));
        match polled {
            Ok(Poll::Pending) => ffi::PENDING,
            Ok(Poll::Ready(())) => ffi::READY,
            Err(payload) => {
                task.outcome = Some(Err(panic_error(payload)));
                // A future that panicked is not polled again; its drop may panic as well.
                let future = &mut task.future;
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    Self::in_task_scope(native, || future.drop_now())
                }));
                ffi::READY
            }
        }
    }

    /// Polls the future once; Ready once it has an outcome (kept for `complete`).
    ///
    /// # Safety
    /// `lent` is valid during the call.
    unsafe fn poll_future(&mut self, lent: &ffi::Waker) -> Poll<()> {
        if self.outcome.is_some() {
            return Poll::Ready(());
        }
        let native = self.native;
        let slot = &mut self.future;
        let mut cx = Context::from_waker(self.wakers.waker_for(lent));
        let outcome = Self::in_task_scope(native, || {
            let polled = slot.as_pin_mut()?.poll(&mut cx);
            if polled.is_ready() {
                // Dropped here, still inside the task's scope, so its leaves free what they hold.
                slot.drop_now();
            }
            Some(polled)
        });
        match outcome {
            Some(Poll::Ready(result)) => {
                self.outcome = Some(result);
                Poll::Ready(())
            }
            Some(Poll::Pending) => Poll::Pending,
            // Dropped after a panic: `complete` reports it.
            None => Poll::Ready(()),
        }
    }

    unsafe extern "C" fn c_complete(data: *mut c_void) -> *mut ffi::PyObject {
        let task = &mut *data.cast::<Self>();
        // SAFETY: the ABI calls `complete` on the loop's thread with the GIL held.
        let py = Python::assume_attached();
        let outcome = task.outcome.take().unwrap_or_else(|| {
            Err(PyRuntimeError::new_err(
                "tokioloop_rs: the task was completed before its future was ready",
            ))
        });
        let converted = catch_unwind(AssertUnwindSafe(|| {
            outcome.and_then(|value| value.into_py_any(py))
        }))
        .unwrap_or_else(|payload| Err(panic_error(payload)));
        match converted {
            Ok(object) => object.into_ptr().cast(),
            Err(error) => {
                error.restore(py);
                ptr::null_mut()
            }
        }
    }

    unsafe extern "C" fn c_drop(data: *mut c_void) {
        let mut task = Box::from_raw(data.cast::<Self>());
        let native = task.native;
        // A panic while dropping has nowhere to go but the panic hook's report on stderr.
        let _ = catch_unwind(AssertUnwindSafe(move || {
            Self::in_task_scope(native, move || {
                task.future.drop_now();
                drop(task);
            })
        }));
    }
}

/// A future that stays where it was first polled and is dropped in place exactly once, even if
/// its drop panics (then the rest of it is leaked, never dropped twice).
struct PinnedFuture<F> {
    future: ManuallyDrop<F>,
    alive: bool,
}

impl<F: Future> PinnedFuture<F> {
    fn new(future: F) -> Self {
        PinnedFuture {
            future: ManuallyDrop::new(future),
            alive: true,
        }
    }

    fn as_pin_mut(&mut self) -> Option<Pin<&mut F>> {
        // SAFETY: the future lives in the task's box, which never moves, and is only dropped in
        // place by `drop_now`.
        self.alive
            .then(|| unsafe { Pin::new_unchecked(&mut *self.future) })
    }

    fn drop_now(&mut self) {
        if std::mem::take(&mut self.alive) {
            // SAFETY: alive until now, never touched again.
            unsafe { ManuallyDrop::drop(&mut self.future) }
        }
    }
}

impl<F> Drop for PinnedFuture<F> {
    fn drop(&mut self) {
        if std::mem::take(&mut self.alive) {
            // SAFETY: as in `drop_now`.
            unsafe { ManuallyDrop::drop(&mut self.future) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::tests::fake_loop;
    use crate::fake::CountingWaker;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Sets its flag when dropped, so a test sees when the task dropped its future.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A task's C face, as tokioloop sees it, entering tokio around its polls or not.
    fn c_task_with<F, const TOKIO: bool>(fut: F) -> ffi::Task
    where
        F: Future<Output = PyResult<u32>> + Send + 'static,
    {
        ffi::Task {
            data: Box::into_raw(Box::new(NativeTask::<F, u32, TOKIO>::new(fake_loop(7), fut))).cast(),
            vtable: &NativeTask::<F, u32, TOKIO>::VTABLE,
        }
    }

    /// `future_into_py`'s kind of task.
    fn c_task<F>(fut: F) -> ffi::Task
    where
        F: Future<Output = PyResult<u32>> + Send + 'static,
    {
        c_task_with::<F, true>(fut)
    }

    fn poll(task: &ffi::Task, waker: &CountingWaker) -> u8 {
        unsafe { ((*task.vtable).poll)(task.data, &waker.lent()) }
    }

    fn drop_task(task: ffi::Task) {
        unsafe { ((*task.vtable).drop)(task.data) }
    }

    #[test]
    fn a_ready_future_is_ready_at_once_and_dropped_then() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&dropped));
        let task = c_task(async move {
            let _flag = flag;
            Ok(1)
        });
        assert_eq!(poll(&task, &CountingWaker::new()), ffi::READY);
        assert!(dropped.load(Ordering::SeqCst), "dropped as soon as it was ready");
        drop_task(task);
    }

    #[test]
    fn a_pending_future_is_polled_in_its_scope_and_dropped_by_drop() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&dropped));
        let task = c_task(async move {
            let _flag = flag;
            assert!(crate::polling::is_polling(fake_loop(7).lp));
            assert!(tokio::runtime::Handle::try_current().is_ok());
            std::future::pending::<()>().await;
            Ok(1)
        });
        let waker = CountingWaker::new();
        assert_eq!(poll(&task, &waker), ffi::PENDING);
        assert_eq!(poll(&task, &waker), ffi::PENDING);
        assert_eq!(
            waker.counts.clones.load(Ordering::SeqCst),
            1,
            "one std waker per task"
        );
        assert!(!dropped.load(Ordering::SeqCst));
        drop_task(task);
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(waker.live_clones(), 0);
        assert!(crate::polling::polling_loop().is_none());
    }

    #[test]
    fn a_panic_makes_the_task_ready_and_drops_the_future() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&dropped));
        let task = c_task(async move {
            let _flag = flag;
            if true {
                panic!("inside the task");
            }
            Ok(1)
        });
        assert_eq!(poll(&task, &CountingWaker::new()), ffi::READY);
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(poll(&task, &CountingWaker::new()), ffi::READY, "and stays ready");
        drop_task(task);
    }

    #[test]
    fn a_task_without_tokio_polls_outside_any_runtime() {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&dropped));
        let task = c_task_with::<_, false>(async move {
            let _flag = flag;
            assert!(crate::polling::is_polling(fake_loop(7).lp));
            assert!(tokio::runtime::Handle::try_current().is_err());
            std::future::pending::<()>().await;
            Ok(1)
        });
        assert_eq!(poll(&task, &CountingWaker::new()), ffi::PENDING);
        drop_task(task);
        assert!(dropped.load(Ordering::SeqCst));
    }
}
