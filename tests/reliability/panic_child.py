"""One panic trial, run in a child process by test_panics.py: ``python panic_child.py POINT
CERTDIR``.

Arms the fault point POINT of a tokioloop built with the cargo feature ``fault-points``, does the
one thing that runs it, and prints one JSON line: how the panic came out (``raised``: the type of
the exception that reached this code; ``handler``: exception types the loop's exception handler
received; ``unraisable``: types reported to ``sys.unraisablehook``), and whether the loop could
still be closed afterwards. A crash or a hang shows up in the parent as this process's exit status
or timeout, which is the point of running each trial in its own process.
"""

import asyncio
import gc
import json
import os
import socket
import sys

import tokioloop
from tokioloop import _tokioloop

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def arm(point):
    _tokioloop._arm_fault_point(point)


async def _socket_pair_transport(loop):
    a, b = socket.socketpair()
    transport, protocol = await loop.create_unix_connection(asyncio.Protocol, sock=a)
    return transport, b


def _run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, 10))


def trial_call_soon(loop, point):
    arm(point)
    loop.call_soon(print)


def trial_call_soon_threadsafe(loop, point):
    arm(point)
    loop.call_soon_threadsafe(print)


def trial_create_future(loop, point):
    arm(point)
    loop.create_future()


def trial_run(loop, point):
    arm(point)
    loop.run_until_complete(asyncio.sleep(0))


def trial_handle_cancel(loop, point):
    handle = loop.call_soon(print)
    arm(point)
    handle.cancel()


def trial_timer_cancel(loop, point):
    handle = loop.call_later(10, print)
    arm(point)
    handle.cancel()


def trial_park_hook(loop, point):
    arm(point)
    loop.run_until_complete(asyncio.sleep(0.01))


def trial_dns_worker(loop, point):
    arm(point)
    _run(loop, loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM))


def trial_stream_write(loop, point):
    async def main():
        transport, peer = await _socket_pair_transport(loop)
        try:
            arm(point)
            transport.write(b"x")
        finally:
            transport.abort()
            peer.close()

    _run(loop, main())


def trial_stream_read(loop, point):
    async def main():
        transport, peer = await _socket_pair_transport(loop)
        try:
            arm(point)
            peer.send(b"x")
            await asyncio.sleep(0.2)
        finally:
            transport.abort()
            peer.close()

    _run(loop, main())


def trial_sock_wait(loop, point):
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        recv = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        arm(point)
        b.send(b"x")
        try:
            await asyncio.wait_for(recv, 0.5)
        except asyncio.TimeoutError:
            pass

    try:
        _run(loop, main())
    finally:
        a.close()
        b.close()


def trial_datagram_sendto(loop, point):
    async def main():
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            arm(point)
            transport.sendto(b"x", transport.get_extra_info("sockname"))
        finally:
            transport.close()

    _run(loop, main())


def trial_tls_app_write(loop, point, certdir):
    import _tls

    certs = _tls.Certs(certdir)

    async def main():
        server = await loop.create_server(
            asyncio.Protocol, "127.0.0.1", 0, ssl=_tls.server_context(certs))
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(
            asyncio.Protocol, "127.0.0.1", port, ssl=_tls.client_context(certs),
            server_hostname="localhost")
        try:
            arm(point)
            transport.write(b"x")
        finally:
            transport.abort()
            server.close()

    _run(loop, main())


TRIALS = {name[len("trial_"):]: func for name, func in globals().items()
          if name.startswith("trial_")}
# Dropping the loop (LoopCore's Drop): the trial needs the last reference, so main runs it.
POINTS = sorted([*TRIALS, "loop_drop"])


def _drop_closed_loop(holder, point):
    loop = holder.pop()  # the list held the only other reference
    loop.close()
    arm(point)
    del loop
    gc.collect()


def main():
    point, certdir = sys.argv[1], sys.argv[2]
    unraisable, handled = [], []
    sys.unraisablehook = lambda u: unraisable.append(type(u.exc_value).__name__)
    loop = tokioloop.new_event_loop()
    loop.set_exception_handler(
        lambda _, context: handled.append(type(context.get("exception")).__name__))
    raised = None
    try:
        if point == "loop_drop":
            holder, loop = [loop], None
            _drop_closed_loop(holder, point)
        elif point == "tls_app_write":
            TRIALS[point](loop, point, certdir)
        else:
            TRIALS[point](loop, point)
    except BaseException as exc:  # noqa: B036 - a PanicException is a BaseException
        raised = type(exc).__name__
    closed = None
    if loop is not None:
        try:
            loop.close()
            closed = loop.is_closed()
        except BaseException as exc:  # noqa: B036
            closed = f"close() raised {type(exc).__name__}: {exc}"
    _tokioloop._arm_fault_point(None)
    gc.collect()
    print(json.dumps({"raised": raised, "handler": handled, "unraisable": unraisable,
                      "closed": closed}), flush=True)


if __name__ == "__main__":
    main()
