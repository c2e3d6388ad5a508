"""Backends: TCP servers in threads of the test process that stand in for
a pool's real backends, one class for every test:

    b = Backend(h, "b1")          # "b1\\n" on each connection, then echoes
    b.count(), b.accepted         # client connections / every connection
    b.peak_active(), b.reset_peak()
                                  # most connections open at once (checks included)
    b.kill()                      # like a crash: the port refuses at once
    b.restart()                   # back on the same port, counts carry on
    pp = Backend(h, "pp", proxy_header=True)
                                  # reads lbd's PROXY header (v1 or v2), answers
                                  # one JSON line saying what it found, then echoes

A client counts as one (count(), client_times()) once it sent HELLO after
the id line (clients.ask() and open_conn() do): lbd's TCP health checks
connect and close, and are connections (accepted) but not clients.
Backends register with a Harness (h.servers), which stops them.
"""

import json
import socket
import struct
import threading
import time

from .procs import reserve_port, scaled, wait_until

# What a test client sends right after reading the backend's id line.  The
# backend counts a connection as a client's only once this arrives, so lbd's
# own TCP health checks (connect, close) never count as traffic.
HELLO = b"lbtest-hello\n"

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_V1_MAX = 107  # the longest v1 line the spec allows, CRLF included


def _recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d header bytes" % (len(buf), n))
        buf += chunk
    return buf


def parse_proxy_v2(conn):
    """Reads exactly one PROXY v2 header from conn; returns what it says.

    Reads the 16 fixed bytes, then exactly `length` more, so whatever the
    client sent after the header is left in the socket for the echo.
    """
    head = _recv_exact(conn, 16)
    if head[:12] != PROXY_V2_SIGNATURE:
        raise ValueError("no v2 signature: %r" % head[:12])
    ver_cmd, fam, length = head[12], head[13], struct.unpack("!H", head[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ValueError("version nibble %d, expected 2" % (ver_cmd >> 4))
    command = {0: "LOCAL", 1: "PROXY"}.get(ver_cmd & 0xF)
    if command is None:
        raise ValueError("unknown command %d" % (ver_cmd & 0xF))
    body = _recv_exact(conn, length)
    out = {"version": 2, "command": command, "length": length,
           "family": {0x11: "TCP4", 0x21: "TCP6", 0x00: "UNSPEC"}.get(fam, "0x%02x" % fam)}
    if fam == 0x11:
        if length < 12:
            raise ValueError("TCP4 header with a %d-byte address block" % length)
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        out["src"] = [socket.inet_ntop(socket.AF_INET, src), sport]
        out["dst"] = [socket.inet_ntop(socket.AF_INET, dst), dport]
    elif fam == 0x21:
        if length < 36:
            raise ValueError("TCP6 header with a %d-byte address block" % length)
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        out["src"] = [socket.inet_ntop(socket.AF_INET6, src), sport]
        out["dst"] = [socket.inet_ntop(socket.AF_INET6, dst), dport]
    return out


def parse_proxy_v1(conn):
    """Reads one PROXY v1 line (byte by byte: never past its CRLF)."""
    line = b""
    while not line.endswith(b"\r\n"):
        if len(line) >= PROXY_V1_MAX:
            raise ValueError("no CRLF in the first %d bytes: %r" % (PROXY_V1_MAX, line))
        line += _recv_exact(conn, 1)
    words = line[:-2].decode("ascii").split(" ")
    if words[0] != "PROXY":
        raise ValueError("v1 line does not start with PROXY: %r" % line)
    out = {"version": 1, "family": words[1] if len(words) > 1 else None, "line": line.decode()}
    if out["family"] in ("TCP4", "TCP6"):
        if len(words) != 6:
            raise ValueError("v1 line with %d fields: %r" % (len(words), line))
        out["src"] = [words[2], int(words[4])]
        out["dst"] = [words[3], int(words[5])]
    return out


class Backend:
    """A TCP server on 127.0.0.1 that says "<id>\\n" on each accepted
    connection, then echoes everything it reads.

    With proxy_header=True it first reads the PROXY protocol header lbd
    sends (v1 or v2, told apart by the first byte) and answers one JSON
    line instead of the id: {"id", "version", "family", "src", "dst",
    "peer", ...}, or {"id", "error"} (and closes) when the first bytes are
    not a valid header.  Whatever follows the header is echoed.

    accepted counts every connection (health checks included), count() and
    client_times() the client connections (those that sent HELLO), active()
    those still open, peak_active() the most open at once since the last
    reset_peak().  A connection counts as open from accept() until the
    backend reads its EOF, so with connections closing and opening at the
    same time the peak may read one high, never low.  kill() and restart()
    take the listener away and bring it back on the same port.
    """

    def __init__(self, h, backend_id, port=0, proxy_header=False):
        self.id = backend_id
        self.proxy_header = proxy_header
        self.lock = threading.Lock()
        self.accepted = 0
        self._client_times = []
        self.conns = set()
        self._peak = 0
        self._threads = []
        self.sock = None
        self._acceptor = None
        self._closed = True
        self._listen(port)
        if h is not None:
            h.servers.append(self)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _listen(self, port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        reserve_port(self.port)
        acceptor = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                                    name="backend-%s" % self.id)
        with self.lock:
            self.sock, self._acceptor, self._closed = sock, acceptor, False
        acceptor.start()
        return True

    def _accept_loop(self, sock):
        while True:
            try:
                conn, peer = sock.accept()
            except OSError:
                return  # kill() shut the listener down
            now = time.monotonic()
            with self.lock:
                if self._closed or sock is not self.sock:
                    conn.close()
                    return
                self.accepted += 1
                self.conns.add(conn)
                self._peak = max(self._peak, len(self.conns))
                t = threading.Thread(target=self._serve, args=(conn, peer, now), daemon=True)
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, conn, peer, accepted_at):
        try:
            conn.settimeout(None)
            if self.proxy_header:
                if not self._answer_proxy_header(conn, peer):
                    return
            else:
                conn.sendall(("%s\n" % self.id).encode())
            self._echo(conn, accepted_at)
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _answer_proxy_header(self, conn, peer):
        """Parses the header and answers the JSON line; False when it was bad."""
        started = time.monotonic()
        try:
            first = conn.recv(1, socket.MSG_PEEK)
            if not first:
                return False
            if first == PROXY_V2_SIGNATURE[:1]:
                info = parse_proxy_v2(conn)
            else:
                info = parse_proxy_v1(conn)
        except (ValueError, EOFError, UnicodeDecodeError) as exc:
            conn.sendall((json.dumps({"id": self.id, "error": str(exc)}) + "\n").encode())
            return False
        info["id"] = self.id
        info["peer"] = list(peer)
        info["parse_s"] = round(time.monotonic() - started, 6)
        conn.sendall((json.dumps(info) + "\n").encode())
        return True

    def _echo(self, conn, accepted_at):
        head = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            if len(head) < len(HELLO):
                before = len(head)
                head += data[: len(HELLO) - before]
                if before < len(HELLO) <= len(head) and head == HELLO:
                    with self.lock:
                        self._client_times.append(accepted_at)
            conn.sendall(data)

    def count(self):
        """Client connections so far (health checks excluded)."""
        with self.lock:
            return len(self._client_times)

    def client_times(self, since=0.0):
        """Accept times of the client connections accepted at or after `since`."""
        with self.lock:
            return sorted(t for t in self._client_times if t >= since)

    def active(self):
        """Connections open now, health checks included."""
        with self.lock:
            return len(self.conns)

    def peak_active(self):
        """Most connections open at once since the last reset_peak()."""
        with self.lock:
            return self._peak

    def reset_peak(self):
        """Starts a new peak from the connections open now."""
        with self.lock:
            self._peak = len(self.conns)

    def kill(self):
        """Like a crashed process: the port refuses at once, open connections end.

        shutdown() on the listening socket wakes the blocked accept() and
        makes new connects fail with ECONNREFUSED from this instant.
        """
        with self.lock:
            if self._closed:
                return
            self._closed = True
            sock, acceptor = self.sock, self._acceptor
            conns, threads = list(self.conns), list(self._threads)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        acceptor.join(5)
        sock.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)

    stop = kill  # what Harness.cleanup() calls

    def restart(self, timeout=None):
        """Listens again on the same port (killing the listener first if it
        is up); the counts carry on.  Retries while the port is taken (an
        outgoing connection may hold it for a moment)."""
        self.kill()
        port = self.port
        wait_until(lambda: self._listen(port), timeout or scaled(5),
                   "backend %s to listen on port %d again" % (self.id, port))
        return self


class ThreadedServer:
    """A listener on a free 127.0.0.1 port that serves each connection in a
    thread of its own: a test's special backend subclasses it and writes
    serve(conn) (the connection is closed after it returns or raises
    OSError).  on_accept(conn) runs on the accept thread first, in order,
    for what must be recorded as connections arrive.  `prepare(sock)` may
    set options on the listener before it listens (accepted sockets inherit
    them).  Registered with the harness, which stops it."""

    def __init__(self, h, backlog=256, prepare=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if prepare:
            prepare(self.sock)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()
        h.servers.append(self)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def on_accept(self, conn):
        return None

    def serve(self, conn, arg):
        raise NotImplementedError

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            arg = self.on_accept(c)
            threading.Thread(target=self._serve_one, args=(c, arg), daemon=True).start()

    def _serve_one(self, c, arg):
        try:
            self.serve(c, arg)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        try:
            self.sock.close()
        except OSError:
            pass
