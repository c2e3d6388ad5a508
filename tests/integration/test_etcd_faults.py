#!/usr/bin/python3
"""lbd when etcd misbehaves: static stability and no lost events.

  - etcd dies: lbd keeps serving the last known pool; when etcd is back, a
    change made since is picked up;
  - the watch's revision is compacted away while lbd is disconnected (three
    members, lbd pointed at one, that one down while the others change and
    compact): lbd re-lists and ends up with exactly the current backends.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, EtcdCluster, Harness, HarnessTestCase, Lbd,  # noqa: E402
                    ask_many, backend_key, scaled, wait_until)

PREFIX = "/lbtest-faults/"
POOL = "web"


def put_backend(client, b):
    client.put(backend_key(PREFIX, POOL, b.id), json.dumps({"addr": b.addr, "weight": 100}))


class EtcdFaults(HarnessTestCase):
    def setUp(self):
        # A fresh world per test: these tests break etcd on purpose.
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)

    def start_lbd(self, etcd_url):
        lbd = Lbd(self.h, etcd_url, PREFIX, [POOL], extra_args=["--shutdown-grace", "2s"]).start()
        self.addCleanup(lbd.stop, 0)
        return lbd

    def answering(self, lbd, ids, n=30):
        counts = ask_many(lbd.pool_port(POOL), n)
        return set(counts) == set(ids) and counts

    def test_keeps_serving_while_etcd_is_down_and_catches_up_after(self):
        etcd = Etcd(self.h).start()
        b1, b2, b3 = (Backend(self.h, i) for i in ("b1", "b2", "b3"))
        put_backend(etcd, b1)
        put_backend(etcd, b2)
        lbd = self.start_lbd(etcd.url)
        wait_until(lambda: self.answering(lbd, {"b1", "b2"}), scaled(10), "b1 and b2 answering")

        etcd.kill()
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            counts = ask_many(lbd.pool_port(POOL), 20)
            self.assertEqual(set(counts), {"b1", "b2"}, "with etcd down: %r" % counts)
        self.assertEqual(lbd.http_get("/healthz")[0], 200)
        self.assertTrue(lbd.proc.alive())

        etcd.restart()
        put_backend(etcd, b3)
        etcd.delete(backend_key(PREFIX, POOL, "b1"))
        # Reconnects back off (capped): allow for a few rounds of it.
        wait_until(lambda: self.answering(lbd, {"b2", "b3"}, 40), scaled(30),
                   "lbd to pick up b3 and drop b1 after etcd came back")

    def test_compacted_watch_relists_and_loses_nothing(self):
        cluster = EtcdCluster(self.h, 3).start()
        a = cluster.members[0]
        servers = {i: Backend(self.h, i) for i in ("b1", "b2", "b3", "b4")}
        put_backend(cluster, servers["b1"])
        put_backend(cluster, servers["b2"])
        lbd = self.start_lbd(a.url)  # one member only: its loss cuts the watch
        wait_until(lambda: self.answering(lbd, {"b1", "b2"}), scaled(10), "b1 and b2 answering")

        a.kill()
        others = [m for m in cluster.members if m is not a]
        wait_until(lambda: others[0].put("/lbtest-faults/probe", "x"), scaled(30),
                   "the two remaining members to take writes")
        others[0].delete(backend_key(PREFIX, POOL, "b1"))
        put_backend(others[0], servers["b3"])
        for i in range(20):
            others[0].put("/lbtest-faults/filler", str(i))
        put_backend(others[0], servers["b4"])
        others[0].compact()

        a.restart()
        a.wait_healthy(scaled(60))
        wait_until(lambda: set(lbd.backends(POOL)) == {"b2", "b3", "b4"}, scaled(30),
                   "lbd to re-list after the compaction (b1 gone, b3 and b4 there)")
        wait_until(lambda: self.answering(lbd, {"b2", "b3", "b4"}, 30), scaled(10),
                   "b2, b3, b4 answering")


if __name__ == "__main__":
    lbtest.main()
