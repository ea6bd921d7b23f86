//! What the tests watch Rust futures with: a drop probe (was the future dropped? Python can read
//! it or await it) and a gate that holds futures until Python opens it and counts the ones that
//! got through and the ones dropped. Both are built on `tokio::sync::watch`, which works from any
//! thread and on any executor (tokioloop's native polls too). Registered by `lib.rs`; used only
//! by tests/test_rust_bridge_native.py.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::sync::watch;
use tokioloop_rs::future_into_py;

/// Owned by the watched future: dropping the future drops it, which flips the probe to true.
struct DropSignal(Arc<watch::Sender<bool>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Says whether the Rust future made with it has been dropped.
#[pyclass(frozen, module = "bridge_demo")]
pub struct DropProbe {
    dropped: Arc<watch::Sender<bool>>,
}

#[pymethods]
impl DropProbe {
    /// True once the watched Rust future has been dropped.
    #[getter]
    fn dropped(&self) -> bool {
        *self.dropped.borrow()
    }

    /// An awaitable (a tokioloop_rs future itself) that completes with True once the watched
    /// Rust future has been dropped.
    fn wait_dropped<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut seen = self.dropped.subscribe();
        future_into_py(py, async move {
            match seen.wait_for(|dropped| *dropped).await {
                Ok(_) => Ok(true),
                Err(_) => Err(PyRuntimeError::new_err("the drop probe's sender is gone")),
            }
        })
    }
}

/// `cancel_probe()`: `(awaitable, probe)`. The awaitable's Rust future never completes by itself;
/// the probe turns true when that future is dropped.
#[pyfunction]
pub fn cancel_probe(py: Python<'_>) -> PyResult<(Bound<'_, PyAny>, DropProbe)> {
    let dropped = Arc::new(watch::Sender::new(false));
    let signal = DropSignal(Arc::clone(&dropped));
    let awaitable = future_into_py(py, async move {
        let _dropped_with_this_future = signal;
        std::future::pending::<()>().await;
        Ok(())
    })?;
    Ok((awaitable, DropProbe { dropped }))
}

/// Counts, when dropped, one future of a gate as dropped.
struct GateTicket(Arc<AtomicUsize>);

impl Drop for GateTicket {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Holds Rust futures made by `wait` until `open()`; counts those that got through and those
/// dropped (after getting through, or before: cancelled, or their loop closed).
#[pyclass(frozen, module = "bridge_demo")]
pub struct Gate {
    opened: Arc<watch::Sender<bool>>,
    passed: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

#[pymethods]
impl Gate {
    #[new]
    fn new() -> Self {
        Gate {
            opened: Arc::new(watch::Sender::new(false)),
            passed: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Lets every waiting and future Rust future through.
    fn open(&self) {
        self.opened.send_replace(true);
    }

    /// How many Rust futures made by `wait` got through.
    #[getter]
    fn passed(&self) -> usize {
        self.passed.load(Ordering::SeqCst)
    }

    /// How many Rust futures made by `wait` have been dropped.
    #[getter]
    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    /// An awaitable whose Rust future completes with `value` once the gate is open.
    fn wait<'py>(&self, py: Python<'py>, value: Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let mut opened = self.opened.subscribe();
        let passed = Arc::clone(&self.passed);
        let ticket = GateTicket(Arc::clone(&self.dropped));
        future_into_py(py, async move {
            let _dropped_with_this_future = ticket;
            if opened.wait_for(|is_open| *is_open).await.is_err() {
                return Err(PyRuntimeError::new_err("the gate's sender is gone"));
            }
            passed.fetch_add(1, Ordering::SeqCst);
            Ok(value)
        })
    }
}
