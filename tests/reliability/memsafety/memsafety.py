"""Memory-safety runs (issue 20 item 6): ASAN over tokioloop's tests, valgrind memcheck over the
smoke script, reference/block leaks on a debug CPython. Each builds its own tokioloop into its
own venv and target dir under ``target/memsafety/`` and prints one ``reliability figure:`` line.

Contract of each command (exit status 0 only if its figure is clean and its probe fired):

* ``asan``: builds the extension with ``RUSTC_BOOTSTRAP=1 RUSTFLAGS=-Zsanitizer=address`` for
  ``--target x86_64-unknown-linux-gnu`` (so proc-macros and build scripts stay uninstrumented;
  std is not rebuilt, so it is not instrumented either), into a venv of ``--python``. The ASAN
  runtime is Debian's ``libclang_rt.asan-x86_64.so`` (package ``libclang-rt-22-dev``, the LLVM
  major of stable rustc 1.95), preloaded with ``PYTHONMALLOC=malloc`` (so CPython's objects live
  in ASAN's heap) and ``detect_leaks=0`` (CPython frees little at exit). Liveness first: a
  cdylib built with the same flags (``asan_probe.rs``) reads past a heap buffer under the same
  interpreter and preload, and must be reported; then the extension must import ``__asan_*``.
  Then ``smoke.py`` runs, and pytest over the given tests (default: the CI subset, ``-k
  tokioloop``); every report (``log_path``, one file per process, children included) is a
  defect and is printed whole.
* ``valgrind``: a normal (release, no LTO) build in a venv of ``--python``; ``smoke.py`` under
  ``valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite
  --fair-sched=yes`` with ``PYTHONMALLOC=malloc``, Debian's ``python3.supp`` and
  ``valgrind-python.supp`` (this directory; each suppression there says why). Figure: errors
  and definitely-lost bytes; the whole log is kept.
* ``refleaks``: a build against the debug CPython ``--python-dbg`` (``sys.gettotalrefcount``);
  liveness first (``refleak_probe.py``: exactly its leaking test must be reported), then pytest
  with ``-p refleaks --refleaks N:M`` (``../refleaks.py``) over the given tests.
* ``all``: the three above, CI subsets; this is what ``nox -s memsafety`` runs.

Interpreters: Debian's ``/usr/bin/python3.11`` and ``/usr/bin/python3.11-dbg`` by default
(``apt-get install python3.11-dbg python3.11-venv libclang-rt-22-dev valgrind``). Not pyenv's
3.11.7 for valgrind: its ``int.from_bytes`` of zero reads an uninitialised digit multiplied by
size 0, which memcheck flags and then follows into every use of the small int it returns.

Wall time on the shared 2-core machine (load average 13-15 from other engineers' builds),
``nox -s memsafety``: 580 s with warm target dirs: ASAN subset (249 tests) 166 s, valgrind
smoke 31 s, refleaks subset (90 tests x 6 runs) 236 s, incremental builds 19 + 53 + 9 s. From
cold, add the three builds (1 min 17 s ASAN, 54 s debug, 4 min release under that load) and
three venvs' pip installs: about 15 min in all.

Long forms (the whole tokioloop half; ASAN took 37 min 38 s for its 1083 tests on that machine;
refleaks on all of it is over an hour at 2:3):
    python tests/reliability/memsafety/memsafety.py asan -- -k tokioloop tests
    python tests/reliability/memsafety/memsafety.py refleaks --runs 3:3 -- -k tokioloop tests
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
WORK = os.path.join(ROOT, "target", "memsafety")
TARGET = "x86_64-unknown-linux-gnu"
ASAN_RT = "/usr/lib/llvm-22/lib/clang/22/lib/linux/libclang_rt.asan-x86_64.so"
SYMBOLIZERS = ["/usr/bin/llvm-symbolizer", "/usr/lib/llvm-14/bin/llvm-symbolizer"]
TEST_DEPS = ["maturin>=1.5,<2", "pytest>=8.4", "pytest-timeout", "pytest-asyncio>=1.4",
             "blockbuster", "hypothesis>=6.100"]

# CI subsets: the test files that reach the most native code per second. ASAN: sockets, the
# stream transport, TLS, UDP, pipes, subprocesses, signals and thread wake-ups (249 tests).
# Refleaks, 6 runs of each test on a debug build: sockets, UDP and thread wake-ups (90 tests).
ASAN_CI = ["-k", "tokioloop", "tests/test_sock.py", "tests/test_transport.py",
           "tests/test_tls_io.py", "tests/test_udp_transport.py", "tests/test_pipes.py",
           "tests/test_subprocess.py", "tests/test_signals.py", "tests/test_threadsafe.py"]
REFLEAKS_CI = ["-k", "tokioloop", "tests/test_threadsafe.py", "tests/test_sock.py",
               "tests/test_udp_transport.py"]
REFLEAKS_RUNS = "2:3"


def log(msg):
    print(f"memsafety: {msg}", flush=True)


def run(cmd, env=None, **kw):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, env={**os.environ, **(env or {})}, **kw)


def make_venv(name, python, rustflags=None, target=None):
    """A venv of ``python`` holding the test deps and a fresh tokioloop build; its python."""
    venv = os.path.join(WORK, f"venv-{name}")
    vpy = os.path.join(venv, "bin", "python")
    cfg = os.path.join(venv, "pyvenv.cfg")
    made_from = re.search(r"^executable = (.*)$", open(cfg).read(), re.M) if os.path.exists(cfg) else None
    if made_from is None or os.path.realpath(made_from.group(1)) != os.path.realpath(python):
        shutil.rmtree(venv, ignore_errors=True)  # absent, or made from another interpreter
    if not os.path.exists(vpy):
        run([python, "-m", "venv", venv], check=True)
        run([vpy, "-m", "pip", "install", "-q", *TEST_DEPS], check=True)
    wheels = os.path.join(WORK, f"wheels-{name}")
    shutil.rmtree(wheels, ignore_errors=True)
    # Release without fat LTO: the checks need the code, not its last 10 % of speed, and a
    # build in minutes instead of ten.
    env = {"CARGO_TARGET_DIR": os.path.join(ROOT, "target", f"memsafety-{name}"),
           "CARGO_PROFILE_RELEASE_LTO": "off", "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16"}
    if rustflags:
        env.update(RUSTC_BOOTSTRAP="1", RUSTFLAGS=rustflags)
    cmd = [os.path.join(venv, "bin", "maturin"), "build", "--release", "-i", vpy, "--out", wheels]
    if target:
        cmd += ["--target", target]
    start = time.monotonic()
    run(cmd, env=env, check=True, cwd=ROOT)
    run([vpy, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
         *glob.glob(os.path.join(wheels, "*.whl"))], check=True)
    log(f"{name} build and install: {time.monotonic() - start:.0f} s")
    return vpy


def _pytest_env():
    return {"TOKIOLOOP_RELIABILITY": "", "PYTHONPATH": os.path.dirname(HERE)}


# -- ASAN ----------------------------------------------------------------------------------


def asan(args):
    if not os.path.exists(ASAN_RT):
        raise SystemExit(f"{ASAN_RT} missing: apt-get install libclang-rt-22-dev")
    start = time.monotonic()
    vpy = make_venv("asan", args.python, rustflags="-Zsanitizer=address", target=TARGET)
    logs = os.path.join(WORK, "asan-logs")
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    env = {"LD_PRELOAD": ASAN_RT, "PYTHONMALLOC": "malloc",
           "ASAN_OPTIONS": f"detect_leaks=0:log_path={logs}/asan"}
    symbolizer = next((s for s in SYMBOLIZERS if os.path.exists(s)), None)
    if symbolizer:
        env["ASAN_SYMBOLIZER_PATH"] = symbolizer

    # Liveness: the probe's out-of-bounds read must be caught under this very setup.
    probe = os.path.join(WORK, "libasan_probe.so")
    run(["rustc", "--edition", "2021", "--crate-type", "cdylib", "-O", "-g",
         "-Zsanitizer=address", "--target", TARGET, os.path.join(HERE, "asan_probe.rs"),
         "-o", probe], env={"RUSTC_BOOTSTRAP": "1"}, check=True)
    out = run([vpy, "-c", f"import ctypes; ctypes.CDLL({probe!r}).tokioloop_asan_probe(0)"],
              env={**env, "ASAN_OPTIONS": "detect_leaks=0"}, capture_output=True, text=True)
    live = out.returncode != 0 and "heap-buffer-overflow" in out.stderr
    ext = run([vpy, "-c", "import tokioloop._tokioloop as e; print(e.__file__)"], env=env,
              capture_output=True, text=True, check=True).stdout.strip()
    imports = subprocess.run(["nm", "-D", "--undefined-only", ext], capture_output=True,
                             text=True).stdout.count("__asan_report_")
    log(f"ASAN liveness: probe reported={live}, extension imports {imports} __asan_report_* symbols")

    tests = args.pytest or ASAN_CI
    t0 = time.monotonic()
    smoke = run([vpy, os.path.join(HERE, "smoke.py")], env=env, cwd=ROOT)
    proc = run([vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
               env={**env, **_pytest_env()}, cwd=ROOT)
    elapsed = time.monotonic() - t0
    reports = sorted(glob.glob(os.path.join(logs, "asan.*")))
    for path in reports:
        print(f"--- {path}\n" + open(path, errors="replace").read(), flush=True)
    ok = live and imports > 0 and not reports and proc.returncode == 0 and smoke.returncode == 0
    print(f"reliability figure: memsafety asan 3.11: {len(reports)} ASAN reports, smoke exit "
          f"{smoke.returncode}, pytest exit {proc.returncode}, probe "
          f"{'fired' if live else 'DID NOT FIRE'}; smoke.py and tests "
          f"{' '.join(tests) if args.pytest else 'CI subset -k tokioloop'} in {elapsed:.0f} s "
          f"(build + run {time.monotonic() - start:.0f} s)", flush=True)
    return ok


# -- valgrind ------------------------------------------------------------------------------


def valgrind(args):
    start = time.monotonic()
    vpy = make_venv("valgrind", args.python)
    vlog = os.path.join(WORK, "valgrind.log")
    cmd = ["valgrind", "--error-exitcode=1", "--leak-check=full",
           "--errors-for-leak-kinds=definite", "--fair-sched=yes", f"--log-file={vlog}",
           "--suppressions=" + os.path.join(HERE, "valgrind-python.supp")]
    if os.path.exists("/usr/lib/valgrind/python3.supp"):
        cmd.append("--suppressions=/usr/lib/valgrind/python3.supp")
    t0 = time.monotonic()
    proc = run(cmd + [vpy, os.path.join(HERE, "smoke.py")], env={"PYTHONMALLOC": "malloc"})
    elapsed = time.monotonic() - t0
    text = open(vlog, errors="replace").read()
    summary = re.search(r"ERROR SUMMARY: (\d+) errors from (\d+) contexts \(suppressed: (\d+)", text)
    lost = re.search(r"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", text)
    errors = int(summary.group(1)) if summary else -1
    lost_bytes = lost.group(1) if lost else "0"
    if errors:
        print(text[-20000:], flush=True)
    print(f"reliability figure: memsafety valgrind 3.11 smoke: {errors} errors "
          f"({summary.group(2) if summary else '?'} contexts, {summary.group(3) if summary else '?'} "
          f"suppressed), {lost_bytes} bytes definitely lost, exit {proc.returncode}, "
          f"in {elapsed:.0f} s (build + run {time.monotonic() - start:.0f} s; log {vlog})",
          flush=True)
    return errors == 0 and proc.returncode == 0


# -- refleaks ------------------------------------------------------------------------------


def refleaks(args):
    start = time.monotonic()
    vpy = make_venv("dbg", args.python_dbg)
    base = [vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "refleaks",
            "--refleaks", args.runs]
    probe = run(base + [os.path.join(HERE, "refleak_probe.py")], env=_pytest_env(), cwd=ROOT,
                capture_output=True, text=True)
    flagged = re.findall(r"^refleak: \S+::(\w+):", probe.stdout, re.M)
    live = flagged == ["test_leaks"]
    log(f"refleaks liveness: probe flagged {flagged} (want ['test_leaks'])")
    tests = args.pytest or REFLEAKS_CI
    t0 = time.monotonic()
    proc = run(base + tests, env=_pytest_env(), cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n", flush=True)
    figure = re.search(r"^reliability figure: memsafety refleaks .*$", proc.stdout, re.M)
    leaking = re.findall(r"^refleak: (\S+):", proc.stdout, re.M)
    print(f"{figure.group(0) if figure else 'reliability figure: memsafety refleaks: NO FIGURE'}; "
          f"probe {'fired' if live else 'DID NOT FIRE'}; pytest exit {proc.returncode}; tests "
          f"{' '.join(tests) if args.pytest else 'CI subset -k tokioloop'} "
          f"(run {time.monotonic() - t0:.0f} s, build + run {time.monotonic() - start:.0f} s)",
          flush=True)
    return live and not leaking and proc.returncode == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["asan", "valgrind", "refleaks", "all"])
    parser.add_argument("--python", default="/usr/bin/python3.11",
                        help="release CPython for the ASAN and valgrind venvs")
    parser.add_argument("--python-dbg", default="/usr/bin/python3.11-dbg",
                        help="debug CPython (sys.gettotalrefcount) for refleaks")
    parser.add_argument("--runs", default=REFLEAKS_RUNS, help="refleaks N:M (warm-up:counted)")
    parser.add_argument("pytest", nargs="*", help="after --: pytest arguments (default: CI subset)")
    args = parser.parse_args(argv)
    os.makedirs(WORK, exist_ok=True)
    commands = {"asan": asan, "valgrind": valgrind, "refleaks": refleaks}
    chosen = list(commands) if args.command == "all" else [args.command]
    if args.command == "all" and args.pytest:
        parser.error("'all' runs the CI subsets; give pytest arguments to one command")
    start = time.monotonic()
    failed = [name for name in chosen if not commands[name](args)]
    log(f"{', '.join(chosen)}: {'FAILED: ' + ', '.join(failed) if failed else 'clean'} in "
        f"{time.monotonic() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
