"""The running version's API shape: what its asyncio lacks, tokioloop lacks or refuses too.

Every body runs on both loops; the expectations come from the running stdlib (``_stdlib``), so
on 3.10 this checks that ``sock_sendto`` is absent and ``create_task(context=)`` refused, and on
3.13 that both are there.
"""

import asyncio
import contextvars
import socket

import pytest
from _stdlib import loop_has, server_has
from tokioloop import _compat

METHODS = ["sock_recvfrom", "sock_recvfrom_into", "sock_sendto"]

# (method, keyword, arguments that are otherwise valid)
KEYWORDS = [
    ("create_connection", "all_errors", lambda s: (asyncio.Protocol,), {"sock": "SOCK"}),
    ("create_connection", "ssl_shutdown_timeout", lambda s: (asyncio.Protocol,), {"sock": "SOCK"}),
    ("create_server", "keep_alive", lambda s: (asyncio.Protocol,), {"sock": "SOCK"}),
    ("create_unix_server", "cleanup_socket", lambda s: (asyncio.Protocol,), {"sock": "SOCK"}),
    ("shutdown_default_executor", "timeout", lambda s: (), {}),
]


@pytest.mark.parametrize("name", METHODS)
def test_method_present_as_in_stdlib(loop, name):
    assert hasattr(loop, name) is loop_has(name)


@pytest.mark.parametrize("name", ["close_clients", "abort_clients", "wait_closed", "get_loop"])
def test_server_method_present_as_in_stdlib(loop, name, sockets):
    listener = sockets(socket.socket())
    listener.bind(("127.0.0.1", 0))

    async def main():
        server = await loop.create_server(asyncio.Protocol, sock=listener, start_serving=False)
        try:
            return hasattr(server, name)
        finally:
            server.close()
            await server.wait_closed()

    assert loop.run_until_complete(main()) is server_has(name)


@pytest.mark.parametrize("method,keyword,args,kwargs", KEYWORDS, ids=[f"{m}-{k}" for m, k, _, _ in KEYWORDS])
def test_keyword_refused_where_stdlib_lacks_it(loop, sockets, method, keyword, args, kwargs):
    if loop_has(method, keyword):
        pytest.skip(f"this Python's loop.{method}() takes {keyword}=")
    family = socket.AF_UNIX if "unix" in method else socket.AF_INET
    sock = sockets(socket.socket(family, socket.SOCK_STREAM))
    kwargs = {k: (sock if v == "SOCK" else v) for k, v in kwargs.items()}
    with pytest.raises(TypeError, match=keyword):
        # The stdlib refuses at the call, before any coroutine exists: so must we.
        getattr(loop, method)(*args(sock), **{keyword: 1}, **kwargs)


def test_create_task_context_keyword(loop):
    async def work():
        return 1

    coro = work()
    try:
        if loop_has("create_task", "context"):
            task = loop.create_task(coro, context=contextvars.copy_context())
            assert loop.run_until_complete(task) == 1
        else:
            with pytest.raises(TypeError, match="context"):
                loop.create_task(coro, context=object())
    finally:
        coro.close()


def test_exception_handler_context(loop, exc_contexts):
    """3.12+ runs a custom exception handler in the failing callback's context (gh-96704);
    the stdlib half tells which applies on this version."""
    var = contextvars.ContextVar("var", default="outside")
    seen = []

    def handler(lp, context):
        seen.append(var.get())

    def callback():
        var.set("inside")
        raise ZeroDivisionError

    loop.set_exception_handler(handler)
    loop.call_soon(callback)
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == ["inside" if _compat.EXCEPTION_HANDLER_IN_CALLBACK_CONTEXT else "outside"]


def test_callback_checks_warn_of_nothing(loop):
    """3.14 deprecates ``asyncio.iscoroutinefunction`` (each call warns); the stdlib's loops
    check callbacks with its private spelling, and so must ours: a user running with
    ``-W error::DeprecationWarning`` gets no warning from add_reader, add_signal_handler or
    run_in_executor, and add_signal_handler still refuses a coroutine function."""
    import signal
    import warnings

    async def coroutine_function():
        pass

    a, b = socket.socketpair()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            loop.add_reader(a, lambda: None)
            loop.remove_reader(a)
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
            loop.remove_signal_handler(signal.SIGUSR1)
            loop.run_until_complete(loop.run_in_executor(None, int))
            with pytest.raises(TypeError):
                loop.add_signal_handler(signal.SIGUSR1, coroutine_function)
    finally:
        a.close()
        b.close()
