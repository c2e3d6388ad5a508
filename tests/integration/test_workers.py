#!/usr/bin/python3
"""lbd --workers N: what must hold when N worker threads each accept on
their own SO_REUSEPORT listener per pool and own their sessions, while a
control thread runs etcd, the admin API, /metrics and checks.

Every limit and count is per process, not per worker:

  1. per-backend max_conns: 40 clients arrive at once at a backend with
     max_conns 5, three rounds; exactly 5 are served, the backend never
     sees more than 5 at once, lbd_backend_active_connections never reads
     above 5, and the other 35 are closed at once (not left hanging);
  1b. the global --max-conns: 24 clients arrive at once at a cap of 4;
     4 are served, the rest wait in the kernel's queues (of every worker)
     untouched, and are served one by one as others close; no more than 4
     are ever open (lbd_connections_active and the clients' own count);
  2. drain_timeout closes what is left on every worker: 20 connections to
     a drained backend stay open until the timeout and are all closed
     (the backend sees them end) within timeout + window + margin; the
     DRAINED state is reported by `lbctl -o json backends` and
     `lbctl -o json watch`; connections to the other backend stay;
  3. SIGTERM waits for the sessions of every worker: lbd stops accepting,
     stays up while any connection is open (data still flows), exits 0
     once the last one closes; with a short --shutdown-grace it closes
     what is left on every worker and exits 0;
  4. the counters are sums over the workers: after 400 short connections
     of known sizes from 8 threads, lbd_pool_connections_total, the sum of
     lbd_backend_connections_total and the bytes in/out equal exactly what
     the clients and backends saw, and `lbctl -o json` agrees;
  5. every worker serves: lbd_worker_connections_total{worker="i"} grows
     on each of the N workers, and the workers' counts add up to the
     connections made.

WORKERS is the worker count.  While lbd has no --workers (its --help does
not name it), the tests skip; with LBTEST_WORKERS=1 in the environment
they run against a one-threaded lbd without the flag (test 5 skips: its
metric comes with --workers), which checks the tests themselves.

Connections come from distinct ephemeral source ports, so SO_REUSEPORT's
4-tuple hash spreads them over the workers; where it matters, a test
checks with lbd_worker_connections_total that every worker took some.

The figures measured are printed as "figure:" lines.
"""

import collections
import json
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (HELLO, Backend, Etcd, PoolTestCase, Lbd, close_all, echo,  # noqa: E402
                    figure, open_conn, recv_line_bytes, scaled, wait_until, watch_closes)

# The worker count under test (`lbd --workers WORKERS`).
WORKERS = int(os.environ.get("LBTEST_WORKERS", "2"))

# Connections accepted by each worker thread, label worker="0".."N-1".
WORKER_METRIC = "lbd_worker_connections_total"

PREFIX = "/workers/"
CAP_PREFIX = "/workers-cap/"
TERM_PREFIX = "/workers-term/"

NO_CHECKS = {"type": "none"}
BACKEND_CAP = 5
DRAIN_TIMEOUT = 2.0
DRAIN_WINDOW = 1.0  # drain_timeout / 10, at least 1 s
POLICIES = {
    "cap": {"health": NO_CHECKS, "max_conns": BACKEND_CAP},
    "drain": {"health": NO_CHECKS, "drain_timeout": "%gs" % DRAIN_TIMEOUT},
    "count": {"health": NO_CHECKS},
    "spread": {"health": NO_CHECKS},
}


def config_key(prefix, pool):
    return "%spools/%s/config" % (prefix, pool)


_workers_supported = None


def workers_supported():
    """True when this lbd takes --workers (its --help names it)."""
    global _workers_supported
    if _workers_supported is None:
        rc, out, err = lbtest.run([lbtest.lbd_binary(), "--help"], timeout=10)
        _workers_supported = rc == 0 and "--workers" in out
    return _workers_supported


def worker_args():
    """The lbd flags that set the worker count (none when lbd has no --workers)."""
    return ["--workers", str(WORKERS)] if workers_supported() else []


def worker_counts(lbd):
    """{worker label: connections accepted} from lbd_worker_connections_total."""
    out = collections.Counter()
    for name, labels, value in lbd.metrics():
        if name == WORKER_METRIC:
            out[labels.get("worker")] += int(value)
    return out


def worker_delta(before, after):
    return {w: after[w] - before.get(w, 0) for w in sorted(after)}


def sum_metric(samples, name, **labels):
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == str(x) for k, x in labels.items()))


def connect_burst(port, n):
    """n connections made as fast as possible (each from its own source port).

    The handshakes complete in the kernel; whatever lbd does with them
    happens while the rest are still arriving.
    """
    socks = []
    for _ in range(n):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return socks


def first_lines(socks, timeout):
    """Waits for the first line or the end of each socket, all at once.

    Returns {socket: (outcome, seconds)}: outcome is ("served", id),
    ("eof",) or ("reset",); a socket with neither by the deadline is
    ("hung",).  Sockets are left blocking again.
    """
    t0 = time.monotonic()
    sel = selectors.DefaultSelector()
    bufs = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    out = {}
    deadline = t0 + timeout
    while len(out) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(1)  # one byte: never read past the id line
            except BlockingIOError:
                continue
            except ConnectionResetError:
                out[s] = (("reset",), time.monotonic() - t0)
                sel.unregister(s)
                continue
            if not data:
                out[s] = (("eof",), time.monotonic() - t0)
                sel.unregister(s)
                continue
            bufs[s] += data
            if bufs[s].endswith(b"\n"):
                out[s] = (("served", bufs[s].decode().strip()), time.monotonic() - t0)
                sel.unregister(s)
    sel.close()
    for s in socks:
        s.setblocking(True)
        s.settimeout(5)
        out.setdefault(s, (("hung",), time.monotonic() - t0))
    return out


class MetricPeak(threading.Thread):
    """Polls /metrics until stopped; keeps the highest value of one sum.

    Polling can miss a peak between two reads (a backend's own count does
    not); it catches a gauge that stays above its cap.
    """

    def __init__(self, lbd, name, **labels):
        super().__init__(daemon=True, name="peak-%s" % name)
        self.lbd = lbd
        self.name = name
        self.labels = labels
        self.peak = 0
        self.reads = 0
        self.errors = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                value = self.lbd.metric(self.name, **self.labels)
            except Exception as exc:  # noqa: BLE001 - reported by stop()
                self.errors.append(repr(exc))
            else:
                self.peak = max(self.peak, value)
                self.reads += 1
            self._halt.wait(0.005)  # pacing between reads

    def stop(self):
        self._halt.set()
        self.join(10)
        return self.peak


class ShortClients:
    """n short connections from `threads` threads, each of a known size:
    connect, read the backend's id line, send HELLO and a payload, read it
    all back, close.  Tallies what the clients sent and received (bytes on
    the wire, the id line included) and which backend served each one."""

    def __init__(self, port, n, threads=8, seed=1):
        self.port = port
        self.n = n
        self.lock = threading.Lock()
        self.sent = 0
        self.received = 0
        self.served = collections.Counter()
        self.errors = []
        rnd = random.Random(seed)
        self.sizes = [rnd.randint(1, 4096) for _ in range(n)]
        self._next = 0
        self._threads = [threading.Thread(target=self._run, daemon=True, name="short-%d" % i)
                         for i in range(threads)]

    def _take(self):
        with self.lock:
            if self._next >= self.n:
                return None
            self._next += 1
            return self._next - 1

    def _one(self, i):
        payload = HELLO + random.Random(i).randbytes(self.sizes[i])
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            line = recv_line_bytes(s)
            if line is None:
                raise ConnectionError("closed before the backend's id line")
            got = echo(s, payload)
            if got != payload:
                raise ConnectionError("sent %d bytes, %d came back" % (len(payload), len(got)))
        with self.lock:
            self.sent += len(payload)
            self.received += len(line) + len(got)
            self.served[line.decode().strip()] += 1

    def _run(self):
        while True:
            i = self._take()
            if i is None:
                return
            try:
                self._one(i)
            except OSError as exc:
                with self.lock:
                    self.errors.append("connection %d: %r" % (i, exc))

    def run(self, timeout=60):
        t0 = time.monotonic()
        for t in self._threads:
            t.start()
        for t in self._threads:
            t.join(max(0.1, t0 + timeout - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            raise AssertionError("short clients still running after %ds" % timeout)
        return time.monotonic() - t0


class Workers(PoolTestCase):
    PREFIX = PREFIX

    @classmethod
    def setUpClass(cls):
        if WORKERS > 1 and not workers_supported():
            raise unittest.SkipTest("this lbd has no --workers (its --help does not name it); "
                                    "LBTEST_WORKERS=1 runs these tests single-threaded")
        super().setUpClass()

    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.etcd = Etcd(h).start()
        for pool, policy in POLICIES.items():
            cls.etcd.put(config_key(PREFIX, pool), json.dumps(policy))
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, list(POLICIES),
                      extra_args=worker_args() + ["--shutdown-grace", "2s"]).start()
        log = cls.lbd.log_text()
        for pool in POLICIES:
            if 'msg="policy applied" pool=%s ' % pool not in log:
                raise AssertionError("lbd ready without the policy of pool %s" % pool)
        figure("lbd worker count", "%d (%s)" % (WORKERS, " ".join(worker_args()) or "no flag"))

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    # -- helpers ---------------------------------------------------------

    def assert_every_worker_took_some(self, before, after, what):
        """With --workers N > 1, each worker accepted some of `what`."""
        if WORKERS < 2:
            return
        delta = worker_delta(before, after)
        figure("%s: per worker" % what, delta)
        self.assertEqual(set(delta), {str(w) for w in range(WORKERS)},
                         "%s{worker} labels" % WORKER_METRIC)
        self.assertTrue(all(v > 0 for v in delta.values()),
                        "a worker took none of %s: %s" % (what, delta))


    # -- 1 ---------------------------------------------------------------

    def test_1_backend_max_conns_holds_across_workers(self):
        pool = "cap"
        port = self.lbd.pool_port(pool)
        backend = self.add_backends(pool, ["m1"])["m1"]
        self.wait_active(pool, {"m1": 0})
        clients, rounds = 40, 10
        peak_metric = MetricPeak(self.lbd, "lbd_backend_active_connections", pool=pool,
                                 backend="m1")
        peak_metric.start()
        self.addCleanup(peak_metric.stop)
        for r in range(rounds):
            backend.reset_peak()
            no_backend = self.lbd.metric("lbd_pool_no_backend_total", pool=pool)
            workers_before = worker_counts(self.lbd) if WORKERS > 1 else None
            socks = connect_burst(port, clients)
            self.addCleanup(close_all, socks)
            outcomes = first_lines(socks, 5.0)
            kinds = collections.Counter(o[0][0] for o in outcomes.values())
            turned_away = [t for o, t in outcomes.values() if o[0] in ("eof", "reset")]
            served = [s for s, (o, _) in outcomes.items() if o[0] == "served"]
            figure("max_conns round %d: %d clients at once" % (r + 1, clients), dict(kinds))
            if turned_away:
                figure("max_conns round %d: turned away within" % (r + 1),
                       "%.3f" % max(turned_away), "s")
            self.assertEqual(kinds["hung"], 0, "clients neither served nor closed within 5 s")
            self.assertEqual(len(served), BACKEND_CAP,
                             "clients served at once by a backend with max_conns %d: %s"
                             % (BACKEND_CAP, dict(kinds)))
            for s in served:
                self.assertEqual(echo(s, HELLO), HELLO, "a served client's echo")
            wait_until(lambda: self.lbd.metric("lbd_pool_no_backend_total", pool=pool)
                       == no_backend + clients - BACKEND_CAP, scaled(3),
                       "lbd_pool_no_backend_total to count the %d turned away"
                       % (clients - BACKEND_CAP))
            self.assertEqual(self.lbd.metric("lbd_backend_active_connections", pool=pool,
                                             backend="m1"), BACKEND_CAP)
            self.assertLessEqual(backend.peak_active(), BACKEND_CAP,
                                 "connections the backend had open at once")
            if workers_before is not None:
                self.assert_every_worker_took_some(workers_before, worker_counts(self.lbd),
                                                   "max_conns round %d" % (r + 1))
            close_all(socks)
            wait_until(lambda: backend.active() == 0, scaled(5), "the backend to see all close")
            self.wait_active(pool, {"m1": 0})
        peak_metric.stop()
        figure("max_conns: backend's own peak (last round)", backend.peak_active())
        figure("max_conns: lbd_backend_active_connections peak",
               "%d over %d reads" % (peak_metric.peak, peak_metric.reads))
        self.assertEqual(peak_metric.errors, [])
        self.assertGreater(peak_metric.reads, 0)
        self.assertLessEqual(peak_metric.peak, BACKEND_CAP,
                             "lbd_backend_active_connections above max_conns")

    def test_1b_global_max_conns_holds_across_workers(self):
        cap, extra = 4, 20
        pool = "capg"
        self.etcd.put(config_key(CAP_PREFIX, pool), json.dumps({"health": NO_CHECKS}))
        lbd = Lbd(self.h, self.etcd.url, CAP_PREFIX, [pool], name="lbd-cap",
                  extra_args=worker_args() + ["--max-conns", str(cap)]).start()
        self.add_backends(pool, ["g1"], lbd=lbd, prefix=CAP_PREFIX)
        port = lbd.pool_port(pool)
        peak_metric = MetricPeak(lbd, "lbd_connections_active")
        peak_metric.start()
        self.addCleanup(peak_metric.stop)

        workers_before = worker_counts(lbd) if WORKERS > 1 else None
        socks = connect_burst(port, cap + extra)
        self.addCleanup(close_all, socks)
        # Every worker that finds the cap reached pauses; at least one must.
        wait_until(lambda: lbd.metric("lbd_accept_paused_total") >= 1, scaled(5),
                   "lbd to pause accepting at --max-conns %d" % cap)
        # The cap is reached: `cap` clients have their id line, no other has a byte.
        sel = selectors.DefaultSelector()
        state = {}  # socket -> "queued" | "served" | "closing" | "gone"
        bufs = {}
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            state[s], bufs[s] = "queued", b""
        most_open, served_order, problems = 0, [], []
        t0 = time.monotonic()
        waits = []  # seconds from a close to the next queued client served

        def pump(timeout):
            """One select round: ends first (a close lets the next in), then id lines."""
            nonlocal most_open
            events = [key.fileobj for key, _ in sel.select(timeout=timeout)]
            ends, lines = [], []
            for s in events:
                try:
                    data = s.recv(1)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = None
                (ends if not data else lines).append((s, data))
            for s, data in ends:
                if state[s] != "closing":
                    problems.append("a %s client was %s by lbd" % (state[s], "reset" if data is None
                                                                   else "closed"))
                state[s] = "gone"
                sel.unregister(s)
            for s, data in lines:
                if state[s] != "queued":
                    problems.append("bytes on a %s client" % state[s])
                    continue
                bufs[s] += data
                if bufs[s].endswith(b"\n"):
                    state[s] = "served"
                    served_order.append(time.monotonic())
            open_now = sum(1 for v in state.values() if v in ("served", "closing"))
            most_open = max(most_open, open_now)

        first = wait_until(lambda: pump(0.1) or sum(1 for v in state.values() if v == "served")
                           >= cap, 5.0, "%d clients served" % cap, interval=0.001)
        self.assertTrue(first)
        pump(0.2)  # watch 0.2 s longer: a client let in over the cap would show here
        served = [s for s, v in state.items() if v == "served"]
        figure("max-conns: first served of %d at once (cap %d)" % (cap + extra, cap), len(served))
        self.assertEqual(len(served), cap, "clients served before any closed, cap %d" % cap)
        self.assertEqual(lbd.metric("lbd_connections_active"), cap)

        # Release one at a time (FIN, then wait for lbd's end of it); each
        # release must let one more queued client in, whichever worker's
        # queue it waits in.
        while any(v in ("queued", "served") for v in state.values()):
            victim = next((s for s, v in state.items() if v == "served"), None)
            if victim is None:
                problems.append("queued clients left, none served to release")
                break
            state[victim] = "closing"
            victim.shutdown(socket.SHUT_WR)
            t_rel = time.monotonic()
            n_served = len(served_order)
            queued_left = sum(1 for v in state.values() if v == "queued")
            wait_until(lambda: pump(0.05) or (state[victim] == "gone" and
                                              (queued_left == 0 or len(served_order) > n_served)),
                       5.0, "a release to end and let the next queued client in (%d queued)"
                       % queued_left, interval=0.001)
            if queued_left:
                waits.append(served_order[n_served] - t_rel)
            self.assertLessEqual(most_open, cap, "clients open through lbd at once")
        sel.close()
        peak_metric.stop()
        figure("max-conns: every client served after", "%.3f" % (time.monotonic() - t0), "s")
        figure("max-conns: release -> next served, max", "%.3f" % max(waits), "s")
        figure("max-conns: most open at once (clients' count)", most_open)
        figure("max-conns: lbd_connections_active peak",
               "%d over %d reads" % (peak_metric.peak, peak_metric.reads))
        self.assertEqual(problems, [])
        self.assertEqual(len(served_order), cap + extra, "every queued client was served")
        self.assertLessEqual(most_open, cap)
        self.assertEqual(peak_metric.errors, [])
        self.assertLessEqual(peak_metric.peak, cap, "lbd_connections_active above --max-conns")
        if workers_before is not None:  # so clients waited in more than one worker's queue
            self.assert_every_worker_took_some(workers_before, worker_counts(lbd),
                                               "max-conns: clients served")
        wait_until(lambda: lbd.metric("lbd_connections_active") == 0, scaled(3),
                   "lbd_connections_active back to 0")
        lbd.stop(expect_rc=0)

    # -- 2 ---------------------------------------------------------------

    def test_2_drain_deadline_closes_connections_on_every_worker(self):
        pool = "drain"
        port = self.lbd.pool_port(pool)
        watch = self.h.spawn("lbctl-watch", [lbtest.lbctl_binary(), "--admin", self.lbd.admin,
                                             "-o", "json", "watch", pool])

        def watch_events():
            events = []
            for line in watch.log_text().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # the log's header line, or a line still being written
                if isinstance(event, dict):
                    events.append(event)
            return events

        # The watch says nothing until an event comes: change the policy
        # (retries only) until it reports one, then it is subscribed.
        probes = []

        def watch_subscribed():
            probes.append(1)
            policy = dict(POLICIES[pool], retries=2 + len(probes) % 2)
            self.etcd.put(config_key(PREFIX, pool), json.dumps(policy))
            return any(e["type"] == "policy_changed" for e in watch_events())

        wait_until(watch_subscribed, scaled(5), "lbctl watch to report a policy change",
                   interval=0.1)
        backends = self.add_backends(pool, ["d1", "d2"])
        wait_until(lambda: {"d1", "d2"} <= {e["id"] for e in watch_events()
                                            if e["type"] == "backend_added"},
                   scaled(5), "lbctl watch to report d1 and d2 added")
        workers_before = worker_counts(self.lbd) if WORKERS > 1 else None
        victims, others = [], []
        while len(victims) < 20 and len(victims) + len(others) < 200:
            s, bid = open_conn(port)
            self.addCleanup(s.close)
            self.assertIn(bid, ("d1", "d2"))
            (victims if bid == "d1" else others).append(s)
        self.assertEqual(len(victims), 20, "20 connections on d1")
        self.wait_active(pool, {"d1": 20, "d2": len(others)})
        self.assertEqual(backends["d1"].active(), 20)
        if workers_before is not None:
            self.assert_every_worker_took_some(workers_before, worker_counts(self.lbd),
                                               "drain: connections opened")

        t0 = time.monotonic()
        rc, out, err = self.lbd.ctl("drain", pool, "d1")
        t_ret = time.monotonic()
        self.assertEqual(rc, 0, "lbctl drain: %s %s" % (out, err))
        for s in victims:  # drained, not closed: they still work
            self.assertEqual(echo(s, b"after drain\n"), b"after drain\n")

        # socket -> (seconds after t0, "eof" | "reset")
        closed = watch_closes(victims, t0, t_ret + DRAIN_TIMEOUT + DRAIN_WINDOW + 2.0, poll=0.1)
        t_backend = wait_until(lambda: backends["d1"].active() == 0 and time.monotonic(),
                               max(0.1, t_ret + DRAIN_TIMEOUT + DRAIN_WINDOW + 0.5
                                   - time.monotonic()),
                               "d1 to see its connections end by drain_timeout + window + 0.5 s")
        times = sorted(t for t, _ in closed.values())
        figure("drain: lbctl drain took", "%.3f" % (t_ret - t0), "s")
        figure("drain: clients closed", "%d of %d %s" % (len(closed), len(victims),
               dict(collections.Counter(h for _, h in closed.values()))))
        if times:
            figure("drain: first / last close after lbctl drain",
                   "%.3f / %.3f" % (times[0], times[-1]), "s")
        figure("drain: d1 saw its last connection end after", "%.3f" % (t_backend - t0), "s")
        self.assertEqual(len(closed), len(victims), "drained connections still open at the deadline")
        self.assertGreaterEqual(times[0], DRAIN_TIMEOUT - 0.1,
                                "a drained connection closed before drain_timeout")
        self.assertLessEqual(times[-1], (t_ret - t0) + DRAIN_TIMEOUT + DRAIN_WINDOW + 0.5,
                             "connections open after drain_timeout + window + 0.5 s")

        for n, s in enumerate(others):
            payload = b"d2 still here %d\n" % n
            self.assertEqual(echo(s, payload), payload, "a connection on d2 after d1's deadline")
        wait_until(lambda: self.lbd.backends(pool)["d1"]["state"] == "drained", scaled(3),
                   "lbctl -o json backends to show d1 drained")
        listed = self.lbd.backends(pool)
        self.assertTrue(listed["d1"]["drain"], listed["d1"])
        self.assertEqual(listed["d1"]["active_connections"], 0, listed["d1"])
        self.assertFalse(listed["d2"]["drain"], listed["d2"])
        self.assertEqual(listed["d2"]["active_connections"], len(others))
        t_event = wait_until(lambda: any(e["type"] == "drained" and e["id"] == "d1"
                                         for e in watch_events()) and time.monotonic(),
                             scaled(3), "lbctl watch to report d1 drained")
        figure("drain: lbctl watch reported drained after", "%.3f" % (t_event - t0), "s")
        drained = [e for e in watch_events() if e["type"] == "drained" and e["id"] == "d1"]
        self.assertEqual(len(drained), 1, "one drained event for d1: %s" % drained)
        watch.stop(timeout=5)

    # -- 3 ---------------------------------------------------------------

    def start_term_lbd(self, grace):
        pool = "term"
        lbd = Lbd(self.h, self.etcd.url, TERM_PREFIX, [pool], name="lbd-grace-%s" % grace,
                  extra_args=worker_args() + ["--shutdown-grace", grace]).start()
        wait_until(lambda: {"t1", "t2"} <= set(lbd.backends(pool)), scaled(10),
                   "term backends listed")
        return lbd, lbd.pool_port(pool)

    def held_on_every_worker(self, lbd, port, n):
        before = worker_counts(lbd) if WORKERS > 1 else None
        held = self.held(port, n)
        if before is not None:
            self.assert_every_worker_took_some(before, worker_counts(lbd),
                                               "sigterm: connections held")
        return held

    def test_3_sigterm_waits_for_sessions_on_every_worker(self):
        self.etcd.put(config_key(TERM_PREFIX, "term"), json.dumps({"health": NO_CHECKS}))
        for i in ("t1", "t2"):
            self.put_backend("term", i, Backend(self.h, i).addr, prefix=TERM_PREFIX)

        # (a) grace 20 s: lbd waits for every connection, then exits 0.
        lbd, port = self.start_term_lbd("20s")
        held = self.held_on_every_worker(lbd, port, 20)
        t_sig = time.monotonic()
        lbd.proc.send_signal(signal.SIGTERM)
        t_503 = wait_until(lambda: lbd.http_get("/readyz", timeout=1)[0] == 503 and time.monotonic(),
                           scaled(5), "/readyz 503 after SIGTERM")

        def refused():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                return time.monotonic()
            return None

        t_refused = wait_until(refused, 1.0, "every listener to refuse after SIGTERM")
        # Data flows on every held connection for 2 s, lbd up all along.
        rounds, t_end = 0, time.monotonic() + 2.0
        while time.monotonic() < t_end:
            for n, (s, bid) in enumerate(held):
                payload = b"round %d conn %d\n" % (rounds, n)
                self.assertEqual(echo(s, payload), payload, "held connection %d on %s" % (n, bid))
            rounds += 1
            self.assertTrue(lbd.proc.alive(), "lbd exited with connections open")
            time.sleep(0.05)  # pacing between rounds, not a wait for a condition
        # Close them one by one; the others keep working until the last.
        while len(held) > 1:
            s, _ = held.pop()
            s.close()
            for n, (s2, bid) in enumerate(held):
                self.assertEqual(echo(s2, b"still\n"), b"still\n",
                                 "connection %d on %s with %d open" % (n, bid, len(held)))
            self.assertTrue(lbd.proc.alive(), "lbd exited with %d connections open" % len(held))
        t_last = time.monotonic()
        held.pop()[0].close()
        t_exit = wait_until(lambda: not lbd.proc.alive() and time.monotonic(), 2.0,
                            "lbd to exit after its last connection closed")
        rc = lbd.proc.wait(5)
        figure("sigterm: /readyz 503 after", "%.3f" % (t_503 - t_sig), "s")
        figure("sigterm: listeners refuse after", "%.3f" % (t_refused - t_sig), "s")
        figure("sigterm: echo rounds on 20 held connections", rounds)
        figure("sigterm: lbd exited after the last close", "%.3f (rc %s)" % (t_exit - t_last, rc), "s")
        self.assertEqual(rc, 0, "lbd exit code after SIGTERM:\n" + lbd.proc.log_tail(20))
        self.assertLessEqual(t_exit - t_last, 1.0, "lbd lingered after its last connection")
        log = lbd.log_text()
        self.assertIn("all connections finished, exiting", log)
        self.assertNotIn("grace period over", log)

        # (b) grace 2 s: what is still open on any worker is closed at its end.
        lbd, port = self.start_term_lbd("2s")
        held = self.held_on_every_worker(lbd, port, 24)
        t_sig = time.monotonic()
        lbd.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: lbd.http_get("/readyz", timeout=1)[0] == 503, scaled(5),
                   "/readyz 503 after SIGTERM")
        for s, bid in held:
            self.assertEqual(echo(s, b"in grace\n"), b"in grace\n")
        t_wait = time.monotonic()
        closes = first_lines([s for s, _ in held], 4.0)  # nothing more comes: an end each
        t_exit = wait_until(lambda: not lbd.proc.alive() and time.monotonic(), 4.0,
                            "lbd to exit after the grace period")
        rc = lbd.proc.wait(5)
        how = collections.Counter(o[0] for o, _ in closes.values())
        ends = sorted(t_wait - t_sig + t for _, t in closes.values())
        figure("sigterm grace 2s: how the held connections ended", dict(how))
        figure("sigterm grace 2s: first / last end after SIGTERM",
               "%.3f / %.3f" % (ends[0], ends[-1]), "s")
        figure("sigterm grace 2s: lbd exited after SIGTERM", "%.3f (rc %s)" % (t_exit - t_sig, rc),
               "s")
        self.assertEqual(set(how) - {"eof", "reset"}, set(),
                         "held connections not closed at the end of the grace: %s" % dict(how))
        self.assertGreaterEqual(ends[0], 1.9, "a connection closed before the 2 s grace was over")
        self.assertLessEqual(ends[-1], 3.0, "a connection still open long after the 2 s grace")
        self.assertEqual(rc, 0, "lbd exit code after the grace period:\n" + lbd.proc.log_tail(20))
        self.assertGreaterEqual(t_exit - t_sig, 1.9, "lbd exited before the 2 s grace was over")
        self.assertLessEqual(t_exit - t_sig, 3.5, "lbd still up long after the 2 s grace")
        self.assertIn("shutdown grace period over", lbd.log_text())

    # -- 4 ---------------------------------------------------------------

    def test_4_counters_are_the_sum_over_workers(self):
        pool = "count"
        port = self.lbd.pool_port(pool)
        ids = ["k1", "k2", "k3"]
        backends = self.add_backends(pool, ids)
        self.wait_active(pool, {i: 0 for i in ids})
        before = self.lbd.metrics()
        self.assertEqual(sum_metric(before, "lbd_pool_connections_total", pool=pool), 0)
        workers_before = worker_counts(self.lbd) if workers_supported() else None

        k = 400
        clients = ShortClients(port, k, threads=8)
        took = clients.run()
        figure("counters: %d short connections from 8 threads took" % k, "%.3f" % took, "s")
        figure("counters: served", dict(clients.served))
        figure("counters: bytes sent / received by the clients",
               "%d / %d" % (clients.sent, clients.received))
        self.assertEqual(clients.errors, [])
        self.assertEqual(sum(clients.served.values()), k)
        self.assertEqual(sum(b.count() for b in backends.values()), k)
        wait_until(lambda: self.lbd.metric("lbd_pool_active_connections", pool=pool) == 0,
                   scaled(5), "every session of pool %s to end" % pool)

        def totals():
            m = self.lbd.metrics()
            return {
                "pool connections": int(sum_metric(m, "lbd_pool_connections_total", pool=pool)),
                "backend connections": int(sum_metric(m, "lbd_backend_connections_total",
                                                      pool=pool)),
                "bytes in": int(sum_metric(m, "lbd_backend_bytes_in_total", pool=pool)),
                "bytes out": int(sum_metric(m, "lbd_backend_bytes_out_total", pool=pool)),
                "per backend": {i: int(sum_metric(m, "lbd_backend_connections_total", pool=pool,
                                                  backend=i)) for i in ids},
            }

        expected = {"pool connections": k, "backend connections": k,
                    "bytes in": clients.sent, "bytes out": clients.received,
                    "per backend": {i: backends[i].count() for i in ids}}
        try:
            wait_until(lambda: totals() == expected, 3.0, "the counters to settle")
        except lbtest.WaitTimeout:
            pass  # the assertion below says what differs
        got = totals()
        figure("counters: /metrics", got)
        self.assertEqual(got, expected, "/metrics against what clients and backends saw")
        self.assertEqual(dict(clients.served), expected["per backend"])

        listed = self.lbd.backends(pool)
        from_ctl = {
            "backend connections": sum(int(listed[i]["total_connections"]) for i in ids),
            "bytes in": sum(int(listed[i]["bytes_in"]) for i in ids),
            "bytes out": sum(int(listed[i]["bytes_out"]) for i in ids),
            "per backend": {i: int(listed[i]["total_connections"]) for i in ids},
        }
        self.assertEqual(from_ctl, {key: expected[key] for key in from_ctl},
                         "lbctl -o json backends against the clients")
        pools = {p["name"]: p for p in self.lbd.ctl_json("pools")["pools"]}
        self.assertEqual(int(pools[pool]["total_connections"]), k, pools[pool])
        self.assertEqual(int(pools[pool]["active_connections"]), 0, pools[pool])

        if workers_before is not None:
            delta = worker_delta(workers_before, worker_counts(self.lbd))
            figure("counters: %s per worker" % WORKER_METRIC, delta)
            self.assertEqual(sum(delta.values()), k, "the workers' counts add up to %d" % k)

    # -- 5 ---------------------------------------------------------------

    def test_5_every_worker_serves(self):
        if not workers_supported():
            self.skipTest("%s comes with --workers, which this lbd does not have" % WORKER_METRIC)
        pool = "spread"
        port = self.lbd.pool_port(pool)
        self.add_backends(pool, ["s1", "s2"])
        self.wait_active(pool, {"s1": 0, "s2": 0})
        before = worker_counts(self.lbd)
        pool_before = self.lbd.metric("lbd_pool_connections_total")
        k = 200
        clients = ShortClients(port, k, threads=4, seed=5)
        clients.run()
        self.assertEqual(clients.errors, [])
        wait_until(lambda: self.lbd.metric("lbd_pool_active_connections", pool=pool) == 0,
                   scaled(5), "every session of pool %s to end" % pool)
        after = worker_counts(self.lbd)
        delta = worker_delta(before, after)
        figure("spread: %d connections per worker" % k, delta)
        self.assertEqual(set(after), {str(w) for w in range(WORKERS)},
                         "%s has one sample per worker, labelled 0..%d" % (WORKER_METRIC,
                                                                           WORKERS - 1))
        for w in range(WORKERS):
            self.assertGreater(delta[str(w)], 0, "worker %d served none of %d" % (w, k))
            # SO_REUSEPORT hashes 4-tuples: each of N workers gets about k/N.
            self.assertGreaterEqual(delta[str(w)], k // (4 * WORKERS),
                                    "worker %d served far less than its share: %s" % (w, delta))
        self.assertEqual(sum(delta.values()), k, "the workers' counts add up to the connections")
        self.assertEqual(self.lbd.metric("lbd_pool_connections_total") - pool_before, k)


class WorkerFlagTest(unittest.TestCase):
    """--workers on the command line: help, bounds, one error line, exit codes."""

    def test_help_version_and_bad_counts(self):
        lbd = lbtest.lbd_binary()
        rc, out, err = lbtest.run([lbd, "--help"], timeout=10)
        self.assertEqual(rc, 0, err)  # once exited on SIGSEGV after printing, cutting the help
        self.assertIn("--workers", out)
        self.assertIn("--admin 127.0.0.1:9000 --http 127.0.0.1:9100", out, "help cut short")
        rc, out, err = lbtest.run([lbd, "--version"], timeout=10)
        self.assertEqual(rc, 0, err)
        for bad in ["999", "-1", "two"]:
            rc, out, err = lbtest.run([lbd, "--workers", bad, "--pool", "a=127.0.0.1:1",
                                       "--etcd", "http://127.0.0.1:1"], timeout=10)
            self.assertEqual(rc, 2, "--workers %s: %r" % (bad, err))
            lines = [ln for ln in err.splitlines() if ln.strip()]
            self.assertEqual(len(lines), 1, err)
            self.assertIn("--workers", lines[0])


if __name__ == "__main__":
    lbtest.main()
