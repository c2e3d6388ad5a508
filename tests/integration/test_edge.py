#!/usr/bin/python3
"""lbd at the edge of a Kubernetes cluster: what a rollout and a cloud load
balancer in front ask of it.

  1. --shutdown-delay: on SIGTERM /readyz turns 503 and the gRPC health
     check NOT_SERVING at once, while a client connecting every 5 ms sees
     no refusal for the whole delay; then the listener closes, an open
     connection goes on, and lbd exits 0 once it is done;
  2. --pool NAME=ADDR:PORT,accept-proxy: PROXY v1 and v2 headers (TCP4,
     TCP6, LOCAL, trickled byte by byte, followed by data in the same
     packet) give the client address lbd passes on in its own PROXY header
     to the backend and uses for maglev; a bad header, a client that
     closes early and one that sends nothing for 5 s are closed and counted
     in lbd_pool_proxy_header_errors_total;
  3. bad options of --pool get one error line and exit 2;
  4. --etcd with a user and password in the URL (a Secret pasted into a
     flag) is refused by lbd and lbctl without echoing the password, and so
     is a URL with a path or no host; a --prefix lbctl would refuse, lbd
     refuses at --check;
  5. a pool address another process listens on with SO_REUSEPORT (a second
     lbd started by mistake) is refused, not silently shared;
  6. --etcd naming a web server that is not etcd (a wrong port), or a port
     that takes connections and never answers, says so in the error, and
     lbd goes on serving its probes.
"""

import http.server
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, ClientLoop, Etcd, HarnessTestCase, Lbd, figure,  # noqa: E402
                    recv_line_bytes, scaled, wait_until)

PREFIX = "/edge/"
NO_CHECKS = {"type": "none"}
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def config_key(pool):
    return "%spools/%s/config" % (PREFIX, pool)


def v2_header(src, dst, sport, dport, command=1, tlv=b""):
    if ":" in src:
        fam, addrs = 0x21, socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(
            socket.AF_INET6, dst)
    else:
        fam, addrs = 0x11, socket.inet_aton(src) + socket.inet_aton(dst)
    body = addrs + struct.pack("!HH", sport, dport) + tlv
    return V2_SIG + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body


def health_status(admin, service=""):
    """grpc.health.v1.Health/Check: 1 SERVING, 2 NOT_SERVING."""
    req = b"" if not service else b"\x0a" + bytes([len(service)]) + service.encode()
    with grpc.insecure_channel(admin) as ch:
        resp = ch.unary_unary("/grpc.health.v1.Health/Check")(req, timeout=5)
    return resp[1] if len(resp) >= 2 and resp[0] == 0x08 else 0


class Edge(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        cls.etcd = Etcd(cls.h).start()

    def backend(self, pool, bid, proxy_header=False):
        b = Backend(self.h, bid, proxy_header=proxy_header)
        self.etcd.put(lbtest.backend_key(PREFIX, pool, bid), json.dumps({"addr": b.addr}))
        return b

    # -- 1 ---------------------------------------------------------------

    def test_1_shutdown_delay_keeps_accepting_while_not_ready(self):
        self.etcd.put(config_key("sd"), json.dumps({"health": NO_CHECKS}))
        self.backend("sd", "sd1")
        lbd = Lbd(self.h, self.etcd.url, PREFIX, ["sd"],
                  extra_args=["--shutdown-delay", "2s", "--shutdown-grace", "10s"]).start()
        port = lbd.pool_port("sd")
        wait_until(lambda: "sd1" in lbd.backends("sd"), scaled(10), "lbd to list sd1")
        self.assertEqual(health_status(lbd.admin), 1, "SERVING while ready")
        held = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(held.close)
        self.assertEqual(recv_line_bytes(held).strip(), b"sd1")

        loop = ClientLoop(port, interval=0.005, timeout=2.0)
        time.sleep(0.3)
        t0 = time.monotonic()
        lbd.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: lbd.http_get("/readyz")[0] == 503, 0.5, "/readyz 503 after SIGTERM")
        t_ready = time.monotonic() - t0
        self.assertEqual(health_status(lbd.admin), 2, "gRPC health NOT_SERVING after SIGTERM")
        self.assertEqual(health_status(lbd.admin, "liveness"), 1, "liveness stays SERVING")
        # Through the delay: every connection served.
        time.sleep(1.8)
        during = [r for r in loop.records if t0 <= r[0] <= t0 + 1.9]
        bad = [r for r in during if r[3]]
        figure("shutdown delay: /readyz 503 after", "%.3f" % t_ready, "s")
        figure("shutdown delay: connections during the delay", "%d, failed %d" % (len(during),
                                                                                   len(bad)))
        self.assertGreater(len(during), 100, "the client loop ran during the delay")
        self.assertEqual(bad, [], "connections that failed during the shutdown delay")
        # After the delay the listener closes: new connections are refused.
        wait_until(lambda: loop.records and loop.records[-1][3] is not None, scaled(3),
                   "new connections to be refused after the delay")
        records = loop.stop()
        first_refused = min(r[0] for r in records if r[3]) - t0
        figure("shutdown delay: first refused connection after", "%.3f" % first_refused, "s")
        self.assertGreaterEqual(first_refused, 1.95, "refused before the delay was over")
        # The connection open all along still works, and lbd waits for it.
        self.assertEqual(lbtest.echo(held, b"still here\n"), b"still here\n")
        self.assertTrue(lbd.proc.alive(), "lbd left before its open connection finished")
        held.close()
        rc = lbd.proc.wait(scaled(10))
        self.assertEqual(rc, 0, lbd.proc.log_tail(20))

    # -- 2 ---------------------------------------------------------------

    def test_2_accept_proxy(self):
        self.etcd.put(config_key("ap"), json.dumps({"health": NO_CHECKS, "proxy_protocol": "v1"}))
        self.etcd.put(config_key("apm"), json.dumps({"health": NO_CHECKS, "algorithm": "maglev"}))
        self.etcd.put(config_key("plain"), json.dumps({"health": NO_CHECKS}))
        self.backend("ap", "ap1", proxy_header=True)
        for i in range(4):
            self.backend("apm", "m%d" % i)
        self.backend("plain", "pl1")
        lbd = Lbd(self.h, self.etcd.url, PREFIX, ["ap", "apm", "plain"])
        lbd.pools = {p: lbtest.free_port() for p in ("ap", "apm", "plain")}
        base_argv = lbd.argv

        def argv():
            a = base_argv()
            for p in ("ap", "apm"):
                i = a.index("%s=127.0.0.1:%d" % (p, lbd.pools[p]))
                a[i] += ",accept-proxy"
            return a
        lbd.argv = argv
        lbd.start()
        wait_until(lambda: len(lbd.backends("apm")) == 4 and "ap1" in lbd.backends("ap"),
                   scaled(10), "lbd to list the backends")
        ap, apm = lbd.pool_port("ap"), lbd.pool_port("apm")

        def through_ap(header, pieces=1, data=b"payload after the header\n"):
            with socket.create_connection(("127.0.0.1", ap), timeout=5) as s:
                blob = header + data
                step = max(1, len(header) // pieces) if pieces > 1 else len(blob)
                for i in range(0, len(blob), step):
                    s.sendall(blob[i:i + step])
                    if pieces > 1:
                        time.sleep(0.01)
                info = json.loads(recv_line_bytes(s))
                got = b""
                while len(got) < len(data):
                    chunk = s.recv(len(data) - len(got))
                    if not chunk:
                        break
                    got += chunk
                self.assertEqual(got, data, "the client's bytes after its header")
                return info

        info = through_ap(b"PROXY TCP4 198.51.100.7 203.0.113.9 40000 443\r\n")
        figure("accept-proxy v1 in, v1 out: backend saw", info.get("line"))
        self.assertEqual(info["src"], ["198.51.100.7", 40000])
        self.assertEqual(info["dst"], ["203.0.113.9", 443])
        info = through_ap(v2_header("198.51.100.8", "203.0.113.9", 40001, 80, tlv=b"\x03\x00\x04abcd"))
        self.assertEqual(info["src"], ["198.51.100.8", 40001])
        info = through_ap(b"PROXY TCP6 2001:db8::7 2001:db8::1 41000 443\r\n", pieces=40)
        figure("accept-proxy v1 TCP6 trickled: backend saw", info.get("line"))
        self.assertEqual(info["src"], ["2001:db8::7", 41000])
        info = through_ap(V2_SIG + b"\x20\x00\x00\x00")  # LOCAL: the connection's own address
        self.assertEqual(info["src"][0], "127.0.0.1")

        # maglev hashes the address from the header.
        def pick(src):
            with socket.create_connection(("127.0.0.1", apm), timeout=5) as s:
                s.sendall(("PROXY TCP4 %s 203.0.113.9 %d 443\r\n" % (src, 30000)).encode())
                return recv_line_bytes(s)
        picks = {src: {pick(src) for _ in range(5)} for src in
                 ("198.51.100.%d" % i for i in range(1, 21))}
        figure("accept-proxy maglev: backends per header address",
               sorted(len(v) for v in picks.values())[-1])
        self.assertTrue(all(len(v) == 1 for v in picks.values()), picks)
        self.assertGreaterEqual(len(set().union(*picks.values())), 2, picks)

        # A pool without accept-proxy passes a header on as data.
        with socket.create_connection(("127.0.0.1", lbd.pool_port("plain")), timeout=5) as s:
            self.assertEqual(recv_line_bytes(s).strip(), b"pl1")
            hdr = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
            self.assertEqual(lbtest.echo(s, hdr), hdr)

        # Bad, short and missing headers: closed and counted.
        before = lbd.metric("lbd_pool_proxy_header_errors_total", pool="ap") or 0
        for bad in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PROXY TCP4 1.2.3.4\r\n",
                    b"PROXY TCP4 " + b"9" * 200, V2_SIG + b"\x21\x11\x00\x04abcd"):
            with socket.create_connection(("127.0.0.1", ap), timeout=5) as s:
                s.sendall(bad)
                s.settimeout(5)
                try:
                    self.assertEqual(s.recv(100), b"", "lbd closes a client with a bad header")
                except ConnectionResetError:
                    pass
        with socket.create_connection(("127.0.0.1", ap), timeout=5) as s:
            s.sendall(b"PROXY TCP4 1.2")
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            self.assertEqual(s.recv(100), b"")
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", ap), timeout=15) as s:
            self.assertEqual(s.recv(100), b"", "lbd closes a client that sends no header")
            waited = time.monotonic() - t0
        figure("accept-proxy: silent client closed after", "%.1f" % waited, "s")
        self.assertTrue(4.5 <= waited <= 7.0, waited)
        wait_until(lambda: (lbd.metric("lbd_pool_proxy_header_errors_total", pool="ap") or 0)
                   - before == 6, scaled(5), "6 header errors counted")
        self.assertIn("accept-proxy", lbd.log_text())
        # The pool still serves.
        info = through_ap(b"PROXY TCP4 198.51.100.9 203.0.113.9 40002 443\r\n")
        self.assertEqual(info["src"], ["198.51.100.9", 40002])
        lbd.stop(expect_rc=0)

    def test_3_pool_option_errors(self):
        for opt, want in ((",accept-proxi", "unknown option"), (",", "unknown option")):
            rc, out, err = lbtest.run([lbtest.lbd_binary(), "--etcd", self.etcd.url, "--pool",
                                       "x=127.0.0.1:%d%s" % (lbtest.free_port(), opt)],
                                      timeout=10)
            self.assertEqual(rc, 2, out + err)
            self.assertIn(want, err)
            self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_4_etcd_url_errors(self):
        """A password in --etcd is refused without being echoed, and so are a path and a bad port."""
        port = lbtest.free_port()
        for url, want in (("http://admin:hunter2@127.0.0.1:2379", "--etcd-user-file"),
                          ("http://127.0.0.1:2379/v3?x=1", "host and port alone"),
                          ("https://", "has no host"),
                          ("http://127.0.0.1:0", "port must be a number from 1 to 65535"),
                          ("http://127.0.0.1:+2379", "port must be a number from 1 to 65535"),
                          ("http://[::1", "[addr]:port")):
            for argv in ([lbtest.lbd_binary(), "--check", "--pool", "x=127.0.0.1:%d" % port],
                         [lbtest.lbctl_binary(), "policy", "get", "x"]):
                with self.subTest(url=url, prog=os.path.basename(argv[0])):
                    rc, out, err = lbtest.run(argv + ["--etcd", url], timeout=10)
                    self.assertEqual(rc, 2, out + err)
                    self.assertIn(want, err)
                    self.assertNotIn("hunter2", out + err)
                    self.assertEqual(len(err.strip().splitlines()), 1, err)
        # a prefix lbctl register would refuse, lbd refuses too, at --check already
        for prefix in ("lb/", ""):
            rc, out, err = lbtest.run([lbtest.lbd_binary(), "--check", "--pool",
                                       "x=127.0.0.1:%d" % port, "--etcd", "http://127.0.0.1:2379",
                                       "--prefix", prefix], timeout=10)
            self.assertEqual(rc, 2, out + err)
            self.assertIn("--prefix: key prefix must start with '/'", err)

    def test_5_pool_port_of_another_process_is_refused(self):
        other = socket.socket()
        self.addCleanup(other.close)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        rc, out, err = lbtest.run([lbtest.lbd_binary(), "--etcd", self.etcd.url, "--pool",
                                   "x=127.0.0.1:%d" % port, "--admin", "127.0.0.1:0",
                                   "--http", "127.0.0.1:0"], timeout=20)
        self.assertEqual(rc, 1, out + err)
        lines = [ln for ln in err.splitlines() if "Address already in use" in ln]
        self.assertEqual(len(lines), 1, err)
        self.assertIn("--upgrade-socket", lines[0])

    def test_6_etcd_url_of_something_else_is_named_in_the_error(self):
        web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        web.daemon_threads = True
        threading.Thread(target=web.serve_forever, daemon=True).start()
        self.addCleanup(web.server_close)
        self.addCleanup(web.shutdown)
        lbd = Lbd(self.h, "http://127.0.0.1:%d" % web.server_address[1], PREFIX, ["x"],
                  name="lbd-not-etcd").start(wait_ready=False)
        try:
            wait_until(lambda: "etcd's client URL" in lbd.log_text(), scaled(10),
                       "the retry line to say the endpoint is not etcd")
            line = [ln for ln in lbd.log_text().splitlines() if "etcd's client URL" in ln][0]
            self.assertIn("HTTP 501", line)
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % lbd.http_port, timeout=5) as r:
                self.assertEqual(r.status, 200)
        finally:
            lbd.stop(expect_rc=0)
        # one that takes the connection and never answers (the same words in lbd and lbctl)
        hole = socket.socket()
        self.addCleanup(hole.close)
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        rc, out, err = lbtest.run([lbtest.lbctl_binary(), "policy", "get", "x", "--etcd",
                                   "http://127.0.0.1:%d" % hole.getsockname()[1],
                                   "--etcd-timeout", "1s"], timeout=20)
        self.assertNotEqual(rc, 0, out + err)
        self.assertIn("took the connection but sent no answer in time", err)
        self.assertIn("not etcd's client URL", err)
        # lbd before the request's own timeout (10 s): a progress line every 5 s, not silence
        lbd = Lbd(self.h, "http://127.0.0.1:%d" % hole.getsockname()[1], PREFIX, ["x"],
                  name="lbd-stuck-etcd").start(wait_ready=False)
        try:
            wait_until(lambda: "still waiting for the first etcd listing" in lbd.log_text(),
                       scaled(8), "a progress line while etcd does not answer")
            line = [ln for ln in lbd.log_text().splitlines() if "still waiting" in ln][0]
            self.assertIn("waited_s=5", line)
            self.assertIn("/readyz 503", line)
            self.assertEqual(lbd.http_get("/readyz")[0], 503)
        finally:
            lbd.stop(expect_rc=0)


if __name__ == "__main__":
    lbtest.main()
