"""The Python half of the seam: every method the native module calls back by name.

Rust calls these with ``intern!(py, "...")`` and ``call_method``, so neither compiler nor type
checker sees the call. Each Protocol below lists what one native type expects of the Python
object it was handed (its owner), one line per method: when Rust calls it, what it must do,
and whether it may raise. ``tests/test_seam.py`` checks both directions: every owner class
provides its Protocol, and every underscore name Rust calls on an owner is in some Protocol.

Contract: nothing here runs; the module is read by type checkers, by the test, and by people.
Who reads it: whoever renames a callback on either side. The other half of the seam, what
Python calls on the native types, is ``_tokioloop.pyi`` (checked by ``mypy.stubtest``).
"""

from __future__ import annotations

from typing import Any, Protocol


class StreamReadOwner(Protocol):
    """What a ``StreamEngine`` (``transports/stream/``) calls from its read path; a read
    pipe's owner (``ReadPipeTransport``, ``_pipes.py``) is only this. Rust calls these from
    the turn, holding no lock; what they raise goes to the loop's ``_transport_error``."""

    def _on_eof(self) -> None:
        """A read returned 0 bytes: ask ``protocol.eof_received()``, then stop reading or close."""

    def _fatal_error(self, exc: BaseException, message: str = ...) -> None:
        """A read failed (or the TLS layer refused ciphertext): report, then close at once."""


class StreamWriteOwner(Protocol):
    """What a ``StreamEngine`` calls from its write path (from ``write`` or from the turn when
    the fd turns writable). What they raise reaches ``write``'s caller or ``_transport_error``."""

    def _on_write_error(self, exc: OSError) -> None:
        """A queued write failed: drop the queue, close with ``exc``, fail a sendfile waiter."""

    def _on_drained(self) -> None:
        """The write queue became empty: finish a pending close, write_eof or sendfile wait."""

    def _maybe_pause_protocol(self) -> None:
        """After a write left the buffer above the high mark: call ``pause_writing`` once."""

    def _maybe_resume_protocol(self) -> None:
        """After a flush: call ``resume_writing`` if paused and at or below the low mark."""


class WritePipeOwner(StreamWriteOwner, Protocol):
    """A write pipe's owner (``WritePipeTransport``, ``_pipes.py``): the write path, plus the
    hang-up a write pipe watches its fd's read side for."""

    def _on_peer_closed(self) -> None:
        """The pipe's reader went away (the fd reported HUP/ERR): close as asyncio does."""


class StreamEngineOwner(StreamReadOwner, StreamWriteOwner, Protocol):
    """A socket's owner (``SocketTransport``, ``_transport.py``): both paths."""


class DatagramEngineOwner(Protocol):
    """The owner of a ``DatagramEngine`` (``transports/datagram.rs``): ``DatagramTransport``
    (``_datagram.py``). Called from the turn or from ``sendto``; may raise, which reaches the
    caller of ``sendto`` or the loop's exception handler."""

    def _fatal_error(self, exc: BaseException, message: str = ...) -> None:
        """A recvfrom/sendto failed with a non-transient error: report, then close at once."""

    def _start_writing(self) -> None:
        """A send would block: watch the fd for writability (the engine flushes on the event)."""

    def _on_drained(self) -> None:
        """The send queue became empty: stop watching for writability, finish a pending close."""

    def _maybe_pause_protocol(self) -> None:
        """After queueing a datagram above the high mark: call ``pause_writing`` once."""

    def _maybe_resume_protocol(self) -> None:
        """After a flush: call ``resume_writing`` if paused and at or below the low mark."""


class TlsLayerOwner(Protocol):
    """The Python subclass of ``TlsLayer`` (``transports/tls/``): ``SSLLayer`` (``_tls.py``).
    The native read and write paths call these on ``self`` when a step needs the state
    machine kept in Python; they may raise, and ``_fatal_error`` is how they end a connection."""

    def _do_handshake(self) -> None:
        """Ciphertext arrived while handshaking: advance the handshake."""

    def _do_flush(self) -> None:
        """Ciphertext arrived while flushing before shutdown: keep flushing."""

    def _do_shutdown(self) -> None:
        """Ciphertext arrived while shutting down: advance the close_notify exchange."""

    def _call_eof_received(self) -> None:
        """The peer sent close_notify: tell the application protocol ``eof_received``."""

    def _start_shutdown(self) -> None:
        """After the peer's close_notify: begin our side of the TLS shutdown."""

    def _fatal_error(self, exc: BaseException, message: str = ...) -> None:
        """A TLS read or write failed: report, then abort the lower transport."""

    def _control_app_writing(self) -> None:
        """The outgoing buffer crossed a water mark: pause or resume the app's writing."""


class LoopOwner(Protocol):
    """The Python subclass of ``LoopCore`` (``event_loop/``): ``Loop`` (``_loop.py`` and its
    mixins). The native turn calls these; what they raise propagates out of ``run_forever``,
    so they catch everything but SystemExit and KeyboardInterrupt themselves."""

    def _run_handle_debug(self, handle: Any) -> None:
        """Debug mode's step for each ready handle: run it timed, warn if slow."""

    def _report_slow_bridge_poll(self, future: Any, elapsed: float) -> None:
        """Debug mode: one poll of a Rust extension's bridge task took ``elapsed`` seconds, at
        least ``slow_callback_duration``: warn as of a slow callback."""

    def _callback_error(self, handle: Any, exc: BaseException) -> None:
        """A natively run callback raised: call the exception handler as ``Handle._run`` would."""

    def _transport_error(self, transport: Any, exc: BaseException) -> None:
        """A transport's own error path raised: call the exception handler with it."""

    def _report_slow_callback(self, what: Any, duration: float) -> None:
        """A callback (a handle, or a native transport's read or write: the transport) ran
        ``duration`` seconds, at least the telemetry's threshold: hand it to the hook."""

