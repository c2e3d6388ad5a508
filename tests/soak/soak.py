#!/usr/bin/python3
"""A randomized, seeded, reproducible soak of lbd over its whole state space.

    /usr/bin/python3 tests/soak/soak.py --bin-dir build-asan --seed 12345 --duration 90

One random.Random(seed) makes every choice: which event comes next and its
parameters, when the churn pauses for a quiet phase and what that phase
heals, and the seeds of the client threads.  The seed is printed at the
start and in every failure; `--seed N` replays the same sequence of events
(timing differs, the sequence does not: the digest printed at the end
covers it).  Real etcd, real lbd and lbctl, real sockets on loopback.

Events (see EVENT_WEIGHTS): backend keys put, re-weighted, moved, deleted,
given bad values; registrations under leases that lapse or are revoked, and
by `lbctl register`; over-long and malformed keys and huge values, in served
and unserved pools; backend servers that echo, hang, stop reading, reset,
refuse, die, blackhole and come back; pool policies over every field and
algorithm, valid and invalid; cluster overrides written to etcd directly;
`lbctl drain/undrain/weight/health` in both scopes on live and vanished ids;
etcd restarted, killed, cut off while the prefix changes and is compacted;
idle, half-open and trickling connections on the admin and probe ports;
emptied pools and bursts of hundreds of backends; hitless upgrades (a new
lbd with the same flags, SIGUSR2, a new lbd of another session version, a
new lbd killed -9 before it is ready); lbd stalled (every thread stopped
for up to 0.8 s, as a pod throttled at its CPU limit); lbd killed -9 and
started again with the same flags (a crash, the OOM killer), half the time
while it is cut off from etcd, when only its --state-file lets it serve.
Meanwhile client threads keep connecting through lbd.

Invariants, checked all the time:
  - lbd alive, no AddressSanitizer/UBSan/LeakSanitizer report in its log;
  - /healthz answers within 1 s (its own thread, every 0.5 s);
  - every client attempt ends within a bound derived from the pool policies
    in force while it ran: served (echo correct) or closed (EOF or reset);
    a wrong byte or a refused connect to lbd's listener is a failure (but
    while lbd is down between a crash and its restart);
and in quiet phases (churn paused, state settled):
  - `lbctl -o json backends` agrees with etcd and the overrides given;
  - a pool with a registered, echoing, undrained, weighted, not forced-down
    backend serves every client;
around every upgrade:
  - no new connection refused or lost, no established one cut (witness
    connections held across it), sessions of the same version moved;
  - the old lbd exits 0 within --shutdown-grace, the soak follows the new;
and at the end: lbd's open fds and RSS back near their starting values,
exit 0 on SIGTERM, no leak report.

One file on purpose, though long: the event generators, the model of what
lbd must show and the invariant checks share one state and one random
stream, and splitting them would scatter what a replayed seed does.
"""

import argparse
import base64
import collections
import errno
import hashlib
import json
import os
import random
import re
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)

import lbtest  # noqa: E402
from soak_backend import BackendFarm  # noqa: E402

PREFIX = "/soak/"
POOLS = ("web", "db")        # served: every invariant
BULK = "bulk"                # served: bursts of backends; bounded clients only
GHOST = "ghost"              # in etcd, not served by this lbd
VOID = "void"                # served, never a key in etcd: no backend, no policy
SERVED = POOLS + (BULK, VOID)
WIT = "wit"                  # served, for the upgrades' silent witnesses only: one backend,
                             # on a server of its own that no event touches
WRITTEN = POOLS + (BULK, GHOST)  # pools whose policy the soak writes
CLIENT_POOLS = {"web": 38, "db": 38, BULK: 18, VOID: 6}
SLOTS = tuple("b%d" % i for i in range(6))
REG_IDS = ("r0", "r1")       # ids used by `lbctl register`
N_SERVERS = 8
N_CLOSED = 3                 # ports nobody listens on

MAX_ATTEMPTS_CAP = 11        # a client is never tried on more backends than this
SLACK = 3.0                  # seconds on top of every bound derived from a policy
CLIENT_CAP = 60.0            # a client waits at most this long, bound or not
POLICY_LAG = 5.0             # a superseded policy may still be in force this long
STATE_FILE_LAG = 1.0         # lbd writes its state file this long after a change
HEALTHZ_LIMIT = 1.0
ASAN_QUARANTINE_MB = 64
ABUSE_MAX = 150              # connections held on each of the admin and probe ports
QUIET_TRIES = 8              # sequential clients per pool in a quiet phase

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer",
                   "ERROR: LeakSanitizer", "AddressSanitizer:DEADLYSIGNAL")

# kind: weight.  Every kind is reached in a CI-length run (see the summary).
EVENT_WEIGHTS = {
    "backend.put": 14, "backend.weight": 5, "backend.addr": 5, "backend.bad": 4,
    "backend.delete": 7, "lease.revoke": 2, "pool.empty": 2,
    "server.mode": 14,
    "policy.put": 7, "policy.bad": 3, "policy.delete": 1,
    "override.put": 2, "override.bad": 1, "override.delete": 1,
    "ctl.drain": 4, "ctl.undrain": 3, "ctl.weight": 3, "ctl.weight_clear": 2,
    "ctl.health": 4, "ctl.drain_wait": 1,
    "reg.start": 2, "reg.stop": 1, "reg.kill": 1,
    "key.overlong": 1, "key.malformed": 2, "value.huge": 1, "junk.clear": 1,
    "etcd.restart": 1, "etcd.kill": 1, "etcd.cutoff": 1, "etcd.compact": 1,
    "abuse.admin": 3, "abuse.http": 3, "abuse.close": 2,
    "bulk.burst": 1, "bulk.clear": 1, "bulk.policy": 1,
    "upgrade.start": 2, "upgrade.usr2": 1, "upgrade.incompatible": 1, "upgrade.abort": 1,
    "upgrade.old_crash": 1,
    "lbd.stall": 2, "lbd.crash": 1,
}
UPGRADE_KINDS = tuple(k for k in EVENT_WEIGHTS if k.startswith("upgrade."))

# Upgrades (--upgrade-socket, docs/upgrade.md): the lines of lbd's log the
# soak follows (all at level info).
SHUTDOWN_GRACE_S = 3.0       # lbd's --shutdown-grace: an old lbd exits within it after READY
READY_MARK = "upgrade: ready"
TAKEOVER_MARK = "upgrade: took over the listeners"
# lbd accepts after its first etcd listing, or, taking over, from the previous one's view
ACCEPTING_MARKS = ("first etcd listing applied, accepting connections",
                   "view of etcd taken over from the previous process, accepting connections",
                   "view of etcd taken over from the state file, accepting connections")
HANDOVER_MARK = "upgrade: hand-over finished"
STATE_FILE_MARK = "started from the state file"
GREETED_MARK = "taking over from it"          # a new lbd found a running one to take over from
OLD_DIED_MARK = "exited during the hand-over"  # ... which died before it sent the listeners
LISTENERS_ONLY_MARK = "listeners only"
WENT_AWAY_MARK = "upgrade: the new process went away before it was ready"
SPAWNED_RE = re.compile(r'upgrade: started the new binary" new_pid=(\d+)')
TAKING_OVER_RE = re.compile(r'upgrade: a new lbd is taking over" new_pid=(\d+)')
# lbd turning SIGUSR2 down (an upgrade in progress, shutting down): a warning
USR2_REFUSED_RE = re.compile(r'level=warn [^\n]*msg="SIGUSR2: [^"]*"[^\n]*')
WITNESS_PERIOD = 0.1         # a witness connection exchanges bytes this often


class SoakFailure(Exception):
    pass


class ClientHung(Exception):
    pass


def now():
    return time.monotonic()


def witness_exchange(w, send, n, when):
    """Sends `send` on witness w's socket and reads n bytes back within 5 s
    (scaled).  Returns them, or None after w.fail() naming what went wrong
    `when` (EOF, timeout, reset, another socket error)."""
    try:
        w.sock.settimeout(lbtest.scaled(5.0))
        w.sock.sendall(send)
        got = b""
        while len(got) < n:
            chunk = w.sock.recv(n - len(got))
            if not chunk:
                w.fail("closed (EOF) %s" % when)
                return None
            got += chunk
        return got
    except socket.timeout:
        w.fail("no answer within %.0f s %s" % (lbtest.scaled(5.0), when))
    except ConnectionResetError:
        w.fail("reset %s" % when)
    except OSError as exc:
        w.fail("%s: %s: %s" % (when, type(exc).__name__, exc))
    return None


def dur(ms):
    """A duration string lbd accepts, in one of several spellings."""
    if ms == 0:
        return "0"
    if ms % 1000 == 0:
        return "%ds" % (ms // 1000)
    if ms > 1000 and ms % 100 == 0:
        return "%gs" % (ms / 1000.0)
    return "%dms" % ms


# ---------------------------------------------------------------------------
# Policy history: what a client attempt may have run under


class PolicyHistory:
    """Per pool, the policies written, with the figures that bound a client:
    idle and connect timeouts (inf = none) and retries."""

    def __init__(self):
        self._lock = threading.Lock()
        self._versions = {p: [] for p in SERVED}
        self._cut_off = False
        self._pending = []
        for p in SERVED:
            self.add(p, float("inf"), 3.0, 2)  # lbd's defaults until the first write
        # Nothing to connect to, ever: lbd must close at once.
        self._versions[VOID] = [{"written": now(), "superseded": None, "idle": 0.0,
                                 "connect": 0.0, "retries": 0}]

    def add(self, pool, idle, connect, retries):
        if pool not in self._versions:
            return
        t = now()
        with self._lock:
            vs = self._versions[pool]
            if vs:
                if self._cut_off:
                    self._pending.append(vs[-1])
                else:
                    vs[-1]["superseded"] = t
            vs.append({"written": t, "superseded": None, "idle": idle, "connect": connect,
                       "retries": retries})
            # Old versions no attempt can still be under.
            cutoff = t - CLIENT_CAP - POLICY_LAG - 10
            while len(vs) > 2 and vs[0]["superseded"] is not None and vs[0]["superseded"] < cutoff:
                vs.pop(0)

    def max_idle_since(self, pool, t0):
        """The longest idle timeout a connection opened after t0 may have."""
        with self._lock:
            return max(v["idle"] for v in self._versions[pool]
                       if v["superseded"] is None or v["superseded"] + POLICY_LAG >= t0)

    def last(self, pool):
        with self._lock:
            return dict(self._versions[pool][-1])

    def cut_off(self, on):
        """While lbd cannot see etcd, what was in force stays in force."""
        with self._lock:
            self._cut_off = on
            if not on:
                t = now() + POLICY_LAG
                for v in self._pending:
                    v["superseded"] = t
                self._pending = []

    def bound(self, pool, t0, t):
        """Seconds an attempt started at t0 may take (None: no bound)."""
        idle = connect = 0.0
        retries = 0
        with self._lock:
            for v in self._versions[pool]:
                if v["written"] > t:
                    continue
                if v["superseded"] is not None and v["superseded"] + POLICY_LAG < t0:
                    continue
                idle = max(idle, v["idle"])
                connect = max(connect, v["connect"])
                retries = max(retries, v["retries"])
        attempts = min(retries + 1, MAX_ATTEMPTS_CAP)
        total = attempts * connect + idle + SLACK * max(1.0, lbtest.TIMEOUT_SCALE / 1.5)
        return None if total == float("inf") else total


# ---------------------------------------------------------------------------
# Clients


class ClientResult:
    __slots__ = ("pool", "kind", "t0", "t1", "outcome", "detail", "server")

    def __init__(self, pool, kind, t0):
        self.pool, self.kind, self.t0 = pool, kind, t0
        self.t1 = None
        self.outcome = None
        self.detail = ""
        self.server = None


class Attempt:
    """One client connection through lbd, waited on in short ticks so the
    bound (which grows if the policy changes meanwhile) is checked live."""

    TICK = 0.2

    def __init__(self, soak, pool, kind, rng):
        self.soak = soak
        self.pool = pool
        self.kind = kind
        self.rng = rng
        self.res = ClientResult(pool, kind, now())
        self.sock = None
        self.stopping = None  # an Event: the churn is over, give up within the bound

    def _check_time(self, limit=None):
        t = now()
        elapsed = t - self.res.t0
        b = self.soak.history.bound(self.pool, self.res.t0, t)
        if b is not None and elapsed > b and (limit is None or b <= limit):
            raise ClientHung("no end after %.1fs (bound %.1fs from the policies in force)"
                             % (elapsed, b))
        if self.stopping is not None and self.stopping.is_set():
            raise ClientHung("stopped")
        cap = limit if limit is not None else CLIENT_CAP
        if elapsed > cap:
            raise ClientHung("allowed")

    def _poll(self, read, write):
        """(readable, writable) after at most one tick (poll: fds may be > 1024)."""
        p = select.poll()
        p.register(self.sock, (select.POLLIN if read else 0) | (select.POLLOUT if write else 0))
        r = w = False
        for _, ev in p.poll(self.TICK * 1000):
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                r = True
            if ev & (select.POLLOUT | select.POLLHUP | select.POLLERR):
                w = True
        return r and read, w and write

    def _wait(self, want_write=False, limit=None):
        while True:
            self._check_time(limit)
            r, w = self._poll(not want_write, want_write)
            if r or w:
                return

    def _recv(self, n, limit=None):
        self._wait(limit=limit)
        return self.sock.recv(n)

    def _send_all(self, data, limit=None):
        view = memoryview(data)
        while view:
            self._wait(want_write=True, limit=limit)
            k = self.sock.send(view)
            view = view[k:]

    def _read_line(self, limit=None, maxlen=256):
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self._recv(1, limit)
            if not chunk:
                return buf, False
            buf += chunk
            if len(buf) > maxlen:
                raise SoakFailure("%s client: no newline in %d bytes from lbd: %r"
                                  % (self.pool, maxlen, buf[:80]))
        return buf, True

    def _connect(self):
        port = self.soak.lbd.pool_port(self.pool)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        rc = self.sock.connect_ex(("127.0.0.1", port))
        if rc not in (0, errno.EINPROGRESS):
            raise ConnectionRefusedError(rc, os.strerror(rc))
        self._wait(want_write=True)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == errno.ECONNREFUSED:
            raise ConnectionRefusedError(err, os.strerror(err))
        if err:
            # accepted, then reset before we looked: lbd passing on a reset
            raise ConnectionResetError(err, os.strerror(err))

    def _hello(self, limit=None):
        """Sends the hello, returns the server id or None when lbd closed first."""
        nonce = "%016x" % self.rng.getrandbits(64)
        self._send_all(("SOAK %s\n" % nonce).encode(), limit)
        line, complete = self._read_line(limit)
        if not complete:
            if line:
                raise SoakFailure("%s client: partial greeting %r then EOF" % (self.pool, line))
            return None
        words = line.decode("ascii", "replace").split()
        if len(words) != 2 or words[1] != nonce or words[0] not in self.soak.farm.servers:
            raise SoakFailure("%s client: greeting %r does not answer hello %s"
                              % (self.pool, line, nonce))
        return words[0]

    def _echo(self, payload, limit=None):
        """Sends payload while reading its echo.  Returns bytes echoed (a
        prefix check is done: any wrong byte is corruption)."""
        got = bytearray()
        view = memoryview(payload)
        sent = 0
        while len(got) < len(payload):
            self._check_time(limit)
            r, w = self._poll(True, sent < len(payload))
            if w:
                sent += self.sock.send(view[sent:sent + 65536])
            if r:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                got += chunk
                if bytes(got) != payload[: len(got)]:
                    raise SoakFailure("%s client: echo corrupted after %d bytes (server %s)"
                                      % (self.pool, len(got), self.res.server))
        return len(got)

    def run(self):
        res = self.res
        try:
            try:
                self._connect()
            except ConnectionRefusedError as exc:
                # lbd is down between a crash and its restart: refused is all it can be
                t1 = now()
                crashed = self.soak.in_crash_window(res.t0, t1)
                res.outcome = "refused_crashed" if crashed else "lbd_refused"
                if crashed:
                    self.soak.crash_refusals.append((res.t0, t1))
                res.detail = str(exc)
                return res
            getattr(self, "_kind_" + self.kind)()
        except ClientHung as exc:
            if str(exc) in ("allowed", "stopped"):
                res.outcome = "hung_allowed" if str(exc) == "allowed" else "stopped"
            else:
                res.outcome = "hung"
                res.detail = str(exc)
        except SoakFailure as exc:
            res.outcome = "corrupt"
            res.detail = str(exc)
        except ConnectionResetError:
            res.outcome = res.outcome or "reset"
        except BrokenPipeError:
            res.outcome = res.outcome or "reset"
        except OSError as exc:
            res.outcome = res.outcome or "oserror"
            res.detail = "%s: %s" % (type(exc).__name__, exc)
        finally:
            res.t1 = now()
            if self.sock is not None:
                try:
                    self.sock.close()
                except OSError:
                    pass
        return res

    def _served_exchange(self, payload):
        sid = self._hello()
        if sid is None:
            self.res.outcome = "closed"
            return False
        self.res.server = sid
        n = self._echo(payload)
        if n < len(payload):
            self.res.outcome = "closed"
            self.res.detail = "EOF after %d of %d echoed bytes" % (n, len(payload))
            return False
        return True

    def _kind_normal(self):
        payload = os.urandom(self.rng.randint(1, 2000))
        if self._served_exchange(payload):
            self.res.outcome = "served"

    def _kind_big(self):
        payload = os.urandom(self.rng.randint(64 << 10, 512 << 10))
        if self._served_exchange(payload):
            self.res.outcome = "served"

    def _kind_halfclose(self):
        payload = os.urandom(self.rng.randint(1, 4000))
        sid = self._hello()
        if sid is None:
            self.res.outcome = "closed"
            return
        self.res.server = sid
        self._send_all(payload)
        self.sock.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            chunk = self._recv(65536)
            if not chunk:
                break
            got += chunk
            if bytes(got) != payload[: len(got)]:
                raise SoakFailure("%s client: half-closed echo corrupted (server %s)"
                                  % (self.pool, sid))
        self.res.outcome = "served" if len(got) == len(payload) else "closed"

    def _kind_hold(self):
        sid = self._hello()
        if sid is None:
            self.res.outcome = "closed"
            return
        self.res.server = sid
        until = now() + self.rng.uniform(0.5, 4.0)
        while now() < until:
            payload = os.urandom(self.rng.randint(1, 300))
            if self._echo(payload) < len(payload):
                self.res.outcome = "closed"
                return
            time.sleep(self.rng.uniform(0.05, 0.3))
        self.res.outcome = "served"

    def _kind_abort(self):
        if self.rng.random() < 0.5:
            self._send_all(b"SOAK abort\n")
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.res.outcome = "aborted"

    def _kind_silent(self):
        # Sends nothing: lbd must close it by its idle timeout.
        while True:
            chunk = self._recv(4096, limit=20.0)
            if not chunk:
                self.res.outcome = "closed"
                return


CLIENT_KINDS = {"normal": 70, "big": 6, "halfclose": 6, "hold": 8, "abort": 6, "silent": 4}
MUST_SERVE_KINDS = ("normal", "big", "halfclose")


class ClientThreads:
    def __init__(self, soak, n, seeds):
        self.soak = soak
        self._stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.recent = collections.deque(maxlen=20000)
        self.violations = []
        self.threads = [threading.Thread(target=self._run, args=(random.Random(s),),
                                         name="client-%d" % i, daemon=True)
                        for i, s in enumerate(seeds[:n])]
        for t in self.threads:
            t.start()

    def _run(self, rng):
        kinds = list(CLIENT_KINDS)
        weights = [CLIENT_KINDS[k] for k in kinds]
        pools = [p for p in CLIENT_POOLS if not (p == VOID and self.soak.no_void)]
        pool_weights = [CLIENT_POOLS[p] for p in pools]
        while not self._stop.is_set():
            pool = rng.choices(pools, weights=pool_weights)[0]
            kind = rng.choices(kinds, weights=weights)[0]
            try:
                attempt = Attempt(self.soak, pool, kind, rng)
                attempt.stopping = self._stop
                res = attempt.run()
            except Exception as exc:  # noqa: BLE001 - a bug here must show
                res = ClientResult(pool, kind, now())
                res.t1 = now()
                res.outcome = "harness_error"
                res.detail = traceback.format_exc(limit=3)
                sys.stderr.write("soak client error: %r\n" % exc)
            with self.lock:
                self.counts["%s.%s" % (kind, res.outcome)] += 1
                self.recent.append(res)
                if res.outcome in ("hung", "corrupt", "lbd_refused", "harness_error"):
                    self.violations.append(res)
            self._stop.wait(rng.uniform(0.005, 0.04))

    def since(self, t):
        with self.lock:
            return [r for r in self.recent if r.t0 >= t]

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(CLIENT_CAP + 10)


# ---------------------------------------------------------------------------
# /healthz probe


class HealthzProbe(threading.Thread):
    def __init__(self, port, excused=lambda t0, t1: False):
        super().__init__(name="healthz-probe", daemon=True)
        self.port = port
        self.excused = excused   # (t0, t1): lbd was down meanwhile (a crash)
        self._halt = threading.Event()
        self.violations = []
        self.slow = 0
        self.probes = 0
        self.worst = 0.0

    def probe(self):
        t0 = now()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=HEALTHZ_LIMIT) as s:
                s.settimeout(max(0.01, HEALTHZ_LIMIT - (now() - t0)))
                s.sendall(b"GET /healthz HTTP/1.0\r\nHost: soak\r\n\r\n")
                buf = b""
                while b"\r\n" not in buf:
                    s.settimeout(max(0.01, HEALTHZ_LIMIT - (now() - t0)))
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
        except OSError as exc:
            return False, now() - t0, "%s: %s" % (type(exc).__name__, exc)
        took = now() - t0
        if not buf.startswith(b"HTTP/1.") or buf[9:12] != b"200":
            return False, took, "answer %r" % buf[:40]
        if took > HEALTHZ_LIMIT:
            return False, took, "took %.2fs" % took
        return True, took, ""

    def run(self):
        while not self._halt.wait(0.5):
            ok, took, why = self.probe()
            self.probes += 1
            self.worst = max(self.worst, took)
            if ok:
                continue
            self.slow += 1
            t0 = now() - took
            ok2, took2, why2 = self.probe()  # one more at once: a hiccup or a stall?
            if not ok2 and not self.excused(t0, now()):
                self.violations.append("/healthz did not answer within %.0f s twice in a row "
                                       "(%s; then %s)" % (HEALTHZ_LIMIT, why, why2))

    def stop(self):
        self._halt.set()
        self.join(5)


# ---------------------------------------------------------------------------
# Upgrades: lbd processes (ours, and those lbd starts itself on SIGUSR2),
# witness connections held across an upgrade, and a prober of new connections


def all_threads_stopped(pid):
    """True when every thread of pid is stopped (SIGSTOP took hold), or it is gone."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return True
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


def exit_code(proc):
    """An lbd process's exit code (None: running, or not the soak's to reap)."""
    if isinstance(proc, lbtest.ForeignProc):
        proc.alive()
        return proc.returncode
    return proc.popen.poll()


class SoakLbd(lbtest.UpgradeLbd):
    """lbd with --upgrade-socket.  successor() is the next lbd with the same
    flags (the same ports and socket; --workers may differ); adopt() stands
    for the lbd that this one started on SIGUSR2."""

    def __init__(self, h, etcd_url, extra_args, env, name, sock_path=None, workers=None,
                 version=None, like=None, gen=1, pools=SERVED):
        self.version = version or ""   # LBD_TEST_HANDOVER_VERSION ("": the binary's own)
        self.gen = gen
        self.baseline = None           # (fds, rss kB) once measured
        super().__init__(h, etcd_url, PREFIX, list(pools), sock_path=sock_path, workers=workers,
                         like=like, extra_args=extra_args, env=env, name=name)

    @property
    def label(self):
        by_usr2 = isinstance(self.proc, lbtest.ForeignProc)
        return "lbd #%d (pid %d%s)" % (self.gen, self.proc.pid,
                                       ", started by SIGUSR2" if by_usr2 else "")

    def successor(self, gen, workers, version):
        env = dict(self.env or {})
        env["LBD_TEST_HANDOVER_VERSION"] = version  # "" is the binary's own version
        return SoakLbd(self.h, self.etcd_url, self.extra_args, env, "lbd-gen%d" % gen,
                       self.sock_path, workers, version, like=self, gen=gen,
                       pools=self.pool_names)

    def adopt(self, gen, pid):
        child = SoakLbd(self.h, self.etcd_url, self.extra_args, self.env, "lbd-gen%d" % gen,
                        self.sock_path, self.workers, self.version, like=self, gen=gen,
                        pools=self.pool_names)
        child.proc = lbtest.ForeignProc(pid, child.name, self.proc.log_path, self.proc.argv)
        return child


def read_from(path, offset):
    """The text of a file from a byte offset ("" when unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class Witness:
    """One connection through lbd, greeted by an echo server before an
    upgrade, that goes on exchanging a few bytes every WITNESS_PERIOD."""

    def __init__(self, pool, sock, server, rng, guarded, movable):
        self.pool = pool
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.server = server
        self.rng = rng
        self.guarded = guarded      # nothing but lbd may end it (see open_witnesses)
        self.movable = movable      # a new lbd has its backend: it must move (witness_movable)
        self.opened_at = now()
        self.failed_at = None
        self.expect = bytearray()   # sent, not echoed yet
        self.sent_at = None         # when the oldest unechoed byte was sent
        self.next_send = 0.0
        self.echoed = 0
        self.error = None

    def desc(self):
        return "%s connection via %s (client port %d)" % (self.pool, self.server, self.port)

    def fail(self, why):
        if self.error is None:
            self.error = "%s after %d bytes echoed" % (why, self.echoed)
            self.failed_at = now()

    def timeline(self, t0, t_ready):
        """When it opened and broke, relative to the event's start (and the new lbd's ready)."""
        def at(t):
            if t is None:
                return "-"
            return "%+.2fs" % (t - t0) + ("" if t_ready is None else
                                          " (ready%+.2fs)" % (t - t_ready))
        return "opened %s, broke %s" % (at(self.opened_at), at(self.failed_at))


class WitnessThread(threading.Thread):
    """Drives the witnesses, each from the moment it is added (an idle one
    would meet the idle timeout of its pool, which may be 1 s)."""

    def __init__(self, stall):
        super().__init__(name="upgrade-witnesses", daemon=True)
        self.stall = stall
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._new = []

    def add(self, w):
        w.sock.setblocking(False)
        with self._lock:
            self._new.append(w)

    def run(self):
        sel = selectors.DefaultSelector()
        live = {}
        while not self._halt.is_set():
            with self._lock:
                added, self._new = self._new, []
            for w in added:
                sel.register(w.sock, selectors.EVENT_READ, w)
                live[w] = True
            if not live:
                time.sleep(0.01)
                continue
            t = now()
            for w in list(live):
                if w.error:
                    continue
                if not w.expect and t >= w.next_send:
                    payload = w.rng.randbytes(w.rng.randint(1, 200))
                    try:
                        n = w.sock.send(payload)
                    except BlockingIOError:
                        n = 0
                    except OSError as exc:
                        w.fail("send: %s" % type(exc).__name__)
                        continue
                    w.expect += payload[:n]
                    w.sent_at = t
                    w.next_send = t + WITNESS_PERIOD
                elif w.expect and t - w.sent_at > self.stall:
                    w.fail("no echo for %.1f s" % (t - w.sent_at))
            for key, _ in sel.select(0.02):
                w = key.data
                if w.error:
                    continue
                try:
                    data = w.sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    w.fail("reset")
                    continue
                except OSError as exc:
                    w.fail("recv: %s" % type(exc).__name__)
                    continue
                if not data:
                    w.fail("closed (EOF)")
                    continue
                if bytes(w.expect[:len(data)]) != data:
                    w.fail("echo corrupted (%r, expected %r)" % (data[:20], bytes(w.expect[:20])))
                    continue
                del w.expect[:len(data)]
                w.echoed += len(data)
            for w in [w for w in live if w.error]:
                del live[w]
                try:
                    sel.unregister(w.sock)
                except (KeyError, ValueError):
                    pass
        sel.close()

    def stop(self):
        self._halt.set()
        self.join(10)


class ConnectProber(threading.Thread):
    """During an upgrade, a new connection every few ms, in turn to pool
    void (lbd accepts and, with no backend, closes it at once: EOF), the
    probe port (/healthz answers 200) and the admin port (accepted).  A
    refused connect is a failure; so is a void connection reset or left
    hanging, and a /healthz connection dropped unanswered (except when a
    new lbd is killed -9: it may have accepted one)."""

    def __init__(self, void_port, http_port, admin_port, limit, allow_http_drop):
        super().__init__(name="upgrade-prober", daemon=True)
        self.targets = [("void", void_port), ("http", http_port), ("void", void_port),
                        ("admin", admin_port)]
        self.limit = limit
        self.allow_http_drop = allow_http_drop
        self._halt = threading.Event()
        self.outcomes = collections.Counter()
        self.worst = collections.defaultdict(float)   # kind -> longest connection, s
        self.violations = []

    def one(self, kind, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(self.limit)
        t0 = now()
        try:
            try:
                s.connect(("127.0.0.1", port))
            except ConnectionRefusedError:
                return "refused", "connect to port %d refused" % port
            except socket.timeout:
                return "timeout", "connect to port %d: no answer in %.1f s" % (port, self.limit)
            if kind == "admin":
                return "ok", ""
            if kind == "http":
                s.sendall(b"GET /healthz HTTP/1.0\r\nHost: soak\r\n\r\n")
                buf = b""
                while b"\r\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                if buf.startswith(b"HTTP/1.") and buf[9:12] == b"200":
                    return "ok", ""
                return "dropped", "/healthz answered %r" % buf[:40]
            chunk = s.recv(64)
            if chunk:
                return "data", "pool void sent %r" % chunk[:40]
            return "ok", ""
        except ConnectionResetError:
            return "reset", "%s connection reset after %.2f s" % (kind, now() - t0)
        except socket.timeout:
            return "timeout", "%s connection: nothing within %.1f s" % (kind, self.limit)
        except OSError as exc:
            return "error", "%s connection: %s: %s" % (kind, type(exc).__name__, exc)
        finally:
            s.close()

    def run(self):
        i = 0
        while not self._halt.is_set():
            kind, port = self.targets[i % len(self.targets)]
            i += 1
            t0 = now()
            outcome, why = self.one(kind, port)
            self.worst[kind] = max(self.worst[kind], round(now() - t0, 3))
            self.outcomes["%s.%s" % (kind, outcome)] += 1
            if outcome != "ok":
                if kind == "http" and outcome in ("reset", "dropped") and self.allow_http_drop:
                    continue
                self.violations.append(why)
            self._halt.wait(0.005)

    def stop(self):
        self._halt.set()
        self.join(self.limit + 5)


# ---------------------------------------------------------------------------
# Model of what etcd holds and lbd must show


class KeyModel:
    """One backend key as the soak wrote it."""

    def __init__(self):
        self.present = False
        self.lease = None        # None | ("long", id) | ("lapse", id, expires_at)
        self.target = None       # ("server", sid) | ("closed", i) | ("dns", sid) | ("nohost",)
        self.weight = 100
        self.last_good = None    # (addr, weight) lbd must hold
        self.stale = set()       # goods lbd may still hold if it missed a delete
        self.current_bad = False
        self.goods = []          # (time, (addr, weight)) of the last good values put

    def goods_in_force_since(self, since):
        """The good values this key may have had at any time from since on
        (the one in force then, and those put after)."""
        before = [spec for t, spec in self.goods if t < since]
        return {spec for t, spec in self.goods if t >= since} | set(before[-1:])

    def certain(self):
        return self.present and (self.lease is None or self.lease[0] == "long")


class OverrideModel:
    def __init__(self):
        self.last_good = None    # dict drain/weight/health
        self.current_bad = False
        self.stale = False


class LocalOverride:
    def __init__(self):
        self.has_drain = False
        self.drain = False
        self.has_weight = False
        self.clear_weight = False
        self.weight = 0
        self.has_health = False
        self.health = "auto"

    def empty(self):
        return not (self.has_drain or self.has_weight or self.clear_weight or self.has_health)


def parse_override(raw):
    o = json.loads(raw)
    return {"drain": bool(o.get("drain", False)),
            "weight": o.get("weight") if isinstance(o.get("weight"), int) else None,
            "health": o.get("health", "auto")}


# ---------------------------------------------------------------------------
# The soak


class Soak:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.rng = random.Random(self.seed)
        self.h = lbtest.Harness("soak")
        self.events = []          # descriptions, in order
        self.digest = hashlib.sha256()
        self.counts = collections.Counter()
        self.index = 0
        self.t_start = now()
        self.history = PolicyHistory()
        self.keys = {}            # (pool, id) -> KeyModel
        self.overrides = {}       # (pool, id) -> OverrideModel
        self.local = {}           # (pool, id) -> LocalOverride
        self.long_leases = []     # lease ids that live until revoked
        self.lapsing = []         # (lease id, expires_at)
        self.registrars = {}      # (pool, id) -> Registrar
        self.junk = set()         # junk keys (bytes) put under the prefix
        self.bulk_ids = set()
        self.abuse = {"admin": [], "http": []}   # [socket, kind, next_trickle]
        # Ports bound but not listening: connects are refused, and nothing
        # else (a backend server, a restarted etcd) can take them.
        self.closed_socks = []
        for _ in range(N_CLOSED):
            cs = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            cs.bind(("127.0.0.1", 0))
            lbtest.reserve_port(cs.getsockname()[1])
            self.closed_socks.append(cs)
        self.closed_ports = [cs.getsockname()[1] for cs in self.closed_socks]
        self.sanitizer_seen = None
        self.quiet_reports = []
        self.excluded = set()
        self.hidden = False
        self.final_counters = None
        self.cutoff_deletes = {}          # (pool, id) -> revision, deletes while cut off
        self.tombstone_at_compaction = {}  # (pool, id) -> revision compacted at that delete
        self.last_quiet_event = 0
        self.lbd = None
        self.lbds = []            # every lbd process of the run (SoakLbd), in order
        self.retiring = []        # old lbds after an upgrade, until they exit
        self.log_offsets = {}     # log path -> bytes scanned
        self.upgrade_log = []     # one dict per upgrade, for the summary
        self.upgrade_windows = []  # (start, end) of every upgrade
        self.crash_windows = []    # [start, end or None]: lbd killed until its successor is ready
        self.crash_refusals = []   # (t0, t1) of each connect refused in a crash window
        self.prober = None        # ConnectProber while an upgrade runs
        self.pending_new = None   # the new lbd of an upgrade, until it is ready
        self.policy_bad = {}      # pool -> figures of the invalid policy etcd holds now
        self.reg_killed = {}      # pool -> when a registrar of it was last killed -9
        self.clients = None
        self.probe = None
        self.no_void = False
        self.no_upgrade_socket = False
        self.no_silent = False
        self.wfarm = None         # the server of pool WIT
        only = [x.strip() for x in (args.only or "").split(",") if x.strip()]
        if only:
            self.excluded = {k for k in EVENT_WEIGHTS
                             if not any(k == o or k.startswith(o) for o in only)}
        for x in (args.exclude or "").split(","):
            x = x.strip()
            if x == "void":
                # no client of pool "void", every pool configured at the start
                self.no_void = True
                continue
            if x == "upgrade":
                # no upgrade events, and lbd without --upgrade-socket
                self.no_upgrade_socket = True
            if x == "silent":
                # upgrades without silent witnesses (and no pool WIT)
                self.no_silent = True
                continue
            if x:
                self.excluded |= {k for k in EVENT_WEIGHTS if k == x or k.startswith(x + ".")
                                  or k.startswith(x)}
        if args.log_level not in ("debug", "info") and not self.no_upgrade_socket:
            # The upgrade events follow lbd's log lines of level info.
            self.excluded |= set(UPGRADE_KINDS)
        self.use_wit = (not self.no_upgrade_socket and not self.no_silent and
                        any(k not in self.excluded for k in UPGRADE_KINDS))

    # --- output ---

    def say(self, msg):
        sys.stderr.write("[soak %6.1fs] %s\n" % (now() - self.t_start, msg))
        sys.stderr.flush()

    def record(self, desc):
        self.index += 1
        line = "#%d %s" % (self.index, desc)
        self.events.append(line)
        if len(self.events) > 400:
            del self.events[:200]
            self.last_quiet_event = max(0, self.last_quiet_event - 200)
        self.digest.update(line.encode() + b"\n")
        if self.args.verbose:
            self.say(line)

    # --- addresses ---

    def target_addr(self, target):
        kind = target[0]
        if kind == "server":
            return self.farm.addr(target[1])
        if kind == "closed":
            return "127.0.0.1:%d" % self.closed_ports[target[1]]
        if kind == "dns":
            return "localhost:%d" % self.farm.servers[target[1]].port
        return "no-such-host.invalid:80"

    def target_desc(self, target):
        if target[0] in ("server", "dns"):
            return "%s:%s" % target
        if target[0] == "closed":
            return "closed:%d" % target[1]
        return "nohost"

    # --- etcd calls ---

    def key_backend(self, pool, bid):
        return "%spools/%s/backends/%s" % (PREFIX, pool, bid)

    def key_override(self, pool, bid):
        return "%spools/%s/overrides/%s" % (PREFIX, pool, bid)

    def key_config(self, pool):
        return "%spools/%s/config" % (PREFIX, pool)

    def put(self, key, value, lease=None):
        """Puts; returns True when the key existed before."""
        body = {"key": base64.b64encode(key if isinstance(key, bytes) else key.encode()).decode(),
                "value": base64.b64encode(value if isinstance(value, bytes)
                                          else value.encode()).decode(),
                "prev_kv": True}
        if lease:
            body["lease"] = str(lease)
        obj = self.etcd._post("/v3/kv/put", body, timeout=15)
        return "prev_kv" in obj

    def delete_backend(self, pool, bid):
        """Deletes a backend key; remembers the revision of a delete made
        while lbd is cut off (see ev_etcd_cutoff)."""
        key = self.key_backend(pool, bid)
        obj = self.etcd._post("/v3/kv/deleterange",
                              {"key": base64.b64encode(key.encode()).decode()})
        if self.hidden and int(obj.get("deleted", 0)):
            self.cutoff_deletes[(pool, bid)] = int(obj["header"]["revision"])

    # --- invariants ---

    def check(self, where=""):
        """Raises SoakFailure when an invariant broke."""
        if self.lbd is not None and not self.lbd.proc.alive() and not self.handed_over():
            self.scan_log()
            raise SoakFailure("lbd died (exit %s)%s%s" % (
                exit_code(self.lbd.proc), " during " + where if where else "",
                "" if self.lbd.gen == 1 else " (%s)" % self.lbd.label))
        self.scan_log()
        if self.sanitizer_seen:
            raise SoakFailure("sanitizer report in lbd's log: %s" % self.sanitizer_seen)
        self.check_retiring()
        if self.prober is not None and self.prober.violations:
            raise SoakFailure("upgrade: a new connection failed while lbd was being upgraded: %s"
                              % self.prober.violations[0])
        if self.probe is not None and self.probe.violations:
            raise SoakFailure(self.probe.violations[0])
        if self.clients is not None and self.clients.violations:
            r = self.clients.violations[0]
            if r.outcome == "harness_error":
                raise RuntimeError("client thread: %s" % r.detail)
            raise SoakFailure("client (%s, %s) started at %.1fs: %s %s"
                              % (r.pool, r.kind, r.t0 - self.t_start, r.outcome, r.detail))
        for e in getattr(self, "farm", None) and self.farm.errors[:1] or []:
            raise RuntimeError("soak backend loop: %s" % e)
        for e in self.wfarm and self.wfarm.errors[:1] or []:
            raise RuntimeError("soak backend loop (pool %s): %s" % (WIT, e))

    def handed_over(self):
        """True when the new lbd of an upgrade in progress is ready: the
        current one may exit before the soak switches to the new one."""
        new = self.pending_new
        return new is not None and READY_MARK in read_from(new.proc.log_path, new.log_start)

    def log_paths(self):
        """The log files of every lbd of the run (one lbd and those it
        started on SIGUSR2 share one)."""
        return list(collections.OrderedDict((x.proc.log_path, None) for x in self.lbds))

    def scan_log(self):
        for path in self.log_paths():
            offset = self.log_offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            cut = data.rfind(b"\n") + 1
            text = data[:cut].decode("utf-8", "replace")
            self.log_offsets[path] = offset + cut
            for line in text.splitlines():
                for mark in SANITIZER_MARKS:
                    if mark in line and not self.sanitizer_seen:
                        self.sanitizer_seen = "%s (%s)" % (line.strip()[:300],
                                                           os.path.basename(path))

    def pause(self, seconds):
        """Sleeps while checking the invariants."""
        end = now() + seconds
        while True:
            self.check()
            self.trickle()
            left = end - now()
            if left <= 0:
                return
            time.sleep(min(0.05, left))

    # --- start and stop ---

    def start(self):
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
        except (ValueError, OSError):
            pass
        self.etcd = lbtest.Etcd(self.h, side_port=True).start()
        self.farm = BackendFarm(self.h, N_SERVERS)
        for srv in self.farm.servers.values():
            lbtest.reserve_port(srv.port)
        # Most pools start with a sane policy (a known bound from the
        # start); the others, and pool "void", with nothing at all.
        for p in POOLS + (BULK,):
            pol = self.gen_policy(p, sane=True)
            if self.rng.random() < 0.6 or self.no_void:
                self.put(self.key_config(p), json.dumps(pol))
                self.history_add(p, pol)
                self.record("start: policy %s %s" % (p, json.dumps(pol, sort_keys=True)))
            else:
                self.record("start: no policy for %s" % p)
        env = {}
        if self.args.asan:
            # A bounded quarantine (ASan's default is 256 MB) keeps the RSS
            # check meaningful; 64 MB still holds what was freed in the last
            # half minute or more, so late use of a freed backend is caught.
            asan = os.environ.get("ASAN_OPTIONS") or ("detect_leaks=1:halt_on_error=1:"
                                                      "detect_stack_use_after_return=1")
            if "quarantine_size_mb" not in asan:
                asan += ":quarantine_size_mb=%d" % ASAN_QUARANTINE_MB
            env["ASAN_OPTIONS"] = asan
        if "UBSAN_OPTIONS" not in os.environ:
            env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
        if not self.no_upgrade_socket:
            lbtest.set_subreaper()
        if self.use_wit:
            self.wfarm = BackendFarm(self.h, 1)
            for srv in self.wfarm.servers.values():
                lbtest.reserve_port(srv.port)
            self.put(self.key_backend(WIT, "w0"), json.dumps({"addr": self.wfarm.addr("s0")}))
            self.put(self.key_config(WIT), json.dumps(self.wit_policy("1s")))
        self.state_file = self.h.path("lbd.state")
        self.lbd = SoakLbd(self.h, self.etcd.url,
                           ["--shutdown-grace", "%gs" % SHUTDOWN_GRACE_S, "--log-level",
                            self.args.log_level, "--state-file", self.state_file], env, "lbd",
                           sock_path=None if self.no_upgrade_socket else self.h.path("up.sock"),
                           pools=SERVED + ((WIT,) if self.use_wit else ()))
        self.lbds.append(self.lbd)
        self.lbd.start()
        self.baseline = self.lbd.baseline = self.wait_baseline()
        self.say("lbd pid %d ready; baseline fds=%d rss=%.1f MB"
                 % (self.lbd.proc.pid, self.baseline[0], self.baseline[1] / 1024.0))
        seeds = [self.rng.getrandbits(64) for _ in range(16)]
        self.probe = HealthzProbe(self.lbd.http_port, self.in_crash_window)
        self.probe.start()
        self.clients = ClientThreads(self, self.args.clients, seeds)

    def proc_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.lbd.proc.pid))

    def proc_rss_kb(self):
        with open("/proc/%d/status" % self.lbd.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def wait_baseline(self):
        samples = []
        for _ in range(10):
            samples.append((self.proc_fds(), self.proc_rss_kb()))
            time.sleep(0.1)
        return min(s[0] for s in samples), max(s[1] for s in samples)

    # --- policies ---

    def gen_policy(self, pool, sane=False, needed_retries=0):
        """A valid policy.  sane=True: checks on and quick, generous idle
        timeout, no cap: the kind a quiet phase can assert service under."""
        r = self.rng
        p = {}
        if sane or r.random() < 0.9:
            p["algorithm"] = r.choice(["wrr", "leastconn", "p2c", "maglev"])
        bulk = pool == BULK
        if sane or r.random() < 0.85:
            htype = r.choice(["tcp", "http"]) if sane else r.choice(["tcp", "tcp", "http", "none"])
            lo = 500 if bulk else 100
            interval = r.choice([lo, 200, 300, 500, 1000]) if not sane else r.choice([100, 200, 300, 500])
            interval = max(interval, lo)
            h = {"type": htype, "interval": dur(interval),
                 "timeout": dur(r.choice([x for x in (100, 200, 300, 500, 1000) if x <= interval])),
                 "rise": r.randint(1, 2 if sane else 4), "fall": r.randint(1, 3 if sane else 5)}
            if htype == "http" and r.random() < 0.5:
                h["path"] = r.choice(["/healthz", "/ready", "/h/%d" % r.randint(0, 99)])
            p["health"] = h
        if sane:
            p["connect_timeout"] = dur(r.choice([500, 1000, 2000]))
            p["idle_timeout"] = dur(r.choice([3000, 5000, 10000]))
            p["retries"] = min(7, max(needed_retries, r.randint(0, 3)))
            p["max_conns"] = r.choice([0, 0, 200])
        else:
            x = r.random()
            p["connect_timeout"] = dur(r.choice([200, 500, 1000, 2000])) if x < 0.9 else (
                "0" if x < 0.93 else r.choice(["5s", None]))
            x = r.random()
            p["idle_timeout"] = dur(r.choice([1000, 2000, 3000, 5000])) if x < 0.92 else (
                "0" if x < 0.94 else r.choice(["1h", None]))
            p["retries"] = r.choice([0, 1, 2, 2, 3, 4]) if r.random() < 0.95 else r.randint(5, 10)
            p["max_conns"] = r.choice([0, 0, 0, 1, 2, 5, 100])
            p = {k: v for k, v in p.items() if v is not None}
        if p.get("max_conns"):
            # at capacity, clients wait for a slot (or are closed at once: 0)
            p["queue_timeout"] = dur(r.choice([0, 0, 100, 500, 2000]))
        p["slow_start"] = dur(r.choice([0, 0, 500, 2000, 5000]))
        p["drain_timeout"] = dur(r.choice([0, 0, 500, 1000, 3000]))
        p["proxy_protocol"] = r.choice(["none", "none", "v1", "v2"])
        if r.random() < 0.8:
            p["panic_threshold"] = r.choice([0, 0, 25, 50, 100, r.randint(0, 100)])
        if r.random() < 0.1:
            p["unknown_field"] = {"ignored": True}
        return p

    @staticmethod
    def policy_figures(p):
        def secs(v, default):
            if v is None:
                return default
            if v == "0":
                return float("inf")
            if v.endswith("ms"):
                return float(v[:-2]) / 1000.0
            unit = {"s": 1, "m": 60, "h": 3600}[v[-1]]
            return float(v[:-1]) * unit
        # A client may wait queue_timeout for a slot before its attempts
        # start: counted with the idle timeout, which the bound adds once.
        queue = p.get("queue_timeout")
        queue = 0.0 if queue in (None, "0") else secs(queue, 0.0)
        return (secs(p.get("idle_timeout"), 3600.0) + queue, secs(p.get("connect_timeout"), 3.0),
                int(p.get("retries", 2)))

    def history_add(self, pool, pol, also_previous=False):
        if pool not in SERVED or pool == VOID:
            return
        idle, connect, retries = self.policy_figures(pol)
        if also_previous:
            # An invalid policy: lbd keeps the last good one or (with
            # clamping) takes this one; the bound covers both.
            last = self.history.last(pool)
            idle, connect = max(idle, last["idle"]), max(connect, last["connect"])
            retries = max(retries, last["retries"])
        self.history.add(pool, idle, connect, retries)

    def gen_bad_policy(self, pool):
        r = self.rng
        base = self.gen_policy(pool)
        # Keep the figures that bound clients present and valid: whatever
        # lbd does with the rest (refuse, clamp, default), they hold.
        base.setdefault("idle_timeout", "5s")
        base.setdefault("connect_timeout", "2s")
        base.setdefault("retries", 2)
        kind = r.choice(["algorithm", "htype", "interval", "timeout0", "rise", "fall", "maxconns",
                         "panic", "proxy", "notjson", "array", "string", "nested", "huge",
                         "slowstart", "pathspace"])
        h = dict(base.get("health") or {"type": "tcp"})
        if kind == "algorithm":
            base["algorithm"] = r.choice(["roundrobin", "", 7, None])
        elif kind == "htype":
            h["type"] = r.choice(["udp", "TCP", 1])
        elif kind == "interval":
            h["interval"] = r.choice(["abc", "10", "-1s", "1x", "", "99999999h"])
        elif kind == "timeout0":
            h["type"], h["timeout"] = "tcp", "0"
        elif kind == "rise":
            h["rise"] = r.choice([0, -1, "2", 1.5])
        elif kind == "fall":
            h["fall"] = r.choice([0, "x", 2.5])
        elif kind == "maxconns":
            base["max_conns"] = r.choice([-1, "10", 1.5])
        elif kind == "panic":
            base["panic_threshold"] = r.choice([-5, "50", 50.5])
        elif kind == "proxy":
            base["proxy_protocol"] = r.choice(["v3", "V1", 2])
        elif kind == "slowstart":
            base["slow_start"] = r.choice(["fast", "-1s", 5])
        elif kind == "pathspace":
            h["type"], h["path"] = "http", r.choice(["no-slash", "/a b", "/x\ny"])
        if kind in ("htype", "interval", "timeout0", "rise", "fall", "pathspace"):
            base["health"] = h
        if kind == "notjson":
            return kind, '{"algorithm": "wrr", ' + "x" * r.randint(0, 50)
        if kind == "array":
            return kind, json.dumps([base])
        if kind == "string":
            return kind, json.dumps("wrr")
        if kind == "nested":
            return kind, "[" * 5000 + "]" * 5000
        if kind == "huge":
            return kind, json.dumps(dict(base, padding="p" * r.randint(70 << 10, 200 << 10)))
        return kind, json.dumps(base)

    # --- backend values ---

    def backend_value(self, target, weight):
        v = {"addr": self.target_addr(target), "weight": weight}
        r = self.rng.random()
        if r < 0.2:
            v["zone"] = self.rng.choice(["a", "b", "eu-west-1a"])
        elif r < 0.3:
            v["meta"] = {"version": self.rng.randint(1, 9), "tags": ["x", "y"]}
        return json.dumps(v), (v["addr"], weight)

    def bad_backend_value(self):
        kind = self.rng.choice(["notjson", "empty", "noaddr", "addrtype", "noport", "badport",
                                "badip", "badhost", "array", "null", "huge", "space"])
        if kind == "notjson":
            val = '{"addr": "127.0.0.1:1'
        elif kind == "empty":
            val = ""
        elif kind == "noaddr":
            val = json.dumps({"weight": 10})
        elif kind == "addrtype":
            val = json.dumps({"addr": 8080})
        elif kind == "noport":
            val = json.dumps({"addr": "127.0.0.1"})
        elif kind == "badport":
            val = json.dumps({"addr": "127.0.0.1:99999"})
        elif kind == "badip":
            val = json.dumps({"addr": "300.1.2.3:80"})
        elif kind == "badhost":
            val = json.dumps({"addr": "bad_host!:80"})
        elif kind == "array":
            val = json.dumps([{"addr": "127.0.0.1:1"}])
        elif kind == "null":
            val = "null"
        elif kind == "space":
            val = json.dumps({"addr": " 127.0.0.1:80"})
        else:
            val = json.dumps({"addr": "127.0.0.1:1", "pad": "x" * self.rng.randint(70 << 10, 300 << 10)})
        return kind, val

    def key_model(self, pool, bid):
        return self.keys.setdefault((pool, bid), KeyModel())

    def model_put(self, pool, bid, existed, good, spec=None, target=None, weight=None, lease=None):
        k = self.key_model(pool, bid)
        self.tombstone_at_compaction.pop((pool, bid), None)
        if not existed:
            if k.last_good:
                k.stale.add(k.last_good)
            k.last_good = None
        k.present = True
        k.lease = lease
        if good:
            keep = set()
            if self.hidden:
                # lbd is cut off: it may never see this value (the history is
                # compacted before it is back), so a bad one after it leaves
                # lbd what it had before.
                keep = k.stale | ({k.last_good} if k.last_good else set())
            k.last_good = spec
            k.stale = keep
            k.current_bad = False
            k.target = target
            k.weight = weight
            k.goods = k.goods[-7:] + [(now(), spec)]
        else:
            k.current_bad = True

    def model_delete(self, pool, bid):
        k = self.key_model(pool, bid)
        if self.hidden and k.last_good:
            # lbd is cut off: after the compaction it re-lists and may never
            # hear of this delete; a bad value put here later leaves it the
            # last good one (which is what lbd promises).
            k.stale.add(k.last_good)
        elif not self.hidden:
            k.stale = set()
        k.present = False
        k.lease = None
        k.last_good = None
        k.current_bad = False

    def lease_for_rewrite(self, k):
        """The lease to put a key under again: the same long lease, or a
        fresh one for a lapsing lease (which may have lapsed by now)."""
        if not k.present or k.lease is None:
            return None, None
        if k.lease[0] == "long":
            return k.lease, k.lease[1]
        ttl = self.rng.randint(2, 5)
        lid = self.etcd.grant(ttl)
        self.lapsing.append((lid, now() + ttl))
        return ("lapse", lid, now() + ttl), lid

    # ------------------------------------------------------------------
    # Events

    def pick_event(self):
        kinds = [k for k in EVENT_WEIGHTS if k not in self.excluded]
        return self.rng.choices(kinds, weights=[EVENT_WEIGHTS[k] for k in kinds])[0]

    def run_event(self, kind):
        self.counts[kind] += 1
        getattr(self, "ev_" + kind.replace(".", "_"))()

    def pick_pool(self, unserved=0.1):
        return GHOST if self.rng.random() < unserved else self.rng.choice(POOLS)

    def pick_target(self):
        x = self.rng.random()
        if x < 0.8:
            return ("server", self.rng.choice(sorted(self.farm.servers)))
        if x < 0.9:
            return ("closed", self.rng.randrange(N_CLOSED))
        if x < 0.97:
            return ("dns", self.rng.choice(sorted(self.farm.servers)))
        return ("nohost",)

    def pick_weight(self):
        return self.rng.choice([100, 100, 50, 1, 1000, 0, self.rng.randint(0, 1000)])

    def ev_backend_put(self):
        pool, bid = self.pick_pool(), self.rng.choice(SLOTS)
        target, weight = self.pick_target(), self.pick_weight()
        x = self.rng.random()
        lease = None
        if x < 0.3:
            ttl = self.rng.randint(2, 5)
            lease_desc = "lapse:%ds" % ttl
        elif x < 0.5:
            lease_desc = "long"
        else:
            lease_desc = "none"
        val, spec = self.backend_value(target, weight)
        self.record("backend.put %s/%s -> %s w=%d lease=%s"
                    % (pool, bid, self.target_desc(target), weight, lease_desc))
        if lease_desc.startswith("lapse"):
            lid = self.etcd.grant(ttl)
            self.lapsing.append((lid, now() + ttl))
            lease = ("lapse", lid, now() + ttl)
            lease_id = lid
        elif lease_desc == "long":
            lid = self.etcd.grant(100000)
            self.long_leases.append(lid)
            lease = ("long", lid)
            lease_id = lid
        else:
            lease_id = None
        existed = self.put(self.key_backend(pool, bid), val, lease_id)
        self.model_put(pool, bid, existed, True, spec, target, weight, lease)

    def ev_backend_weight(self):
        pool, bid = self.pick_pool(), self.rng.choice(SLOTS)
        weight = self.pick_weight()
        k = self.key_model(pool, bid)
        self.record("backend.weight %s/%s w=%d" % (pool, bid, weight))
        if k.target is None or not k.present:
            return  # nothing of ours there: skipped (the choice is still made)
        lease, lid = self.lease_for_rewrite(k)
        val, spec = self.backend_value(k.target, weight)
        existed = self.put(self.key_backend(pool, bid), val, lid)
        self.model_put(pool, bid, existed, True, spec, k.target, weight, lease)

    def ev_backend_addr(self):
        pool, bid = self.pick_pool(), self.rng.choice(SLOTS)
        target = self.pick_target()
        k = self.key_model(pool, bid)
        self.record("backend.addr %s/%s -> %s" % (pool, bid, self.target_desc(target)))
        if k.target is None or not k.present:
            return
        lease, lid = self.lease_for_rewrite(k)
        val, spec = self.backend_value(target, k.weight)
        existed = self.put(self.key_backend(pool, bid), val, lid)
        self.model_put(pool, bid, existed, True, spec, target, k.weight, lease)

    def ev_backend_bad(self):
        pool, bid = self.pick_pool(), self.rng.choice(SLOTS)
        kind, val = self.bad_backend_value()
        self.record("backend.bad %s/%s kind=%s" % (pool, bid, kind))
        k = self.key_model(pool, bid)
        lease, lid = self.lease_for_rewrite(k)
        existed = self.put(self.key_backend(pool, bid), val, lid)
        self.model_put(pool, bid, existed, False, lease=lease)

    def ev_backend_delete(self):
        pool = self.pick_pool()
        bid = self.rng.choice(SLOTS + REG_IDS)
        self.record("backend.delete %s/%s" % (pool, bid))
        self.delete_backend(pool, bid)
        if bid in REG_IDS:
            return  # lbctl register puts it back
        self.model_delete(pool, bid)

    def ev_lease_revoke(self):
        if not self.long_leases:
            self.record("lease.revoke (none held)")
            return
        i = self.rng.randrange(len(self.long_leases))
        lid = self.long_leases.pop(i)
        self.record("lease.revoke long lease #%d" % i)
        try:
            self.etcd.revoke(lid)
        except lbtest.EtcdError:
            pass
        for (pool, bid), k in self.keys.items():
            if k.present and k.lease and k.lease[0] == "long" and k.lease[1] == lid:
                self.model_delete(pool, bid)

    def ev_pool_empty(self):
        pool = self.rng.choice(POOLS)
        self.record("pool.empty %s" % pool)
        for bid in SLOTS:
            self.delete_backend(pool, bid)
            self.model_delete(pool, bid)

    def ev_server_mode(self):
        sid = self.rng.choice(sorted(self.farm.servers))
        mode = self.rng.choices(["echo", "hang", "stop_reading", "reset", "blackhole", "refuse",
                                 "die"], weights=[30, 10, 10, 8, 6, 8, 10])[0]
        self.record("server.mode %s -> %s" % (sid, mode))
        self.farm.set_mode(sid, mode)

    def ev_policy_put(self):
        pool = self.rng.choice(WRITTEN)
        pol = self.gen_policy(pool)
        self.record("policy.put %s %s" % (pool, json.dumps(pol, sort_keys=True)))
        self.put(self.key_config(pool), json.dumps(pol))
        self.history_add(pool, pol)
        self.policy_bad.pop(pool, None)

    def ev_policy_bad(self):
        pool = self.rng.choice(WRITTEN)
        kind, val = self.gen_bad_policy(pool)
        self.record("policy.bad %s kind=%s" % (pool, kind))
        self.put(self.key_config(pool), val)
        figures = {}
        if kind not in ("notjson", "array", "string", "nested"):
            figures = json.loads(val)
        if figures:
            self.history_add(pool, figures, also_previous=True)
        # A new lbd may hold the last good one, or not: see model_new_process.
        self.policy_bad[pool] = figures

    def ev_policy_delete(self):
        pool = self.rng.choice(WRITTEN)
        self.record("policy.delete %s (lbd's defaults: idle 1h)" % pool)
        self.etcd.delete(self.key_config(pool))
        self.history_add(pool, {})
        self.policy_bad.pop(pool, None)

    def gen_override(self):
        o = {}
        r = self.rng
        if r.random() < 0.5:
            o["drain"] = r.random() < 0.6
        if r.random() < 0.5:
            o["weight"] = r.choice([0, 1, 50, 100, 1000])
        if r.random() < 0.5:
            o["health"] = r.choice(["auto", "up", "down"])
        return o

    def ev_override_put(self):
        pool, bid = self.pick_pool(), self.rng.choice(SLOTS)
        o = self.gen_override()
        self.record("override.put %s/%s %s" % (pool, bid, json.dumps(o, sort_keys=True)))
        self.put(self.key_override(pool, bid), json.dumps(o))
        m = self.overrides.setdefault((pool, bid), OverrideModel())
        m.last_good = parse_override(json.dumps(o))
        m.current_bad = False
        m.stale = False

    def ev_override_bad(self):
        pool, bid = self.pick_pool(), self.rng.choice(SLOTS)
        kind = self.rng.choice(["notjson", "array", "huge", "string"])
        val = {"notjson": "{drain: true", "array": "[true]", "string": '"drain"',
               "huge": json.dumps({"drain": True, "pad": "x" * (70 << 10)})}[kind]
        self.record("override.bad %s/%s kind=%s" % (pool, bid, kind))
        existed = self.put(self.key_override(pool, bid), val)
        m = self.overrides.setdefault((pool, bid), OverrideModel())
        if not existed and m.last_good is not None:
            m.stale = True
            m.last_good = None
        m.current_bad = True

    def ev_override_delete(self):
        pool, bid = self.pick_pool(), self.rng.choice(SLOTS)
        self.record("override.delete %s/%s" % (pool, bid))
        self.etcd.delete(self.key_override(pool, bid))
        self.overrides[(pool, bid)] = OverrideModel()

    # lbctl

    def ctl_target(self):
        x = self.rng.random()
        if x < 0.85:
            pool = self.rng.choice(POOLS)
        elif x < 0.91:
            pool = BULK
        elif x < 0.94:
            pool = GHOST
        elif x < 0.97:
            pool = VOID
        else:
            pool = "nopool"
        x = self.rng.random()
        if pool == BULK:
            bid = "n%d" % self.rng.randrange(50)
        elif x < 0.6:
            # mostly ids the soak registered (they may have lapsed since)
            live = [b for b in SLOTS if self.keys.get((pool, b)) and self.keys[(pool, b)].present]
            live += [r for (p, r) in sorted(self.registrars) if p == pool]
            bid = self.rng.choice(live) if live else self.rng.choice(SLOTS)
        elif x < 0.92:
            bid = self.rng.choice(SLOTS + REG_IDS)
        else:
            bid = "gone-%d" % self.rng.randrange(9)
        scope = "local" if self.rng.random() < 0.4 else "cluster"
        return pool, bid, scope

    def lbctl(self, *args):
        """lbctl against lbd.  Its own deadline is 10 s per call (20 s for
        a drain wait); one that does not return in 40 s means the admin API
        stalled."""
        env = {"ASAN_OPTIONS": "detect_leaks=0"}
        try:
            return lbtest.lbctl(*args, admin=self.lbd.admin, timeout=40, env=env)
        except subprocess.TimeoutExpired:
            self.check("lbctl %s" % " ".join(args))
            raise SoakFailure("lbctl %s did not return within 40 s (its own deadline is 10 s): "
                              "the admin API stalled" % " ".join(args))

    def ctl_change(self, pool, bid, scope, field, value, args):
        if scope == "local":
            args = list(args) + ["--local"]
        rc, out, err = self.lbctl(*args)
        if rc != 0 and "--wait" in args and ("stays drained" in err or "still has" in err):
            # The wait ran out (lbctl: "... stays drained"), the drain itself is in force.
            self.counts["ctl.drain_wait_timed_out"] += 1
            rc = 0
        if rc != 0:
            e = err.lower()
            why = ("not_found" if "not found" in e else
                   "usage" if rc == 2 else
                   "unavailable" if "unavailable" in e or "etcd" in e else
                   "unreachable" if "connect" in e or "timed out" in e else "other")
            self.counts["ctl.fail.%s" % why] += 1
            return rc
        self.counts["ctl.ok"] += 1
        key = (pool, bid)
        if scope == "local":
            lo = self.local.setdefault(key, LocalOverride())
            if field == "drain":
                lo.has_drain, lo.drain = True, value
            elif field == "weight":
                lo.has_weight, lo.clear_weight, lo.weight = True, False, value
            elif field == "clear_weight":
                lo.has_weight, lo.clear_weight = False, True
            elif field == "health":
                lo.has_health, lo.health = True, value
        else:
            lo = self.local.get(key)
            if lo is not None:
                if field == "drain":
                    lo.has_drain = False
                elif field in ("weight", "clear_weight"):
                    lo.has_weight = lo.clear_weight = False
                elif field == "health":
                    lo.has_health = False
            m = self.overrides.setdefault(key, OverrideModel())
            raw = self.etcd.get(self.key_override(pool, bid))
            m.last_good = parse_override(raw) if raw is not None else None
            m.current_bad = False
            m.stale = False
        return rc

    def ev_ctl_drain(self):
        pool, bid, scope = self.ctl_target()
        self.record("ctl.drain %s/%s %s" % (pool, bid, scope))
        self.ctl_change(pool, bid, scope, "drain", True, ["drain", pool, bid])

    def ev_ctl_drain_wait(self):
        pool, bid, scope = self.ctl_target()
        self.record("ctl.drain_wait %s/%s %s" % (pool, bid, scope))
        self.ctl_change(pool, bid, scope, "drain", True,
                        ["drain", pool, bid, "--wait", "--timeout", "1s"])

    def ev_ctl_undrain(self):
        pool, bid, scope = self.ctl_target()
        self.record("ctl.undrain %s/%s %s" % (pool, bid, scope))
        self.ctl_change(pool, bid, scope, "drain", False, ["undrain", pool, bid])

    def ev_ctl_weight(self):
        pool, bid, scope = self.ctl_target()
        w = self.rng.choice([0, 1, 10, 100, 500, 1000, 1001, -1])
        self.record("ctl.weight %s/%s %d %s" % (pool, bid, w, scope))
        self.ctl_change(pool, bid, scope, "weight", w, ["weight", pool, bid, str(w)])

    def ev_ctl_weight_clear(self):
        pool, bid, scope = self.ctl_target()
        self.record("ctl.weight_clear %s/%s %s" % (pool, bid, scope))
        self.ctl_change(pool, bid, scope, "clear_weight", None, ["weight", pool, bid, "--clear"])

    def ev_ctl_health(self):
        pool, bid, scope = self.ctl_target()
        h = self.rng.choice(["up", "down", "auto", "auto", "sideways"])
        self.record("ctl.health %s/%s %s %s" % (pool, bid, h, scope))
        self.ctl_change(pool, bid, scope, "health", h, ["health", pool, bid, h])

    # registrars

    def ev_reg_start(self):
        pool, rid = self.rng.choice(POOLS), self.rng.choice(REG_IDS)
        target = ("server", self.rng.choice(sorted(self.farm.servers)))
        weight = self.rng.choice([None, 10, 100])
        self.record("reg.start %s/%s -> %s w=%s" % (pool, rid, self.target_desc(target), weight))
        if (pool, rid) in self.registrars:
            return
        self.registrars[(pool, rid)] = (lbtest.Registrar(
            self.h, self.etcd, PREFIX, pool, rid, self.target_addr(target), ttl="2s",
            weight=weight), target)

    def _reg_pick(self):
        regs = sorted(self.registrars)
        return regs[self.rng.randrange(len(regs))] if regs else None

    def ev_reg_stop(self):
        key = self._reg_pick()
        self.record("reg.stop %s" % (key and "%s/%s" % key))
        if key:
            reg, _ = self.registrars.pop(key)
            reg.proc.stop(timeout=10)

    def ev_reg_kill(self):
        key = self._reg_pick()
        self.record("reg.kill %s (lease lapses)" % (key and "%s/%s" % key))
        if key:
            reg, _ = self.registrars.pop(key)
            reg.proc.kill()
            self.reg_killed[key[0]] = now()  # its key lapses in 2 s (see witness_movable)

    # junk keys

    def ev_key_overlong(self):
        pool = self.rng.choice(POOLS + (GHOST,))
        n = self.rng.choice([128, 300, 4000, 5000, 20000])
        where = self.rng.choice(["backends", "overrides", "pool"])
        if where == "pool":
            key = "%spools/%s/backends/x" % (PREFIX, "p" * n)
        else:
            key = "%spools/%s/%s/%s" % (PREFIX, pool, where, "a" * n)
        self.record("key.overlong %s %s len=%d" % (pool, where, n))
        self.put(key, json.dumps({"addr": "127.0.0.1:1"}))
        self.junk.add(key.encode())

    def ev_key_malformed(self):
        pool = self.rng.choice(POOLS + (GHOST,))
        base = "%spools/%s/" % (PREFIX, pool)
        kind = self.rng.choice(["empty", "deep", "dot", "dotdot", "space", "bytes", "kind",
                                "nopool", "config/x", "ctrl"])
        key = {"empty": base.encode() + b"backends/",
               "deep": base.encode() + b"backends/a/b",
               "dot": base.encode() + b"backends/.",
               "dotdot": base.encode() + b"backends/..",
               "space": base.encode() + b"backends/a b",
               "bytes": base.encode() + b"backends/\xff\xfe\x00x",
               "kind": base.encode() + b"weird/b1",
               "nopool": ("%spools//backends/x" % PREFIX).encode(),
               "config/x": base.encode() + b"config/x",
               "ctrl": base.encode() + b"backends/a\nb"}[kind]
        self.record("key.malformed %s %s" % (pool, kind))
        self.put(key, json.dumps({"addr": self.farm.addr("s0")}))
        self.junk.add(key)

    def ev_value_huge(self):
        pool = self.rng.choice(POOLS + (GHOST,))
        size = self.rng.choice([70 << 10, 300 << 10, 1000 << 10])
        where = self.rng.choice(["junk", "slot"])
        self.record("value.huge %s %s %dKB" % (pool, where, size >> 10))
        val = json.dumps({"addr": "127.0.0.1:1", "pad": "x" * size})
        if where == "junk":
            key = "%spools/%s/backends/huge%d" % (PREFIX, pool, self.rng.randrange(3))
            self.put(key, val)
            self.junk.add(key.encode())
        else:
            bid = self.rng.choice(SLOTS)
            k = self.key_model(pool, bid)
            lease, lid = self.lease_for_rewrite(k)
            existed = self.put(self.key_backend(pool, bid), val, lid)
            self.model_put(pool, bid, existed, False, lease=lease)

    def ev_junk_clear(self):
        self.record("junk.clear (%d keys)" % len(self.junk))
        for key in sorted(self.junk):
            self.etcd._post("/v3/kv/deleterange", {"key": base64.b64encode(key).decode()})
        self.junk.clear()

    # etcd

    def ev_etcd_restart(self):
        self.record("etcd.restart (SIGTERM, start)")
        self.etcd.restart()

    def ev_etcd_kill(self):
        self.record("etcd.kill (SIGKILL, start)")
        self.etcd.kill()
        self.etcd.restart()

    def compact(self):
        """Compacts at the current revision; None when that is done already."""
        try:
            return self.etcd.compact()
        except lbtest.EtcdError as exc:
            if "compacted" not in str(exc):
                raise
            self.counts["etcd.compact_again"] += 1
            return None

    def ev_etcd_compact(self):
        self.record("etcd.compact")
        self.compact()

    def ev_etcd_cutoff(self):
        n = self.rng.randint(1, 4)
        self.record("etcd.cutoff: lbd cut off, %d changes, compaction, back" % n)
        self.history.cut_off(True)
        self.hidden = True
        try:
            self.etcd.hide()
            for _ in range(n):
                kind = self.rng.choice(["backend.put", "backend.delete", "backend.weight",
                                        "backend.bad", "policy.put", "override.put",
                                        "pool.empty"])
                self.counts[kind] += 1
                try:
                    getattr(self, "ev_" + kind.replace(".", "_"))()
                except lbtest.EtcdError as exc:
                    self.counts["etcd.error"] += 1
                    self.say("etcd refused %s while lbd was cut off: %s" % (kind, str(exc)[:200]))
            rev = self.compact()
            for key, drev in self.cutoff_deletes.items():
                if drev == rev:
                    self.tombstone_at_compaction[key] = rev
            self.cutoff_deletes = {}
        finally:
            if self.etcd.hidden:
                self.etcd.unhide()
            self.hidden = False
            self.history.cut_off(False)
        # Back: lbd re-lists (the revisions it missed are compacted).  Until it
        # has, a value put and replaced meanwhile may never reach it, so a bad
        # one after it would leave lbd an older last good value than the model
        # knows: the event ends once lbd has caught up.
        if not self.wait_lbd_synced(timeout=lbtest.scaled(15.0)):
            self.counts["etcd.cutoff_not_caught_up"] += 1

    # lbd stalled: a pod throttled at its limits.cpu, a paused VM, a page-in storm

    def ev_lbd_stall(self):
        """Every thread of the current lbd stopped for up to 0.8 s (below /healthz's 1 s
        bound): its timers (health checks, connect and idle deadlines, etcd's watch) all
        come due at once, and what queued meanwhile arrives in one accept run."""
        d = round(self.rng.uniform(0.1, 0.8), 2)
        self.record("lbd.stall %.2fs (SIGSTOP, then SIGCONT)" % d)
        with self.lbd.proc.stopped():
            time.sleep(d)

    def in_crash_window(self, t0, t1):
        """True when [t0, t1] meets a time lbd was down after a crash."""
        return any(t1 >= a and (b is None or t0 <= b) for a, b in list(self.crash_windows))

    def ev_lbd_crash(self):
        """lbd killed -9 (a crash, the OOM killer) and started again with the same
        flags by its supervisor.  Half the time lbd is cut off from etcd when it
        dies and until it serves again: the new one must serve at once from its
        --state-file (what it knew a second before the crash), then catch up
        with etcd.  Local overrides and the checks' findings die with it."""
        while self.retiring or self.pending_new is not None:
            self.pause(0.05)  # an upgrade finishing: its old lbd exits first
        if self.wait_lbd_synced():
            # lbd has applied a listing: its state file follows within a second.
            deadline = now() + lbtest.scaled(3.0)
            while not os.path.exists(self.state_file):
                if now() > deadline:
                    raise SoakFailure("lbd.crash: %s watches etcd but wrote no state file at %s "
                                      "within %.0f s" % (self.lbd.label, self.state_file,
                                                         lbtest.scaled(3.0)))
                self.pause(0.05)
        had_file = os.path.exists(self.state_file)
        cut = had_file and self.rng.random() < 0.5
        self.record("lbd.crash: kill -9, started again with the same flags%s"
                    % (", while cut off from etcd" if cut else ""))
        old = self.lbd
        if cut:
            self.history.cut_off(True)
            self.hidden = True
            self.etcd.hide()
        window = [now(), None]
        self.crash_windows.append(window)
        try:
            old.proc.kill()
            new = SoakLbd(self.h, old.etcd_url, old.extra_args, old.env,
                          "lbd-gen%d" % (len(self.lbds) + 1), old.sock_path, old.workers,
                          old.version, like=old, gen=len(self.lbds) + 1, pools=old.pool_names)
            self.lbds.append(new)
            new.start(timeout=lbtest.scaled(30.0))
            window[1] = now()
            text = new.log_text()
            if had_file and STATE_FILE_MARK not in text:
                raise SoakFailure("lbd.crash: the new %s did not start from its state file %s, "
                                  "which existed; its log:\n    %s"
                                  % (new.label, self.state_file,
                                     "\n    ".join(text.splitlines()[-20:])))
            self.counts["lbd.crash_from_state_file" if STATE_FILE_MARK in text
                        else "lbd.crash_listed_etcd"] += 1
            if cut:
                self.counts["lbd.crash_cut_off_from_etcd"] += 1
            self.lbd = new
            self.model_new_process(keep_local=False, from_view=False)
            self.baseline = new.baseline = self.measure_baseline(new)
        finally:
            if window[1] is None:
                window[1] = now()
            if cut:
                self.etcd.unhide()
                self.hidden = False
                self.history.cut_off(False)

    def ev_upgrade_old_crash(self):
        """A new lbd takes over and the running one is killed -9 in the middle:
        stopped (SIGSTOP) once the new one greeted it, once it took the listeners over, or 0-20 ms
        after the new one is ready (its sessions moving).  The new lbd serves on
        either way: through the hand-over when it holds the listeners (then no
        connect may be refused: the sockets are its own too), or, when the old
        one died before it sent them, starting on its own (a connect refused
        meanwhile counts as refused_crashed).  The sessions still in the old
        process die with it; its --local overrides live on only when they came
        over with the listeners."""
        workers = self.rng.choice([1, 2])
        stage = self.rng.choice(["greeted", "listeners", "ready", "ready"])
        delay = self.rng.uniform(0.0, 0.02)
        self.record("upgrade.old_crash a new lbd, --workers %d, takes over; the running one is %s"
                    % (workers, {
                        "greeted": "stopped, then killed -9 once the new one greeted it",
                        "listeners": "killed -9 once the new one took the listeners over",
                        "ready": "killed -9 %.0f ms after the new one is ready" % (delay * 1000)
                    }[stage]))
        while self.retiring or self.pending_new is not None:
            self.pause(0.05)  # an upgrade finishing: its old lbd exits first
        old = self.lbd
        mark = {"greeted": GREETED_MARK, "listeners": TAKEOVER_MARK, "ready": READY_MARK}[stage]
        window = [now(), None]
        self.crash_windows.append(window)
        try:
            if stage == "greeted":
                # Stopped, the old one takes the new one's connection (the kernel does)
                # and answers nothing: killed then, it dies before it sent a listener.
                os.kill(old.proc.pid, signal.SIGSTOP)
            new = old.successor(len(self.lbds) + 1, workers, old.version).spawn()
            new.log_start = 0
            self.lbds.append(new)
            self.old_crash_wait(new, mark, "logged %r" % mark)
            if stage == "ready":
                time.sleep(delay)
            old.proc.kill()
            self.old_crash_wait(new, None, "served (/readyz 200) after the old one died")
        finally:
            window[1] = now()
        text = read_from(new.proc.log_path, 0)
        took = TAKEOVER_MARK in text
        if not took and OLD_DIED_MARK not in text:
            raise SoakFailure("upgrade.old_crash: the new %s neither took the listeners over nor "
                              "logged %r; its log:\n    %s" % (new.label, OLD_DIED_MARK,
                                                              "\n    ".join(text.splitlines()[-30:])))
        if stage != "greeted" and not took:
            raise SoakFailure("upgrade.old_crash: the new %s logged %r before the kill, then "
                              "not %r" % (new.label, mark, TAKEOVER_MARK))
        self.counts["upgrade.old_crash_%s" % ("after_takeover" if took else "started_alone")] += 1
        if took:
            # It held the listeners all along: nothing may have been refused.
            self.crash_windows.remove(window)
            refused = [r for r in list(self.crash_refusals)
                       if r[1] >= window[0] and r[0] <= window[1]]
            if refused:
                raise SoakFailure("upgrade.old_crash: %d connects refused while the new %s held "
                                  "the listeners (the old one killed -9 %s); the first %.3f s "
                                  "into the event" % (len(refused), new.label, stage,
                                                      refused[0][1] - window[0]))
        self.lbd = new
        same = took and new.version == old.version
        self.model_new_process(keep_local=same, from_view=same)
        self.baseline = new.baseline = self.measure_baseline(new)

    def old_crash_wait(self, new, mark, what):
        """Until the new lbd's log holds mark (None: until it serves, /readyz 200)."""
        deadline = now() + lbtest.scaled(30.0)
        while True:
            if mark is not None and mark in read_from(new.proc.log_path, 0):
                return
            try:
                if mark is None and new.ready():
                    return
            except OSError:
                pass  # started on its own and not listening yet
            if not new.proc.alive():
                self.scan_log()
                raise SoakFailure("upgrade.old_crash: the new %s exited with %s before it %s; "
                                  "its log:\n%s" % (new.label, exit_code(new.proc), what,
                                                   new.proc.log_tail(30)))
            if now() > deadline:
                raise SoakFailure("upgrade.old_crash: the new %s has not %s within %.0f s; its "
                                  "log:\n%s" % (new.label, what, lbtest.scaled(30.0),
                                                new.proc.log_tail(30)))
            time.sleep(0.001 if mark else 0.01)

    # abuse of the admin and probe ports

    def abuse_conn(self, port_kind):
        held = self.abuse[port_kind]
        n = self.rng.randint(1, 40)
        style = self.rng.choice(["idle", "halfopen", "partial", "trickle"])
        src = self.rng.randint(2, 40)
        self.record("abuse.%s %d x %s from 127.0.0.%d" % (port_kind, n, style, src))
        port = self.lbd.admin_port if port_kind == "admin" else self.lbd.http_port
        for _ in range(n):
            if len(held) >= ABUSE_MAX:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.%d" % src, 0))
                s.settimeout(2)
                s.connect(("127.0.0.1", port))
                s.setblocking(False)
                if style == "halfopen":
                    s.shutdown(socket.SHUT_WR)
                elif style in ("partial", "trickle"):
                    if port_kind == "admin":
                        s.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x06\x04\x00"
                               if self.rng.random() < 0.5 else b"PRI * HTTP/2.0\r\n")
                    else:
                        s.send(b"GET /healthz HTTP/1.1\r\nHost: soak\r\n")
            except OSError:
                s.close()
                self.counts["abuse.connect_failed"] += 1
                continue
            held.append([s, style, now() + 2.0])

    def ev_abuse_admin(self):
        self.abuse_conn("admin")

    def ev_abuse_http(self):
        self.abuse_conn("http")

    def ev_abuse_close(self):
        which = self.rng.choice(["admin", "http"])
        held = self.abuse[which]
        k = self.rng.randint(0, 15)
        self.record("abuse.close %s %d oldest" % (which, k))
        for s, _, _ in held[:k]:
            s.close()
        del held[:k]

    def trickle(self):
        """A header line every 2 s on the trickling probe-port connections,
        a PING-sized nothing on the admin ones."""
        t = now()
        for which, held in self.abuse.items():
            for item in held:
                s, style, nxt = item
                if style != "trickle" or t < nxt:
                    continue
                item[2] = t + 2.0
                try:
                    s.send(b"X-Soak: %d\r\n" % int(t) if which == "http" else b"\x00")
                except OSError:
                    item[1] = "dead"

    # bulk

    def ev_bulk_burst(self):
        n = self.rng.choice([50, 200, 500] + ([1000, 2000] if not self.args.asan else [1000]))
        live = self.rng.random()
        self.record("bulk.burst %d backends (%.0f%% to live servers)" % (n, live * 100))
        items = {}
        for i in range(n):
            bid = "n%d" % i
            target = (("server", "s%d" % self.rng.randrange(N_SERVERS)) if self.rng.random() < live
                      else ("closed", self.rng.randrange(N_CLOSED)))
            addr = self.target_addr(target)
            items[self.key_backend(BULK, bid)] = json.dumps({"addr": addr, "weight": 100})
            k = self.key_model(BULK, bid)
            k.present, k.lease, k.target, k.weight = True, None, target, 100
            k.last_good, k.stale, k.current_bad = (addr, 100), set(), False
            self.bulk_ids.add(bid)
        self.etcd.put_many(items)

    def ev_bulk_clear(self):
        self.record("bulk.clear (%d)" % len(self.bulk_ids))
        self.etcd.delete_prefix("%spools/%s/backends/" % (PREFIX, BULK))
        for bid in self.bulk_ids:
            self.model_delete(BULK, bid)
        self.bulk_ids.clear()

    def ev_bulk_policy(self):
        pol = self.gen_policy(BULK)
        self.record("bulk.policy %s" % json.dumps(pol, sort_keys=True))
        self.put(self.key_config(BULK), json.dumps(pol))
        self.history_add(BULK, pol)
        self.policy_bad.pop(BULK, None)

    # upgrades (docs/upgrade.md)

    def witness_plan(self):
        """The pools and seeds of the witness connections, and a backend key
        for each of their pools the soak knows no live backend in (so that
        the witnesses have something to go through).  Chosen from the state
        the soak made, never from timing."""
        n = self.rng.randint(2, 4)
        specs = [(self.rng.choice(POOLS), self.rng.getrandbits(32)) for _ in range(n)]
        puts = []
        for pool in sorted({p for p, _ in specs}):
            if self.served_precondition(pool):
                continue
            echo = [sid for sid in sorted(self.farm.servers) if self.farm.mode(sid) == "echo"]
            if not echo:
                continue
            sid = self.rng.choice(echo)
            free = [b for b in SLOTS if not (self.keys.get((pool, b)) and
                                             self.keys[(pool, b)].present)]
            puts.append((pool, free[0] if free else self.rng.choice(SLOTS), sid))
        desc = "%d witnesses (%s)" % (n, ",".join(p for p, _ in specs))
        if puts:
            desc += " + backend %s" % ",".join("%s/%s->%s" % x for x in puts)
        silent = []
        connect = None
        if self.use_wit:
            silent = [self.rng.getrandbits(32) for _ in range(self.rng.randint(1, 2))]
            connect = self.rng.choice(["500ms", "1s", "2s", "5s", "0", None])
            desc += "; %d silent via %s (connect_timeout %s)" % (
                len(silent), WIT, connect or "unset: lbd's 3s")
        return {"specs": specs, "puts": puts, "silent": silent, "wit_connect": connect}, desc

    @staticmethod
    def wit_policy(connect):
        p = {"health": {"type": "none"}, "idle_timeout": "10s", "retries": 0, "max_conns": 0}
        if connect is not None:
            p["connect_timeout"] = connect
        return p

    def witness_puts(self, plan):
        for pool, bid, sid in plan["puts"]:
            target = ("server", sid)
            val, spec = self.backend_value(target, 100)
            existed = self.put(self.key_backend(pool, bid), val)
            self.model_put(pool, bid, existed, True, spec, target, 100, None)
        if plan["silent"]:
            self.put(self.key_config(WIT), json.dumps(self.wit_policy(plan["wit_connect"])))

    def ev_upgrade_start(self):
        workers = self.rng.choice([1, 2])
        plan, wdesc = self.witness_plan()
        self.record("upgrade.start a new lbd with the same flags, --workers %d; %s"
                    % (workers, wdesc))
        self.witness_puts(plan)
        self.upgrade("upgrade.start", workers, plan)

    def ev_upgrade_usr2(self):
        plan, wdesc = self.witness_plan()
        self.record("upgrade.usr2 SIGUSR2 to lbd (it re-executes itself); %s" % wdesc)
        self.witness_puts(plan)
        self.upgrade("upgrade.usr2", None, plan)

    def ev_upgrade_incompatible(self):
        workers = self.rng.choice([1, 2])
        plan, wdesc = self.witness_plan()
        self.record("upgrade.incompatible a new lbd of session version %s, --workers %d; %s"
                    % ("99" if not self.lbd.version else "(the binary's own, back from 99)",
                       workers, wdesc))
        self.witness_puts(plan)
        self.upgrade("upgrade.incompatible", workers, plan)

    def ev_upgrade_abort(self):
        workers = self.rng.choice([1, 2])
        how = self.rng.choice(["takeover", "takeover", "early"])
        delay = self.rng.uniform(0.0, 0.03)
        plan, wdesc = self.witness_plan()
        self.record("upgrade.abort a new lbd, --workers %d, killed -9 %s; %s"
                    % (workers, "once it took the listeners over" if how == "takeover"
                       else "%.0f ms after its start" % (delay * 1000), wdesc))
        self.witness_puts(plan)
        self.upgrade("upgrade.abort", workers, plan, abort=(how, delay))

    def wait_lbd_synced(self, timeout=5.0):
        """True once lbd watches etcd and has applied every revision etcd has now."""
        try:
            rev = self.etcd.revision()
        except (lbtest.EtcdError, OSError):
            return False
        deadline = now() + timeout
        while True:
            try:
                samples = self.lbd.metrics()
                state = [lab.get("state") for n, lab, v in samples
                         if n == "lbd_etcd_watch_state" and v == 1]
                applied = [v for n, _, v in samples if n == "lbd_etcd_revision"]
                if state == ["watching"] and applied and applied[0] >= rev:
                    return True
            except (AssertionError, OSError, ValueError):
                pass
            if now() > deadline:
                return False
            self.pause(0.05)

    def open_witness(self, pool, rng, guarded):
        nonce = "%016x" % rng.getrandbits(64)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.5)
        line = b""
        try:
            s.connect(("127.0.0.1", self.lbd.pool_port(pool)))
            s.sendall(("SOAK %s\n" % nonce).encode())
            while not line.endswith(b"\n") and len(line) < 256:
                chunk = s.recv(1)
                if not chunk:
                    break
                line += chunk
        except OSError:
            s.close()
            return None
        words = line.decode("ascii", "replace").split()
        if len(words) != 2 or words[1] != nonce or words[0] not in self.farm.servers:
            s.close()
            return None
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Witness(pool, s, words[0], rng, guarded, self.witness_movable(pool, words[0]))

    def witness_movable(self, pool, sid):
        """True when a new lbd surely has the backend a connection to server
        sid in pool goes to: every key of the pool at that server's port is
        certain (no lapsing lease) with a last good value lbd surely holds (a
        bad value since keeps it, and the view handed over carries it), and no
        registration of the pool may be lapsing (killed lately).  A session
        to a backend the new lbd lacks stays in the old one."""
        port = str(self.farm.servers[sid].port)
        for (p, _), k in self.keys.items():
            if p != pool:
                continue
            addrs = {a for a, _ in k.stale} | ({k.last_good[0]} if k.last_good else set())
            if any(a.rsplit(":", 1)[-1] == port for a in addrs):
                if not (k.certain() and k.last_good and not k.stale):
                    return False
        return now() - self.reg_killed.get(pool, -1e9) > 10.0

    def check_moved(self, witnesses, old, new, since):
        """Each witness a new lbd of the same session version has the backend
        of is held by the new lbd only (its socket in /proc/PID/fd)."""
        socks = lbtest.tcp_sockets()
        for w in witnesses:
            if w.error or not w.guarded or not w.movable:
                continue
            port = new.pool_port(w.pool)
            inodes = {ino for ino, (st, lp, rp) in socks.items() if lp == port and rp == w.port}
            owners = lbtest.pids_holding(inodes, [old.proc.pid, new.proc.pid])
            if old.proc.pid in owners and old.proc.alive():
                raise SoakFailure(
                    "upgrade: the %s (client port %d) is still held by the old %s %.1f s after "
                    "the new one was ready; of the same session version, with its backend in "
                    "both, exchanging a few bytes every %.1f s, it must have moved at once "
                    "(held by %s)" % (w.desc(), w.port, old.label, now() - since,
                                      WITNESS_PERIOD, owners))
            if new.proc.pid in owners:
                self.counts["upgrade.witness_moved"] += 1

    def open_witnesses(self, specs, guarded, thread):
        """Connections through lbd, each greeted by an echo server (open
        connections keep the mode they were accepted in, and no server dies
        during the event), handed to the witness thread at once.  guarded:
        lbd had applied all of etcd, so none goes to a backend it is about
        to drain; then nothing but lbd may end one before the event does.
        At most 3 tries each, 6 s in all."""
        out = []
        budget = now() + 6.0
        for pool, seed in specs:
            rng = random.Random(seed)
            w = None
            for _ in range(3):
                if now() > budget:
                    break
                w = self.open_witness(pool, rng, guarded)
                if w is not None:
                    break
                self.pause(0.1)
            if w is None:
                self.counts["upgrade.witness_not_served"] += 1
            else:
                thread.add(w)
                out.append(w)
        return out

    def finish_witnesses(self, thread, witnesses, what, t0=None, t_ready=None):
        """One last exchange on each witness, then close them all; a guarded
        one that broke fails the run."""
        thread.stop()
        for w in witnesses:
            if w.error:
                continue
            w.sock.setblocking(True)
            want = bytes(w.expect) + b"last\n"
            got = witness_exchange(w, b"last\n", len(want), "at the last exchange")
            if got is not None and got != want:
                w.fail("echo corrupted at the last exchange")
        for w in witnesses:
            try:
                w.sock.close()
            except OSError:
                pass
        broken = [w for w in witnesses if w.error]
        self.counts["upgrade.witness_kept_open"] += len(witnesses) - len(broken)
        self.counts["upgrade.witness_broken_unguarded"] += sum(1 for w in broken
                                                               if not w.guarded)
        guarded = [w for w in broken if w.guarded]
        if guarded:
            self.check(what)
            raise SoakFailure("upgrade: %d of %d connections established before %s were not "
                              "kept: %s" % (len(guarded), len(witnesses), what, "; ".join(
                                  "%s: %s, %s" % (w.desc(), w.error, w.timeline(t0, t_ready))
                                  for w in guarded)))

    def upgrade(self, kind, workers, plan, abort=None):
        """One upgrade of lbd (or an aborted one) with witnesses held across
        it and a prober of new connections running all the way."""
        old = self.lbd
        while self.retiring and isinstance(old.proc, lbtest.ForeignProc):
            # Its parent must be gone first: then its exit code is the soak's to read.
            self.pause(0.05)
        synced = self.wait_lbd_synced()
        if not synced:
            self.counts["upgrade.lbd_not_synced"] += 1
        t0 = now()
        wthread = WitnessThread(lbtest.scaled(5.0))
        wthread.start()
        witnesses = self.open_witnesses(plan["specs"], synced, wthread)
        silent = self.open_silent(plan["silent"], synced)
        prober = ConnectProber(old.pool_port(VOID), old.http_port, old.admin_port,
                               lbtest.scaled(5.0), allow_http_drop=abort is not None)
        self.prober = prober
        prober.start()
        info = {"event": self.index, "kind": kind.split(".", 1)[1], "old": old.label,
                "witnesses": len(witnesses), "silent": len(silent),
                "old_offset": file_size(old.proc.log_path)}
        self.upgrade_log.append(info)
        new = t_ready = None
        moves = hook99 = False
        try:
            new = self.pending_new = self.upgrade_launch(kind, old, workers, info)
            if new is not None and abort is not None:
                if self.abort_kill(new, old, abort, info):
                    self.pause(0.5)  # the old lbd serves on: witnesses and prober go on
                    new = None
            if new is not None:
                self.wait_ready(new, info)
                t_ready = now()
                moves = new.version == old.version
                # LBD_TEST_HANDOVER_VERSION=99 on both sides: HELLO agrees, yet
                # every SESSION carries the binary's real version and is refused.
                hook99 = moves and new.version != ""
                margin = lbtest.scaled(5.0) * (2 if self.args.asan else 1)
                info["t_ready_wall"] = time.time()
                self.retiring.append({"lbd": old, "moves": moves, "t_ready": t_ready,
                                      "deadline": t_ready + SHUTDOWN_GRACE_S + margin,
                                      "info": info})
                info["new"] = new.label
                info["sessions"] = ("move" if moves and not hook99 else
                                    "refused (99 on both sides)" if moves else
                                    "stay (listeners only)")
                self.lbd = new
                self.pending_new = None
                self.model_new_process(keep_local=moves, from_view=moves and synced)
                # Witnesses are held until the old lbd exits, or close enough to
                # the end of its grace period (which ends sessions it kept: a
                # refused one, or all of them when they cannot move).
                end = t_ready + (SHUTDOWN_GRACE_S - 1.0 if moves else 1.0)
                while now() < end and (not moves or old.proc.alive()):
                    self.pause(0.02)
                if moves and not hook99:
                    self.check_moved(witnesses, old, new, t_ready)
        finally:
            self.prober = None
            self.pending_new = None
            prober.stop()
            wthread._halt.set()
            self.upgrade_windows.append((t0, now()))
            info["prober"] = dict(prober.outcomes)
            info["prober_worst_s"] = dict(prober.worst)
        if prober.violations:
            raise SoakFailure("upgrade: a new connection failed while lbd was being upgraded "
                              "(%s): %s" % (kind, prober.violations[0]))
        what = "the %s (%s)" % (kind, info.get("result", ""))
        self.finish_witnesses(wthread, witnesses, what, t0, t_ready)
        if silent and new is not None and moves and not hook99:
            # Sessions move: a silent one too, however long the old lbd lives
            # on (its grace period ends what it still holds).
            while old.proc.alive():
                self.pause(0.02)
        self.finish_silent(silent, what, t0, t_ready, plan["wit_connect"],
                           after_old_exit=bool(new is not None and moves and not hook99))
        if new is not None:
            self.baseline = new.baseline = self.measure_baseline(new)
            info["baseline_fds"] = self.baseline[0]

    def open_silent(self, seeds, guarded):
        """Connections through pool WIT that send nothing: established (lbd
        connects to the one backend, an echo server no event touches, which
        says nothing first), but not a byte through them yet."""
        out = []
        for seed in seeds:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(1.5)
            try:
                s.connect(("127.0.0.1", self.lbd.pool_port(WIT)))
            except OSError:
                s.close()
                self.counts["upgrade.silent_not_connected"] += 1
                continue
            w = Witness(WIT, s, "-", random.Random(seed), guarded, True)
            out.append(w)
        return out

    def finish_silent(self, silent, what, t0, t_ready, connect, after_old_exit):
        """Each silent witness now says hello and must be greeted by the
        server of pool WIT and echoed, then is closed."""
        for w in silent:
            nonce = "%016x" % w.rng.getrandbits(64)
            payload = w.rng.randbytes(w.rng.randint(1, 200))
            want = ("s0 %s\n" % nonce).encode() + payload
            got = witness_exchange(w, ("SOAK %s\n" % nonce).encode() + payload, len(want),
                                   "at its first bytes")
            if got is not None and got != want:
                w.fail("answered %r to its first bytes, expected %r" % (got[:60], want[:60]))
            try:
                w.sock.close()
            except OSError:
                pass
        broken = [w for w in silent if w.error]
        self.counts["upgrade.silent_kept_open"] += len(silent) - len(broken)
        self.counts["upgrade.silent_broken_unguarded"] += sum(1 for w in broken if not w.guarded)
        guarded = [w for w in broken if w.guarded]
        if guarded:
            self.check(what)
            raise SoakFailure(
                "upgrade: %d of %d silent connections (through pool %s, established before %s, "
                "no byte sent yet) were not kept%s: %s\n  pool %s has one backend, an echo "
                "server no event touches, and connect_timeout %s; a connection nobody has sent "
                "a byte through stays 'connecting' in lbd until data or its connect timeout "
                "confirms it (session.c), and a session still connecting cannot move: the old "
                "lbd keeps it, and its --shutdown-grace (%gs) ends it"
                % (len(guarded), len(silent), WIT, what,
                   " (checked once the old lbd had exited)" if after_old_exit else "",
                   "; ".join("%s: %s, %s" % (w.desc(), w.error, w.timeline(t0, t_ready))
                             for w in guarded),
                   WIT, connect or "unset (lbd's default, 3s)", SHUTDOWN_GRACE_S))

    def upgrade_launch(self, kind, old, workers, info):
        """Starts the new lbd; None when lbd refused SIGUSR2 (an upgrade in progress)."""
        gen = len(self.lbds) + 1
        if kind != "upgrade.usr2":
            # The binary's own session version, or (incompatible) the other one
            # of "" and "99".  SIGUSR2 keeps the environment, so the version.
            version = ""
            if kind == "upgrade.incompatible" and not old.version:
                version = "99"
            new = old.successor(gen, workers, version).spawn()
            new.log_start = 0
            self.lbds.append(new)
            return new
        path = old.proc.log_path
        offset = file_size(path)
        old.proc.send_signal(signal.SIGUSR2)
        deadline = now() + lbtest.scaled(10.0)
        while True:
            text = read_from(path, offset)
            m = SPAWNED_RE.search(text)
            if m:
                break
            refused = USR2_REFUSED_RE.search(text)
            if refused:
                info["result"] = "SIGUSR2 turned down: %s" % refused.group(0).split("msg=", 1)[1]
                self.counts["upgrade.usr2_refused"] += 1
                return None
            if now() > deadline:
                raise SoakFailure("upgrade: SIGUSR2 sent to %s, which logged no new_pid= within "
                                  "%.0f s" % (old.label, lbtest.scaled(10.0)))
            self.pause(0.005)
        new = old.adopt(gen, int(m.group(1)))
        new.log_start = offset
        self.lbds.append(new)
        return new

    def wait_ready(self, new, info):
        path = new.proc.log_path
        deadline = now() + lbtest.scaled(30.0)
        while True:
            text = read_from(path, new.log_start)
            if READY_MARK in text:
                info.setdefault("result", "ready")
                return
            if not new.proc.alive():
                self.scan_log()
                raise SoakFailure("upgrade: the new %s exited with %s before it logged %r; its "
                                  "log:\n    %s" % (new.label, exit_code(new.proc), READY_MARK,
                                                   "\n    ".join(text.splitlines()[-30:])))
            if now() > deadline:
                raise SoakFailure("upgrade: the new %s did not log %r within %.0f s; its log:\n"
                                  "    %s" % (new.label, READY_MARK, lbtest.scaled(30.0),
                                              "\n    ".join(text.splitlines()[-30:])))
            self.pause(0.01)

    def abort_kill(self, new, old, abort, info):
        """Kills the new lbd with SIGKILL before it is ready: at its listener
        take-over, or `delay` s after its start.  It is stopped (SIGSTOP) and
        its log read first: if it logged that it accepts connections it is
        too late for an abort (it goes on as a plain upgrade; False)."""
        how, delay = abort
        pid = new.proc.pid
        path = new.proc.log_path
        if how == "takeover":
            deadline = now() + lbtest.scaled(15.0)
            while TAKEOVER_MARK not in read_from(path, 0):
                if not new.proc.alive():
                    raise SoakFailure("upgrade.abort: the new %s exited with %s before it took "
                                      "the listeners over:\n%s" % (new.label, exit_code(new.proc),
                                                                   new.proc.log_tail(30)))
                if now() > deadline:
                    raise SoakFailure("upgrade.abort: the new %s did not take the listeners over "
                                      "within %.0f s:\n%s" % (new.label, lbtest.scaled(15.0),
                                                              new.proc.log_tail(30)))
                time.sleep(0.001)
        else:
            time.sleep(delay)
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
        t = now()
        while not all_threads_stopped(pid) and now() - t < 2.0:
            time.sleep(0.0005)
        text = read_from(path, 0)
        if any(mark in text for mark in ACCEPTING_MARKS) or READY_MARK in text:
            os.kill(pid, signal.SIGCONT)
            info["result"] = "too late to abort (accepting already): a plain upgrade"
            self.counts["upgrade.abort_too_late"] += 1
            return False
        rc = new.proc.kill()
        stage = "after_takeover" if TAKEOVER_MARK in text else "before_takeover"
        info["result"] = "killed -9 %s" % stage.replace("_", " the ")
        self.counts["upgrade.abort_killed_%s" % stage] += 1
        if rc != -signal.SIGKILL:
            raise SoakFailure("upgrade.abort: the new %s ended with %s before the kill -9:\n%s"
                              % (new.label, rc, new.proc.log_tail(30)))
        # The old lbd saw it go (if it had connected) and listens for the next upgrade.
        told = lambda: WENT_AWAY_MARK in read_from(old.proc.log_path, info["old_offset"])  # noqa: E731
        connected = pid in [int(x) for x in TAKING_OVER_RE.findall(
            read_from(old.proc.log_path, info["old_offset"]))]
        deadline = now() + (lbtest.scaled(10.0) if connected else 1.0)
        while not told() and now() < deadline:
            self.pause(0.02)
        if connected and not told():
            raise SoakFailure("upgrade.abort: %s logged %r for pid %d, then not %r within %.0f s "
                              "of its kill -9" % (old.label, "a new lbd is taking over", pid,
                                                  WENT_AWAY_MARK, lbtest.scaled(10.0)))
        self.counts["upgrade.abort_old_told" if told() else "upgrade.abort_old_not_told"] += 1
        if old.sock_path and old.proc.pid not in lbtest.unix_listener_pids(
                old.sock_path, [old.proc.pid]):
            raise SoakFailure("upgrade.abort: %s no longer listens on its upgrade socket %s "
                              "after the new lbd was killed" % (old.label, old.sock_path))
        return True

    def check_retiring(self):
        """Old lbds after an upgrade: each exits 0 within --shutdown-grace (+ a
        margin) of the new one's READY, having logged how its sessions went."""
        for r in list(self.retiring):
            old, info = r["lbd"], r["info"]
            if old.proc.alive():
                if now() > r["deadline"]:
                    raise SoakFailure(
                        "upgrade: the old %s still runs %.1f s after the new one was ready "
                        "(--shutdown-grace %gs: it must be gone by then, plus %.0f s)\n"
                        "its log, last lines:\n    %s"
                        % (old.label, now() - r["t_ready"], SHUTDOWN_GRACE_S,
                           r["deadline"] - r["t_ready"] - SHUTDOWN_GRACE_S,
                           "\n    ".join(read_from(old.proc.log_path, info["old_offset"])
                                         .splitlines()[-25:])))
                continue
            self.retiring.remove(r)
            self.scan_log()
            rc = exit_code(old.proc)
            info["old_exit_seen_s"] = round(now() - r["t_ready"], 2)
            info["old_rc"] = rc
            text = read_from(old.proc.log_path, info["old_offset"])
            stopped = [lbtest.log_ts(ln) for ln in text.splitlines() if 'msg="stopped"' in ln]
            t_wall = info.pop("t_ready_wall", None)
            if stopped and stopped[-1] is not None and t_wall is not None:
                # when it logged its last line, by its clock (the soak may look later)
                info["old_stopped_s"] = round(stopped[-1] - t_wall, 2)
            if rc is None:
                self.counts["upgrade.old_rc_unknown"] += 1
            elif rc != 0:
                raise SoakFailure("upgrade: the old %s exited with %s (expected 0), %.1f s after "
                                  "the new one was ready; its log, last lines:\n    %s"
                                  % (old.label, rc, info["old_exit_seen_s"],
                                     "\n    ".join(text.splitlines()[-25:])))
            mark = HANDOVER_MARK if r["moves"] else LISTENERS_ONLY_MARK
            lines = [ln for ln in text.splitlines() if mark in ln]
            if not lines:
                raise SoakFailure("upgrade: the old %s exited without logging %r"
                                  % (old.label, mark))
            moved, kept = lbtest.kv_int(lines[-1], "moved"), lbtest.kv_int(lines[-1], "kept")
            info["moved"], info["kept"] = moved, kept
            exiting = [ln for ln in text.splitlines() if "upgrade: exiting" in ln]
            if exiting:
                info["finished_here"] = lbtest.kv_int(exiting[-1], "finished_here")
            self.counts["upgrade.sessions_moved"] += moved or 0
            self.counts["upgrade.sessions_kept"] += kept or 0
            if not r["moves"] and moved:
                raise SoakFailure("upgrade: the old %s moved %d sessions to a new lbd of another "
                                  "session version: %s" % (old.label, moved, lines[-1]))

    def model_new_process(self, keep_local, from_view):
        """What a new lbd knows.  It lists etcd at once, so what etcd holds
        now where that is valid.  Where a value is invalid it keeps the last
        good one it started with: the old process's own when it took over its
        view (from_view: a new lbd of the same session version, the old one
        caught up with etcd), else what the state file held, a second or so
        behind lbd, or nothing (no file yet): then any good value of late, or
        none.  The old process's local overrides come over with its BACKEND
        records (keep_local: the same session version).  A pool whose policy
        is invalid runs its last good one, lbd's defaults or that policy
        clamped."""
        if not keep_local:
            self.local = {}
        since = now() - lbtest.scaled(STATE_FILE_LAG + 2.0)
        for k in self.keys.values():
            if not k.current_bad:
                k.stale = set()  # the listing settles it
            elif not from_view:
                k.stale |= k.goods_in_force_since(since)
                if k.last_good:
                    k.stale.add(k.last_good)
                k.last_good = None
        for m in self.overrides.values():
            if not m.current_bad:
                m.stale = False
            elif not from_view:
                m.stale = True
        d_idle, d_connect, d_retries = self.policy_figures({})
        for pool, figures in sorted(self.policy_bad.items()):
            if pool not in SERVED or pool == VOID:
                continue
            idle, connect, retries = self.policy_figures(figures) if figures else (0, 0, 0)
            last = self.history.last(pool)
            self.history.add(pool, max(idle, d_idle, last["idle"]),
                             max(connect, d_connect, last["connect"]),
                             max(retries, d_retries, last["retries"]))

    def measure_baseline(self, lbd):
        """A new lbd's fds and RSS once it took over, as its baseline: its fds
        less the TCP connections of sessions and checks (to the pool, admin
        and probe ports, and to the backends), which come and go."""
        local = set(lbd.pools.values()) | {lbd.admin_port, lbd.http_port}
        remote = {srv.port for srv in self.farm.servers.values()} | set(self.closed_ports)
        if self.wfarm:
            remote |= {srv.port for srv in self.wfarm.servers.values()}
        pid = lbd.proc.pid
        samples = []
        while True:
            links = lbtest.fd_links(pid)
            if links is None:
                break
            socks = lbtest.tcp_sockets()
            n = 0
            for link in links:
                st = socks.get(link[8:-1]) if link.startswith("socket:[") else None
                if st and st[0] != "0A" and (st[1] in local or st[2] in remote):
                    continue
                n += 1
            samples.append((n, self.proc_rss_kb()))
            if len(samples) == 3:
                break
            self.pause(0.05)
        if not samples:
            self.check("measuring the new lbd")
            raise SoakFailure("upgrade: cannot read /proc/%d/fd of the new lbd" % pid)
        return min(s[0] for s in samples), max(s[1] for s in samples)

    # ------------------------------------------------------------------
    # Quiet phases

    def server_is_echo(self, target):
        return target is not None and target[0] == "server" and \
            self.farm.mode(target[1]) == "echo"

    def effective(self, pool, bid, spec_weight):
        """(drain, weight_override or None, health_override, checkable) as lbd must resolve them."""
        m = self.overrides.get((pool, bid))
        lo = self.local.get((pool, bid)) or LocalOverride()
        checkable = not (m and m.stale)
        cov = m.last_good if m else None
        drain = lo.drain if lo.has_drain else bool(cov and cov["drain"])
        if lo.has_weight:
            wo = lo.weight
        elif not lo.clear_weight and cov and cov["weight"] is not None:
            wo = cov["weight"]
        else:
            wo = None
        health = lo.health if lo.has_health else (cov["health"] if cov else "auto")
        return drain, wo, health, checkable

    def quiet_phase(self):
        r = self.rng
        t_q = now()
        # Leases still lapsing are revoked: the settled world is known exactly.
        for lid, _ in self.lapsing:
            try:
                self.etcd.revoke(lid)
            except lbtest.EtcdError:
                pass  # lapsed already
        self.lapsing = []
        for (pool, bid), k in sorted(self.keys.items()):
            if k.present and k.lease and k.lease[0] == "lapse":
                self.model_delete(pool, bid)
        heal = []
        for sid in sorted(self.farm.servers):
            mode = self.farm.mode(sid)
            if mode in ("hang", "stop_reading", "reset", "blackhole"):
                heal.append((sid, r.choice(["echo", "echo", "die"])))
            elif mode == "refuse" and r.random() < 0.5:
                heal.append((sid, "echo"))
        policies = {}
        for pool in POOLS:
            needed = 0
            for (p, bid), k in sorted(self.keys.items()):
                if p == pool and k.present and not self._will_echo(k.target, heal):
                    needed += 1
            needed += sum(1 for (p, _) in self.registrars if p == pool)
            policies[pool] = (self.gen_policy(pool, sane=True, needed_retries=needed), needed)
        self.record("quiet heal=%s policies=%s" % (
            ",".join("%s->%s" % x for x in heal),
            json.dumps({p: v[0] for p, v in policies.items()}, sort_keys=True)))
        self.counts["quiet"] += 1
        self.last_quiet_event = len(self.events) - 1
        for sid, mode in heal:
            self.farm.set_mode(sid, mode)
        for pool, (pol, _) in policies.items():
            self.put(self.key_config(pool), json.dumps(pol))
            self.history_add(pool, pol)
            self.policy_bad.pop(pool, None)
        # Settle: checks have to see every backend rise.
        settle = 1.0
        for pol, _ in policies.values():
            h = pol["health"]
            iv = self.policy_figures({"idle_timeout": h["interval"]})[0]
            to = self.policy_figures({"idle_timeout": h["timeout"]})[0]
            settle = max(settle, (h["rise"] + 1) * max(iv, 1.0) + to + 1.0)
        self.pause(settle)
        self.check_consistency()
        t_window = now()
        report = {}
        for pool in POOLS:
            pre = self.served_precondition(pool)
            _, needed = policies[pool]
            if needed > 7:
                report[pool] = "skipped (%d dead backends)" % needed
                continue
            if not pre:
                report[pool] = "no live backend"
                self.counts["quiet.no_live_backend"] += 1
                continue
            for i in range(QUIET_TRIES):
                res = Attempt(self, pool, "normal", random.Random(r.getrandbits(32))).run()
                if res.outcome != "served":
                    self.check("quiet check of %s" % pool)
                    raise SoakFailure(
                        "quiet phase: pool %s has a live backend (%s) but client %d of %d was "
                        "not served: %s %s\nlbctl backends: %s"
                        % (pool, pre, i + 1, QUIET_TRIES, res.outcome, res.detail,
                           self.lbctl_snapshot(pool)))
            report[pool] = "served via %s" % pre
            self.counts["quiet.served_checked"] += 1
        # Background clients that ran entirely inside the settled window.
        for res in self.clients.since(t_window):
            if res.t1 is None or res.kind not in MUST_SERVE_KINDS or res.pool not in report:
                continue
            if report[res.pool].startswith("served") and res.outcome != "served":
                self.check("quiet window")
                raise SoakFailure("quiet phase: background %s client of %s not served: %s %s "
                                  "(%s)" % (res.kind, res.pool, res.outcome, res.detail,
                                            report[res.pool]))
        self.say("quiet phase %d ok after %.1fs: %s" % (self.counts["quiet"], now() - t_q, report))

    def _will_echo(self, target, heal):
        if target is None or target[0] != "server":
            return False
        mode = dict(heal).get(target[1], self.farm.mode(target[1]))
        return mode == "echo"

    def served_precondition(self, pool):
        for bid in SLOTS:
            k = self.keys.get((pool, bid))
            if not k or not k.certain() or not k.last_good or k.stale:
                continue
            if not self.server_is_echo(k.target):
                continue
            drain, wo, health, checkable = self.effective(pool, bid, k.last_good[1])
            weight = wo if wo is not None else k.last_good[1]
            if checkable and not drain and weight > 0 and health != "down":
                return "%s->%s" % (bid, k.target[1])
        return None

    def lbctl_snapshot(self, pool):
        rc, out, err = self.lbctl("-o", "json", "backends", pool)
        if rc != 0:
            return "lbctl rc=%d %s" % (rc, err.strip())
        try:
            items = lbtest.backends_from_json(json.loads(out))
        except (ValueError, AssertionError):
            return out[:2000]
        return "; ".join("%s %s w=%s eff=%s drain=%s health=%s/%s active=%s" % (
            b["id"], b["addr"], b["weight"], b.get("effective_weight"), b["drain"], b["health"],
            b["health_override"], b.get("active_connections")) for b in items)

    def expected_view(self):
        """{pool: {id: [options]}}: what lbd must list, as (addr, weight, drain,
        weight override, health override); None fields are not compared."""
        exp = {}
        for pool in SERVED:
            base = "%spools/%s/backends/" % (PREFIX, pool)
            in_etcd = self.etcd.get_prefix(base)
            view = {}
            for key, raw in in_etcd.items():
                bid = key[len(base):]
                options = []
                if bid in REG_IDS:
                    try:
                        v = json.loads(raw)
                        options = [(v["addr"], int(v.get("weight", 100)))]
                    except (ValueError, KeyError, TypeError):
                        options = []
                else:
                    k = self.keys.get((pool, bid))
                    if k is None:
                        continue  # junk under the prefix: lbd must not list it
                    if k.last_good:
                        options.append(k.last_good)
                    if k.current_bad:
                        options.extend(sorted(k.stale))
                        if not k.last_good and k.stale:
                            options.append(None)  # or absent
                if not options:
                    continue
                drain, wo, health, checkable = self.effective(pool, bid, None)
                view[bid] = [(o[0], o[1], drain if checkable else None,
                              wo if checkable else None, health if checkable else None,
                              checkable) if o else None for o in options]
            exp[pool] = view
        return exp

    def check_consistency(self, timeout=12.0):
        deadline = now() + timeout
        last = None
        while True:
            self.check("consistency check")
            rc, out, err = self.lbctl("-o", "json", "backends")
            if rc != 0:
                last = "lbctl -o json backends failed: rc=%d %s" % (rc, err.strip()[:300])
            else:
                try:
                    got = lbtest.backends_from_json(json.loads(out))
                    diff = self.compare(got, self.expected_view())
                except (ValueError, AssertionError) as exc:
                    diff = ["cannot read lbctl output: %s" % exc]
                if not diff:
                    self.counts["quiet.consistent"] += 1
                    return
                last = "lbctl and etcd disagree:\n    " + "\n    ".join(diff[:20])
            if now() > deadline:
                raise SoakFailure("quiet phase: %s" % last)
            self.pause(0.3)

    def compare(self, got, exp):
        diff = []
        seen = collections.defaultdict(dict)
        for b in got:
            seen[b["pool"]][b["id"]] = b
        for pool in SERVED:
            lbd_view, want = seen.get(pool, {}), exp[pool]
            for bid, b in sorted(lbd_view.items()):
                options = want.get(bid)
                if options is None:
                    diff.append("%s/%s listed by lbd (%s), not in etcd" % (pool, bid, b["addr"]))
                    rev = self.tombstone_at_compaction.get((pool, bid))
                    if rev is not None:
                        diff.append(
                            "  (deleted at revision %d while lbd was cut off from etcd, and etcd "
                            "was compacted at that very revision: etcd before 3.4.33/3.5.15 drops "
                            "that tombstone and a watch resumed at %d never "
                            "sees the delete; resuming at the last revision seen instead of +1 "
                            "would make etcd answer 'compacted' and lbd re-list)" % (rev, rev))
                    continue
                wo = b.get("weight_override")
                actual = (b["addr"], int(b["weight"]), bool(b["drain"]), wo, b["health_override"])
                ok = False
                for o in options:
                    if o is None:
                        continue
                    if o[:2] != actual[:2]:
                        continue
                    if o[5] and o[2:5] != actual[2:5]:
                        continue
                    ok = True
                if not ok:
                    diff.append("%s/%s lbd has %s, expected one of %s" % (pool, bid, actual, options))
            for bid, options in sorted(want.items()):
                if bid not in lbd_view and None not in options:
                    diff.append("%s/%s in etcd as %s, missing from lbd" % (pool, bid, options))
        return diff

    # ------------------------------------------------------------------
    # Main loop and end

    def run(self):
        duration = self.args.duration
        end_reserve = 0.0
        next_quiet = self.rng.randint(30, 90)
        last_report = now()
        while True:
            elapsed = now() - self.t_start
            if self.args.events and self.index >= self.args.events:
                break
            if not self.args.events and elapsed >= duration - end_reserve:
                break
            self.check()
            if self.index >= next_quiet:
                self.quiet_phase()
                next_quiet = self.index + self.rng.randint(30, 90)
                continue
            kind = self.pick_event()
            try:
                self.run_event(kind)
            except SoakFailure:
                raise
            except lbtest.EtcdError as exc:
                # etcd refusing a request (too large, ...) is not lbd's problem.
                self.counts["etcd.error"] += 1
                self.say("etcd refused %s: %s" % (kind, str(exc)[:200]))
            self.pause(self.rng.uniform(0.02, 0.25))
            if now() - last_report > 15:
                last_report = now()
                self.say("%d events, lbd fds %d rss %.1f MB, clients %s"
                         % (self.index, self.proc_fds(), self.proc_rss_kb() / 1024.0,
                            self.client_summary()))

    def client_summary(self):
        c = collections.Counter()
        with self.clients.lock:
            for k, v in self.clients.counts.items():
                c[k.split(".", 1)[1]] += v
        return dict(c)

    def finish(self):
        """Churn over: everything leaves, lbd must give back what it took."""
        self.say("churn over after %d events; settling" % self.index)
        self.t_churn_end = now()
        self.clients.stop()
        self.check("the end")
        for held in self.abuse.values():
            for s, _, _ in held:
                s.close()
            held.clear()
        for key in sorted(self.registrars):
            reg, _ = self.registrars.pop(key)
            reg.proc.stop(timeout=10)
        while self.retiring:
            # Old lbds of the last upgrades exit by themselves (check_retiring bounds it).
            self.check("the end, waiting for the old lbds to exit")
            time.sleep(0.05)
        self.etcd.delete_prefix("%spools/" % PREFIX)
        for lid in self.long_leases:
            try:
                self.etcd.revoke(lid)
            except lbtest.EtcdError:
                pass
        base_fds, base_rss = self.baseline
        tol_fds = 6
        # Connections still open end by their idle timeout at the latest.
        idle = max(self.history.max_idle_since(p, self.t_churn_end - CLIENT_CAP) for p in SERVED)
        wait_idle = min(idle, 30.0) + SLACK
        fds = self.wait_fds(base_fds + tol_fds, wait_idle)
        if fds > base_fds + tol_fds:
            active = self.lbctl("pools")[1]
            if idle <= 30.0:
                raise SoakFailure("end: every client left %.0fs ago (idle timeout %.0fs) but lbd "
                                  "still has %d fds (baseline %d)\n%s"
                                  % (wait_idle, idle, fds, base_fds, active))
            try:
                open_conns = int(self.lbd.metric("lbd_connections_active"))
            except (AssertionError, OSError, ValueError):
                open_conns = -1
            self.counts["end.connections_outlived_clients"] = open_conns
            self.say("end: %d fds, %d connections still open %.0fs after the last client left "
                     "(their idle timeout may be %s s: half-closed towards backends that do not "
                     "read); stopping the backends" % (fds, open_conns, wait_idle, idle))
        backend_conns = self.farm.open_conns()
        self.farm.stop()
        if self.wfarm:
            self.wfarm.stop()
        fds = self.wait_fds(base_fds + tol_fds, 10.0)
        if fds > base_fds + tol_fds:
            raise SoakFailure("end: fd leak: lbd has %d open fds, %d at the start (clients and "
                              "backends all gone)\n%s\n%s"
                              % (fds, base_fds, self.fd_listing(), self.lbctl("pools")[1]))
        rss = self.proc_rss_kb()
        rss_limit = base_rss * 1.5 + ((ASAN_QUARANTINE_MB + 64) if self.args.asan else 24) * 1024
        self.say("end: fds %d (start %d), rss %.1f MB (start %.1f MB, limit %.1f MB), "
                 "backend conns before stop %d" % (fds, base_fds, rss / 1024.0, base_rss / 1024.0,
                                                   rss_limit / 1024.0, backend_conns))
        if rss > rss_limit:
            raise SoakFailure("end: RSS %.1f MB, %.1f MB at the start (limit %.1f MB)"
                              % (rss / 1024.0, base_rss / 1024.0, rss_limit / 1024.0))
        self.probe.stop()
        self.final_counters = self.counters()
        t0 = now()
        rc, killed = self.lbd.proc.stop(timeout=lbtest.scaled(20))
        self.scan_log()
        if killed:
            raise SoakFailure("lbd did not exit within %.0fs of SIGTERM" % lbtest.scaled(20))
        if self.sanitizer_seen:
            raise SoakFailure("sanitizer report in lbd's log at exit: %s" % self.sanitizer_seen)
        if rc is None:
            # Only an lbd started by SIGUSR2 whose parent still runs: none by now.
            raise SoakFailure("%s exited on SIGTERM, with an exit code the soak could not read"
                              % self.lbd.label)
        if rc != 0:
            raise SoakFailure("lbd exited with %s on SIGTERM" % rc)
        self.say("%s exited 0 %.1fs after SIGTERM" % ("lbd" if self.lbd.gen == 1 else
                                                     self.lbd.label, now() - t0))

    def counters(self):
        """lbd's counters that tell which states a run reached."""
        out = collections.Counter()
        try:
            for name, labels, value in self.lbd.metrics():
                if not name.endswith("_total") or not value:
                    continue
                if any(w in name for w in ("skipped", "clamped", "relists", "reconnects",
                                           "no_backend", "retries", "refused", "closed",
                                           "bad_values", "paused", "dropped", "queue")):
                    reason = labels.get("reason")
                    out[name[4:-6] + ("." + reason if reason else "")] += int(value)
        except (AssertionError, OSError, ValueError) as exc:
            out["metrics_error: %s" % exc] += 1
        return dict(sorted(out.items()))

    def wait_fds(self, limit, timeout):
        deadline = now() + timeout
        while True:
            self.check("settling")
            fds = self.proc_fds()
            if fds <= limit or now() > deadline:
                return fds
            time.sleep(0.2)

    def fd_listing(self):
        kinds = collections.Counter()
        d = "/proc/%d/fd" % self.lbd.proc.pid
        for fd in os.listdir(d):
            try:
                t = os.readlink(os.path.join(d, fd))
            except OSError:
                continue
            kinds[t.split(":")[0] if ":" in t else t] += 1
        return "fds by kind: %s" % dict(kinds)

    # ------------------------------------------------------------------

    def summary(self):
        lines = ["events reached (%d in %.0fs, schedule digest %s):"
                 % (self.index, now() - self.t_start, self.digest.hexdigest()[:16])]
        for k in sorted(EVENT_WEIGHTS):
            lines.append("    %-18s %d%s" % (k, self.counts.get(k, 0),
                                             " (excluded)" if k in self.excluded else ""))
        extra = {k: v for k, v in sorted(self.counts.items()) if k not in EVENT_WEIGHTS}
        lines.append("    other: %s" % extra)
        if self.clients:
            lines.append("clients: %s" % dict(sorted(self.clients.counts.items())))
        lines.append("soak process: %d open fds" % len(os.listdir("/proc/self/fd")))
        if self.probe:
            lines.append("healthz: %d probes, %d single misses, worst %.3fs"
                         % (self.probe.probes, self.probe.slow, self.probe.worst))
        if self.upgrade_log:
            lines.append("upgrades (%d lbd processes in all):" % len(self.lbds))
            for u in self.upgrade_log:
                lines.append("    #%d %s" % (u["event"], ", ".join(
                    "%s=%s" % (k, v) for k, v in u.items() if k not in ("event", "old_offset"))))
            if self.clients:
                across = collections.Counter()
                with self.clients.lock:
                    for r in self.clients.recent:
                        if r.t1 is not None and any(r.t0 < b and r.t1 > a
                                                    for a, b in self.upgrade_windows):
                            across[r.outcome] += 1
                lines.append("    client attempts that overlapped an upgrade: %s"
                             % dict(sorted(across.items())))
        if self.lbd is not None:
            text = "".join(read_from(p, 0) for p in self.log_paths())
            states = collections.OrderedDict()
            for name, needle in (("ejected", "ejected after consecutive"),
                                 ("back from ejection", "back from ejection"),
                                 ("check down", "backend is down"), ("check up", "backend is up"),
                                 ("drained", "backend drained"), ("drain timeout", "drain timeout"),
                                 ("panic", "panic: too few"), ("policy applied", "policy applied"),
                                 ("clamped", "clamped"), ("skipped", "skipped"),
                                 ("connect failed", "connect to backend failed"),
                                 ("etcd failed", "failed, retrying"), ("re-listed", "re-listed"),
                                 ("removed", "backend removed")):
                states[name] = text.count(needle)
            lines.append("lbd states seen in its log: %s" % dict(states))
        if self.final_counters:
            lines.append("lbd counters at the end: %s" % self.final_counters)
        return "\n".join(lines)

    def failure_report(self, exc):
        out = ["", "=" * 78, "SOAK FAILURE: %s" % exc,
               "  seed %d, event #%d, %.1fs into the run" % (self.seed, self.index,
                                                              now() - self.t_start),
               "  replay: /usr/bin/python3 %s --bin-dir %s --seed %d --duration %g%s"
               % (os.path.relpath(os.path.abspath(__file__)), self.args.bin_dir or "build",
                  self.seed, self.args.duration,
                  "".join(" --%s %s" % (o, getattr(self.args, o)) for o in ("exclude", "only")
                          if getattr(self.args, o))),
               ""]
        # First what most often says why (the report may be cut short in a CI
        # summary): the upgrade lines, warnings and errors of the last two lbds.
        for path in self.log_paths()[-2:]:
            lines = [ln for ln in read_from(path, 0).splitlines()
                     if "sub=upgrade" in ln or "level=warn" in ln or "level=error" in ln]
            if lines:
                out += ["upgrade lines, warnings and errors, the last 12 (%s):" % path]
                out += ["    " + ln[:300] for ln in lines[-12:]] + [""]
        out += ["last events:"]
        out += ["    " + e for e in self.events[-30:]]
        rare = [e for e in self.events[self.last_quiet_event:-30]
                if e.split()[1].split(".")[0] in ("etcd", "key", "value", "bulk", "junk")
                or e.split()[1] in ("policy.delete", "policy.bad")]
        if rare:
            out += ["", "earlier events of rarer kinds since the last quiet phase:"]
            out += ["    " + e[:200] for e in rare[-30:]]
        if self.lbd is not None:
            if self.sanitizer_seen:
                for x in self.lbds:
                    if x.proc.alive() and os.path.basename(x.proc.log_path) in self.sanitizer_seen:
                        x.proc.wait(15)  # let the sanitizer finish its report
            for path in self.log_paths():
                lines = read_from(path, 0).splitlines()
                san = [i for i, line in enumerate(lines)
                       if any(m in line for m in SANITIZER_MARKS)]
                if san:
                    out += ["", "sanitizer report (from %s):" % path]
                    out += ["    " + line for line in lines[max(0, san[0] - 3): san[0] + 60]]
                    break
            if len(self.lbds) > 1:
                out += ["", "lbd processes: %s" % "; ".join(
                    "%s %s" % (x.label, "running" if x.proc.alive() else
                               "exit %s" % exit_code(x.proc)) for x in self.lbds)]
                for path in [p for p in self.log_paths() if p != self.lbd.proc.log_path][-3:][::-1]:
                    lines = read_from(path, 0).splitlines()
                    out += ["", "an earlier lbd's log, last 20 lines (%s):" % path]
                    out += ["    " + line[:400] for line in lines[-20:]]
            lines = self.lbd.proc.log_text().splitlines()
            out += ["", "lbd log, last 60 lines (%s%s):" % (
                self.lbd.proc.log_path, "" if self.lbd.gen == 1 else ", " + self.lbd.label)]
            out += ["    " + line[:400] for line in lines[-60:]]
        out.append("=" * 78)
        return "\n".join(out)


def is_asan(path):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", help="build dir holding balancer/lbd and ctl/lbctl")
    ap.add_argument("--seed", type=int, default=None, help="replay this seed (default: random)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of churn")
    ap.add_argument("--events", type=int, default=0, help="stop after N events instead")
    ap.add_argument("--clients", type=int, default=3, help="client threads (at most 16)")
    ap.add_argument("--exclude", default="", help="event kinds (or prefixes) to leave out, "
                                                  "comma separated: e.g. key.overlong,etcd")
    ap.add_argument("--only", default="", help="only these event kinds (or prefixes), comma "
                                               "separated: e.g. abuse,backend.put,server.mode")
    ap.add_argument("--log-level", default="info", help="lbd's --log-level")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with all logs")
    ap.add_argument("--verbose", action="store_true", help="print every event")
    args = ap.parse_args()
    if args.seed is None:
        env_seed = os.environ.get("SOAK_SEED")
        args.seed = int(env_seed) if env_seed else random.SystemRandom().randrange(1 << 31)
    if args.bin_dir:
        os.environ["LB_BUILD_DIR"] = os.path.abspath(args.bin_dir)
    if args.keep:
        os.environ["LBTEST_KEEP"] = "1"
    args.clients = max(1, min(16, args.clients))
    args.asan = is_asan(lbtest.lbd_binary())
    sys.stderr.write("soak: seed %d, duration %gs, bin %s%s\n"
                     % (args.seed, args.duration, lbtest.bin_dir(),
                        " (sanitizers)" if args.asan else ""))
    soak = Soak(args)
    rc = 0
    try:
        soak.start()
        soak.run()
        soak.finish()
        sys.stderr.write(soak.summary() + "\n")
        sys.stderr.write("soak: PASSED (seed %d)\n" % args.seed)
    except (SoakFailure, AssertionError, lbtest.EtcdError) as exc:
        rc = 1
        try:
            soak.check()
        except SoakFailure as first:
            if str(first) != str(exc):
                exc = SoakFailure("%s\n  (which happened while: %s)" % (first, exc))
        sys.stderr.write(soak.failure_report(exc) + "\n")
        sys.stderr.write(soak.summary() + "\n")
        sys.stderr.write("soak: FAILED (seed %d)\n" % args.seed)
    except Exception:  # noqa: BLE001 - a bug in the soak itself
        rc = 2
        sys.stderr.write("soak: HARNESS ERROR (a bug in the soak, not in lbd), seed %d, event #%d:\n%s"
                         % (args.seed, soak.index, traceback.format_exc()))
    except KeyboardInterrupt:
        rc = 130
        sys.stderr.write(soak.summary() + "\nsoak: interrupted (seed %d)\n" % args.seed)
    finally:
        if soak.clients is not None:
            soak.clients._stop.set()
        if soak.probe is not None:
            soak.probe._halt.set()
        for x in reversed(soak.lbds):
            # The lbds that lbd started (SIGUSR2) are not the harness's: stopped by PID here.
            if isinstance(x.proc, lbtest.ForeignProc) and x.proc.alive():
                try:
                    x.proc.stop(timeout=5)
                except Exception as exc:  # noqa: BLE001
                    sys.stderr.write("soak: stopping pid %d: %s\n" % (x.proc.pid, exc))
        if args.keep:
            sys.stderr.write("soak: logs kept in %s\n" % soak.h.dir)
        try:
            soak.h.cleanup()
        except Exception as exc:  # noqa: BLE001
            sys.stderr.write("soak: cleanup: %s\n" % exc)
    sys.exit(rc)


if __name__ == "__main__":
    main()
