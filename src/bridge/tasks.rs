//! One loop's bridge tasks: the extension futures spawned on it, their `asyncio.Future`s, and
//! the poll of the woken ones that the turn runs.
//!
//! A task is polled only on the loop thread, with the GIL held, inside the context copied when
//! it was spawned, and never while this table's lock is held (the extension's code may call
//! Python, which may spawn, cancel or close). Its first poll is in the turn after `spawn`, as a
//! Task's first step is. When it is ready its outcome completes the future unless that is done
//! already; a cancelled future drops the task from its done callback ([`TaskCanceller`]), on the
//! loop thread. Closing the loop drops every task; a forked child forgets them (their memory
//! and wakers may be mid-use in the parent's threads). Only `event_loop` and `capi` use this.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::PySystemError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};
use tokioloop_ffi as cabi;

use super::waker::{TaskWaker, WokenQueue};
use crate::io::Wake;

/// An extension's task, owned: dropped through its vtable (GIL held, loop thread).
struct ExtTask(cabi::Task);

// SAFETY: the ABI makes the loop thread the only one to touch a task; the table is shared with
// other threads only through its wakers, which never reach the task.
unsafe impl Send for ExtTask {}

impl ExtTask {
    fn vtable(&self) -> &cabi::TaskVTable {
        // SAFETY: the ABI requires a vtable valid for the task's life.
        unsafe { &*self.0.vtable }
    }

    fn poll(&self, waker: &cabi::Waker) -> bool {
        // SAFETY: the task is alive and not complete (the caller drops it once ready).
        unsafe { (self.vtable().poll)(self.0.data, waker) == cabi::READY }
    }

    fn complete(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        // SAFETY: called once, after poll said ready; a new reference or NULL + exception.
        let result = unsafe { (self.vtable().complete)(self.0.data) };
        NonNull::new(result.cast::<ffi::PyObject>())
            // SAFETY: a new reference, per the ABI.
            .map(|object| unsafe { Bound::from_owned_ptr(py, object.as_ptr()) }.unbind())
            .ok_or_else(|| {
                PyErr::take(py).unwrap_or_else(|| {
                    PySystemError::new_err("a bridge task completed with NULL and no exception set")
                })
            })
    }
}

impl Drop for ExtTask {
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, on the loop thread with the GIL held (see the module doc).
        unsafe { (self.vtable().drop)(self.0.data) }
    }
}

struct Slot {
    /// None once dropped (a ready task is dropped inside the context its poll entered).
    task: Option<ExtTask>,
    waker: Arc<TaskWaker>,
    future: Py<PyAny>,
    context: Py<PyAny>,
    /// The future's done callback that drops the task if the future is cancelled; added when
    /// the task first stays pending (a task ready at its first poll never needs one, and the
    /// first poll checks the future itself).
    canceller: Option<Py<PyAny>>,
}

impl Slot {
    /// Drops the extension's task inside its context (its destructor may call Python).
    fn discard(self, py: Python<'_>) {
        let Slot { task, context, .. } = self;
        let Some(task) = task else {
            return;
        };
        let outcome = in_context(py, &context, || {
            drop(task);
            Ok(())
        });
        if let Err(err) = outcome {
            err.write_unraisable(py, None);
        }
    }
}

struct Table {
    slots: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
    woken: Arc<WokenQueue>,
}

impl Table {
    fn remove(&self, id: u64) -> Option<Slot> {
        self.slots.lock().remove(&id)
    }
}

/// The bridge tasks of one loop.
pub struct BridgeTasks {
    table: Arc<Table>,
    /// The ids one turn polls, kept for their capacity (loop thread only).
    polling: Mutex<Vec<u64>>,
}

impl BridgeTasks {
    pub fn new(wake: Arc<Wake>) -> Self {
        BridgeTasks {
            table: Arc::new(Table {
                slots: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                woken: Arc::new(WokenQueue::new(wake)),
            }),
            polling: Mutex::new(Vec::new()),
        }
    }

    /// True while some task waits to be polled.
    #[inline]
    pub fn is_pending(&self) -> bool {
        self.table.woken.is_pending()
    }

    /// Takes ownership of `task` and returns the future it will complete (`future`, made by
    /// the caller on this loop). The first poll is in the next turn.
    pub fn spawn<'py>(
        &self,
        py: Python<'py>,
        task: cabi::Task,
        future: PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let task = ExtTask(task);
        let future = future?;
        // SAFETY: GIL held; a new reference or NULL with an exception set.
        let context = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? };
        let id = self.table.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = TaskWaker::new(self.table.woken.clone(), id);
        self.table.slots.lock().insert(
            id,
            Slot {
                task: Some(task),
                waker: waker.clone(),
                future: future.clone().unbind(),
                context: context.unbind(),
                canceller: None,
            },
        );
        waker.wake();
        Ok(future)
    }

    /// The turn's step: polls each task woken since the last one, once. A task woken during
    /// its own poll waits for the next turn. In debug mode `debug_owner` is the loop, which
    /// is told of a poll at least `slow_callback_duration` long, as of a slow callback.
    pub fn poll_woken(&self, py: Python<'_>, debug_owner: Option<&Bound<'_, PyAny>>) {
        if !self.is_pending() {
            return;
        }
        let slow_after = debug_owner.and_then(|owner| {
            owner
                .getattr(intern!(py, "slow_callback_duration"))
                .and_then(|value| value.extract::<f64>())
                .ok()
        });
        let mut ids = std::mem::take(&mut *self.polling.lock());
        self.table.woken.take(&mut ids);
        for id in ids.drain(..) {
            let Some(slot) = self.table.remove(id) else {
                continue; // completed or cancelled since it was woken
            };
            let started = slow_after.map(|_| crate::clock::now());
            let future = debug_owner.map(|_| slot.future.clone_ref(py));
            self.poll_one(py, id, slot);
            if let (Some(owner), Some(started), Some(threshold), Some(future)) =
                (debug_owner, started, slow_after, future)
            {
                let elapsed = crate::clock::now() - started;
                if elapsed >= threshold {
                    let reported =
                        owner.call_method1(intern!(py, "_report_slow_bridge_poll"), (future, elapsed));
                    if let Err(err) = reported {
                        err.write_unraisable(py, Some(owner));
                    }
                }
            }
        }
        *self.polling.lock() = ids;
    }

    /// One poll of one task; a ready one is completed, dropped and settled, a pending one goes
    /// back (with its canceller, the first time).
    fn poll_one(&self, py: Python<'_>, id: u64, mut slot: Slot) {
        slot.waker.unqueue();
        if slot.canceller.is_none() {
            // The first poll: a future cancelled (or set by hand) since the spawn ends the task
            // unpolled.
            match slot
                .future
                .bind(py)
                .call_method0(intern!(py, "done"))
                .and_then(|done| done.is_truthy())
            {
                Ok(false) => {}
                Ok(true) => return slot.discard(py),
                Err(err) => return settle(py, slot, Err(err)),
            }
        }
        let waker = slot.waker.lend();
        // Poll, and if ready complete and drop, all in one entry of the task's context.
        let stepped = in_context(py, &slot.context, || {
            let task = slot.task.as_ref().expect("a slot in the table holds its task");
            if !task.poll(&waker) {
                return Ok(None);
            }
            let outcome = task.complete(py);
            drop(slot.task.take());
            Ok(Some(outcome))
        });
        match stepped {
            Ok(Some(outcome)) => settle(py, slot, outcome),
            Err(err) => settle(py, slot, Err(err)),
            Ok(None) if slot.canceller.is_some() => {
                self.table.slots.lock().insert(id, slot);
            }
            Ok(None) => match self.add_canceller(py, id, &slot.future) {
                Ok(canceller) => {
                    slot.canceller = Some(canceller);
                    self.table.slots.lock().insert(id, slot);
                }
                Err(err) => settle(py, slot, Err(err)),
            },
        }
    }

    fn add_canceller(&self, py: Python<'_>, id: u64, future: &Py<PyAny>) -> PyResult<Py<PyAny>> {
        let canceller = Bound::new(
            py,
            TaskCanceller {
                table: self.table.clone(),
                id,
            },
        )?;
        future
            .bind(py)
            .call_method1(intern!(py, "add_done_callback"), (&canceller,))?;
        Ok(canceller.into_any().unbind())
    }

    /// `close()`: every task is dropped, on this thread, with the GIL held.
    pub fn drain(&self, py: Python<'_>) {
        let slots: Vec<Slot> = self.table.slots.lock().drain().map(|(_, slot)| slot).collect();
        for slot in slots {
            slot.discard(py);
        }
    }

    /// A forked child: the tasks are the parent's; forget them without running any of their code.
    pub fn abandon(&self) {
        if let Some(mut slots) = self.table.slots.try_lock() {
            for (_, slot) in slots.drain() {
                std::mem::forget(slot);
            }
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(slots) = self.table.slots.try_lock() {
            for slot in slots.values() {
                visit.call(&slot.future)?;
                visit.call(&slot.context)?;
            }
        }
        Ok(())
    }
}

/// Runs `body` with `context` entered.
fn in_context<T>(py: Python<'_>, context: &Py<PyAny>, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    // SAFETY: GIL held; `context` is a live Context object; Enter and Exit pair up below.
    if unsafe { ffi::PyContext_Enter(context.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let outcome = body();
    // SAFETY: as above.
    if unsafe { ffi::PyContext_Exit(context.as_ptr()) } < 0 {
        let exit_error = PyErr::fetch(py);
        return outcome.and(Err(exit_error));
    }
    outcome
}

/// A finished task: it goes (if it is still there), and its future gets the outcome unless it
/// is done already (cancelled meanwhile, or set by hand).
fn settle(py: Python<'_>, mut slot: Slot, outcome: PyResult<Py<PyAny>>) {
    let future = slot.future.clone_ref(py);
    let canceller = slot.canceller.take();
    slot.discard(py);
    let future = future.bind(py);
    let resolved = (|| -> PyResult<()> {
        if let Some(canceller) = canceller {
            future.call_method1(intern!(py, "remove_done_callback"), (canceller,))?;
        }
        match outcome {
            Ok(value) => future.call_method1(intern!(py, "set_result"), (value,))?,
            Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?,
        };
        Ok(())
    })();
    if let Err(err) = resolved {
        // InvalidStateError from a future that is done already: nothing is owed to it.
        let done = future
            .call_method0(intern!(py, "done"))
            .and_then(|done| done.is_truthy());
        if !matches!(done, Ok(true)) {
            err.write_unraisable(py, Some(future));
        }
    }
}

/// The done callback of a bridge task's future: if it was cancelled, the task is dropped.
#[pyclass(frozen, module = "tokioloop._tokioloop")]
pub struct TaskCanceller {
    table: Arc<Table>,
    id: u64,
}

#[pymethods]
impl TaskCanceller {
    fn __call__(&self, py: Python<'_>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            if let Some(slot) = self.table.remove(self.id) {
                slot.discard(py);
            }
        }
        Ok(())
    }
}
