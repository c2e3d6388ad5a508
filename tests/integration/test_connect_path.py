#!/usr/bin/python3
"""The connect to a backend, when lbd does not wait to be told it finished.

lbd forwards a client's bytes while its connect to the backend is still in
flight and takes the first success (the backend took bytes, sent some, or
closed) as the proof; only when neither side speaks does the connect
timeout ask the kernel.  What must hold on every path:

  - a client and a backend that both stay silent past connect_timeout: the
    connection is not failed, not retried, not counted as a connect
    failure, and data flows afterwards;
  - the same with no connect timeout of lbd's own (connect_timeout 0):
    `lbctl show sessions` shows it proxying at once, and the idle timeout
    (1 s) closes it (end=idle_timeout), not never;
  - a client that sends and closes at once: the backend gets every byte,
    then the EOF (half-close forwarded only after the connect is done);
  - a client that connects and closes without a byte: the backend sees a
    connection and its EOF, nothing is counted as a failure;
  - a refused first backend while the client has already sent: the
    client's bytes reach the next backend whole, in order, and the refusal
    is counted as a connect failure and a retry;
  - the same with the PROXY protocol: the next backend gets the header,
    then the bytes.

And once connected, bulk relaying (splice(2) through pipes once a direction
proved bulk): megabytes both ways at once, each side reading slowly for a
while so bytes wait in lbd's pipes, the client half-closing in the middle
of the download; every byte arrives, in order (sha256 at both ends), the
byte counters are exact, and lbd kept pipes for the next bulk transfer.
"""

import hashlib
import json
import os
import random
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lbtest import (Etcd, HarnessTestCase, Lbd, ThreadedServer, client_of, ended,  # noqa: E402
                    figure, free_port, lbctl, scaled, wait_until)

PREFIX = "/connect/"
CONNECT_TIMEOUT = 0.5


class QuietBackend(ThreadedServer):
    """Accepts and records everything each connection sends, until EOF;
    says nothing unless told to echo.  Records (bytes, saw_eof) per connection."""

    def __init__(self, h, echo=False):
        self.echo = echo
        self.conns = []  # [bytearray, eof_seen]
        super().__init__(h, backlog=64)

    def on_accept(self, c):
        rec = [bytearray(), False]
        with self.lock:
            self.conns.append(rec)
        return rec

    def serve(self, c, rec):
        while True:
            d = c.recv(65536)
            if not d:
                with self.lock:
                    rec[1] = True
                return
            with self.lock:
                rec[0] += d
            if self.echo:
                c.sendall(d)

    def records(self):
        with self.lock:
            return [(bytes(b), eof) for b, eof in self.conns]


def pattern(seed, n, chunk=65536):
    """n pseudo-random bytes from seed, in chunks (the same for both ends)."""
    rng = random.Random(seed)
    while n > 0:
        k = min(chunk, n)
        yield rng.randbytes(k)
        n -= k


def slow_reader_buffer(sock):
    """A small receive buffer (no autotuning): a slow reader makes lbd keep bytes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)


class BulkBackend(ThreadedServer):
    """Per connection: reads the upload to EOF (slowly for its first
    `slow_bytes`) while sending `down_bytes` of pattern(seed) at once, then
    closes.  Records (sha256 of the upload, its length, sha256 sent)."""

    def __init__(self, h, down_bytes, seed, slow_bytes):
        self.down_bytes, self.seed, self.slow_bytes = down_bytes, seed, slow_bytes
        self.results = []
        # a small receive buffer, inherited by accepted sockets
        super().__init__(h, backlog=8, prepare=slow_reader_buffer)

    def serve(self, c, _):
        got = {}

        def read_all():
            h, n = hashlib.sha256(), 0
            try:
                while True:
                    d = c.recv(16384 if n < self.slow_bytes else 262144)
                    if not d:
                        break
                    h.update(d)
                    n += len(d)
                    if n < self.slow_bytes:
                        time.sleep(0.002)
            except OSError as exc:
                got["error"] = repr(exc)
            got["sha"], got["len"] = h.hexdigest(), n

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        sent = hashlib.sha256()
        try:
            for chunk in pattern(self.seed, self.down_bytes):
                c.sendall(chunk)
                sent.update(chunk)
            reader.join(scaled(60))
        except OSError as exc:
            got["error"] = repr(exc)
        finally:
            c.close()
        with self.lock:
            self.results.append((got.get("sha"), got.get("len"), sent.hexdigest(),
                                 got.get("error")))


def pipe_fds(pid):
    """How many pipes process pid holds open."""
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("pipe:"):
                n += 1
        except OSError:
            pass
    return n


UP_BYTES = 6 << 20
DOWN_BYTES = 12 << 20


class ConnectPathTest(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.etcd = Etcd(cls.h).start()
        policy = {"health": {"type": "none"}, "connect_timeout": "%gs" % CONNECT_TIMEOUT,
                  "retries": 1, "algorithm": "wrr"}
        for pool in ["quiet", "eof", "refused", "proxy", "bulk", "nolimit"]:
            p = dict(policy)
            if pool == "proxy":
                p["proxy_protocol"] = "v1"
            if pool == "nolimit":
                p.update(connect_timeout="0", idle_timeout="1s")
            cls.etcd.put("%spools/%s/config" % (PREFIX, pool), json.dumps(p))
        cls.quiet = QuietBackend(cls.h, echo=True)
        cls.eof = QuietBackend(cls.h)
        cls.good = QuietBackend(cls.h)
        cls.good_proxy = QuietBackend(cls.h)
        cls.dead_port = free_port()  # nothing listens: connects are refused
        cls.put("quiet", "q", cls.quiet.addr)
        cls.put("eof", "e", cls.eof.addr)
        # wrr with equal weights over the refused one and a good one: the
        # first connection of each pool goes to "a-dead" (ids sort first).
        cls.put("refused", "a-dead", "127.0.0.1:%d" % cls.dead_port)
        cls.put("refused", "b-good", cls.good.addr)
        cls.put("proxy", "a-dead", "127.0.0.1:%d" % cls.dead_port)
        cls.put("proxy", "b-good", cls.good_proxy.addr)
        cls.bulk = BulkBackend(cls.h, DOWN_BYTES, seed=2, slow_bytes=1 << 20)
        cls.put("bulk", "k", cls.bulk.addr)
        cls.silent = QuietBackend(cls.h)
        cls.put("nolimit", "s", cls.silent.addr)
        cls.lbd = Lbd(cls.h, cls.etcd.url, PREFIX,
                      ["quiet", "eof", "refused", "proxy", "bulk", "nolimit"]).start()
        for pool, n in [("quiet", 1), ("eof", 1), ("refused", 2), ("proxy", 2), ("bulk", 1),
                        ("nolimit", 1)]:
            wait_until(lambda: len(cls.lbd.backends(pool)) == n, scaled(10),
                       "backends of %s" % pool)

    @classmethod
    def put(cls, pool, bid, addr):
        cls.etcd.put("%spools/%s/backends/%s" % (PREFIX, pool, bid),
                     json.dumps({"addr": addr, "weight": 100}))

    def failures(self, pool, bid):
        return self.lbd.metric("lbd_backend_connect_failures_total", pool=pool, backend=bid) or 0

    def test_silent_client_and_backend_outlive_the_connect_timeout(self):
        c = socket.create_connection(("127.0.0.1", self.lbd.pool_port("quiet")), timeout=5)
        time.sleep(CONNECT_TIMEOUT * 3)  # what is measured: nothing happens meanwhile
        c.sendall(b"late hello")
        got = b""
        while len(got) < len(b"late hello"):
            d = c.recv(100)
            self.assertTrue(d, "the connection was closed after the connect timeout")
            got += d
        self.assertEqual(got, b"late hello")
        c.close()
        self.assertEqual(self.failures("quiet", "q"), 0)
        self.assertEqual(len(self.quiet.records()), 1, "the connect was retried")

    def test_silent_connection_without_connect_timeout_idles_out(self):
        before = len(self.silent.records())
        c = socket.create_connection(("127.0.0.1", self.lbd.pool_port("nolimit")), timeout=5)
        t0 = time.monotonic()
        wait_until(lambda: len(self.silent.records()) > before, scaled(5),
                   "the backend to accept lbd's connect")
        rc, out, err = lbctl("show", "sessions", "nolimit", admin=self.lbd.admin, output="json")
        self.assertEqual(rc, 0, err)
        self.assertEqual([v["state"] for v in json.loads(out)["sessions"]], ["proxying"])
        self.assertEqual(ended(c, scaled(5)), "eof", "lbd never closed the idle connection")
        idle = time.monotonic() - t0
        figure("silent connection, connect_timeout 0, idle_timeout 1s: closed after",
               "%.2f" % idle, "s")
        self.assertGreaterEqual(idle, 0.95)
        self.assertLess(idle, 1.0 + scaled(2))
        client = client_of(c)
        c.close()
        wait_until(lambda: "client=%s " % client in self.lbd.log_text(), scaled(5),
                   "the access line")
        line = [ln for ln in self.lbd.log_text().splitlines()
                if " sub=access " in ln and "client=%s " % client in ln][0]
        self.assertIn(" end=idle_timeout", line)
        self.assertIn(" connect_ms=", line)

    def test_send_and_close_at_once_delivers_bytes_then_eof(self):
        before = len(self.eof.records())
        payload = b"x" * 100000
        c = socket.create_connection(("127.0.0.1", self.lbd.pool_port("eof")), timeout=5)
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        wait_until(lambda: len(self.eof.records()) > before and self.eof.records()[-1][1],
                   scaled(5), "the backend to see the EOF")
        data, eof = self.eof.records()[-1]
        self.assertEqual(data, payload)
        self.assertTrue(eof)
        c.close()

    def test_connect_and_close_without_a_byte(self):
        before = len(self.eof.records())
        c = socket.create_connection(("127.0.0.1", self.lbd.pool_port("eof")), timeout=5)
        c.close()
        wait_until(lambda: len(self.eof.records()) > before and self.eof.records()[-1][1],
                   scaled(5), "the backend to see the connection and its EOF")
        self.assertEqual(self.eof.records()[-1][0], b"")
        self.assertEqual(self.failures("eof", "e"), 0)

    def test_bytes_sent_before_a_refused_connect_reach_the_next_backend(self):
        before = len(self.good.records())
        fails = self.failures("refused", "a-dead")
        payloads = []
        for i in range(4):  # wrr: some of these go to a-dead first
            payload = (b"payload %d " % i) * 2000
            c = socket.create_connection(("127.0.0.1", self.lbd.pool_port("refused")), timeout=5)
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            payloads.append(payload)
            wait_until(lambda: len(self.good.records()) > before + i and
                       self.good.records()[before + i][1], scaled(5),
                       "connection %d to reach b-good" % i)
            c.close()
        got = [r[0] for r in self.good.records()[before:before + 4]]
        self.assertEqual(got, payloads)
        self.assertGreater(self.failures("refused", "a-dead"), fails)

    def test_proxy_header_and_bytes_reach_the_next_backend(self):
        before = len(self.good_proxy.records())
        for i in range(4):
            c = socket.create_connection(("127.0.0.1", self.lbd.pool_port("proxy")), timeout=5)
            c.sendall(b"after the header %d" % i)
            c.shutdown(socket.SHUT_WR)
            wait_until(lambda: len(self.good_proxy.records()) > before + i and
                       self.good_proxy.records()[before + i][1], scaled(5),
                       "connection %d to reach b-good" % i)
            data = self.good_proxy.records()[before + i][0]
            line, _, rest = data.partition(b"\r\n")
            self.assertTrue(line.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "), line)
            self.assertEqual(rest, b"after the header %d" % i)
            c.close()

    def test_bulk_both_ways_with_slow_readers_and_a_half_close(self):
        """Megabytes up and down at once through the splice path: every byte,
        in order, counted exactly."""
        pipes_before = pipe_fds(self.lbd.proc.pid)
        bytes_in = self.lbd.metric("lbd_backend_bytes_in_total", pool="bulk", backend="k")
        bytes_out = self.lbd.metric("lbd_backend_bytes_out_total", pool="bulk", backend="k")
        c = socket.socket()
        slow_reader_buffer(c)
        c.settimeout(scaled(30))
        c.connect(("127.0.0.1", self.lbd.pool_port("bulk")))
        sent = hashlib.sha256()
        send_error = []

        def upload():
            try:
                for chunk in pattern(1, UP_BYTES):
                    c.sendall(chunk)
                    sent.update(chunk)
                c.shutdown(socket.SHUT_WR)  # while the download is still running
            except OSError as exc:
                send_error.append(repr(exc))

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        got, n, half_closed_at = hashlib.sha256(), 0, None
        while True:
            d = c.recv(16384 if n < (2 << 20) else 262144)
            if not d:
                break
            got.update(d)
            n += len(d)
            if n < (2 << 20):
                time.sleep(0.003)  # slow for the first 2 MiB: lbd keeps bytes
            if half_closed_at is None and not uploader.is_alive():
                half_closed_at = n
        uploader.join(scaled(30))
        c.close()
        self.assertEqual(send_error, [])
        self.assertEqual(n, DOWN_BYTES)
        self.assertIsNotNone(half_closed_at)
        self.assertLess(half_closed_at, DOWN_BYTES, "the upload ended after the download")
        wait_until(lambda: self.bulk.results, scaled(30), "the backend to finish")
        up_sha, up_len, down_sha, error = self.bulk.results[-1]
        self.assertIsNone(error)
        self.assertEqual(up_len, UP_BYTES)
        self.assertEqual(up_sha, sent.hexdigest(), "the upload arrived altered")
        self.assertEqual(got.hexdigest(), down_sha, "the download arrived altered")
        wait_until(lambda: self.lbd.metric("lbd_backend_bytes_out_total", pool="bulk",
                                           backend="k") - bytes_out == DOWN_BYTES,
                   scaled(5), "bytes_out to count the download")
        self.assertEqual(self.lbd.metric("lbd_backend_bytes_in_total", pool="bulk",
                                         backend="k") - bytes_in, UP_BYTES)
        # Spliced: the worker keeps empty pipes for the next bulk transfer.
        self.assertGreater(pipe_fds(self.lbd.proc.pid), pipes_before)



if __name__ == "__main__":
    import lbtest
    lbtest.main()
