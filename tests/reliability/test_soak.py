"""CI form of the soak (tests/reliability/soak.py, issue 20 item 2): tokioloop and the stdlib loop
side by side, each in its own child process, 3 minutes of load each, same seed.

Contract: tokioloop must meet every pass criterion in soak.py's docstring, with asyncio's run
as the oracle for the RSS and exception-handler comparisons. The asyncio run must itself lose
nothing and come back to the same fd / thread / child counts at every checkpoint, or the
harness is wrong (its memory figures are the yardstick, not judged). Both figures are printed
as ``reliability figure:`` lines. Runs only with ``TOKIOLOOP_RELIABILITY=1``; about 4 minutes
of wall time, one core's worth of CPU at most (the load is paced, not flat out).

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

pytestmark = [
    pytest.mark.skipif(os.environ.get("TOKIOLOOP_RELIABILITY") != "1",
                       reason="reliability suite: set TOKIOLOOP_RELIABILITY=1"),
    pytest.mark.timeout(420),
]

SEED = int(os.environ.get("TOKIOLOOP_SOAK_SEED", "20201"))
MINUTES = 3
CHECKPOINT_EVERY = 30


def test_soak_tokioloop_against_asyncio(capsys):
    results = soak.run_loops(["tokioloop", "asyncio"], MINUTES, SEED,
                             checkpoint_every=CHECKPOINT_EVERY, timeout=400)
    oracle, subject = results["asyncio"], results["tokioloop"]
    oracle_fails = soak.verdict(oracle)
    subject_fails = soak.verdict(subject, oracle)
    with capsys.disabled():
        print()
        print(f"soak: seed {SEED}, {MINUTES} min per loop")
        for res, fails in ((subject, subject_fails), (oracle, oracle_fails)):
            print(soak.figure(res, oracle if res is subject else None))
            print(f"soak verdict {res['loop']}: " + ("pass" if not fails else
                                                     "FAIL: " + "; ".join(fails)))
    harness = [f for f in oracle_fails
               if f.startswith(("lost", "fds", "threads", "children", "zombies"))]
    assert not harness, f"the harness is wrong: asyncio fails {harness}"
    assert not subject_fails, subject_fails
