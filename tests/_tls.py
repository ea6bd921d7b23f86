"""Helpers for the TLS tests: certificates made with the ``openssl`` command line, SSL contexts,
and peers that are not the loop under test (blocking ``ssl`` sockets in threads, ``openssl
s_server`` / ``s_client`` subprocesses).

Certificates (``make_certs``, once per session through the ``certs`` fixture):
  * a CA, and a server certificate it signed: CN=localhost, SAN DNS:localhost and IP:127.0.0.1;
  * a client certificate it signed (CN=tokioloop-client) for mutual TLS;
  * a self-signed certificate with SAN DNS:localhost only (no IP address);
  * the server key again, encrypted with ``PASSWORD``.
``openssl`` missing is an error, not a skip: the project installs it.

Peers (``Peers``, the ``peers`` fixture): every thread, socket and subprocess a test starts is
registered and stopped at teardown; a thread still alive after that fails the test. Each
blocking socket has a timeout, so a peer never outlives its test by more than ``TIMEOUT``.
"""

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

TIMEOUT = 10.0
PASSWORD = "tokioloop-secret"

# What the running stdlib's TLS layer is: 3.11 replaced 3.10's SSLPipe-based layer with the
# state machine taken from uvloop (new flow-control limits, eof_received after a local close,
# the 'SSL connection is closed' warnings, ssl_shutdown_timeout). Asked of asyncio itself.
NEW_SSLPROTO = hasattr(asyncio.sslproto, "SSLProtocolState")
# 3.10's layer writes its answer to a peer's close_notify after closing the socket transport,
# which drops it (the peer sees a bare FIN); 3.11's answers.
ANSWERS_CLOSE_NOTIFY = NEW_SSLPROTO


class Certs:
    """Paths of the session's certificates and keys (see the module docstring)."""

    def __init__(self, directory):
        self.dir = directory
        j = lambda name: os.path.join(directory, name)  # noqa: E731
        self.ca = j("ca.pem")
        self.ca_key = j("ca.key")
        self.server = j("server.pem")
        self.server_key = j("server.key")
        self.server_key_encrypted = j("server-enc.key")
        self.client = j("client.pem")
        self.client_key = j("client.key")
        self.selfsigned = j("self.pem")
        self.selfsigned_key = j("self.key")


def _openssl(*args, cwd):
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _signed(certs, name, cn, extensions):
    d = certs.dir
    _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
             cwd=d)
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "30", "-sha256", "-extfile", f"{name}.ext",
             "-out", f"{name}.pem", cwd=d)


_COMMON_EXT = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid,issuer\n"
)


def make_certs(directory):
    if shutil.which("openssl") is None:
        pytest.fail(
            "the TLS tests need the `openssl` command line tool (the project installs it); "
            "it is not on PATH", pytrace=False,
        )
    certs = Certs(str(directory))
    d = certs.dir
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
             "-subj", "/CN=tokioloop test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _signed(certs, "server", "localhost", _COMMON_EXT
            + "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _signed(certs, "client", "tokioloop-client", _COMMON_EXT + "extendedKeyUsage=clientAuth\n")
    _openssl("req", "-x509", *_EC, "-keyout", "self.key", "-out", "self.pem", "-days", "30",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", cwd=d)
    _openssl("pkey", "-in", "server.key", "-aes256", "-passout", f"pass:{PASSWORD}",
             "-out", "server-enc.key", cwd=d)
    return certs


_CACHE = {}


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """The session's ``Certs`` (made once even if several modules import this fixture)."""
    if "certs" not in _CACHE:
        _CACHE["certs"] = make_certs(tmp_path_factory.mktemp("tls-certs"))
    return _CACHE["certs"]


# -- contexts ------------------------------------------------------------------------------


def server_context(certs, *, client_auth=False, selfsigned=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if selfsigned:
        ctx.load_cert_chain(certs.selfsigned, certs.selfsigned_key)
    else:
        ctx.load_cert_chain(certs.server, certs.server_key)
    if client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs.ca)
    return ctx


def client_context(certs, *, client_cert=False, trust=None):
    """A verifying client context trusting the test CA (or the file ``trust``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(trust or certs.ca)
    if client_cert:
        ctx.load_cert_chain(certs.client, certs.client_key)
    return ctx


def insecure_client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def decoded_cert(path):
    """The dict ``getpeercert()`` gives for the certificate in ``path``."""
    return ssl._ssl._test_decode_cert(path)


# -- peers ---------------------------------------------------------------------------------


class ThreadPeer:
    """``fn(*args)`` running in a thread; ``await peer.wait()`` returns its result or raises
    its exception (polling, so nothing is scheduled on the loop from the thread)."""

    def __init__(self, fn, args):
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn, args):
        try:
            self.result = fn(*args)
        except BaseException as exc:  # reported by wait()
            self.error = exc

    async def wait(self, timeout=TIMEOUT):
        deadline = asyncio.get_running_loop().time() + timeout
        while self.thread.is_alive():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("peer thread did not finish in time")
            await asyncio.sleep(0.005)
        if self.error is not None:
            raise self.error
        return self.result


class Peers:
    def __init__(self):
        self.stop = threading.Event()  # peers that hold a connection open wait on this
        self._threads = []
        self._socks = []
        self._procs = []

    def thread(self, fn, *args):
        peer = ThreadPeer(fn, args)
        self._threads.append(peer)
        return peer

    def sock(self, sock):
        """Register a socket (a blocking one gets the peer timeout); closed at teardown."""
        if sock.gettimeout() is None:
            sock.settimeout(TIMEOUT)
        self._socks.append(sock)
        return sock

    def listener(self, rcvbuf=None):
        """A blocking TCP socket listening on 127.0.0.1 (accept times out)."""
        srv = self.sock(socket.socket())
        if rcvbuf:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        return srv

    def openssl(self, *args):
        """Start ``openssl args...`` with pipes; killed at teardown."""
        proc = subprocess.Popen(
            ["openssl", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._procs.append(proc)
        return proc

    def close(self):
        self.stop.set()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        alive = []
        for peer in self._threads:
            peer.thread.join(TIMEOUT)
            if peer.thread.is_alive():
                alive.append(peer.thread)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=TIMEOUT)
        if alive:
            pytest.fail(f"peer threads still running at teardown: {alive}", pytrace=False)


@pytest.fixture
def peers():
    p = Peers()
    yield p
    p.close()


async def start_s_server(peers, certs, *extra):
    """``openssl s_server`` on an ephemeral port of 127.0.0.1 serving one connection; returns
    (process, port). It prints what it receives on stdout."""
    proc = peers.openssl(
        "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-cert", certs.server,
        "-key", certs.server_key, *extra,
    )
    lines = []
    while not lines or not lines[-1].startswith(b"ACCEPT "):
        lines.append(await peers.thread(proc.stdout.readline).wait())
        assert lines[-1], lines  # s_server ended before listening
    line = lines[-1]
    return proc, int(line.rsplit(b":", 1)[1])


async def communicate(peers, proc, data=None, timeout=TIMEOUT):
    """``proc.communicate`` in a peer thread; returns (stdout, stderr)."""
    return await peers.thread(proc.communicate, data, timeout).wait(timeout + 1)


# -- blocking peer building blocks -----------------------------------------------------------


def accept_tls(listener, ctx, **kw):
    """Accept one connection on a blocking listener and complete the server handshake."""
    conn, _ = listener.accept()
    conn.settimeout(TIMEOUT)
    return ctx.wrap_socket(conn, server_side=True, **kw)


def recv_exactly(sock, size):
    got = bytearray()
    while len(got) < size:
        chunk = sock.recv(min(size - len(got), 262144))
        if not chunk:
            raise AssertionError(f"EOF after {len(got)} of {size} bytes")
        got += chunk
    return bytes(got)


def recv_to_eof(sock):
    """Read until EOF; on an SSL socket made with suppress_ragged_eofs=False, EOF means a
    close_notify (a bare FIN raises SSLEOFError instead)."""
    got = bytearray()
    while True:
        chunk = sock.recv(262144)
        if not chunk:
            return bytes(got)
        got += chunk


def close_notify(sock):
    """Send close_notify and close (the peer's answer is not awaited)."""
    try:
        sock.setblocking(False)
        sock.unwrap()
    except (ssl.SSLError, OSError):
        pass
    sock.close()


def echo_server(listener, ctx, count=1):
    """Accept ``count`` TLS connections one after the other; echo each until EOF, then answer
    close_notify."""
    for _ in range(count):
        with accept_tls(listener, ctx) as conn:
            while True:
                data = conn.recv(262144)
                if not data:
                    break
                conn.sendall(data)
            close_notify(conn)


def serve(listener, ctx, handler, count=1):
    """Accept ``count`` connections; for each, complete the TLS handshake and call
    ``handler(conn)``. Returns one entry per connection: the handler's result, or the exception
    the handshake or the handler raised (so tests of failed handshakes can look at it)."""
    outcomes = []
    for _ in range(count):
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        try:
            with ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
                outcomes.append(handler(tls))
        except (OSError, AssertionError) as exc:
            outcomes.append(exc)
        finally:
            conn.close()
    return outcomes


def echo_handler(conn):
    """Echo until close_notify, answer it; returns the number of bytes echoed."""
    total = 0
    while True:
        data = conn.recv(262144)
        if not data:
            break
        total += len(data)
        conn.sendall(data)
    close_notify(conn)
    return total


# -- the application side ----------------------------------------------------------------------


async def until(predicate, timeout=TIMEOUT, what="condition"):
    """Poll ``predicate()`` every couple of milliseconds until true (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Recorder(asyncio.Protocol):
    """Records callbacks: ``events`` ('cm', 'data' for a run of data_received, 'eof',
    ('cl', exc), 'pause', 'resume'), the data, each chunk's size, and the write buffer size
    seen by pause_writing/resume_writing."""

    eof_result = None

    def __init__(self):
        self.events = []
        self.data = bytearray()
        self.chunks = []
        self.transport = None
        self.cm_ssl_object = None
        self.flow_sizes = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.cm_ssl_object = transport.get_extra_info("ssl_object")
        self.events.append("cm")

    def data_received(self, data):
        assert isinstance(data, bytes), type(data)
        self.chunks.append(len(data))
        self.data += data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append(("cl", exc))
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self):
        self.events.append("pause")
        self.flow_sizes.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self):
        self.events.append("resume")
        self.flow_sizes.append(("resume", self.transport.get_write_buffer_size()))

    async def read(self, size, timeout=TIMEOUT):
        await until(lambda: len(self.data) >= size, timeout, f"{size} bytes")
        return bytes(self.data)

    async def closed(self, timeout=TIMEOUT):
        return await asyncio.wait_for(asyncio.shield(self.lost), timeout)
