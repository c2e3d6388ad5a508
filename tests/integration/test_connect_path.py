#!/usr/bin/python3
"""The connect to a backend, when lbd does not wait to be told it finished.

lbd forwards a client's bytes while its connect to the backend is still in
flight and takes the first success (the backend took bytes, sent some, or
closed) as the proof; only when neither side speaks does the connect
timeout ask the kernel.  What must hold on every path:

  - a client and a backend that both stay silent past connect_timeout: the
    connection is not failed, not retried, not counted as a connect
    failure, and data flows afterwards;
  - a client that sends and closes at once: the backend gets every byte,
    then the EOF (half-close forwarded only after the connect is done);
  - a client that connects and closes without a byte: the backend sees a
    connection and its EOF, nothing is counted as a failure;
  - a refused first backend while the client has already sent: the
    client's bytes reach the next backend whole, in order, and the refusal
    is counted as a connect failure and a retry;
  - the same with the PROXY protocol: the next backend gets the header,
    then the bytes.
"""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lbtest import Etcd, HarnessTestCase, Lbd, free_port, scaled, wait_until  # noqa: E402

PREFIX = "/connect/"
CONNECT_TIMEOUT = 0.5


class QuietBackend:
    """Accepts and records everything each connection sends, until EOF;
    says nothing unless told to echo.  Records (bytes, saw_eof) per connection."""

    def __init__(self, h, echo=False):
        self.echo = echo
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []  # [bytearray, eof_seen]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()
        h.servers.append(self)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            rec = [bytearray(), False]
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self._serve, args=(c, rec), daemon=True).start()

    def _serve(self, c, rec):
        try:
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
        except OSError:
            return
        finally:
            c.close()

    def records(self):
        with self.lock:
            return [(bytes(b), eof) for b, eof in self.conns]

    def stop(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class ConnectPathTest(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.etcd = Etcd(cls.h).start()
        policy = {"health": {"type": "none"}, "connect_timeout": "%gs" % CONNECT_TIMEOUT,
                  "retries": 1, "algorithm": "wrr"}
        for pool in ["quiet", "eof", "refused", "proxy"]:
            p = dict(policy)
            if pool == "proxy":
                p["proxy_protocol"] = "v1"
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
        cls.lbd = Lbd(cls.h, cls.etcd.url, PREFIX, ["quiet", "eof", "refused", "proxy"]).start()
        for pool, n in [("quiet", 1), ("eof", 1), ("refused", 2), ("proxy", 2)]:
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


if __name__ == "__main__":
    import lbtest
    lbtest.main()
