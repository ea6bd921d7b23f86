//! Loop telemetry: the counters, clocks and histogram behind `loop.metrics()`.
//!
//! Written by the thread running the loop, inside its turn, with plain relaxed loads and stores
//! (one writer, so no locked instruction on the hot path); `threadsafe_calls` alone is bumped
//! by any thread, with an atomic add. The turn counts callbacks in a [`Tally`] of its own and
//! adds it once per turn; parks and runs are timed with the CPU's tick counter ([`ticks`]),
//! a few instructions where a clock reading costs a hundred, converted to seconds at snapshot
//! time by the rate measured since the loop was made. Read by [`LoopStats::snapshot`] from any thread: each
//! field is read on its own, so a snapshot taken while the loop runs is consistent per field,
//! not across fields. Counters only grow; they are never reset. Owned by `event_loop`: nothing
//! else writes here.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::clock;

/// Upper bounds, in seconds, of every histogram's buckets (a last, unbounded bucket follows).
/// Fixed and documented (`tokioloop.telemetry`): exporters name them.
pub const LATENESS_BOUNDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// What a turn ran, by where it came from (the index into [`Tally`]'s counts).
#[derive(Clone, Copy)]
pub enum CallbackKind {
    /// `call_soon` and `call_soon_threadsafe` handles.
    Ready,
    /// `call_later` / `call_at` handles that came due.
    Timer,
    /// `add_reader`/`add_writer` callbacks and the native transports' reads and writes.
    Io,
}

/// One turn's counts, kept by the turn itself and added to [`LoopStats`] once.
#[derive(Default)]
pub struct Tally {
    ran: [u64; 3],
    /// The clock when the turn started its first timer (see the turn).
    pub timers_started: Option<f64>,
}

impl Tally {
    #[inline(always)]
    pub fn ran(&mut self, kind: CallbackKind) {
        self.ran[kind as usize] += 1;
    }
}

/// A monotonic tick count: the CPU's invariant time-stamp counter on x86_64, the virtual
/// counter on aarch64 (each a handful of instructions, where a clock reading is a vDSO call),
/// nanoseconds of the monotonic clock elsewhere. Only differences are used, and only through
/// [`LoopStats`]'s measured rate.
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions; every x86_64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let count: u64;
        // SAFETY: reads the virtual count register, which Linux and macOS let user space read.
        unsafe { core::arch::asm!("mrs {}, cntvct_el0", out(reg) count, options(nomem, nostack)) };
        count
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        (clock::now() * 1e9) as u64
    }
}

/// One writer's increment: a load and a store, never a locked read-modify-write.
#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

fn nanos(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1e9) as u64
    } else {
        0
    }
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 * 1e-9
}

/// A histogram of durations in seconds over [`LATENESS_BOUNDS`].
pub struct Histogram {
    counts: [AtomicU64; LATENESS_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one observation (by the single writer).
    #[inline]
    pub fn record(&self, value: f64) {
        let bucket = LATENESS_BOUNDS
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(LATENESS_BOUNDS.len());
        if let Some(count) = self.counts.get(bucket) {
            bump(count, 1);
        }
        bump(&self.sum_ns, nanos(value));
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        dict.set_item("bounds", LATENESS_BOUNDS.to_vec())?;
        dict.set_item("counts", counts)?;
        dict.set_item("sum", seconds(self.sum_ns.load(Ordering::Relaxed)))?;
        Ok(dict)
    }
}

/// A clock reading kept in an atomic (its bits); 0.0 means "not now".
struct Moment(AtomicU64);

impl Moment {
    fn set(&self, at: f64) {
        self.0.store(at.to_bits(), Ordering::Relaxed);
    }
    fn get(&self) -> Option<f64> {
        let at = f64::from_bits(self.0.load(Ordering::Relaxed));
        (at > 0.0).then_some(at)
    }
}

pub struct LoopStats {
    turns: AtomicU64,
    ready: AtomicU64,
    timers: AtomicU64,
    io: AtomicU64,
    threadsafe_calls: AtomicU64,
    /// Ticks spent inside `run_forever`, runs that ended.
    run_ticks: AtomicU64,
    /// Ticks parked waiting for work, parks that ended.
    parked_ticks: AtomicU64,
    /// When (ticks) the current run began and the current park began; 0 when not now.
    run_started: AtomicU64,
    parked_since: AtomicU64,
    /// Ticks and clock when the stats were made: the tick rate is measured from here.
    origin: (u64, f64),
    /// How late each timer ran: from its deadline to the moment the turn started it.
    pub timer_lateness: Histogram,
    /// While callbacks are timed: how long each ran, and how long each `call_soon` handle
    /// waited in the ready queue before it ran.
    pub callback_duration: Histogram,
    pub ready_wait: Histogram,
    /// Callbacks running at least this long are reported (0: not timed at all).
    slow_after: Moment,
}

impl LoopStats {
    pub fn new() -> Self {
        LoopStats {
            turns: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            timers: AtomicU64::new(0),
            io: AtomicU64::new(0),
            threadsafe_calls: AtomicU64::new(0),
            run_ticks: AtomicU64::new(0),
            parked_ticks: AtomicU64::new(0),
            run_started: AtomicU64::new(0),
            parked_since: AtomicU64::new(0),
            origin: (ticks(), clock::now()),
            timer_lateness: Histogram::new(),
            callback_duration: Histogram::new(),
            ready_wait: Histogram::new(),
            slow_after: Moment(AtomicU64::new(0)),
        }
    }

    /// The slow-callback threshold in seconds, None when off (the turn then reads no clock).
    #[inline(always)]
    pub fn slow_after(&self) -> Option<f64> {
        self.slow_after.get()
    }

    /// Whether callbacks are being timed (a slow-callback threshold is set).
    #[inline(always)]
    pub fn timing(&self) -> bool {
        self.slow_after.0.load(Ordering::Relaxed) != 0
    }

    /// Sets or (None, or a threshold <= 0) clears the slow-callback threshold.
    pub fn set_slow_after(&self, seconds: Option<f64>) {
        self.slow_after.set(seconds.filter(|s| *s > 0.0).unwrap_or(0.0));
    }

    /// One turn done, with what it ran.
    #[inline(always)]
    pub fn add(&self, tally: &Tally) {
        bump(&self.turns, 1);
        bump(&self.ready, tally.ran[CallbackKind::Ready as usize]);
        bump(&self.timers, tally.ran[CallbackKind::Timer as usize]);
        bump(&self.io, tally.ran[CallbackKind::Io as usize]);
    }

    /// A `call_soon_threadsafe` from any thread (the one counter with several writers).
    #[inline]
    pub fn threadsafe_call(&self) {
        self.threadsafe_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn run_began(&self) {
        self.run_started.store(ticks().max(1), Ordering::Relaxed);
    }

    pub fn run_ended(&self) {
        let started = self.run_started.swap(0, Ordering::Relaxed);
        if started != 0 {
            bump(&self.run_ticks, ticks().saturating_sub(started));
        }
    }

    /// The park begins; returns its start for [`Self::park_ended`].
    #[inline(always)]
    pub fn park_began(&self) -> u64 {
        let now = ticks().max(1);
        self.parked_since.store(now, Ordering::Relaxed);
        now
    }

    #[inline(always)]
    pub fn park_ended(&self, began: u64) {
        self.parked_since.store(0, Ordering::Relaxed);
        bump(&self.parked_ticks, ticks().saturating_sub(began));
    }

    /// Whether the loop is parked right now (waiting for work, not running code).
    pub fn parked(&self) -> bool {
        self.parked_since.load(Ordering::Relaxed) != 0
    }

    /// How many ticks `seconds` is, at the rate measured so far (one clock reading).
    pub fn ticks_in(&self, seconds: f64) -> u64 {
        let per_tick = self.seconds_per_tick(ticks(), clock::now());
        (seconds / per_tick) as u64
    }

    /// Seconds per tick, measured over the loop's life so far (ticks are nanoseconds where
    /// there is no counter; a loop younger than a millisecond assumes a 1 GHz counter).
    fn seconds_per_tick(&self, now_ticks: u64, now: f64) -> f64 {
        let elapsed = now - self.origin.1;
        let counted = now_ticks.saturating_sub(self.origin.0);
        if elapsed < 1e-3 || counted == 0 {
            return 1e-9;
        }
        elapsed / counted as f64
    }

    /// Everything counted, as the dict `Loop.metrics()` builds its snapshot from. Times
    /// include the run and the park in progress, so a window between two snapshots is exact.
    pub fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let now_ticks = ticks();
        let per_tick = self.seconds_per_tick(now_ticks, clock::now());
        let in_progress = |since: &AtomicU64| match since.load(Ordering::Relaxed) {
            0 => 0,
            since => now_ticks.saturating_sub(since),
        };
        let parked_ticks = self.parked_ticks.load(Ordering::Relaxed) + in_progress(&self.parked_since);
        let run_ticks = self.run_ticks.load(Ordering::Relaxed) + in_progress(&self.run_started);
        let parked = parked_ticks as f64 * per_tick;
        let run = run_ticks as f64 * per_tick;
        let dict = PyDict::new(py);
        dict.set_item("turns", self.turns.load(Ordering::Relaxed))?;
        dict.set_item("callbacks_ready", self.ready.load(Ordering::Relaxed))?;
        dict.set_item("callbacks_timer", self.timers.load(Ordering::Relaxed))?;
        dict.set_item("callbacks_io", self.io.load(Ordering::Relaxed))?;
        dict.set_item("threadsafe_calls", self.threadsafe_calls.load(Ordering::Relaxed))?;
        dict.set_item("time_parked", parked)?;
        dict.set_item("time_running", (run - parked).max(0.0))?;
        dict.set_item("parked", self.parked())?;
        dict.set_item("timer_lateness", self.timer_lateness.to_dict(py)?)?;
        dict.set_item("callback_duration", self.callback_duration.to_dict(py)?)?;
        dict.set_item("ready_wait", self.ready_wait.to_dict(py)?)?;
        Ok(dict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let histogram = Histogram::new();
        for value in [0.0, 0.0001, 0.00010001, 0.05, 4.0, 9.0, f64::NAN] {
            histogram.record(value);
        }
        let counts: Vec<u64> = histogram
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts[0], 2, "0 and the bound itself fall in the first bucket");
        assert_eq!(counts[1], 1);
        assert_eq!(counts[8], 1, "0.05 is bucket 8's bound");
        assert_eq!(counts[14], 1, "4 s is under 5 s");
        assert_eq!(
            counts[15], 2,
            "above the last bound, and NaN, go to the open bucket"
        );
        assert_eq!(counts.iter().sum::<u64>(), 7);
    }

    #[test]
    fn runs_and_parks_add_up() {
        let stats = LoopStats::new();
        stats.run_began();
        let began = stats.park_began();
        assert!(stats.parked());
        std::thread::sleep(std::time::Duration::from_millis(20));
        stats.park_ended(began);
        assert!(!stats.parked());
        stats.run_ended();
        assert_eq!(stats.run_started.load(Ordering::Relaxed), 0);
        let parked = stats.parked_ticks.load(Ordering::Relaxed);
        assert!(stats.run_ticks.load(Ordering::Relaxed) >= parked);
        let seconds = parked as f64 * stats.seconds_per_tick(ticks(), clock::now());
        assert!(
            (0.015..1.0).contains(&seconds),
            "a 20 ms park measured as {seconds} s"
        );
    }

    #[test]
    fn a_tally_lands_once_per_turn() {
        let stats = LoopStats::new();
        let mut tally = Tally::default();
        tally.ran(CallbackKind::Ready);
        tally.ran(CallbackKind::Ready);
        tally.ran(CallbackKind::Io);
        stats.add(&tally);
        assert_eq!(stats.turns.load(Ordering::Relaxed), 1);
        assert_eq!(stats.ready.load(Ordering::Relaxed), 2);
        assert_eq!(stats.timers.load(Ordering::Relaxed), 0);
        assert_eq!(stats.io.load(Ordering::Relaxed), 1);
    }
}
