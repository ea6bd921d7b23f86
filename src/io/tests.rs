//! Unit tests of the registry's edge-to-level bridge and of the io handle, with a fake engine
//! and a socket pair: no loop, no Python transport. Run with
//! `PYO3_PYTHON=python3.11 cargo test` (the crate links libpython for tests only).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use parking_lot::Mutex;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

use super::registry::Registry;
use super::{Direction, Engine, EngineRef, Fired, IoDriver, Target, Wake};
use crate::handles::{Args, Callback, Handle};

/// Records what the registry asked it to run.
#[pyclass(frozen)]
struct FakeEngine {
    runs: Mutex<Vec<(Direction, bool)>>,
}

impl Engine for FakeEngine {
    fn run(slf: &Bound<'_, Self>, direction: Direction, edge: bool) -> PyResult<()> {
        slf.get().runs.lock().push((direction, edge));
        Ok(())
    }

    fn python_transport(&self, _py: Python<'_>) -> Option<Py<PyAny>> {
        None
    }

    fn is_closing(&self) -> bool {
        false
    }
}

struct Setup {
    runtime: Runtime,
    driver: IoDriver,
    /// The watched end.
    ours: UnixStream,
    /// The end the test writes into (the peer).
    peer: UnixStream,
}

impl Setup {
    fn new() -> Setup {
        Python::initialize();
        let runtime = crate::runtime::build().expect("runtime");
        let driver = IoDriver::new(std::sync::Arc::new(Wake::default()), runtime.handle().clone());
        let (ours, peer) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("nonblocking");
        peer.set_nonblocking(true).expect("nonblocking");
        Setup {
            runtime,
            driver,
            ours,
            peer,
        }
    }

    fn fd(&self) -> i32 {
        self.ours.as_raw_fd()
    }

    fn registry(&self) -> parking_lot::MutexGuard<'_, Registry> {
        self.driver.registry()
    }

    /// Lets the reactor look at the descriptors once, as a busy turn does.
    fn poll_reactor(&self) {
        for _ in 0..3 {
            self.runtime.block_on(tokio::task::yield_now());
        }
    }

    fn send(&self, data: &[u8]) {
        use std::io::Write;
        (&self.peer).write_all(data).expect("write");
    }

    /// Reads everything waiting on our end.
    fn drain(&self) {
        use std::io::Read;
        let mut buffer = [0u8; 4096];
        while matches!((&self.ours).read(&mut buffer), Ok(n) if n > 0) {}
    }

    fn dispatch(&self, py: Python<'_>) -> (Vec<Fired>, Vec<Fired>) {
        let (mut fired, mut retries) = (Vec::new(), Vec::new());
        self.registry().dispatch(py, &mut fired, &mut retries);
        (fired, retries)
    }

    fn new_engine(&self, py: Python<'_>) -> Py<FakeEngine> {
        Py::new(
            py,
            FakeEngine {
                runs: Mutex::new(Vec::new()),
            },
        )
        .expect("engine")
    }

    /// Attaches a fake engine to our end and watches reading.
    fn attach_reader(&self, py: Python<'_>) -> Py<FakeEngine> {
        let engine = self.new_engine(py);
        let handle = self.driver.handle();
        assert!(handle
            .attach(self.fd(), EngineRef::new(engine.clone_ref(py)))
            .expect("attach"));
        handle.watch(py, self.fd(), Direction::Read, true);
        assert!(!handle.arm(self.fd(), Direction::Read), "nothing to read yet");
        engine
    }
}

/// What the fired engines ran, by running them (the fake records).
fn run_all(py: Python<'_>, fired: &[Fired]) -> usize {
    for item in fired {
        match item {
            Fired::Engine {
                engine,
                direction,
                edge,
            } => engine.run(py, *direction, *edge).expect("run"),
            Fired::Callback(_) => panic!("no callback is registered"),
        }
    }
    fired.len()
}

fn runs(engine: &Py<FakeEngine>) -> Vec<(Direction, bool)> {
    engine.get().runs.lock().clone()
}

#[test]
fn an_edge_on_a_watched_fd_dispatches_once() {
    let setup = Setup::new();
    Python::attach(|py| {
        let engine = setup.attach_reader(py);
        setup.send(b"ping");
        setup.poll_reactor();
        let (fired, retries) = setup.dispatch(py);
        assert_eq!(run_all(py, &fired), 1);
        assert!(retries.is_empty());
        assert_eq!(runs(&engine), vec![(Direction::Read, true)]);
        // No new edge: an engine is edge-triggered, nothing until it re-arms.
        setup.poll_reactor();
        let (fired, _) = setup.dispatch(py);
        assert!(fired.is_empty());
        assert!(!setup
            .registry()
            .pending_flag()
            .load(std::sync::atomic::Ordering::Acquire));
    });
}

#[test]
fn rearm_waits_for_the_next_edge_and_reports_one_left_behind() {
    let setup = Setup::new();
    Python::attach(|py| {
        let engine = setup.attach_reader(py);
        let handle = setup.driver.handle();
        setup.send(b"one");
        setup.poll_reactor();
        assert_eq!(run_all(py, &setup.dispatch(py).0), 1);
        // The engine read everything: rearm forgets the consumed readiness.
        setup.drain();
        assert!(!handle.rearm(setup.fd(), Direction::Read));
        setup.poll_reactor();
        assert!(setup.dispatch(py).0.is_empty());
        // Data arrives after the rearm: the next edge brings the engine back.
        setup.send(b"two");
        setup.poll_reactor();
        assert_eq!(run_all(py, &setup.dispatch(py).0), 1);
        assert_eq!(
            runs(&engine),
            vec![(Direction::Read, true), (Direction::Read, true)]
        );
    });
}

#[test]
fn a_callback_is_level_triggered_until_its_fd_is_drained() {
    let setup = Setup::new();
    Python::attach(|py| {
        let _context = setup.runtime.enter();
        let print = py.eval(c"print", None, None).expect("print");
        let callback = Callback::new(py, print, Args::None, None, None).expect("callback");
        let handle = Py::new(py, Handle::new_persistent(callback)).expect("handle");
        let old = setup
            .registry()
            .set(py, setup.fd(), Direction::Read, handle, None)
            .expect("set");
        assert!(matches!(old, Ok(None)));
        setup.send(b"data");
        setup.poll_reactor();
        let is_callback = |fired: &[Fired]| fired.len() == 1 && matches!(fired[0], Fired::Callback(_));
        assert!(is_callback(&setup.dispatch(py).0), "the edge");
        // Not read: poll(2) finds it still ready, turn after turn, without a new edge.
        assert!(is_callback(&setup.dispatch(py).0), "level, second turn");
        assert!(is_callback(&setup.dispatch(py).0), "level, third turn");
        setup.drain();
        assert!(setup.dispatch(py).0.is_empty(), "drained: no more calls");
        let removed = setup
            .registry()
            .remove(setup.fd(), Direction::Read, None, false)
            .expect("remove");
        let (handle, fileobj) = removed;
        assert!(handle.is_some() && fileobj.is_none());
    });
}

#[test]
fn watch_off_then_on_looks_at_readiness_that_came_meanwhile() {
    let setup = Setup::new();
    Python::attach(|py| {
        let engine = setup.attach_reader(py);
        let handle = setup.driver.handle();
        handle.watch(py, setup.fd(), Direction::Read, false);
        setup.send(b"while paused");
        setup.poll_reactor();
        assert!(setup.dispatch(py).0.is_empty(), "not watched: not run");
        handle.watch(py, setup.fd(), Direction::Read, true);
        assert!(
            handle.arm(setup.fd(), Direction::Read),
            "tokio saw it ready: look now"
        );
        assert!(runs(&engine).is_empty());
    });
}

#[test]
fn release_while_an_edge_is_pending_runs_nothing() {
    let setup = Setup::new();
    Python::attach(|py| {
        let engine = setup.attach_reader(py);
        let handle = setup.driver.handle();
        setup.send(b"late");
        setup.poll_reactor();
        handle.release(setup.fd());
        assert!(setup.dispatch(py).0.is_empty());
        // The same fd number, registered again: the old registration's edge is not its.
        let second = setup.new_engine(py);
        assert!(handle
            .attach(setup.fd(), EngineRef::new(second.clone_ref(py)))
            .expect("attach"));
        assert!(setup.dispatch(py).0.is_empty());
        assert!(runs(&engine).is_empty() && runs(&second).is_empty());
        handle.release(setup.fd());
    });
}

#[test]
fn again_runs_the_engine_next_turn_as_a_retry() {
    let setup = Setup::new();
    Python::attach(|py| {
        let engine = setup.attach_reader(py);
        let handle = setup.driver.handle();
        handle.again(EngineRef::new(engine.clone_ref(py)), Direction::Write);
        assert!(setup
            .registry()
            .pending_flag()
            .load(std::sync::atomic::Ordering::Acquire));
        let (fired, retries) = setup.dispatch(py);
        assert!(fired.is_empty(), "a retry is not an edge");
        assert_eq!(run_all(py, &retries), 1);
        assert_eq!(runs(&engine), vec![(Direction::Write, false)]);
        assert!(setup.dispatch(py).1.is_empty(), "once");
    });
}

#[test]
fn close_empties_the_registry_and_handles_refuse_to_attach() {
    let setup = Setup::new();
    Python::attach(|py| {
        let engine = setup.attach_reader(py);
        let handle = setup.driver.handle();
        handle.again(EngineRef::new(engine.clone_ref(py)), Direction::Read);
        setup.driver.mark_closed();
        let targets = setup.registry().drain();
        // The owner, the read target and the pending retry all come back for release.
        let engines = targets.iter().filter(|t| matches!(t, Target::Engine(_))).count();
        assert_eq!(engines, 3);
        drop(targets);
        let fd: OwnedFd = setup.peer.try_clone().expect("clone").into();
        let refused = handle.attach(fd.as_raw_fd(), EngineRef::new(engine.clone_ref(py)));
        assert!(refused.is_err());
        // The other verbs find nothing registered.
        assert!(!handle.arm(setup.fd(), Direction::Read));
        assert!(!handle.rearm(setup.fd(), Direction::Read));
        assert!(setup.dispatch(py).0.is_empty());
    });
}
