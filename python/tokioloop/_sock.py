"""The low-level socket API: ``loop.sock_*`` coroutines on top of add_reader/add_writer, and
both sendfiles: ``sock_sendfile`` on a socket and ``sendfile`` on a transport.

Each operation tries its syscall at once; if the socket would block, it watches the fd with
the loop's level-triggered readiness and retries from the callback until the syscall either
succeeds or fails, resolving a future. The watch ends when that future is done, whether by the
syscall or by cancellation, unless a later operation on the same fd has taken the watch over
(as asyncio's selector loop does when a second add_reader cancels the first handle).

The transport ``sendfile`` lives here because its zero-copy path is ``sock_sendfile`` on (a
duplicate of) the transport's socket; its fallback writes through the transport under the
transport's flow control, as asyncio's ``BaseEventLoop._sendfile_fallback`` does.

Contract: ``SockSupport`` is a mixin of ``Loop`` (``_loop.py``). Callers: asyncio's public API
through ``Loop``; ``_net.py`` and ``_serve.py`` (``_reject_ssl_socket``).
"""

from __future__ import annotations

import errno
import io
import os
import socket
from asyncio import constants, exceptions, protocols

from . import _compat
from ._tokioloop import (
    _SENDFILE_AVAILABLE,
    _sendfile,
    _sock_recv_now,
    _sock_recv_wait,
    _sock_send_now,
    _sock_sendall_wait,
)

try:
    import ssl
except ImportError:  # pragma: no cover - interpreter built without ssl
    ssl = None

_HAS_IPv6 = hasattr(socket, "AF_INET6")
_SENDFILE_FALLBACK_CHUNK = 16384  # what asyncio's transport fallback reads per step
_READ = "r"
_WRITE = "w"


def _reject_ssl_socket(sock):
    # The exact-type test first: isinstance() through the class hierarchy costs more than
    # the rest of a sock_recv that finds data waiting.
    if type(sock) is not socket.socket and ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


class SockSupport:
    """Mixin for ``Loop``: sock_recv[_into], sock_recvfrom[_into], sock_sendall, sock_sendto,
    sock_connect, sock_accept, sock_sendfile, and sendfile over a transport."""

    # -- shared plumbing ------------------------------------------------------------------

    def _sock_checks(self, sock):
        _reject_ssl_socket(sock)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    def _sock_watch(self, fut, fd, kind, callback, *args):
        """Call ``callback(*args)`` whenever ``fd`` is ready for ``kind``, until ``fut`` is done.

        The watch is removed only if it is still ours: a later add_reader/add_writer on the fd
        (another sock_* call, or user code) replaced it, as with asyncio's selector loop.
        """
        self._check_closed()
        self._ensure_fd_no_transport(fd)
        if kind == _READ:
            handle = self._add_reader(fd, callback, args)
            fut.add_done_callback(lambda _fut: self._remove_reader(fd, handle))
        else:
            handle = self._add_writer(fd, callback, args)
            fut.add_done_callback(lambda _fut: self._remove_writer(fd, handle))

    def _sock_retry(self, fut, sock, method, *args):
        """Reader/writer callback: call ``sock.<method>(*args)``, looked up afresh each time as
        asyncio does; resolve ``fut`` unless it would block."""
        if not fut.done():
            _settle(fut, _call, sock, method, args)
        fut = None  # see _settle: this frame is the f_back of one the traceback holds

    async def _sock_read_op(self, sock, method, *args):
        try:
            return _call(sock, method, args)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._sock_retry_when_ready(sock, _READ, method, *args)

    async def _sock_retry_when_ready(self, sock, kind, method, *args):
        """Retry ``sock.<method>(*args)`` whenever ``sock`` is ready for ``kind`` until it
        does not block; return its result or raise its exception."""
        fut = self.create_future()
        self._sock_watch(fut, sock.fileno(), kind, self._sock_retry, fut, sock, method, *args)
        if method in ("recvfrom", "recvfrom_into"):
            # A datagram socket's error (an ICMP refusal) must wake this reader too.
            self._watch_errors(sock.fileno())
        try:
            return await fut
        finally:
            # An exception leaving here has this frame in its traceback: it must not also
            # hold the future that holds the exception (a cycle only the GC would free).
            fut = None

    # -- receiving ------------------------------------------------------------------------

    async def sock_recv(self, sock, n):
        """Receive up to ``n`` bytes from ``sock``; b'' at end of stream."""
        self._sock_checks(sock)
        fd = sock.fileno()
        data = _sock_recv_now(fd, n)
        if data is not None:
            return data
        fut, handle = _sock_recv_wait(self, fd, n)
        try:
            return await fut
        finally:
            if not fut.done() or fut.cancelled():  # left early: end the watch if still ours
                self._remove_reader(fd, handle)
            fut = None  # no traceback -> frame -> future -> exception cycle

    async def sock_recv_into(self, sock, buf):
        """Receive into the writable buffer ``buf``; return the number of bytes written."""
        self._sock_checks(sock)
        return await self._sock_read_op(sock, "recv_into", buf)

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to ``bufsize`` bytes; return ``(data, address)``."""
        self._sock_checks(sock)
        return await self._sock_read_op(sock, "recvfrom", bufsize)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into ``buf``; return ``(nbytes, address)``."""
        self._sock_checks(sock)
        if not nbytes:
            nbytes = len(buf)
        return await self._sock_read_op(sock, "recvfrom_into", buf, nbytes)

    # -- sending --------------------------------------------------------------------------

    async def sock_sendall(self, sock, data):
        """Send all of ``data``, waiting for the socket to drain as often as needed."""
        self._sock_checks(sock)
        fd = sock.fileno()
        sent = _sock_send_now(fd, data)
        if sent is None:
            return None
        fut, handle = _sock_sendall_wait(self, fd, data, sent)
        try:
            return await fut
        finally:
            if not fut.done() or fut.cancelled():  # left early: end the watch if still ours
                self._remove_writer(fd, handle)
            fut = None  # no traceback -> frame -> future -> exception cycle

    async def sock_sendto(self, sock, data, address):
        """Send the datagram ``data`` to ``address``; return the number of bytes sent."""
        self._sock_checks(sock)
        try:
            return sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._sock_retry_when_ready(sock, _WRITE, "sendto", data, 0, address)

    # -- connecting and accepting ---------------------------------------------------------

    async def sock_connect(self, sock, address):
        """Connect ``sock`` to ``address``, resolving a host name first for IP sockets."""
        self._sock_checks(sock)
        if sock.family == socket.AF_INET or (_HAS_IPv6 and sock.family == socket.AF_INET6):
            infos = await self._resolve_address(
                address, family=sock.family, type=sock.type, proto=sock.proto
            )
            address = infos[0][4]
        fut = self.create_future()
        if not _settle(fut, sock.connect, address):
            # The connection goes on in the background (EINPROGRESS, or EINTR: issue 23618);
            # writability tells when it has finished, SO_ERROR how.
            self._sock_watch(fut, sock.fileno(), _WRITE, self._sock_connect_done, fut, sock, address)
        try:
            return await fut
        finally:
            fut = None  # break the traceback -> frame -> future cycle on error

    def _sock_connect_done(self, fut, sock, address):
        if not fut.done():
            _settle(fut, _connect_outcome, sock, address)
        fut = None  # see _settle: this frame is the f_back of one the traceback holds

    async def sock_accept(self, sock):
        """Accept a connection on the listening ``sock``; return ``(conn, address)``.

        ``conn`` is non-blocking."""
        self._sock_checks(sock)
        return await self._sock_read_op(sock, _ACCEPT)

    # -- sendfile -------------------------------------------------------------------------

    async def sock_sendfile(self, sock, file, offset=0, count=None, *, fallback=True):
        """Send ``file`` over the stream socket ``sock``; return the number of bytes sent.

        Uses os.sendfile when it can; otherwise, if ``fallback`` is true, reads the file and
        sends it with sock_sendall."""
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        _reject_ssl_socket(sock)
        _check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        if not _SENDFILE_AVAILABLE:
            raise exceptions.SendfileNotAvailableError("os.sendfile() is not available")
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            size = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        blocksize = count if count else size
        if not blocksize:
            return 0  # empty file
        fut = self.create_future()
        state = _SendfileState(sock, fileno, offset, count, blocksize)
        self._sendfile_step(fut, state)
        try:
            return await fut
        finally:
            fut = None  # no traceback -> frame -> future -> exception cycle

    def _sendfile_step(self, fut, state):
        """One os.sendfile call; re-arms itself as a writer callback until done."""
        fd = state.sock.fileno()
        if state.watching is not None:
            # Stop the watch first: it is re-armed below only if more remains to send.
            self._remove_writer(state.watching)
        if fut.cancelled():
            state.restore_position()
            return
        if state.count:
            state.blocksize = state.count - state.total
            if state.blocksize <= 0:
                state.restore_position()
                fut.set_result(state.total)
                return
        try:
            # os.sendfile's system call, made natively: blocking-call detectors patch
            # os.sendfile and allow only asyncio's own callers.
            sent = _sendfile(fd, state.fileno, state.offset, state.blocksize)
        except (BlockingIOError, InterruptedError):
            self._sendfile_rearm(fut, state, fd)
        except OSError as exc:
            state.restore_position()
            fut.set_exception(_sendfile_error(exc, state))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            state.restore_position()
            fut.set_exception(exc)
        else:
            if sent == 0:  # end of file
                state.restore_position()
                fut.set_result(state.total)
            else:
                state.offset += sent
                state.total += sent
                self._sendfile_rearm(fut, state, fd)
        finally:
            fut = None  # the exception's traceback holds this frame: no cycle through it

    def _sendfile_rearm(self, fut, state, fd):
        if not state.cancel_hooked:
            state.cancel_hooked = True
            sock = state.sock

            def on_done(done_fut):
                if done_fut.cancelled():
                    sock_fd = sock.fileno()
                    if sock_fd != -1:
                        self._remove_writer(sock_fd)

            fut.add_done_callback(on_done)
        state.watching = fd
        # The private form: a transport's socket is lent to loop.sendfile this way.
        self._check_closed()
        self._add_writer(fd, self._sendfile_step, (fut, state))

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        _seek_to_start(file, offset)
        chunk = constants.SENDFILE_FALLBACK_READBUFFER_SIZE
        blocksize = min(count, chunk) if count else chunk
        buf = bytearray(blocksize)
        total = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                got = await self.run_in_executor(None, file.readinto, view)
                if not got:
                    break  # end of file
                await self.sock_sendall(sock, view[:got])
                total += got
            return total
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)

    # -- sendfile over a transport --------------------------------------------------------

    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        """Send ``file`` over ``transport``; return the number of bytes sent.

        Uses os.sendfile on the transport's socket when the transport allows it, else (if
        ``fallback``) reads the file and writes it, honouring the transport's flow control.
        The file position is left just past what was sent."""
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = getattr(transport, "_sendfile_compatible", constants._SendfileMode.UNSUPPORTED)
        if mode is constants._SendfileMode.UNSUPPORTED:
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode is constants._SendfileMode.TRY_NATIVE:
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except exceptions.SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(
                f"fallback is disabled and native sendfile is not supported for transport "
                f"{transport!r}"
            )
        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(self, transport, file, offset, count):
        """os.sendfile on the transport's socket, once its write buffer has drained; reading
        is paused meanwhile so nothing interleaves."""
        resume_reading = transport.is_reading()
        transport.pause_reading()
        try:
            await transport._make_empty_waiter()
        except BaseException:
            if resume_reading:
                transport.resume_reading()
            raise
        # The loop's registry may belong to the transport for this fd (a native transport
        # owns its socket there and add_writer on it is refused), so the zero-copy send
        # watches a duplicate descriptor of the same socket. The transport stays registered,
        # with reading paused and its write queue empty (write() is refused meanwhile).
        duplicate = None
        try:
            duplicate = transport._sock.dup()
            return await self.sock_sendfile(duplicate, file, offset, count, fallback=False)
        finally:
            if duplicate is not None:
                self._remove_writer(duplicate.fileno())  # normally gone already
                duplicate.close()
            transport._reset_empty_waiter()
            if resume_reading:
                transport.resume_reading()

    async def _sendfile_fallback(self, transport, file, offset, count):
        _seek_to_start(file, offset)
        blocksize = min(count, _SENDFILE_FALLBACK_CHUNK) if count else _SENDFILE_FALLBACK_CHUNK
        buf = bytearray(blocksize)
        total = 0
        stand_in = _SendfileFallbackProtocol(self, transport)
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        return total
                view = memoryview(buf)[:blocksize]
                got = await self.run_in_executor(None, file.readinto, view)
                if not got:
                    return total  # end of file
                await stand_in.drain()
                # A copy: the buffer is reused for the next chunk.
                transport.write(bytes(view[:got]))
                total += got
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)
            await stand_in.restore()


def _seek_to_start(file, offset):
    """Where a sendfile fallback starts reading: at ``offset``, also 0 (gh-150107); before
    that fix asyncio moved the file only for a non-zero offset."""
    if _compat.SENDFILE_ALWAYS_SETS_POSITION:
        if hasattr(file, "seek"):
            file.seek(offset)
    elif offset:
        file.seek(offset)


def _sendfile_error(exc, state):
    """What a failed os.sendfile step reports. (A function of its own: the exception's
    traceback holds the step's frame, which must not hold a local naming this one.)"""
    if state.total == 0:
        # Typically a file os.sendfile cannot map: the caller may fall back.
        return exceptions.SendfileNotAvailableError("os.sendfile call failed")
    if state.watching is not None and exc.errno == errno.ENOTCONN and (
        type(exc) is not ConnectionError
    ):
        # The peer went away mid-transfer: report it as ConnectionError, the same on every
        # POSIX system.
        normalized = ConnectionError("socket is not connected", errno.ENOTCONN)
        normalized.__cause__ = exc
        return normalized
    return exc


class _SendfileState:
    __slots__ = ("sock", "fileno", "offset", "count", "blocksize", "total", "watching",
                 "cancel_hooked")

    def __init__(self, sock, fileno, offset, count, blocksize):
        self.sock = sock
        self.fileno = fileno
        self.offset = offset
        self.count = count
        self.blocksize = blocksize
        self.total = 0
        self.watching = None
        self.cancel_hooked = False

    def restore_position(self):
        # Leave the file position just past what was sent, as asyncio does (before
        # gh-150107: only once something was sent).
        if self.total > 0 or _compat.SENDFILE_ALWAYS_SETS_POSITION:
            os.lseek(self.fileno, self.offset, os.SEEK_SET)


_ACCEPT = object()  # pseudo-method for _call: accept() and make the new socket non-blocking


def _settle(fut, operation, *args):
    """Resolve ``fut`` with ``operation(*args)``, or with its exception; False if it would block."""
    try:
        result = operation(*args)
    except (BlockingIOError, InterruptedError):
        return False
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
    finally:
        # The exception's traceback holds this frame, and through f_back its caller's: neither
        # may keep the future that holds the exception (a cycle only the GC would free).
        # Callers passing their own reference to ``fut`` drop it after the call.
        fut = None
    return True


def _connect_outcome(sock, address):
    """After a background connect: raise its error (from SO_ERROR), if any."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err != 0:
        raise OSError(err, f"Connect call failed {address}")


def _call(sock, method, args):
    if method is _ACCEPT:
        conn, address = sock.accept()
        conn.setblocking(False)
        return conn, address
    return getattr(sock, method)(*args)


def _check_sendfile_params(sock, file, offset, count):
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if not sock.type == socket.SOCK_STREAM:
        raise ValueError("only SOCK_STREAM type sockets are supported")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")


def _writing_paused(transport):
    """Whether the transport has told its protocol to pause writing."""
    paused = getattr(transport, "_protocol_paused", None)
    if paused is not None:
        return bool(paused)
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]


class _SendfileFallbackProtocol(protocols.Protocol):
    """Stands in for the transport's protocol while the fallback writes the file: reading is
    paused, and pause_writing/resume_writing gate the next chunk. ``restore`` puts the
    original protocol back in the state it was in."""

    def __init__(self, loop, transport):
        self._loop = loop
        self._transport = transport
        self._proto = transport.get_protocol()
        self._should_resume_reading = transport.is_reading()
        self._should_resume_writing = _writing_paused(transport)
        transport.pause_reading()
        transport.set_protocol(self)
        self._write_ready_fut = loop.create_future() if self._should_resume_writing else None

    async def drain(self):
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self._write_ready_fut is not None:
            await self._write_ready_fut

    def connection_made(self, transport):
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc):
        if self._write_ready_fut is not None:
            # Writing was paused, so the peer left before taking the whole file.
            if exc is None:
                self._write_ready_fut.set_exception(ConnectionError("Connection is closed by peer"))
            else:
                self._write_ready_fut.set_exception(exc)
        self._proto.connection_lost(exc)

    def pause_writing(self):
        if self._write_ready_fut is None:
            self._write_ready_fut = self._loop.create_future()

    def resume_writing(self):
        if self._write_ready_fut is not None:
            self._write_ready_fut.set_result(False)
            self._write_ready_fut = None

    def data_received(self, data):
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self):
        raise RuntimeError("Invalid state: reading should be paused")

    async def restore(self):
        self._transport.set_protocol(self._proto)
        if self._should_resume_reading:
            self._transport.resume_reading()
        if self._write_ready_fut is not None:
            # Nobody waits on it any more; cancelling keeps it from being logged.
            self._write_ready_fut.cancel()
        if self._should_resume_writing:
            self._proto.resume_writing()
