#!/usr/bin/python3
"""The data plane under faults: what clients see when backends die, refuse,
drain, or lbd itself is told to stop.

One etcd and one lbd serve a pool per behaviour (so the tests do not share
backends or counters); the SIGTERM test starts lbds of its own.

  1. a backend killed mid-run is marked down by active checks
     (lbd_backend_healthy 0, lbd_pool_healthy_backends drops), its share
     moves to the survivors with no client failure, and it gets its share
     again when it comes back on the same port;
  2. a backend that refuses connections, with checks off, costs clients
     nothing: the failed connect is retried on another backend
     (lbd_pool_retries_total, lbd_backend_connect_failures_total);
  3. PROXY protocol v2 and v1: a backend parses the header lbd sends and
     finds the client's own address/port and lbd's listener in it; bytes
     after the header arrive intact;
  4. drain_timeout: drained connections stay open until the timeout, then
     are closed spread over the window (drain_timeout/10, at least 1 s);
     connections to other backends are untouched;
  5. SIGTERM: /readyz 503 at once, the listener refuses, open connections
     finish their exchanges untouched and lbd exits 0 as soon as they are
     done; with a short --shutdown-grace, a connection still open at its
     end is closed and lbd exits 0;
  6. wrr -> leastconn applied live through etcd: open connections keep
     echoing, new ones go to the least loaded backends until levels even out;
  7. max_conns: a client that finds every backend full is closed without
     reaching one (lbd_pool_no_backend_total); a freed slot takes the next;
     a client passed over 40 full backends is turned away or served, and
     lbd keeps running;
  8. --max-conns: at lbd's global cap accepting pauses (the next client
     waits in the kernel's queue, nothing is refused or reset), and resumes
     as soon as a connection closes.

The figures measured (time to ejection, closing spread, exit times) are
printed as "figure:" lines so a CI log shows them.
"""

import collections
import json
import os
import random
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, PoolTestCase, Lbd, ask, ask_many,  # noqa: E402
                    echo, figure, free_port, open_conn, recv_line_bytes, scaled, wait_until,
                    watch_closes)

PREFIX = "/dplane/"
TERM_PREFIX = "/dplane-term/"
CAP_PREFIX = "/dplane-cap/"

FAST_CHECKS = {"type": "tcp", "interval": "200ms", "timeout": "200ms", "rise": 1, "fall": 2}
NO_CHECKS = {"type": "none"}

# Pool -> policy written before lbd starts (the first listing applies it).
POLICIES = {
    "eject": {"health": FAST_CHECKS},
    # Checks off: only the retry path stands between a refusing backend and
    # the clients.  Passive ejection (after `fall` consecutive refused
    # connects) would hide the backend after 3; fall=50 keeps it in the
    # rotation long enough for many connections to need a retry.
    "retry": {"health": dict(NO_CHECKS, fall=50), "retries": 2},
    "pp2": {"health": NO_CHECKS, "proxy_protocol": "v2"},
    "pp1": {"health": NO_CHECKS, "proxy_protocol": "v1"},
    "drain": {"health": NO_CHECKS, "drain_timeout": "2s"},
    "algo": {"health": NO_CHECKS, "algorithm": "wrr"},
    "cap": {"health": NO_CHECKS, "max_conns": 2},
    "cap1": {"health": NO_CHECKS, "max_conns": 1},
}


def config_key(prefix, pool):
    return "%spools/%s/config" % (prefix, pool)


def wait_closed(sock, timeout):
    """Reads until the peer closes: ("eof" | "reset", monotonic time).  Raises on timeout."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return "eof", time.monotonic()
    except ConnectionResetError:
        return "reset", time.monotonic()


class Traffic(threading.Thread):
    """New connections to a port, paced (~100/s), each answer recorded."""

    def __init__(self, port):
        super().__init__(daemon=True, name="traffic-%d" % port)
        self.port = port
        self.answers = []  # (monotonic time, backend id | None | "error: ...")
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                got = ask(self.port, timeout=3)
            except OSError as exc:
                got = "error: %s" % exc
            self.answers.append((time.monotonic(), got))
            self._halt.wait(0.01)

    def stop(self):
        self._halt.set()
        self.join(10)


class ShortConnections(threading.Thread):
    """New connections one after another, each a full exchange: connect,
    read the backend id, echo a line, close.  Records
    (time connect() returned, outcome): "ok", "refused" or what went wrong."""

    def __init__(self, port, tag):
        super().__init__(daemon=True, name="short-%s" % tag)
        self.port = port
        self.tag = tag
        self.results = []
        self._halt = threading.Event()

    def one(self, n):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=3)
        except ConnectionRefusedError:
            return time.monotonic(), "refused"
        except OSError as exc:
            return time.monotonic(), "connect: %r" % exc
        connected = time.monotonic()
        with s:
            try:
                bid = lbtest.read_line(s)
                if bid is None:
                    return connected, "closed before the backend id"
                payload = b"%s %d\n" % (self.tag.encode(), n)
                got = echo(s, payload)
                return connected, "ok" if got == payload else "echo %r" % got
            except OSError as exc:
                return connected, "%r" % exc

    def run(self):
        n = 0
        while not self._halt.is_set():
            self.results.append(self.one(n))
            n += 1
            self._halt.wait(0.005)

    def stop(self):
        self._halt.set()
        self.join(10)


class ExchangeClient(threading.Thread):
    """One connection doing request/response echo exchanges for `duration`.

    Records every failure (reset, EOF, wrong bytes) instead of raising, and
    the time of its last exchange and of its close.
    """

    def __init__(self, port, duration, tag):
        super().__init__(daemon=True, name="exchange-%s" % tag)
        self.port = port
        self.duration = duration
        self.tag = tag
        self.connected = threading.Event()
        self.backend = None
        self.exchanges = 0
        self.errors = []
        self.closed_at = None

    def run(self):
        try:
            s, self.backend = open_conn(self.port, timeout=5)
        except OSError as exc:
            self.errors.append("connect: %r" % exc)
            self.connected.set()
            return
        self.connected.set()
        try:
            s.settimeout(5)
            end = time.monotonic() + self.duration
            n = 0
            while time.monotonic() < end:
                payload = ("%s-%d-" % (self.tag, n)).encode() + os.urandom(64).hex().encode() + b"\n"
                got = echo(s, payload)
                if got != payload:
                    self.errors.append("exchange %d: sent %d bytes, got back %d (%s)"
                                       % (n, len(payload), len(got),
                                          "EOF" if len(got) < len(payload) else "different bytes"))
                    return
                n += 1
                self.exchanges = n
                time.sleep(0.02)  # pacing between requests, not a wait for a condition
        except OSError as exc:
            self.errors.append("exchange %d: %r" % (self.exchanges, exc))
        finally:
            s.close()
            self.closed_at = time.monotonic()


class DataPlane(PoolTestCase):
    PREFIX = PREFIX

    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.etcd = Etcd(h).start()
        for pool, policy in POLICIES.items():
            cls.etcd.put(config_key(PREFIX, pool), json.dumps(policy))
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, list(POLICIES),
                      extra_args=["--shutdown-grace", "2s"]).start()
        # Ready means the first listing, policies included, is applied.
        log = cls.lbd.log_text()
        for pool in POLICIES:
            if 'msg="policy applied" pool=%s ' % pool not in log:
                raise AssertionError("lbd ready without the policy of pool %s" % pool)

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    # -- helpers ---------------------------------------------------------

    def wait_answering(self, pool, ids, lbd=None):
        """Every id has answered through lbd at least once."""
        lbd = lbd or self.lbd
        seen = set()
        wait_until(lambda: seen.add(ask(lbd.pool_port(pool))) or set(ids) <= seen, scaled(10),
                   "%s to answer through pool %s" % (sorted(ids), pool))

    def metric(self, name, **labels):
        return self.lbd.metric(name, **labels)


    # -- 1 ---------------------------------------------------------------

    def test_1_killed_backend_is_ejected_by_checks_and_its_share_moves(self):
        pool = "eject"
        port = self.lbd.pool_port(pool)
        ids = ["e1", "e2", "e3"]
        backends = self.add_backends(pool, ids)
        wait_until(lambda: all(self.metric("lbd_backend_healthy", pool=pool, backend=i) == 1
                               for i in ids), scaled(10), "checks to mark e1..e3 up")
        self.assertEqual(self.metric("lbd_pool_healthy_backends", pool=pool), 3)
        self.wait_answering(pool, ids)

        traffic = Traffic(port)
        traffic.start()
        self.addCleanup(traffic.stop)
        wait_until(lambda: len(traffic.answers) >= 20, scaled(10), "traffic through lbd")

        victim = backends["e3"]
        t_kill = time.monotonic()
        victim.kill()
        down_line = 'msg="backend is down" pool=%s backend=e3 ' % pool
        t_metric = wait_until(lambda: self.metric("lbd_backend_healthy", pool=pool, backend="e3") == 0
                              and time.monotonic(), scaled(5), "lbd_backend_healthy{e3} 0")
        wait_until(lambda: self.metric("lbd_pool_healthy_backends", pool=pool) == 2, scaled(5),
                   "lbd_pool_healthy_backends{%s} to drop to 2" % pool)
        t_checks = wait_until(lambda: down_line in self.lbd.log_text() and time.monotonic(),
                              scaled(5), "the active checks to log e3 down")
        traffic.stop()
        during = [a for t, a in traffic.answers if t >= t_kill]
        failed = [a for a in during if a not in ("e1", "e2", "e3")]
        figure("eject: /metrics shows e3 unhealthy after", "%.3f" % (t_metric - t_kill), "s")
        figure("eject: active checks logged e3 down after", "%.3f" % (t_checks - t_kill), "s")
        figure("eject: connections while e3 went down", "%d (%d failed: %s)"
               % (len(during), len(failed), collections.Counter(failed)))
        self.assertLessEqual(t_checks - t_kill, 2.0,
                             "interval 200ms, fall 2: checks should mark e3 down well within 2 s")

        counts = ask_many(port, 150)
        figure("eject: 150 connections after ejection", dict(counts))
        self.assertNotIn(None, counts, "client connections that failed after e3 was ejected")
        self.assertEqual(set(counts), {"e1", "e2"}, counts)
        for i in ("e1", "e2"):
            self.assertGreaterEqual(counts[i], 60, "the survivors share e3's load: %r" % counts)

        t_back = time.monotonic()
        victim.restart()
        t_up = wait_until(lambda: self.metric("lbd_backend_healthy", pool=pool, backend="e3") == 1
                          and time.monotonic(), scaled(5), "e3 up again")
        wait_until(lambda: self.metric("lbd_pool_healthy_backends", pool=pool) == 3, scaled(5),
                   "lbd_pool_healthy_backends{%s} back to 3" % pool)
        figure("eject: e3 up again after restart", "%.3f" % (t_up - t_back), "s")
        self.assertLessEqual(t_up - t_back, 2.0, "rise 1 every 200ms: e3 should be up within 2 s")
        counts = ask_many(port, 300)
        figure("eject: 300 connections after e3 returned", dict(counts))
        self.assertNotIn(None, counts)
        self.assertEqual(set(counts), set(ids), counts)
        for i in ids:
            self.assertLessEqual(abs(counts[i] - 100), 30, "shares after e3 returned: %r" % counts)

    # -- 2 ---------------------------------------------------------------

    def test_2_refusing_backend_costs_clients_nothing(self):
        pool = "retry"
        port = self.lbd.pool_port(pool)
        backends = {i: Backend(self.h, i) for i in ("r1", "r2")}
        dead_port = free_port()  # nothing listens here: connects are refused
        for i, b in backends.items():
            self.put_backend(pool, i, b.addr)
        self.put_backend(pool, "dead", "127.0.0.1:%d" % dead_port)
        # No probe traffic before the count (it would spend the dead
        # backend's failures): the listing is the snapshot the data path uses.
        wait_until(lambda: {"r1", "r2", "dead"} <= set(self.lbd.backends(pool)), scaled(10),
                   "lbctl backends %s to list r1, r2, dead" % pool)
        wait_until(lambda: self.metric("lbd_pool_eligible_backends", pool=pool) == 3, scaled(5),
                   "three eligible backends")

        def snapshot():
            return {
                "pool_retries": self.metric("lbd_pool_retries_total", pool=pool),
                "dead_failures": self.metric("lbd_backend_connect_failures_total", pool=pool,
                                             backend="dead"),
                "dead_retries": self.metric("lbd_backend_retries_total", pool=pool, backend="dead"),
                "dead_connections": self.metric("lbd_backend_connections_total", pool=pool,
                                                backend="dead"),
                "no_backend": self.metric("lbd_pool_no_backend_total", pool=pool),
            }

        before = snapshot()
        t0 = time.monotonic()
        counts = ask_many(port, 300)
        elapsed = time.monotonic() - t0
        after = snapshot()
        delta = {k: after[k] - before[k] for k in before}
        figure("retry: 300 connections answered by", dict(counts))
        figure("retry: counter increases", delta)
        figure("retry: 300 connections took", "%.3f" % elapsed, "s")
        self.assertNotIn(None, counts, "clients that got no backend: %r" % counts)
        self.assertEqual(sum(counts.values()), 300)
        self.assertEqual(set(counts), {"r1", "r2"}, counts)
        self.assertGreater(delta["dead_failures"], 0, "no refused connect was counted: %r" % delta)
        self.assertGreater(delta["pool_retries"], 0, "no retry was counted: %r" % delta)
        # Only `dead` ever fails, and it is tried first at most once per client.
        self.assertEqual(delta["pool_retries"], delta["dead_failures"], delta)
        self.assertEqual(delta["dead_retries"], delta["dead_failures"], delta)
        self.assertEqual(delta["dead_connections"], 0, delta)
        self.assertEqual(delta["no_backend"], 0, delta)

    # -- 3 ---------------------------------------------------------------

    def proxy_header_round_trips(self, pool, version):
        port = self.lbd.pool_port(pool)
        backend_id = "pp-%s" % version
        self.add_backends(pool, [backend_id], proxy_header=True)

        def answers():
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                line = recv_line_bytes(s)
                return line and json.loads(line).get("id") == backend_id

        wait_until(answers, scaled(10), "%s to answer through pool %s" % (backend_id, pool))

        for n in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                src = s.getsockname()
                dst = s.getpeername()
                # Bytes the client sends before lbd has even connected must
                # come after the header, not before or inside it.
                early = ("early %d from %s:%d\n" % (n, src[0], src[1])).encode() * 20
                s.sendall(early)
                line = recv_line_bytes(s)
                self.assertIsNotNone(line, "the backend closed before answering")
                info = json.loads(line)
                self.assertNotIn("error", info, "the backend could not parse the header: %r" % info)
                if n == 0:
                    figure("proxy %s: header as parsed" % version,
                           {k: info[k] for k in ("family", "src", "dst", "command", "length", "line")
                            if k in info})
                self.assertEqual(info["version"], int(version[1]), info)
                self.assertEqual(info["family"], "TCP4", info)
                self.assertEqual(info["src"], [src[0], src[1]],
                                 "source in the header vs the client's getsockname()")
                self.assertEqual(info["dst"], [dst[0], dst[1]],
                                 "destination in the header vs lbd's listener")
                self.assertEqual(dst, ("127.0.0.1", port))
                if version == "v2":
                    self.assertEqual(info["command"], "PROXY", info)
                    self.assertEqual(info["length"], 12, info)
                else:
                    self.assertEqual(info["line"], "PROXY TCP4 %s %s %d %d\r\n"
                                     % (src[0], dst[0], src[1], dst[1]), info)
                got = b""
                while len(got) < len(early):
                    chunk = s.recv(len(early) - len(got))
                    if not chunk:
                        break
                    got += chunk
                self.assertEqual(got, early, "bytes sent right after connect, echoed")
                payload = random.Random(n).randbytes(64 * 1024)
                self.assertEqual(echo(s, payload), payload, "64 KiB after the header, echoed")

    def test_3a_proxy_protocol_v2_header_reaches_the_backend(self):
        self.proxy_header_round_trips("pp2", "v2")

    def test_3b_proxy_protocol_v1_header_reaches_the_backend(self):
        self.proxy_header_round_trips("pp1", "v1")

    # -- 4 ---------------------------------------------------------------

    def test_4_drain_timeout_closes_remaining_connections_over_the_window(self):
        pool = "drain"
        port = self.lbd.pool_port(pool)
        self.add_backends(pool, ["d1", "d2"])
        self.wait_answering(pool, ["d1", "d2"])
        victims, others = [], []  # connections on d1 (to be drained), on d2
        while len(victims) < 20 and len(others) < 100:
            s, bid = open_conn(port)
            self.addCleanup(s.close)
            self.assertIn(bid, ("d1", "d2"))
            (victims if bid == "d1" else others).append(s)
        self.assertGreater(len(others), 0)
        self.assertEqual(len(victims), 20, "20 connections on d1")
        self.wait_active(pool, {"d1": 20, "d2": len(others)})

        t0 = time.monotonic()
        rc, out, err = self.lbd.ctl("drain", pool, "d1")
        t_ret = time.monotonic()
        self.assertEqual(rc, 0, "lbctl drain: %s %s" % (out, err))
        figure("drain: lbctl drain took", "%.3f" % (t_ret - t0), "s")
        for s in victims:  # drained, not closed: they still work
            self.assertEqual(echo(s, b"after drain\n"), b"after drain\n")

        # socket -> (seconds after t0, "eof" | "reset")
        closed = watch_closes(victims, t0, t0 + 8.0, poll=0.2)
        times = sorted(t for t, _ in closed.values())
        self.assertEqual(len(closed), 20, "connections on d1 closed by the drain deadline: %d of 20"
                         % len(closed))
        spread = times[-1] - times[0]
        figure("drain: first close after lbctl drain", "%.3f" % times[0], "s")
        figure("drain: last close after lbctl drain", "%.3f" % times[-1], "s")
        figure("drain: first-to-last spread (window 1 s)", "%.3f" % spread, "s")
        figure("drain: how they were closed", dict(collections.Counter(h for _, h in closed.values())))
        self.assertGreaterEqual(times[0], 1.9, "a drained connection closed before drain_timeout 2s")
        self.assertLessEqual(times[-1] - (t_ret - t0), 2.0 + 1.0 + 0.5,
                             "connections still open after drain_timeout + window")
        self.assertGreaterEqual(spread, 0.5, "closes not spread over the window: %s"
                                % ["%.3f" % t for t in times])
        self.assertLessEqual(spread, 1.5, "closes spread wider than the 1 s window")

        for n, s in enumerate(others):
            payload = b"d2 still here %d\n" % n
            self.assertEqual(echo(s, payload), payload, "a connection on d2 after d1's drain deadline")
        listed = self.lbd.backends(pool)
        self.assertTrue(listed["d1"]["drain"], listed["d1"])
        wait_until(lambda: self.lbd.backends(pool)["d1"]["state"] == "drained", scaled(3),
                   "lbctl backends to show d1 drained")
        self.assertFalse(listed["d2"]["drain"], listed["d2"])
        self.assertEqual(self.lbd.backends(pool)["d2"]["active_connections"], len(others))

    # -- 5 ---------------------------------------------------------------

    def start_term_lbd(self, grace, ids):
        pool = "term"
        lbd = Lbd(self.h, self.etcd.url, TERM_PREFIX, [pool], name="lbd-grace-%s" % grace,
                  extra_args=["--shutdown-grace", grace]).start()
        wait_until(lambda: set(ids) <= set(lbd.backends(pool)), scaled(10), "term backends listed")
        self.wait_answering(pool, ids, lbd=lbd)
        return lbd, lbd.pool_port(pool)

    def test_5_sigterm_lets_open_connections_finish_then_exits_0(self):
        ids = ["t1", "t2"]
        self.etcd.put(config_key(TERM_PREFIX, "term"), json.dumps({"health": NO_CHECKS}))
        backends = {i: Backend(self.h, i) for i in ids}
        for i, b in backends.items():
            self.put_backend("term", i, b.addr, prefix=TERM_PREFIX)

        # (a) grace 5s: everything finishes well before it.
        lbd, port = self.start_term_lbd("5s", ids)
        # Load: short connections arriving all the time, before and after SIGTERM.
        shorts = [ShortConnections(port, "s%d" % n) for n in range(2)]
        for t in shorts:
            t.start()
            self.addCleanup(t.stop)
        wait_until(lambda: all(len(t.results) >= 10 for t in shorts), scaled(10),
                   "short connections flowing")
        clients = [ExchangeClient(port, 1.0 + 0.1 * n, "c%d" % n) for n in range(8)]
        for c in clients:
            c.start()
            self.addCleanup(c.join, 10)
        for c in clients:
            self.assertTrue(c.connected.wait(scaled(10)), "client %s connected" % c.tag)
        wait_until(lambda: all(c.exchanges >= 5 for c in clients) or
                   any(c.errors for c in clients), scaled(10), "clients mid-exchange")
        self.assertEqual([c.errors for c in clients if c.errors], [])

        t_sig = time.monotonic()
        lbd.proc.send_signal(signal.SIGTERM)
        t_503 = wait_until(lambda: lbd.http_get("/readyz", timeout=1)[0] == 503 and time.monotonic(),
                           scaled(5), "/readyz 503 after SIGTERM")
        self.assertTrue(lbd.proc.alive(), "lbd exited before its connections finished")
        with self.assertRaises(ConnectionRefusedError, msg="a new connection after SIGTERM"):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        t_refused = time.monotonic()
        busy = sum(1 for c in clients if c.closed_at is None)
        wait_until(lambda: all(any(r[1] == "refused" and r[0] > t_refused for r in t.results)
                               for t in shorts), scaled(5), "short connections refused")
        for t in shorts:
            t.stop()
        short = [r for t in shorts for r in t.results]
        before_sig = [r for r in short if r[0] < t_sig]
        after_sig = collections.Counter(r[1] for r in short if r[0] >= t_sig)
        figure("sigterm: short connections made before SIGTERM",
               dict(collections.Counter(r[1] for r in before_sig)))
        figure("sigterm: short connection attempts after SIGTERM", dict(after_sig))
        self.assertEqual([r for r in before_sig if r[1] != "ok"], [],
                         "short connections established before SIGTERM that failed")
        for c in clients:
            c.join(scaled(10))
        t_exit = wait_until(lambda: not lbd.proc.alive() and time.monotonic(), 6.0,
                            "lbd to exit after its last connection closed")
        rc = lbd.proc.wait(5)
        last_close = max(c.closed_at for c in clients)
        figure("sigterm: /readyz 503 after", "%.3f" % (t_503 - t_sig), "s")
        figure("sigterm: new connection refused by", "%.3f" % (t_refused - t_sig), "s")
        figure("sigterm: clients mid-exchange at SIGTERM", "%d of %d" % (busy, len(clients)))
        figure("sigterm: exchanges per client", [c.exchanges for c in clients])
        figure("sigterm: last client closed after SIGTERM", "%.3f" % (last_close - t_sig), "s")
        figure("sigterm: lbd exited after SIGTERM", "%.3f (rc %s)" % (t_exit - t_sig, rc), "s")
        figure("sigterm: lbd exited after the last close", "%.3f" % (t_exit - last_close), "s")
        self.assertEqual([(c.tag, c.errors) for c in clients if c.errors], [],
                         "connections opened before SIGTERM that did not finish cleanly")
        self.assertEqual(busy, len(clients), "every client was still exchanging at SIGTERM")
        self.assertLessEqual(t_503 - t_sig, 0.5, "/readyz still 200 after SIGTERM")
        self.assertEqual(rc, 0, "lbd exit code after SIGTERM:\n" + lbd.proc.log_tail(20))
        self.assertLessEqual(t_exit - last_close, 1.0, "lbd lingered after its last connection")
        self.assertLess(t_exit - t_sig, 4.0, "lbd should exit well before the 5 s grace")
        log = lbd.log_text()
        self.assertIn("all connections finished, exiting", log)
        self.assertNotIn("grace period over", log)

        # (b) grace 1s: a connection still open at its end is closed.
        lbd, port = self.start_term_lbd("1s", ids)
        held = self.held(port, 3)
        t_sig = time.monotonic()
        lbd.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: lbd.http_get("/readyz", timeout=1)[0] == 503, scaled(5),
                   "/readyz 503 after SIGTERM")
        for s, bid in held:  # still served during the grace period
            self.assertEqual(echo(s, b"in grace\n"), b"in grace\n")
        closes = [wait_closed(s, 5.0) for s, _ in held]
        t_exit = wait_until(lambda: not lbd.proc.alive() and time.monotonic(), 5.0,
                            "lbd to exit after the grace period")
        rc = lbd.proc.wait(5)
        after = [t - t_sig for _, t in closes]
        figure("sigterm grace 1s: held connections closed after", ["%.3f" % t for t in after], "s")
        figure("sigterm grace 1s: how", [how for how, _ in closes])
        figure("sigterm grace 1s: lbd exited after SIGTERM", "%.3f (rc %s)" % (t_exit - t_sig, rc), "s")
        self.assertEqual(rc, 0, "lbd exit code after the grace period:\n" + lbd.proc.log_tail(20))
        for t in after:
            self.assertGreaterEqual(t, 0.9, "closed before the 1 s grace was over")
            self.assertLessEqual(t, 2.0, "still open long after the 1 s grace")
        self.assertLessEqual(t_exit - t_sig, 3.0)
        self.assertIn("shutdown grace period over", lbd.log_text())

    # -- 6 ---------------------------------------------------------------

    def test_6_wrr_to_leastconn_applied_live(self):
        pool = "algo"
        port = self.lbd.pool_port(pool)
        ids = ["a1", "a2", "a3"]
        self.add_backends(pool, ids)
        self.wait_answering(pool, ids)
        held = self.held(port, 6)
        level = collections.Counter(bid for _, bid in held)
        self.wait_active(pool, {i: level[i] for i in ids})

        def algorithm():
            pools = {p["name"]: p for p in self.lbd.ctl_json("pools")["pools"]}
            return pools[pool]["algorithm"]

        self.assertEqual(algorithm(), "wrr")
        t0 = time.monotonic()
        self.etcd.put(config_key(PREFIX, pool), json.dumps({"health": NO_CHECKS,
                                                            "algorithm": "leastconn"}))
        wait_until(lambda: algorithm() == "leastconn", scaled(5), "lbctl pools to show leastconn")
        figure("leastconn: lbctl pools shows it after", "%.3f" % (time.monotonic() - t0), "s")
        for n, (s, bid) in enumerate(held):
            payload = b"after the policy change %d\n" % n
            self.assertEqual(echo(s, payload), payload, "connection %d on %s" % (n, bid))

        # Load a1: with a2 and a3 drained here only, 6 new connections go to a1.
        for i in ("a2", "a3"):
            rc, out, err = self.lbd.ctl("drain", pool, i, "--local")
            self.assertEqual(rc, 0, err)
        more = self.held(port, 6)
        self.assertEqual({bid for _, bid in more}, {"a1"}, "with a2, a3 drained")
        held += more
        for i in ("a2", "a3"):
            rc, out, err = self.lbd.ctl("undrain", pool, i, "--local")
            self.assertEqual(rc, 0, err)
        level = collections.Counter(bid for _, bid in held)
        self.wait_active(pool, {i: level[i] for i in ids})
        start = dict(level)

        # Every new connection must go to a backend with the fewest active.
        picks = []
        target = max(level.values()) + 1
        while min(level.values()) < target:
            fewest = min(level.values())
            s, bid = open_conn(port)
            self.addCleanup(s.close)
            held.append((s, bid))
            picks.append(bid)
            self.assertIn(bid, ids)
            self.assertEqual(level[bid], fewest, "connection %d went to %s with %d active while "
                             "levels were %s" % (len(picks), bid, level[bid], dict(level)))
            level[bid] += 1
        figure("leastconn: levels before / after", "%s / %s" % (start, dict(level)))
        figure("leastconn: picks", "".join(p[-1] for p in picks))
        self.assertEqual(set(level.values()), {target}, "levels evened out")
        self.wait_active(pool, dict(level))
        for n, (s, bid) in enumerate(held):
            payload = b"still here %d\n" % n
            self.assertEqual(echo(s, payload), payload, "held connection %d on %s" % (n, bid))

    # -- 7 ---------------------------------------------------------------

    def test_7_max_conns_turns_away_the_client_beyond_every_backend_cap(self):
        pool = "cap"
        port = self.lbd.pool_port(pool)
        backends = self.add_backends(pool, ["c1", "c2"])
        self.wait_answering(pool, ["c1", "c2"])
        self.wait_active(pool, {"c1": 0, "c2": 0})
        held = self.held(port, 4)
        self.assertEqual(collections.Counter(bid for _, bid in held), {"c1": 2, "c2": 2})

        accepted = {i: b.accepted for i, b in backends.items()}
        no_backend = self.metric("lbd_pool_no_backend_total", pool=pool)
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            how, t_closed = wait_closed(s, 5.0)
        figure("max_conns: 5th client closed by lbd after", "%.3f (%s)" % (t_closed - t0, how), "s")
        self.assertEqual({i: b.accepted for i, b in backends.items()}, accepted,
                         "the 5th connection reached a backend")
        wait_until(lambda: self.metric("lbd_pool_no_backend_total", pool=pool) == no_backend + 1,
                   scaled(3), "lbd_pool_no_backend_total to count the 5th client")
        for s, bid in held:
            self.assertEqual(echo(s, b"still mine\n"), b"still mine\n")

        s, bid = held.pop(0)
        s.close()
        self.wait_active(pool, {"c1": 2 if bid == "c2" else 1, "c2": 2 if bid == "c1" else 1})
        s, again = open_conn(port)
        self.addCleanup(s.close)
        figure("max_conns: freed slot on %s taken by" % bid, again)
        self.assertEqual(again, bid, "the new connection takes the freed slot")

    def test_7b_max_conns_client_passed_over_many_full_backends(self):
        # 41 backends at max_conns 1, every one full but the last in the
        # round-robin order: the algorithm passes over the 40 full ones and
        # the client is served by the free one.
        pool = "cap1"
        port = self.lbd.pool_port(pool)
        ids = ["m%02d" % n for n in range(41)]
        self.add_backends(pool, ids)
        self.wait_active(pool, {i: 0 for i in ids})
        held = self.held(port, 41)
        self.assertEqual(len({bid for _, bid in held}), 41, "one connection per backend")
        s, freed = held.pop()  # the last one: first again in the next round
        s.close()
        self.wait_active(pool, {i: int(i != freed) for i in ids})
        no_backend = self.metric("lbd_pool_no_backend_total", pool=pool)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            got = lbtest.read_line(s)
        figure("max_conns: client after 40 full backends got", got)
        try:
            healthz = self.lbd.http_get("/healthz")[0]
        except OSError as exc:
            healthz = exc
        self.assertEqual(healthz, 200, "lbd after a client passed over 40 full backends:\n"
                         + self.lbd.proc.log_tail(30))
        self.assertEqual(got, freed, "the client goes to the one backend with room")
        self.assertEqual(self.metric("lbd_pool_no_backend_total", pool=pool), no_backend)
        for s, bid in held[:3]:
            self.assertEqual(echo(s, b"still here\n"), b"still here\n")
        s, bid = held.pop(0)
        s.close()
        self.wait_active(pool, {i: int(i not in (freed, bid)) for i in ids})
        s, again = open_conn(port)
        self.addCleanup(s.close)
        self.assertIn(again, (freed, bid), "a client finds the free slots")

    # -- 8 ---------------------------------------------------------------

    def test_8_global_connection_cap_pauses_accepting(self):
        pool = "capg"
        self.etcd.put(config_key(CAP_PREFIX, pool), json.dumps({"health": NO_CHECKS}))
        lbd = Lbd(self.h, self.etcd.url, CAP_PREFIX, [pool], name="lbd-cap",
                  extra_args=["--max-conns", "3"]).start()
        self.add_backends(pool, ["g1"], lbd=lbd, prefix=CAP_PREFIX)
        port = lbd.pool_port(pool)
        held = self.held(port, 3)
        self.assertEqual([bid for _, bid in held], ["g1"] * 3)

        # The 4th handshake completes in the kernel; lbd leaves it queued.
        waiting = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(waiting.close)
        wait_until(lambda: lbd.metric("lbd_accept_paused_total") >= 1, scaled(5),
                   "lbd to pause accepting at --max-conns 3")
        self.assertEqual(lbd.metric("lbd_connections_active"), 3)
        waiting.setblocking(False)
        with self.assertRaises(BlockingIOError, msg="the 4th client was served above the cap"):
            waiting.recv(64)
        waiting.setblocking(True)
        self.assertTrue(lbd.proc.alive())

        t0 = time.monotonic()
        s, _ = held.pop()
        s.close()
        got = lbtest.read_line(waiting)
        figure("max-conns: queued client served after a close", "%.3f" % (time.monotonic() - t0),
               "s")
        self.assertEqual(got, "g1", "the queued client, once a slot freed")
        for s, _ in held:
            self.assertEqual(echo(s, b"under the cap\n"), b"under the cap\n")
            s.close()
        waiting.close()
        lbd.stop(expect_rc=0)


if __name__ == "__main__":
    lbtest.main()
