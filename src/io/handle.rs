//! The two ends of the loop's I/O, split as tokio splits its driver and handle: the loop owns
//! an [`IoDriver`] (the registry, dispatch, close), and each transport engine holds an
//! [`IoHandle`], a cheap clone that has only the verbs a transport needs and never the loop.
//!
//! Both point at one `Shared`. When the loop closes, is dropped or finds itself in a forked
//! child, it says so here, so a handle that outlives its loop refuses to attach and its other
//! verbs find nothing registered (close empties the registry).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::registry::Registry;
use super::{Direction, EngineRef, Wake};

struct Shared {
    registry: Mutex<Registry>,
    /// The loop's runtime: registering a descriptor needs its reactor. Taken at close, so the
    /// reactor's descriptors (its epoll instance and waker) go with the loop's own runtime.
    runtime: Mutex<Option<tokio::runtime::Handle>>,
    closed: AtomicBool,
    /// Set in a forked child: the reactor is the parent's.
    abandoned: AtomicBool,
    /// The process that made the loop.
    creator_pid: u32,
}

/// The loop's end: owns the registry's lifetime and its per-turn and closing operations.
pub struct IoDriver {
    shared: Arc<Shared>,
}

impl IoDriver {
    pub fn new(wake: Arc<Wake>, runtime: tokio::runtime::Handle) -> Self {
        IoDriver {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::new(wake)),
                runtime: Mutex::new(Some(runtime)),
                closed: AtomicBool::new(false),
                abandoned: AtomicBool::new(false),
                creator_pid: std::process::id(),
            }),
        }
    }

    /// A handle for a transport engine.
    pub fn handle(&self) -> IoHandle {
        IoHandle {
            shared: self.shared.clone(),
        }
    }

    /// The registry, locked: for the loop's dispatch, fd callbacks, close and GC.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.shared.registry.lock()
    }

    /// The registry unless it is locked (GC traversal must not wait).
    pub fn try_registry(&self) -> Option<MutexGuard<'_, Registry>> {
        self.shared.registry.try_lock()
    }

    /// From now on handles refuse to attach (the loop closed or is being dropped), and the
    /// runtime is let go. In a forked child it is forgotten instead: the reactor is shared
    /// with the parent.
    pub fn mark_closed(&self) {
        let shared = &*self.shared;
        shared.closed.store(true, Ordering::SeqCst);
        let runtime = shared.runtime.lock().take();
        if shared.abandoned.load(Ordering::Relaxed) || std::process::id() != shared.creator_pid {
            std::mem::forget(runtime);
        }
    }

    /// This is a forked child of the process that made the loop (see `_abandon_after_fork`).
    pub fn mark_abandoned(&self) {
        self.shared.abandoned.store(true, Ordering::SeqCst);
    }
}

/// A transport engine's end: its descriptor's registration, nothing of the loop.
#[derive(Clone)]
pub struct IoHandle {
    shared: Arc<Shared>,
}

/// How an engine's constructor, given only the Python loop, gets its [`IoHandle`]: the loop's
/// `_io_port` attribute (read once per connection). It deliberately has no GC traversal:
/// the loop traverses the registry.
#[pyclass(frozen, module = "tokioloop._tokioloop")]
pub struct IoPort(pub IoHandle);

impl IoHandle {
    /// The handle of `event_loop` (a `tokioloop` loop).
    pub fn of(event_loop: &Bound<'_, PyAny>) -> PyResult<IoHandle> {
        let port = event_loop.getattr(pyo3::intern!(event_loop.py(), "_io_port"))?;
        Ok(port.cast::<IoPort>()?.get().0.clone())
    }
}

impl IoHandle {
    /// Gives `fd` to `engine`; False if something already watches it. Refused, as the loop
    /// refuses any use, once the loop is closed or in a forked child.
    pub fn attach(&self, fd: RawFd, engine: EngineRef) -> PyResult<bool> {
        let shared = &*self.shared;
        if shared.closed.load(Ordering::Relaxed) {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        if shared.abandoned.load(Ordering::Relaxed) || std::process::id() != shared.creator_pid {
            return Err(crate::errors::forked_error());
        }
        let Some(runtime) = shared.runtime.lock().clone() else {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        };
        let _context = runtime.enter();
        let attached = shared.registry.lock().attach(fd, engine);
        attached.map_err(crate::errors::from_io)
    }

    /// Turns the engine's interest in one direction on or off.
    pub fn watch(&self, py: Python<'_>, fd: RawFd, direction: Direction, on: bool) {
        let old = self.shared.registry.lock().watch(py, fd, direction, on);
        // Dropped outside the lock: the last reference may run Python code.
        drop(old);
    }

    /// See `Registry::arm`.
    pub fn arm(&self, fd: RawFd, direction: Direction) -> bool {
        self.shared.registry.lock().arm(fd, direction)
    }

    /// See `Registry::rearm`.
    pub fn rearm(&self, fd: RawFd, direction: Direction) -> bool {
        self.shared.registry.lock().rearm(fd, direction)
    }

    /// See `Registry::settle`.
    pub fn settle(&self, fd: RawFd, direction: Direction) {
        self.shared.registry.lock().settle(fd, direction);
    }

    /// Deregisters `fd` (before the engine closes it).
    pub fn release(&self, fd: RawFd) {
        let old = self.shared.registry.lock().release(fd);
        drop(old);
    }

    /// Runs `engine` in `direction` again at the next turn's I/O step (see `Registry::again`).
    pub fn again(&self, engine: EngineRef, direction: Direction) {
        self.shared.registry.lock().again(engine, direction);
    }
}
