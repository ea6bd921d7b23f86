//! The timer heap: every `call_later`/`call_at` handle of one loop, keyed by (when, sequence).
//!
//! One binary heap and lazy cancellation, as asyncio does: a cancelled handle stays in the heap
//! until it reaches the top or until cancelled entries dominate and the heap is rebuilt. Equal
//! deadlines pop in scheduling order thanks to the sequence number. Nothing here may drop a
//! Python object: entries leaving the heap are handed back to the caller, which drops them
//! after releasing the loop's lock (a finalizer may re-enter the loop).

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;

use super::ready::Ready;
use crate::handles::TimerHandle;

/// Below this many entries a rebuild is not worth it, however many are cancelled.
const MIN_ENTRIES_TO_COMPACT: usize = 100;

struct Entry {
    when: f64,
    seq: u64,
    handle: Py<TimerHandle>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed, so that std's max-heap pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Releases the callbacks of timers that left the heap unrun; call with no lock held.
pub fn discard(garbage: Vec<Py<TimerHandle>>) {
    if garbage.is_empty() {
        return;
    }
    for handle in garbage {
        drop(handle.get().callback.release());
    }
}

pub struct Timers {
    heap: BinaryHeap<Entry>,
    next_seq: u64,
    cancelled: Arc<AtomicUsize>,
}

impl Timers {
    pub fn new() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The counter a new `TimerHandle` bumps when it is cancelled while scheduled.
    pub fn cancel_counter(&self) -> Arc<AtomicUsize> {
        self.cancelled.clone()
    }

    pub fn push(&mut self, when: f64, handle: Py<TimerHandle>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, handle });
    }

    /// Timers scheduled and not cancelled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn live(&self) -> usize {
        self.heap
            .len()
            .saturating_sub(self.cancelled.load(Ordering::Relaxed))
    }

    pub fn references(&self) -> impl Iterator<Item = &Py<TimerHandle>> {
        self.heap.iter().map(|e| &e.handle)
    }

    fn take_out(&self, entry: &Entry) {
        let handle = entry.handle.get();
        if handle.is_cancelled() {
            self.cancelled.fetch_sub(1, Ordering::Relaxed);
        }
        handle.unschedule();
    }

    /// Removes cancelled entries from the top, or all of them when they are the majority.
    pub fn prune(&mut self, garbage: &mut Vec<Py<TimerHandle>>) {
        let cancelled = self.cancelled.load(Ordering::Relaxed);
        if self.heap.len() > MIN_ENTRIES_TO_COMPACT && cancelled * 2 > self.heap.len() {
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut kept = Vec::with_capacity(entries.len() - cancelled.min(entries.len()));
            for entry in entries {
                if entry.handle.get().is_cancelled() {
                    self.take_out(&entry);
                    garbage.push(entry.handle);
                } else {
                    kept.push(entry);
                }
            }
            self.heap = BinaryHeap::from(kept);
        }
        while self.heap.peek().is_some_and(|e| e.handle.get().is_cancelled()) {
            if let Some(entry) = self.heap.pop() {
                self.take_out(&entry);
                garbage.push(entry.handle);
            }
        }
    }

    /// The earliest deadline, cancelled or not (call `prune` first for a tight one).
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    /// Moves every timer due at `now` to `ready`, in deadline order; never one due later.
    pub fn pop_due(&mut self, now: f64, ready: &mut VecDeque<Ready>, garbage: &mut Vec<Py<TimerHandle>>) {
        while self.heap.peek().is_some_and(|e| e.when <= now) {
            let Some(entry) = self.heap.pop() else { break };
            self.take_out(&entry);
            if entry.handle.get().is_cancelled() {
                garbage.push(entry.handle);
            } else {
                ready.push_back(Ready::Timer(entry.handle));
            }
        }
    }

    /// Empties the heap (loop close); the caller drops what comes back outside its lock.
    pub fn drain(&mut self) -> Vec<Py<TimerHandle>> {
        let entries = std::mem::take(&mut self.heap).into_vec();
        entries
            .into_iter()
            .map(|entry| {
                self.take_out(&entry);
                entry.handle
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
