//! An extension's descriptor as a registry target: its readiness wakes the C waker the
//! extension's last poll of that direction left, so its I/O is driven by the loop's own
//! reactor with no thread of the extension's. Reaches the loop only through the io seam
//! (`IoHandle`, as a native transport does); only `capi` makes these.
//!
//! Semantics are tokio's `AsyncFd`: `poll` says ready (an edge came, or tokio already knew)
//! or keeps the waker; after a syscall answered EAGAIN the extension calls `clear`, which
//! forgets the stale readiness and re-arms for the next edge (true if still ready: try
//! again). An edge runs [`BridgeFd`]'s engine entry in the turn, which wakes the task for the
//! next turn. Loop thread, GIL held.

use std::os::fd::RawFd;

use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokioloop_ffi as cabi;

use super::waker::OwnedWaker;
use crate::io::{Direction, Engine, EngineRef, IoHandle};

#[derive(Default)]
struct DirectionState {
    watched: bool,
    ready: bool,
    waker: Option<OwnedWaker>,
}

#[pyclass(frozen, module = "tokioloop._tokioloop")]
pub struct BridgeFd {
    io: IoHandle,
    fd: RawFd,
    /// Read, then write.
    directions: Mutex<[DirectionState; 2]>,
}

fn index(direction: Direction) -> usize {
    match direction {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

impl Engine for BridgeFd {
    fn run(slf: &Bound<'_, Self>, direction: Direction, _edge: bool) -> PyResult<()> {
        let waker = {
            let mut directions = slf.get().directions.lock();
            let state = &mut directions[index(direction)];
            state.ready = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    fn python_transport(&self, _py: Python<'_>) -> Option<Py<PyAny>> {
        None
    }

    fn is_closing(&self) -> bool {
        false
    }
}

impl BridgeFd {
    /// Registers `fd` with `event_loop`'s reactor; refused if something already watches it.
    pub fn attach(event_loop: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<Py<BridgeFd>> {
        let py = event_loop.py();
        let io = IoHandle::of(event_loop)?;
        let engine = Py::new(
            py,
            BridgeFd {
                io: io.clone(),
                fd,
                directions: Mutex::default(),
            },
        )?;
        if !io.attach(fd, EngineRef::new(engine.clone_ref(py)))? {
            return Err(PyValueError::new_err(format!(
                "File descriptor {fd} is used by another reader or writer"
            )));
        }
        Ok(engine)
    }

    /// True if `direction` is ready; otherwise `waker` (cloned) is woken when it is.
    ///
    /// # Safety
    /// `waker` is a valid C waker lent for this call.
    pub unsafe fn poll(&self, py: Python<'_>, direction: Direction, waker: &cabi::Waker) -> bool {
        let start_watching = {
            let mut directions = self.directions.lock();
            let state = &mut directions[index(direction)];
            if state.ready {
                return true;
            }
            !std::mem::replace(&mut state.watched, true)
        };
        if start_watching {
            self.io.watch(py, self.fd, direction, true);
            if self.io.arm(self.fd, direction) {
                self.directions.lock()[index(direction)].ready = true;
                return true;
            }
        }
        // SAFETY: per the contract.
        let fresh = unsafe { OwnedWaker::clone_from(waker) };
        let previous = self.directions.lock()[index(direction)].waker.replace(fresh);
        drop(previous);
        false
    }

    /// The extension's syscall answered EAGAIN: forget the readiness, re-arm for the next
    /// edge. True if the descriptor is still ready (closed or errored): try again.
    pub fn clear(&self, direction: Direction) -> bool {
        self.directions.lock()[index(direction)].ready = false;
        let still = self.io.rearm(self.fd, direction);
        if still {
            self.directions.lock()[index(direction)].ready = true;
        }
        still
    }

    /// Deregisters the descriptor (the extension closes it afterwards) and drops the wakers.
    pub fn release(&self) {
        self.io.release(self.fd);
        let wakers: Vec<_> = self
            .directions
            .lock()
            .iter_mut()
            .filter_map(|s| s.waker.take())
            .collect();
        drop(wakers);
    }
}
