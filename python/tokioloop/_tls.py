"""TLS: ``ssl=`` on every connection path, ``start_tls``, and the layer that speaks TLS.

A TLS connection is two stacked halves, as in asyncio: the native socket transport
(``_transport.SocketTransport``) carries ciphertext, and a TLS protocol on top of it drives an
``ssl.SSLObject`` over two ``ssl.MemoryBIO``s and offers the application its own transport.
The TLS protocol is chosen by ``tls_protocol_class()``: the one with the running CPython's own
semantics. Everything here is once per connection; the per-record work is the TLS protocol's.

Callers: ``_net.NetSupport`` (create_connection, the Unix variants, connect_accepted_socket
and the accepting side of servers) calls ``Loop._make_ssl_transport``; ``start_tls`` is a
loop method of its own.
"""

from __future__ import annotations

from asyncio import sslproto

try:
    import ssl
except ImportError:  # pragma: no cover - interpreter built without ssl
    ssl = None


def tls_protocol_class():
    """The class of the TLS layer: built like asyncio's ``sslproto.SSLProtocol``."""
    return sslproto.SSLProtocol


def _tls_protocol(loop, app_protocol, sslcontext, waiter, server_side, server_hostname,
                  call_connection_made, ssl_handshake_timeout, ssl_shutdown_timeout):
    optional = {}
    if ssl_shutdown_timeout is not None:
        # (3.10's TLS layer has no shutdown timeout; its loop methods refuse the argument.)
        optional["ssl_shutdown_timeout"] = ssl_shutdown_timeout
    return tls_protocol_class()(
        loop, app_protocol, sslcontext, waiter, server_side, server_hostname,
        call_connection_made=call_connection_made,
        ssl_handshake_timeout=ssl_handshake_timeout, **optional,
    )


def context_from_ssl_argument(ssl_argument):
    """asyncio's reading of ``ssl=``: a context is used as given; ``True`` asks the TLS layer
    for a default context (``ssl.create_default_context()``, looked up when needed)."""
    return None if isinstance(ssl_argument, bool) else ssl_argument


class TlsSupport:
    """Mixin for ``Loop``: the TLS transport constructor and ``start_tls``."""

    def _make_ssl_transport(
        self, rawsock, protocol, sslcontext, waiter=None, *, server_side=False,
        server_hostname=None, extra=None, server=None, ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Stack a TLS layer on a socket transport for ``rawsock``; return the application's
        transport. ``waiter`` is resolved once the handshake is done (or fails with its error)."""
        tls = _tls_protocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname, True,
            ssl_handshake_timeout, ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, tls, extra=extra, server=server)
        return tls._app_transport

    async def start_tls(self, transport, protocol, sslcontext, *, server_side=False,
                        server_hostname=None, ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """Upgrade ``transport`` to TLS; return the new transport ``protocol`` must use.

        On any failure (cancellation included) the original transport is closed."""
        if ssl is None:
            raise RuntimeError("Python ssl module is not available")
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        tls = _tls_protocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname, False,
            ssl_handshake_timeout, ssl_shutdown_timeout,
        )
        # Reading stops first, so no ciphertext reaches the layer before connection_made.
        transport.pause_reading()
        transport.set_protocol(tls)
        connect = self.call_soon(tls.connection_made, transport)
        resume = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            connect.cancel()
            resume.cancel()
            raise
        finally:
            waiter = None  # no traceback -> frame -> exception cycle
        return tls._app_transport
