"""The seam between Rust and Python, checked from both sides (``tokioloop/_seam.py``).

Rust calls Python methods by name (``intern!(py, "_on_eof")``), which no compiler checks. Each
Python class handed to a native type as its owner must provide every method of its Protocol,
and every underscore name that src/ calls on an owner must be in some Protocol, so a rename on
either side fails here rather than at the first connection that takes that path. Plain tests:
no loop runs.
"""

import inspect
import re
from pathlib import Path

import pytest

from conftest import import_tokioloop

tokioloop = import_tokioloop()
from tokioloop import _datagram, _loop, _pipes, _seam, _tls, _transport  # noqa: E402

SRC = Path(__file__).resolve().parent.parent / "src"

# Each Python class that a native type calls back, and the Protocol it must follow.
OWNERS = [
    (_transport.SocketTransport, _seam.StreamEngineOwner),
    (_pipes.ReadPipeTransport, _seam.StreamReadOwner),
    (_pipes.WritePipeTransport, _seam.WritePipeOwner),
    (_datagram.DatagramTransport, _seam.DatagramEngineOwner),
    (_tls.SSLLayer, _seam.TlsLayerOwner),
    (_loop.Loop, _seam.LoopOwner),
]

# Underscore names src/ reaches by intern! that are not calls on one of our owners.
NOT_OWNER_CALLS = {
    "_run": "asyncio.Handle._run, the stdlib's own step for a handle it made",
    "_cancelled": "asyncio.Handle._cancelled, read on a stdlib handle in the ready queue",
    "_do_read": "TlsLayer's own native method, looked up to reschedule it with call_soon",
}

# How src/ calls an owner: the engines' ``call_owner``, the TLS layer's ``call(slf.as_any(), ..)`` and the
# turn's ``slf.call_method*`` on the loop. Public names (the loop's ``create_future``) are
# asyncio's contract, not this seam's: only underscore names are collected.
OWNER_CALL = re.compile(
    r"(?:\bcall_owner\(\s*(?:py|slf)\s*,|call\(\s*slf\.as_any\(\)\s*,|slf\s*\.call_method\d?\(\s*)"
    r"\s*(?:pyo3::)?intern!\(py,\s*\"(_\w+)\"\)"
)
ANY_INTERNED = re.compile(r"intern!\(py,\s*\"(_\w+)\"\)")


def protocol_methods(protocol):
    return {name for klass in protocol.__mro__ if klass.__module__ == _seam.__name__
            for name, value in vars(klass).items()
            if name.startswith("_") and not name.startswith("__") and inspect.isfunction(value)}


def every_protocol_method():
    return set().union(*(protocol_methods(p) for _, p in OWNERS))


def rust_sources():
    if not SRC.is_dir():
        pytest.skip("no src/ next to tests/ (an installed package without its sources)")
    return {path: path.read_text() for path in SRC.rglob("*.rs")}


@pytest.mark.parametrize("owner, protocol", OWNERS, ids=lambda x: x.__name__)
def test_owner_provides_its_protocol(owner, protocol):
    missing = sorted(name for name in protocol_methods(protocol)
                     if not callable(getattr(owner, name, None)))
    assert not missing, f"{owner.__name__} lacks {protocol.__name__}'s {missing}"


def test_every_protocol_has_a_documented_method():
    for _, protocol in OWNERS:
        methods = protocol_methods(protocol)
        assert methods, protocol
        for name in methods:
            assert getattr(protocol, name).__doc__, f"{protocol.__name__}.{name} has no contract"


def test_every_owner_call_in_src_is_in_a_protocol():
    calls = {}
    for path, text in rust_sources().items():
        for name in OWNER_CALL.findall(text):
            calls.setdefault(name, path.relative_to(SRC.parent))
    assert calls, "found no owner call in src/: has the calling convention changed?"
    unknown = {name: str(path) for name, path in calls.items()
               if name not in every_protocol_method()}
    assert not unknown, f"Rust calls these on an owner, but no Protocol in _seam.py has them: {unknown}"


def test_every_underscore_name_interned_in_src_is_accounted_for():
    names = {}
    for path, text in rust_sources().items():
        for name in ANY_INTERNED.findall(text):
            names.setdefault(name, path.relative_to(SRC.parent))
    known = every_protocol_method() | set(NOT_OWNER_CALLS)
    unknown = {name: str(path) for name, path in names.items() if name not in known}
    assert not unknown, (f"src/ interns these underscore names; add each to a Protocol in "
                         f"_seam.py or to NOT_OWNER_CALLS with a reason: {unknown}")


def stub_members():
    """Names the stub declares: module level, and per class."""
    import ast
    stub = Path(_seam.__file__).with_name("_tokioloop.pyi")
    tree = ast.parse(stub.read_text())
    members = {None: set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members[None].add(node.name)
            members[node.name] = {
                item.name if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                else item.target.id for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.AnnAssign))}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            members[None].add(node.name)
        elif isinstance(node, ast.AnnAssign):
            members[None].add(node.target.id)
    return members


def test_stub_names_every_native_member():
    # stubtest only reports public names missing from a stub; the package lives on the
    # underscore ones, so this test holds the stub to all of them.
    native = tokioloop._tokioloop
    declared = stub_members()
    missing = sorted(name for name in native.__all__ if name not in declared[None])
    for name in native.__all__:
        klass = getattr(native, name)
        if isinstance(klass, type):
            missing += sorted(f"{name}.{attr}" for attr in vars(klass)
                              if not (attr.startswith("__") and attr.endswith("__"))
                              and attr not in declared[name])
    assert not missing, f"_tokioloop.pyi does not declare {missing}"
