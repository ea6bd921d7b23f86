"""Where I/O falls in the loop's order: asyncio looks at I/O on every iteration, and what a read
makes ready joins the queue behind the callbacks already there.

- A reader whose fd is ready runs in the next iteration, even while callbacks keep coming
  (asyncio's ``select(0)`` when work is ready).
- A ``data_received`` that schedules a callback sees that callback run before the same socket
  is read again (each iteration's I/O joins the ready queue behind the callbacks it finds).
- An fd found readable and writable in the same iteration has its reader run before its writer,
  whichever was added first and whichever became ready first (selector_events._process_events
  queues the reader first from the fd's one event mask).
"""

import asyncio
import os
import signal
import socket
import threading

import pytest

TIMEOUT = 30


def _steps_until_reader(loop, pair, send_at_step=None):
    """Runs a chain of call_soon steps with a reader on ``pair[0]``; returns how many steps had
    run when the reader did. ``send_at_step``: the step that makes the fd ready (None: it is
    ready before the chain starts)."""
    a, b = pair
    steps, fired = [], []

    def step(i):
        steps.append(i)
        if i == send_at_step:
            b.send(b"now")
        if fired or i >= 200:
            loop.stop()
        else:
            loop.call_soon(step, i + 1)

    def on_readable():
        fired.append(len(steps))
        a.recv(100)
        loop.remove_reader(a)

    if send_at_step is None:
        b.send(b"x")
    loop.add_reader(a, on_readable)
    loop.call_soon(step, 0)
    loop.run_forever()
    return fired


def test_ready_reader_runs_in_the_next_iteration_of_a_busy_loop(loop, pair):
    # The first iteration's select sees the fd ready; its reader runs behind step 0.
    assert _steps_until_reader(loop, pair) == [1]


def test_reader_made_ready_by_a_callback_runs_next_iteration(loop, pair):
    # Sent during step 3's iteration; the next iteration's select finds it, behind step 4.
    assert _steps_until_reader(loop, pair, send_at_step=3) == [5]


class Interleaving(asyncio.Protocol):
    """Logs each read and a callback each read schedules, then EOF."""

    def __init__(self, loop):
        self.loop = loop
        self.log = []
        self.done = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.log.append("data")
        self.loop.call_soon(self.log.append, "cb")

    def eof_received(self):
        self.log.append("eof")
        self.loop.call_soon(self.done.set_result, None)


class BufferedInterleaving(Interleaving, asyncio.BufferedProtocol):
    def __init__(self, loop):
        super().__init__(loop)
        self.buffer = bytearray(64 * 1024)

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.data_received(bytes(self.buffer[:nbytes]))


def _send_then_shut(port, size):
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"z" * size)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # until the server closes


@pytest.mark.parametrize("protocol", [Interleaving, BufferedInterleaving])
def test_callbacks_a_read_schedules_run_before_the_next_read(loop, protocol):
    async def main():
        made = []

        def factory():
            made.append(protocol(loop))
            return made[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        peer = threading.Thread(target=_send_then_shut, args=(port, 700 * 1024))
        peer.start()
        try:
            while not made:
                await asyncio.sleep(0.001)
            await asyncio.wait_for(made[0].done, TIMEOUT)
        finally:
            for proto in made:
                proto.transport.close()
            server.close()
            await server.wait_closed()
            await loop.run_in_executor(None, peer.join, TIMEOUT)
        return made[0].log

    log = loop.run_until_complete(main())
    assert log.count("data") >= 2, log
    # data1 cb1 data2 cb2 ... eof: every read's callback runs before the next read or the EOF.
    assert log == ["data", "cb"] * log.count("data") + ["eof"], log


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_signal_handler_runs_within_a_few_iterations_of_a_busy_loop(loop):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    steps, fired = [], []

    def step(i):
        steps.append(i)
        if i == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        if fired or i >= 200:
            loop.stop()
        else:
            loop.call_soon(step, i + 1)

    loop.add_signal_handler(signal.SIGUSR1, lambda: fired.append(len(steps)))
    try:
        loop.call_soon(step, 0)
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    # asyncio: the self-pipe is read in the next iteration, which schedules the handler for
    # the one after.
    assert fired and fired[0] <= 6, fired


@pytest.mark.parametrize("writer_first", [True, False])
def test_reader_runs_before_writer_when_both_were_ready_at_registration(loop, pair, writer_first):
    a, b = pair
    b.send(b"x")
    log = []

    def on_readable():
        log.append("reader")
        a.recv(100)
        loop.remove_reader(a)

    def on_writable():
        log.append("writer")
        loop.remove_writer(a)
        loop.stop()

    if writer_first:
        loop.add_writer(a, on_writable)
        loop.add_reader(a, on_readable)
    else:
        loop.add_reader(a, on_readable)
        loop.add_writer(a, on_writable)
    loop.run_forever()
    assert log == ["reader", "writer"]


@pytest.mark.parametrize("writer_first", [True, False])
def test_reader_runs_before_a_writer_that_was_already_firing(loop, pair, writer_first):
    # The writer fires every iteration (the fd stays writable); its second call makes the fd
    # readable, so the next iteration finds both ready: the reader goes first there.
    a, b = pair
    log = []

    def on_readable():
        log.append("reader")
        a.recv(100)
        loop.remove_reader(a)

    def on_writable():
        log.append("writer")
        if log.count("writer") == 2:
            b.send(b"x")
        if log.count("writer") == 3:
            loop.remove_writer(a)
            loop.stop()

    if writer_first:
        loop.add_writer(a, on_writable)
        loop.add_reader(a, on_readable)
    else:
        loop.add_reader(a, on_readable)
        loop.add_writer(a, on_writable)
    loop.run_forever()
    assert log == ["writer", "writer", "reader", "writer"]
