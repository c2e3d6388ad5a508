#!/usr/bin/python3
"""Live upgrade: `lbd --upgrade-socket PATH` hands its listeners and its
established sessions to a new lbd started with the same flags, and clients
notice nothing.

The first lbd binds a unix socket at PATH (mode 0600).  A second lbd with
the same --pool, --admin, --http and --upgrade-socket (--workers may
differ) connects to it, receives every listening socket over SCM_RIGHTS,
syncs its pools from etcd, logs `upgrade: ready` and tells the old one to
stop accepting; the old one hands over every session (both sockets and the
bytes not sent yet), logs `upgrade: hand-over finished ... moved=N kept=M`
and exits 0 once it holds no session.  The new one logs
`upgrade: sessions taken over ... count=N`.  SIGUSR2 makes the old lbd
start the new one itself (it logs `new_pid=N`).

  1. three upgrades in a row (--workers 1, 2, 1, 2) while a client
     connects every 5 ms (connect, send a line, read the echo, close):
     nothing refused, reset or failed, each old lbd exits 0;
  2. 1,000 long-lived connections, each sending 32-100 random bytes every
     50 ms that the backend echoes, across one upgrade: every byte comes
     back in order on every connection (running sha256 of what was sent
     and what came back), none is closed or reset; the old lbd exits
     within 2 s of `upgrade: ready`, with moved=1000 kept=0, and the new
     one reports taking over 1,000;
  3. 100 MB from the backend to a slow reader and 100 MB from a client to
     a slow backend, the upgrade landing mid-transfer (lbd holds unsent
     bytes both ways): both complete and their sha256 match, moved=2;
  4. a new lbd whose session hand-over version is incompatible
     (LBD_TEST_HANDOVER_VERSION=99): the listeners still move, nothing is
     refused, the old lbd logs `listeners only` and moved=0 and keeps 20
     long-lived connections exchanging until they close, then exits 0; new
     connections go through the new lbd (the owner of their sockets in
     /proc, and its /metrics);
  5. SIGUSR2: the old lbd re-executes itself (same path and argv, seen in
     /proc/PID/cmdline), the child takes over, a connection opened before
     the signal keeps working, the old lbd exits 0; the test stops the
     child by its PID;
  5e. what etcd does not hold moves too: a backend drained and one
     re-weighted with `lbctl --local`, and one the checks found down, are
     so in the new lbd from its first accept: 30 connections right after
     `upgrade: ready` are all served, none by the down backend;
  5g. a backend drained with drain_timeout 4s, upgraded 2 s later: its
     last connection (moved) is closed 4 s after the drain, not 6;
  5f. the old lbd ends its WatchEvents streams when the new one is ready
     (UNAVAILABLE, naming the hand-over, read by grpcio) and `lbctl watch`
     reconnects to the new one and goes on printing;
  6. a stale socket file at PATH (left by kill -9) does not stop a fresh
     lbd; PATH in a missing directory is one error line and exit 1 or 2.
  6b. the running lbd killed during the hand-over: the new one starts on
     its own; 6c. a running lbd that answers nothing keeps its ports;
  6d. a new lbd with 2 workers (the running one has 1) killed before it
     is ready: 40 clients connected meanwhile are all served by the
     running lbd (its own sockets listen only once it accepts);
  6e. the old lbd killed -9 while it hands its 300 sessions over (0, 3
     and 100 ms after the new one's ready): the new lbd serves on and stops cleanly, every
     session it took keeps every byte in order, the rest close.

Everything talks to one backend process (this script run with
`--backend`): one selector loop that echoes, or streams/swallows N bytes
on request, so that 1,000 connections cost the two cores little.  Under
the sanitizer build LBTEST_TIMEOUT_SCALE stretches the start-up deadlines,
not the bounds asserted (2 s from ready to the old lbd's exit).  With
LBD_WORKERS in the environment the tests pass no --workers (the
environment decides).

The figures measured are printed as "figure:" lines.
"""

import collections
import hashlib
import heapq
import json
import os
import random
import re
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Etcd, ForeignProc, HarnessTestCase, Lbd, UpgradeLbd, figure,  # noqa: E402
                    kv_int, lbd_binary, log_ts, raise_nofile, run, scaled, set_subreaper,
                    sockets_to_port_by_pid, unix_listener_pids, wait_until, workers_args)

PREFIX = "/upgrade/"
POOL = "up"
BACKEND_ID = "u1"
# Long enough that no session is cut short by the grace period in these
# tests: sessions that stay in an old lbd (test 4) must live until their
# clients close them.
GRACE = "60s"
READY_MARK = "upgrade: ready"
HANDOVER_MARK = "upgrade: hand-over finished"
TAKEN_MARK = "upgrade: sessions taken over"
LISTENERS_ONLY_MARK = "listeners only"

# The bound asserted between the new lbd's `upgrade: ready` and the old
# one's exit with 1,000 sessions to hand over.  Not scaled.
READY_TO_EXIT_S = 2.0
# An old lbd whose last kept session closed exits within this (not scaled).
LAST_CLOSE_TO_EXIT_S = 2.0

CHUNK = 1 << 20          # the pseudo-random streams are made 1 MiB at a time
TRANSFER_BYTES = 100 * CHUNK
TRANSFER_RATE = 10 * CHUNK   # bytes/s: ~10 s per transfer, the upgrade lands mid-way


# ---------------------------------------------------------------------------
# The backend process: `test_upgrade.py --backend`.
#
# The first 5 bytes of a connection pick what it does:
#   "SEND N SEED\n"  sends N pseudo-random bytes (random.Random(SEED), made
#                    CHUNK at a time), then waits for the client's EOF;
#   "RECV N RATE\n"  reads N bytes at RATE bytes/s at most, answers
#                    "<sha256 hex> <count>\n", then waits for the EOF;
#   anything else    is echoed, those 5 bytes included.


def stream_chunks(seed, n):
    """The pseudo-random stream of SEND/RECV: chunks of CHUNK bytes (the last shorter)."""
    rng = random.Random(seed)
    left = n
    while left > 0:
        k = min(CHUNK, left)
        yield rng.randbytes(k)
        left -= k


def stream_digest(seed, n):
    h = hashlib.sha256()
    for c in stream_chunks(seed, n):
        h.update(c)
    return h.hexdigest()


class _BackendConn:
    READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

    def __init__(self, srv, sock):
        self.srv = srv
        self.sock = sock
        self.mode = None
        self.head = b""
        self.out = bytearray()
        self.events = 0
        self.paused = False      # RECV over its rate: reading stopped until a timer
        self.closed = False
        self.eof = False
        self.gen = None
        self.remaining = 0       # SEND: bytes still to make
        self.hash = None         # RECV
        self.want = 0
        self.got = 0
        self.rate = 0
        self.t0 = 0.0
        self.update()

    # interest in events follows the state
    def update(self):
        if self.closed:
            return
        ev = 0
        if not self.eof and not self.paused and len(self.out) < (4 << 20):
            ev |= self.READ
        if self.out or (self.mode == "send" and self.remaining > 0):
            ev |= self.WRITE
        if ev == self.events:
            return
        if self.events == 0:
            self.srv.sel.register(self.sock, ev, self)
        elif ev == 0:
            self.srv.sel.unregister(self.sock)
        else:
            self.srv.sel.modify(self.sock, ev, self)
        self.events = ev

    def close(self):
        if self.closed:
            return
        if self.events:
            self.srv.sel.unregister(self.sock)
            self.events = 0
        self.closed = True
        self.sock.close()

    def on_read(self):
        try:
            data = self.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.eof = True
            if self.mode is None and self.head:
                self.mode, self.out = "echo", bytearray(self.head)
            if not self.out:
                self.close()
                return
            self.update()
            return
        if self.mode is None:
            self.head += data
            if len(self.head) < 5:
                return
            if self.head[:5] not in (b"SEND ", b"RECV "):
                self.mode = "echo"
                data, self.head = self.head, b""
            elif b"\n" not in self.head:
                if len(self.head) > 200:
                    self.close()
                return
            else:
                line, data = self.head.split(b"\n", 1)
                self.head = b""
                words = line.decode().split()
                if words[0] == "SEND":
                    self.mode = "send"
                    self.remaining = int(words[1])
                    self.gen = stream_chunks(int(words[2]), self.remaining)
                    data = b""  # whatever follows is ignored
                else:
                    self.mode = "recv"
                    self.want, self.rate = int(words[1]), int(words[2])
                    self.hash = hashlib.sha256()
                    self.t0 = time.monotonic()
        if self.mode == "echo":
            self.out += data
        elif self.mode == "recv":
            take = data[:max(0, self.want - self.got)]
            self.hash.update(take)
            self.got += len(take)
            if take and self.got >= self.want:
                self.out += ("%s %d\n" % (self.hash.hexdigest(), self.got)).encode()
            if self.rate and self.got < self.want:
                # over the rate: stop reading until the schedule catches up
                due = self.t0 + (self.got - 262144) / self.rate
                if due > time.monotonic():
                    self.paused = True
                    self.srv.at(due, self.resume)
        self.flush()

    def resume(self):
        self.paused = False
        self.update()

    def flush(self):
        if self.closed:
            return
        while True:
            if self.mode == "send" and self.remaining > 0 and len(self.out) < 262144:
                c = next(self.gen)
                self.remaining -= len(c)
                self.out += c
            if not self.out:
                break
            try:
                n = self.sock.send(self.out[:262144])
            except BlockingIOError:
                break
            except OSError:
                self.close()
                return
            del self.out[:n]
        if self.eof and not self.out:
            self.close()
            return
        self.update()


class _BackendServer:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.timers = []
        self.seq = 0

    def at(self, when, fn):
        self.seq += 1
        heapq.heappush(self.timers, (when, self.seq, fn))

    def serve(self):
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4096)
        lsock.setblocking(False)
        self.sel.register(lsock, selectors.EVENT_READ, None)
        print("backend listening %d" % lsock.getsockname()[1], flush=True)
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            events = self.sel.select(timeout)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()
            for key, mask in events:
                c = key.data
                if c is None:
                    while True:
                        try:
                            s, _ = lsock.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:  # EMFILE: say so, keep serving
                            print("backend accept: %r" % exc, flush=True)
                            break
                        s.setblocking(False)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        _BackendConn(self, s)
                    continue
                if c.closed:
                    continue
                if mask & selectors.EVENT_READ:
                    c.on_read()
                if mask & selectors.EVENT_WRITE and not c.closed:
                    c.flush()


def serve_backend():
    raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _BackendServer().serve()


# ---------------------------------------------------------------------------
# Helpers


_upgrade_supported = None


def require_upgrade_flag(case):
    """Fails (never skips) with one clear message when this lbd has no --upgrade-socket."""
    global _upgrade_supported
    if _upgrade_supported is None:
        rc, out, err = run([lbd_binary(), "--help"], timeout=scaled(10))
        _upgrade_supported = rc == 0 and "--upgrade-socket" in out
    if not _upgrade_supported:
        case.fail("this lbd (%s) has no --upgrade-socket (its --help does not name it): the "
                  "live upgrade under test is not in this build" % lbd_binary())


class LogWatch:
    """Reads a log file as it grows (lines of lbd, not the harness's ### header)."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines = []

    def scan(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return self.lines
        self.offset += len(data)
        data = self.partial + data
        parts = data.split(b"\n")
        self.partial = parts.pop()
        self.lines += [p.decode("utf-8", "replace") for p in parts
                       if not p.startswith(b"### ")]
        return self.lines

    def find(self, needle, start=0):
        """The first line at or after index `start` containing needle (or matching a
        compiled regex), or None."""
        for ln in self.scan()[start:]:
            if (needle.search(ln) if hasattr(needle, "search") else needle in ln):
                return ln
        return None

    def find_all(self, needle):
        return [ln for ln in self.scan() if needle in ln]


class UpLbd(UpgradeLbd):
    """lbd with --upgrade-socket; successor() makes the next lbd with exactly
    the same flags (same ports and socket path; --workers may differ)."""

    def __init__(self, h, etcd_url, sock_path, name, workers=None, env=None, like=None):
        self._watch = None
        self._watch_proc = None
        super().__init__(h, etcd_url, PREFIX, [POOL], sock_path=sock_path, workers=workers,
                         like=like, extra_args=["--shutdown-grace", GRACE], env=env, name=name)

    @property
    def port(self):
        return self.pool_port(POOL)

    def successor(self, name, workers=None, env=None):
        return UpLbd(self.h, self.etcd_url, self.sock_path, name, workers=workers, env=env,
                     like=self)

    @property
    def log(self):
        if self._watch is None or self._watch_proc is not self.proc:
            self._watch = LogWatch(self.proc.log_path)
            self._watch_proc = self.proc
        return self._watch

    def wait_line(self, needle, timeout, what, also=()):
        """Waits for a line of this lbd's log; fails at once (with the log) if this
        lbd, or one of `also`, exits first.  Returns (line, time.time() it was seen)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.log.find(needle)
            if line is not None:
                return line, time.time()
            for lbd in (self,) + tuple(also):
                if not lbd.proc.alive():
                    line = self.log.find(needle)
                    if line is not None:
                        return line, time.time()
                    raise AssertionError(
                        "%s (pid %d) exited with %s while waiting for %s; its log:\n%s"
                        % (lbd.proc.name, lbd.proc.pid, lbd.proc.popen.returncode, what,
                           lbd.proc.log_tail(40)))
            if time.monotonic() >= deadline:
                raise AssertionError("timed out after %.1fs waiting for %s; log of %s:\n%s"
                                     % (timeout, what, self.proc.name, self.proc.log_tail(40)))
            time.sleep(0.005)

    def wait_exit(self, timeout, what):
        """Waits for the process to exit by itself: (exit code, time.time() seen)."""
        deadline = time.monotonic() + timeout
        while self.proc.popen.poll() is None:
            if time.monotonic() >= deadline:
                raise AssertionError("%s still running %.1fs after %s; its log:\n%s"
                                     % (self.proc.name, timeout, what, self.proc.log_tail(40)))
            time.sleep(0.005)
        seen = time.time()
        self.proc.returncode = self.proc.popen.returncode
        return self.proc.returncode, seen


def handover_figures(old_log):
    """(moved, kept, line) from the old lbd's `hand-over finished` line."""
    line = old_log.find(HANDOVER_MARK)
    if line is None:
        return None, None, None
    return kv_int(line, "moved"), kv_int(line, "kept"), line


def taken_over(new_log):
    """The sum of count= over the new lbd's `sessions taken over` lines."""
    return sum(kv_int(ln, "count") or 0 for ln in new_log.find_all(TAKEN_MARK))


# ---------------------------------------------------------------------------
# Clients


class ShortLoop(threading.Thread):
    """A new connection every `interval` s: connect, send a line, read its echo,
    close.  Records (monotonic start, outcome): "ok", "refused", "reset",
    "eof", "timeout" or what else went wrong."""

    def __init__(self, port, interval=0.005, timeout=5.0):
        super().__init__(daemon=True, name="short-loop")
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.records = []
        self._halt = threading.Event()

    def one(self, n, payload=None):
        payload = payload or b"short %d\n" % n
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        except ConnectionRefusedError:
            return "refused"
        except socket.timeout:
            return "timeout (connect)"
        except OSError as exc:
            return "connect: %r" % exc
        try:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(len(payload) - len(got))
                if not chunk:
                    return "eof after %d of %d bytes" % (len(got), len(payload))
                got += chunk
            return "ok" if got == payload else "echo %r" % got
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            return "timeout"
        except OSError as exc:
            return "%r" % exc
        finally:
            s.close()

    def run(self):
        n = 0
        next_at = time.monotonic()
        while not self._halt.is_set():
            t0 = time.monotonic()
            self.records.append((t0, self.one(n)))
            n += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._halt.wait(delay)
            else:
                next_at = time.monotonic()

    def count(self, since=0.0, outcome=None):
        return sum(1 for t, o in list(self.records)
                   if t >= since and (outcome is None or o == outcome))

    def stop(self):
        self._halt.set()
        self.join(self.timeout + 5)
        return list(self.records)


class _Long:
    __slots__ = ("idx", "sock", "pending", "sent", "got", "sent_hash", "got_hash", "error",
                 "closed")

    def __init__(self, idx, sock):
        self.idx = idx
        self.sock = sock
        self.pending = bytearray()
        self.sent = 0            # bytes committed to the stream (hashed)
        self.got = 0
        self.sent_hash = hashlib.sha256()
        self.got_hash = hashlib.sha256()
        self.error = None
        self.closed = False


class LongConns(threading.Thread):
    """n connections held open, each sending 32-100 random bytes every `period`
    s, all driven by one selector loop.  Every byte sent and every byte that
    comes back goes into a running sha256 per connection."""

    GROUPS = 5

    def __init__(self, port, n, period=0.05, seed=1):
        super().__init__(daemon=True, name="long-conns")
        self.port = port
        self.period = period
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.sending = True
        self._halt = threading.Event()
        self.conns = []
        for i in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError as exc:
                for c in self.conns:
                    c.sock.close()
                raise AssertionError("long-lived connection %d of %d: %r" % (i, n, exc))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            self.conns.append(_Long(i, s))
        self.sel = selectors.DefaultSelector()
        for c in self.conns:
            self.sel.register(c.sock, selectors.EVENT_READ, c)

    def _fail(self, c, why):
        if c.error is None:
            c.error = why
        if not c.closed:
            c.closed = True
            self.sel.unregister(c.sock)
            c.sock.close()

    def _push(self, c):
        if not c.pending or c.closed:
            return
        try:
            n = c.sock.send(c.pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(c, "send: %s" % type(exc).__name__)
            return
        del c.pending[:n]

    def run(self):
        tick = self.period / self.GROUPS
        group = 0
        next_tick = time.monotonic()
        while not self._halt.is_set():
            now = time.monotonic()
            if now >= next_tick:
                with self.lock:
                    sending = self.sending
                for c in self.conns[group::self.GROUPS]:
                    if c.closed:
                        continue
                    if sending:
                        msg = self.rng.randbytes(self.rng.randint(32, 100))
                        c.sent_hash.update(msg)
                        c.sent += len(msg)
                        c.pending += msg
                    self._push(c)
                group = (group + 1) % self.GROUPS
                next_tick += tick
                if next_tick < now:
                    next_tick = now + tick
            for key, _ in self.sel.select(max(0.0, next_tick - time.monotonic())):
                c = key.data
                if c.closed:
                    continue
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    self._fail(c, "reset")
                    continue
                except OSError as exc:
                    self._fail(c, "recv: %s" % type(exc).__name__)
                    continue
                if not data:
                    self._fail(c, "closed by lbd (EOF) after %d of %d bytes came back"
                               % (c.got, c.sent))
                    continue
                c.got_hash.update(data)
                c.got += len(data)
                if c.got > c.sent:
                    self._fail(c, "more bytes came back (%d) than were sent (%d)"
                               % (c.got, c.sent))

    def stop_sending(self):
        with self.lock:
            self.sending = False

    def snapshot(self):
        """[bytes come back] per connection, now."""
        return [c.got for c in self.conns]

    def errors(self):
        return [(c.idx, c.error) for c in self.conns if c.error]

    def all_answered(self):
        return all(c.got > 0 or c.error for c in self.conns)

    def caught_up(self):
        return all(c.error or (not c.pending and c.got == c.sent) for c in self.conns)

    def halt(self):
        self._halt.set()
        if self.is_alive():
            self.join(10)

    def close(self):
        self.halt()
        for c in self.conns:
            if not c.closed:
                c.closed = True
                try:
                    self.sel.unregister(c.sock)
                except (KeyError, ValueError):
                    pass
                c.sock.close()
        self.sel.close()


class Transfer(threading.Thread):
    """One 100 MB transfer through lbd.

    "down": the backend sends `size` pseudo-random bytes, the client reads
    them at `rate`; "up": the client sends them as fast as lbd takes them,
    the backend reads at `rate` and answers their sha256.  Past `hold_at`
    bytes the client waits while `hold` is set (so the upgrade lands
    mid-transfer however long the new lbd takes to start).
    """

    def __init__(self, port, direction, size, seed, rate, hold_at, hold, release):
        super().__init__(daemon=True, name="transfer-%s" % direction)
        self.port = port
        self.direction = direction
        self.size = size
        self.seed = seed
        self.rate = rate
        self.hold_at = hold_at
        self.hold = hold
        self.release = release
        self.done = 0
        self.error = None
        self.digest = None       # what the receiving side computed
        self.expected = None     # what the sending side sent
        self.finished_at = None
        self.held_s = 0.0
        self.sock = None

    def abort(self):
        """Ends the transfer where it is (a failed test's cleanup)."""
        self.release.set()
        s = self.sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.is_alive():
            self.join(10)

    def _maybe_hold(self):
        if self.done >= self.hold_at and self.hold.is_set() and not self.release.is_set():
            t = time.monotonic()
            self.release.wait(scaled(120))
            self.held_s += time.monotonic() - t

    def run(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError as exc:
            self.error = "connect: %r" % exc
            return
        self.sock = s
        try:
            s.settimeout(scaled(30))
            if self.direction == "down":
                self._down(s)
            else:
                self._up(s)
        except ConnectionResetError:
            self.error = "reset after %d of %d bytes" % (self.done, self.size)
        except socket.timeout:
            self.error = "timed out after %d of %d bytes" % (self.done, self.size)
        except OSError as exc:
            self.error = "%r after %d of %d bytes" % (exc, self.done, self.size)
        finally:
            self.finished_at = time.monotonic()
            s.close()

    def _down(self, s):
        s.sendall(b"SEND %d %d\n" % (self.size, self.seed))
        h = hashlib.sha256()
        t0 = time.monotonic()
        while self.done < self.size:
            data = s.recv(min(65536, self.size - self.done))
            if not data:
                self.error = "EOF after %d of %d bytes" % (self.done, self.size)
                return
            h.update(data)
            self.done += len(data)
            self._maybe_hold()
            ahead = t0 + self.held_s + self.done / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        self.digest = h.hexdigest()
        s.shutdown(socket.SHUT_WR)
        extra = s.recv(1)
        if extra:
            self.error = "bytes past the %d asked for" % self.size
        self.expected = stream_digest(self.seed, self.size)

    def _up(self, s):
        s.sendall(b"RECV %d %d\n" % (self.size, self.rate))
        h = hashlib.sha256()
        for chunk in stream_chunks(self.seed, self.size):
            h.update(chunk)
            view = memoryview(chunk)
            for off in range(0, len(chunk), 65536):
                s.sendall(view[off:off + 65536])
                self.done += len(view[off:off + 65536])
                self._maybe_hold()
        self.expected = h.hexdigest()
        answer = lbtest.read_line(s, limit=200)
        if answer is None:
            self.error = "no digest line from the backend after sending %d bytes" % self.size
            return
        digest, _, count = answer.partition(" ")
        self.digest = digest
        if count != str(self.size):
            self.error = "the backend counted %s bytes of %d" % (count, self.size)


# ---------------------------------------------------------------------------


class Upgrade(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        raise_nofile()
        h = cls.h
        cls.etcd = Etcd(h).start()
        cls.backend_proc = h.spawn("backend", [sys.executable, os.path.abspath(__file__),
                                               "--backend"])
        line = wait_until(lambda: re.search(r"backend listening (\d+)",
                                            cls.backend_proc.log_text()),
                          scaled(15), "the backend process to listen")
        cls.backend_port = int(line.group(1))
        lbtest.reserve_port(cls.backend_port)
        cls.etcd.put("%spools/%s/config" % (PREFIX, POOL), json.dumps({"health": {"type": "none"}}))
        cls.etcd.put(lbtest.backend_key(PREFIX, POOL, BACKEND_ID),
                     lbtest.backend_value("127.0.0.1:%d" % cls.backend_port))

    # -- helpers ---------------------------------------------------------

    def start_first(self, tag, workers=None):
        """The first lbd of a test: ready, its backend listed, an echo through it."""
        require_upgrade_flag(self)
        sock = self.h.path("%s.sock" % tag)
        lbd = UpLbd(self.h, self.etcd.url, sock, "%s-lbd1" % tag, workers=workers).start()
        wait_until(lambda: BACKEND_ID in lbd.backends(POOL), scaled(10),
                   "lbd to list the backend")
        self.assertEqual(self.echo_once(lbd.port), "ok", "an echo through the first lbd")
        return lbd

    def echo_once(self, port, payload=b"ping through lbd\n"):
        return ShortLoop(port).one(0, payload)

    def upgrade(self, old, name, workers=None, env=None):
        """Starts the successor of `old`; returns it once it logged `upgrade: ready`,
        with that line and its wall-clock time (the log's ts=, else when seen)."""
        new = old.successor(name, workers=workers, env=env).spawn()
        line, seen = new.wait_line(READY_MARK, scaled(30),
                                   "%s to log %r (upgrade from %s, pid %d)"
                                   % (name, READY_MARK, old.proc.name, old.proc.pid),
                                   also=(old,))
        return new, line, log_ts(line) or seen

    def wait_handover(self, old, timeout):
        """The old lbd's `hand-over finished` line."""
        line, _ = old.wait_line(HANDOVER_MARK, timeout,
                                "%s to log %r" % (old.proc.name, HANDOVER_MARK))
        return line

    def freeze_etcd(self):
        """SIGSTOPs etcd (it takes connections and answers nothing); returns thaw(),
        also a cleanup."""
        etcd_pid = self.etcd.proc.pid
        os.kill(etcd_pid, signal.SIGSTOP)
        frozen = [True]

        def thaw():
            if frozen[0]:
                os.kill(etcd_pid, signal.SIGCONT)
                frozen[0] = False
        self.addCleanup(thaw)
        return thaw

    def stop_final(self, lbd):
        lbd.stop(expect_rc=0)

    # -- 1 ---------------------------------------------------------------

    def test_1_three_upgrades_in_a_row_refuse_nothing(self):
        lbd = self.start_first("t1", workers=1)
        loop = ShortLoop(lbd.port, interval=0.005)
        loop.start()
        self.addCleanup(loop.stop)
        wait_until(lambda: loop.count(outcome="ok") >= 50, scaled(10), "short connections flowing")
        rows = []
        for i in range(3):
            workers = 2 if i % 2 == 0 else 1
            t_start = time.monotonic()
            new, _, ready_wall = self.upgrade(lbd, "t1-lbd%d" % (i + 2), workers=workers)
            t_ready = time.monotonic()
            rc, exit_wall = lbd.wait_exit(scaled(20), "the new lbd logged %r" % READY_MARK)
            moved, kept, _ = handover_figures(lbd.log)
            rows.append({"upgrade": i + 1, "workers": " ".join(workers_args(workers)) or
                         "LBD_WORKERS=%s" % os.environ.get("LBD_WORKERS"), "rc": rc,
                         "start->ready_s": round(t_ready - t_start, 3),
                         "ready->old_exit_s": round(exit_wall - ready_wall, 3),
                         "moved": moved, "kept": kept})
            self.assertEqual(rc, 0, "upgrade %d: the old lbd's exit code:\n%s"
                             % (i + 1, lbd.proc.log_tail(30)))
            self.assertIsNotNone(moved, "upgrade %d: the old lbd logged no %r line with moved="
                                 % (i + 1, HANDOVER_MARK))
            wait_until(lambda: new.ready(), scaled(10), "/readyz 200 from %s" % new.name)
            since = time.monotonic()
            wait_until(lambda: loop.count(since=since, outcome="ok") >= 100 or loop.count(
                since=since) - loop.count(since=since, outcome="ok") > 20, scaled(10),
                "100 short connections through %s" % new.name)
            lbd = new
        records = loop.stop()
        outcomes = collections.Counter(o for _, o in records)
        figure("upgrades in a row", rows)
        figure("upgrades in a row: short connections", dict(outcomes))
        failed = [(round(t - records[0][0], 3), o) for t, o in records if o != "ok"]
        self.assertEqual(failed, [], "short connections that failed across 3 upgrades "
                         "(seconds into the run, outcome)")
        self.assertGreater(outcomes["ok"], 300)
        self.assertEqual(self.echo_once(lbd.port), "ok")
        self.stop_final(lbd)

    # -- 2 ---------------------------------------------------------------

    def test_2_thousand_long_lived_connections_keep_every_byte(self):
        n = 1000
        old = self.start_first("t2", workers=2)
        t0 = time.monotonic()
        conns = LongConns(old.port, n, period=0.05, seed=2)
        self.addCleanup(conns.close)
        figure("1000 conns: opened in", "%.3f" % (time.monotonic() - t0), "s")
        conns.start()
        wait_until(conns.all_answered, scaled(30), "an echo on each of the %d connections" % n)
        self.assertEqual(conns.errors()[:10], [], "connections broken before the upgrade")
        time.sleep(1.0)

        new, ready_line, ready_wall = self.upgrade(old, "t2-lbd2", workers=1)
        rc, exit_wall = old.wait_exit(scaled(30), "the new lbd logged %r" % READY_MARK)
        ready_to_exit = exit_wall - ready_wall
        moved, kept, hand_line = handover_figures(old.log)
        figure("1000 conns: ready -> old lbd exited", "%.3f" % ready_to_exit, "s")
        figure("1000 conns: hand-over", "moved=%s kept=%s rc=%s" % (moved, kept, rc))
        self.assertEqual(rc, 0, "the old lbd's exit code:\n" + old.proc.log_tail(30))

        # Every connection still works through the new lbd.
        after_exit = conns.snapshot()
        wait_until(lambda: all(g > a or c.error for g, a, c in
                               zip(conns.snapshot(), after_exit, conns.conns)),
                   scaled(10), "bytes back on every connection after the old lbd exited")
        time.sleep(1.0)
        conns.stop_sending()
        wait_until(conns.caught_up, scaled(30), "the echo of every byte sent")
        conns.halt()
        errors = conns.errors()
        bad_hash = [c.idx for c in conns.conns if not c.error and
                    c.sent_hash.digest() != c.got_hash.digest()]
        checked = sum(c.got for c in conns.conns)
        taken = taken_over(new.log)
        figure("1000 conns: bytes checked (sent and echoed)", checked)
        figure("1000 conns: new lbd took over", taken)
        self.assertEqual(errors[:20], [], "%d of %d connections closed or reset (first 20)"
                         % (len(errors), n))
        self.assertEqual(bad_hash[:20], [], "connections whose echo differs from what was sent")
        self.assertIsNotNone(hand_line, "no %r line in the old lbd's log" % HANDOVER_MARK)
        self.assertEqual(kept, 0, "sessions the old lbd kept: " + hand_line)
        self.assertEqual(moved, n, "sessions the old lbd moved: " + hand_line)
        self.assertEqual(taken, n, "count= over the new lbd's %r lines" % TAKEN_MARK)
        self.assertEqual(new.metric("lbd_upgrade_sessions_adopted_total"), n,
                         "the new lbd's lbd_upgrade_sessions_adopted_total")
        self.assertLessEqual(ready_to_exit, READY_TO_EXIT_S,
                             "the old lbd exited %.3f s after %r (bound %.1f s)"
                             % (ready_to_exit, READY_MARK, READY_TO_EXIT_S))
        conns.close()
        self.stop_final(new)

    # -- 3 ---------------------------------------------------------------

    def test_3_hundred_megabytes_each_way_across_an_upgrade(self):
        old = self.start_first("t3", workers=2)
        hold = threading.Event()
        release = threading.Event()
        size = TRANSFER_BYTES
        down = Transfer(old.port, "down", size, 31, TRANSFER_RATE, int(size * 0.7), hold, release)
        up = Transfer(old.port, "up", size, 37, TRANSFER_RATE, int(size * 0.7), hold, release)
        self.addCleanup(up.abort)
        self.addCleanup(down.abort)
        t0 = time.monotonic()
        down.start()
        up.start()
        wait_until(lambda: (down.done >= size // 4 and up.done >= size // 4)
                   or down.error or up.error, scaled(60), "both transfers a quarter done")
        self.assertEqual((down.error, up.error), (None, None), "transfers before the upgrade")
        hold.set()
        at_upgrade = (down.done, up.done)
        new, _, ready_wall = self.upgrade(old, "t3-lbd2", workers=1)
        rc, exit_wall = old.wait_exit(scaled(30), "the new lbd logged %r" % READY_MARK)
        at_exit = (down.done, up.done)
        release.set()
        down.join(scaled(120))
        up.join(scaled(120))
        moved, kept, hand_line = handover_figures(old.log)
        taken = taken_over(new.log)
        for t in (down, up):
            figure("100 MB %s: bytes at upgrade start / old exit" % t.direction,
                   "%d / %d" % (at_upgrade[0 if t is down else 1], at_exit[0 if t is down else 1]))
            figure("100 MB %s: finished after" % t.direction,
                   "%.3f" % ((t.finished_at or time.monotonic()) - t0), "s")
            figure("100 MB %s: bytes checked" % t.direction, t.done)
            figure("100 MB %s: sha256" % t.direction, "%s (expected %s)"
                   % ((t.digest or "-")[:16], (t.expected or "-")[:16]))
        figure("100 MB: ready -> old lbd exited", "%.3f" % (exit_wall - ready_wall), "s")
        figure("100 MB: hand-over", "moved=%s kept=%s taken over=%s" % (moved, kept, taken))
        self.assertFalse(down.is_alive() or up.is_alive(), "a transfer still running")
        self.assertEqual(rc, 0, "the old lbd's exit code:\n" + old.proc.log_tail(30))
        for t in (down, up):
            self.assertIsNone(t.error, "the %s transfer" % t.direction)
            self.assertEqual(t.done, size, "bytes of the %s transfer" % t.direction)
            self.assertEqual(t.digest, t.expected, "sha256 of the %s transfer" % t.direction)
        self.assertLess(max(at_exit), size, "a transfer was complete before the old lbd "
                        "exited: the upgrade did not land mid-transfer")
        self.assertIsNotNone(hand_line, "no %r line in the old lbd's log" % HANDOVER_MARK)
        self.assertEqual((moved, kept), (2, 0), hand_line)
        self.assertEqual(taken, 2, "count= over the new lbd's %r lines" % TAKEN_MARK)
        self.stop_final(new)

    def test_3b_session_whose_client_stopped_reading_moves_at_once(self):
        """A download whose client stopped reading has lbd's buffer for it
        full (a read of up to 256 KiB it could not pass on); it moves with the
        others at once, not after the 5 s a session may take to become
        movable, and the client gets every byte, in order, from the new lbd."""
        old = self.start_first("t3b", workers=1)
        hold, release = threading.Event(), threading.Event()
        hold.set()
        size = 16 * CHUNK
        down = Transfer(old.port, "down", size, 41, TRANSFER_RATE, 2 * CHUNK, hold, release)
        self.addCleanup(down.abort)
        down.start()
        wait_until(lambda: down.done >= 2 * CHUNK or down.error, scaled(30),
                   "the client to read 2 MiB and stop")
        self.assertIsNone(down.error)
        # lbd holds bytes it could not pass on and stopped reading the backend:
        # what the backend sends waits in lbd's receive queue
        wait_until(lambda: lbtest.rx_queue_to_port(self.backend_port) > 0, scaled(10),
                   "lbd to stop reading the backend (its buffer for the client full)")
        new, _, ready_wall = self.upgrade(old, "t3b-lbd2", workers=1)
        rc, exit_wall = old.wait_exit(scaled(20), "the new lbd logged %r" % READY_MARK)
        moved, kept, hand_line = handover_figures(old.log)
        release.set()
        down.join(scaled(60))
        figure("client not reading: hand-over", "moved=%s kept=%s, old exited %.2f s after ready"
               % (moved, kept, exit_wall - ready_wall))
        self.assertEqual(rc, 0)
        self.assertEqual((moved, kept), (1, 0), hand_line)
        self.assertLess(exit_wall - ready_wall, 2.0, "the session waited to become movable")
        self.assertFalse(down.is_alive())
        self.assertIsNone(down.error)
        self.assertEqual((down.done, down.digest), (size, down.expected))
        self.stop_final(new)

    # -- 4 ---------------------------------------------------------------

    def test_4_incompatible_new_lbd_takes_listeners_only(self):
        old = self.start_first("t4", workers=2)
        loop = ShortLoop(old.port, interval=0.005)
        loop.start()
        self.addCleanup(loop.stop)
        longs = LongConns(old.port, 20, period=0.05, seed=4)
        self.addCleanup(longs.close)
        longs.start()
        wait_until(longs.all_answered, scaled(10), "an echo on each of the 20 connections")
        wait_until(lambda: loop.count(outcome="ok") >= 50, scaled(10), "short connections flowing")

        new, _, ready_wall = self.upgrade(old, "t4-lbd2", workers=1,
                                          env={"LBD_TEST_HANDOVER_VERSION": "99"})
        only_line, _ = old.wait_line(LISTENERS_ONLY_MARK, scaled(15),
                                     "%s to log %r" % (old.name, LISTENERS_ONLY_MARK))
        figure("incompatible: old lbd", only_line)
        t_only = time.monotonic()

        # The 20 stay in the old lbd and keep exchanging.
        before = longs.snapshot()
        time.sleep(2.0)
        self.assertEqual(longs.errors(), [], "long-lived connections broken in the old lbd")
        stalled = [i for i, (a, b) in enumerate(zip(before, longs.snapshot())) if b <= a]
        self.assertEqual(stalled, [], "long-lived connections with no echo for 2 s")
        self.assertTrue(old.proc.alive(), "the old lbd exited while it held 20 sessions:\n"
                        + old.proc.log_tail(30))

        # New connections are the new lbd's: it owns their sockets to the backend.
        held = []
        self.addCleanup(lambda: lbtest.close_all([s for s, _ in held]))
        for i in range(10):
            s = socket.create_connection(("127.0.0.1", old.port), timeout=5)
            held.append((s, None))
            self.assertEqual(lbtest.echo(s, b"held %d\n" % i), b"held %d\n" % i)
        owners = sockets_to_port_by_pid([old.proc.pid, new.proc.pid], self.backend_port)
        figure("incompatible: sockets to the backend by process",
               {"old": owners[old.proc.pid], "new": owners[new.proc.pid]})
        self.assertEqual(owners[old.proc.pid], 20, "the old lbd's sockets to the backend")
        self.assertGreaterEqual(owners[new.proc.pid], 10, "the new lbd's sockets to the backend")

        longs.stop_sending()
        wait_until(longs.caught_up, scaled(10), "the echo of every byte on the 20")
        longs.halt()
        self.assertEqual(longs.errors(), [])
        bad_hash = [c.idx for c in longs.conns if c.sent_hash.digest() != c.got_hash.digest()]
        self.assertEqual(bad_hash, [], "long-lived connections whose echo differs")
        self.assertTrue(old.proc.alive(), "the old lbd exited before its sessions closed")
        t_close = time.time()
        longs.close()
        rc, exit_wall = old.wait_exit(scaled(15), "its last 20 sessions closed")
        figure("incompatible: last close -> old lbd exited", "%.3f" % (exit_wall - t_close), "s")
        self.assertEqual(rc, 0, "the old lbd's exit code:\n" + old.proc.log_tail(30))
        self.assertLessEqual(exit_wall - t_close, LAST_CLOSE_TO_EXIT_S,
                             "the old lbd lingered after its last session closed")

        # moved= may come with `listeners only` or when the last session closed.
        moved_line = old.log.find(re.compile(r"\bmoved=\d+"))
        self.assertIsNotNone(moved_line, "the old lbd logged no moved=")
        moved, kept = kv_int(moved_line, "moved"), kv_int(moved_line, "kept")
        figure("incompatible: moved / kept", "%s / %s" % (moved, kept))
        self.assertEqual(moved, 0, moved_line)
        if kept is not None:
            self.assertGreaterEqual(kept, 20, moved_line)

        since = time.monotonic()
        wait_until(lambda: loop.count(since=since) >= 100, scaled(10),
                   "short connections after the old lbd exited")
        records = loop.stop()
        after_handover = sum(1 for t, o in records if t >= t_only and o == "ok")
        total = new.metric("lbd_pool_connections_total", pool=POOL)
        outcomes = collections.Counter(o for _, o in records)
        figure("incompatible: short connections", dict(outcomes))
        figure("incompatible: new lbd lbd_pool_connections_total", total)
        failed = [(round(t - records[0][0], 3), o) for t, o in records if o != "ok"]
        self.assertEqual(failed, [],
                         "short connections that failed (seconds into the run, outcome)")
        self.assertGreaterEqual(total, after_handover + 10,
                                "connections the new lbd counts (10 held + the short ones made "
                                "after the old lbd logged %r)" % LISTENERS_ONLY_MARK)
        lbtest.close_all([s for s, _ in held])
        self.stop_final(new)

    # -- 5 ---------------------------------------------------------------

    def test_5_sigusr2_reexecs_and_the_child_takes_over(self):
        self.assertTrue(set_subreaper(True), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.addCleanup(set_subreaper, False)
        old = self.start_first("t5", workers=2)
        s = socket.create_connection(("127.0.0.1", old.port), timeout=5)
        self.addCleanup(s.close)
        self.assertEqual(lbtest.echo(s, b"before SIGUSR2\n"), b"before SIGUSR2\n")

        t_sig = time.time()
        old.proc.send_signal(signal.SIGUSR2)
        pid_line, _ = old.wait_line(re.compile(r"\bnew_pid=\d+"), scaled(10),
                                    "%s to log new_pid= after SIGUSR2" % old.name)
        child = ForeignProc(kv_int(pid_line, "new_pid"))
        self.addCleanup(child.stop, 5)
        figure("sigusr2: new pid", child.pid)
        # The child writes to the stderr it inherited: the old lbd's log.
        ready_line, seen = old.wait_line(READY_MARK, scaled(30),
                                         "the re-executed lbd (pid %d) to log %r"
                                         % (child.pid, READY_MARK))
        self.assertEqual(child.cmdline(), old.proc.argv,
                         "the re-executed lbd's path and argv (/proc/%d/cmdline)" % child.pid)
        self.assertEqual(lbtest.echo(s, b"during\n"), b"during\n")
        rc, exit_wall = old.wait_exit(scaled(20), "the re-executed lbd logged %r" % READY_MARK)
        figure("sigusr2: signal -> ready", "%.3f" % ((log_ts(ready_line) or seen) - t_sig), "s")
        figure("sigusr2: signal -> old lbd exited", "%.3f" % (exit_wall - t_sig), "s")
        self.assertEqual(rc, 0, "the old lbd's exit code:\n" + old.proc.log_tail(30))
        self.assertTrue(child.alive(), "the re-executed lbd (pid %d) is gone:\n%s"
                        % (child.pid, old.proc.log_tail(30)))
        self.assertEqual(lbtest.echo(s, b"after the old lbd exited\n"),
                         b"after the old lbd exited\n",
                         "the connection opened before SIGUSR2")
        for i in range(20):
            self.assertEqual(self.echo_once(old.port, b"new %d\n" % i), "ok")
        self.assertEqual(old.http_get("/readyz")[0], 200)
        moved, kept, _ = handover_figures(old.log)
        figure("sigusr2: hand-over", "moved=%s kept=%s" % (moved, kept))
        self.assertEqual((moved, kept), (1, 0))
        s.close()
        crc, killed = child.stop(scaled(20))
        figure("sigusr2: re-executed lbd stopped", "rc=%s killed=%s" % (crc, killed))
        self.assertFalse(killed, "the re-executed lbd ignored SIGTERM")
        if crc is not None:
            self.assertEqual(crc, 0, "the re-executed lbd's exit code")

    # -- 5b --------------------------------------------------------------

    def test_5b_lbctl_upgrade(self):
        """`lbctl upgrade` starts the new binary as SIGUSR2 does and prints its pid;
        on an lbd without --upgrade-socket it fails in one line, exit 1."""
        self.assertTrue(set_subreaper(True), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.addCleanup(set_subreaper, False)
        plain = Lbd(self.h, self.etcd.url, PREFIX, [POOL], name="t5b-plain")
        plain.start()
        rc, out, err = lbtest.lbctl("upgrade", admin=plain.admin)
        figure("lbctl upgrade without --upgrade-socket", (rc, err.strip()))
        self.assertEqual(rc, 1, out + err)
        self.assertIn("--upgrade-socket", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertTrue(plain.up(), "lbd still serves")
        plain.stop()

        old = self.start_first("t5b", workers=1)
        s = socket.create_connection(("127.0.0.1", old.port), timeout=5)
        self.addCleanup(s.close)
        self.assertEqual(lbtest.echo(s, b"before\n"), b"before\n")
        rc, out, err = lbtest.lbctl("-o", "json", "upgrade", admin=old.admin)
        self.assertEqual(rc, 0, out + err)
        child = ForeignProc(json.loads(out)["new_pid"])
        self.addCleanup(child.stop, 5)
        old.wait_line(READY_MARK, scaled(30), "the lbd started by lbctl upgrade to be ready")
        orc, _ = old.wait_exit(scaled(20), "the lbd started by lbctl upgrade logged ready")
        self.assertEqual(orc, 0, old.proc.log_tail(30))
        self.assertTrue(child.alive())
        self.assertEqual(lbtest.echo(s, b"after\n"), b"after\n")
        s.close()
        crc, killed = child.stop(scaled(20))
        self.assertFalse(killed, "the new lbd ignored SIGTERM")

    # -- 5c --------------------------------------------------------------

    def test_5c_hostile_peers_on_the_upgrade_socket(self):
        """Garbage, silence, and a peer that takes the listeners and vanishes
        before READY: lbd keeps serving through each, then a real upgrade works."""
        old = self.start_first("t5c", workers=1)
        path = old.sock_path

        def peer():
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.settimeout(scaled(15))
            c.connect(path)
            return c

        junk = peer()
        junk.send(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(junk.recv(4096), b"", "lbd closes a peer that sends garbage")
        junk.close()
        self.assertEqual(self.echo_once(old.port), "ok")

        t0 = time.monotonic()
        silent = peer()
        self.assertEqual(silent.recv(4096), b"", "lbd closes a silent peer")
        figure("silent upgrade peer closed after", "%.1f" % (time.monotonic() - t0), "s")
        silent.close()
        self.assertEqual(self.echo_once(old.port), "ok")

        # A well-formed HELLO, then away with the listeners before READY.
        version = b"0.0-test"
        payload = struct.pack("<III", 1, os.getpid(), 1) + struct.pack("<H", len(version)) + version
        fake = peer()
        fake.send(b"LBHO" + struct.pack("<HBBI", 1, 1, 0, len(payload)) + payload)
        fds_seen = 0
        while True:
            msg, anc, _flags, _addr = fake.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 4))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for fd in struct.unpack("%di" % (len(data) // 4), data[:len(data) // 4 * 4]):
                        os.close(fd)
                        fds_seen += 1
            if not msg or msg[6] == 3:  # LISTENERS_DONE
                break
        figure("listeners handed to a fake peer", fds_seen)
        self.assertGreaterEqual(fds_seen, 4, "pool, admin, http and upgrade sockets")
        fake.close()
        old.wait_line(re.compile(r"went away before it was ready"), scaled(10),
                      "lbd to notice the peer left before READY")
        for i in range(20):
            self.assertEqual(self.echo_once(old.port, b"still %d\n" % i), "ok")
        self.assertEqual(old.http_get("/readyz")[0], 200)

        new, _, _ = self.upgrade(old, "t5c-lbd2", workers=1)
        rc, _ = old.wait_exit(scaled(20), "the new lbd logged %r" % READY_MARK)
        self.assertEqual(rc, 0, old.proc.log_tail(30))
        self.assertEqual(self.echo_once(old.port), "ok")
        self.stop_final(new)

    # -- 5d --------------------------------------------------------------

    def test_5d_connection_that_never_spoke_moves_too(self):
        """A client that connected and sent nothing (its backend silent too,
        waiting for a request) is not yet "proxying" by the data it saw; with
        a long connect timeout it must still move at once, not stay behind."""
        key = "%spools/%s/config" % (PREFIX, POOL)
        self.etcd.put(key, json.dumps({"health": {"type": "none"}, "connect_timeout": "30s"}))
        self.addCleanup(self.etcd.put, key, json.dumps({"health": {"type": "none"}}))
        old = self.start_first("t5d", workers=1)
        wait_until(lambda: "connect_timeout_ms=30000" in old.log_text(), scaled(5),
                   "lbd to apply the 30s connect timeout")
        silent = [socket.create_connection(("127.0.0.1", old.port), timeout=10) for _ in range(3)]
        for s in silent:
            self.addCleanup(s.close)
        # the connects to the backend are done (the kernel says so); nobody spoke
        wait_until(lambda: sockets_to_port_by_pid([old.proc.pid], self.backend_port)[
            old.proc.pid] >= 3, scaled(5), "lbd's three connections to the backend")
        new, _, ready_wall = self.upgrade(old, "t5d-lbd2", workers=1)
        rc, exit_wall = old.wait_exit(scaled(20), "the new lbd logged %r" % READY_MARK)
        moved, kept, _ = handover_figures(old.log)
        figure("silent connections: hand-over", "moved=%s kept=%s, old exited %.2f s after ready"
               % (moved, kept, exit_wall - ready_wall))
        self.assertEqual(rc, 0)
        self.assertEqual((moved, kept), (3, 0))
        self.assertLess(exit_wall - ready_wall, 2.0)
        for i, s in enumerate(silent):
            self.assertEqual(lbtest.echo(s, b"first words %d\n" % i), b"first words %d\n" % i)
            s.close()
        self.stop_final(new)

    def test_5e_local_overrides_and_health_move_too(self):
        """What etcd does not hold moves with the upgrade: a backend drained or
        re-weighted with `lbctl --local`, and one the checks found down, are
        so in the new lbd from its first accept (before its own first check),
        not routed to until it finds out for itself."""
        key = "%spools/%s/config" % (PREFIX, POOL)
        dead_id, twin_id = "t5e-dead", "t5e-twin"
        dead_addr = "127.0.0.1:%d" % lbtest.free_port()   # nothing listens there
        self.etcd.put(key, json.dumps({"health": {"type": "tcp", "interval": "3s", "rise": 1,
                                                  "fall": 1}, "retries": 0,
                                       "panic_threshold": 0}))
        self.etcd.put(lbtest.backend_key(PREFIX, POOL, twin_id),
                      lbtest.backend_value("127.0.0.1:%d" % self.backend_port))
        self.addCleanup(self.etcd.put, key, json.dumps({"health": {"type": "none"}}))
        self.addCleanup(self.etcd.delete, lbtest.backend_key(PREFIX, POOL, dead_id))
        self.addCleanup(self.etcd.delete, lbtest.backend_key(PREFIX, POOL, twin_id))
        self.addCleanup(self.etcd.delete, "%spools/%s/overrides/%s" % (PREFIX, POOL, twin_id))
        old = self.start_first("t5e", workers=1)
        self.etcd.put(lbtest.backend_key(PREFIX, POOL, dead_id), lbtest.backend_value(dead_addr))
        wait_until(lambda: old.backends(POOL).get(dead_id, {}).get("health") == "down",
                   scaled(15), "the first lbd's checks to find %s down" % dead_id)
        for args in (("drain", POOL, twin_id), ("weight", POOL, BACKEND_ID, "7")):
            rc, _, err = old.ctl(*args, "--local")
            self.assertEqual(rc, 0, err)
        new, _, _ = self.upgrade(old, "t5e-lbd2", workers=1)
        # at once, before the new lbd's first check (3 s apart) could tell it
        outcomes = collections.Counter(self.echo_once(new.port) for _ in range(30))
        seen = new.backends(POOL)
        line = new.log.find("upgrade: took over what the previous process knew")
        figure("backend state across an upgrade", "%s; 30 connections at once: %s"
               % (line and line.split("msg=")[1], dict(outcomes)))
        self.assertEqual(outcomes, {"ok": 30}, "connections right after the upgrade "
                         "(a backend found down by the old lbd must not take them)")
        self.assertEqual(seen[twin_id]["state"], "drained", seen[twin_id])
        self.assertEqual(seen[BACKEND_ID]["weight_override"], 7, seen[BACKEND_ID])
        self.assertEqual(seen[dead_id]["health"], "down", seen[dead_id])
        # The old lbd may take the first of them (its workers stop accepting a moment
        # after READY); none may go to the drained twin or the dead backend.
        self.assertEqual(seen[twin_id]["total_connections"], 0, seen)
        self.assertEqual(seen[dead_id]["total_connections"], 0, seen)
        self.assertIn(seen[BACKEND_ID]["total_connections"], range(20, 31), seen)
        self.assertIn("local_overrides=2", line or "", new.proc.log_tail(20))
        rc, _ = old.wait_exit(scaled(20), "the new lbd logged %r" % READY_MARK)
        self.assertEqual(rc, 0)
        # a cluster-wide undrain still replaces the local drain carried over
        rc, _, err = new.ctl("undrain", POOL, twin_id)
        self.assertEqual(rc, 0, err)
        self.assertEqual(new.backends(POOL)[twin_id]["state"], "up")

        # passive ejection moves too, with its time left (5 s, the first one)
        self.etcd.put(key, json.dumps({"health": {"type": "none", "fall": 1}, "retries": 0,
                                       "panic_threshold": 0}))
        wait_until(lambda: new.backends(POOL)[dead_id]["health"] != "down", scaled(10),
                   "the checks off: %s no longer down" % dead_id)

        def connect_and_look():
            self.echo_once(new.port)   # some go to the dead one: the first failure ejects it
            return new.backends(POOL)[dead_id]["state"] == "ejected"
        wait_until(connect_and_look, scaled(10), "a failed connect to eject %s" % dead_id)
        t_ejected = time.monotonic()
        newer, _, _ = self.upgrade(new, "t5e-lbd3", workers=1)
        outcomes = collections.Counter(self.echo_once(newer.port) for _ in range(30))
        state = newer.backends(POOL)[dead_id]["state"]
        elapsed = time.monotonic() - t_ejected
        figure("ejection across an upgrade", "%s %.2f s after the ejection; 30 connections: %s"
               % (state, elapsed, dict(outcomes)))
        if elapsed < 4.5:   # else the 5 s ran out meanwhile on a slow machine
            self.assertEqual(state, "ejected")
            self.assertEqual(outcomes, {"ok": 30})
        self.assertEqual(new.wait_exit(scaled(20), "the newer lbd's ready")[0], 0)
        self.stop_final(newer)

    def test_5g_drain_deadline_moves_too(self):
        """A backend drained with a drain_timeout keeps its deadline across an
        upgrade: the connection left on it is closed when the timeout passes
        since the drain, not that long after the upgrade."""
        key = "%spools/%s/config" % (PREFIX, POOL)
        self.etcd.put(key, json.dumps({"health": {"type": "none"}, "drain_timeout": "4s"}))
        self.addCleanup(self.etcd.put, key, json.dumps({"health": {"type": "none"}}))
        self.addCleanup(self.etcd.delete, "%spools/%s/overrides/%s" % (PREFIX, POOL, BACKEND_ID))
        old = self.start_first("t5g", workers=1)  # the policy is in its first listing
        conn = socket.create_connection(("127.0.0.1", old.port), timeout=10)
        self.addCleanup(conn.close)
        self.assertEqual(lbtest.echo(conn, b"before the drain\n"), b"before the drain\n")
        rc, _, err = old.ctl("drain", POOL, BACKEND_ID)
        self.assertEqual(rc, 0, err)
        t_drain = time.monotonic()
        time.sleep(2.0)   # the scenario: the upgrade comes half-way to the deadline
        new, _, _ = self.upgrade(old, "t5g-lbd2", workers=1)
        self.assertEqual(old.wait_exit(scaled(20), "the new lbd's ready")[0], 0)
        self.assertEqual(lbtest.echo(conn, b"moved\n"), b"moved\n")
        conn.settimeout(10)
        try:
            end = conn.recv(1)
        except ConnectionResetError:
            end = b""
        closed_after = time.monotonic() - t_drain
        figure("drain deadline across an upgrade", "drain_timeout 4s, upgrade 2 s after the "
               "drain: the connection closed %.2f s after the drain (%r)" % (closed_after, end))
        self.assertEqual(end, b"")
        self.assertGreater(closed_after, 3.5)
        self.assertLess(closed_after, 5.2, "closed a full drain_timeout after the upgrade: "
                        "the deadline started again in the new lbd")
        rc, _, err = new.ctl("undrain", POOL, BACKEND_ID)
        self.assertEqual(rc, 0, err)
        self.stop_final(new)

    def test_5h_upgrade_while_etcd_does_not_answer(self):
        """An upgrade needs no etcd: with etcd frozen (it takes connections and
        answers nothing), the new lbd starts from the old one's view of etcd,
        serves at once and the old one exits; once etcd answers again the new
        lbd lists it and follows what changed."""
        old = self.start_first("t5h", workers=1)
        rc, _, err = old.ctl("weight", POOL, BACKEND_ID, "9")   # a cluster override: in etcd
        self.assertEqual(rc, 0, err)
        self.addCleanup(self.etcd.delete, "%spools/%s/overrides/%s" % (PREFIX, POOL, BACKEND_ID))
        revision = self.etcd.revision()   # the old lbd's view holds the override once here
        wait_until(lambda: old.metric("lbd_etcd_revision") >= revision, scaled(10),
                   "the old lbd to see revision %d (the override) from its watch" % revision)
        thaw = self.freeze_etcd()
        t0 = time.monotonic()
        new, _, _ = self.upgrade(old, "t5h-lbd2", workers=1)
        took = time.monotonic() - t0
        outcomes = collections.Counter(self.echo_once(new.port) for _ in range(20))
        line = new.log.find("upgrade: took over the previous process's view of etcd")
        figure("upgrade while etcd does not answer", "ready %.2f s after the start; %s; "
               "20 connections: %s" % (took, line and line.split("msg=")[1], dict(outcomes)))
        self.assertEqual(outcomes, {"ok": 20})
        self.assertIsNotNone(line, new.proc.log_tail(30))
        self.assertEqual(new.backends(POOL)[BACKEND_ID]["weight_override"], 9,
                         "the cluster override, from the old lbd's view of etcd")
        self.assertEqual(new.http_get("/readyz")[0], 200)
        self.assertEqual(old.wait_exit(scaled(20), "the new lbd's ready")[0], 0)
        # etcd answers again: the new lbd lists it and watches
        thaw()
        other = "t5h-b2"
        self.etcd.put(lbtest.backend_key(PREFIX, POOL, other),
                      lbtest.backend_value("127.0.0.1:%d" % self.backend_port))
        self.addCleanup(self.etcd.delete, lbtest.backend_key(PREFIX, POOL, other))
        wait_until(lambda: other in new.backends(POOL), scaled(20),
                   "the new lbd to list %s, put once etcd answered again" % other)
        self.assertIn('msg="re-listed"', new.log_text())
        self.stop_final(new)

    def test_5i_values_that_turned_bad_keep_their_last_good_one(self):
        """A key whose value turns bad (unreadable: too large; or invalid) keeps
        its last good value in lbd, and so across an upgrade: the new lbd serves
        what the old one served (backends, override, policy), and the sessions
        through those backends move, instead of the backends vanishing with
        the upgrade and their sessions staying behind."""
        key = "%spools/%s/config" % (PREFIX, POOL)
        huge_id, bad_id = "t5i-huge", "t5i-bad"
        addr = "127.0.0.1:%d" % self.backend_port
        ovr = "%spools/%s/overrides/%s" % (PREFIX, POOL, bad_id)
        self.etcd.put(key, json.dumps({"health": {"type": "none"}, "algorithm": "leastconn"}))
        for bid in (huge_id, bad_id):
            self.etcd.put(lbtest.backend_key(PREFIX, POOL, bid), lbtest.backend_value(addr))
            self.addCleanup(self.etcd.delete, lbtest.backend_key(PREFIX, POOL, bid))
        self.etcd.put(ovr, json.dumps({"health": "up"}))
        self.addCleanup(self.etcd.delete, ovr)
        self.addCleanup(self.etcd.put, key, json.dumps({"health": {"type": "none"}}))
        old = self.start_first("t5i", workers=1)
        wait_until(lambda: {huge_id, bad_id} <= set(old.backends(POOL)), scaled(10),
                   "the first lbd to list %s and %s" % (huge_id, bad_id))
        wait_until(lambda: "algorithm=leastconn" in old.log_text(), scaled(10),
                   "the first lbd to apply leastconn")
        held = []
        for i in range(6):   # leastconn: two on each of the three backends
            s = socket.create_connection(("127.0.0.1", old.port), timeout=10)
            self.addCleanup(s.close)
            self.assertEqual(lbtest.echo(s, b"hello %d\n" % i), b"hello %d\n" % i)
            held.append(s)
        spread = {b: old.backends(POOL)[b]["active_connections"]
                  for b in (BACKEND_ID, huge_id, bad_id)}
        self.assertEqual(spread, {BACKEND_ID: 2, huge_id: 2, bad_id: 2})
        self.etcd.put(lbtest.backend_key(PREFIX, POOL, huge_id),
                      json.dumps({"addr": addr, "pad": "x" * (300 << 10)}))
        self.etcd.put(lbtest.backend_key(PREFIX, POOL, bad_id), json.dumps({"addr": "nowhere"}))
        self.etcd.put(ovr, "{health: up")
        self.etcd.put(key, "{")
        wait_until(lambda: old.log_text().count("keeping the last good one") >= 4, scaled(10),
                   "the first lbd to keep the last good value of four keys")
        new, _, _ = self.upgrade(old, "t5i-lbd2", workers=1)
        rc, _ = old.wait_exit(scaled(20), "the new lbd logged %r" % READY_MARK)
        moved, kept, _ = handover_figures(old.log)
        seen = new.backends(POOL)
        applied = [ln for ln in new.log_text().splitlines()
                   if "policy applied" in ln and "pool=%s " % POOL in ln]
        figure("bad values across an upgrade", "moved=%s kept=%s; %s" % (moved, kept, {
            b: (seen.get(b, {}).get("addr"), seen.get(b, {}).get("active_connections"))
            for b in (huge_id, bad_id)}))
        self.assertEqual(rc, 0)
        self.assertEqual((moved, kept), (6, 0), old.proc.log_tail(20))
        for bid in (huge_id, bad_id):
            self.assertIn(bid, seen, "the new lbd lost %s: %s" % (bid, new.proc.log_tail(20)))
            self.assertEqual(seen[bid]["addr"], addr)
            self.assertEqual(seen[bid]["active_connections"], 2, seen[bid])
        self.assertEqual(seen[bad_id]["health_override"], "up", seen[bad_id])
        self.assertTrue(applied and "algorithm=leastconn" in applied[-1], applied)
        for i, s in enumerate(held):
            self.assertEqual(lbtest.echo(s, b"again %d\n" % i), b"again %d\n" % i)
            s.close()
        self.stop_final(new)

    def test_5f_watch_follows_the_upgrade(self):
        """The old lbd ends its WatchEvents streams when the new one is ready
        (UNAVAILABLE, saying why, as grpcio reads it), instead of streaming
        its own wind-down; `lbctl watch` reconnects to the new lbd at the same
        address and goes on printing, its exit status untouched."""
        import grpc
        old = self.start_first("t5f", workers=1)
        watch = self.h.spawn("t5f-watch", [lbtest.lbctl_binary(), "--admin", old.admin, "-o",
                                           "json", "watch", POOL])
        self.addCleanup(watch.stop, 5)
        channel = grpc.insecure_channel(old.admin)
        self.addCleanup(channel.close)
        stream = channel.unary_stream("/lb.v1.Admin/WatchEvents")(b"\x10\x01")  # initial_state
        first = next(stream)
        self.assertTrue(first)
        wait_until(lambda: '"type":"synced"' in watch.log_text(), scaled(10),
                   "lbctl watch to print the current state")
        new, _, _ = self.upgrade(old, "t5f-lbd2", workers=1)
        with self.assertRaises(grpc.RpcError) as ended:
            for _ in stream:
                pass
        self.assertEqual(ended.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("handed this address over to a new process", ended.exception.details())
        wait_until(lambda: "reconnected" in watch.log_text(), scaled(15),
                   "lbctl watch to reconnect to the new lbd")
        rc, _, err = new.ctl("drain", POOL, BACKEND_ID, "--local")
        self.assertEqual(rc, 0, err)
        wait_until(lambda: '"type":"drained"' in watch.log_text(), scaled(10),
                   "the drain on the new lbd in lbctl watch's output")
        self.assertTrue(watch.alive(), watch.log_text())
        figure("watch across an upgrade", [ln for ln in watch.log_text().splitlines()
                                           if ln.startswith("lbctl:")])
        rc, _, err = new.ctl("undrain", POOL, BACKEND_ID, "--local")
        self.assertEqual(rc, 0, err)
        self.assertEqual(old.wait_exit(scaled(20), "the new lbd's ready")[0], 0)
        self.stop_final(new)

    # -- 6 ---------------------------------------------------------------

    def test_6b_running_lbd_dies_during_the_handover(self):
        """The running lbd dies (kill -9, a crash, the OOM killer) after the new
        one greeted it and before its listeners came: the new lbd says so and
        starts on its own, binding the ports the dead one freed, instead of
        exiting with no lbd left at all."""
        require_upgrade_flag(self)
        sock = self.h.path("t6b.sock")
        first = UpLbd(self.h, self.etcd.url, sock, "t6b-lbd1", workers=1).start()
        self.addCleanup(first.proc.kill)
        # Stopped, it still takes the new lbd's connection (the kernel does) and answers nothing.
        os.kill(first.proc.pid, signal.SIGSTOP)
        fresh = first.successor("t6b-lbd2", workers=1).spawn()
        self.addCleanup(fresh.proc.kill)
        fresh.wait_line("taking over from it", scaled(10), "the new lbd to greet the running one")
        # Killed and not reaped: a zombie whose sockets are closed, as under a busy supervisor.
        os.kill(first.proc.pid, signal.SIGKILL)
        line, _ = fresh.wait_line("exited during the hand-over", scaled(15),
                                  "the new lbd to see the running one die")
        figure("the running lbd died during the hand-over", line.split("msg=")[1])
        wait_until(fresh.ready, scaled(30), "the new lbd to start on its own (/readyz 200)")
        self.assertEqual(self.echo_once(fresh.port), "ok", "an echo through the new lbd")
        self.assertEqual(unix_listener_pids(sock, [fresh.proc.pid]), [fresh.proc.pid],
                         "the new lbd serves the upgrade socket in place of the dead one's")
        self.assertIsNone(fresh.log.find(READY_MARK), "no upgrade happened")
        first.proc.kill()
        # and it is itself upgraded as usual
        last, _, _ = self.upgrade(fresh, "t6b-lbd3", workers=1)
        self.assertEqual(self.echo_once(last.port), "ok")
        self.assertEqual(fresh.wait_exit(scaled(20), "the next lbd's ready")[0], 0)
        self.stop_final(last)

    def test_6c_running_lbd_that_does_not_answer_keeps_its_ports(self):
        """The running lbd is alive but answers nothing (stopped): the new one
        gives up after its 10 s wait with one error line and exits, and never
        binds the ports beside it; the running one serves on once resumed."""
        require_upgrade_flag(self)
        sock = self.h.path("t6c.sock")
        first = UpLbd(self.h, self.etcd.url, sock, "t6c-lbd1", workers=1).start()
        self.addCleanup(first.proc.kill)
        os.kill(first.proc.pid, signal.SIGSTOP)
        self.addCleanup(lambda: first.proc.alive() and os.kill(first.proc.pid, signal.SIGCONT))
        argv = first.successor("t6c-lbd2", workers=1).argv()
        try:
            rc, out, err = run(argv, timeout=scaled(30))
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)
        lines = [ln for ln in (out + err).splitlines() if ln.startswith("lbd:")]
        figure("the running lbd answers nothing: rc", rc)
        figure("the running lbd answers nothing: line", lines)
        self.assertEqual(rc, 1, out + err)
        self.assertEqual(len(lines), 1, out + err)
        self.assertIn("no answer from the running lbd", lines[0])
        self.assertNotIn("starting on its own", out + err)
        self.assertEqual(self.echo_once(first.port), "ok", "the running lbd serves on")
        first.stop(expect_rc=0)

    def test_6d_new_lbd_with_more_workers_dies_before_ready(self):
        """A new lbd with more workers than the running one has sockets of its own
        beside the ones it took over; killed before it is ready (an aborted
        upgrade), it must not take clients down with it: until it accepts, the
        kernel queues every client on the sockets both processes hold, and the
        running lbd serves them all."""
        require_upgrade_flag(self)
        sock = self.h.path("t6d.sock")
        old = UpLbd(self.h, self.etcd.url, sock, "t6d-lbd1", env={"LBD_WORKERS": "1"}).start()
        self.addCleanup(old.proc.kill)
        wait_until(lambda: BACKEND_ID in old.backends(POOL), scaled(10), "lbd to list the backend")
        # Without etcd and without the running lbd's view (another hand-over version) the
        # new lbd holds the listeners and cannot get ready: the window of an aborted upgrade.
        thaw = self.freeze_etcd()
        new = old.successor("t6d-lbd2", env={"LBD_WORKERS": "2",
                                             "LBD_TEST_HANDOVER_VERSION": "99"}).spawn()
        self.addCleanup(new.proc.kill)
        new.wait_line("took over the listeners", scaled(15), "the new lbd to take the listeners")
        wait_until(lambda: new.log.find('msg="listening"') is not None, scaled(10),
                   "the new lbd to open its pool's sockets")
        # Connected (the kernel completed the handshake) and sent, not answered yet when
        # the new lbd dies: each waits in an accept queue, or in the running lbd.
        n = 40
        conns = []
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", old.port), timeout=scaled(10))
            c.sendall(b"queued %d\n" % i)
            conns.append(c)
        self.assertIsNone(new.log.find(READY_MARK))
        new.proc.kill()
        outcomes = collections.Counter()
        for i, c in enumerate(conns):
            want = b"queued %d\n" % i
            got = b""
            try:
                while len(got) < len(want):
                    chunk = c.recv(len(want) - len(got))
                    if not chunk:
                        break
                    got += chunk
                outcomes["ok" if got == want else "eof after %d bytes" % len(got)] += 1
            except ConnectionResetError:
                outcomes["reset"] += 1
            except socket.timeout:
                outcomes["timeout"] += 1
            finally:
                c.close()
        figure("new lbd (2 workers, old 1) killed before ready: %d clients" % n, dict(outcomes))
        self.assertEqual(outcomes, {"ok": n}, "clients that connected while a new lbd with "
                         "more workers took over, after it was killed before ready")
        thaw()
        self.assertEqual(self.echo_once(old.port), "ok", "the running lbd serves on")
        old.stop(expect_rc=0)

    def test_6e_old_lbd_dies_while_it_hands_sessions_over(self):
        """The old lbd is killed -9 while it hands its sessions over (0, 3 and
        100 ms after it hears the new one is ready): the new lbd serves on,
        every session it took keeps every byte in order, the ones still in the
        old process are lost with it (closed or reset, never a wrong byte),
        and the new lbd stops cleanly."""
        require_upgrade_flag(self)
        for k, delay in enumerate((0.0, 0.003, 0.1)):
            with self.subTest(delay=delay):
                self.old_dies_during_handover("t6e%d" % k, delay)

    def old_dies_during_handover(self, tag, delay, n=300):
        old = self.start_first(tag, workers=1)
        self.addCleanup(old.proc.kill)
        conns = LongConns(old.port, n, period=0.05, seed=6)
        self.addCleanup(conns.close)
        conns.start()
        wait_until(conns.all_answered, scaled(30), "an echo on each of the %d connections" % n)
        new = old.successor(tag + "-lbd2", workers=2).spawn()
        self.addCleanup(new.proc.kill)
        deadline = time.monotonic() + scaled(30)
        while new.log.find(READY_MARK) is None:
            self.assertTrue(new.proc.alive(), new.proc.log_tail(30))
            self.assertLess(time.monotonic(), deadline, "the new lbd to log %r" % READY_MARK)
            time.sleep(0.0005)
        # The new lbd stopped while the old one offers its sessions: what the old
        # one sent before it dies waits in the link (sockets in flight), then EOF.
        os.kill(new.proc.pid, signal.SIGSTOP)
        self.addCleanup(lambda: new.proc.alive() and os.kill(new.proc.pid, signal.SIGCONT))
        wait_until(lambda: old.log.find("the new process is ready") is not None,
                   scaled(5), "the old lbd to hear that the new one is ready")
        time.sleep(delay)
        old.proc.kill()
        os.kill(new.proc.pid, signal.SIGCONT)
        went, _ = new.wait_line(TAKEN_MARK, scaled(10), "the new lbd to see the link end")
        # The new lbd serves on: new connections, and the sessions it took.
        outcomes = collections.Counter(self.echo_once(new.port) for _ in range(20))
        self.assertEqual(outcomes, {"ok": 20}, new.proc.log_tail(30))
        before = conns.snapshot()
        wait_until(lambda: all(g > b or c.error for g, b, c in
                               zip(conns.snapshot(), before, conns.conns)),
                   scaled(15), "each connection to answer again or to be closed")
        conns.stop_sending()
        wait_until(conns.caught_up, scaled(30), "the echo of every byte sent")
        conns.halt()
        errors = conns.errors()
        kinds = collections.Counter(e.split(" ")[0] for _, e in errors)
        bad_hash = [c.idx for c in conns.conns if not c.error and
                    c.sent_hash.digest() != c.got_hash.digest()]
        taken = taken_over(new.log)
        what = "old lbd killed %g ms after it heard ready" % (delay * 1000)
        figure(what + ": sessions kept (taken by the new lbd)", taken)
        figure(what + ": sessions lost with it", "%d %s" % (len(errors), dict(kinds)))
        self.assertEqual(bad_hash, [], "connections that stayed open with bytes out of order")
        self.assertEqual([e for e in errors if "more bytes" in e[1]], [])
        self.assertEqual(n - len(errors), taken, "the sessions the new lbd took, and only "
                         "those, stay open (%s)" % went)
        self.assertTrue(new.proc.alive(), new.proc.log_tail(30))
        self.assertEqual(new.http_get("/readyz")[0], 200)
        conns.close()
        self.stop_final(new)

    def test_6_stale_socket_file_and_missing_directory(self):
        require_upgrade_flag(self)
        sock = self.h.path("t6.sock")
        first = UpLbd(self.h, self.etcd.url, sock, "t6-lbd1", workers=1).start()
        self.assertTrue(os.path.exists(sock), "lbd is ready but made no upgrade socket at %s"
                        % sock)
        st = os.stat(sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode), "%s is not a socket" % sock)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, "mode of the upgrade socket")
        self.assertEqual(unix_listener_pids(sock, [first.proc.pid]), [first.proc.pid],
                         "lbd listens on its upgrade socket (/proc/net/unix)")
        first.proc.kill()
        self.assertTrue(os.path.exists(sock), "the socket file should outlive kill -9")
        self.assertEqual(unix_listener_pids(sock, [first.proc.pid]), [],
                         "nobody listens on the stale socket file")

        fresh = first.successor("t6-lbd2", workers=1)
        fresh.start()
        self.assertEqual(self.echo_once(fresh.port), "ok", "an echo through the fresh lbd")
        st2 = os.stat(sock)
        self.assertTrue(stat.S_ISSOCK(st2.st_mode))
        self.assertEqual(stat.S_IMODE(st2.st_mode), 0o600)
        self.assertEqual(unix_listener_pids(sock, [fresh.proc.pid]), [fresh.proc.pid],
                         "the fresh lbd listens on the upgrade socket in place of the stale one")
        self.assertIsNone(fresh.log.find(READY_MARK), "the fresh lbd claimed an upgrade")
        fresh.stop(expect_rc=0)

        missing = self.h.path("no-such-dir", "sub", "up.sock")
        argv = UpLbd(self.h, self.etcd.url, missing, "t6-missing").argv()
        try:
            rc, out, err = run(argv, timeout=scaled(15))
        except subprocess.TimeoutExpired:
            self.fail("lbd kept running with --upgrade-socket in a missing directory")
        text = out + err
        lines = [ln for ln in text.splitlines() if missing in ln or "no-such-dir" in ln]
        figure("missing directory: rc", rc)
        figure("missing directory: line", lines)
        self.assertIn(rc, (1, 2), text)
        self.assertEqual(len(lines), 1, "one line naming the path:\n" + text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--backend"]:
        serve_backend()
    else:
        lbtest.main()
