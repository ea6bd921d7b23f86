"""add_reader / add_writer and their removal."""

import asyncio
import errno
import gc
import os
import socket
import sys
import weakref

import pytest


class FilenoHolder:
    def __init__(self, sock):
        self._sock = sock

    def fileno(self):
        return self._sock.fileno()


def test_reader_on_socket(loop, pair):
    a, b = pair
    got = []

    def on_readable(*args):
        got.append((a.recv(100), args))
        loop.remove_reader(a)
        loop.stop()

    loop.add_reader(a, on_readable, "x", 2)
    b.send(b"hello")
    loop.run_forever()
    assert got == [(b"hello", ("x", 2))]


def test_reader_on_int_fd(loop, pair):
    a, b = pair
    got = []

    def on_readable():
        got.append(a.recv(100))
        assert loop.remove_reader(a.fileno()) is True
        loop.stop()

    loop.add_reader(a.fileno(), on_readable)
    b.send(b"fd")
    loop.run_forever()
    assert got == [b"fd"]


def test_reader_on_fileno_object(loop, pair):
    a, b = pair
    holder = FilenoHolder(a)
    got = []

    def on_readable():
        got.append(a.recv(100))
        loop.stop()

    loop.add_reader(holder, on_readable)
    b.send(b"obj")
    loop.run_forever()
    assert got == [b"obj"]
    assert loop.remove_reader(holder) is True


def test_reader_on_pipe(loop):
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        got = []

        def on_readable():
            got.append(os.read(r, 100))
            loop.remove_reader(r)
            loop.stop()

        loop.add_reader(r, on_readable)
        os.write(w, b"pipe")
        loop.run_forever()
        assert got == [b"pipe"]
    finally:
        os.close(r)
        os.close(w)


def test_reader_not_called_without_data(loop, pair):
    a, b = pair
    called = []
    loop.add_reader(a, called.append, "read")
    loop.run_until_complete(asyncio.sleep(0.02))
    assert called == []
    assert loop.remove_reader(a) is True


def test_reader_sees_eof(loop, pair):
    a, b = pair
    got = []

    def on_readable():
        got.append(a.recv(100))
        loop.remove_reader(a)
        loop.stop()

    loop.add_reader(a, on_readable)
    b.close()
    loop.run_forever()
    assert got == [b""]


def test_writer_on_socket(loop, pair):
    a, b = pair
    calls = []

    def on_writable(tag):
        calls.append(tag)
        a.send(b"w")
        loop.remove_writer(a)
        loop.stop()

    loop.add_writer(a, on_writable, "tag")
    loop.run_forever()
    assert calls == ["tag"]
    assert b.recv(10) == b"w"


def test_writer_on_fileno_object(loop, pair):
    a, b = pair
    holder = FilenoHolder(a)
    calls = []

    def on_writable():
        calls.append(1)
        loop.stop()

    loop.add_writer(holder, on_writable)
    loop.run_forever()
    assert calls == [1]
    assert loop.remove_writer(holder) is True
    assert loop.remove_writer(holder) is False


def test_remove_return_values(loop, pair):
    a, b = pair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False
    loop.add_reader(a, print)
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False
    loop.add_writer(a, print)
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is True
    assert loop.remove_writer(a) is False


def test_reader_and_writer_same_fd_independent(loop, pair):
    a, b = pair
    events = []

    def on_read():
        events.append(("read", a.recv(100)))

    def on_write():
        events.append("write")
        assert loop.remove_writer(a) is True

    loop.add_reader(a, on_read)
    loop.add_writer(a, on_write)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert events == ["write"]
    b.send(b"data")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert events == ["write", ("read", b"data")]
    assert loop.remove_reader(a) is True


def test_level_triggered_reader(loop, pair):
    """Unread data keeps the fd readable: the reader runs again on each later iteration."""
    a, b = pair
    events = []

    def tick():
        events.append("tick")
        loop.call_soon(tick_handle[0])

    def on_readable():
        events.append("read")
        if events.count("read") == 4:
            a.recv(100)
            loop.remove_reader(a)
            loop.stop()

    tick_handle = [tick]
    b.send(b"x")
    loop.add_reader(a, on_readable)
    loop.call_soon(tick)
    loop.run_forever()
    assert events.count("read") == 4
    # Each reader call belongs to its own iteration: some tick runs between two of them.
    reads = [i for i, e in enumerate(events) if e == "read"]
    for first, second in zip(reads, reads[1:]):
        assert "tick" in events[first + 1:second]
    # Let the last scheduled tick run so nothing is left pending.
    tick_handle[0] = lambda: None
    loop.run_until_complete(asyncio.sleep(0))


def test_level_triggered_writer(loop, pair):
    a, b = pair
    count = [0]

    def on_writable():
        count[0] += 1
        if count[0] == 3:
            loop.remove_writer(a)
            loop.stop()

    loop.add_writer(a, on_writable)
    loop.run_forever()
    assert count[0] == 3


def test_replace_reader(loop, pair):
    a, b = pair
    calls = []

    def first():
        calls.append("first")

    def second():
        calls.append(("second", a.recv(100)))
        loop.stop()

    loop.add_reader(a, first)
    loop.add_reader(a, second)
    b.send(b"r")
    loop.run_forever()
    assert calls == [("second", b"r")]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_replace_writer(loop, pair):
    a, b = pair
    calls = []

    def second():
        calls.append("second")
        loop.stop()

    loop.add_writer(a, calls.append, "first")
    loop.add_writer(a.fileno(), second)
    loop.run_forever()
    assert calls == ["second"]
    assert loop.remove_writer(a) is True


def test_remove_reader_inside_other_callback_prevents_call(loop, pair):
    a, b = pair
    calls = []
    loop.add_reader(a, calls.append, "reader")
    loop.remove_reader(a)
    b.send(b"z")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert calls == []


def test_reader_readded_after_removal(loop, pair):
    a, b = pair
    calls = []

    def on_readable():
        calls.append(a.recv(10))
        loop.remove_reader(a)
        loop.stop()

    loop.add_reader(a, print)
    loop.remove_reader(a)
    loop.add_reader(a, on_readable)
    b.send(b"again")
    loop.run_forever()
    assert calls == [b"again"]


def test_reader_exception_goes_to_handler(loop, pair, exc_contexts):
    a, b = pair

    def on_readable():
        a.recv(10)
        loop.remove_reader(a)
        loop.stop()
        raise ValueError("reader failed")

    loop.add_reader(a, on_readable)
    b.send(b"e")
    loop.run_forever()
    assert len(exc_contexts) == 1
    ctx = exc_contexts.pop()
    assert ctx["message"].startswith("Exception in callback")
    assert isinstance(ctx["exception"], ValueError)


@pytest.mark.parametrize("bad", ["not a fd", object(), None, 1.5])
def test_invalid_fd_objects(loop, bad):
    with pytest.raises(ValueError):
        loop.add_reader(bad, print)
    with pytest.raises(ValueError):
        loop.add_writer(bad, print)
    with pytest.raises(ValueError):
        loop.remove_reader(bad)
    with pytest.raises(ValueError):
        loop.remove_writer(bad)


def test_negative_fd(loop):
    with pytest.raises(ValueError):
        loop.add_reader(-1, print)
    with pytest.raises(ValueError):
        loop.add_writer(-1, print)


def test_fileno_object_raising(loop):
    class Broken:
        def fileno(self):
            raise ValueError("no fileno")

    with pytest.raises(ValueError):
        loop.add_reader(Broken(), print)


def test_many_readers(loop):
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        got = {}

        def on_readable(i, sock):
            got[i] = sock.recv(10)
            loop.remove_reader(sock)
            if len(got) == len(pairs):
                loop.stop()

        for i, (a, b) in enumerate(pairs):
            a.setblocking(False)
            loop.add_reader(a, on_readable, i, a)
        for i, (a, b) in enumerate(pairs):
            b.send(str(i).encode())
        loop.run_forever()
        assert got == {i: str(i).encode() for i in range(len(pairs))}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_sock_wait_via_future(loop, pair):
    """The classic pattern: a reader completing a future awaited by a task."""
    a, b = pair

    async def recv():
        fut = loop.create_future()

        def on_readable():
            loop.remove_reader(a)
            fut.set_result(a.recv(100))

        loop.add_reader(a, on_readable)
        loop.call_later(0.005, b.send, b"async")
        return await fut

    assert loop.run_until_complete(recv()) == b"async"


# -- a file object closed while registered ------------------------------------------------
# Selectors find a registration by the object it was made with, even once that object is
# closed (fileno() == -1). Libraries rely on it: they close a socket, then remove its reader.


def test_remove_reader_after_close_finds_registration(loop):
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    a.close()
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(b) is False
    b.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_reader(a)  # the registration is gone with the removal


def test_remove_writer_after_close_finds_registration(loop):
    a, b = socket.socketpair()
    loop.add_writer(a, lambda: None)
    a.close()
    assert loop.remove_writer(a) is True
    b.close()


def test_closed_object_other_direction_not_watched(loop):
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    a.close()
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a) is True
    b.close()


def test_closed_object_never_registered(loop):
    a, b = socket.socketpair()
    a.close()
    b.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_reader(a)
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_writer(a)
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_reader(a, lambda: None)
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_writer(a, lambda: None)


def test_closed_object_registered_by_fd_number_is_not_found(loop):
    # The registration names the int it was made with, not the socket.
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, lambda: None)
    a.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_reader(a)
    assert loop.remove_reader(fd) is True
    b.close()


def test_closed_object_same_direction_replaced(loop):
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    a.close()
    assert loop.add_reader(a, lambda: None) is None
    assert loop.remove_reader(a) is True
    b.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll's error")
def test_closed_object_new_direction_refused_and_registration_dropped(loop):
    # Adding a direction asks epoll to modify the closed fd: EBADF, and the registration goes.
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    a.close()
    with pytest.raises(OSError) as info:
        loop.add_writer(a, lambda: None)
    assert info.value.errno == errno.EBADF
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_reader(a)
    b.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll's error")
def test_closed_object_both_directions(loop):
    # Removing one direction asks epoll to keep the other: EBADF, and the registration goes.
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    loop.add_writer(a, lambda: None)
    a.close()
    with pytest.raises(OSError) as info:
        loop.remove_reader(a)
    assert info.value.errno == errno.EBADF
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.remove_writer(a)
    b.close()


def test_closed_object_removed_on_closed_loop(loop):
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    loop.remove_reader(a)
    a.close()
    b.close()
    loop.close()
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_closed_registration_released_and_fd_reusable(loop):
    # The kernel drops a closed fd from epoll by itself; the loop's own record of it must
    # go too, so the next socket given that fd number works normally.
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    number = a.fileno()
    a.close()
    assert loop.remove_reader(a) is True
    c, d = socket.socketpair()
    try:
        if c.fileno() != number:
            c, d = d, c
        got = []
        loop.add_reader(c, lambda: (got.append(c.recv(10)), loop.stop()))
        d.send(b"x")
        loop.run_forever()
        assert got == [b"x"]
        assert loop.remove_reader(c) is True
    finally:
        c.close()
        d.close()
        b.close()


def test_closed_object_not_kept_after_removal(loop):
    # The registration holds the object (as a selector key does) only while it is watched.
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    a.close()
    loop.remove_reader(a)
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None
    b.close()


# -- a descriptor number closed since it was registered ---------------------------------------
# Given the int itself, a selector has no object to consult: what fails is epoll, when the
# directions watched change (EPOLL_CTL_MOD on the closed number: EBADF, and the selector drops
# the registration) or a new registration is made (EPOLL_CTL_ADD). Keeping a direction as it
# was makes no system call, so it succeeds.

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll's errors")


def closed_fd_number():
    a, b = socket.socketpair()
    b.close()
    return a, a.fileno()


def assert_ebadf(call, *args):
    with pytest.raises(OSError) as info:
        call(*args)
    assert info.value.errno == errno.EBADF


def assert_unwatched(loop, fd):
    assert loop.remove_reader(fd) is False
    assert loop.remove_writer(fd) is False


@linux_only
@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_closed_fd_number_never_registered(loop, method):
    a, fd = closed_fd_number()
    a.close()
    assert_ebadf(getattr(loop, method), fd, lambda: None)
    assert_unwatched(loop, fd)


@linux_only
def test_closed_fd_number_registered_then_removed(loop):
    a, fd = closed_fd_number()
    loop.add_reader(fd, lambda: None)
    assert loop.remove_reader(fd) is True
    a.close()
    assert_ebadf(loop.add_writer, fd, lambda: None)


@linux_only
@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_closed_fd_number_same_direction_replaced(loop, method):
    a, fd = closed_fd_number()
    getattr(loop, method)(fd, lambda: None)
    a.close()
    assert getattr(loop, method)(fd, lambda: None) is None
    remove = loop.remove_reader if method == "add_reader" else loop.remove_writer
    assert remove(fd) is True


@linux_only
@pytest.mark.parametrize("first, second", [("add_reader", "add_writer"),
                                           ("add_writer", "add_reader")])
def test_closed_fd_number_new_direction_refused_and_registration_dropped(loop, first, second):
    a, fd = closed_fd_number()
    getattr(loop, first)(fd, lambda: None)
    a.close()
    assert_ebadf(getattr(loop, second), fd, lambda: None)
    assert_unwatched(loop, fd)


@linux_only
@pytest.mark.parametrize("removed, kept", [("remove_reader", "remove_writer"),
                                           ("remove_writer", "remove_reader")])
def test_closed_fd_number_one_of_both_directions_removed(loop, removed, kept):
    a, fd = closed_fd_number()
    loop.add_reader(fd, lambda: None)
    loop.add_writer(fd, lambda: None)
    a.close()
    assert_ebadf(getattr(loop, removed), fd)
    assert getattr(loop, kept)(fd) is False


@linux_only
def test_closed_fd_number_last_direction_removed(loop):
    # Unregistering is allowed to fail quietly (the kernel already forgot the closed fd).
    a, fd = closed_fd_number()
    loop.add_reader(fd, lambda: None)
    a.close()
    assert loop.remove_reader(fd) is True
    assert loop.remove_writer(fd) is False
