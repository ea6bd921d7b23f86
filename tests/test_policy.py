"""tokioloop's policy entry points warn exactly as asyncio's own policy API warns.

On 3.14 and 3.15 asyncio deprecates its policies: reading ``asyncio.DefaultEventLoopPolicy``
warns, and so does calling ``asyncio.set_event_loop_policy()``; before 3.14 neither does.
``tokioloop.EventLoopPolicy`` and ``tokioloop.install()`` are their counterparts. Each test
records what the stdlib does and what tokioloop does in the same way and compares the two
(category, message with the name swapped, the line the warning points at), so the running
version's asyncio decides what is expected.
"""

import asyncio
import subprocess
import sys
import threading
import warnings

import pytest

from conftest import child_env, import_tokioloop

pytestmark = pytest.mark.skipif(
    not hasattr(asyncio, "set_event_loop_policy"), reason="this Python's asyncio has no policies"
)


def record(action):
    """(category, message, filename, line) of every warning ``action()`` gives; the line is
    relative to the first line of ``action`` (a lambda or function written in this file)."""
    first = action.__code__.co_firstlineno if hasattr(action, "__code__") else 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [(w.category, str(w.message), w.filename, w.lineno - first) for w in caught]


def swap_names(found, stdlib_name, ours):
    return [(c, m.replace(repr(stdlib_name), repr(ours)), f, l) for c, m, f, l in found]


def test_reading_policy_class_warns_as_stdlib():
    tokioloop = import_tokioloop()
    stdlib = record(lambda: asyncio.DefaultEventLoopPolicy)
    ours = record(lambda: tokioloop.EventLoopPolicy)
    assert ours == swap_names(stdlib, "asyncio.DefaultEventLoopPolicy", "tokioloop.EventLoopPolicy")
    assert all(filename == __file__ for _, _, filename, _ in ours)


def test_from_import_of_policy_class_warns_as_stdlib():
    import_tokioloop()

    def stdlib_import():
        from asyncio import DefaultEventLoopPolicy  # noqa: F401

    def our_import():
        from tokioloop import EventLoopPolicy  # noqa: F401

    stdlib = record(stdlib_import)
    ours = record(our_import)
    assert ours == swap_names(stdlib, "asyncio.DefaultEventLoopPolicy", "tokioloop.EventLoopPolicy")


def test_making_a_policy_warns_as_stdlib():
    """Only the name warns: making an instance of the class once read does not."""
    tokioloop = import_tokioloop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stdlib_class = asyncio.DefaultEventLoopPolicy
        our_class = tokioloop.EventLoopPolicy
    assert record(our_class) == record(stdlib_class) == []


def test_install_warns_as_set_event_loop_policy():
    tokioloop = import_tokioloop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.DefaultEventLoopPolicy()
    stdlib = record(lambda: asyncio.set_event_loop_policy(policy))
    ours = record(lambda: tokioloop.install())
    assert ours == swap_names(stdlib, "asyncio.set_event_loop_policy", "tokioloop.install")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        installed = asyncio.get_event_loop_policy()
        assert isinstance(installed, tokioloop.EventLoopPolicy)
        lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, tokioloop.Loop)
    finally:
        lp.close()


def test_star_import_warns_as_stdlib():
    import_tokioloop()
    stdlib = record(lambda: exec("from asyncio import *", {}))
    ours = record(lambda: exec("from tokioloop import *", {}))
    assert stdlib == ours == []


def test_importing_tokioloop_warns_nothing():
    code = "import tokioloop, tokioloop.pytest_plugin; tokioloop.run(__import__('asyncio').sleep(0))"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=child_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def _get_event_loop_outcome(policy):
    """What ``asyncio.get_event_loop()`` does on the main thread, no loop running or set, under
    a fresh ``policy``: (what came out, warning categories); a loop made is closed."""
    from tokioloop import _compat

    _compat.set_policy_quietly(policy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            made = asyncio.get_event_loop()
        except RuntimeError:
            outcome = "RuntimeError"
        else:
            outcome = "a loop"
            made.close()
    return outcome, [w.category for w in caught]


def test_get_event_loop_without_loop_as_stdlib():
    """3.14 stopped making a loop here (RuntimeError); 3.12-3.13 make one and warn."""
    tokioloop = import_tokioloop()
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("not on the main thread")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stdlib_policy = asyncio.DefaultEventLoopPolicy()
        our_policy = tokioloop.EventLoopPolicy()
    assert _get_event_loop_outcome(our_policy) == _get_event_loop_outcome(stdlib_policy)


def test_child_watcher_api_as_stdlib():
    """3.14 removed the child watchers from the policy (and from asyncio)."""
    tokioloop = import_tokioloop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stdlib_policy = asyncio.DefaultEventLoopPolicy()
        our_policy = tokioloop.EventLoopPolicy()
    for name in ("get_child_watcher", "set_child_watcher"):
        assert hasattr(our_policy, name) == hasattr(stdlib_policy, name)
