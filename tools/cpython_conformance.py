"""Run CPython's own asyncio test suite (``test.test_asyncio``) against tokioloop.

Each test module runs in its own child process (``conformance_child.py``), once on tokioloop and
once on stdlib asyncio (the baseline), in parallel worker processes. A hang or crash is
recorded, not fatal: a per-test watchdog ends a stuck child, the stuck test is recorded as timed
out (or crashed) and the module is restarted without it; ``--timeout`` bounds each child.

Every test is then classified with ``tests/cpython/rules.txt`` (see ``conformance_rules.py``):

* implementation: inspects stdlib internals, or ran on stdlib loops only although tokioloop was
  installed (``test_utils.TestLoop``, an explicit ``SelectorEventLoop``): listed, not scored;
* loop-independent: created no event loop and passed: not scored;
* behavioural, in an area: ``core`` (built) or a not-yet-built one (tls, udp, pipes...).

Headline: of the behavioural tests that pass on stdlib asyncio, the share that pass on tokioloop.

The tokioloop under test is whatever ``import tokioloop`` gives this interpreter (the children
inherit the environment: ``PYTHONPATH=/path/to/other/build/python`` tests another build). Do not
rebuild the extension in place while a run is going: children that have it mapped die (SIGBUS),
which is recorded as a crash.

Usage::

    python tools/cpython_conformance.py                    # all modules, both loops, report
    python tools/cpython_conformance.py --area core        # built areas' modules only
    python tools/cpython_conformance.py --modules test_locks,test_tasks --json out.json
    python tools/cpython_conformance.py --check            # CI: tokioloop on the core modules;
                                                           # exit 1 on a failure not listed in
                                                           # tests/cpython/expected_failures-X.Y.txt
                                                           # (X.Y: this interpreter's version),
                                                           # or on a listed test that now passes

Every CPython from 3.10 to 3.15 is supported, each against its own ``test.test_asyncio``: the
rules may carry version qualifiers (``conformance_rules.py``) and each version has its own
expected-failures file. Tests known to hang on tokioloop (``hangs`` rules) are not started
there, so that ``--check`` stays a run of about half a minute.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_rules import (  # noqa: E402
    BUILT_AREAS,
    UNBUILT_METHOD_AREAS,
    load_expected,
    load_rules,
)

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance_child.py")
LOOPS = ("asyncio", "tokioloop")
PASS = frozenset({"passed", "expected-failure"})
FAIL = frozenset({"failed", "error", "unexpected-success", "timeout", "crash", "not-run"})
NOT_BUILT_RE = re.compile(r"tokioloop does not implement loop\.(\w+)\((ssl=\.\.\.)?\)")


def test_asyncio_dir():
    spec = importlib.util.find_spec("test.test_asyncio")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this interpreter has no test.test_asyncio (CPython's test suite)")
    return list(spec.submodule_search_locations)[0]


def all_modules():
    """``{name: file size}`` of every ``test_*.py`` module of the installed test.test_asyncio."""
    folder = test_asyncio_dir()
    names = sorted(f[:-3] for f in os.listdir(folder) if f.startswith("test_") and f.endswith(".py"))
    return {name: os.path.getsize(os.path.join(folder, name + ".py")) for name in names}


def core_modules(rules, modules):
    """Modules that hold built-area behavioural tests: those no module-wide rule takes out."""
    chosen = []
    for name in modules:
        rule = rules.module_wide(name)
        if rule is None or (rule.kind == "area" and rule.area in BUILT_AREAS):
            chosen.append(name)
    return chosen


# -- running one module on one loop ---------------------------------------------------------------


class ModuleRun:
    """The outcome of one module on one loop: per-test records plus how the children ended."""

    def __init__(self, module, loop):
        self.module, self.loop = module, loop
        self.records = {}  # test id -> record dict
        self.fixtures = {}  # "module.Class.setUpClass"-style id -> record (fixture errors/skips)
        self.planned = []  # every test id the module loaded, in order
        self.status = "ok"  # ok, timeout, crashed, import-error, skipped
        self.notes = []
        self.seconds = 0.0
        self.restarts = 0
        self.under_test = ""  # the file of the tokioloop (or asyncio) package the child imported


def read_records(path):
    events = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass  # a line cut short by a crash
    return events


def run_module(module, loop, timeout, test_timeout, max_restarts, workdir):
    """Run ``module`` on ``loop`` in child processes, restarting past a stuck or crashing test."""
    run = ModuleRun(module, loop)
    out = os.path.join(workdir, f"{module}.{loop}.jsonl")
    errlog = os.path.join(workdir, f"{module}.{loop}.stderr")
    exclude = os.path.join(workdir, f"{module}.{loop}.exclude")
    started = time.monotonic()
    deadline = started + timeout
    env = dict(os.environ)
    for var in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONWARNINGS"):
        env.pop(var, None)
    attempt = 0
    while True:
        consumed = len(read_records(out))
        cmd = [sys.executable, CHILD, "--loop", loop, "--module", module, "--out", out,
               "--test-timeout", str(test_timeout)]
        if attempt:
            cmd += ["--exclude", exclude]
        with open(errlog, "a", encoding="utf-8") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=env, start_new_session=True)
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                code, timed_out = None, True
        events = read_records(out)[consumed:]
        pending = None
        done = False
        for event in events:
            kind = event.get("event")
            if kind == "start":
                pending = event["id"]
            elif kind == "result":
                record = {k: v for k, v in event.items() if k != "event"}
                (run.fixtures if record.get("fixture") else run.records)[record["id"]] = record
                if record["id"] == pending:
                    pending = None
            elif kind == "plan":
                known = set(run.planned)
                run.planned.extend(i for i in event["ids"] if i not in known)
            elif kind == "begin":
                run.notes.extend(n for n in event.get("notes", []) if n not in run.notes)
                run.under_test = event.get("under_test", "")
            elif kind == "module-skipped":
                run.status = "skipped"
                run.notes.append(event["reason"])
                done = True
            elif kind == "import-error":
                run.status = "import-error"
                run.notes.append(event["reason"].strip().splitlines()[-1])
                done = True
            elif kind == "done":
                done = True
        if done:
            break
        stderr_tail = tail(errlog)
        if timed_out:
            run.status = "timeout"
            if pending:
                run.records[pending] = failure(pending, "timeout",
                                               f"module exceeded --timeout {timeout:.0f}s here")
            break
        if pending is None:
            run.status = "crashed"
            run.notes.append(f"child died ({describe_exit(code)}) outside any test: {stderr_tail}")
            break
        if "Timeout (" in stderr_tail:
            run.records[pending] = failure(pending, "timeout", f"hung: no result in {test_timeout:.0f}s")
        else:
            run.records[pending] = failure(pending, "crash", f"child died ({describe_exit(code)}): {stderr_tail}")
        attempt += 1
        run.restarts = attempt
        if attempt > max_restarts or time.monotonic() >= deadline:
            run.status = "crashed"
            run.notes.append(f"gave up after {attempt} restarts")
            break
        with open(exclude, "w", encoding="utf-8") as fh:
            fh.write("\n".join(run.records) + "\n")
    account_for_unreached(run)
    run.seconds = round(time.monotonic() - started, 1)
    return run


def account_for_unreached(run):
    """Give every planned test without a result one: its class fixture's outcome, or not-run."""
    for test_id in run.planned:
        if test_id in run.records:
            continue
        class_id = test_id.rsplit(".", 1)[0]
        fixture = (run.fixtures.get(f"{class_id}.setUpClass")
                   or run.fixtures.get(f"{run.module}.setUpModule"))
        if fixture is not None:
            name = fixture["id"].rsplit(".", 1)[1]
            run.records[test_id] = failure(test_id, fixture["outcome"], f"{name}: {fixture['reason']}")
        else:
            run.records[test_id] = failure(test_id, "not-run", f"not reached: module {run.status}")
    for fixture in run.fixtures.values():
        if fixture["outcome"] not in ("skipped",):
            run.notes.append(f"{fixture['id']}: {fixture['outcome']}: {fixture['reason']}")


def describe_exit(code):
    """``exit 3`` or ``SIGSEGV`` for a child's return code."""
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            pass
    return f"exit {code}"


def failure(test_id, outcome, reason):
    return {"id": test_id, "outcome": outcome, "reason": reason[:240], "seconds": None,
            "loops": None}


def tail(path, lines=3):
    """The last few meaningful stderr lines of a child (for crash reasons)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()[-8000:]
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for index in range(len(kept) - 1, -1, -1):
        if kept[index].startswith(("Fatal Python error", "Timeout (")):
            return " / ".join(kept[index:index + 2])[:240]
    return " / ".join(kept[-lines:])[:240]


# -- classification -----------------------------------------------------------------------------------


def classify(test_id, tok, base, rules):
    """``(category, area, reason)`` of one test from the rules and what it did on each loop.

    category: "implementation", "loop-independent" or "behavioural".
    """
    reason = rules.implementation_reason(test_id)
    if reason:
        return "implementation", "", reason
    if tok and tok.get("loops"):
        loops = tok["loops"]
        if loops.get("testloop"):
            return "implementation", "", "virtual time: runs on test_utils.TestLoop"
        if loops["stdlib"] and not loops["tokioloop"]:
            return ("implementation", "",
                    "ran on stdlib loops only with tokioloop installed (an explicit stdlib loop class or policy)")
        base_loops = (base or {}).get("loops") or {"stdlib": 0, "tokioloop": 0}
        if (not loops["stdlib"] and not loops["tokioloop"] and not any(base_loops.values())
                and tok["outcome"] in PASS):
            return "loop-independent", "", "created no event loop"
    area, reason = rules.area_of(test_id)
    if area in BUILT_AREAS and tok and tok["outcome"] in FAIL:
        match = NOT_BUILT_RE.search(tok.get("reason", ""))
        if match and match.group(2):
            return "behavioural", "tls", f"stopped at loop.{match.group(1)}(ssl=...) (TLS not built)"
        if match and match.group(1) in UNBUILT_METHOD_AREAS:
            method = match.group(1)
            return "behavioural", UNBUILT_METHOD_AREAS[method], f"stopped at loop.{method}() (not built)"
    return "behavioural", area, reason


def build_report(runs, rules):
    """Merge the module runs into per-test entries with their classification."""
    tests = {}
    for run in runs:
        for test_id, record in run.records.items():
            entry = tests.setdefault(test_id, {"module": run.module})
            entry[run.loop] = record
    for test_id, entry in tests.items():
        category, area, reason = classify(test_id, entry.get("tokioloop"), entry.get("asyncio"), rules)
        entry.update(category=category, area=area, reason=reason)
    return tests


def outcome(entry, loop):
    record = entry.get(loop)
    return record["outcome"] if record else "not-run"


def module_table(tests, runs, with_baseline):
    """Per-module rows: behavioural counts on tokioloop, implementation count, score."""
    rows = []
    status = {(r.module, r.loop): r for r in runs}
    for module in sorted({r.module for r in runs}):
        entries = [e for e in tests.values() if e["module"] == module]
        behavioural = [e for e in entries if e["category"] == "behavioural"]
        tok = Counter(bucket(outcome(e, "tokioloop")) for e in behavioural)
        base_pass = [e for e in behavioural if outcome(e, "asyncio") in PASS]
        both = sum(1 for e in base_pass if outcome(e, "tokioloop") in PASS)
        tok_run = status.get((module, "tokioloop"))
        base_run = status.get((module, "asyncio"))
        rows.append({
            "module": module,
            "behavioural": len(behavioural),
            "passed": tok["passed"],
            "failed": tok["failed"],
            "skipped": tok["skipped"],
            "timed_out": tok["timed out"],
            "implementation": sum(1 for e in entries if e["category"] == "implementation"),
            "loop_independent": sum(1 for e in entries if e["category"] == "loop-independent"),
            "baseline_passed": len(base_pass) if with_baseline else None,
            "score": (both, len(base_pass)) if with_baseline else None,
            "status": "/".join(
                f"{r.loop}:{r.status}" + (f"({r.restarts} restarts)" if r.restarts else "")
                for r in (base_run, tok_run) if r is not None and (r.status != "ok" or r.restarts)
            ) or "ok",
            "seconds": {r.loop: r.seconds for r in (base_run, tok_run) if r is not None},
        })
    return rows


def bucket(result):
    if result in PASS:
        return "passed"
    if result in ("timeout",):
        return "timed out"
    if result == "skipped":
        return "skipped"
    return "failed"


def headline(tests, areas=None):
    """``(passing on both, passing on stdlib)`` over behavioural tests (of ``areas`` if given)."""
    base = [e for e in tests.values() if e["category"] == "behavioural"
            and (areas is None or e["area"] in areas) and outcome(e, "asyncio") in PASS]
    return sum(1 for e in base if outcome(e, "tokioloop") in PASS), len(base)


def pct(pair):
    good, total = pair
    return f"{good}/{total} = {100.0 * good / total:.1f}%" if total else "n/a"


def print_report(tests, runs, with_baseline, out=sys.stdout):
    rows = module_table(tests, runs, with_baseline)
    header = f"{'module':<22}{'behav':>6}{'pass':>6}{'fail':>6}{'skip':>6}{'t/o':>5}{'impl':>6}{'indep':>6}"
    if with_baseline:
        header += f"{'stdlib ok':>10}  {'score':<20}"
    header += "  secs(asyncio/tokioloop)  status"
    print(header, file=out)
    for r in rows:
        line = (f"{r['module']:<22}{r['behavioural']:>6}{r['passed']:>6}{r['failed']:>6}"
                f"{r['skipped']:>6}{r['timed_out']:>5}{r['implementation']:>6}{r['loop_independent']:>6}")
        if with_baseline:
            line += f"{r['baseline_passed']:>10}  {pct(r['score']):<20}"
        secs = "/".join(str(r["seconds"].get(loop, "-")) for loop in LOOPS)
        line += f"  {secs:<23}  {r['status']}"
        print(line, file=out)
    print(file=out)
    by_reason = Counter((e["module"], e["reason"]) for e in tests.values()
                        if e["category"] == "implementation")
    if by_reason:
        print("implementation tests (not scored), by rule; --list-implementation lists them:", file=out)
        for (module, reason), count in sorted(by_reason.items()):
            print(f"  {count:>4}  {module}: {reason}", file=out)
        print(file=out)
    impl = sum(1 for e in tests.values() if e["category"] == "implementation")
    indep = sum(1 for e in tests.values() if e["category"] == "loop-independent")
    behav = sum(1 for e in tests.values() if e["category"] == "behavioural")
    print(f"tests: {len(tests)}; behavioural {behav}, implementation {impl} (not scored), "
          f"loop-independent {indep} (not scored)", file=out)
    if with_baseline:
        areas = sorted({e["area"] for e in tests.values() if e["category"] == "behavioural"})
        for area in areas:
            built = "built" if area in BUILT_AREAS else "not built yet"
            print(f"  area {area:<11} ({built:<13}): {pct(headline(tests, {area}))}", file=out)
        print(f"HEADLINE: of the behavioural tests that pass on stdlib asyncio, "
              f"{pct(headline(tests))} pass on tokioloop "
              f"(built areas alone: {pct(headline(tests, BUILT_AREAS))})", file=out)


# -- --check -----------------------------------------------------------------------------------


def check(tests, runs, expected):
    """Compare built-area failures with the expected failures; return a list of problems."""
    problems = []
    ran_modules = {r.module for r in runs}
    core = {e["module"] for e in tests.values()
            if e["category"] == "behavioural" and e["area"] in BUILT_AREAS}
    seen = set()
    for test_id, entry in sorted(tests.items()):
        if entry["category"] != "behavioural" or entry["area"] not in BUILT_AREAS:
            continue
        result = outcome(entry, "tokioloop")
        if test_id in expected:
            seen.add(test_id)
            if result in PASS and test_id not in expected.flaky:
                problems.append(f"NOW PASSES (remove it from {expected.name}): {test_id}")
        elif result in FAIL:
            reason = entry["tokioloop"]["reason"] if entry.get("tokioloop") else ""
            problems.append(f"UNEXPECTED {result.upper()}: {test_id}: {reason}")
    for test_id in sorted(set(expected.reasons) - seen):
        if test_id.split(".", 1)[0] in ran_modules:
            entry = tests.get(test_id)
            what = "not run" if entry is None else f"now classified {entry['category']}/{entry['area']}"
            problems.append(f"STALE entry in {expected.name} ({what}): {test_id}")
    for run in runs:
        if run.loop == "tokioloop":
            problems.extend(f"module {run.module}: {note}" for note in run.notes
                            if note.startswith("rule error: "))
        if run.loop == "tokioloop" and run.status not in ("ok", "skipped"):
            problems.append(f"module {run.module} on tokioloop: {run.status} {'; '.join(run.notes)}")
        if run.loop == "tokioloop" and run.module in core:
            for fixture in run.fixtures.values():
                if fixture["outcome"] in FAIL:
                    problems.append(f"FIXTURE {fixture['outcome'].upper()} on tokioloop: "
                                    f"{fixture['id']}: {fixture['reason']}")
    return problems


def sanity(tests, runs):
    """Evidence that the tests ran on tokioloop: loops created per kind, over the whole run."""
    made = Counter()
    for entry in tests.values():
        record = entry.get("tokioloop")
        if record and record.get("loops"):
            made.update(record["loops"])
    ran_on_tokioloop = sum(
        1 for e in tests.values()
        if e.get("tokioloop") and (e["tokioloop"].get("loops") or {}).get("tokioloop")
    )
    return {"loops_created_in_tokioloop_runs": dict(made), "tests_that_created_a_tokioloop_loop": ran_on_tokioloop}


# -- main ----------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--modules", help="comma-separated module names (default: per --area)")
    parser.add_argument("--area", choices=("core", "all"), default=None,
                        help="core: modules of built areas only; all: every module (default, "
                             "or core with --check)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one module may take on one loop (default 600)")
    parser.add_argument("--test-timeout", type=float, default=60.0,
                        help="seconds one test may take before it counts as hung (default 60)")
    parser.add_argument("--restarts", type=int, default=5,
                        help="restarts of a module after a hung or crashed test (default 5)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="parallel child processes (default: CPU count)")
    parser.add_argument("--json", metavar="OUT", help="write the full per-test results here")
    parser.add_argument("--check", action="store_true",
                        help="CI mode: tokioloop only; fail on failures not in "
                             "tests/cpython/expected_failures-X.Y.txt")
    parser.add_argument("--baseline", action="store_true",
                        help="with --check: also run stdlib asyncio (for the score)")
    parser.add_argument("--list-failures", action="store_true",
                        help="print every built-area behavioural failure on tokioloop")
    parser.add_argument("--list-implementation", action="store_true",
                        help="print every implementation test with its reason")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rules = load_rules()
    expected = None
    if args.check:
        try:
            expected = load_expected()
        except FileNotFoundError as exc:
            raise SystemExit(str(exc)) from None
    available = all_modules()
    if args.modules:
        modules = [m.strip() for m in args.modules.split(",") if m.strip()]
        unknown = [m for m in modules if m not in available]
        if unknown:
            raise SystemExit(f"unknown modules: {', '.join(unknown)}")
    elif (args.area or ("core" if args.check else "all")) == "core":
        modules = core_modules(rules, available)
    else:
        modules = list(available)
    loops = ["tokioloop"] if args.check and not args.baseline else list(LOOPS)

    # Longest modules first, so the slow ones do not finish last on their own.
    jobs = sorted(((m, loop) for m in modules for loop in loops), key=lambda j: -available[j[0]])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cpython-conformance-") as workdir:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_module, m, loop, args.timeout, args.test_timeout,
                                   args.restarts, workdir) for m, loop in jobs]
            runs = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    tests = build_report(runs, rules)
    with_baseline = "asyncio" in loops

    print_report(tests, runs, with_baseline)
    for run in runs:
        for note in run.notes:
            print(f"note: {run.module} on {run.loop}: {note}")
    evidence = sanity(tests, runs)
    print(f"sanity: {evidence}")
    for path in sorted({r.under_test for r in runs if r.loop == "tokioloop" and r.under_test}):
        print(f"tokioloop under test: {path}")

    failures = sorted(
        (tid, e) for tid, e in tests.items()
        if e["category"] == "behavioural" and e["area"] in BUILT_AREAS
        and outcome(e, "tokioloop") in FAIL
    )
    if args.list_implementation:
        print("\nimplementation tests (not scored):")
        for tid, e in sorted(tests.items()):
            if e["category"] == "implementation":
                print(f"  {tid}: {e['reason']}")
    if args.list_failures:
        print("\nbuilt-area behavioural failures on tokioloop:")
        for tid, e in failures:
            base = outcome(e, "asyncio") if with_baseline else "?"
            rec = e.get("tokioloop") or {}
            print(f"  {tid} [{outcome(e, 'tokioloop')}; stdlib: {base}] {rec.get('reason', '')}")

    problems = []
    if args.check:
        problems = check(tests, runs, expected)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({
                "python": sys.version,
                "modules": modules,
                "loops": loops,
                "seconds": round(elapsed, 1),
                "headline": headline(tests) if with_baseline else None,
                "headline_built": headline(tests, BUILT_AREAS) if with_baseline else None,
                "table": module_table(tests, runs, with_baseline),
                "sanity": evidence,
                "problems": problems,
                "runs": [{"module": r.module, "loop": r.loop, "status": r.status, "notes": r.notes,
                          "seconds": r.seconds, "restarts": r.restarts, "under_test": r.under_test}
                         for r in runs],
                "tests": tests,
            }, fh, indent=1, sort_keys=True)
    print(f"wall time: {elapsed:.1f}s with {args.jobs} parallel jobs")
    if args.check:
        if problems:
            print(f"\nCHECK FAILED: {len(problems)} problem(s) against {expected.name}:")
            for problem in problems:
                print("  " + problem)
            return 1
        print(f"CHECK OK: {len(failures)} built-area failures, all listed in "
              f"{expected.name} ({len(expected.reasons)} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
