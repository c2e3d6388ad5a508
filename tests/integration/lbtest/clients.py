"""Clients: of the balanced ports (ask, open_conn, echo, a ClientLoop that
connects every few milliseconds, percentile for its figures) and of HTTP
endpoints (http_request: etcd's gateway, lbd's /metrics and probes).

A client of a balanced port reads the backend's id line, then sends HELLO
and reads its echo: only then does the Backend count it as a client (lbd's
own TCP health checks connect and close, and are not counted).
"""

import collections
import json
import selectors
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

from .backends import HELLO


def http_request(url, body=None, method=None, timeout=5.0, headers=None, context=None):
    """Returns (status, body bytes); HTTP errors are returned, not raised.

    context: an ssl.SSLContext for https:// URLs (TlsFiles.client_context()).
    """
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def read_line(sock, limit=256):
    """The first line on sock, stripped; None when it closes (or passes
    `limit` bytes) before a newline."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            break
    return buf.decode("utf-8", "replace").strip() if buf.endswith(b"\n") else None


def _hello(sock):
    """Sends HELLO and reads its echo: the backend now counts us as a client."""
    if echo(sock, HELLO) != HELLO:
        raise ConnectionError("no echo of the hello")


def ask(port, timeout=5.0):
    """One new connection to a balanced port: the id of the backend that answered.

    Reads the id line, sends HELLO and reads its echo, closes.  Returns None
    when the connection closes before a full line arrives.  Raises OSError
    when the connection cannot be made or breaks after the id.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        bid = read_line(s)
        if bid is not None:
            _hello(s)
        return bid


def ask_many(port, n, timeout=5.0):
    """n sequential connections: Counter of answering ids (None = no answer)."""
    c = collections.Counter()
    for _ in range(n):
        try:
            c[ask(port, timeout)] += 1
        except OSError:
            c[None] += 1
    return c


def open_conn(port, timeout=5.0):
    """A connection kept open: (socket, id of the backend that answered)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        bid = read_line(s)
        if bid is not None:
            _hello(s)
        return s, bid
    except Exception:
        s.close()
        raise


def echo(sock, payload):
    """Sends payload on an open connection and reads back as many bytes."""
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(len(payload) - len(got))
        if not chunk:
            break
        got += chunk
    return got


class ClientLoop:
    """A client thread that makes a new connection through a balanced port
    every `interval` seconds: reads the backend's id, echoes HELLO, closes.

    Records every attempt as (start time, seconds taken, backend id or
    None, error text or None).  stop() ends it and returns the records.
    """

    def __init__(self, port, interval=0.01, timeout=5.0):
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.records = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="client-loop", daemon=True)
        self._thread.start()

    def _run(self):
        next_at = time.monotonic()
        while not self._stop.is_set():
            t0 = time.monotonic()
            bid, err = None, None
            try:
                bid = ask(self.port, self.timeout)
                if bid is None:
                    err = "connection closed before the backend's id"
            except OSError as exc:
                err = "%s: %s" % (type(exc).__name__, exc)
            self.records.append((t0, time.monotonic() - t0, bid, err))
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()

    def failures(self):
        return [r for r in list(self.records) if r[3] is not None]

    def count(self):
        return len(self.records)

    def stop(self):
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return list(self.records)


def percentile(values, p):
    """The p-th percentile (0..100) of values, nearest rank."""
    if not values:
        return float("nan")
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def watch_closes(socks, t0, deadline, poll=0.1):
    """Waits until each socket of `socks` is closed by its peer, or the
    `deadline` (time.monotonic()) passes.  Returns {socket: (seconds after
    t0, "eof" | "reset")} for those that closed; the sockets are left
    non-blocking."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = {}
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=poll):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data, how = b"", "reset"
            else:
                how = "eof"
            if not data:
                closed[s] = (time.monotonic() - t0, how)
                sel.unregister(s)
    sel.close()
    return closed


def recv_line_bytes(sock, limit=4096):
    """The raw bytes up to and including the first newline (None on EOF first)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > limit:
            raise AssertionError("no newline in the first %d bytes: %r" % (limit, buf[:80]))
    return buf


def silent_connections(port, n, first=2, addresses=4):
    """n connections to 127.0.0.1:`port` from 127.0.0.<first> to 127.0.0.<first+addresses-1>
    in turn, that send nothing (a flood); close them with close_all()."""
    socks = []
    try:
        for i in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.%d" % (first + i % addresses), 0))
            s.connect(("127.0.0.1", port))
    except OSError:
        close_all(socks)
        raise
    return socks


def recv_all(sock):
    """Everything sock receives until the peer ends its side."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def close_all(socks):
    """Closes every socket of socks, whatever state each is in."""
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def figure(name, value, unit=""):
    """One measured figure on stderr, for the CI log."""
    sys.stderr.write("figure: %-50s %s%s\n" % (name, value, (" " + unit) if unit else ""))
    sys.stderr.flush()


def client_of(sock):
    """"host:port" of sock's own end: how lbd's access log names the client."""
    host, port = sock.getsockname()[:2]
    return "%s:%d" % (host, port)


def parse_kv(line):
    """{key: value} of a logfmt line (values unquoted, as lbd's access lines are)."""
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def ended(sock, timeout):
    """'eof' or 'reset' once the peer ends the connection (what it still
    sends is read and dropped), None if it stays open for `timeout`."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(4096):
                return "eof"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except socket.timeout:
        return None
