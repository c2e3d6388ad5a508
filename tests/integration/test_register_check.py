#!/usr/bin/python3
"""`lbctl register --check`: the key exists only while the backend is ready.

  - HTTP check: nothing is registered while /ready says 503 (a progress
    line says why), one 200 between failures is not `rise`; after `rise`
    passes the key appears and lbd routes to the backend; fewer than `fall`
    failures keep it; `fall` 503s delete the key and lbd stops routing new
    connections to it, while the lease is kept alive for longer than its
    TTL; ready again: the same lease, the key back, lbd routes again.
    Every transition is one log line with its reason.
  - A /ready that accepts and never answers: the check times out, yet the
    lease keepalives go on (nothing blocks the registrar's loop).
  - TCP check of --addr (the backend's port closes and comes back), and of
    an explicit tcp://HOST:PORT.
  - SIGTERM revokes, ready or not (exit 0).
  - etcd restarts empty while the backend is ready: registered again with a
    new lease; while it is not ready: nothing is put until it is.
  - Bad --check values and timings are usage errors (exit 2, one line).
"""

import http.server
import os
import re
import socketserver
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, Harness, HarnessTestCase, Lbd, Registrar,  # noqa: E402
                    ask_many, lbd_pool, scaled, wait_until)

PREFIX = "/lbtest-check/"
POOL = "web"
TTL_S = 2.0
INTERVAL = "200ms"


class ReadyServer:
    """The application's readiness endpoint on 127.0.0.1: GET /ready answers
    `status` (200 or 503), or, in "hang" mode, reads the request and never
    answers.  `script` is a list of statuses answered first, one per request.
    Counts the answers given, per status."""

    def __init__(self, h, status=503):
        self.lock = threading.Lock()
        self.status = status
        self.script = []
        self.hang = False
        self.answers = []  # (monotonic time, status)
        self.hung = []
        self._release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - the stdlib's name
                with server.lock:
                    hang = server.hang
                    code = server.script.pop(0) if server.script else server.status
                    if not hang:
                        server.answers.append((time.monotonic(), code))
                if hang:
                    server.hung.append(self.connection)
                    server._release.wait(60)
                    return
                body = b"ready\n" if code == 200 else b"not ready\n"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        lbtest.reserve_port(self.port)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        h.servers.append(self)

    @property
    def url(self):
        return "http://127.0.0.1:%d/ready" % self.port

    def set(self, status=None, script=None, hang=False):
        with self.lock:
            if status is not None:
                self.status = status
            self.script = list(script or [])
            self.hang = hang

    def count(self, status=None, since=0.0):
        with self.lock:
            return sum(1 for t, s in self.answers if t >= since and (status is None or s == status))

    def stop(self):
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def check_args(check, rise=2, fall=3, extra=()):
    return ["--check", check, "--check-interval", INTERVAL, "--rise", str(rise),
            "--fall", str(fall)] + list(extra)


class RegisterCheck(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)
        self.etcd = Etcd(self.h).start()

    def registrar(self, backend_id, addr, args):
        return Registrar(self.h, self.etcd, PREFIX, POOL, backend_id, addr, ttl="%ds" % TTL_S,
                         extra_args=args)

    def key(self, backend_id):
        return lbtest.backend_key(PREFIX, POOL, backend_id)

    def lease_of(self, backend_id):
        kv = self.etcd.get_kv(self.key(backend_id))
        return kv and kv["lease"]

    def log_lines(self, reg, msg):
        return [ln for ln in reg.proc.log_text().splitlines() if 'msg="%s"' % msg in ln]

    def logged(self, reg, msg, n=1):
        """The lines of `msg` once there are n of them: the registrar logs a
        change just after etcd has it, so the test may see the key first."""
        wait_until(lambda: len(self.log_lines(reg, msg)) >= n, scaled(2),
                   "%d %r line(s) in the registrar's log" % (n, msg))
        return self.log_lines(reg, msg)

    def absent_until(self, reg, condition, timeout, what):
        """Waits for condition() while asserting the key stays absent."""
        def pred():
            self.assertTrue(reg.proc.alive(), reg.proc.log_tail(20))
            if self.etcd.get(reg.key) is not None:
                raise AssertionError("key %s registered while the backend is not ready:\n%s"
                                     % (reg.key, reg.proc.log_tail(20)))
            return condition()
        try:
            return wait_until(pred, timeout, what)
        except lbtest.WaitTimeout:
            if self.etcd.get(reg.key) is not None:
                raise AssertionError("key registered while the backend is not ready")
            raise

    def present_while(self, reg, condition, timeout, what):
        """Waits for condition() while asserting the key stays present."""
        def pred():
            self.assertTrue(reg.proc.alive(), reg.proc.log_tail(20))
            self.assertIsNotNone(self.etcd.get(reg.key),
                                 "key deleted while it should stay:\n" + reg.proc.log_tail(20))
            return condition()
        return wait_until(pred, timeout, what)

    def test_http_check_follows_readiness_and_lbd_follows_the_key(self):
        b1, b2 = Backend(self.h, "b1"), Backend(self.h, "b2")
        ready = ReadyServer(self.h, status=503)
        reg1 = Registrar(self.h, self.etcd, PREFIX, POOL, "b1", b1.addr,
                         ttl="%ds" % TTL_S).wait_registered()
        lbd = Lbd(self.h, self.etcd.url, PREFIX, [POOL],
                  extra_args=["--shutdown-grace", "1s"]).start()
        self.addCleanup(lbd.stop, 0)
        port = lbd.pool_port(POOL)
        reg = self.registrar("b2", b2.addr, check_args(ready.url, rise=2, fall=3))

        # not ready: checks run, nothing is put; a progress line after ~10 s
        self.absent_until(reg, lambda: self.log_lines(reg, "waiting for the backend's check to pass"),
                          scaled(15), "the progress line while the check fails")
        line = self.log_lines(reg, "waiting for the backend's check to pass")[0]
        self.assertIn("last=\"http 503 from %s\"" % ready.url, line)
        self.assertGreaterEqual(ready.count(503), 20, "a check every 200ms")
        self.assertEqual(set(ask_many(port, 10)), {"b1"})

        # one pass between failures is not `rise`
        t0 = time.monotonic()
        ready.set(status=503, script=[200])
        self.absent_until(reg, lambda: ready.count(200, t0) == 1 and ready.count(503, t0) >= 3,
                          scaled(5), "a single pass, then failures")

        # ready: the key after `rise` passes in a row, then lbd routes to b2
        t_ready = time.monotonic()
        ready.set(status=200)
        wait_until(reg.registered, 3.0, "the key within 3 s of the backend being ready")
        t_key = time.monotonic()
        self.assertGreaterEqual(ready.count(200, t_ready), 2, "registered before `rise` passes")
        sys.stderr.write("\nregistered %.2fs after /ready said 200\n" % (t_key - t_ready))
        reg_lines = self.logged(reg, "registered")
        self.assertEqual(len(reg_lines), 1, reg.proc.log_text())
        self.assertIn('reason="backend ready: http 200 from %s (2 passes in a row)"' % ready.url,
                      reg_lines[0])
        lease = self.lease_of("b2")
        wait_until(lambda: set(ask_many(port, 10)) == {"b1", "b2"}, scaled(10),
                   "lbd to route to b2 once it is registered")

        # fewer than `fall` failures keep the key
        t1 = time.monotonic()
        ready.set(status=200, script=[503, 503])
        self.present_while(reg, lambda: ready.count(503, t1) == 2 and ready.count(200, t1) >= 2,
                           scaled(5), "two failures, then passes")

        # not ready: `fall` failures delete the key; lbd stops routing to b2
        t_down = time.monotonic()
        ready.set(status=503)
        wait_until(lambda: self.etcd.get(reg.key) is None, 3.0,
                   "the key deleted within 3 s of the backend going unready")
        sys.stderr.write("key deleted %.2fs after /ready said 503\n" % (time.monotonic() - t_down))
        self.assertGreaterEqual(ready.count(503, t_down), 3, "deleted before `fall` failures")
        un = self.logged(reg, "unregistered")
        self.assertEqual(len(un), 1, reg.proc.log_text())
        self.assertIn('reason="backend not ready: http 503 from %s (3 failures in a row), '
                      'key deleted"' % ready.url, un[0])
        wait_until(lambda: "b2" not in lbd_pool(lbd, POOL), scaled(5), "lbd to drop b2")
        b2_before = b2.count()
        self.assertEqual(set(ask_many(port, 20)), {"b1"})
        self.assertEqual(b2.count(), b2_before, "no new connection to the unready b2")

        # the lease lives on while unready, longer than its TTL
        t_unready = time.monotonic()
        self.absent_until(reg, lambda: time.monotonic() - t_unready > 2.5 * TTL_S,
                          scaled(10), "unready for longer than the TTL")
        self.assertGreater(self.etcd.lease_ttl(lease)[0], 0, "the lease kept alive while unready")

        # ready again: the same lease, the key back, lbd routes to b2 again
        ready.set(status=200)
        wait_until(reg.registered, 3.0, "the key back within 3 s of ready again")
        self.assertEqual(self.lease_of("b2"), lease)
        wait_until(lambda: set(ask_many(port, 10)) == {"b1", "b2"}, scaled(10),
                   "lbd to route to b2 again")
        self.assertEqual(len(self.logged(reg, "registered", 2)), 2)
        self.assertEqual([ln for ln in reg.proc.log_text().splitlines() if "level=warn" in ln], [])

        # SIGTERM revokes
        self.assertEqual(reg.stop(), 0)
        self.assertIsNone(self.etcd.get(reg.key))
        self.assertEqual(self.etcd.lease_ttl(lease)[0], -1)
        wait_until(lambda: "b2" not in lbd_pool(lbd, POOL), scaled(5), "lbd to drop b2")
        self.assertEqual(reg1.stop(), 0)

    def test_a_check_that_hangs_does_not_stall_the_lease(self):
        b1 = Backend(self.h, "b1")
        ready = ReadyServer(self.h, status=200)
        reg = self.registrar("b1", b1.addr,
                             check_args(ready.url, rise=1, fall=2,
                                        extra=["--check-timeout", "3s"])).wait_registered()
        lease = self.lease_of("b1")
        # each check now hangs for its full 3 s timeout: the registrar must
        # still renew its 2 s lease every ~0.7 s
        t0 = time.monotonic()
        ready.set(hang=True)
        self.present_while(reg, lambda: time.monotonic() - t0 > 5.0, scaled(10),
                           "5 s of hanging checks")
        self.assertEqual(self.lease_of("b1"), lease)
        self.assertGreaterEqual(len(ready.hung), 1)
        # after `fall` timeouts the key goes, with the reason
        wait_until(lambda: self.etcd.get(reg.key) is None, scaled(10), "the key deleted")
        un = self.logged(reg, "unregistered")
        self.assertEqual(len(un), 1, reg.proc.log_text())
        self.assertIn("GET %s failed: no answer within 3s (2 failures in a row), key deleted"
                      % ready.url, un[0])
        self.assertGreater(self.etcd.lease_ttl(lease)[0], 0)
        ready.set(status=200)
        wait_until(reg.registered, scaled(5), "the key back")
        self.assertEqual(reg.stop(), 0)

    def test_tcp_check_of_the_registered_address_and_of_another(self):
        b1 = Backend(self.h, "b1")
        reg = self.registrar("b1", b1.addr, check_args("tcp", rise=2, fall=2))
        wait_until(reg.registered, scaled(5), "b1 registered while its port accepts")
        self.assertIn('reason="backend ready: tcp connect to %s succeeded (2 passes in a row)"'
                      % b1.addr, self.logged(reg, "registered")[0])
        lease = self.lease_of("b1")

        t_kill = time.monotonic()
        b1.kill()
        wait_until(lambda: self.etcd.get(reg.key) is None, 3.0,
                   "the key deleted within 3 s of the port closing")
        sys.stderr.write("\nkey deleted %.2fs after the port closed\n"
                         % (time.monotonic() - t_kill))
        un = self.logged(reg, "unregistered")
        self.assertEqual(len(un), 1, reg.proc.log_text())
        self.assertIn("tcp connect to %s failed: Connection refused (2 failures in a row), key "
                      "deleted" % b1.addr, un[0])

        b1.restart()
        wait_until(reg.registered, 3.0, "the key back within 3 s of the port accepting again")
        self.assertEqual(self.lease_of("b1"), lease)
        self.assertEqual(reg.stop(), 0)
        self.assertIsNone(self.etcd.get(reg.key))

        # tcp://HOST:PORT checks a port other than --addr
        other = Backend(self.h, "side")
        reg2 = self.registrar("b2", "127.0.0.1:9", check_args("tcp://" + other.addr, rise=1,
                                                               fall=1))
        wait_until(reg2.registered, scaled(5), "b2 registered on its side port's check")
        self.assertEqual(self.etcd.get_kv(reg2.key)["value"],
                         '{"addr":"127.0.0.1:9","weight":100}')
        other.kill()
        wait_until(lambda: self.etcd.get(reg2.key) is None, 3.0, "b2's key deleted")
        self.assertEqual(reg2.stop(), 0)

    def test_sigterm_ready_or_not(self):
        ready = ReadyServer(self.h, status=503)
        # never ready: nothing to revoke
        reg = self.registrar("b1", "127.0.0.1:9", check_args(ready.url))
        self.absent_until(reg, lambda: ready.count(503) >= 3, scaled(5), "a few failed checks")
        self.assertEqual(reg.stop(), 0)
        self.assertIn('msg="stopping, was not registered"', reg.proc.log_text())
        # ready once, then not: the lease is held, and SIGTERM revokes it
        ready.set(status=200)
        reg = self.registrar("b1", "127.0.0.1:9", check_args(ready.url, rise=1, fall=1))
        wait_until(reg.registered, scaled(5), "registered")
        lease = self.lease_of("b1")
        ready.set(status=503)
        wait_until(lambda: self.etcd.get(reg.key) is None, scaled(5), "the key deleted")
        t0 = time.monotonic()
        self.assertEqual(reg.stop(), 0)
        self.assertLess(time.monotonic() - t0, 2.0, "SIGTERM answered at once")
        self.assertEqual(self.etcd.lease_ttl(lease)[0], -1, "the lease revoked")
        self.assertIn('msg="deregistered"', reg.proc.log_text())

    def test_etcd_restarts_empty(self):
        ready = ReadyServer(self.h, status=200)
        reg = self.registrar("b1", "127.0.0.1:9", check_args(ready.url, rise=1, fall=1))
        wait_until(reg.registered, scaled(5), "registered")
        lease = self.lease_of("b1")

        # ready: registered again with a new lease within one TTL
        self.etcd.wipe()
        self.etcd.restart()
        t_back = time.monotonic()
        new_lease = wait_until(lambda: self.lease_of("b1"), TTL_S,
                               "the key again within one TTL of etcd's return")
        sys.stderr.write("\nre-registered %.2fs after etcd came back empty\n"
                         % (time.monotonic() - t_back))
        self.assertNotEqual(new_lease, lease)

        # not ready: the lease is lost, and nothing is put until the check passes
        ready.set(status=503)
        wait_until(lambda: self.etcd.get(reg.key) is None, scaled(5), "the key deleted")
        self.etcd.wipe()
        self.etcd.restart()
        self.absent_until(
            reg, lambda: self.log_lines(reg, "lease lost while the backend is not ready; a new one "
                                             "is granted when its check passes"),
            scaled(10), "the registrar to notice the lost lease")
        t0 = time.monotonic()
        self.absent_until(reg, lambda: time.monotonic() - t0 > TTL_S, scaled(5),
                          "a TTL with etcd back and the backend unready")
        ready.set(status=200)
        wait_until(reg.registered, scaled(5), "registered once ready")
        self.assertEqual(reg.stop(), 0)

    def test_flag_errors(self):
        base = [lbtest.lbctl_binary(), "register", "--etcd", self.etcd.url, "--prefix", PREFIX,
                "--pool", POOL, "--id", "b1", "--addr", "127.0.0.1:9"]
        cases = [
            (["--check", "ftp://127.0.0.1/ready"],
             r'^lbctl register: --check "ftp://127.0.0.1/ready": use tcp, tcp://HOST:PORT or '
             r'http://HOST:PORT/PATH'),
            (["--check", "https://127.0.0.1/ready"], r'--check "https://127.0.0.1/ready": use tcp'),
            (["--check", "tcp://nowhere"], r'--check "tcp://nowhere": missing port'),
            (["--check", "http://127.0.0.1:99999/"], r'--check "http://127.0.0.1:99999/": port'),
            (["--check", "http:///ready"], r'--check "http:///ready": no host'),
            (["--check", "tcp", "--rise", "0"], r"--rise: 0 is out of range \(1\.\.100\)"),
            (["--check", "tcp", "--fall", "0"], r"--fall: 0 is out of range"),
            (["--check", "tcp", "--check-interval", "1ms"],
             r"--check-interval: 1ms is out of range \(100ms\.\.1h\)"),
            (["--check", "tcp", "--check-interval", "2"], r"--check-interval: \"2\": duration needs"),
            (["--check", "tcp", "--check-timeout", "1ms"], r"--check-timeout: 1ms is out of range"),
        ]
        for extra, pattern in cases:
            with self.subTest(args=extra):
                rc, out, err = lbtest.run(base + extra, timeout=scaled(10))
                self.assertEqual(rc, 2, err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
                self.assertRegex(err, pattern)
        env = {"LBCTL_CHECK": "smtp://x"}
        rc, out, err = lbtest.run(base, timeout=scaled(10), env=env)
        self.assertEqual(rc, 2, err)
        self.assertIn('--check "smtp://x"', err)
        env = {"LBCTL_CHECK": "tcp", "LBCTL_RISE": "0"}
        rc, out, err = lbtest.run(base, timeout=scaled(10), env=env)
        self.assertEqual(rc, 2, err)
        self.assertIn("LBCTL_RISE", err)
        rc, out, err = lbtest.run([lbtest.lbctl_binary(), "register", "--help"],
                                  timeout=scaled(10))
        self.assertEqual(rc, 0)
        for flag in ("--check ", "--check-interval", "--check-timeout", "--rise", "--fall",
                     "LBCTL_CHECK", "LBCTL_RISE", "LBCTL_FALL", "LBCTL_CHECK_INTERVAL"):
            self.assertIn(flag, out)
        self.assertIsNone(re.search(r"level=", err))


if __name__ == "__main__":
    lbtest.main()
