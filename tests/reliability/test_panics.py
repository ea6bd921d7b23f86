"""Panics (issue 20 item 7): a Rust panic anywhere in tokioloop comes out as a Python exception
(pyo3's ``PanicException``), or as an unraisable report where Python has no caller, and the loop
can still be closed: never an abort, never a hang.

Needs the extension built with the cargo feature ``fault-points`` (``src/fault.rs``), which
marks each entry class with a named panic point: the hand-written fastcall entries
(call_soon, call_soon_threadsafe, create_future), a method of each ``#[pymethods]`` block
(LoopCore's run, Handle and TimerHandle cancel, the stream engine's write and read path, the
TLS layer's write, the datagram engine's sendto, a sock_* wait), the park hook, the DNS worker
thread and LoopCore's ``Drop``. ``nox -s reliability`` builds that variant on one version and runs
this file with ``TOKIOLOOP_FAULT_POINTS=1``; with a normal build the file is skipped (and fails
if that variable says the build should have the points).

Each trial runs in its own process (``panic_child.py``), so an abort or a hang is a failed trial,
not a dead test run. Figure: points passing / total.
"""

import json
import os
import subprocess
import sys

import pytest

import _tls
import panic_child
from tokioloop import _tokioloop

HERE = os.path.dirname(os.path.abspath(__file__))
TRIAL_TIMEOUT = 30.0

if not hasattr(_tokioloop, "_arm_fault_point"):
    if os.environ.get("TOKIOLOOP_FAULT_POINTS"):
        raise RuntimeError("TOKIOLOOP_FAULT_POINTS is set, but this build has no fault points")
    pytest.skip("needs the extension built with --features fault-points", allow_module_level=True)

RESULTS = {}


@pytest.fixture(scope="module")
def certdir(tmp_path_factory):
    return _tls.make_certs(tmp_path_factory.mktemp("panic-certs")).dir


def run_trial(point, certdir):
    child = subprocess.run(
        [sys.executable, os.path.join(HERE, "panic_child.py"), point, certdir],
        capture_output=True, text=True, timeout=TRIAL_TIMEOUT,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    assert child.returncode == 0, (
        f"the trial process died (status {child.returncode}):\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("point", panic_child.POINTS)
def test_panic_becomes_a_python_exception(point, certdir):
    RESULTS[point] = False
    outcome = run_trial(point, certdir)
    seen = [outcome["raised"], *outcome["handler"], *outcome["unraisable"]]
    assert "PanicException" in seen, outcome
    if point != "loop_drop":
        assert outcome["closed"] is True, outcome
    RESULTS[point] = True


def test_zz_figure():
    """Prints the figure (runs last: pytest keeps file order)."""
    passed = sum(RESULTS.values())
    print(f"\nreliability figure: panics: {passed}/{len(panic_child.POINTS)} panic points "
          f"surfaced as PanicException with the loop still closable")
    assert passed == len(panic_child.POINTS)
