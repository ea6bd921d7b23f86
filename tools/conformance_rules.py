"""Rules and expectation files of the CPython conformance run (see ``cpython_conformance.py``).

Two checked-in text files drive the run, both under ``tests/cpython/``:

``rules.txt``: how each CPython ``test.test_asyncio`` test is treated. One rule a line,
``KIND PATTERN [ARGS...] | REASON``; blank lines and ``#`` comments are ignored. PATTERN is an
``fnmatch`` pattern over the short test id ``module.Class.test_name`` (``test.test_asyncio.``
dropped). Kinds:

* ``implementation PATTERN | reason``: the test inspects stdlib internals (a mocked selector,
  private attributes, a specific stdlib loop class); it is listed, not scored.
* ``area=NAME PATTERN | reason``: the test belongs to a loop feature area (``tls``, ``udp``...).
  Areas named in ``BUILT_AREAS`` are tokioloop's built ones; any other area is "not built yet".
  Tests matching no area rule are in area ``core``.
* ``drop module.Class | reason``: the class is removed before the run (a duplicate of a
  retargeted class that runs the same mixin on another stdlib selector).
* ``retarget module.Class METHOD NEWNAME [bases=A,B,...] | reason``: the class is replaced by a
  subclass named NEWNAME whose loop-factory METHOD (``create_event_loop``, ``new_loop``) returns
  the loop under test. ``bases=`` names module attributes to derive from instead of the class.
* ``adapt module.Class METHOD ADAPTER | reason``: METHOD of the class (a base or mixin, so its
  subclasses and test ids are unchanged) is replaced by the child's adapter ADAPTER, which gives
  the tests the loop under test where they had a mocked stdlib loop (``conformance_child.py``).
* ``hangs PATTERN | reason``: the test is known to wait for ever on tokioloop, so the tokioloop
  run does not start it (it would cost the per-test watchdog's whole timeout, and a restart of
  its module, on every run): it is recorded as ``not-run`` with the reason. The baseline run
  still runs it. Its other rules classify it as usual: an implementation test stays unscored,
  a behavioural one fails and must be listed in the expected failures.

The first matching rule of each family (implementation, area, hangs) wins; drop, retarget and
adapt rules all apply.

A rule may start with a Python-version qualifier in brackets, ``[>=3.12]``, ``[<3.11]``,
``[==3.10]`` or several joined by commas (``[>=3.11,<3.13]``): the rule exists only on the
interpreters it names (``version_matches``, the one place this is decided). Rules need no
qualifier merely because their class or test is absent on some version: a pattern that matches
nothing does nothing, and a class rule whose class is missing only leaves a note. Qualify a rule
when it must differ between versions (a class that exists everywhere but changed).

``expected_failures-X.Y.txt``, one per CPython minor version (``expected_file``): ``TEST_ID |
reason`` lines, one per built-area test known to fail on tokioloop under that version; a
``[flaky]`` tag in the reason tolerates a pass. The files are per version because the tests,
their classes and tokioloop's failures differ by version, and each file only shrinks on its own.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RULES_FILE = os.path.join(REPO, "tests", "cpython", "rules.txt")
SUPPORTED_VERSIONS = ((3, 10), (3, 11), (3, 12), (3, 13), (3, 14), (3, 15))


def expected_file(version=None):
    """``tests/cpython/expected_failures-X.Y.txt`` for ``version`` (default: this interpreter)."""
    major, minor = version or sys.version_info[:2]
    return os.path.join(REPO, "tests", "cpython", f"expected_failures-{major}.{minor}.txt")


_QUALIFIER_RE = re.compile(r"^(>=|<=|==|!=|>|<)(\d+)\.(\d+)$")


def version_matches(spec, version=None):
    """Whether ``version`` (default: this interpreter) satisfies ``spec``, e.g. ``>=3.11,<3.13``.

    The one place where rules (and anything else) decide by Python version.
    """
    version = tuple(version or sys.version_info[:2])
    for term in spec.split(","):
        match = _QUALIFIER_RE.match(term.strip())
        if not match:
            raise ValueError(f"bad version qualifier {term.strip()!r} (e.g. '>=3.12', '<3.11')")
        op, wanted = match.group(1), (int(match.group(2)), int(match.group(3)))
        ok = {">=": version >= wanted, "<=": version <= wanted, "==": version == wanted,
              "!=": version != wanted, ">": version > wanted, "<": version < wanted}[op]
        if not ok:
            return False
    return True

#: Areas tokioloop has built; every test of these areas is checked by ``--check``.
BUILT_AREAS = frozenset(
    {"core", "dns", "sockets", "tcp", "unix", "servers", "streams", "sendfile", "tls", "pipes",
     "subprocess", "udp"}
)

#: Loop methods named by tokioloop's NotImplementedError, and the area each belongs to. Used as
#: a fallback for tests that no area rule covers but that stopped at a method not built yet.
UNBUILT_METHOD_AREAS = {
    "getaddrinfo": "dns",
    "getnameinfo": "dns",
    "create_connection": "tcp",
    "create_server": "servers",
    "connect_accepted_socket": "tcp",
    "sendfile": "sendfile",
    "sock_sendfile": "sendfile",
    "start_tls": "tls",
    "create_unix_connection": "unix",
    "create_unix_server": "unix",
    "create_datagram_endpoint": "udp",
    "connect_read_pipe": "pipes",
    "connect_write_pipe": "pipes",
    "subprocess_shell": "subprocess",
    "subprocess_exec": "subprocess",
    "sock_recv": "sockets",
    "sock_recv_into": "sockets",
    "sock_recvfrom": "sockets",
    "sock_recvfrom_into": "sockets",
    "sock_sendall": "sockets",
    "sock_sendto": "sockets",
    "sock_connect": "sockets",
    "sock_accept": "sockets",
}


@dataclass
class Rule:
    kind: str  # "implementation", "area", "drop", "retarget" or "adapt"
    pattern: str
    reason: str
    area: str = ""
    args: list = field(default_factory=list)
    options: dict = field(default_factory=dict)
    line: int = 0

    def matches(self, test_id: str) -> bool:
        return fnmatch.fnmatchcase(test_id, self.pattern)


def _first_match(rules, test_id):
    """The first of ``rules`` whose pattern matches ``test_id``, or None."""
    for rule in rules:
        if rule.matches(test_id):
            return rule
    return None


@dataclass
class Rules:
    implementation: list
    areas: list
    classes: list  # drop, retarget and adapt rules
    hangs: list = field(default_factory=list)

    def implementation_reason(self, test_id):
        """The reason ``test_id`` is an implementation test, or None."""
        rule = _first_match(self.implementation, test_id)
        return rule.reason if rule else None

    def hang_rule(self, test_id):
        """The ``hangs`` rule naming ``test_id`` (not to be started on tokioloop), or None."""
        return _first_match(self.hangs, test_id)

    def area_of(self, test_id):
        """``(area, reason)`` of the first matching area rule, or ``("core", "")``."""
        rule = _first_match(self.areas, test_id)
        return (rule.area, rule.reason) if rule else ("core", "")

    def class_rules_for(self, module):
        """The drop/retarget/adapt rules whose class lives in ``module``."""
        return [r for r in self.classes if r.pattern.split(".", 1)[0] == module]

    def module_wide(self, module):
        """The implementation or area rule covering all of ``module`` (pattern ``module.*``)."""
        for rule in self.implementation + self.areas:
            if rule.pattern == f"{module}.*":
                return rule
        return None


def load_rules(path=RULES_FILE, version=None) -> Rules:
    """The rules of ``path`` that hold for ``version`` (default: this interpreter)."""
    implementation, areas, classes, hangs = [], [], [], []
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, 1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            if text.startswith("["):
                spec, closed, text = text[1:].partition("]")
                if not closed:
                    raise ValueError(f"{path}:{number}: unclosed version qualifier")
                try:
                    applies = version_matches(spec, version)
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: {exc}") from None
                if not applies:
                    continue
                text = text.strip()
            if "|" not in text:
                raise ValueError(f"{path}:{number}: rule without '| reason': {text!r}")
            head, reason = (part.strip() for part in text.split("|", 1))
            words = head.split()
            if len(words) < 2 or not reason:
                raise ValueError(f"{path}:{number}: expected 'KIND PATTERN ... | reason'")
            kind, pattern, rest = words[0], words[1], words[2:]
            options = dict(w.split("=", 1) for w in rest if "=" in w)
            args = [w for w in rest if "=" not in w]
            rule = Rule(kind, pattern, reason, args=args, options=options, line=number)
            if kind == "implementation":
                implementation.append(rule)
            elif kind.startswith("area="):
                rule.kind, rule.area = "area", kind.split("=", 1)[1]
                areas.append(rule)
            elif kind == "drop":
                classes.append(rule)
            elif kind == "hangs":
                hangs.append(rule)
            elif kind in ("retarget", "adapt"):
                if len(args) != 2:
                    raise ValueError(f"{path}:{number}: {kind} needs two arguments")
                classes.append(rule)
            else:
                raise ValueError(f"{path}:{number}: unknown rule kind {kind!r}")
    return Rules(implementation, areas, classes, hangs)


@dataclass
class Expected:
    reasons: dict  # test id -> reason
    flaky: set
    name: str = "expected failures"  # the file's path relative to the repository

    def __contains__(self, test_id):
        return test_id in self.reasons


def load_expected(path=None) -> Expected:
    """The expected failures of ``path`` (default: this interpreter's ``expected_file()``)."""
    path = path or expected_file()
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{os.path.relpath(path)} does not exist: this CPython version has no expected "
            "failures file yet (run --check --list-failures and write one)")
    reasons, flaky = {}, set()
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, 1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            test_id, _, reason = (part.strip() for part in text.partition("|"))
            if not reason:
                raise ValueError(f"{path}:{number}: expected 'TEST_ID | reason'")
            if test_id in reasons:
                raise ValueError(f"{path}:{number}: {test_id} listed twice")
            reasons[test_id] = reason
            if "[flaky]" in reason:
                flaky.add(test_id)
    return Expected(reasons, flaky, os.path.relpath(path, REPO))
