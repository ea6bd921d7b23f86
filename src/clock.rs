//! The loop's clock: `loop.time()`, in seconds as a float, on CLOCK_MONOTONIC.
//!
//! It is the same clock as `time.monotonic()` (so deadlines computed by user code from either
//! agree) and as `std::time::Instant` (so deadlines convert exactly into tokio sleeps).

use std::time::{Duration, Instant};

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

/// The `Instant` at which the clock will read `deadline` (never earlier than that moment).
pub fn instant_at(deadline: f64) -> Instant {
    instant_at_reading(deadline, now())
}

/// The `Instant` `deadline - reading` seconds from now: for a clock that reads `reading` now
/// (a `loop.time` patched on the instance).
pub fn instant_at_reading(deadline: f64, reading: f64) -> Instant {
    let instant = Instant::now();
    let wait = deadline - reading;
    if wait.is_nan() || wait <= 0.0 {
        return instant;
    }
    // One microsecond of slack absorbs float rounding, so a wake-up is never before the deadline;
    // the park itself rounds up to the reactor's millisecond anyway.
    let wait = Duration::try_from_secs_f64(wait + 1e-6).unwrap_or(Duration::from_secs(86_400 * 365));
    instant
        .checked_add(wait)
        .unwrap_or(instant + Duration::from_secs(86_400 * 365))
}
