//! The timer heap checked against a model: proptest applies random sequences of schedule,
//! cancel, clock advance, pop-due and prune to `Timers`, holding real `TimerHandle`s, and to a
//! plain list of timers, and compares them after every step. Test-only (`cargo test --lib`, as
//! `nox -s lint` runs it); only `timers` declares it.
//!
//! What the heap promises, and so what is checked: a due pop yields exactly the live timers
//! whose deadline is at or before the clock, earliest deadline first and, for equal deadlines,
//! in the order they were scheduled (asyncio leaves that order unspecified: its heap compares
//! deadlines only; ours is first scheduled, first run); no timer comes out early; a cancelled
//! timer never comes out as ready, only as garbage; `live()` counts the scheduled, uncancelled
//! timers, also when a timer is cancelled after it left the heap; after `prune` the next
//! deadline is the earliest live one; every timer leaves the heap exactly once (ready, garbage
//! or drained at close) and is then no longer scheduled.

use std::collections::{HashSet, VecDeque};

use proptest::prelude::*;
use pyo3::prelude::*;

use super::Timers;
use crate::event_loop::ready::Ready;
use crate::handles::{Args, Callback, TimerHandle};

/// The deadline of a schedule operation, from a small set so that ties are common: slot 0 is
/// already in the past, the last slot never comes (a `call_at(inf)`), the others are 0.5 apart.
fn deadline(slot: u8) -> f64 {
    match slot {
        0 => -1.0,
        DEADLINE_SLOTS.. => f64::INFINITY,
        _ => f64::from(slot) * 0.5,
    }
}
const DEADLINE_SLOTS: u8 = 24;

#[derive(Clone, Debug)]
enum Op {
    Schedule(u8),
    /// Enough timers at once to cross the heap's compaction threshold.
    ScheduleMany(Vec<u8>),
    /// Cancels the timer made n-th (modulo how many were made), in the heap or not.
    Cancel(usize),
    /// Cancels every k-th live timer: cancelled entries become the majority, so `prune` compacts.
    CancelEvery(usize),
    /// Moves the clock forward by n quarters.
    Advance(u8),
    PopDue,
    Prune,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..=DEADLINE_SLOTS).prop_map(Op::Schedule),
        1 => proptest::collection::vec(0..=DEADLINE_SLOTS, 50..160).prop_map(Op::ScheduleMany),
        3 => any::<usize>().prop_map(Op::Cancel),
        1 => (1usize..4).prop_map(Op::CancelEvery),
        3 => (0u8..5).prop_map(Op::Advance),
        3 => Just(Op::PopDue),
        2 => Just(Op::Prune),
    ]
}

/// One timer as the model sees it.
struct Modelled {
    when: f64,
    cancelled: bool,
    /// Still to come out of the heap (as ready, garbage or at the final drain).
    in_heap: bool,
    /// Came out as ready, to run.
    fired: bool,
}

struct Harness<'py> {
    py: Python<'py>,
    timers: Timers,
    /// Index = scheduling order (the heap's sequence number).
    handles: Vec<Py<TimerHandle>>,
    model: Vec<Modelled>,
    now: f64,
    /// Handles (by pointer) that left the heap, to check each leaves once.
    out: HashSet<usize>,
}

impl<'py> Harness<'py> {
    fn new(py: Python<'py>) -> Self {
        Harness {
            py,
            timers: Timers::new(),
            handles: Vec::new(),
            model: Vec::new(),
            now: 0.0,
            out: HashSet::new(),
        }
    }

    fn schedule(&mut self, when: f64) {
        let py = self.py;
        let callback = Callback::new(py, py.None().into_bound(py), Args::None, None, None).expect("callback");
        let handle = TimerHandle::new(callback, when, None, self.timers.cancel_counter());
        let handle = Py::new(py, handle).expect("timer handle");
        self.timers.push(when, handle.clone_ref(py));
        self.handles.push(handle);
        self.model.push(Modelled {
            when,
            cancelled: false,
            in_heap: true,
            fired: false,
        });
    }

    fn cancel(&mut self, index: usize) {
        // Through Python, as a user's `handle.cancel()` gets there.
        self.handles[index]
            .bind(self.py)
            .call_method0("cancel")
            .expect("cancel");
        self.model[index].cancelled = true;
    }

    /// Marks a handle that left the heap; it must be one of ours, out for the first time.
    fn left_heap(&mut self, handle: &Py<TimerHandle>) -> usize {
        assert!(
            self.out.insert(handle.as_ptr() as usize),
            "a timer left the heap twice"
        );
        let index = self
            .handles
            .iter()
            .position(|h| h.is(handle))
            .expect("a timer that was never scheduled came out");
        let scheduled: bool = handle
            .bind(self.py)
            .getattr("_scheduled")
            .unwrap()
            .extract()
            .unwrap();
        assert!(!scheduled, "a timer out of the heap still says it is scheduled");
        self.model[index].in_heap = false;
        index
    }

    fn collect_garbage(&mut self, garbage: Vec<Py<TimerHandle>>) {
        for handle in &garbage {
            let index = self.left_heap(handle);
            assert!(self.model[index].cancelled, "a live timer was thrown away");
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Modelled)> {
        self.model
            .iter()
            .enumerate()
            .filter(|(_, t)| t.in_heap && !t.cancelled)
    }

    fn pop_due(&mut self) {
        let mut expected: Vec<(f64, usize)> = self
            .live()
            .filter(|(_, t)| t.when <= self.now)
            .map(|(i, t)| (t.when, i))
            .collect();
        expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut ready = VecDeque::new();
        let mut garbage = Vec::new();
        self.timers.pop_due(self.now, &mut ready, &mut garbage);
        self.collect_garbage(garbage);
        let mut fired = Vec::new();
        for item in ready {
            let Ready::Timer(handle) = item else {
                panic!("the timer heap queued something that is not a timer");
            };
            let index = self.left_heap(&handle);
            let timer = &mut self.model[index];
            assert!(!timer.cancelled, "a cancelled timer fired");
            assert!(
                timer.when <= self.now,
                "a timer fired early: {} at {}",
                timer.when,
                self.now
            );
            timer.fired = true;
            fired.push((timer.when, index));
        }
        assert_eq!(
            fired, expected,
            "due timers (deadline, scheduling order) differ from the model's"
        );
    }

    fn prune(&mut self) {
        let mut garbage = Vec::new();
        self.timers.prune(&mut garbage);
        self.collect_garbage(garbage);
        let earliest_live = self.live().map(|(_, t)| t.when).min_by(f64::total_cmp);
        assert_eq!(
            self.timers.next_deadline(),
            earliest_live,
            "next deadline after prune"
        );
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Schedule(slot) => self.schedule(deadline(*slot)),
            Op::ScheduleMany(slots) => slots.iter().for_each(|slot| self.schedule(deadline(*slot))),
            Op::Cancel(n) if !self.handles.is_empty() => self.cancel(n % self.handles.len()),
            Op::Cancel(_) => {}
            Op::CancelEvery(k) => {
                let chosen: Vec<usize> = self.live().map(|(i, _)| i).step_by(*k).collect();
                chosen.into_iter().for_each(|i| self.cancel(i));
            }
            Op::Advance(quarters) => self.now += f64::from(*quarters) * 0.25,
            Op::PopDue => self.pop_due(),
            Op::Prune => self.prune(),
        }
        let live = self.live().count();
        assert_eq!(self.timers.live(), live, "live() differs from the model's count");
        if self.model.iter().any(|t| t.in_heap) {
            assert!(!self.timers.is_empty(), "the heap lost a timer");
        } else {
            assert!(self.timers.is_empty(), "the heap kept a timer that came out");
        }
    }

    /// The loop's close: whatever is left comes out, and every timer came out exactly once.
    fn finish(mut self) {
        for handle in self.timers.drain() {
            self.left_heap(&handle);
        }
        assert!(self.timers.is_empty());
        assert_eq!(self.out.len(), self.handles.len(), "a timer never left the heap");
        for handle in &self.handles {
            drop(handle.get().callback.release());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn timer_heap_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        Python::initialize();
        Python::attach(|py| {
            let mut harness = Harness::new(py);
            for op in &ops {
                harness.apply(op);
            }
            // Everything left with a finite deadline comes due once the clock passes it.
            harness.now = f64::from(DEADLINE_SLOTS);
            harness.pop_due();
            harness.finish();
        });
    }
}
