"""Child process of the CPython conformance run: one ``test.test_asyncio`` module, one loop.

Usage (``cpython_conformance.py`` starts it; it is not meant to be run by hand)::

    python tools/conformance_child.py --loop tokioloop|asyncio --module test_locks --out OUT.jsonl
        [--exclude IDS_FILE] [--test-timeout SECONDS]

What it does, in order:

1. ``--loop tokioloop``: installs ``tokioloop.EventLoopPolicy()`` and makes it the policy that
   asyncio re-creates whenever the policy is reset. CPython's test modules call
   ``asyncio.set_event_loop_policy(None)`` in ``tearDownModule`` and in many ``tearDown``
   methods; without this the next ``asyncio.new_event_loop()`` / ``asyncio.run()`` /
   ``IsolatedAsyncioTestCase`` would silently be the stdlib loop again. ``--loop asyncio`` (the
   baseline) leaves asyncio alone.
2. Counts event loops as they are created (stdlib ``BaseEventLoop`` subclasses, ``TestLoop``
   included, versus ``tokioloop.Loop``), per test: a test that ran on stdlib loops only while
   tokioloop was installed is not testing tokioloop, and the parent classifies it as such.
3. Imports the module and applies the class rules of ``tests/cpython/rules.txt``:
   mixin suites whose loop comes from ``create_event_loop()`` / ``new_loop()`` get one subclass
   whose factory returns the loop under test (``tokioloop.new_event_loop()`` or, for the
   baseline, ``asyncio.SelectorEventLoop()``), with the same test ids in both runs; ``adapt``
   rules swap a mocked stdlib loop for the loop under test in a few more suites.
4. On tokioloop, records the tests a ``hangs`` rule names as not run, without starting them.
5. Runs the module's tests with unittest's loader and a recording ``TestResult``, writing one
   JSON line per test to OUT as it goes: ``{"event": "start", "id"}`` then ``{"event": "result",
   "id", "outcome", "reason", "seconds", "loops": {"tokioloop": n, "stdlib": n, "testloop": n}}``
   (``testloop``: how many of the stdlib loops were ``test_utils.TestLoop``). Outcomes: passed,
   failed, error, skipped, expected-failure, unexpected-success. Before the run, a ``{"event":
   "plan", "ids"}`` line lists every test, so tests never reached are known; class and module
   fixture errors get records of their own marked ``"fixture": true``. A per-test watchdog
   (faulthandler) ends the process if one test outlives ``--test-timeout``; the parent then sees
   a "start" without its "result", records a timeout and restarts the module without that test.
6. Ends with ``{"event": "done"}`` and ``os._exit`` (tests may leave non-daemon threads behind).
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import faulthandler
import importlib
import json
import os
import signal
import sys
import time
import traceback
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_rules import load_rules  # noqa: E402

PACKAGE = "test.test_asyncio"
REASON_CHARS = 240


class LoopCounter:
    """Counts loops created, by kind, by wrapping the two base ``__init__`` methods."""

    def __init__(self):
        self.counts = {"tokioloop": 0, "stdlib": 0, "testloop": 0}

    def wrap(self, cls, kind):
        original = cls.__init__
        counts = self.counts

        def __init__(self, *args, **kwargs):
            counts[kind] += 1
            original(self, *args, **kwargs)

        __init__.__wrapped__ = original
        cls.__init__ = __init__

    def snapshot(self):
        return dict(self.counts)


def install_tokioloop():
    """Make every policy-made loop a tokioloop loop, even after the policy is reset to None."""
    import tokioloop

    def init_tokioloop_policy():
        with asyncio.events._lock:
            if asyncio.events._event_loop_policy is None:
                asyncio.events._event_loop_policy = tokioloop.EventLoopPolicy()

    # get_event_loop_policy() calls this (looked up at call time) whenever no policy is set.
    asyncio.events._init_event_loop_policy = init_tokioloop_policy
    asyncio.set_event_loop_policy(tokioloop.EventLoopPolicy())

    # Self-check: both the installed policy and one re-created after a reset give tokioloop.
    for reset in (False, True):
        if reset:
            asyncio.set_event_loop_policy(None)
        loop = asyncio.new_event_loop()
        try:
            if not isinstance(loop, tokioloop.Loop):
                raise SystemExit(f"policy set-up failed: new_event_loop() gave {type(loop)}")
        finally:
            loop.close()
    return tokioloop.new_event_loop


def resolve(module, dotted):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# -- adapters: replacements for a test class's loop set-up, named by "adapt" rules -------------
# Each takes (make_loop, cls, original) and returns the replacement method: ``make_loop`` makes
# the loop under test, ``original`` is cls's own definition of the method (None if inherited).
# The adapted tests then run unchanged on the loop under test, in both runs.


def adapt_real_loop_unless_gen(make_loop, cls, original):
    """new_test_loop(): the loop under test, unless a time generator asks for virtual time."""

    def new_test_loop(self, gen=None):
        if gen is not None:
            if original is not None:
                return original(self, gen)
            return super(cls, self).new_test_loop(gen)  # a mixin: test_utils.TestCase's
        loop = make_loop()
        self.set_event_loop(loop)
        return loop

    return new_test_loop


def adapt_loop_under_test_setup(make_loop, cls, original):
    """setUp(): the loop under test instead of a BaseEventLoop with a mocked selector."""

    def setUp(self):
        super(cls, self).setUp()
        self.loop = make_loop()
        self.set_event_loop(self.loop)

    return setUp


def adapt_runners_new_loop(make_loop, cls, original):
    """test_runners' new_loop(): the loop under test, recording that shutdown_asyncgens ran."""

    def new_loop(self):
        loop = make_loop()
        loop.shutdown_ag_run = False
        real_shutdown_asyncgens = loop.shutdown_asyncgens

        async def shutdown_asyncgens():
            await real_shutdown_asyncgens()
            loop.shutdown_ag_run = True

        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop

    return new_loop


def adapt_loop_factory(make_loop, cls, original):
    """IsolatedAsyncioTestCase's ``loop_factory`` (an explicit ``asyncio.EventLoop`` from 3.14):
    the loop under test."""

    def loop_factory(self):
        return make_loop()

    return loop_factory


def adapt_eager_loop_factory(make_loop, cls, original):
    """``loop_factory`` of a suite that runs eagerly: the loop under test with asyncio's eager
    task factory, as the suite's own factory sets on ``asyncio.EventLoop``."""

    def loop_factory(self):
        loop = make_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        return loop

    return loop_factory


ADAPTERS = {
    "real_loop_unless_gen": adapt_real_loop_unless_gen,
    "loop_under_test_setup": adapt_loop_under_test_setup,
    "runners_new_loop": adapt_runners_new_loop,
    "loop_factory": adapt_loop_factory,
    "eager_loop_factory": adapt_eager_loop_factory,
}


def apply_class_rules(module, rules, make_loop):
    """Drop, retarget and adapt classes of ``module`` in place, per the rules; returns notes."""
    short = module.__name__.rsplit(".", 1)[1]
    notes = []
    for rule in rules.class_rules_for(short):
        class_name = rule.pattern.split(".", 1)[1]
        original = getattr(module, class_name, None)
        if original is None:
            if rule.kind != "drop":  # dropping a class this platform lacks needs no note
                notes.append(f"rules.txt:{rule.line}: {rule.pattern} not found "
                             f"(not on this platform or CPython version); rule not applied")
            continue
        if rule.kind == "adapt":
            method, adapter = rule.args
            if adapter not in ADAPTERS:  # (METHOD may come from the classes it is mixed into)
                notes.append(f"rule error: rules.txt:{rule.line}: cannot adapt {rule.pattern}.{method} "
                             f"with {adapter!r} here; rule not applied")
                continue
            replacement = ADAPTERS[adapter](make_loop, original, vars(original).get(method))
            replacement.__name__ = method
            setattr(original, method, replacement)
            continue
        if rule.kind == "drop":
            delattr(module, class_name)
            continue
        method, new_name = rule.args
        if "bases" in rule.options:
            try:
                bases = tuple(resolve(module, name) for name in rule.options["bases"].split(","))
            except AttributeError as exc:
                notes.append(f"rule error: rules.txt:{rule.line}: bases of {rule.pattern}: {exc}; "
                             f"rule not applied (the class runs unchanged)")
                continue
        else:
            bases = (original,)
        delattr(module, class_name)

        def factory(self, _make=make_loop):
            return _make()

        factory.__name__ = method
        namespace = {method: factory, "__module__": module.__name__, "__qualname__": new_name}
        # Keep the original's class-level decorators' effects (skips) where bases= replaces it.
        for attr in ("__unittest_skip__", "__unittest_skip_why__"):
            if attr in vars(original):
                namespace[attr] = vars(original)[attr]
        setattr(module, new_name, type(new_name, bases, namespace))
    return notes


def short_id(test):
    """``test_locks.LockTests.test_acquire`` for a test; fixtures get ``module.Class.setUpClass``."""
    if isinstance(test, unittest.suite._ErrorHolder):
        # "setUpClass (test.test_asyncio.test_x.Cls)" -> "test_x.Cls.setUpClass"
        description = test.description
        name, _, rest = description.partition(" (")
        full = rest.rstrip(")") + "." + name
    else:
        full = test.id()
    return full[len(PACKAGE) + 1:] if full.startswith(PACKAGE + ".") else full


def summarize_exception(err):
    """One line: exception type and first message line, plus the deepest test-file frame."""
    exc_type, exc, tb = err
    message = str(exc).strip().splitlines()
    text = exc_type.__name__ + (f": {message[0]}" if message else "")
    frames = traceback.extract_tb(tb)
    where = ""
    for frame in frames:
        if "test_asyncio" in frame.filename:
            where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
    if frames and "test_asyncio" not in frames[-1].filename:
        inner = frames[-1]
        where += f"; raised in {inner.name} at {os.path.basename(inner.filename)}:{inner.lineno}"
    text = text + (f" [{where.lstrip('; ')}]" if where else "")
    return shorten(text)


def shorten(text):
    """Whitespace collapsed, at most REASON_CHARS characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


class RecordingResult(unittest.TestResult):
    """Emits one JSON record per test start and per test outcome (and per fixture error).

    A test's record spans its whole call (``TestCase.__call__``, see ``watch_test_calls``), not
    only startTest..stopTest: on 3.10 ``IsolatedAsyncioTestCase`` creates its event loop before
    startTest and closes it after stopTest, and an error there escapes the test's ``run()``.
    """

    def __init__(self, emit, counter, test_timeout):
        super().__init__()
        self.emit = emit
        self.counter = counter
        self.test_timeout = test_timeout
        self.current = None
        self.calling = None  # the test whose __call__ is running, if any

    def enter(self, test):
        """The test's call begins: open its record and arm the watchdog."""
        self.calling = test
        self._begin(test)

    def leave(self, test, escaped=None):
        """The test's call ended (``escaped``: the exc_info of an error out of its run())."""
        if escaped is not None:
            self.addError(test, escaped)
        self.calling = None
        self._finish()

    def startTest(self, test):
        super().startTest(test)
        if self.current is None or self.current["id"] != short_id(test):
            self._begin(test)  # a test run without going through TestCase.__call__

    def stopTest(self, test):
        super().stopTest(test)
        if self.calling is None:
            self._finish()

    def _begin(self, test):
        """Open the record of ``test`` and announce it (the parent's "start" event)."""
        if self.current is not None:
            self._finish()
        test_id = short_id(test)
        self.current = {
            "id": test_id,
            "outcome": "passed",
            "reason": "",
            "started": time.monotonic(),
            "loops_before": self.counter.snapshot(),
        }
        self.emit({"event": "start", "id": test_id})
        if self.test_timeout:
            faulthandler.dump_traceback_later(self.test_timeout, exit=True)

    def _finish(self):
        """Close the open record, if any, and emit it."""
        if self.test_timeout:
            faulthandler.cancel_dump_traceback_later()
        current, self.current = self.current, None
        if current is None:
            return
        before = current.pop("loops_before")
        now = self.counter.snapshot()
        current["loops"] = {k: now[k] - before[k] for k in now}
        current["seconds"] = round(time.monotonic() - current.pop("started"), 3)
        self.emit({"event": "result", **current})

    def _set(self, test, outcome, reason):
        if isinstance(test, unittest.suite._ErrorHolder):
            # A class- or module-level fixture error or skip: its own record, outside any test.
            self.emit(
                {"event": "result", "id": short_id(test), "outcome": outcome, "reason": reason,
                 "seconds": 0.0, "loops": None, "fixture": True}
            )
            return
        if self.current is None:
            # Outside any call (unittest of 3.12.x reports a skipped test with addSkip then
            # stopTest, without startTest): open its record here.
            self._begin(test)
        elif self.current["id"] != short_id(test):
            # Not the running test (a test object reporting about another): a record of its own.
            self.emit({"event": "result", "id": short_id(test), "outcome": outcome,
                       "reason": reason, "seconds": 0.0, "loops": None})
            return
        # Keep the first failure's reason; an error after a failure stays a failure.
        if self.current["outcome"] in ("passed", "skipped"):
            self.current["outcome"] = outcome
            self.current["reason"] = reason

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "error", summarize_exception(err))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "failed", summarize_exception(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skipped", shorten(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "expected-failure", summarize_exception(err))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "unexpected-success", "marked expectedFailure but passed")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "failed" if issubclass(err[0], test.failureException) else "error"
            self._set(test, kind, f"subtest {subtest._subDescription()}: {summarize_exception(err)}")


def record_known_hangs(planned, excluded, rules, emit):
    """Record the tests a ``hangs`` rule names as not run, without starting them; return them."""
    skipped = set()
    for test_id in planned:
        rule = rules.hang_rule(test_id)
        if rule is None or test_id in excluded:
            continue
        emit({"event": "result", "id": test_id, "outcome": "not-run",
              "reason": shorten(f"not started on tokioloop, it hangs there "
                                f"(rules.txt:{rule.line}): {rule.reason}"),
              "seconds": 0.0, "loops": None})
        skipped.add(test_id)
    return skipped


def watch_test_calls():
    """Wrap ``unittest.TestCase.__call__`` so a ``RecordingResult`` sees each test's whole call.

    Loops a test creates before its startTest (3.10's ``IsolatedAsyncioTestCase``) are counted
    for it, and an exception escaping its ``run()`` (3.10's ``IsolatedAsyncioTestCase`` closes
    its loop after stopTest, outside unittest's error handling) is recorded as the test's error
    instead of ending the whole module.
    """
    original = unittest.TestCase.__call__

    def __call__(self, result=None, *args, **kwargs):
        if not isinstance(result, RecordingResult):
            return original(self, result, *args, **kwargs)
        result.enter(self)
        escaped = None
        try:
            return original(self, result, *args, **kwargs)
        except Exception:
            escaped = sys.exc_info()
            return result
        finally:
            result.leave(self, escaped)

    unittest.TestCase.__call__ = __call__


def iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def filter_suite(suite, excluded):
    """A copy of ``suite`` without the tests whose short ids are in ``excluded``."""
    kept = unittest.TestSuite()
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            kept.addTest(filter_suite(item, excluded))
        elif short_id(item) not in excluded:
            kept.addTest(item)
    return kept


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=("asyncio", "tokioloop"), required=True)
    parser.add_argument("--module", required=True, help="e.g. test_locks")
    parser.add_argument("--out", required=True, help="JSON-lines file to append records to")
    parser.add_argument("--exclude", help="file of short test ids not to run (one per line)")
    parser.add_argument("--test-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    faulthandler.enable()  # a crash leaves "Fatal Python error: ..." and a traceback in stderr
    # Started from a background job, SIGINT may be inherited as ignored; then Python installs no
    # KeyboardInterrupt handler, asyncio.Runner no Ctrl+C handling, and the tests that interrupt
    # themselves (_thread.interrupt_main) hang. Give every child the interpreter's usual handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    out = open(args.out, "a", encoding="utf-8")
    counter = LoopCounter()
    counter.wrap(asyncio.BaseEventLoop, "stdlib")
    from test.test_asyncio import utils as test_utils

    counter.wrap(test_utils.TestLoop, "testloop")  # also counted as "stdlib"
    if args.loop == "tokioloop":
        make_loop = install_tokioloop()
        import tokioloop

        counter.wrap(tokioloop.Loop, "tokioloop")
    else:
        # Not asyncio.new_event_loop(): some suites install a test policy whose new_event_loop()
        # calls back into the adapted factory. This is the stdlib policy's own loop class.
        make_loop = asyncio.SelectorEventLoop

    excluded = set()
    if args.exclude:
        with open(args.exclude, encoding="utf-8") as fh:
            excluded = {line.strip() for line in fh if line.strip()}

    def emit(record):
        out.write(json.dumps(record) + "\n")
        out.flush()

    try:
        module = importlib.import_module(f"{PACKAGE}.{args.module}")
    except unittest.SkipTest as exc:
        emit({"event": "module-skipped", "reason": str(exc)[:REASON_CHARS]})
        out.close()
        os._exit(0)
    except Exception:
        emit({"event": "import-error", "reason": traceback.format_exc()[-2000:]})
        out.close()
        os._exit(3)
    rules = load_rules()
    notes = apply_class_rules(module, rules, make_loop)
    under_test = sys.modules["tokioloop"].__file__ if args.loop == "tokioloop" else asyncio.__file__
    emit({"event": "begin", "loop": args.loop, "module": args.module, "notes": notes,
          "under_test": under_test})

    suite = unittest.TestLoader().loadTestsFromModule(module)
    planned = [short_id(test) for test in iter_tests(suite)]
    emit({"event": "plan", "ids": planned})
    if args.loop == "tokioloop":
        excluded |= record_known_hangs(planned, excluded, rules, emit)
    if excluded:
        suite = filter_suite(suite, excluded)
    watch_test_calls()
    result = RecordingResult(emit, counter, args.test_timeout)
    suite.run(result)
    emit({"event": "done", "loops": counter.snapshot(),
          "policy": type(asyncio.get_event_loop_policy()).__qualname__})
    out.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
