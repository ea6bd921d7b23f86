"""The memory-safety tools stay honest between their (long, separate) runs: the smoke script
still passes on both loops, and the refleaks plugin still reports a leaking test and only it.

Contract: ``smoke.py`` runs to ``smoke: ok`` in a child process on the stdlib loop (the oracle:
a failure there is the script's fault) and on tokioloop; the refleaks plugin, run on
``refleak_probe.py`` with the current interpreter (a release build: memory blocks and fds, no
reference totals), flags exactly ``test_leaks``. This checks no memory: ``memsafety.py`` (``nox
-s memsafety``) runs the smoke under valgrind and the plugin on debug CPython. Runs only with
``TOKIOLOOP_RELIABILITY=1``; about 10 s.
"""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("TOKIOLOOP_RELIABILITY") != "1",
                                reason="reliability suite: set TOKIOLOOP_RELIABILITY=1")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["asyncio", "tokioloop"])
def test_smoke_passes(kind):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "smoke.py"), "--loop", kind, "-v"],
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"smoke: ok {kind}" in proc.stdout


@pytest.mark.timeout(120)
def test_refleaks_plugin_flags_only_the_leak():
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE), "TOKIOLOOP_RELIABILITY": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "refleaks", "--refleaks", "1:3",
                           os.path.join(HERE, "refleak_probe.py")],
                          capture_output=True, text=True, timeout=100, cwd=ROOT, env=env)
    flagged = re.findall(r"^refleak: \S+::(\w+):", proc.stdout, re.M)
    assert flagged == ["test_leaks"], proc.stdout + proc.stderr
    assert proc.returncode == 1  # a leak fails the session
    assert "reliability figure: memsafety refleaks" in proc.stdout
