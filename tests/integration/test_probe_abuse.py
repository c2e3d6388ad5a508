#!/usr/bin/python3
"""The probe port (--http: /healthz, /readyz, /metrics) under a slowloris.

A slowloris opens connections from many loopback addresses (127.0.0.2 to
127.0.0.9 here; the brief's attack used three) and sends a header line on
each every second, never finishing a request, and opens a new connection
whenever lbd closes one.  Kubelet and Prometheus must still be answered:
every /healthz, /readyz and /metrics asked for during the attack is
answered within 1 s, also with 10,000 backends in /metrics (whose 8 MB
body then arrives within Prometheus' default scrape timeout).  lbd says
what it does about it in summary lines (one per second at most) and in
lbd_http_connections_closed_total.

And when lbd was stalled (CPU-throttled in a pod at its limits.cpu) while
a flood queued up, a kubelet probe accepted in the same run as 64 silent
connections from four other addresses is answered, not refused.
"""

import http.client
import json
import multiprocessing
import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Etcd, HarnessTestCase, Lbd, backend_key, close_all,  # noqa: E402
                    parse_prometheus, recv_all, scaled, silent_connections, wait_until)

PREFIX = "/lbtest-probeabuse/"
ADDRESSES = ["127.0.0.%d" % i for i in range(2, 10)]
PER_ADDRESS = 24  # 192 connections: three times the probe port's 64 slots
PROBE_BOUND_S = 1.0
SCRAPE_TIMEOUT_S = 10.0  # Prometheus' default scrape_timeout


class Slowloris:
    """Keeps `per_address` connections per address open, each trickling a header line every
    `every` seconds and never ending its request; reconnects whatever lbd closes.  Runs in
    a child process, so that it does not share an interpreter lock with the probes."""

    def __init__(self, port, addresses=ADDRESSES, per_address=PER_ADDRESS, every=1.0):
        self.port = port
        self.slots = [a for a in addresses for _ in range(per_address)]
        self.every = every
        self.socks = {}  # slot index -> socket
        self.opened = 0
        self._stop = multiprocessing.Event()
        self._opened = multiprocessing.Value("q", 0)
        self._proc = multiprocessing.Process(target=self._run, name="slowloris", daemon=True)
        self._proc.start()

    def _open(self, i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((self.slots[i], 0))
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return
        self.socks[i] = s
        with self._opened.get_lock():
            self._opened.value += 1

    def _send(self, i, data):
        try:
            self.socks[i].send(data)
        except OSError:
            pass  # not connected yet, or reset: the read side notices

    def _run(self):
        for i in range(len(self.slots)):
            self._open(i)
        started = set()
        next_trickle = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_trickle:
                for i in list(self.socks):
                    if i in started:
                        self._send(i, b"X-Slow: %d\r\n" % int(now))
                    else:
                        self._send(i, b"GET /healthz HTTP/1.1\r\nHost: lbd\r\n")
                        started.add(i)
                next_trickle = now + self.every
            by_sock = {s: i for i, s in self.socks.items()}
            r, _, _ = select.select(list(by_sock), [], [], 0.05)
            for s in r:
                i = by_sock[s]
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:  # lbd closed it: come back at once
                    s.close()
                    del self.socks[i]
                    started.discard(i)
                    self._open(i)

    def stop(self):
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self.opened = self._opened.value


class ProbeAbuse(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.etcd = Etcd(cls.h).start()
        cls.lbd = Lbd(cls.h, cls.etcd.url, PREFIX, ["web"],
                      extra_args=["--shutdown-grace", "1s"]).start()

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    def fetch(self, path, timeout):
        """GET path: (status, seconds to the status line, seconds to the whole body, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.lbd.http_port, timeout=timeout)
        try:
            t0 = time.monotonic()
            conn.request("GET", path)
            resp = conn.getresponse()
            t_head = time.monotonic() - t0
            body = resp.read()
            return resp.status, t_head, time.monotonic() - t0, body
        finally:
            conn.close()

    def probe_under_attack(self, seconds, paths):
        """Asks each of `paths` in turn for `seconds` while a slowloris runs; returns
        [(path, status or error, seconds to the status line, seconds to the body)]."""
        loris = Slowloris(self.lbd.http_port)
        results = []
        try:
            time.sleep(0.5)  # let it take every slot it can
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                path = paths[i % len(paths)]
                i += 1
                t0 = time.monotonic()
                try:
                    status, t_head, t_body, body = self.fetch(path, SCRAPE_TIMEOUT_S)
                    if path == "/metrics" and status == 200:
                        parse_prometheus(body.decode())
                    results.append((path, status, t_head, t_body))
                except OSError as exc:
                    took = time.monotonic() - t0
                    results.append((path, "%s: %s" % (type(exc).__name__, exc), took, took))
                time.sleep(0.1)
        finally:
            loris.stop()
        self.pushed_back = loris.opened > len(loris.slots)  # lbd closed some of them
        return results

    def assert_all_answered(self, results, body_bound):
        late = [r for r in results if r[1] != 200 or r[2] > PROBE_BOUND_S or r[3] > body_bound]
        print("\n  %d probes under attack: status line within %.3fs, whole body within %.3fs"
              % (len(results), max(r[2] for r in results), max(r[3] for r in results)))
        self.assertEqual(late, [], "not answered with 200 within %.1fs (body within %.1fs)"
                         % (PROBE_BOUND_S, body_bound))

    def test_1_slowloris_cannot_starve_healthz_readyz_metrics(self):
        before = self.lbd.log_text()
        results = self.probe_under_attack(12, ["/healthz", "/readyz", "/metrics"])
        self.assert_all_answered(results, PROBE_BOUND_S)
        self.assertTrue(self.pushed_back, "lbd closed none of the slowloris connections")
        # what lbd did about it: summary lines, never one per connection
        text = self.lbd.log_text()[len(before):]
        for what in ("probe connections closed to make room",
                     "probe connections closed: no complete request"):
            n = text.count(what)
            self.assertLessEqual(n, 12 + 3, "%r logged %d times in 12 s" % (what, n))
        self.assertIn("probe connections closed to make room", text)
        self.assertGreater(self.lbd.metric("lbd_http_connections_closed_total", reason="shed"), 0)
        # afterwards the port is as before
        wait_until(lambda: self.lbd.metric("lbd_http_connections") <= 2, scaled(15),
                   "the slowloris connections to be gone")

    def test_2_metrics_with_10000_backends_scraped_under_attack(self):
        # addresses nobody answers: no health checks, /metrics is what is measured
        self.etcd.put(PREFIX + "pools/web/config", json.dumps({"health": {"type": "none"}}))
        self.etcd.put_many({backend_key(PREFIX, "web", "b%05d" % i):
                            json.dumps({"addr": "10.9.%d.%d:80" % (i // 250, i % 250 + 1)})
                            for i in range(10000)})
        wait_until(lambda: self.lbd.metric("lbd_pool_backends", pool="web") == 10000,
                   scaled(60), "lbd to list 10,000 backends")
        results = self.probe_under_attack(10, ["/metrics", "/healthz"])
        # answered within 1 s; the 8 MB body within Prometheus' default scrape timeout
        self.assert_all_answered(results, SCRAPE_TIMEOUT_S)

    def test_3_probe_in_the_same_accept_run_as_a_flood_is_answered(self):
        lbd = self.lbd
        silent, probe = [], None
        try:
            with lbd.proc.stopped():
                silent = silent_connections(lbd.http_port, 64)  # 127.0.0.2 to .5
                probe = socket.create_connection(("127.0.0.1", lbd.http_port), timeout=10)
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n")
            reply = recv_all(probe)
            self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])
        finally:
            close_all(silent + ([probe] if probe else []))


if __name__ == "__main__":
    lbtest.main()
