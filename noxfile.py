"""nox sessions: the test matrix over every supported CPython, and the release wheels.

    pip install nox && nox -s tests crosscheck lint reliability   # CI: 3.10-3.15, gates, figures
    nox -s tests-3.12 -- tests/test_scheduling.py -x   # one version; after -- are pytest's args
    nox -s wheels                                # x86_64 + aarch64 wheels, 3.10-3.15, checked
    nox -s crosscheck                            # cargo check for macOS arm64 and Linux aarch64
    nox -s lint                                  # fmt, clippy, cargo test, stubtest (all run)
    nox -s reliability                           # tests/reliability's CI forms (3.11, 3.14)

Interpreters: pyenv's ``versions/3.X.*/bin/python3.X`` first (pyenv's shims only work for the
global version, so ``python3.10`` on PATH may be a shim that refuses to run), then a working
``python3.X`` on PATH. The ones found are linked into ``target/nox/interpreters``, which goes
first on PATH, so nox resolves "3.10" to them whatever its version. A version that is missing
fails its session: CI must never silently drop a version.

Builds: every session builds the extension from source with the same ``CARGO_TARGET_DIR``
(``target/nox``), so tokio and friends compile once; pyo3 and the crate itself rebuild for each
interpreter (maturin hands cargo the interpreter, pyo3's build script reruns on a change). After
installing, each session imports the extension in its venv and checks that it was built for that
interpreter and is not byte-identical to the one last installed for another version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import nox
from nox.command import CommandFailed

PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]
# pyenv here stops at 3.13; these come from Debian's registry (tools/debian_python.py) when
# neither pyenv nor PATH has them.
FROM_DEBIAN = ["3.14", "3.15"]
ROOT = Path(__file__).resolve().parent
TARGET = ROOT / "target" / "nox"
DIST = ROOT / "dist"

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = True  # a missing version fails, never skips
if hasattr(nox.options, "download_python"):  # nox >= 2025: never fetch an interpreter either
    nox.options.download_python = "never"


# --- interpreters -------------------------------------------------------------------------

def _pyenv_root() -> Path:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return Path.home() / ".pyenv"


def _runs_as(exe: str | Path, version: str) -> bool:
    """True if ``exe`` starts and is CPython ``version`` (pyenv shims for other versions fail)."""
    probe = ("import sys, platform; "
             "print('%d.%d' % sys.version_info[:2], platform.python_implementation())")
    try:
        out = subprocess.run([str(exe), "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.split() == [version, "CPython"]


def _find_python(version: str) -> Path | None:
    versions = _pyenv_root() / "versions"
    pattern = re.compile(rf"{re.escape(version)}\.(\d+)")  # 3.13.0, not 3.13.0t or 3.13-dev
    installed = [(int(m.group(1)), d) for d in versions.glob(f"{version}.*")
                 if (m := pattern.fullmatch(d.name))]
    for _, d in sorted(installed, reverse=True):
        exe = d / "bin" / f"python{version}"
        if exe.is_file() and _runs_as(exe, version):
            return exe
    on_path = shutil.which(f"python{version}")
    if on_path and _runs_as(on_path, version):
        return Path(on_path)
    return None


def _debian_pythons(versions: list[str]) -> dict[str, Path]:
    """Install (or find, cached outside the tree) Debian's builds of ``versions``. A failure is
    printed and leaves those versions missing, which fails their sessions."""
    if not versions:
        return {}
    import importlib.util
    spec = importlib.util.spec_from_file_location("debian_python", ROOT / "tools" / "debian_python.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        found = module.install(versions, module.default_root())
    except module.Failed as exc:
        print(f"noxfile: CPython {', '.join(versions)} from Debian: {exc}", flush=True)
        return {}
    return {v: exe for v, exe in found.items() if _runs_as(exe, v)}


def _link_interpreters() -> dict[str, Path]:
    """Find every version in PYTHONS and put a ``python3.X`` link to each first on PATH."""
    bindir = TARGET / "interpreters"
    bindir.mkdir(parents=True, exist_ok=True)
    found = {}
    located = {version: _find_python(version) for version in PYTHONS}
    located.update(_debian_pythons([v for v in FROM_DEBIAN if located[v] is None]))
    for version in PYTHONS:
        link = bindir / f"python{version}"
        exe = located[version]
        if exe is None:
            link.unlink(missing_ok=True)  # never leave a link to an interpreter that is gone
            continue
        # Replace atomically: another nox run in this tree may be resolving the same link now.
        tmp = bindir / f".python{version}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(exe)
        os.replace(tmp, link)
        found[version] = exe
    os.environ["PATH"] = os.pathsep.join([str(bindir), os.environ.get("PATH", "")])
    return found


FOUND = _link_interpreters()


# --- the test matrix ----------------------------------------------------------------------

# Filled in by each tests session of this nox run, printed by the "summary" session at the end.
RESULTS: dict[str, dict] = {}

# Run inside each venv: the extension loads, comes from this venv (not a stray build in the
# source tree) and carries this interpreter's ABI tag. Prints its path and sha256. Behaviour is
# the test suite's business, not this check's.
CHECK_EXTENSION = """
import hashlib, os, sys, sysconfig
import tokioloop._tokioloop as ext
path = os.path.realpath(ext.__file__)
assert path.startswith(os.path.realpath(sys.prefix) + os.sep), f"{path} is not inside {sys.prefix}"
assert path.endswith(sysconfig.get_config_var("EXT_SUFFIX")), f"{path} not built for {sys.version}"
print(path, hashlib.sha256(open(path, "rb").read()).hexdigest())
"""


def _junit_counts(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return total


def _ensure_openssl(session: nox.Session) -> None:
    """The TLS tests use the ``openssl`` command as a peer and to make their certificates.
    Where it is missing, install Debian's package (as root), or stop with what to do."""
    if shutil.which("openssl"):
        return
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        session.log("openssl is missing: installing Debian's openssl package")
        session.run(apt, "-qq", "update", external=True)
        session.run(apt, "-qq", "install", "-y", "openssl", external=True,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
        if shutil.which("openssl"):
            return
    session.error("the TLS tests need the openssl command: install it (Debian: apt-get install openssl)")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Build the extension from source for this CPython, install .[test] and run the tests."""
    session.notify("summary")
    _ensure_openssl(session)
    version = session.python
    result = RESULTS.setdefault(version, {"interpreter": FOUND.get(version)})
    env = {"CARGO_TARGET_DIR": str(TARGET)}
    if "PYTEST_ADDOPTS" in os.environ:
        env["PYTEST_ADDOPTS"] = os.environ["PYTEST_ADDOPTS"]
        session.log(f"PYTEST_ADDOPTS={env['PYTEST_ADDOPTS']}")
    session.run("python", "-VV")

    start = time.monotonic()
    session.install(".[test]", env=env)
    # tests/test_rust_bridge_compat.py's extension (pyo3-async-runtimes on its own pyo3, abi3): its
    # own target dir, and a fixed pyo3 config instead of maturin's per-interpreter one (same content,
    # another path, which cargo sees as a change), so one build serves every version of the run.
    par_only = ROOT / "tests" / "rust_ext" / "par_only"
    session.install(str(par_only), env={"CARGO_TARGET_DIR": str(ROOT / "target" / "rust_ext"),
                                        "PYO3_CONFIG_FILE": str(par_only / "pyo3-abi3.txt")})
    # tests/test_rust_bridge_native.py's extension (tokioloop-rs, abi3), built the same way. Its
    # own target dir: it shares pyo3's build with par_only, and its config file's other path would
    # make cargo rebuild pyo3 for each of the two, in every session.
    bridge_demo = ROOT / "tests" / "rust_ext" / "bridge_demo"
    session.install(str(bridge_demo),
                    env={"CARGO_TARGET_DIR": str(ROOT / "target" / "rust_ext_bridge_demo"),
                         "PYO3_CONFIG_FILE": str(bridge_demo / "pyo3-abi3.txt")})
    result["build_s"] = time.monotonic() - start

    check = Path(session.create_tmp()) / "check_extension.py"
    check.write_text(CHECK_EXTENSION)
    out = session.run("python", str(check), silent=True) or ""
    session.log(f"extension: {out.strip()}")
    digest = out.split()[-1] if out.split() else ""
    # Each version's last installed extension is recorded in target/nox, so the check also
    # spans separate (even concurrent) nox runs sharing this target dir. Two versions never
    # legitimately build identical bytes (pyo3 compiles differently for each).
    for other in PYTHONS:
        record = TARGET / f"extension-{other}.sha256"
        if other != version and record.exists() and record.read_text().strip() == digest:
            session.error(f"the extension installed for {version} is the one built for "
                          f"{other}: stale build")
    (TARGET / f"extension-{version}.sha256").write_text(digest + "\n")

    junit = TARGET / f"junit-{version}.xml"
    junit.unlink(missing_ok=True)
    args = session.posargs or ["tests", "-q"]
    start = time.monotonic()
    try:
        session.run("python", "-m", "pytest", *args, f"--junitxml={junit}", env=env)
    finally:
        result["tests_s"] = time.monotonic() - start
        result["counts"] = _junit_counts(junit)


@nox.session(python=False)
def summary(session: nox.Session) -> None:
    """Per-version results of this run's tests sessions (queued by them; not run on its own)."""
    if not RESULTS:
        session.log("no tests session ran in this nox run")
        return
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    lines, unreported = [], []
    for version in PYTHONS:
        result = RESULTS.get(version)
        if result is None:
            why = "not run in this nox run" if version in FOUND else "no interpreter found (failed)"
            lines.append(f"tests-{version}: {why}")
            continue
        counts = result.get("counts")
        timing = ", ".join(f"{k[:-2]} {result[k]:.0f} s"
                           for k in ("build_s", "tests_s") if k in result)
        if counts is None:
            status = "no test report (failed before or while running pytest)"
            unreported.append(version)
        else:
            failed = counts["failures"] + counts["errors"]
            totals["passed"] += counts["passed"]
            totals["failed"] += failed
            totals["skipped"] += counts["skipped"]
            status = f"{counts['passed']} passed, {failed} failed, {counts['skipped']} skipped"
        lines.append(f"tests-{version} ({result['interpreter']}): {status} [{timing}]")
    for line in lines:
        print(line, flush=True)
    if unreported:
        print(f"no test report from: {', '.join(unreported)} (see their sessions above)",
              flush=True)
    print(f"total: {totals['passed']} passed, {totals['failed']} failed, "
          f"{totals['skipped']} skipped", flush=True)


# --- reliability ---------------------------------------------------------------------------

# Where the reliability suite's short forms run: the differential fuzzing on two versions (the
# oldest pyenv one users still deploy and the one most deploy now), the soak and the Ctrl+C
# trials once, on 3.14. Their long forms are the scripts' own CLIs (tests/reliability/*.py).
RELIABILITY_PYTHONS = ["3.11", "3.14"]
RELIABILITY_EVERYTHING_ON = "3.14"


@nox.session(python=RELIABILITY_PYTHONS)
def reliability(session: nox.Session) -> None:
    """tests/reliability's CI forms: builds the extension for this CPython, installs .[test]
    and runs them. Each harness prints its figures as ``reliability figure:`` lines."""
    _ensure_openssl(session)
    env = {"CARGO_TARGET_DIR": str(TARGET), "TOKIOLOOP_RELIABILITY": "1"}
    session.install(".[test]", env=env)
    if session.posargs:
        args = list(session.posargs)
    elif session.python == RELIABILITY_EVERYTHING_ON:
        args = ["tests/reliability"]
    else:
        args = ["tests/reliability/test_differential.py"]
    # -s: the figures are printed by the harnesses, and belong in CI's log.
    session.run("python", "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *args, env=env)
    if session.posargs or session.python != RELIABILITY_EVERYTHING_ON:
        return
    # The panic points (src/fault.rs) exist only in a build with the cargo feature
    # fault-points: its own target dir, so the normal build above stays warm.
    fault_env = {**env, "CARGO_TARGET_DIR": str(ROOT / "target" / "fault"),
                 "MATURIN_PEP517_ARGS": "--features fault-points", "TOKIOLOOP_FAULT_POINTS": "1"}
    session.install("--no-deps", "--force-reinstall", ".", env=fault_env)
    session.run("python", "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                "tests/reliability/test_panics.py", env=fault_env)


# The memory-safety runs (tests/reliability/memsafety/memsafety.py): ASAN over a subset of the
# tokioloop tests, valgrind memcheck over the smoke script, refleaks on a debug CPython. Debian's
# CPython 3.11 builds (release and -dbg), each run with its own venv and target dir under target/.
MEMSAFETY_SCRIPT = ROOT / "tests" / "reliability" / "memsafety" / "memsafety.py"
MEMSAFETY_APT = {
    "valgrind": "/usr/bin/valgrind",
    "libclang-rt-22-dev": "/usr/lib/llvm-22/lib/clang/22/lib/linux/libclang_rt.asan-x86_64.so",
    "python3.11": "/usr/bin/python3.11",
    "python3.11-dbg": "/usr/bin/python3.11-dbg",
    "python3.11-venv": "/usr/lib/python3.11/ensurepip/__init__.py",
}


@nox.session(python=False)
def memsafety(session: nox.Session) -> None:
    """ASAN, valgrind and refleaks (issue 20 item 6); prints ``reliability figure: memsafety``
    lines. Installs the Debian packages it needs when missing (as root). After -- : one of
    memsafety.py's commands and its arguments (default ``all``, the CI subsets)."""
    _ensure_openssl(session)
    missing = [pkg for pkg, path in MEMSAFETY_APT.items() if not os.path.exists(path)]
    if missing:
        if not (shutil.which("apt-get") and os.geteuid() == 0):
            session.error(f"memsafety needs the Debian packages {', '.join(missing)}")
        session.run("apt-get", "-qq", "update", external=True)
        session.run("apt-get", "-qq", "install", "-y", *missing, external=True,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
    start = time.monotonic()
    args = list(session.posargs) or ["all"]
    try:
        session.run("/usr/bin/python3.11", str(MEMSAFETY_SCRIPT), *args, external=True)
    finally:
        session.log(f"memsafety: {time.monotonic() - start:.0f} s")


# --- wheels -------------------------------------------------------------------------------

X86_64 = "x86_64-unknown-linux-gnu"
AARCH64 = "aarch64-unknown-linux-gnu"
MACOS = "aarch64-apple-darwin"
# ELF e_machine of each wheel architecture, and the platform tags maturin gives it.
ARCHES = {"x86_64": 62, "aarch64": 183}
MANYLINUX = ("manylinux2014_{arch}", "manylinux_2_17_{arch}")

# Run under qemu with ``-I`` (nothing from the environment): the extension loads from the
# unpacked wheel (argv[1]) and carries this interpreter's ABI tag, then argv[2] runs as __main__.
QEMU_CHECK = """
import hashlib, os, runpy, sys, sysconfig
site = os.path.realpath(sys.argv[1])
sys.path.insert(0, site)
import tokioloop._tokioloop as ext
path = os.path.realpath(ext.__file__)
assert path.startswith(site + os.sep), f"{path} is not inside {site}"
assert path.endswith(sysconfig.get_config_var("EXT_SUFFIX")), f"{path} not built for {sys.version}"
print("extension:", path, hashlib.sha256(open(path, "rb").read()).hexdigest(), flush=True)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _rust_targets(session: nox.Session, *targets: str) -> None:
    """``rustup target add`` the targets not installed yet (the standard library for each)."""
    rustup = shutil.which("rustup")
    if not rustup:
        session.error(f"rustup is not on PATH: cannot add the Rust targets {', '.join(targets)}")
    installed = subprocess.run([rustup, "target", "list", "--installed"], capture_output=True,
                               text=True, check=True).stdout.split()
    missing = [t for t in targets if t not in installed]
    if missing:
        session.run(rustup, "target", "add", *missing, external=True)


def _elf_facts(data: bytes) -> tuple[int, list[str]]:
    """e_machine and the section names of a 64-bit little-endian ELF file."""
    import struct
    if data[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not a 64-bit little-endian ELF file")
    machine = struct.unpack_from("<H", data, 0x12)[0]
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    names = [data[strtab + h[0]:data.index(b"\0", strtab + h[0])].decode() for h in headers]
    return machine, names


def _wheel_file_problems(version: str, arch: str,
                         wheels: list[Path]) -> tuple[Path | None, list[str]]:
    """Find the one wheel for ``version`` and ``arch``; check its tags (file name and WHEEL
    file agree, manylinux2014 / manylinux_2_17 only) and its extension (named for this CPython
    and arch, an ELF for that machine, no debug info)."""
    import zipfile
    from packaging.utils import parse_wheel_filename  # nox depends on packaging

    tag = "cp" + version.replace(".", "")
    mine = [w for w in wheels if any(t.interpreter == tag and t.platform.endswith(f"_{arch}")
                                     for t in parse_wheel_filename(w.name)[3])]
    if len(mine) != 1:
        return None, [f"{version} {arch}: expected one {tag} wheel in dist/, found "
                      f"{[w.name for w in mine]}"]
    wheel = mine[0]
    tags = parse_wheel_filename(wheel.name)[3]
    expected = {f"{tag}-{tag}-{p.format(arch=arch)}" for p in MANYLINUX}
    if {str(t) for t in tags} != expected:
        return wheel, [f"{version}: {wheel.name} is tagged {sorted(map(str, tags))}, "
                       f"expected {sorted(expected)}"]
    suffix = f".cpython-{tag[2:]}-{arch}-linux-gnu.so"
    with zipfile.ZipFile(wheel) as zf:
        meta = next((n for n in zf.namelist() if n.endswith(".dist-info/WHEEL")), None)
        listed = {line.split(":", 1)[1].strip() for line in zf.read(meta).decode().splitlines()
                  if line.startswith("Tag:")} if meta else set()
        if listed != expected:
            return wheel, [f"{version}: {wheel.name}'s WHEEL file lists tags {sorted(listed)}"]
        libs = [n for n in zf.namelist() if n.endswith(".so")]
        if [n.rsplit("/", 1)[-1] for n in libs] != [f"_tokioloop{suffix}"]:
            return wheel, [f"{version}: {wheel.name} holds {libs}, expected one _tokioloop{suffix}"]
        try:
            machine, sections = _elf_facts(zf.read(libs[0]))
        except (ValueError, IndexError) as exc:
            return wheel, [f"{version}: {libs[0]} in {wheel.name}: {exc}"]
    if machine != ARCHES[arch]:
        return wheel, [f"{version}: {libs[0]} in {wheel.name} is ELF machine {machine}, "
                       f"not {arch}"]
    debug = [s for s in sections if s.startswith(".debug")]
    if debug:
        return wheel, [f"{version}: {libs[0]} in {wheel.name} carries debug info ({debug})"]
    return wheel, []


def _x86_64_problems(session: nox.Session, version: str, wheel: Path,
                     digests: dict[str, str]) -> list[str]:
    """Install the x86_64 wheel for ``version`` into a fresh venv of that interpreter and run
    examples/hello.py there. Returns what is wrong (empty: all good)."""
    if version not in FOUND:
        return [f"{version}: no CPython {version} interpreter to check {wheel.name} with"]
    venv = Path(session.create_tmp()).resolve() / f"check-{version}"
    shutil.rmtree(venv, ignore_errors=True)
    python = str(venv / "bin" / "python")
    env = {"PYTHONPATH": None}  # the wheel alone, nothing from the environment or the tree
    step = "creating its venv"
    try:
        # Without pip: Debian's 3.14/3.15 have no bundled pip for ensurepip. This session's
        # own pip installs into the venv instead (pip --python).
        session.run(str(FOUND[version]), "-m", "venv", "--without-pip", str(venv), external=True)
        step = "installing it"
        session.run("python", "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-index", str(wheel), env=env)
        with session.chdir(venv):  # away from the source tree, whose python/ must not leak in
            step = "importing its extension"
            out = session.run(python, "-c", CHECK_EXTENSION, external=True, env=env, silent=True)
            session.log(f"extension: {(out or '').strip()}")
            digest = (out or "").split()[-1:]
            for other, other_digest in digests.items():
                if [other_digest] == digest:
                    return [f"{version}: {wheel.name} holds the {other} wheel's extension"]
            digests[f"{version} x86_64"] = digest[0] if digest else ""
            step = "running examples/hello.py"
            session.run(python, str(ROOT / "examples" / "hello.py"), external=True, env=env)
    except CommandFailed as exc:
        return [f"{version}: {wheel.name} failed {step} ({exc.reason})"]
    session.log(f"{version}: {wheel.name} installs and runs examples/hello.py")
    return []


def _qemu_pythons(session: nox.Session) -> tuple:
    """qemu-aarch64, Debian's arm64 CPythons (version -> root) and tools/qemu_python.py itself
    (cached outside the tree). A failure fails the session, as a missing x86_64 interpreter
    does."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("qemu_python", ROOT / "tools" / "qemu_python.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    start = time.monotonic()
    try:
        found = module.install(PYTHONS, module.default_base())
    except module.dp.Failed as exc:
        session.error(f"qemu and Debian's arm64 CPythons (tools/qemu_python.py): {exc}")
    session.log(f"qemu and arm64 CPython {', '.join(found[1])} ready in "
                f"{time.monotonic() - start:.0f} s")
    return found[0], found[1], module


def _aarch64_problems(session: nox.Session, version: str, wheel: Path, qemu: tuple,
                      digests: dict[str, str]) -> list[str]:
    """Unpack the aarch64 wheel and, if Debian has an arm64 CPython ``version``, import it and
    run examples/hello.py under qemu-user. Returns what is wrong (empty: all good)."""
    import zipfile
    emulator, roots, module = qemu
    if version not in roots:
        session.log(f"{version}: {wheel.name}: tags and ELF checked; no arm64 CPython "
                    f"{version} in Debian to run it with")
        return []
    site = Path(session.create_tmp()).resolve() / f"aarch64-{version}"
    shutil.rmtree(site, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    args = ["-I", "-c", QEMU_CHECK, str(site), str(ROOT / "examples" / "hello.py")]
    session.log(f"qemu-aarch64 -L {roots[version]} python{version} -I -c QEMU_CHECK {site} "
                f"examples/hello.py")
    try:
        proc = module.run_under_qemu(emulator, roots[version], version, args, cwd=site)
    except subprocess.TimeoutExpired:
        return [f"{version}: {wheel.name} under qemu did not finish in {module.TIMEOUT} s"]
    out = (proc.stdout + proc.stderr).strip()
    print(out, flush=True)
    if proc.returncode != 0:
        return [f"{version}: {wheel.name} under qemu exited {proc.returncode}: {out[-500:]}"]
    first = proc.stdout.split("\n", 1)[0].split()
    if first[:1] != ["extension:"] or not proc.stdout.rstrip().endswith("done"):
        return [f"{version}: {wheel.name} under qemu printed no extension line or no 'done'"]
    for other, other_digest in digests.items():
        if other_digest == first[-1]:
            return [f"{version}: {wheel.name} holds the {other} wheel's extension"]
    digests[f"{version} aarch64"] = first[-1]
    session.log(f"{version}: {wheel.name} imports and runs examples/hello.py under qemu")
    return []


@nox.session
def wheels(session: nox.Session) -> None:
    """Build manylinux2014 x86_64 and aarch64 wheels for every CPython in PYTHONS and an sdist
    into dist/, then check each: x86_64 ones run examples/hello.py in a venv of their Python,
    aarch64 ones under qemu-user with Debian's arm64 CPython where Debian has that version."""
    missing = [v for v in PYTHONS if v not in FOUND]
    if missing:
        session.error(f"no interpreter for CPython {', '.join(missing)}: cannot build every wheel")
    _rust_targets(session, AARCH64)
    session.install("maturin>=1.5,<2", "ziglang")
    DIST.mkdir(exist_ok=True)
    for old in list(DIST.glob("tokioloop-*.whl")) + list(DIST.glob("tokioloop-*.tar.gz")):
        old.unlink()  # a wheel left from an earlier run must not stand in for a missing one
    qemu = _qemu_pythons(session)  # before the builds: a download failure fails fast

    # zig links against glibc 2.17's symbols, so the wheels install on manylinux2014 systems
    # and later; maturin itself refuses to tag a wheel whose symbols need more. The "wheel"
    # profile (Cargo.toml) is release without debug info.
    build = ["maturin", "build", "--profile", "wheel", "--zig", "--compatibility",
             "manylinux2014", "--out", str(DIST)]
    env = {"CARGO_TARGET_DIR": str(ROOT / "target" / "wheels")}
    timings = []
    start = time.monotonic()
    session.run(*build, *[arg for v in PYTHONS for arg in ("--interpreter", str(FOUND[v]))],
                env=env)
    timings.append(f"x86_64 {time.monotonic() - start:.0f} s")
    # Cross: maturin takes each target interpreter's configuration from the sysconfigs built
    # into it (found by name, python3.X), not from a host interpreter.
    start = time.monotonic()
    session.run(*build, "--target", AARCH64,
                *[arg for v in PYTHONS for arg in ("--interpreter", f"python{v}")], env=env)
    timings.append(f"aarch64 {time.monotonic() - start:.0f} s")
    session.run("maturin", "sdist", "--out", str(DIST), env=env)
    session.log(f"built in {', '.join(timings)}")

    built = sorted(DIST.glob("tokioloop-*.whl"))
    sdists = sorted(DIST.glob("tokioloop-*.tar.gz"))
    problems = [] if len(sdists) == 1 else [f"expected one sdist in dist/, found {sdists}"]
    expected = {f"{v} {arch}" for v in PYTHONS for arch in ARCHES}
    if len(built) != len(expected):
        problems.append(f"expected {len(expected)} wheels in dist/, found {len(built)}")
    digests: dict[str, str] = {}
    for arch in ARCHES:
        for version in PYTHONS:
            wheel, found = _wheel_file_problems(version, arch, built)
            problems += found
            if wheel is None or found:
                continue
            if arch == "x86_64":
                problems += _x86_64_problems(session, version, wheel, digests)
            else:
                problems += _aarch64_problems(session, version, wheel, qemu, digests)
    for path in built + sdists:
        session.log(f"dist/{path.name} ({path.stat().st_size / 1e6:.2f} MB)")
    if problems:
        session.error("wheels:\n  " + "\n  ".join(problems))


@nox.session(python=False)
def crosscheck(session: nox.Session) -> None:
    """``cargo check`` for macOS on Apple silicon and for Linux aarch64: the code still
    compiles there (nothing links or runs). Adds the Rust targets if missing. pyo3 needs a
    target Python version when cross-compiling; the newest in PYTHONS stands for all."""
    targets = [MACOS, AARCH64]
    _rust_targets(session, *targets)
    env = {"CARGO_TARGET_DIR": str(ROOT / "target" / "crosscheck"),
           "PYO3_CROSS_PYTHON_VERSION": PYTHONS[-1]}
    for target in targets:
        session.run("cargo", "check", "--locked", "--target", target, env=env, external=True)


# --- the gates ----------------------------------------------------------------------------

# stubtest needs the extension built for one interpreter; the seam does not change with the
# version, so one is enough. 3.11 shares tests-3.11's build cache (target/nox).
LINT_PYTHON = "3.11"


@nox.session(python=LINT_PYTHON)
def lint(session: nox.Session) -> None:
    """The gates, every one run even when an earlier one fails, so one run shows them all:
    ``cargo fmt --check`` (rustfmt.toml's 110 columns), ``cargo clippy --all-targets -- -D
    warnings``, the Rust unit tests (``cargo test --lib``, pyo3 linked against this session's
    CPython), the loom models (the wake-up, the DNS completion flag), the same three gates for
    ``crates/tokioloop-rs`` and ``mypy.stubtest``
    of ``_tokioloop.pyi`` against the extension built and installed in this venv, with
    ``.mypy-stubtest-allowlist``. Fails if any gate failed."""
    failed = []

    def gate(name: str, *args: str, env: dict | None = None, external: bool = True) -> None:
        try:
            session.run(*args, env=env, external=external)
        except CommandFailed as exc:
            session.warn(f"gate {name} failed ({exc.reason})")
            failed.append(name)

    # Clippy and the unit tests get a target dir of their own: their flags differ from the
    # extension builds', which would otherwise rebuild each other's dependencies.
    rust_env = {"CARGO_TARGET_DIR": str(ROOT / "target" / "lint")}
    python = str(Path(session.bin) / "python")
    gate("fmt", "cargo", "fmt", "--check")
    # The extension authors' crate (crates/tokioloop-rs, its own workspace): formatted, clean under
    # clippy and its unit tests (a fake ABI table, no Python needed beyond linking pyo3).
    rs_manifest = str(ROOT / "crates" / "tokioloop-rs" / "Cargo.toml")
    rs_env = {"CARGO_TARGET_DIR": str(ROOT / "target" / "tokioloop-rs"), "PYO3_PYTHON": python}
    gate("tokioloop-rs fmt", "cargo", "fmt", "--check", "--manifest-path", rs_manifest)
    gate("tokioloop-rs clippy", "cargo", "clippy", "--locked", "--all-targets",
         "--manifest-path", rs_manifest, "--", "-D", "warnings", env=rs_env)
    gate("tokioloop-rs test", "cargo", "test", "--locked", "--manifest-path", rs_manifest,
         env=rs_env)
    gate("clippy", "cargo", "clippy", "--locked", "--all-targets", "--", "-D", "warnings",
         env=rust_env)
    gate("cargo test", "cargo", "test", "--locked", "--lib", env={**rust_env, "PYO3_PYTHON": python})
    # The loom model of the loop's wake-up (src/io/wake.rs), under loom's atomics: its own
    # target dir, since the cfg changes every crate's build.
    gate("loom", "cargo", "test", "--locked", "--release", "--lib", "loom",
         env={"CARGO_TARGET_DIR": str(ROOT / "target" / "loom"), "PYO3_PYTHON": python,
              "RUSTFLAGS": "--cfg tokioloop_loom"})

    try:
        session.install(".", "mypy>=2,<3", env={"CARGO_TARGET_DIR": str(TARGET)})
    except CommandFailed as exc:
        session.warn(f"gate stubtest failed: could not build and install the extension ({exc.reason})")
        failed.append("stubtest")
    else:
        # From a temporary directory, so ``tokioloop`` is the installed package and its .pyi.
        with session.chdir(session.create_tmp()):
            gate("stubtest", "python", "-m", "mypy.stubtest", "tokioloop._tokioloop",
                 "--allowlist", str(ROOT / ".mypy-stubtest-allowlist"), external=False)
    if failed:
        session.error(f"gates failed: {', '.join(failed)}")
    session.log("every gate passed")
