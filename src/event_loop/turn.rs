//! The turn: what `run_forever` does, natively, entering tokio's `block_on` only to wait.
//!
//! Each turn mirrors asyncio's `_run_once`: (1) park until the earliest timer, an fd edge or a
//! wake-up if nothing is ready — or, if work is ready, look at I/O without blocking, every turn,
//! as asyncio and libuv do (a `poll(2)` of the reactor's epoll fd, and a zero-timeout park only
//! when that says something is waiting; the self-pipe alone is looked at every
//! [`BUSY_TURNS_PER_HANDOFF`] turns, or at once when a signal was noted); (2) queue the
//! callbacks of ready fds and the native transports' retries behind the callbacks already ready;
//! (3) move due timers to the ready queue; (4) run exactly the handles that were ready at that
//! point — what they schedule runs next turn. Pending signals are checked after every park and
//! every few busy turns, so Ctrl+C leaves promptly whether the loop is idle or busy.
//! Only `LoopCore::_run_native` calls [`drive`].
//!
//! Python callbacks run *outside* `block_on`: only the park (1) is inside it. A process forked
//! from a callback (multiprocessing's fork start method, a pre-forking server) therefore
//! inherits a thread that is in no tokio runtime, with every runtime's scheduler core in its
//! place, so the child can build and run a loop of its own. Entering `block_on` only to wait
//! costs nothing on the busy path, where no wait happens.
//!
//! Python owner: `tokioloop._seam.LoopOwner`, the methods the subclass `Loop` provides and the
//! turn calls by name.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

use super::ready::Ready;
use super::LoopCore;
use crate::clock;
use crate::errors::is_fatal;
use crate::io::{Direction, EngineRef, ParkTimer};
use crate::telemetry::{ticks, LoopStats, Tally};

/// A busy loop lets other Python threads take the GIL every this many turns or this often.
const BUSY_TURNS_PER_HANDOFF: u32 = 61;
const BUSY_HANDOFF_INTERVAL: Duration = Duration::from_micros(200);
/// Busy turns between two checks for pending signals (every idle turn checks).
const SIGNAL_CHECK_TURNS: u32 = 4;

/// Runs turns until `stop()` or an exception that must leave `run_forever`.
pub fn drive(slf: &Bound<'_, LoopCore>, runtime: &Runtime) -> PyResult<()> {
    let py = slf.py();
    let core = slf.get();
    // block_on's waker wakes the runtime's driver and stays valid across block_on calls.
    let waker = runtime.block_on(poll_fn(|cx| Poll::Ready(cx.waker().clone())));
    let mut timer = TimerLease::take(&core.park_timer)?;
    core.wake.set_waker(Some(waker));
    let _run_clock = RunClock::start(&core.stats);
    let mut batch: VecDeque<Ready> = VecDeque::new();
    let mut busy_turns = 0u32;
    // The hand-off's interval in tick-counter units (see `telemetry::ticks`), re-measured at
    // every hand-off; a young loop's guess errs towards handing off early.
    let mut handoff_ticks = core.stats.ticks_in(BUSY_HANDOFF_INTERVAL.as_secs_f64());
    let mut last_handoff = ticks();

    loop {
        // A signal's Python handler also runs at the interpreter's next bytecode check, so in
        // a busy loop running Python callbacks a check here every few turns is enough; after
        // a park (below) there is always one.
        if busy_turns.is_multiple_of(SIGNAL_CHECK_TURNS) {
            py.check_signals()?;
        }

        if core.has_work() {
            // Work is ready: look at I/O without blocking, every turn, as asyncio's select(0)
            // and libuv's zero-timeout poll do. A ready fd's callback then runs right behind
            // the callbacks already queued, never many turns late.
            // (The self-pipe alone is looked at on the hand-off's cadence below, or at once
            // when a signal's Python-level handler noted one.)
            let looked = core.io_to_look_at();
            if looked {
                core.look_at_io(runtime);
            }
            busy_turns += 1;
            // The tick counter, not the clock: a clock reading costs as much as a light turn,
            // and looking only every few turns let turns of slow callbacks (200 us each) keep
            // other threads off the GIL for 8 of them (pyo3-async-runtimes' completions, which
            // need it, then waited ~1.7 ms where uvloop's waited 0.5: benches/rust_bridge.py).
            if busy_turns >= BUSY_TURNS_PER_HANDOFF || ticks().wrapping_sub(last_handoff) >= handoff_ticks {
                if !looked {
                    runtime.block_on(tokio::task::yield_now());
                }
                // Callbacks that run no Python bytecode never reach the interpreter's GIL
                // hand-off, so a loop busy with them would starve every other thread.
                py.detach(|| ());
                busy_turns = 0;
                handoff_ticks = core.stats.ticks_in(BUSY_HANDOFF_INTERVAL.as_secs_f64());
                last_handoff = ticks();
            }
        } else {
            park(py, core, runtime, &mut timer)?;
            busy_turns = 0;
            last_handoff = ticks();
        }

        core.dispatch_io(py);
        core.complete_lookups(py)?;
        core.bridge.poll_woken(py, core.debug().then_some(slf.as_any()));
        core.take_ready(py, &mut batch)?;
        let slow_after = core.stats.slow_after();
        // Counted here and added to the loop's counters once per turn.
        let mut tally = Tally::default();
        while let Some(item) = batch.pop_front() {
            if item.is_cancelled(py) {
                core.recycle(py, item);
                continue;
            }
            tally.ran(item.kind());
            if let Ready::Timer(timer) = &item {
                // As late as it starts, not as it left the heap: the ready callbacks queued
                // ahead of it in this turn make it late too. One clock reading per turn, at
                // its first timer.
                let now = *tally
                    .timers_started
                    .get_or_insert_with(|| core.now(py).unwrap_or_else(|_| clock::now()));
                core.stats.timer_lateness.record(now - timer.get().when);
            }
            let outcome = match slow_after {
                None => run_item(slf, &item),
                Some(threshold) => run_timed(slf, &item, threshold),
            };
            core.recycle(py, item);
            if let Err(err) = outcome {
                core.stats.add(&tally);
                core.requeue_front(&mut batch);
                return Err(err);
            }
        }
        core.stats.add(&tally);
        if core.take_stopping() {
            return Ok(());
        }
        if core.abandoned_by_fork() {
            // A callback forked and this is the child, back in the parent's loop.
            return Err(crate::errors::forked_error());
        }
    }
}

/// The loop's park timer, lent to one run and given back when it ends, however it ends.
struct TimerLease<'a> {
    slot: &'a parking_lot::Mutex<Option<ParkTimer>>,
    timer: Option<ParkTimer>,
}

impl<'a> TimerLease<'a> {
    fn take(slot: &'a parking_lot::Mutex<Option<ParkTimer>>) -> PyResult<Self> {
        let timer = slot.lock().take();
        if timer.is_none() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("Event loop is closed"));
        }
        Ok(TimerLease { slot, timer })
    }
}

impl std::ops::Deref for TimerLease<'_> {
    type Target = ParkTimer;
    fn deref(&self) -> &ParkTimer {
        self.timer.as_ref().expect("lent until dropped")
    }
}

impl std::ops::DerefMut for TimerLease<'_> {
    fn deref_mut(&mut self) -> &mut ParkTimer {
        self.timer.as_mut().expect("lent until dropped")
    }
}

impl Drop for TimerLease<'_> {
    fn drop(&mut self) {
        *self.slot.lock() = self.timer.take();
    }
}

/// Waits in the reactor until the earliest timer, an fd edge or a wake-up.
fn park(py: Python<'_>, core: &LoopCore, runtime: &Runtime, timer: &mut ParkTimer) -> PyResult<()> {
    let deadline = core.next_deadline(py);
    // The timer is armed at an absolute time on the monotonic clock, which is the loop's clock
    // unless `time` is patched on the instance (then the wait is the patched clock's distance).
    // One microsecond of slack absorbs float rounding: a wake-up is never before the deadline.
    let wake_at = match deadline {
        Some(deadline) => Some(match core.patched_reading(py)? {
            Some(reading) => clock::now() + (deadline - reading).max(0.0) + 1e-6,
            None => deadline + 1e-6,
        }),
        None => None,
    };
    if let Some(at) = wake_at {
        timer.arm(at).map_err(crate::errors::from_io)?;
    }
    let park_began = core.stats.park_began();
    runtime.block_on(async {
        poll_fn(|cx| {
            if wake_at.is_some() && timer.poll_fired(cx).is_ready() {
                return Poll::Ready(());
            }
            core.wake.set_idle(true);
            if core.has_work() {
                core.wake.set_idle(false);
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    });
    core.wake.set_idle(false);
    core.stats.park_ended(park_began);
    Ok(())
}

/// Runs one item of the turn's batch: a native engine's read or write, or a handle.
#[inline(always)]
fn run_item(slf: &Bound<'_, LoopCore>, item: &Ready) -> PyResult<()> {
    match item {
        Ready::Io {
            engine,
            direction,
            edge,
        } => run_engine(slf, engine, *direction, *edge),
        _ if slf.get().debug() => slf
            .call_method1(intern!(slf.py(), "_run_handle_debug"), (item.object(slf.py()),))
            .map(drop),
        _ => run_handle(slf, item),
    }
}

/// [`run_item`], timed for the telemetry (a slow-callback threshold is set): the handle's wait
/// in the ready queue and the run's duration go into their histograms, and a run of at least
/// `threshold` seconds is reported.
#[inline(never)]
fn run_timed(slf: &Bound<'_, LoopCore>, item: &Ready, threshold: f64) -> PyResult<()> {
    let stats = &slf.get().stats;
    let started = clock::now();
    if let Some(queued_at) = item.queued_at() {
        stats.ready_wait.record(started - queued_at);
    }
    run_item(slf, item)?;
    let took = clock::now() - started;
    stats.callback_duration.record(took);
    report_if_slow(slf, item, took, threshold)
}

/// Hands a callback that ran `took` seconds, at least `threshold`, to the Python half's
/// report (`Loop._report_slow_callback`), which calls the user's hook. A native transport's
/// read or write is reported as its transport.
fn report_if_slow(slf: &Bound<'_, LoopCore>, item: &Ready, took: f64, threshold: f64) -> PyResult<()> {
    if took < threshold {
        return Ok(());
    }
    let py = slf.py();
    let what = match item {
        Ready::Io { engine, .. } => match engine.python_transport(py) {
            Some(transport) => transport.into_bound(py),
            None => item.object(py),
        },
        _ => item.object(py),
    };
    slf.call_method1(intern!(py, "_report_slow_callback"), (what, took))
        .map(drop)
}

/// Times one `run_forever` for the telemetry, however it ends.
struct RunClock<'a>(&'a LoopStats);

impl<'a> RunClock<'a> {
    fn start(stats: &'a LoopStats) -> Self {
        stats.run_began();
        RunClock(stats)
    }
}

impl Drop for RunClock<'_> {
    fn drop(&mut self) {
        self.0.run_ended();
    }
}

/// Runs one handle: an ordinary exception goes to the loop's exception handler as asyncio
/// reports it; `KeyboardInterrupt`/`SystemExit` (and errors of the handler itself) come back.
pub fn run_handle(slf: &Bound<'_, LoopCore>, item: &Ready) -> PyResult<()> {
    let py = slf.py();
    let Some(callback) = item.callback() else {
        if let Ready::Locked(handle) = item {
            // The stdlib's `_run` reports the callback's error itself and lets only
            // KeyboardInterrupt/SystemExit (or the exception handler's own error) out.
            handle.bind(py).call_method0(intern!(py, "_run"))?;
        }
        return Ok(());
    };
    match callback.invoke(py, &slf.get().spare_context) {
        Ok(()) => Ok(()),
        Err(err) if is_fatal(py, &err) => Err(err),
        Err(err) => slf
            .call_method1(
                intern!(py, "_callback_error"),
                (item.object(py), err.into_value(py)),
            )
            .map(drop),
    }
}

/// Runs one read or flush of a native engine. Its own errors it reports itself; an error
/// escaping it (from the Python half's error path) goes to the exception handler, as a
/// failing reader callback's would.
fn run_engine(
    slf: &Bound<'_, LoopCore>,
    engine: &EngineRef,
    direction: Direction,
    edge: bool,
) -> PyResult<()> {
    let py = slf.py();
    match engine.run(py, direction, edge) {
        Ok(()) => Ok(()),
        Err(err) if is_fatal(py, &err) => Err(err),
        Err(err) => {
            let shown = match engine.python_transport(py) {
                Some(owner) => owner,
                None => engine.object().clone_ref(py),
            };
            slf.call_method1(intern!(py, "_transport_error"), (shown, err.into_value(py)))
                .map(drop)
        }
    }
}
