"""Debian's arm64 CPythons and a static qemu-aarch64, to import the aarch64 wheels on x86_64.

    python tools/qemu_python.py            # prints qemu's path and each interpreter's root

Debian's registry has arm64 builds of CPython 3.13-3.15 (suite sid) and 3.11 (bookworm); no
reachable suite has 3.10 or 3.12, so those wheels are checked for their tags only. This script,
with tools/debian_python.py's private apt configuration (never the system's apt state):

1. downloads sid's ``qemu-user`` package (amd64, statically linked user-mode emulators) and
   keeps only ``qemu-aarch64``;
2. per suite, resolves the dependency closure of its ``python3.X`` packages for arm64,
   downloads it and unpacks it into one root (adding the ``/lib -> usr/lib`` link that
   base-files would make on a merged-/usr system), so that
   ``qemu-aarch64 -L ROOT ROOT/usr/bin/python3.X`` runs with the root's loader and libraries;
3. checks that each interpreter starts under qemu, reports aarch64 and imports ``ssl``.

Everything lives under ``$XDG_CACHE_HOME/tokioloop/arm64-python`` (``~/.cache/...``), kept
between runs: what already works there is not fetched again. No root needed; nothing is
installed system-wide. Raises ``debian_python.Failed`` (exit 1 from the command line), naming
the step, on any failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import debian_python as dp  # noqa: E402

# Which suite has which arm64 CPython; versions missing here have no interpreter to run under.
SUITES = {"3.11": "bookworm", "3.13": "sid", "3.14": "sid", "3.15": "sid"}
CHECK = ("import sys, platform, ssl; "
         "print('%d.%d' % sys.version_info[:2], platform.machine())")
TIMEOUT = 300  # an emulated interpreter start is a few seconds; a hang must not stall nox


def default_base() -> Path:
    return dp.default_root().parent / "arm64-python"


def run_under_qemu(qemu: Path, root: Path, version: str, args: list[str], **kwargs):
    """``python3.X args`` from ``root`` under qemu; a CompletedProcess (text, captured)."""
    cmd = [str(qemu), "-L", str(root), str(root / "usr" / "bin" / f"python{version}"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def _works(qemu: Path, root: Path, version: str) -> bool:
    if not (qemu.is_file() and (root / "usr" / "bin" / f"python{version}").is_file()):
        return False
    try:
        proc = run_under_qemu(qemu, root, version, ["-c", CHECK])
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and proc.stdout.split() == [version, "aarch64"]


def _unpack(debs: list[Path], root: Path) -> None:
    """Unpack into a fresh directory beside ``root``, then move it in place."""
    fresh = root.parent / f".{root.name}.{os.getpid()}"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    for deb in debs:
        dp.run(["dpkg-deb", "-x", str(deb), str(fresh)], f"unpacking {deb.name}")
    if not (fresh / "lib").exists():  # sid's packages ship merged /usr only
        (fresh / "lib").symlink_to("usr/lib")
    shutil.rmtree(root, ignore_errors=True)
    fresh.rename(root)


def qemu(base: Path) -> Path:
    exe = base / "qemu" / "qemu-aarch64"
    if exe.is_file():
        return exe
    apt = dp.PrivateApt(base / "sid-amd64-apt")
    apt.update()
    debs = apt.download(["qemu-user"], base / "sid-amd64-debs")
    scratch = base / f".qemu.{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    dp.run(["dpkg-deb", "-x", str(debs[0]), str(scratch)], f"unpacking {debs[0].name}")
    found = scratch / "usr" / "bin" / "qemu-aarch64"
    if not found.is_file():
        raise dp.Failed(f"{debs[0].name} has no usr/bin/qemu-aarch64")
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f".qemu-aarch64.{os.getpid()}")
    shutil.copy2(found, tmp)
    os.replace(tmp, exe)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(base / "sid-amd64-debs", ignore_errors=True)  # 70 MB of other emulators
    return exe


def install(versions: list[str], base: Path) -> tuple[Path, dict[str, Path]]:
    """qemu-aarch64 and, for each of ``versions`` that Debian has for arm64, the root holding
    its interpreter. Versions with no arm64 build are left out."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise dp.Failed("the arm64 interpreters are fetched for x86_64 Linux hosts only")
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if not shutil.which(tool):
            raise dp.Failed(f"{tool} is not on PATH: this recipe needs a Debian-family host")
    emulator = qemu(base)
    roots = {}
    wanted = [v for v in versions if v in SUITES]
    for suite in sorted({SUITES[v] for v in wanted}):
        mine = [v for v in wanted if SUITES[v] == suite]
        root = base / suite
        if not all(_works(emulator, root, v) for v in mine):
            # The whole suite's set, so that unpacking afresh keeps the versions not asked for.
            every = [v for v in SUITES if SUITES[v] == suite]
            apt = dp.PrivateApt(base / f"{suite}-arm64-apt", suite=suite, arch="arm64")
            apt.update()
            names = apt.closure([f"python{v}" for v in every])
            debs_dir = base / f"{suite}-arm64-debs"
            shutil.rmtree(debs_dir, ignore_errors=True)  # no stale versions beside new ones
            _unpack(apt.download(names, debs_dir), root)
            for version in mine:
                if not _works(emulator, root, version):
                    try:
                        proc = run_under_qemu(emulator, root, version, ["-c", CHECK])
                        out = (proc.stdout + proc.stderr).strip()[-2000:]
                    except (OSError, subprocess.SubprocessError) as exc:
                        out = str(exc)
                    raise dp.Failed(f"python{version} (arm64, {suite}) does not start under "
                                    f"qemu:\n{out}")
        roots.update({v: root for v in mine})
    return emulator, roots


def main() -> int:
    try:
        emulator, roots = install(sorted(SUITES), default_base())
    except dp.Failed as exc:
        print(f"qemu_python: {exc}", file=sys.stderr)
        return 1
    print(f"qemu {emulator}")
    for version, root in roots.items():
        print(f"{version} {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
