"""Backends for the soak: loopback TCP servers whose behaviour the soak
switches at will, all driven by one selector thread.

Every server has an id ("s3") and a fixed port for the whole run; its mode
decides what a newly accepted connection gets:

    echo          answers the soak's hello, then echoes; answers an HTTP GET
                  (lbd's http check) with 200; skips a PROXY v1/v2 header
    hang          accepts and reads, never answers
    stop_reading  accepts and never reads (the kernel buffers fill up)
    reset         accepts and resets the connection at once
    blackhole     listens with a backlog of 0 and never accepts: once the
                  queue is full, connects time out instead of failing
    refuse        the port is closed: connects are refused
    die           like a crash: the port closes and every open connection
                  of the server is reset; the mode becomes "refuse"

Open connections keep the behaviour they were accepted with (only "die"
touches them).  Nothing here raises into the soak: the loop thread logs
unexpected errors to stderr and keeps going.

The client side of the protocol (through lbd):

    client -> "SOAK <nonce>\\n"
    server -> "<server id> <nonce>\\n", then echoes every byte it receives
"""

import errno
import selectors
import socket
import struct
import sys
import threading
import time

MODES = ("echo", "hang", "stop_reading", "reset", "blackhole", "refuse", "die")
LISTENING = ("echo", "hang", "stop_reading", "reset")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
HEAD_MAX = 4096          # PROXY header + hello or HTTP request head
OUT_HIGH = 1 << 20       # echo: stop reading above this much unsent
OUT_LOW = 256 << 10      # ... and read again below this
TCP_ESTABLISHED = 1      # tcpi_state; anything else: the peer has closed or reset

HTTP_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
           b"Connection: close\r\n\r\nok\n")


def _peer_closed(sock):
    """True when the peer has closed (FIN: CLOSE_WAIT, reset: CLOSE): TCP_INFO's state."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return True
    return info[0] != TCP_ESTABLISHED


def _reset(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Conn:
    __slots__ = ("sock", "server", "mode", "state", "inbuf", "outbuf", "close_after",
                 "reading", "events")

    def __init__(self, sock, server, mode):
        self.sock = sock
        self.server = server
        self.mode = mode
        self.state = "head"       # head -> echo, or head -> http
        self.inbuf = b""
        self.outbuf = bytearray()
        self.close_after = False  # close once outbuf is flushed
        self.reading = True
        self.events = 0


class SoakServer:
    """One server: id, port, mode.  Owned by a BackendFarm's loop thread."""

    def __init__(self, farm, sid):
        self.farm = farm
        self.id = sid
        self.mode = "refuse"
        self.listener = None
        self.conns = set()
        self.port = None
        self.stats = {"accepted": 0, "hellos": 0, "http_checks": 0, "reset": 0}

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    # --- loop thread only ---

    def _open_listener(self, backlog):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                s.bind(("127.0.0.1", self.port or 0))
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    s.close()
                    raise
                time.sleep(0.05)
        s.listen(backlog)
        s.setblocking(False)
        self.port = s.getsockname()[1]
        self.listener = s

    def _close_listener(self):
        if self.listener is not None:
            self.farm._unregister(self.listener)
            try:
                self.listener.close()
            except OSError:
                pass
            self.listener = None

    def apply_mode(self, mode):
        old = self.mode
        if mode == "die":
            self._close_listener()
            for c in list(self.conns):
                self.farm._drop(c, reset=True)
            self.mode = "refuse"
            return
        if mode == "refuse":
            self._close_listener()
            self.mode = "refuse"
            return
        if self.listener is None:
            self._open_listener(0 if mode == "blackhole" else 1024)
        if mode == "blackhole":
            self.farm._unregister(self.listener)
            self.listener.listen(0)
        else:
            if old == "blackhole" or not self.farm._registered(self.listener):
                self.listener.listen(1024)
                self.farm._register(self.listener, selectors.EVENT_READ, ("listen", self))
        self.mode = mode

    def accept_ready(self):
        if self.listener is None:
            return  # closed by a command earlier in the same batch of events
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.stats["accepted"] += 1
            if self.mode == "reset":
                self.stats["reset"] += 1
                _reset(sock)
                continue
            sock.setblocking(False)
            c = _Conn(sock, self, self.mode)
            self.conns.add(c)
            self.farm._all_conns.add(c)
            if c.mode == "stop_reading":
                c.reading = False
                continue
            self.farm._register(sock, selectors.EVENT_READ, ("conn", c))
            c.events = selectors.EVENT_READ


class BackendFarm:
    """n servers s0..s{n-1}, each started in `initial_mode` on its own port."""

    def __init__(self, h, n, initial_mode="echo"):
        self.sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._commands = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._all_conns = set()
        self._stopping = False
        self.errors = []
        self.servers = {}
        for i in range(n):
            s = SoakServer(self, "s%d" % i)
            s._open_listener(1024)
            s.mode = "refuse"
            self.servers[s.id] = s
        self._thread = threading.Thread(target=self._loop, name="soak-backends", daemon=True)
        self._thread.start()
        for s in self.servers.values():
            self.set_mode(s.id, initial_mode)
        if h is not None:
            h.servers.append(self)

    # --- the selector (loop thread) ---

    def _registered(self, sock):
        try:
            self.sel.get_key(sock)
            return True
        except (KeyError, ValueError):
            return False

    def _register(self, sock, events, data):
        try:
            self.sel.register(sock, events, data)
        except KeyError:
            self.sel.modify(sock, events, data)

    def _unregister(self, sock):
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _set_events(self, c, events):
        if events == c.events:
            return
        if events == 0:
            self._unregister(c.sock)
        elif c.events == 0:
            self._register(c.sock, events, ("conn", c))
        else:
            self.sel.modify(c.sock, events, ("conn", c))
        c.events = events

    def _drop(self, c, reset=False):
        self._unregister(c.sock)
        c.server.conns.discard(c)
        self._all_conns.discard(c)
        if reset:
            _reset(c.sock)
        else:
            try:
                c.sock.close()
            except OSError:
                pass

    # --- commands from other threads ---

    def _call(self, fn, timeout=10):
        done = threading.Event()
        box = {}

        def run():
            try:
                box["value"] = fn()
            except Exception as exc:  # noqa: BLE001 - handed back to the caller
                box["error"] = exc
            done.set()

        with self._lock:
            self._commands.append(run)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if not done.wait(timeout):
            raise RuntimeError("backend loop did not answer within %ss" % timeout)
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def set_mode(self, sid, mode):
        assert mode in MODES, mode
        self._call(lambda: self.servers[sid].apply_mode(mode))

    def mode(self, sid):
        return self.servers[sid].mode

    def addr(self, sid):
        return self.servers[sid].addr

    def open_conns(self):
        return self._call(lambda: len(self._all_conns))

    def stats(self):
        return self._call(lambda: {sid: dict(s.stats, mode=s.mode, open=len(s.conns))
                                   for sid, s in self.servers.items()})

    def stop(self):
        if self._stopping:
            return
        try:
            self._call(self._shutdown, timeout=10)
        except RuntimeError:
            pass
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(10)

    def _shutdown(self):
        for s in self.servers.values():
            s._close_listener()
            for c in list(s.conns):
                self._drop(c, reset=False)
        self._stopping = True

    # --- the loop ---

    def _loop(self):
        last_sweep = time.monotonic()
        while not self._stopping:
            try:
                events = self.sel.select(0.2)
            except OSError as exc:
                self.errors.append("select: %s" % exc)
                time.sleep(0.05)
                continue
            for key, mask in events:
                kind, obj = key.data
                try:
                    if kind == "wake":
                        self._run_commands()
                    elif kind == "listen":
                        obj.accept_ready()
                    else:
                        self._conn_event(obj, mask)
                except Exception as exc:  # noqa: BLE001 - keep serving
                    self.errors.append("%s: %r" % (kind, exc))
                    sys.stderr.write("soak backends: %s: %r\n" % (kind, exc))
            now = time.monotonic()
            if now - last_sweep >= 1.0:
                last_sweep = now
                # Connections that never read do not see their peer leave.
                for c in list(self._all_conns):
                    if not c.reading and _peer_closed(c.sock):
                        self._drop(c)

    def _run_commands(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with self._lock:
            cmds, self._commands = self._commands, []
        for fn in cmds:
            fn()

    def _conn_event(self, c, mask):
        if c not in self._all_conns:
            return  # dropped earlier in the same batch of events
        if mask & selectors.EVENT_WRITE:
            if not self._flush(c):
                return
        if mask & selectors.EVENT_READ:
            self._read(c)

    def _flush(self, c):
        """Writes what is pending.  Returns False when the connection is gone."""
        while c.outbuf:
            try:
                n = c.sock.send(c.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(c)
                return False
            del c.outbuf[:n]
        if not c.outbuf and c.close_after:
            self._drop(c)
            return False
        self._update_interest(c)
        return True

    def _update_interest(self, c):
        ev = 0
        if c.outbuf:
            ev |= selectors.EVENT_WRITE
        if c.reading and not c.close_after and len(c.outbuf) < OUT_HIGH:
            if len(c.outbuf) <= OUT_LOW or c.events & selectors.EVENT_READ:
                ev |= selectors.EVENT_READ
        self._set_events(c, ev)

    def _read(self, c):
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        if not data:
            if c.mode == "echo" and c.outbuf:
                c.close_after = True
                self._update_interest(c)
            else:
                self._drop(c)
            return
        if c.mode == "hang":
            return
        if c.state == "echo":
            c.outbuf += data
        else:
            c.inbuf += data
            self._head(c)
            if c.sock.fileno() < 0 or c not in self._all_conns:
                return
        if c.outbuf:
            self._flush(c)
        else:
            self._update_interest(c)

    def _head(self, c):
        """Parses what comes before the echo: PROXY header, then hello or GET."""
        buf = c.inbuf
        if buf.startswith(V2_SIGNATURE[: len(buf)]) and len(buf) < 16:
            return self._head_wait(c)
        if buf.startswith(V2_SIGNATURE):
            if len(buf) < 16:
                return self._head_wait(c)
            total = 16 + struct.unpack("!H", buf[14:16])[0]
            if len(buf) < total:
                return self._head_wait(c)
            buf = buf[total:]
        elif buf.startswith(b"PROXY "[: len(buf)]):
            end = buf.find(b"\r\n")
            if end < 0:
                return self._head_wait(c)
            buf = buf[end + 2:]
        if not buf:
            c.inbuf = b""
            return None
        if b"GET "[: len(buf)] == buf[:4] and len(buf) < 4:
            c.inbuf = buf
            return self._head_wait(c)
        if buf.startswith(b"GET "):
            if b"\r\n\r\n" not in buf:
                c.inbuf = buf
                return self._head_wait(c)
            c.server.stats["http_checks"] += 1
            c.outbuf += HTTP_OK
            c.close_after = True
            c.inbuf = b""
            c.state = "http"
            return None
        if buf.startswith(b"SOAK "[: len(buf)]) or buf.startswith(b"SOAK "):
            nl = buf.find(b"\n")
            if nl < 0:
                c.inbuf = buf
                return self._head_wait(c)
            nonce = buf[5:nl]
            c.server.stats["hellos"] += 1
            c.outbuf += b"%s %s\n" % (c.server.id.encode(), nonce)
            c.outbuf += buf[nl + 1:]
            c.inbuf = b""
            c.state = "echo"
            return None
        # Anything else: plain echo.
        c.outbuf += buf
        c.inbuf = b""
        c.state = "echo"
        return None

    def _head_wait(self, c):
        if len(c.inbuf) > HEAD_MAX:
            self._drop(c)
        return None
