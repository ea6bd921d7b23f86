"""Subprocesses: spawning, arguments and stdio (the stdlib loop is the oracle).

Covers ``loop.subprocess_exec`` / ``subprocess_shell`` and ``asyncio.create_subprocess_*``:
asyncio's argument ValueErrors (wording and order), Popen's own errors (TypeError,
FileNotFoundError with ``.filename``, SubprocessError from a failing ``preexec_fn``), PathLike
and bytes programs, ``executable=``, ``env``, ``cwd``, ``umask``, ``process_group``,
``start_new_session``, ``pass_fds``, ``close_fds``, ``preexec_fn``; stdio as PIPE (FIFOs in
the child), DEVNULL, STDOUT, an fd, a file object or None (inherit); the process transport's
accessors (``get_pid``, ``get_returncode``, ``get_pipe_transport``, ``get_extra_info``) and the
low-level SubprocessProtocol's callback order.

Waiting, communicating, signals, closing and cancellation are in test_subprocess_wait.py;
many children at once in test_subprocess_stress.py.
"""

import asyncio
import inspect
import os
import pathlib
import subprocess
import sys

import pytest

from _proc import (
    PY,
    RecordingProtocol,
    child_pids,
    no_leftover_children,  # noqa: F401 (autouse fixture)
    open_fds,
    proc_stat,
    run,
    sh,
)

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT


async def output_of(argv, **kwargs):
    """Run argv with stdout=PIPE; return (returncode, stdout bytes)."""
    kwargs.setdefault("stdout", PIPE)
    proc = await asyncio.create_subprocess_exec(*argv, **kwargs)
    out, _ = await proc.communicate()
    return proc.returncode, out


# -- argument checks --------------------------------------------------------------------------

# asyncio's checks, in the order it makes them (base_events.subprocess_exec/_shell).
_BAD_ARGS = [
    ("universal_newlines", True, "universal_newlines must be False"),
    ("shell", None, None),  # filled per method: the wrong shell value
    ("bufsize", 1, "bufsize must be 0"),
    ("text", True, "text must be False"),
    ("encoding", "utf-8", "encoding must be None"),
    ("errors", "strict", "errors must be None"),
]


def _bad_args(shell_value, shell_message):
    table = []
    for name, value, message in _BAD_ARGS:
        if name == "shell":
            value, message = shell_value, shell_message
        table.append((name, value, message))
    return table


@pytest.mark.parametrize("method", ["subprocess_exec", "subprocess_shell"])
def test_argument_errors_in_order(loop, method):
    made = []

    def factory():
        made.append(1)
        return asyncio.SubprocessProtocol()

    if method == "subprocess_exec":
        table = _bad_args(True, "shell must be False")
        call = lambda **kw: loop.subprocess_exec(factory, "/bin/true", **kw)  # noqa: E731
    else:
        table = _bad_args(False, "shell must be True")
        call = lambda **kw: loop.subprocess_shell(factory, "true", **kw)  # noqa: E731

    # All bad at once: the first check wins; drop it and the next one reports, and so on.
    bad = {name: value for name, value, _ in table}
    for name, _, message in table:
        with pytest.raises(ValueError) as info:
            run(loop, call(**bad))
        assert str(info.value) == message
        del bad[name]
    assert made == []  # the protocol factory runs only after validation


def test_shell_cmd_must_be_a_string(loop):
    # The cmd check comes before every other one.
    for cmd in (123, None, ["echo", "x"]):
        with pytest.raises(ValueError, match="^cmd must be a string$"):
            run(loop, loop.subprocess_shell(asyncio.SubprocessProtocol, cmd, universal_newlines=True))
    with pytest.raises(ValueError, match="^cmd must be a string$"):
        run(loop, asyncio.create_subprocess_shell(123))


def test_harmless_values_of_refused_arguments_are_accepted(loop):
    async def main():
        return await output_of(
            ["/bin/echo", "ok"], universal_newlines=False, text=False, encoding=None,
            errors=None, bufsize=0, shell=False,
        )

    assert run(loop, main()) == (0, b"ok\n")


def test_exec_program_type_error_comes_from_popen(loop):
    with pytest.raises(TypeError, match="expected str, bytes or os.PathLike object, not int"):
        run(loop, loop.subprocess_exec(asyncio.SubprocessProtocol, 123))
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        run(loop, asyncio.create_subprocess_exec("/bin/true", no_such_option=1))


def test_missing_program_file_not_found_without_leaks(loop, tmp_path):
    missing = str(tmp_path / "no-such-program")
    run(loop, output_of(["/bin/true"]))  # warm up anything a first spawn creates lazily
    fds, kids = open_fds(), child_pids()
    for stdio in (None, PIPE):
        with pytest.raises(FileNotFoundError) as info:
            run(loop, asyncio.create_subprocess_exec(missing, "arg", stdin=stdio, stdout=stdio, stderr=stdio))
        assert info.value.filename == missing
    with pytest.raises(FileNotFoundError) as info:
        run(loop, loop.subprocess_exec(asyncio.SubprocessProtocol, missing))
    assert info.value.filename == missing
    with pytest.raises(FileNotFoundError) as info:
        run(loop, asyncio.create_subprocess_shell("true", executable=missing))
    assert info.value.filename == missing
    assert open_fds() == fds
    assert child_pids() == kids


# -- what the child runs, and in which environment -------------------------------------------

def test_pathlike_and_bytes_program_and_args(loop, tmp_path):
    async def main():
        got = []
        got.append(await output_of([pathlib.Path("/bin/echo"), "path"]))
        got.append(await output_of([b"/bin/echo", b"bytes"]))
        got.append(await output_of(["/bin/echo", tmp_path / "arg"]))
        return got

    assert run(loop, main()) == [
        (0, b"path\n"), (0, b"bytes\n"), (0, str(tmp_path / "arg").encode() + b"\n"),
    ]


def test_executable_runs_that_binary_keeping_argv0(loop):
    # /proc/$$/cmdline shows the shell's argv as given: argv[0] stays the caller's args[0].
    async def main():
        return await output_of(["pretend-name", "-c", 'cat /proc/$$/cmdline'], executable="/bin/sh")

    rc, out = run(loop, main())
    assert rc == 0
    assert out.split(b"\0")[:2] == [b"pretend-name", b"-c"]


def test_shell_runs_through_bin_sh(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell("echo $((6 * 7)); exit 3", stdout=PIPE)
        out, _ = await proc.communicate()
        return proc.returncode, out

    assert run(loop, main()) == (3, b"42\n")


def test_env_replaces_the_whole_environment(loop):
    assert run(loop, output_of(["/usr/bin/env"], env={"ONLY": "this"})) == (0, b"ONLY=this\n")
    assert run(loop, output_of(["/usr/bin/env"], env={})) == (0, b"")


def test_cwd_str_and_pathlike(loop, tmp_path):
    real = os.path.realpath(tmp_path).encode() + b"\n"
    assert run(loop, output_of(["/bin/pwd"], cwd=str(tmp_path))) == (0, real)
    assert run(loop, output_of(["/bin/pwd"], cwd=tmp_path)) == (0, real)
    with pytest.raises(FileNotFoundError):
        run(loop, output_of(["/bin/pwd"], cwd=tmp_path / "missing"))


def test_umask(loop):
    assert run(loop, output_of(sh("umask"), umask=0o027)) == (0, b"0027\n")


def _group_and_session(loop, **kwargs):
    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/cat", "/proc/self/stat", stdout=PIPE, **kwargs)
        out, _ = await proc.communicate()
        return proc.pid, out

    pid, out = run(loop, main())
    fields = out[out.rindex(b")") + 2:].split()
    return pid, int(fields[2]), int(fields[3])


def test_default_process_group_and_session_are_ours(loop):
    _, pgrp, session = _group_and_session(loop)
    assert (pgrp, session) == (os.getpgrp(), os.getsid(0))


@pytest.mark.skipif(
    "process_group" not in inspect.signature(subprocess.Popen).parameters,
    reason="Popen(process_group=) is new in 3.11",
)
def test_process_group_zero_makes_a_new_group(loop):
    pid, pgrp, session = _group_and_session(loop, process_group=0)
    assert (pgrp, session) == (pid, os.getsid(0))


def test_start_new_session(loop):
    pid, pgrp, session = _group_and_session(loop, start_new_session=True)
    assert (pgrp, session) == (pid, pid)


# One shell line per fd argument: "open" or "closed" as the child sees it.
_FD_PROBE = 'for fd in "$@"; do if [ -e /proc/self/fd/$fd ]; then echo open; else echo closed; fi; done'


@pytest.fixture
def two_pipes():
    """Two pipes (r, w): the first non-inheritable, the second's read end inheritable."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    os.set_inheritable(r2, True)
    yield r1, r2
    for fd in (r1, w1, r2, w2):
        os.close(fd)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, b"closed\nclosed\n"),  # close_fds=True by default
        ({"pass_fds": "first"}, b"open\nclosed\n"),
        ({"close_fds": False}, b"closed\nopen\n"),  # only the inheritable fd survives exec
    ],
    ids=["default", "pass_fds", "close_fds_false"],
)
def test_fd_inheritance(loop, two_pipes, kwargs, expected):
    r1, r2 = two_pipes
    if kwargs.get("pass_fds") == "first":
        kwargs = {"pass_fds": (r1,)}
    argv = sh(_FD_PROBE, "sh", str(r1), str(r2))
    assert run(loop, output_of(argv, **kwargs)) == (0, expected)
    assert not os.get_inheritable(r1)  # pass_fds does not change the parent's flag


def test_preexec_fn_runs_in_the_child(loop):
    r, w = os.pipe()
    try:
        def hook():
            os.write(w, str(os.getpid()).encode())

        async def main():
            proc = await asyncio.create_subprocess_exec("/bin/true", preexec_fn=hook)
            return proc.pid, await proc.wait()

        pid, rc = run(loop, main())
        os.close(w)
        w = -1
        assert rc == 0
        assert os.read(r, 100) == str(pid).encode()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_preexec_fn_exception_is_subprocess_error(loop):
    def hook():
        raise ValueError("refused in the child")

    run(loop, output_of(["/bin/true"]))  # warm-up, see test_missing_program_...
    fds, kids = open_fds(), child_pids()
    with pytest.raises(subprocess.SubprocessError, match="Exception occurred in preexec_fn"):
        run(loop, asyncio.create_subprocess_exec("/bin/true", stdout=PIPE, preexec_fn=hook))
    assert open_fds() == fds
    assert child_pids() == kids  # the child died and was reaped


# -- stdio ------------------------------------------------------------------------------------

def test_pipe_stdio_are_fifos_in_the_child(loop):
    script = 'for f in 0 1 2; do [ -p /proc/self/fd/$f ] && echo fifo >&2 || echo other >&2; done; cat /dev/stdin'

    async def main():
        proc = await asyncio.create_subprocess_exec(*sh(script), stdin=PIPE, stdout=PIPE, stderr=PIPE)
        return await proc.communicate(b"via /dev/stdin")

    assert run(loop, main()) == (b"via /dev/stdin", b"fifo\nfifo\nfifo\n")


def test_stderr_to_stdout(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(*sh("echo out; echo err >&2"), stdout=PIPE, stderr=STDOUT)
        assert proc.stderr is None
        return await proc.communicate()

    assert run(loop, main()) == (b"out\nerr\n", None)


def test_devnull(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            *sh("cat; echo done; echo err >&2"), stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL
        )
        assert proc.stdin is None and proc.stderr is None
        return await proc.communicate()

    assert run(loop, main()) == (b"done\n", None)


def test_stdio_fd_and_file_object(loop, tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"from a file\n")
    with open(src, "rb") as fin, open(tmp_path / "out.txt", "wb") as fout:
        err_fd = os.open(tmp_path / "err.txt", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            async def main():
                proc = await asyncio.create_subprocess_exec(
                    *sh("cat; echo problem >&2"), stdin=fin, stdout=fout.fileno(), stderr=err_fd
                )
                assert (proc.stdin, proc.stdout, proc.stderr) == (None, None, None)
                return await proc.wait()

            assert run(loop, main()) == 0
        finally:
            os.close(err_fd)
    assert (tmp_path / "out.txt").read_bytes() == b"from a file\n"
    assert (tmp_path / "err.txt").read_bytes() == b"problem\n"


def test_stdio_none_inherits_our_fds(loop):
    # asyncio.create_subprocess_exec defaults to None for all three: the child's fds 0 and 1
    # are ours. It reports the identity of its own fds on stderr, the one fd we pipe.
    # (Command substitution: a plain last command would be exec'd with its redirection.)
    script = 'ids=$(stat -L -c %d:%i /proc/$$/fd/0 /proc/$$/fd/1); echo $ids >&2'

    async def main():
        proc = await asyncio.create_subprocess_exec(*sh(script), stderr=PIPE)
        assert proc.stdin is None and proc.stdout is None
        _, err = await proc.communicate()
        return err

    err = run(loop, main())
    ours = [f"{os.fstat(fd).st_dev}:{os.fstat(fd).st_ino}" for fd in (0, 1)]
    assert err.decode().split() == ours


def test_stdin_stdout_constant_is_bad_fd(loop):
    with pytest.raises(OSError) as info:
        run(loop, asyncio.create_subprocess_exec("/bin/true", stdin=STDOUT))
    assert info.value.errno == 9  # EBADF: Popen passes -2 through as an fd


# -- the process transport ------------------------------------------------------------------

def test_loop_methods_default_to_pipes_and_expose_them(loop):
    async def main():
        transport, proto = await loop.subprocess_exec(lambda: RecordingProtocol(loop), *sh("cat >&2"))
        try:
            popen = transport.get_extra_info("subprocess")
            assert isinstance(popen, subprocess.Popen)
            assert popen.pid == transport.get_pid()
            pipes = [transport.get_pipe_transport(fd) for fd in (0, 1, 2)]
            assert all(p is not None for p in pipes)
            assert isinstance(pipes[0], asyncio.WriteTransport)
            assert isinstance(pipes[1], asyncio.ReadTransport)
            assert isinstance(pipes[2], asyncio.ReadTransport)
            for fd, popen_file in zip((0, 1, 2), (popen.stdin, popen.stdout, popen.stderr)):
                assert pipes[fd].get_extra_info("pipe").fileno() == popen_file.fileno()
            assert transport.get_pipe_transport(3) is None
            assert transport.get_extra_info("no-such-key", "dflt") == "dflt"
            pipes[0].write(b"echoed")
            pipes[0].close()
            assert await proto.done is None
            return proto.data
        finally:
            transport.close()

    assert run(loop, main()) == {1: b"", 2: b"echoed"}


def test_get_pipe_transport_is_none_for_non_pipes(loop):
    async def main():
        transport, proto = await loop.subprocess_exec(
            lambda: RecordingProtocol(loop), "/bin/true", stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL
        )
        try:
            assert transport.get_pipe_transport(0) is None
            assert transport.get_pipe_transport(1) is not None
            assert transport.get_pipe_transport(2) is None
            await proto.done
        finally:
            transport.close()

    run(loop, main())


def test_pid_and_returncode(loop):
    async def main():
        transport, proto = await loop.subprocess_exec(
            lambda: RecordingProtocol(loop), *sh("echo $$; read line; exit 7"), stderr=DEVNULL
        )
        try:
            while b"\n" not in proto.data[1]:
                await asyncio.sleep(0.01)
            assert int(proto.data[1]) == transport.get_pid()
            assert transport.get_returncode() is None  # blocked on stdin: still running
            transport.get_pipe_transport(0).write(b"go\n")
            assert await proto.exited == 7
            await proto.done
            assert transport.get_returncode() == 7
            assert transport.get_pid() == int(proto.data[1])  # still known after the end
        finally:
            transport.close()

    run(loop, main())


def test_callback_order(loop):
    # Both pipes carry data, stdin is read to EOF; the process exits after its pipes close.
    script = "echo out1; echo err1 >&2; cat >/dev/null; echo out2; echo err2 >&2"

    async def main():
        transport, proto = await loop.subprocess_exec(lambda: RecordingProtocol(loop), *sh(script))
        try:
            assert proto.events[:1] == [("made",)]  # connection_made before the call returns
            transport.get_pipe_transport(0).write(b"x" * 100000)
            transport.get_pipe_transport(0).close()
            assert await proto.done is None
            await asyncio.sleep(0.05)  # nothing may follow connection_lost
            return proto
        finally:
            transport.close()

    proto = run(loop, main())
    ev = proto.events
    assert ev[0] == ("made",) and ev[-1] == ("lost", None)
    assert proto.kinds().count("made") == 1 and proto.kinds().count("lost") == 1
    assert proto.kinds().count("exited") == 1  # anywhere in between (gh-108973)
    lost = {e[1]: (i, e[2]) for i, e in enumerate(ev) if e[0] == "pipe_lost"}
    assert sorted(lost) == [0, 1, 2]
    assert all(exc is None for _, exc in lost.values())
    for i, e in enumerate(ev):
        if e[0] == "data":
            assert i < lost[e[1]][0], f"data on fd {e[1]} after its pipe_connection_lost: {ev}"
    assert proto.data == {1: b"out1\nout2\n", 2: b"err1\nerr2\n"}
    assert proto.transport.get_returncode() == 0


def test_shell_low_level(loop):
    async def main():
        transport, proto = await loop.subprocess_shell(
            lambda: RecordingProtocol(loop), "printf %s \"$0\"", stdin=DEVNULL, stderr=DEVNULL
        )
        try:
            await proto.done
            return proto.data[1]
        finally:
            transport.close()

    assert run(loop, main()) == b"/bin/sh"


def test_child_runs_with_our_interpreter_unbuffered_pipes(loop):
    # A Python child writing in small pieces, unflushed until exit: all bytes arrive in order.
    code = "import sys\nfor i in range(1000): sys.stdout.write(f'{i},')"

    async def main():
        return await output_of([PY, "-I", "-c", code])

    rc, out = run(loop, main())
    assert rc == 0
    assert out == ",".join(str(i) for i in range(1000)).encode() + b","


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user and groups needs root")
@pytest.mark.skipif(
    "extra_groups" not in inspect.signature(subprocess.Popen).parameters,
    reason="Popen(user=, group=, extra_groups=) are new in 3.9",
)
def test_user_group_extra_groups(loop):
    nobody = 65534
    script = "id -u; id -g; id -G"
    got = run(loop, output_of(sh(script), user=nobody, group=nobody, extra_groups=[]))
    assert got == (0, b"65534\n65534\n65534\n")
