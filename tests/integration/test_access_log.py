#!/usr/bin/python3
"""The access log, the connect and duration histograms, process_* metrics
and health gauges without sentinels.

Every client session through lbd ends in exactly one access line at info
level (sub=access) naming its pool, backend, client, connect and total
time, the bytes each way, the retries and why it ended (end=, a closed set
of stable names).  Each test makes sessions end one way and finds its line
by the client's own address (its ephemeral port, or the address of its
PROXY header), then checks every field against what the client did:

  - client_closed, backend_closed, client_reset, backend_reset: bytes_in is
    what the client sent, bytes_out what it received (lbd's own PROXY
    header towards the backend not counted);
  - connect_refused (every attempt refused: retries=1, no backend=, no
    connect_ms=), connect_timeout (a backend whose accept queue is full:
    SYNs are dropped), no_backend (an empty pool);
  - queue_timeout (every backend at max_conns for the pool's
    queue_timeout: queue_ms= says how long it waited, no backend=);
  - idle_timeout, drained_past_deadline (drain_timeout over), shutdown
    (--shutdown-grace over), moved (an upgrade: the old lbd logs the hand
    over, the new one the end with the bytes of the whole session);
  - accept-proxy: client= is the address of the PROXY header; a bad header
    ends as bad_proxy_header;
  - --access-log off writes none, LBD_ACCESS_LOG_SAMPLE=4 writes 1 in 4
    normal ends and every error, a bad --access-log value is one usage line;
  - lbd_backend_connect_seconds and lbd_session_duration_seconds: _count
    equals the sessions (connects confirmed, sessions ended), buckets are
    cumulative and end at +Inf = _count, durations land in their bucket;
  - process_* (cpu, resident and virtual memory, open and max fds, start
    time) present and sane; lbd_backend_healthy is 0 or 1, never -1, and
    lbd_backend_health_checked says whether checks have decided.
"""

import json
import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lbtest import (Etcd, HarnessTestCase, Lbd, ThreadedServer, client_of, figure,  # noqa: E402
                    free_port, parse_kv, recv_line_bytes, run, scaled, wait_until)
from lbtest.procs import lbd_binary  # noqa: E402

PREFIX = "/alog/"
NO_CHECKS = {"type": "none", "fall": 50}  # and no passive ejection in these few connects
FAST_CHECKS = {"type": "tcp", "interval": "200ms", "timeout": "200ms", "rise": 1, "fall": 2}
IDLE_S = 1.0  # the shortest idle_timeout a policy may set
DRAIN_S = 1.0
QUEUE_S = 0.3

POLICIES = {
    "echo": {"health": NO_CHECKS},
    "pp": {"health": NO_CHECKS, "proxy_protocol": "v1"},
    "refused": {"health": NO_CHECKS, "retries": 1},
    "hole": {"health": NO_CHECKS, "connect_timeout": "300ms", "retries": 0},
    "empty": {"health": NO_CHECKS},
    "idle": {"health": NO_CHECKS, "idle_timeout": "%dms" % int(IDLE_S * 1000)},
    "drain": {"health": NO_CHECKS, "drain_timeout": "%dms" % int(DRAIN_S * 1000)},
    "checked": {"health": FAST_CHECKS},
    "ap": {"health": NO_CHECKS},
    "full": {"health": NO_CHECKS, "max_conns": 1, "queue_timeout": "%dms" % int(QUEUE_S * 1000)},
}
POOLS = ["echo", "pp", "refused", "hole", "empty", "idle", "drain", "checked", "full"]

END_NAMES = {"client_closed", "backend_closed", "client_reset", "backend_reset",
             "connect_timeout", "connect_refused", "no_backend", "idle_timeout",
             "drained_past_deadline", "shutdown", "moved", "killed", "bad_proxy_header",
             "out_of_memory", "queue_timeout"}
ACCESS_KEYS = ["pool", "backend", "client", "queue_ms", "connect_ms", "duration_ms", "bytes_in",
               "bytes_out", "retries", "end"]


# ---------------------------------------------------------------------------
# A backend told by the client's first line what to do with its connection.


class ScriptBackend(ThreadedServer):
    """Reads the connection's first line (after lbd's PROXY v1 line, if any):

      ECHO      echoes everything that follows until EOF, then closes;
      SEND n    sends n bytes and closes first (read nothing more: a FIN, no RST);
      RESET     resets the connection (SO_LINGER 0);

    The command line itself is not echoed.  Records the PROXY lines seen."""

    def __init__(self, h):
        self.proxy_lines = []
        super().__init__(h)

    def serve(self, c, _):
        line = recv_line_bytes(c)
        if line is not None and line.startswith(b"PROXY "):
            with self.lock:
                self.proxy_lines.append(line)
            line = recv_line_bytes(c)
        if line is None:
            return  # a health check, or a client gone
        cmd = line.split()
        if cmd[0] == b"ECHO":
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)
        elif cmd[0] == b"SEND":
            c.sendall(b"s" * int(cmd[1]))
        elif cmd[0] == b"RESET":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Blackhole:
    """A listener whose accept queue is full and never drained: further SYNs
    are dropped, so connects to it time out (soak's blackhole mode)."""

    def __init__(self, h):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(2):  # backlog 0 holds one; the second waits in SYN_SENT
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(f)
        time.sleep(0.05)
        h.servers.append(self)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        for s in self.fillers + [self.sock]:
            s.close()


# ---------------------------------------------------------------------------
# Access lines


def access_lines(text):
    return [parse_kv(ln) for ln in text.splitlines() if " sub=access " in ln]


def lines_for(lbd_or_text, client):
    text = lbd_or_text if isinstance(lbd_or_text, str) else lbd_or_text.log_text()
    return [a for a in access_lines(text) if a.get("client") == client]


def recv_exact(sock, n):
    got = b""
    while len(got) < n:
        d = sock.recv(n - len(got))
        if not d:
            break
        got += d
    return got


def read_to_eof(sock):
    got = b""
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return got, "eof"
            got += d
    except ConnectionResetError:
        return got, "reset"


def reset_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def metric_samples(lbd, name):
    return [(lab, v) for n, lab, v in lbd.metrics() if n == name]


class AccessLogTest(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.etcd = Etcd(cls.h).start()
        for pool, policy in POLICIES.items():
            cls.etcd.put("%spools/%s/config" % (PREFIX, pool), json.dumps(policy))
        cls.backend = ScriptBackend(cls.h)
        cls.hole = Blackhole(cls.h)
        dead = [free_port(), free_port()]  # nothing listens: refused at once
        cls.put("echo", "b1", cls.backend.addr)
        cls.put("pp", "p1", cls.backend.addr)
        cls.put("refused", "dead1", "127.0.0.1:%d" % dead[0])
        cls.put("refused", "dead2", "127.0.0.1:%d" % dead[1])
        cls.put("hole", "h1", cls.hole.addr)
        cls.put("idle", "i1", cls.backend.addr)
        cls.put("drain", "d1", cls.backend.addr)
        cls.put("checked", "c1", cls.backend.addr)
        cls.put("ap", "a1", cls.backend.addr)
        cls.put("full", "f1", cls.backend.addr)
        cls.ap_port = free_port()
        cls.lbd = Lbd(cls.h, cls.etcd.url, PREFIX, POOLS,
                      extra_args=["--pool", "ap=127.0.0.1:%d,accept-proxy" % cls.ap_port]).start()
        want = {"echo": 1, "pp": 1, "refused": 2, "hole": 1, "idle": 1, "drain": 1, "checked": 1,
                "ap": 1, "full": 1}
        for pool, n in want.items():
            wait_until(lambda: len(cls.lbd.backends(pool)) == n, scaled(10),
                       "the backends of %s" % pool)

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)  # a sanitizer report or a leak would be another code

    @classmethod
    def put(cls, pool, bid, addr):
        cls.etcd.put("%spools/%s/backends/%s" % (PREFIX, pool, bid),
                     json.dumps({"addr": addr, "weight": 100}))

    def connect(self, pool=None, port=None):
        s = socket.create_connection(("127.0.0.1", port or self.lbd.pool_port(pool)),
                                     timeout=scaled(10))
        self.addCleanup(s.close)
        return s

    def one_line(self, client, lbd=None, timeout=None):
        """The one access line of `client`, waited for; fails on none or more."""
        lbd = lbd or self.lbd
        wait_until(lambda: lines_for(lbd, client), timeout or scaled(5),
                   "the access line of %s" % client)
        time.sleep(0.05)  # a second line would come right after
        got = lines_for(lbd, client)
        self.assertEqual(len(got), 1, "access lines of %s: %r" % (client, got))
        line = got[0]
        self.assertIn(line["end"], END_NAMES)
        self.assertEqual(line["level"], "info")
        for key in ("pool", "client", "duration_ms", "bytes_in", "bytes_out", "retries", "end"):
            self.assertIn(key, line, "access line without %s=: %r" % (key, line))
        self.assertEqual([k for k in line if k in ACCESS_KEYS],
                         [k for k in ACCESS_KEYS if k in line], "keys out of order")
        for key in ("duration_ms", "connect_ms"):
            if key in line:
                self.assertGreaterEqual(float(line[key]), 0.0)
        return line

    def expect(self, line, **want):
        got = {k: line.get(k) for k in want}
        self.assertEqual(got, {k: (None if v is None else str(v)) for k, v in want.items()},
                         "access line %r" % line)

    # -- ends through a connected backend ------------------------------

    def test_client_closed_counts_what_the_client_sent_and_received(self):
        s = self.connect("echo")
        sent = b"ECHO\n" + os.urandom(527)
        s.sendall(sent)
        self.assertEqual(recv_exact(s, 527), sent[5:])
        s.shutdown(socket.SHUT_WR)
        self.assertEqual(read_to_eof(s), (b"", "eof"))
        client = client_of(s)
        s.close()
        line = self.one_line(client)
        self.expect(line, pool="echo", backend="b1", bytes_in=532, bytes_out=527, retries=0,
                    end="client_closed")
        self.assertIn("connect_ms", line)
        self.assertLess(float(line["connect_ms"]), 1000.0)

    def test_backend_closed(self):
        s = self.connect("echo")
        s.sendall(b"SEND 10241\n")
        got, how = read_to_eof(s)
        self.assertEqual((len(got), how), (10241, "eof"))
        client = client_of(s)
        s.close()
        self.expect(self.one_line(client), pool="echo", backend="b1", bytes_in=11,
                    bytes_out=10241, end="backend_closed")

    def test_client_reset(self):
        s = self.connect("echo")
        s.sendall(b"ECHO\nping")
        self.assertEqual(recv_exact(s, 4), b"ping")
        client = client_of(s)
        reset_close(s)
        self.expect(self.one_line(client), pool="echo", backend="b1", bytes_in=9, bytes_out=4,
                    end="client_reset")

    def test_backend_reset(self):
        s = self.connect("echo")
        s.sendall(b"RESET\n")
        got, how = read_to_eof(s)
        self.assertEqual((got, how), (b"", "reset"), "lbd passes a reset on as a reset")
        client = client_of(s)
        s.close()
        self.expect(self.one_line(client), pool="echo", backend="b1", bytes_in=6, bytes_out=0,
                    end="backend_reset")

    def test_proxy_header_to_the_backend_is_not_client_bytes(self):
        before = len(self.backend.proxy_lines)
        s = self.connect("pp")
        s.sendall(b"ECHO\nhello")
        self.assertEqual(recv_exact(s, 5), b"hello")
        s.shutdown(socket.SHUT_WR)
        read_to_eof(s)
        client = client_of(s)
        s.close()
        line = self.one_line(client)
        self.assertGreater(len(self.backend.proxy_lines), before, "no PROXY line reached it")
        self.expect(line, pool="pp", backend="p1", bytes_in=10, bytes_out=5, end="client_closed")

    # -- ends without a backend ----------------------------------------

    def test_connect_refused_on_every_backend(self):
        s = self.connect("refused")
        self.assertEqual(read_to_eof(s)[0], b"")
        client = client_of(s)
        s.close()
        line = self.one_line(client)
        self.expect(line, pool="refused", backend=None, connect_ms=None, retries=1, bytes_in=0,
                    bytes_out=0, end="connect_refused")

    def test_connect_timeout_on_a_blackholed_backend(self):
        s = self.connect("hole")
        t0 = time.monotonic()
        self.assertEqual(read_to_eof(s)[0], b"")
        took = time.monotonic() - t0
        client = client_of(s)
        s.close()
        line = self.one_line(client)
        self.expect(line, pool="hole", backend=None, connect_ms=None, retries=0,
                    end="connect_timeout")
        self.assertGreaterEqual(float(line["duration_ms"]), 290.0)
        figure("connect_timeout 300ms: client closed after", "%.3f" % took, "s")

    def test_no_backend(self):
        s = self.connect("empty")
        self.assertEqual(read_to_eof(s)[0], b"")
        client = client_of(s)
        s.close()
        self.expect(self.one_line(client), pool="empty", backend=None, connect_ms=None,
                    retries=0, bytes_in=0, bytes_out=0, end="no_backend")

    # -- ends decided by lbd -------------------------------------------

    def test_queue_timeout(self):
        holder = self.connect("full")
        holder.sendall(b"ECHO\nx")
        self.assertEqual(recv_exact(holder, 1), b"x")  # the one slot is taken
        s = self.connect("full")
        s.sendall(b"ECHO\nwaited")
        self.assertEqual(read_to_eof(s), (b"", "eof"))
        client = client_of(s)
        s.close()
        line = self.one_line(client)
        self.expect(line, pool="full", backend=None, connect_ms=None, retries=0, bytes_in=0,
                    bytes_out=0, end="queue_timeout")
        self.assertGreaterEqual(float(line["queue_ms"]), QUEUE_S * 1000 - 10)
        self.assertGreaterEqual(float(line["duration_ms"]), QUEUE_S * 1000 - 10)
        holder.close()

    def test_idle_timeout(self):
        s = self.connect("idle")
        s.sendall(b"ECHO\nabc")
        self.assertEqual(recv_exact(s, 3), b"abc")
        self.assertEqual(read_to_eof(s), (b"", "eof"))
        client = client_of(s)
        s.close()
        line = self.one_line(client)
        self.expect(line, pool="idle", backend="i1", bytes_in=8, bytes_out=3, end="idle_timeout")
        self.assertGreaterEqual(float(line["duration_ms"]), IDLE_S * 1000 - 10)
        buckets = {lab["le"]: v for lab, v in
                   metric_samples(self.lbd, "lbd_session_duration_seconds_bucket")
                   if lab["pool"] == "idle"}
        self.assertEqual((buckets["1"], buckets["10"]), (0, 1), buckets)

    def test_drained_past_deadline(self):
        s = self.connect("drain")
        s.sendall(b"ECHO\nabc")
        self.assertEqual(recv_exact(s, 3), b"abc")
        rc, out, err = self.lbd.ctl("drain", "drain", "d1", "--local")
        self.assertEqual(rc, 0, err)
        self.addCleanup(self.lbd.ctl, "undrain", "drain", "d1", "--local")
        s.settimeout(scaled(10))
        read_to_eof(s)
        client = client_of(s)
        s.close()
        self.expect(self.one_line(client), pool="drain", backend="d1", bytes_in=8, bytes_out=3,
                    end="drained_past_deadline")

    def test_accept_proxy_client_address_and_bad_header(self):
        s = self.connect(port=self.ap_port)
        s.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\nECHO\nxyz")
        self.assertEqual(recv_exact(s, 3), b"xyz")
        s.shutdown(socket.SHUT_WR)
        read_to_eof(s)
        s.close()
        self.expect(self.one_line("203.0.113.7:51234"), pool="ap", backend="a1",
                    bytes_in=8, bytes_out=3, end="client_closed")

        bad = self.connect(port=self.ap_port)
        bad.sendall(b"GET / HTTP/1.1\r\n\r\n")
        read_to_eof(bad)
        client = client_of(bad)
        bad.close()
        self.expect(self.one_line(client), pool="ap", backend=None, end="bad_proxy_header")

    # -- metrics -------------------------------------------------------

    def test_histograms_count_the_sessions(self):
        n = 12
        for i in range(n):
            s = self.connect("echo")
            s.sendall(b"ECHO\n%d" % i)
            recv_exact(s, len(b"%d" % i))
            s.shutdown(socket.SHUT_WR)
            read_to_eof(s)
            s.close()
        # Every session of the pool (this test's and the others') has ended
        # once lbd has no open connection left in it.
        wait_until(lambda: self.lbd.metric("lbd_pool_active_connections", pool="echo") == 0,
                   scaled(5), "every echo session to end")
        ended = len([a for a in access_lines(self.lbd.log_text()) if a["pool"] == "echo"])
        connects = self.lbd.metric("lbd_backend_connections_total", pool="echo")
        samples = self.lbd.metrics()
        for fam, want in (("lbd_session_duration_seconds", ended),
                          ("lbd_backend_connect_seconds", connects)):
            count = [v for name, lab, v in samples if name == fam + "_count"
                     and lab == {"pool": "echo"}]
            self.assertEqual(count, [want], fam)
            buckets = [(lab["le"], v) for name, lab, v in samples if name == fam + "_bucket"
                       and lab["pool"] == "echo"]
            values = [v for _, v in buckets]
            self.assertEqual(values, sorted(values), "%s buckets not cumulative" % fam)
            self.assertEqual(buckets[-1], ("+Inf", want))
            total = [v for name, lab, v in samples if name == fam + "_sum"
                     and lab == {"pool": "echo"}]
            self.assertEqual(len(total), 1)
            self.assertGreaterEqual(total[0], 0.0)
        les = [lab["le"] for name, lab, v in samples
               if name == "lbd_backend_connect_seconds_bucket" and lab["pool"] == "echo"]
        self.assertEqual(les, ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                               "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"])
        les = [lab["le"] for name, lab, v in samples
               if name == "lbd_session_duration_seconds_bucket" and lab["pool"] == "echo"]
        self.assertEqual(les, ["0.01", "0.1", "1", "10", "60", "600", "3600", "+Inf"])
        self.assertGreaterEqual(ended, n)
        # A connect that never completed is not a connect time.
        for name, lab, v in samples:
            if name == "lbd_backend_connect_seconds_count" and lab["pool"] in ("hole", "refused",
                                                                                 "empty"):
                self.assertEqual(v, 0, lab)
        figure("echo pool: sessions ended / connects confirmed", "%d / %d" % (ended, connects))

    def test_process_metrics(self):
        m = {n: v for n, lab, v in self.lbd.metrics() if n.startswith("process_")}
        self.assertEqual(sorted(m), ["process_cpu_seconds_total", "process_max_fds",
                                     "process_open_fds", "process_resident_memory_bytes",
                                     "process_start_time_seconds",
                                     "process_virtual_memory_bytes"])
        fds = len(os.listdir("/proc/%d/fd" % self.lbd.proc.pid))
        self.assertGreater(m["process_open_fds"], 5)
        self.assertLessEqual(abs(m["process_open_fds"] - fds), 8, "open fds vs /proc: %d" % fds)
        self.assertLessEqual(m["process_open_fds"], m["process_max_fds"])
        self.assertGreater(m["process_resident_memory_bytes"], 1 << 20)
        self.assertGreater(m["process_virtual_memory_bytes"], m["process_resident_memory_bytes"])
        self.assertGreaterEqual(m["process_cpu_seconds_total"], 0.0)
        # lbd started with this test class: a few minutes ago at most.
        self.assertLess(time.time() - m["process_start_time_seconds"], 600)
        self.assertLessEqual(m["process_start_time_seconds"], time.time() + 1)
        figure("process_* at scrape", {k: m[k] for k in sorted(m)})

    def test_health_gauges_have_no_sentinel(self):
        wait_until(lambda: self.lbd.metric("lbd_backend_health_checked", pool="checked",
                                           backend="c1") == 1, scaled(5),
                   "the checked backend to have a verdict")
        samples = self.lbd.metrics()
        healthy = {(lab["pool"], lab["backend"]): v for n, lab, v in samples
                   if n == "lbd_backend_healthy"}
        checked = {(lab["pool"], lab["backend"]): v for n, lab, v in samples
                   if n == "lbd_backend_health_checked"}
        self.assertEqual(set(healthy), set(checked))
        self.assertTrue(set(healthy.values()) <= {0, 1}, healthy)
        self.assertTrue(set(checked.values()) <= {0, 1}, checked)
        self.assertEqual((healthy[("checked", "c1")], checked[("checked", "c1")]), (1, 1))
        # Checks off: nothing decided, and it takes traffic.
        self.assertEqual((healthy[("echo", "b1")], checked[("echo", "b1")]), (1, 0))
        negative = [(n, lab, v) for n, lab, v in samples if v < 0 and
                    n.startswith(("lbd_backend_", "lbd_pool_", "lbd_session_", "process_"))]
        self.assertEqual(negative, [], "a gauge or counter below 0 (a sentinel?)")

    # -- other lbds ----------------------------------------------------

    def other_lbd(self, name, pools=("echo", "empty"), extra_args=(), env=None):
        lbd = Lbd(self.h, self.etcd.url, PREFIX, list(pools), extra_args=list(extra_args),
                  env=env, name=name).start()
        self.addCleanup(lambda: lbd.proc.alive() and lbd.stop())
        wait_until(lambda: "b1" in lbd.backends("echo"), scaled(10), "%s to list b1" % name)
        return lbd

    def echo_session(self, port, payload=b"ping"):
        s = socket.create_connection(("127.0.0.1", port), timeout=scaled(10))
        with s:
            s.sendall(b"ECHO\n" + payload)
            recv_exact(s, len(payload))
            s.shutdown(socket.SHUT_WR)
            read_to_eof(s)
            return client_of(s)

    def empty_session(self, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=scaled(10))
        with s:
            read_to_eof(s)
            return client_of(s)

    def test_shutdown_grace_over(self):
        lbd = self.other_lbd("lbd-grace", extra_args=["--shutdown-grace", "500ms"])
        s = socket.create_connection(("127.0.0.1", lbd.pool_port("echo")), timeout=scaled(10))
        self.addCleanup(s.close)
        s.sendall(b"ECHO\nstay")
        self.assertEqual(recv_exact(s, 4), b"stay")
        lbd.proc.send_signal(signal.SIGTERM)
        s.settimeout(scaled(10))
        read_to_eof(s)
        self.assertEqual(lbd.proc.wait(scaled(10)), 0)
        self.expect(self.one_line(client_of(s), lbd=lbd), pool="echo", backend="b1",
                    bytes_in=9, bytes_out=4, end="shutdown")

    def test_access_log_off(self):
        lbd = self.other_lbd("lbd-off", extra_args=["--access-log", "off"])
        clients = [self.echo_session(lbd.pool_port("echo")) for _ in range(5)]
        clients.append(self.empty_session(lbd.pool_port("empty")))
        wait_until(lambda: lbd.log_text().count('msg="session closed"') >= 6, scaled(5),
                   "six sessions to close")
        self.assertEqual(access_lines(lbd.log_text()), [])
        # Metrics do not depend on the log.
        self.assertEqual(lbd.metric("lbd_session_duration_seconds_count", pool="echo"), 5)

    def test_sampling_keeps_one_in_n_and_every_error(self):
        lbd = self.other_lbd("lbd-sample", extra_args=["--workers", "1"],
                             env={"LBD_ACCESS_LOG_SAMPLE": "4"})
        normal = [self.echo_session(lbd.pool_port("echo")) for _ in range(20)]
        errors = [self.empty_session(lbd.pool_port("empty")) for _ in range(3)]
        wait_until(lambda: lbd.log_text().count('msg="session closed"') >= 23, scaled(5),
                   "23 sessions to close")
        lines = access_lines(lbd.log_text())
        logged = [a["client"] for a in lines if a["pool"] == "echo"]
        self.assertEqual(logged, normal[0::4], "1 in 4 normal ends, the first one first")
        self.assertEqual(sorted(a["client"] for a in lines if a["pool"] == "empty"),
                         sorted(errors))
        self.assertEqual(lbd.metric("lbd_session_duration_seconds_count", pool="echo"), 20)

    def test_bad_access_log_value_is_a_usage_error(self):
        rc, out, err = run([lbd_binary(), "--etcd", self.etcd.url, "--pool",
                            "x=127.0.0.1:%d" % free_port(), "--access-log", "maybe"], timeout=10)
        self.assertEqual(rc, 2)
        self.assertIn("access-log", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_moved_at_an_upgrade(self):
        sock_path = self.h.path("alog-upgrade.sock")
        old = self.other_lbd("lbd-up1", extra_args=["--upgrade-socket", sock_path])
        s = socket.create_connection(("127.0.0.1", old.pool_port("echo")), timeout=scaled(10))
        self.addCleanup(s.close)
        s.sendall(b"ECHO\nbefore")
        self.assertEqual(recv_exact(s, 6), b"before")
        client = client_of(s)
        new = Lbd(self.h, self.etcd.url, PREFIX, ["echo", "empty"],
                  extra_args=["--upgrade-socket", sock_path], name="lbd-up2")
        new.pools, new.admin_port, new.http_port = old.pools, old.admin_port, old.http_port
        new.proc = self.h.spawn("lbd-up2", new.argv())
        self.addCleanup(lambda: new.proc.alive() and new.stop())
        self.assertEqual(old.proc.wait(scaled(30)), 0, "the old lbd after the hand-over")
        self.expect(self.one_line(client, lbd=old), pool="echo", backend="b1", bytes_in=11,
                    bytes_out=6, end="moved")
        s.sendall(b"after")
        self.assertEqual(recv_exact(s, 5), b"after")
        s.shutdown(socket.SHUT_WR)
        read_to_eof(s)
        s.close()
        line = self.one_line(client, lbd=new)
        self.expect(line, pool="echo", backend="b1", bytes_in=16, bytes_out=11,
                    end="client_closed")
        self.assertNotIn("connect_ms", line, "the connect was the old lbd's")
        new.stop()


if __name__ == "__main__":
    from lbtest import main
    main()
