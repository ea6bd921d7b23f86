"""CPython's own asyncio tests (``test.test_asyncio``), core areas, run against tokioloop.

Runs ``tools/cpython_conformance.py --check`` once (about half a minute on 2 cores): every
module of tokioloop's built areas runs on tokioloop in child processes, and the check fails if a
built-area behavioural test fails without being listed in this CPython version's
``tests/cpython/expected_failures-X.Y.txt``, or if a listed test now passes. The other tests here
check, from the run's JSON, that the tests really ran on tokioloop loops (the CPython modules
reset the event-loop policy as they go). Each CPython version runs its own ``test.test_asyncio``,
so the sample tests and the minimum count are chosen per version. Skipped when the interpreter
has no ``test.test_asyncio``.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "tools", "cpython_conformance.py")
sys.path.insert(0, os.path.join(REPO, "tools"))
from conformance_rules import (  # noqa: E402
    SUPPORTED_VERSIONS,
    expected_file,
    load_expected,
    load_rules,
    version_matches,
)
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
        f"CPython asyncio conformance check failed (see {os.path.relpath(expected_file(), REPO)}):\n"
        + proc.stdout[-12000:] + proc.stderr[-3000:]
    )
    print(f"conformance --check took {report['seconds']} s")


def test_every_module_ran_to_completion(conformance):
    _, report = conformance
    broken = [r for r in report["runs"] if r["status"] not in ("ok", "skipped")]
    assert not broken, broken
    assert all(r["under_test"] and "tokioloop" in r["under_test"] for r in report["runs"])


# (version qualifier as in rules.txt, test id): tests that must have run on tokioloop and passed.
SAMPLES = [
    # IsolatedAsyncioTestCase (asyncio.Runner -> policy; on 3.10 a loop made before startTest).
    (">=3.10", "test_locks.LockTests.test_acquire"),
    (">=3.10", "test_waitfor.AsyncioWaitForTest.test_wait_for_timeout_less_then_0_or_0"),
    # asyncio.new_event_loop() in setUp.
    (">=3.10", "test_tasks.SleepTests.test_sleep_zero"),
    # A retargeted mixin suite (create_event_loop()).
    (">=3.10", "test_events.LoopUnderTestEventLoopTests.test_call_later"),
    (">=3.10", "test_events.LoopUnderTestEventLoopTests.test_add_signal_handler"),
    # Adapted suites: a mocked stdlib loop replaced by the loop under test.
    (">=3.10", "test_tasks.CTask_CFuture_Tests.test_cancel_yield"),
    (">=3.10", "test_futures.CFutureTests.test_copy_state"),
    (">=3.10", "test_runners.RunTests.test_asyncio_run_return"),
    (">=3.11", "test_runners.RunnerTests.test_run"),
    ("<3.11", "test_queues.QueueBasicTests.test_empty"),  # a [<3.11] adapt rule
    # Modules and classes of later versions only.
    (">=3.11", "test_taskgroups.TestTaskGroup.test_taskgroup_01"),
    (">=3.11", "test_timeouts.TimeoutTests.test_timeout_basic"),
    (">=3.12", "test_eager_task_factory.CEagerTaskFactoryLoopTests.test_eager_task_factory_set"),
    (">=3.13", "test_staggered.StaggeredTests.test_one_successful"),
    (">=3.13", "test_queues.QueueShutdownTests.test_shutdown_empty"),
    (">=3.14", "test_graph.TestCallStackC.test_stack_tgroup"),
    (">=3.14", "test_free_threading.TestCFreeThreading.test_run_coroutine_threadsafe"),
    # 3.14's task group suites name asyncio.EventLoop as their loop_factory (adapted).
    (">=3.14", "test_taskgroups.TestEagerTaskTaskGroup.test_taskgroup_01"),
]

#: Fewest core-area behavioural tests a --check run may score, per CPython version (about 90%
#: of what each version's test.test_asyncio has: 1074, 1124, 1209, 1280, 1558, 1630).
MIN_CORE_TESTS = {(3, 10): 950, (3, 11): 1000, (3, 12): 1080, (3, 13): 1150, (3, 14): 1400,
                  (3, 15): 1460}


@pytest.mark.parametrize(
    "test_id", [test_id for spec, test_id in SAMPLES if version_matches(spec)],
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
    assert len(core) >= MIN_CORE_TESTS.get(sys.version_info[:2], 1000), len(core)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS, ids=lambda v: "%d.%d" % v)
def test_rules_and_expectations_load_for_every_version(version):
    """rules.txt parses for every supported version, and each version has its expectations."""
    rules = load_rules(version=version)
    assert rules.classes and rules.implementation and rules.areas
    expected = load_expected(expected_file(version))
    assert all(reason for reason in expected.reasons.values())


def test_version_qualifiers():
    assert version_matches(">=3.12", (3, 12)) and not version_matches(">=3.12", (3, 11))
    assert version_matches(">=3.11,<3.13", (3, 12)) and not version_matches(">=3.11,<3.13", (3, 13))
    assert version_matches("==3.10", (3, 10)) and version_matches("!=3.10", (3, 11))
    with pytest.raises(ValueError):
        version_matches("3.12", (3, 12))
