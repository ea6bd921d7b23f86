"""The pytest plugin: ``--tokioloop`` makes a pytest-asyncio suite run on tokioloop loops.

These run pytest in a child process on a tiny pytest-asyncio suite; they are about tokioloop's
own entry point, so they exist for tokioloop only.
"""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("pytest_asyncio")

SUITE = textwrap.dedent(
    """
    import asyncio
    import pytest

    @pytest.mark.asyncio
    async def test_loop_kind():
        loop = asyncio.get_running_loop()
        print("LOOP-MODULE", type(loop).__module__)
        await asyncio.sleep(0)
    """
)


def run_suite(tmp_path, *flags):
    (tmp_path / "test_suite.py").write_text(SUITE)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *flags, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_flag_runs_pytest_asyncio_tests_on_tokioloop(tmp_path):
    result = run_suite(tmp_path, "--tokioloop")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOOP-MODULE tokioloop" in result.stdout


def test_without_flag_the_suite_keeps_its_loop(tmp_path):
    result = run_suite(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOOP-MODULE asyncio" in result.stdout
