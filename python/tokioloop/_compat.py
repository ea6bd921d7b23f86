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
import functools
import inspect
import sys

VERSION = sys.version_info[:2]

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


def _body_mentions(function, name, *, without_source):
    """True if the running asyncio's ``function`` mentions ``name``: for body changes that
    were backported to bug-fix releases, so the version alone cannot tell. Where the stdlib
    ships no source, ``without_source`` (the version that introduced it) decides."""
    try:
        return name in inspect.getsource(function)
    except (OSError, TypeError):
        return without_source


#: A cancelled ``Server.serve_forever()`` closes the server's connections too, before waiting
#: for them to go (else it waits until each peer hangs up).
#: (gh-123720, 3.14 and backports.)
SERVE_FOREVER_CLOSES_CLIENTS = _body_mentions(
    asyncio.base_events.Server.serve_forever, "close_clients", without_source=VERSION >= (3, 14)
)

#: A server-side ``start_tls()`` over a ``StreamReaderProtocol`` hands the bytes its
#: StreamReader already holds (a ClientHello that came with the STARTTLS command) to the TLS
#: layer, instead of leaving them as plain text in the reader.
#: (gh-142352, 3.15, backported to 3.14.x.)
START_TLS_CARRIES_STREAM_BUFFER = _body_mentions(
    asyncio.base_events.BaseEventLoop.start_tls, "_stream_reader", without_source=VERSION >= (3, 15)
)

#: sendfile's read-and-send fallback seeks a seekable file to ``offset`` even when it is 0 (so
#: it sends from there, not from where the file was); before it, only a non-zero offset was
#: sought. (3.14.)
SENDFILE_FALLBACK_SEEKS_TO_OFFSET = not _body_mentions(
    asyncio.base_events.BaseEventLoop._sendfile_fallback, "if offset:",
    without_source=VERSION < (3, 14),
)


def seek_for_sendfile_fallback(file, offset):
    """Where the fallback starts reading, as the running asyncio decides."""
    if SENDFILE_FALLBACK_SEEKS_TO_OFFSET:
        if hasattr(file, "seek"):
            file.seek(offset)
    elif offset:
        file.seek(offset)


#: ``set_default_executor`` refuses anything but a ThreadPoolExecutor (3.11+); 3.10 warns.
DEFAULT_EXECUTOR_MUST_BE_THREAD_POOL = VERSION >= (3, 11)

#: ``Server.wait_closed()`` on a closed server waits for its connections to go (3.12.1+, CPython
#: gh-79033); before it, it returns at once once the server is closed. A body change: by version.
WAIT_CLOSED_WAITS_FOR_CLIENTS = sys.version_info >= (3, 12, 1)


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


def conform_to_stdlib(cls, reference):
    """Give ``cls`` the running version's API shape of ``reference`` (see the module doc).

    Methods written natively (builtins) gate themselves and are left alone.
    """
    for name in dir(cls):
        if name.startswith("_"):
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
