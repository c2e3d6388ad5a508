#!/usr/bin/python3
"""Checks the integration harness itself: real etcd (one member and three),
the id-and-echo backends, ports and waiting.  Needs no lbd binary, so it
tells a broken harness or a broken machine from a broken lbd."""

import json
import os
import socket
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import Backend, Etcd, EtcdCluster, Harness, ask, ask_many, echo, open_conn, wait_until  # noqa: E402


class PortsAndWaiting(unittest.TestCase):
    def test_free_ports_are_unique_and_bindable(self):
        ports = [lbtest.free_port() for _ in range(50)]
        self.assertEqual(len(ports), len(set(ports)))
        for p in ports[:5]:
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            s.close()

    def test_wait_until_names_what_it_waited_for(self):
        with self.assertRaises(AssertionError) as cm:
            wait_until(lambda: 1 / 0, 0.2, "the impossible")
        self.assertIn("the impossible", str(cm.exception))
        self.assertIn("ZeroDivisionError", str(cm.exception))
        self.assertEqual(wait_until(lambda: 42, 1, "a value"), 42)

    def test_prometheus_parser(self):
        text = ('# HELP x y\n# TYPE lbd_backend_active gauge\n'
                'lbd_backend_active{pool="web",backend="b\\"1"} 3\n'
                'lbd_up 1 1700000000\nlbd_ratio 1.5e-3\n')
        got = lbtest.parse_prometheus(text)
        self.assertEqual(got[0], ("lbd_backend_active", {"pool": "web", "backend": 'b"1'}, 3.0))
        self.assertEqual(got[1][2], 1.0)
        self.assertAlmostEqual(got[2][2], 0.0015)


class Backends(unittest.TestCase):
    def setUp(self):
        self.h = Harness("backend")
        self.addCleanup(self.h.cleanup)

    def test_answers_with_id_then_echoes_and_counts(self):
        b = Backend(self.h, "b-one")
        self.assertEqual(ask(b.port), "b-one")
        s, bid = open_conn(b.port)
        with s:
            self.assertEqual(bid, "b-one")
            self.assertEqual(echo(s, b"hello\n" * 1000), b"hello\n" * 1000)
            wait_until(lambda: b.active() == 1, 5, "one open connection on the backend")
        self.assertEqual(ask_many(b.port, 20), {"b-one": 20})
        self.assertEqual(b.count(), 22)
        # A health check (connect, close) is a connection but not a client.
        socket.create_connection(("127.0.0.1", b.port)).close()
        wait_until(lambda: b.accepted == 23, 5, "the bare connection accepted")
        self.assertEqual(b.count(), 22)
        self.assertEqual(len(b.client_times()), 22)
        b.stop()
        self.assertFalse(lbtest.port_is_open(b.port))

    def test_kill_refuses_at_once_and_restart_serves_on_the_same_port(self):
        b = Backend(self.h, "b-two")
        port = b.port
        held, bid = open_conn(port)
        with held:
            self.assertEqual(bid, "b-two")
            b.kill()
            self.assertFalse(lbtest.port_is_open(port), "the port still accepts after kill()")
            held.settimeout(5)
            self.assertEqual(held.recv(64), b"", "an open connection outlived kill()")
        b.restart()
        self.assertEqual(b.port, port)
        self.assertEqual(ask(port), "b-two")
        self.assertEqual(b.count(), 2, "counts carry on across a restart")
        b.restart()  # while up: a crash and a restart
        self.assertEqual(ask(port), "b-two")
        self.assertEqual(b.count(), 3)

    def test_proxy_header_mode_reports_the_header_then_echoes(self):
        b = Backend(self.h, "pp", proxy_header=True)
        v1 = b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 8080\r\n"
        v2 = (lbtest.PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12)
              + socket.inet_aton("127.0.0.9") + socket.inet_aton("127.0.0.1")
              + struct.pack("!HH", 40000, 8080))
        for header, version in ((v1, 1), (v2, 2)):
            with socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
                s.sendall(header + b"after the header\n")
                info = json.loads(lbtest.read_line(s, limit=4096))
                self.assertEqual((info["id"], info["version"], info["family"]),
                                 ("pp", version, "TCP4"))
                self.assertEqual(info["src"], ["127.0.0.9", 40000])
                self.assertEqual(info["dst"], ["127.0.0.1", 8080])
                self.assertEqual(lbtest.read_line(s), "after the header")
        with socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            info = json.loads(lbtest.read_line(s, limit=4096))
            self.assertIn("error", info)
            try:
                rest = s.recv(64)
            except ConnectionResetError:  # closed with the request unread
                rest = b""
            self.assertEqual(rest, b"", "a connection without a header is closed")

    def test_refusing_backend_is_a_free_port(self):
        self.assertFalse(lbtest.port_is_open(lbtest.free_port()))


# A test script whose tests fail in every way unittest knows, each after
# starting a process that printed a marker: its log must show on stderr.
FAILING_SCRIPT = """
import os, sys
sys.path.insert(0, %(path)r)
import lbtest

def talker(h, marker):
    # The log's first line holds the command: what it printed is "said-<marker>".
    p = h.spawn(marker, ["/bin/sh", "-c", "echo said-$0; exec sleep 60", marker])
    lbtest.wait_until(lambda: "said-" + marker in p.log_text(), 10, "the marker in the log")

class ClassHarness(lbtest.HarnessTestCase):
    def test_a_fails(self):
        talker(self.h, "marker-a-fails")
        self.fail("on purpose")

    def test_b_raises(self):
        talker(self.h, "marker-b-raises")
        raise RuntimeError("on purpose")

    def test_c_passes(self):
        talker(self.h, "marker-c-passes")

    def test_d_fails_in_a_subtest(self):
        talker(self.h, "marker-d-subtest")
        with self.subTest(n=1):
            self.fail("on purpose")

class TestHarness(lbtest.HarnessTestCase):
    def setUp(self):
        self.h = lbtest.Harness("own")
        self.addCleanup(self.h.cleanup)

    def test_e_fails_with_a_harness_of_its_own(self):
        talker(self.h, "marker-e-own")
        self.fail("on purpose")

    def test_f_passes_with_a_harness_of_its_own(self):
        talker(self.h, "marker-f-own")

if __name__ == "__main__":
    lbtest.main()
"""


class FailureLogs(unittest.TestCase):
    """The logs of what a failed test started reach stderr (the CI log)."""

    def test_failed_tests_print_the_logs_of_what_they_started(self):
        h = Harness("failing")
        self.addCleanup(h.cleanup)
        script = h.path("failing_test.py")
        with open(script, "w") as f:
            f.write(FAILING_SCRIPT % {"path": os.path.dirname(os.path.abspath(__file__))})
        rc, out, err = lbtest.run([sys.executable, script], timeout=120,
                                  env={"PYTHONDONTWRITEBYTECODE": "1"})
        self.assertEqual(rc, 1, err)

        def dumped(test):
            return "===== __main__.%s failed: logs =====" % test

        for test, marker in (("ClassHarness.test_a_fails", "marker-a-fails"),
                             ("ClassHarness.test_b_raises", "marker-b-raises"),
                             ("ClassHarness.test_d_fails_in_a_subtest", "marker-d-subtest"),
                             ("TestHarness.test_e_fails_with_a_harness_of_its_own",
                              "marker-e-own")):
            self.assertIn(dumped(test), err, "no logs printed for the failed %s" % test)
            after = err.split(dumped(test), 1)[1]
            self.assertIn("\nsaid-%s\n" % marker, after, "%s's log is missing" % test)
        for test in ("ClassHarness.test_c_passes",
                     "TestHarness.test_f_passes_with_a_harness_of_its_own"):
            self.assertNotIn(dumped(test), err, "logs printed for %s, which passed" % test)


class SingleEtcd(unittest.TestCase):
    def setUp(self):
        self.h = Harness("etcd")
        self.addCleanup(self.h.cleanup)
        self.etcd = Etcd(self.h).start()

    def test_put_get_delete_prefix_through_gateway_and_etcdctl(self):
        e = self.etcd
        rev = e.put("/t/pools/web/backends/b1", '{"addr":"127.0.0.1:1","weight":100}')
        self.assertGreater(rev, 1)
        self.assertEqual(json.loads(e.get("/t/pools/web/backends/b1"))["weight"], 100)
        rc, out, err = e.etcdctl("put", "/t/pools/web/backends/b2", '{"addr":"127.0.0.1:2"}')
        self.assertEqual(rc, 0, err)
        self.assertEqual(sorted(e.get_prefix("/t/pools/web/")),
                         ["/t/pools/web/backends/b1", "/t/pools/web/backends/b2"])
        rc, out, err = e.etcdctl("get", "--prefix", "/t/", "--keys-only")
        self.assertEqual(rc, 0, err)
        self.assertIn("/t/pools/web/backends/b2", out)
        self.assertEqual(e.delete("/t/pools/web/backends/b1"), 1)
        self.assertIsNone(e.get("/t/pools/web/backends/b1"))
        self.assertEqual(e.delete_prefix("/t/"), 1)
        self.assertEqual(e.get_prefix("/t/"), {})

    def test_lease_expiry_and_revoke(self):
        e = self.etcd
        lease = e.grant(2)
        e.put("/t/leased", "x", lease=lease)
        self.assertEqual(e.get("/t/leased"), "x")
        e.revoke(lease)
        self.assertIsNone(e.get("/t/leased"))
        lease = e.grant(1)
        e.put("/t/leased", "y", lease=lease)
        wait_until(lambda: e.get("/t/leased") is None, 10, "leased key to expire")

    def test_compact(self):
        e = self.etcd
        for i in range(5):
            e.put("/t/k", str(i))
        rev = e.compact()
        rc, out, err = e.etcdctl("get", "/t/k", "--rev", str(rev - 2))
        self.assertNotEqual(rc, 0)
        self.assertIn("compacted", err)

    def test_kill_and_restart_keep_data_and_ports(self):
        e = self.etcd
        e.put("/t/survives", "yes")
        url = e.url
        e.kill()
        self.assertFalse(e.proc.alive())
        self.assertFalse(lbtest.port_is_open(e.client_port))
        e.restart()
        self.assertEqual(e.url, url)
        self.assertEqual(e.get("/t/survives"), "yes")
        e.stop()
        e.restart()
        self.assertEqual(e.get("/t/survives"), "yes")


class ThreeMemberEtcd(unittest.TestCase):
    def setUp(self):
        self.h = Harness("cluster")
        self.addCleanup(self.h.cleanup)

    def test_cluster_survives_one_member_loss(self):
        c = EtcdCluster(self.h, 3).start()
        self.assertEqual(len(c.url.split(",")), 3)
        c.put("/t/a", "1")
        for m in c.members:
            rc, out, err = m.etcdctl("get", "/t/a", "--print-value-only", "--consistency", "s")
            self.assertEqual((rc, out.strip()), (0, "1"), err)
        victim = c.members[c.leader()]
        victim.kill()
        wait_until(lambda: c.put("/t/b", "2"), 30, "a write with one member down")
        victim.restart()
        victim.wait_healthy()
        wait_until(lambda: victim.get("/t/b") == "2", 30, "restarted member to catch up")


if __name__ == "__main__":
    lbtest.main()
