"""CPython's own asyncio tests (``test.test_asyncio``), core areas, run against tokioloop.

Runs ``tools/cpython_conformance.py --check`` once (about half a minute on 2 cores): every
module of tokioloop's built areas runs on tokioloop in child processes, and the check fails if a
core-area behavioural test fails without being listed in ``tests/cpython/expected_failures.txt``,
or if a listed test now passes. The other tests here check, from the run's JSON, that the tests
really ran on tokioloop loops (the CPython modules reset the event-loop policy as they go).
Skipped when the interpreter has no ``test.test_asyncio``.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "tools", "cpython_conformance.py")
RUN_TIMEOUT = 480  # seconds for the whole --check run; it takes ~30 s on 2 cores

pytestmark = [
    pytest.mark.timeout(RUN_TIMEOUT + 60),
    pytest.mark.skipif(
        importlib.util.find_spec("test.test_asyncio") is None,
        reason="this interpreter ships no test.test_asyncio (CPython's test suite)",
    ),
]


@pytest.fixture(scope="module")
def conformance(tmp_path_factory):
    """Run ``--check`` once; return (completed process, parsed JSON report)."""
    out = tmp_path_factory.mktemp("cpython-conformance") / "check.json"
    env = dict(os.environ)
    for var in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONWARNINGS"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, RUNNER, "--check", "--json", str(out)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env, cwd=REPO,
    )
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


def test_core_areas_match_expected_failures(conformance):
    proc, report = conformance
    assert report is not None, f"no report written:\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, (
        "CPython asyncio conformance check failed (see tests/cpython/expected_failures.txt):\n"
        + proc.stdout[-12000:] + proc.stderr[-3000:]
    )
    print(f"conformance --check took {report['seconds']} s")


def test_every_module_ran_to_completion(conformance):
    _, report = conformance
    broken = [r for r in report["runs"] if r["status"] not in ("ok", "skipped")]
    assert not broken, broken
    assert all(r["under_test"] and "tokioloop" in r["under_test"] for r in report["runs"])


@pytest.mark.parametrize(
    "test_id",
    [
        # IsolatedAsyncioTestCase (asyncio.Runner -> policy), after earlier tests' resets.
        "test_locks.LockTests.test_acquire",
        "test_waitfor.AsyncioWaitForTest.test_wait_for_timeout_less_then_0_or_0",
        # asyncio.new_event_loop() in setUp.
        "test_tasks.RunCoroutineThreadsafeTests.test_run_coroutine_threadsafe",
        # A retargeted mixin suite (create_event_loop()).
        "test_events.LoopUnderTestEventLoopTests.test_call_later",
        "test_events.LoopUnderTestEventLoopTests.test_add_signal_handler",
        # Adapted suites: a mocked stdlib loop replaced by the loop under test.
        "test_tasks.CTask_CFuture_Tests.test_cancel_yield",
        "test_futures.CFutureTests.test_copy_state",
        "test_runners.RunnerTests.test_run",
    ],
)
def test_sample_ran_on_tokioloop(conformance, test_id):
    _, report = conformance
    entry = report["tests"].get(test_id)
    assert entry is not None, f"{test_id} was not run"
    record = entry["tokioloop"]
    assert record["loops"]["tokioloop"] >= 1, record
    assert record["loops"]["stdlib"] == 0, record
    assert entry["category"] == "behavioural" and entry["area"] == "core", entry
    assert record["outcome"] == "passed", record


def test_enough_tests_are_scored(conformance):
    """Guard against a harness change that quietly classifies everything away."""
    _, report = conformance
    core = [e for e in report["tests"].values()
            if e["category"] == "behavioural" and e["area"] == "core"]
    assert len(core) >= 1000, len(core)
