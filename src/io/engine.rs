//! The one thing `io` knows of a transport: an engine that runs a read or a write when its
//! descriptor is ready. The registry and the loop's ready queue hold an [`EngineRef`], a Python
//! reference plus a static table of the engine type's entry points, so neither names a
//! transport type and an event costs one indirect call, no allocation.
//!
//! Implemented by the stream engine (in `transports`); the registry's unit tests use a fake one.

use std::marker::PhantomData;

use pyo3::prelude::*;
use pyo3::{PyClass, PyTraverseError, PyVisit};

use super::Direction;

/// A native engine the registry can hand readiness to.
pub trait Engine: PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync {
    /// One read or one write, run by the loop's turn. `edge`: a fresh edge queued it (false
    /// when the engine asked to look again, see `IoHandle::again`).
    fn run(slf: &Bound<'_, Self>, direction: Direction, edge: bool) -> PyResult<()>;
    /// The transport users see (None once detached), for error reports and add_reader's refusal.
    fn python_transport(&self, py: Python<'_>) -> Option<Py<PyAny>>;
    /// The transport is closing: asyncio no longer counts its fd as in use.
    fn is_closing(&self) -> bool;
}

/// An engine's entry points with its type erased.
struct EntryPoints {
    run: fn(&Bound<'_, PyAny>, Direction, bool) -> PyResult<()>,
    python_transport: fn(&Bound<'_, PyAny>) -> Option<Py<PyAny>>,
    is_closing: fn(&Bound<'_, PyAny>) -> bool,
}

struct EntryPointsOf<E>(PhantomData<E>);

impl<E: Engine> EntryPointsOf<E> {
    const TABLE: EntryPoints = EntryPoints {
        run: |object, direction, edge| E::run(Self::engine(object), direction, edge),
        python_transport: |object| Self::engine(object).get().python_transport(object.py()),
        is_closing: |object| Self::engine(object).get().is_closing(),
    };

    fn engine<'a, 'py>(object: &'a Bound<'py, PyAny>) -> &'a Bound<'py, E> {
        // SAFETY: `EngineRef::new` pairs this table only with objects of type `E`.
        unsafe { object.cast_unchecked::<E>() }
    }
}

/// A reference to an engine, as the registry and the ready queue keep it (two words).
pub struct EngineRef {
    object: Py<PyAny>,
    entry_points: &'static EntryPoints,
}

impl EngineRef {
    pub fn new<E: Engine>(engine: Py<E>) -> Self {
        EngineRef {
            object: engine.into_any(),
            entry_points: &EntryPointsOf::<E>::TABLE,
        }
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        EngineRef {
            object: self.object.clone_ref(py),
            entry_points: self.entry_points,
        }
    }

    pub fn run(&self, py: Python<'_>, direction: Direction, edge: bool) -> PyResult<()> {
        (self.entry_points.run)(self.object.bind(py), direction, edge)
    }

    pub fn python_transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        (self.entry_points.python_transport)(self.object.bind(py))
    }

    pub fn is_closing(&self, py: Python<'_>) -> bool {
        (self.entry_points.is_closing)(self.object.bind(py))
    }

    /// The engine object itself (shown when its transport is already gone).
    pub fn object(&self) -> &Py<PyAny> {
        &self.object
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.object)
    }
}
