"""CI form of the soak (tests/reliability/soak.py, issue 20 item 2): tokioloop and the stdlib loop
side by side, each in its own child process, 3 minutes of load each, same seed.

Contract: one soak run per session (the ``soak_results`` fixture), judged by one test per pass
criterion of soak.py's docstring, so a failure names the criterion; asyncio's run is the oracle
for the RSS and exception-handler comparisons. The asyncio run must itself lose nothing and
come back to the same fd / thread / child counts at every checkpoint, or the harness is wrong
(its memory figures are the yardstick, not judged). Both figures are printed as
``reliability figure:`` lines. Runs only with ``TOKIOLOOP_RELIABILITY=1``; about 4 minutes of
wall time and a fifth of a core per loop (the load is paced, not flat out).

The seed is fixed (``TOKIOLOOP_SOAK_SEED`` overrides it) so a failure replays with
    python tests/reliability/soak.py --minutes 3 --checkpoint-every 30 --seed SEED
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import soak  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TOKIOLOOP_RELIABILITY") != "1",
                                reason="reliability suite: set TOKIOLOOP_RELIABILITY=1")

SEED = int(os.environ.get("TOKIOLOOP_SOAK_SEED", "20201"))
MINUTES = 3
CHECKPOINT_EVERY = 30

_RESULTS = {}


@pytest.fixture
def soak_results(capsys):
    """(tokioloop's result, asyncio's result, tokioloop's failures); the soak runs once."""
    if "run" not in _RESULTS:
        try:
            results = soak.run_loops(["tokioloop", "asyncio"], MINUTES, SEED,
                                     checkpoint_every=CHECKPOINT_EVERY, timeout=400)
        except Exception as exc:  # every criterion test reports the same failure
            _RESULTS["run"] = exc
        else:
            oracle, subject = results["asyncio"], results["tokioloop"]
            fails = soak.verdict(subject, oracle)
            oracle_fails = soak.verdict(oracle)
            _RESULTS["run"] = (subject, oracle, fails)
            lines = [f"soak: seed {SEED}, {MINUTES} min per loop"]
            for res, f in ((subject, fails), (oracle, oracle_fails)):
                lines.append(soak.figure(res, oracle if res is subject else None))
                lines.append(f"soak verdict {res['loop']}: "
                             + ("pass" if not f else "FAIL: " + "; ".join(f)))
            with capsys.disabled():
                print("\n" + "\n".join(lines))
    run = _RESULTS["run"]
    if isinstance(run, Exception):
        pytest.fail(f"the soak did not complete: {run}")
    return run


def _fails(fails, *prefixes):
    return [f for f in fails if f.startswith(prefixes)]


@pytest.mark.timeout(420)
def test_harness_sound_on_asyncio(soak_results):
    _, oracle, _ = soak_results
    bad = _fails(soak.verdict(oracle), "lost", "fds", "threads", "children", "zombies",
                 "load kinds")
    assert not bad, f"the harness is wrong: asyncio fails {bad}"


@pytest.mark.timeout(420)
def test_nothing_lost(soak_results):
    subject, _, fails = soak_results
    assert not _fails(fails, "lost", "load kinds"), subject["lost_examples"]


@pytest.mark.timeout(420)
def test_counts_equal_at_checkpoints(soak_results):
    _, _, fails = soak_results
    assert not _fails(fails, "fds", "threads", "children", "zombies")


@pytest.mark.timeout(420)
def test_rss_growth(soak_results):
    _, _, fails = soak_results
    assert not _fails(fails, "RSS")


@pytest.mark.timeout(420)
def test_throughput_held(soak_results):
    _, _, fails = soak_results
    assert not _fails(fails, "throughput")


@pytest.mark.timeout(420)
def test_no_unexpected_handler_calls(soak_results):
    _, _, fails = soak_results
    assert not _fails(fails, "exception-handler")


@pytest.mark.timeout(420)
@pytest.mark.xfail(strict=False, reason=(
    "3 minutes is too short for the malloc criterion to decide: both loops' malloc in use "
    "still steps up by 100-200 KiB now and then in the first minutes (TLS load: OpenSSL), so "
    "over five 3-minute runs the Theil-Sen slope was 32-108 KiB per 100k ops on tokioloop and "
    "2-107 on asyncio (budget 64), while 10- and 28-minute runs give 16 and 0.1 on tokioloop, "
    "0.4 and 0.3 on asyncio. Reported, not gating"))
def test_malloc_slope(soak_results):
    _, _, fails = soak_results
    assert not _fails(fails, "malloc")
