"""Where the supported CPython versions (3.10-3.13, 3.14 APIs by their documentation) differ.

The running interpreter's asyncio is tokioloop's specification, so every behaviour that changed
between versions is decided here, once, and the rest of the package reads these names. Each is
found by asking the running asyncio (feature detection) where that is possible, and by version
number only where the change leaves no attribute or signature to look at.

``conform_to_stdlib(cls, reference)`` applies the API-shape rules to a class after it is built:
a public method the running version's ``reference`` class does not have is hidden (getattr
raises AttributeError, as on the stdlib loop), and a keyword argument the running version's
method does not take is refused with the TypeError Python itself raises for it.
"""

from __future__ import annotations

import asyncio
import dis
import functools
import inspect
import sys

VERSION = sys.version_info[:2]

#: asyncio's own test for "a coroutine function" as its loops use it: 3.14 deprecates the
#: public ``asyncio.iscoroutinefunction`` (every call warns) and keeps the private spelling.
iscoroutinefunction = getattr(asyncio.coroutines, "_iscoroutinefunction",
                              asyncio.coroutines.iscoroutinefunction)

#: ``asyncio.Runner`` (3.11+); below it ``tokioloop.run`` drives the loop itself.
HAS_RUNNER = hasattr(asyncio, "Runner")

#: asyncio's event-loop policies: deprecated from 3.14 (each use warns), removed in 3.16.
POLICIES_DEPRECATED = VERSION >= (3, 14)
HAS_POLICIES = VERSION < (3, 16)
POLICIES_REMOVED_IN = (3, 16)


def default_policy_class():
    """The platform's default policy class, reached without the warning 3.14 gives for its
    public name (``asyncio.DefaultEventLoopPolicy`` is a deprecated module attribute there)."""
    if not POLICIES_DEPRECATED:
        return asyncio.DefaultEventLoopPolicy
    if sys.platform == "win32":
        return __import__("asyncio.windows_events").windows_events._DefaultEventLoopPolicy
    return __import__("asyncio.unix_events").unix_events._DefaultEventLoopPolicy


def set_policy_quietly(policy):
    """``asyncio.set_event_loop_policy(policy)`` without 3.14's deprecation warning (the
    caller has given its own)."""
    setter = getattr(asyncio.events, "_set_event_loop_policy", None)
    if setter is None:
        asyncio.set_event_loop_policy(policy)
    else:
        setter(policy)


def warn_policy_deprecated(name, stacklevel):
    """3.14's warning for a policy API, worded as asyncio words its own
    (``'asyncio.set_event_loop_policy' is deprecated and slated for removal in Python 3.16``);
    ``stacklevel`` counts from the caller of this function."""
    import warnings

    major, minor = POLICIES_REMOVED_IN
    warnings.warn(
        f"{name!r} is deprecated and slated for removal in Python {major}.{minor}",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )

#: asyncio's TLS layer (``sslproto``): 3.11 replaced 3.10's design (an ``_SSLPipe`` under a
#: plain Protocol) with the buffered state machine tokioloop implements natively. On 3.10 the
#: running version's own layer is used, so its semantics stay 3.10's. Detected by the new
#: layer's state enum.
NATIVE_TLS = hasattr(__import__("asyncio.sslproto").sslproto, "SSLProtocolState")

#: A custom exception handler runs inside the failing task's or handle's context (3.12+,
#: CPython gh-96704). The change is inside ``call_exception_handler``'s body: no attribute
#: tells it, so the version does.
EXCEPTION_HANDLER_IN_CALLBACK_CONTEXT = VERSION >= (3, 12)


#: ``create_unix_server(cleanup_socket=)``: the socket file is removed when the server closes
#: (3.13+); before it asyncio leaves the file in place.
UNIX_SERVER_CLEANUP = "cleanup_socket" in inspect.signature(
    asyncio.SelectorEventLoop.create_unix_server
).parameters

#: asyncio's "error while attempting to bind" message quotes the whole OSError (3.13+) rather
#: than its strerror. A message change: by version.
BIND_ERROR_NAMES_WHOLE_ERROR = VERSION >= (3, 13)

#: A connection's protocol callbacks, ``connection_made`` included, all run in one context: a
#: copy of the one ``create_connection()`` ran in, or for a server's connections, a copy per
#: connection of the one the server was made in (3.15+). Before it ``connection_made`` ran in a
#: context of its own, so what it set was not seen by ``data_received``. Detected by the
#: ``context`` parameter asyncio's transports gained for it.
CONNECTION_CONTEXT = "context" in inspect.signature(
    __import__("asyncio.selector_events").selector_events._SelectorTransport.__init__
).parameters


#: ``set_default_executor`` refuses anything but a ThreadPoolExecutor (3.11+); 3.10 warns.
DEFAULT_EXECUTOR_MUST_BE_THREAD_POOL = VERSION >= (3, 11)

#: ``Server.wait_closed()`` on a closed server waits for its connections to go (3.12.1+, CPython
#: gh-79033); before it, it returns at once once the server is closed. A body change: by version.
WAIT_CLOSED_WAITS_FOR_CLIENTS = sys.version_info >= (3, 12, 1)

#: 3.12+: the socket transport's ``writelines()`` is its own and names itself in its errors
#: ("Cannot call writelines() after write_eof()"); before, it joined and called ``write()``.
SOCKET_WRITELINES_OWN = "writelines" in vars(
    __import__("asyncio.selector_events").selector_events._SelectorSocketTransport
)

#: The read pipe transport's ``is_reading()`` (3.11+); on 3.10 it is ``ReadTransport``'s, which
#: raises NotImplementedError. Asked of the unix transport class (absent off POSIX).
READ_PIPE_HAS_IS_READING = "is_reading" in vars(
    getattr(getattr(asyncio, "unix_events", None), "_UnixReadPipeTransport", object)
)


def _names_in_body(func, name):
    """How often ``func``'s compiled body refers to ``name`` (an attribute, global or constant).

    For bug fixes that change only a method's body, and that CPython backports to patch
    releases: reading the running asyncio's own code answers for every patch release, where a
    version number would have to guess which one got the fix."""
    return sum(1 for instr in dis.get_instructions(func) if instr.argval == name)


#: sendfile leaves the file at ``offset`` + bytes sent even when nothing was sent, and its
#: fallback seeks to ``offset`` even when it is 0 (CPython gh-150107). Detected by asyncio's
#: native position helper, which lost its ``total_sent`` argument with this behaviour (both
#: are in 3.14.10 and 3.15.2, neither in 3.13.0).
SENDFILE_ALWAYS_SETS_POSITION = "total_sent" not in inspect.signature(
    __import__("asyncio.unix_events").unix_events._UnixSelectorEventLoop
    ._sock_sendfile_update_filepos
).parameters

#: ``Server.serve_forever()``, when cancelled, closes the client connections (``close_clients``)
#: before it waits for them (CPython gh-123720); before it, a client that never hangs up keeps
#: the cancelled call waiting.
SERVE_FOREVER_CLOSES_CLIENTS = _names_in_body(asyncio.Server.serve_forever, "close_clients") > 0

#: ``start_tls(server_side=True)`` on a StreamReaderProtocol hands the ciphertext its
#: StreamReader already buffered (a ClientHello that came early) to the TLS layer
#: (CPython gh-142352).
START_TLS_TAKES_READER_BUFFER = (
    _names_in_body(asyncio.BaseEventLoop.start_tls, "_stream_reader") > 0
)

#: ``create_connection(sock=...)`` (and every path through ``_create_connection_transport``)
#: closes a caller's socket when no transport could be made for it (CPython gh-153133): the
#: fix adds a second ``close`` to the body, besides the one closing a transport that failed.
TRANSPORT_FAILURE_CLOSES_SOCK = (
    _names_in_body(asyncio.BaseEventLoop._create_connection_transport, "close") >= 2
)

#: A TLS transport counts as closing once the transport under it is, and ssl_shutdown_timeout
#: bounds the whole close: it keeps running (or starts, when the peer began the shutdown)
#: after close_notify until the connection is lost, so a peer that stops reading cannot hold
#: the close open. Detected by the TLS protocol's helper that came with it.
TLS_SHUTDOWN_TIMEOUT_UNTIL_LOST = hasattr(
    __import__("asyncio.sslproto").sslproto.SSLProtocol, "_is_transport_closing"
)


class _Absent:
    """A class attribute that is not there: the running version's asyncio has no such method."""

    def __init__(self, name, owner_name):
        self._name = name
        self._owner_name = owner_name

    def __get__(self, instance, owner=None):
        raise AttributeError(
            f"'{self._owner_name}' object has no attribute '{self._name}' "
            f"(not in Python {VERSION[0]}.{VERSION[1]}'s asyncio)"
        )


def _parameter_gate(func, reference_signature):
    """``func`` taking only the arguments ``reference_signature`` takes, or None if it already does.

    An argument the reference lacks is refused with the TypeError Python raises for it.
    """
    ours = inspect.signature(func).parameters
    theirs = reference_signature.parameters
    refused = frozenset(
        name for name, p in ours.items()
        if name not in theirs and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )
    if not refused:
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in theirs.values()):
        max_positional = None
    else:
        max_positional = sum(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in theirs.values()
        )
    qualname = func.__name__

    @functools.wraps(func)
    def gated(*args, **kwargs):
        if max_positional is not None and len(args) > max_positional:
            raise TypeError(
                f"{qualname}() takes {max_positional} positional arguments but {len(args)} were given"
            )
        for key in kwargs:
            if key in refused:
                raise TypeError(f"{qualname}() got an unexpected keyword argument '{key}'")
        return func(*args, **kwargs)

    gated.__signature__ = reference_signature
    if inspect.iscoroutinefunction(func):
        # Callers that ask (asyncio.iscoroutinefunction, inspect) still see a coroutine function.
        if hasattr(inspect, "markcoroutinefunction"):
            inspect.markcoroutinefunction(gated)
        else:
            gated._is_coroutine = asyncio.coroutines._is_coroutine
    return gated


def conform_to_stdlib(cls, reference, own=()):
    """Give ``cls`` the running version's API shape of ``reference`` (see the module doc).

    Methods written natively (builtins) gate themselves and are left alone; ``own`` names
    tokioloop's own public methods, which asyncio has on no version.
    """
    for name in dir(cls):
        if name.startswith("_") or name in own:
            continue
        attr = inspect.getattr_static(cls, name)
        if not callable(attr):
            continue
        if not hasattr(reference, name):
            setattr(cls, name, _Absent(name, cls.__name__))
            continue
        if inspect.isbuiltin(attr) or inspect.ismethoddescriptor(attr):
            continue
        try:
            gated = _parameter_gate(attr, inspect.signature(getattr(reference, name)))
        except (TypeError, ValueError):  # no signature to compare
            continue
        if gated is not None:
            setattr(cls, name, gated)
    return cls

# 3.13 shows a callback's arguments in handle reprs and callback error messages only in debug
# mode, through a `debug=` keyword of asyncio's formatter.
FORMAT_CALLBACK_TAKES_DEBUG = "debug" in inspect.signature(
    __import__("asyncio.format_helpers").format_helpers._format_callback_source
).parameters
