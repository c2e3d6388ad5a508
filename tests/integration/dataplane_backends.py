"""Backends for the data-plane tests: a killable id-and-echo server and a
server that reads a PROXY protocol header (v1 or v2) before anything else.

Both run in threads of the test process, listen on 127.0.0.1, register with
a Harness (h.servers) so they are stopped with it, and keep no state beyond
what a test reads: accepted client connections and the ones still open.

    b = EchoBackend(h, "b3")           # "b3\\n" on accept, then echoes
    b.kill()                           # listener and connections gone at once
    b = EchoBackend(h, "b3", b.port)   # back on the same port

    pp = ProxyHeaderBackend(h, "pp")   # parses the header, answers one JSON line
                                       # ({"version": 2, "src": [...], ...}), then echoes
"""

import json
import socket
import struct
import threading
import time

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line the spec allows, CRLF included


class _Server:
    """Accept loop and connection bookkeeping shared by the backends here."""

    def __init__(self, h, backend_id, port=0):
        self.id = backend_id
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.accepted = 0
        self.conns = set()
        self._threads = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="%s-%s" % (type(self).__name__, backend_id))
        self._acceptor.start()
        if h is not None:
            h.servers.append(self)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _accept_loop(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return  # listener shut down
            with self.lock:
                if self._closed:
                    conn.close()
                    return
                self.accepted += 1
                self.conns.add(conn)
                t = threading.Thread(target=self._serve_and_forget, args=(conn, peer), daemon=True)
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve_and_forget(self, conn, peer):
        try:
            conn.settimeout(None)
            self.serve(conn, peer)
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def serve(self, conn, peer):
        raise NotImplementedError

    @staticmethod
    def echo_forever(conn):
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)

    def count(self):
        with self.lock:
            return self.accepted

    def active(self):
        with self.lock:
            return len(self.conns)

    def kill(self):
        """Like a crashed process: the port refuses at once, open connections end.

        shutdown() on the listening socket wakes the blocked accept() and
        makes new connects fail with ECONNREFUSED from this instant.
        """
        with self.lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self.conns)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._acceptor.join(5)
        self.sock.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(5)

    stop = kill  # what Harness.cleanup() calls


class EchoBackend(_Server):
    """Says "<id>\\n" on each accepted connection, then echoes."""

    def serve(self, conn, peer):
        conn.sendall(("%s\n" % self.id).encode())
        self.echo_forever(conn)


def _recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d header bytes" % (len(buf), n))
        buf += chunk
    return buf


def parse_v2(conn):
    """Reads exactly one PROXY v2 header from conn; returns what it says.

    Reads the 16 fixed bytes, then exactly `length` more, so whatever the
    client sent after the header is left in the socket for the echo.
    """
    head = _recv_exact(conn, 16)
    if head[:12] != V2_SIGNATURE:
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


def parse_v1(conn):
    """Reads one PROXY v1 line (byte by byte: never past its CRLF)."""
    line = b""
    while not line.endswith(b"\r\n"):
        if len(line) >= V1_MAX:
            raise ValueError("no CRLF in the first %d bytes: %r" % (V1_MAX, line))
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


class ProxyHeaderBackend(_Server):
    """Parses the PROXY header lbd sends first (v1 or v2, told apart by the
    first byte), answers with one JSON line holding what it read, then
    echoes everything that follows the header.  A connection whose first
    bytes are not a valid header gets {"error": ...} and is closed."""

    def serve(self, conn, peer):
        started = time.monotonic()
        try:
            first = conn.recv(1, socket.MSG_PEEK)
            if not first:
                return
            info = parse_v2(conn) if first == V2_SIGNATURE[:1] else parse_v1(conn)
        except (ValueError, EOFError, UnicodeDecodeError) as exc:
            conn.sendall((json.dumps({"id": self.id, "error": str(exc)}) + "\n").encode())
            return
        info["id"] = self.id
        info["peer"] = list(peer)
        info["parse_s"] = round(time.monotonic() - started, 6)
        conn.sendall((json.dumps(info) + "\n").encode())
        self.echo_forever(conn)
