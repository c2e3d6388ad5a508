#!/usr/bin/python3
"""Orders of ordinary events that once crashed, froze or leaked in lbd.

Each test replays one sequence with a real etcd, real backends and the
real lbd, and proves what must hold instead:

  - the first client of a pool with no backend is closed cleanly, for
    every algorithm, and lbd keeps serving;
  - a backend ejected by passive detection and then removed (its lease
    expires) while the ejection timer runs: nothing fires on it afterwards;
  - a backend removed while connects to it are in flight, which then fail:
    it is not ejected, nothing starts on it;
  - a policy change while a backend is ejected: the loop stays sane (no
    spinning, no memory growth) and the ejection ends on time;
  - a client that resets while its backend stopped reading: the session
    and its sockets are freed at once, not at the idle timeout;
  - a backend whose address is one of lbd's own ports gets no traffic, and
    --backend-networks refuses what lies outside it;
  - a backend's reset reaches the client as a reset, not a clean close;
  - at the global connection cap, the pause is logged once a second, not
    once per close;
  - signals other daemons use (SIGUSR1: nginx reopens logs, HAProxy stops
    softly; SIGALRM, ...) do not kill lbd nor its connections: one line
    each, naming the signals lbd does use.

lbd runs under the sanitizers in CI: a use-after-free here is a test
failure, not a flake.
"""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import Etcd, HarnessTestCase, Lbd, ask, scaled, wait_until  # noqa: E402

PREFIX = "/life/"
NO_CHECKS = {"type": "none"}
ALGORITHMS = ["wrr", "leastconn", "p2c", "maglev"]


def config_key(pool):
    return "%spools/%s/config" % (PREFIX, pool)


def backend_key(pool, bid):
    return "%spools/%s/backends/%s" % (PREFIX, pool, bid)


def proc_cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def proc_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def closed_cleanly(port, timeout=5.0):
    """Connects and reads until the peer closes: "eof", "reset" or "data"."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            data = s.recv(64)
        except ConnectionResetError:
            return "reset"
        return "eof" if not data else "data"


def refusing_port():
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Blackhole:
    """A listener that accepts nothing: its queue is full, so SYNs are dropped
    and connects to it hang until the connecting side gives up."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.1)  # let the handshakes that can complete complete

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


class DeafBackend(threading.Thread):
    """Accepts and never reads (nor writes): the stop-reading backend."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class ResettingBackend(threading.Thread):
    """Sends a line, then resets the connection (SO_LINGER 0)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.sendall(b"partial\n")
            time.sleep(0.2)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()

    def close(self):
        self.sock.close()


class LifecycleTest(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.etcd = Etcd(cls.h).start()
        # "empty" has no key at all, as on a fresh install before the first backend.
        for pool in ["eject", "inflight", "policy", "deaf", "own", "reset", "sig"]:
            cls.etcd.put(config_key(pool), json.dumps({"health": NO_CHECKS, "retries": 0}))
        cls.lbd = Lbd(cls.h, cls.etcd.url, PREFIX,
                      ["empty", "eject", "inflight", "policy", "deaf", "own", "reset",
                       "sig"]).start()
        cls.pid = cls.lbd.proc.popen.pid

    def assert_alive(self):
        self.assertTrue(self.lbd.proc.alive(), "lbd died:\n%s" % self.lbd.proc.log_tail(60))
        status, _ = self.lbd.http_get("/healthz", timeout=1.0)
        self.assertEqual(status, 200)

    def put_backend(self, pool, bid, addr, weight=100, lease=None):
        self.etcd.put(backend_key(pool, bid), json.dumps({"addr": addr, "weight": weight}),
                      lease=lease)

    def wait_backends(self, pool, ids):
        wait_until(lambda: set(self.lbd.backends(pool)) == set(ids), scaled(10),
                   "backends of %s to be %s" % (pool, sorted(ids)))

    def ejected(self, pool, bid):
        b = self.lbd.backends(pool).get(bid)
        return b is not None and b.get("health") == "down"

    def test_first_client_of_an_empty_pool_is_closed_cleanly(self):
        self.assertIn(closed_cleanly(self.lbd.pool_port("empty")), ("eof", "reset"))
        self.assert_alive()
        for algo in ALGORITHMS:
            self.etcd.put(config_key("empty"), json.dumps({"health": NO_CHECKS,
                                                            "algorithm": algo}))
            wait_until(lambda: self.lbd.metric("lbd_pool_backends", pool="empty") == 0 and
                       algo in self.lbd.log_text(), scaled(10), "policy %s applied" % algo)
            before = self.lbd.metric("lbd_pool_no_backend_total", pool="empty")
            self.assertIn(closed_cleanly(self.lbd.pool_port("empty")), ("eof", "reset"))
            self.assert_alive()
            self.assertEqual(self.lbd.metric("lbd_pool_no_backend_total", pool="empty"),
                             before + 1)
        # and it fills: a backend registered now gets the next client
        b = lbtest.Backend(self.h, "e1")
        self.put_backend("empty", "e1", b.addr)
        wait_until(lambda: ask(self.lbd.pool_port("empty")) == "e1", scaled(10),
                   "the new backend to answer")

    def eject(self, pool, bid):
        """Three failed connects eject bid (fall defaults to 3)."""
        for _ in range(3):
            self.assertIn(closed_cleanly(self.lbd.pool_port(pool)), ("eof", "reset"))
        wait_until(lambda: self.ejected(pool, bid), scaled(5), "%s ejected" % bid)

    def test_foreign_signals_are_logged_not_fatal(self):
        import signal
        b = lbtest.Backend(self.h, "sig")
        self.put_backend("sig", "sig", b.addr)
        wait_until(lambda: ask(self.lbd.pool_port("sig")) == "sig", scaled(10),
                   "the backend to answer")
        held = socket.create_connection(("127.0.0.1", self.lbd.pool_port("sig")),
                                        timeout=scaled(5))
        self.addCleanup(held.close)
        self.assertEqual(lbtest.recv_line_bytes(held), b"sig\n")  # the backend's greeting
        for sig in ("SIGUSR1", "SIGALRM", "SIGVTALRM", "SIGIO", "SIGPWR"):
            os.kill(self.pid, getattr(signal, sig))
            wait_until(lambda: "msg=\"%s ignored: lbd stops gracefully on SIGTERM" % sig
                       in self.lbd.log_text(), scaled(5), "the %s line" % sig)
            self.assert_alive()
        self.assertEqual(ask(self.lbd.pool_port("sig")), "sig")
        held.sendall(b"x")  # the held connection is still proxied
        self.assertEqual(held.recv(16), b"x")

    def test_backend_ejected_then_removed_fires_nothing_afterwards(self):
        lease = self.etcd.grant(2)
        self.put_backend("eject", "gone", "127.0.0.1:%d" % refusing_port(), lease=lease)
        self.wait_backends("eject", ["gone"])
        self.eject("eject", "gone")
        # The lease runs out while the 5 s ejection timer is pending.
        wait_until(lambda: not self.lbd.backends("eject"), scaled(10), "the lease to expire")
        # The ejection period ends: a timer left on the freed backend would fire now.
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            self.assert_alive()
            time.sleep(0.25)
        b = lbtest.Backend(self.h, "next")
        self.put_backend("eject", "next", b.addr)
        wait_until(lambda: ask(self.lbd.pool_port("eject")) == "next", scaled(10),
                   "a new backend to serve")

    def test_backend_removed_with_connects_in_flight_is_not_ejected(self):
        hole = Blackhole()
        try:
            self.etcd.put(config_key("inflight"), json.dumps(
                {"health": NO_CHECKS, "retries": 0, "connect_timeout": "1500ms"}))
            self.put_backend("inflight", "hole", "127.0.0.1:%d" % hole.port)
            self.wait_backends("inflight", ["hole"])
            results = []

            def client():
                try:
                    results.append(closed_cleanly(self.lbd.pool_port("inflight"), timeout=10))
                except OSError as exc:
                    results.append(repr(exc))

            threads = [threading.Thread(target=client) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            self.etcd.delete(backend_key("inflight", "hole"))
            for t in threads:
                t.join(15)
            self.assertEqual(sorted(results), ["eof"] * 3)
            # An ejection started on the retired backend would fire 5 s later.
            deadline = time.monotonic() + 6.0
            while time.monotonic() < deadline:
                self.assert_alive()
                time.sleep(0.25)
            self.assertNotIn("backend ejected", self.lbd.log_text().split("backend=hole")[-1])
        finally:
            hole.close()

    def test_policy_change_while_ejected_keeps_the_loop_sane(self):
        good = lbtest.Backend(self.h, "good")
        self.etcd.put(config_key("policy"), json.dumps({"health": NO_CHECKS, "retries": 0,
                                                        "algorithm": "maglev"}))
        self.put_backend("policy", "bad", "127.0.0.1:%d" % refusing_port())
        self.wait_backends("policy", ["bad"])
        ejected_at = time.monotonic()
        self.eject("policy", "bad")
        self.put_backend("policy", "good", good.addr)
        for algo in ALGORITHMS + ["wrr"]:
            self.etcd.put(config_key("policy"), json.dumps(
                {"health": {"type": "tcp", "interval": "1s"}, "retries": 1, "algorithm": algo}))
        # Past the 5 s ejection period: a timer corrupted by the change would
        # have fired (or spun) by now.
        while time.monotonic() < ejected_at + 6.0:
            self.assert_alive()
            time.sleep(0.25)
        rss0, cpu0 = proc_rss_kib(self.pid), proc_cpu_seconds(self.pid)
        t0 = time.monotonic()
        for _ in range(20):
            self.assertEqual(ask(self.lbd.pool_port("policy")), "good")
            time.sleep(0.1)
        cpu = proc_cpu_seconds(self.pid) - cpu0
        elapsed = time.monotonic() - t0
        sys.stderr.write("figure: policy change while ejected: cpu %.2fs over %.1fs, rss %d -> %d "
                         "KiB\n" % (cpu, elapsed, rss0, proc_rss_kib(self.pid)))
        self.assertLess(cpu, 0.5 * elapsed * lbtest.TIMEOUT_SCALE, "lbd spins after the change")
        self.assertLess(proc_rss_kib(self.pid), rss0 + 64 * 1024)
        self.assert_alive()

    def test_client_reset_while_backend_stops_reading_frees_the_session(self):
        deaf = DeafBackend()
        try:
            self.put_backend("deaf", "deaf", "127.0.0.1:%d" % deaf.port)
            self.wait_backends("deaf", ["deaf"])
            fds0 = len(os.listdir("/proc/%d/fd" % self.pid))
            clients = []
            for _ in range(10):
                c = socket.create_connection(("127.0.0.1", self.lbd.pool_port("deaf")), timeout=5)
                c.setblocking(False)
                sent = 0
                for _ in range(2000):  # until lbd stops reading us
                    try:
                        sent += c.send(b"x" * 65536)
                    except BlockingIOError:
                        time.sleep(0.02)
                        try:
                            sent += c.send(b"x" * 65536)
                        except BlockingIOError:
                            break
                clients.append(c)
            wait_until(lambda: self.lbd.metric("lbd_pool_active_connections", pool="deaf") == 10,
                       scaled(5), "10 sessions open")
            for c in clients:  # an abort, as a client that gives up does
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()
            t0 = time.monotonic()
            wait_until(lambda: self.lbd.metric("lbd_pool_active_connections", pool="deaf") == 0,
                       5.0, "the sessions of clients that went away to end")
            sys.stderr.write("figure: sessions freed after client reset in %.2fs\n"
                             % (time.monotonic() - t0))
            wait_until(lambda: len(os.listdir("/proc/%d/fd" % self.pid)) <= fds0 + 2, 5.0,
                       "lbd's descriptors to return")
            self.assert_alive()
        finally:
            deaf.close()

    def test_backend_at_lbds_own_ports_gets_no_traffic(self):
        own = [("admin", self.lbd.admin_port), ("http", self.lbd.http_port),
               ("pool", self.lbd.pool_port("own"))]
        before = self.lbd.metric("lbd_backends_refused_total")
        for name, port in own:
            self.put_backend("own", name, "127.0.0.1:%d" % port)
        self.put_backend("own", "any", "0.0.0.0:%d" % self.lbd.admin_port)
        self.wait_backends("own", ["admin", "http", "pool", "any"])
        wait_until(lambda: self.lbd.metric("lbd_backends_refused_total") >= before + 4,
                   scaled(5), "4 refusals counted")
        self.assertEqual(self.lbd.metric("lbd_pool_eligible_backends", pool="own"), 0)
        # a client of the pool cannot reach the admin API through it
        rc, out, err = lbtest.lbctl("drain", "own", "admin", "--local",
                                    admin="127.0.0.1:%d" % self.lbd.pool_port("own"), timeout=10)
        self.assertNotEqual(rc, 0, "the admin API answered through a pool port")
        self.assertIn("one of lbd's own listeners", self.lbd.log_text())
        self.assert_alive()

    def test_backend_reset_reaches_the_client_as_a_reset(self):
        rb = ResettingBackend()
        try:
            self.put_backend("reset", "rb", "127.0.0.1:%d" % rb.port)
            self.wait_backends("reset", ["rb"])
            with socket.create_connection(("127.0.0.1", self.lbd.pool_port("reset")),
                                          timeout=5) as s:
                got, outcome = b"", None
                try:
                    while True:
                        chunk = s.recv(64)
                        if not chunk:
                            outcome = "eof"
                            break
                        got += chunk
                except ConnectionResetError:
                    outcome = "reset"
            self.assertEqual(got, b"partial\n")
            self.assertEqual(outcome, "reset", "a backend's abort looked like a clean close")
        finally:
            rb.close()


class ConnectionCapLogTest(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.etcd = Etcd(cls.h).start()
        cls.etcd.put(config_key("web"), json.dumps({"health": NO_CHECKS}))
        cls.backend = lbtest.Backend(cls.h, "b1")
        cls.etcd.put(backend_key("web", "b1"), json.dumps({"addr": cls.backend.addr}))
        cls.lbd = Lbd(cls.h, cls.etcd.url, PREFIX, ["web"], extra_args=["--max-conns", "2"])
        cls.lbd.start()

    def test_cap_pauses_are_logged_once_a_second(self):
        stop = threading.Event()

        def churn():  # more clients than the cap: every close lets one in, the next waits
            while not stop.is_set():
                try:
                    ask(self.lbd.pool_port("web"), timeout=5)
                except OSError:
                    pass

        t0 = time.monotonic()
        threads = [threading.Thread(target=churn) for _ in range(6)]
        for t in threads:
            t.start()
        wait_until(lambda: time.monotonic() - t0 >= 3.0 and
                   self.lbd.metric("lbd_accept_paused_total") >= 50, scaled(20),
                   "3 s with the cap pausing accepting at least 50 times")
        stop.set()
        for t in threads:
            t.join(10)
        elapsed = time.monotonic() - t0
        pauses = self.lbd.metric("lbd_accept_paused_total")
        lines = self.lbd.log_text().count("connection cap reached")
        sys.stderr.write("figure: cap pauses %d, logged in %d lines over %.1fs\n"
                         % (pauses, lines, elapsed))
        self.assertLessEqual(lines, elapsed + 2)


if __name__ == "__main__":
    lbtest.main()
