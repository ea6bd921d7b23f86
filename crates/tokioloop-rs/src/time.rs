//! Sleeps and timeouts that are native inside a future tokioloop polls (an entry in the loop's
//! own timer heap: no tokio timer, no thread, the wake comes from the loop's turn) and tokio's
//! elsewhere (`tokio::time`, which needs a tokio runtime's context, as on the fallback).
//!
//! The mode is picked when the sleep first runs: an `async fn` runs its body at its first poll,
//! so a sleep made inside a natively polled task is native. A native sleep must stay in that
//! task: polled anywhere else it panics (a `RustPanic` for the awaiting Python code) rather than
//! touch the loop from another thread.
//!
//! Public: extension authors call `sleep` and `timeout`; `NativeSleep` is this module's own.

use std::fmt;
use std::future::{poll_fn, Future, IntoFuture};
use std::pin::{pin, Pin};
use std::ptr;
use std::task::{Context, Poll};
use std::time::Duration;

use pyo3::{PyErr, Python};
use tokioloop_ffi as ffi;

use crate::bridge::NativeLoop;
use crate::polling::{is_polling, polling_loop};
use crate::waker::lend_as_c;

/// Waits for `duration`: on the loop's timer heap in a native task, `tokio::time::sleep`
/// elsewhere.
pub async fn sleep(duration: Duration) {
    match polling_loop() {
        Some(native) => NativeSleep::start(native, duration).await,
        None => tokio::time::sleep(duration).await,
    }
}

/// `future`'s output, or [`Elapsed`] if `duration` passes first (the future is then dropped).
/// The timer is [`sleep`]'s, so native in a native task.
pub async fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future.into_future());
    let mut deadline = pin!(sleep(duration));
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        deadline.as_mut().poll(cx).map(|()| Err(Elapsed(())))
    })
    .await
}

/// [`timeout`]'s error: the duration passed before the future completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// A timer in the loop's heap, freed when due or when dropped.
struct NativeSleep {
    native: NativeLoop,
    timer: *mut ffi::Timer,
}

// Moving it between threads is harmless; using it off the loop's thread is refused at run time
// (`poll` panics, `drop` leaks the timer instead of freeing it).
unsafe impl Send for NativeSleep {}

impl NativeSleep {
    fn start(native: NativeLoop, duration: Duration) -> Self {
        let api = native.api;
        // SAFETY: called while tokioloop polls a task of this loop on this thread (GIL held).
        let timer = unsafe { (api.timer_new)(native.lp, (api.time)(native.lp) + duration.as_secs_f64()) };
        if timer.is_null() {
            // SAFETY: as above: the GIL is held here.
            let error = PyErr::fetch(unsafe { Python::assume_attached() });
            panic!("tokioloop_rs::time::sleep: the loop refused a timer: {error}");
        }
        NativeSleep { native, timer }
    }

    fn free(&mut self) {
        let timer = std::mem::replace(&mut self.timer, ptr::null_mut());
        if !timer.is_null() {
            // SAFETY: ours, not freed yet; on the loop's thread inside its task (checked by callers).
            unsafe { (self.native.api.timer_free)(timer) }
        }
    }
}

impl Future for NativeSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.timer.is_null() {
            return Poll::Ready(());
        }
        assert!(
            is_polling(this.native.lp),
            "tokioloop_rs::time::sleep: a native sleep was polled outside the tokioloop task that \
             made it (moved to another executor or thread?)"
        );
        let (api, timer) = (this.native.api, this.timer);
        // SAFETY: a live timer, polled on its loop's thread inside one of its tasks.
        let due = lend_as_c(cx.waker(), |waker| unsafe { (api.timer_poll)(timer, waker) });
        if due == 0 {
            return Poll::Pending;
        }
        this.free();
        Poll::Ready(())
    }
}

impl Drop for NativeSleep {
    fn drop(&mut self) {
        // Off its loop's tasks tokioloop may not be touched: the timer is leaked there instead
        // (it fires once, wakes nothing that matters, and is gone with the loop).
        if is_polling(self.native.lp) {
            self.free();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::tests::fake_loop;
    use crate::fake::{CountingWaker, NOW_MS, TIMERS_LIVE};
    use crate::polling::PollingScope;
    use crate::waker::WakerCache;
    use std::sync::atomic::Ordering;

    // Both tests below move the fake clock and count the fake timers: they must not overlap.
    static FAKE_CLOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_sleep_in_a_native_task_is_a_loop_timer_freed_when_due() {
        let _clock = FAKE_CLOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let native = fake_loop(1);
        let c_waker = CountingWaker::new();
        let mut wakers = WakerCache::default();
        let mut sleeping = Box::pin(sleep(Duration::from_millis(5)));
        let live = TIMERS_LIVE.load(Ordering::SeqCst);
        let mut poll = |now_ms| {
            NOW_MS.store(now_ms, Ordering::SeqCst);
            let _polling = PollingScope::enter(native);
            let waker = unsafe { wakers.waker_for(&c_waker.lent()) };
            sleeping.as_mut().poll(&mut Context::from_waker(waker))
        };
        assert!(poll(1000).is_pending());
        assert_eq!(TIMERS_LIVE.load(Ordering::SeqCst), live + 1);
        assert!(poll(1004).is_pending());
        assert!(poll(1005).is_ready());
        assert_eq!(TIMERS_LIVE.load(Ordering::SeqCst), live);
        drop(wakers);
        assert_eq!(c_waker.live_clones(), 0, "the timer gave its waker back");
    }

    #[test]
    fn dropping_a_pending_native_sleep_frees_its_timer() {
        let _clock = FAKE_CLOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let native = fake_loop(2);
        let live = TIMERS_LIVE.load(Ordering::SeqCst);
        let _polling = PollingScope::enter(native);
        NOW_MS.store(0, Ordering::SeqCst);
        let mut sleeping = Box::pin(timeout(Duration::from_secs(1), std::future::pending::<()>()));
        let waker = std::task::Waker::noop();
        assert!(sleeping
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending());
        assert_eq!(TIMERS_LIVE.load(Ordering::SeqCst), live + 1);
        drop(sleeping);
        assert_eq!(TIMERS_LIVE.load(Ordering::SeqCst), live);
    }

    #[test]
    fn outside_a_native_task_a_sleep_is_tokios() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let outcome = runtime.block_on(timeout(Duration::from_millis(1), std::future::pending::<()>()));
        assert_eq!(outcome, Err(Elapsed(())));
        runtime.block_on(sleep(Duration::from_millis(1)));
    }
}
