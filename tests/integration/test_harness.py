#!/usr/bin/python3
"""Checks the integration harness itself: real etcd (one member and three),
the id-and-echo backends, ports and waiting.  Needs no lbd binary, so it
tells a broken harness or a broken machine from a broken lbd."""

import json
import os
import socket
import sys
import time
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

    def test_refusing_backend_is_a_free_port(self):
        self.assertFalse(lbtest.port_is_open(lbtest.free_port()))


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
