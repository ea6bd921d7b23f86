//! The loop's clock: `loop.time()`, in seconds as a float, on CLOCK_MONOTONIC.
//!
//! It is the same clock as `time.monotonic()` (so deadlines computed by user code from either
//! agree) and as the park's timerfd (`io::ParkTimer`, armed at a deadline as it reads here).

/// Seconds on the monotonic clock, nanosecond resolution.
#[inline]
pub fn now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on our targets.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
