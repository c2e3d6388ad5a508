#!/usr/bin/python3
"""lbd when etcd misbehaves: static stability and no lost events.

  - etcd dies: lbd keeps serving the last known pool; when etcd is back, a
    change made since is picked up;
  - the watch's revision is compacted away while lbd is cut off from etcd
    (etcd moved to a port only the test knows while the test deletes, adds,
    re-weights and compacts): lbd re-lists, says so in its log, and ends up
    with exactly etcd's backends, weights included;
  - a delete made while lbd is cut off, at the very revision etcd is then
    compacted to: etcd 3.4 drops that tombstone (etcd-io/etcd#18089), so a
    watch resumed after lbd's last revision would never see the delete; lbd
    resumes at its last revision, is told "compacted" and re-lists.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, Harness, HarnessTestCase, Lbd,  # noqa: E402
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
        # etcd listens on a second port only the test uses.  hide() brings it
        # back on that port alone: lbd's endpoint refuses, lbd backs off and
        # keeps its revision R, while the test deletes, adds and re-weights
        # backends and compacts past R.  unhide() gives lbd its endpoint
        # back: the resumed watch is refused as compacted, lbd re-lists and
        # applies the difference.
        etcd = Etcd(self.h, side_port=True).start()
        servers = {i: Backend(self.h, i) for i in ("b1", "b2", "b3", "b4")}
        put_backend(etcd, servers["b1"])
        put_backend(etcd, servers["b2"])
        lbd = Lbd(self.h, etcd.url, PREFIX, [POOL],
                  extra_args=["--shutdown-grace", "2s", "--etcd-backoff-max", "1s"]).start()
        self.addCleanup(lbd.stop, 0)
        wait_until(lambda: self.answering(lbd, {"b1", "b2"}), scaled(10), "b1 and b2 answering")
        wait_until(lambda: lbd.watch_state() == "watching", scaled(10), "lbd watching")
        resume_at = int(lbd.metric("lbd_etcd_revision"))  # a watch resumes at the last revision seen
        relists_before = lbd.metric("lbd_etcd_relists_total")

        etcd.hide()
        etcd.delete(backend_key(PREFIX, POOL, "b1"))
        put_backend(etcd, servers["b3"])
        for i in range(20):
            etcd.put(PREFIX + "filler", str(i))
        put_backend(etcd, servers["b4"])
        etcd.put(backend_key(PREFIX, POOL, "b2"),
                 json.dumps({"addr": servers["b2"].addr, "weight": 7}))
        compacted = etcd.compact()
        self.assertGreater(compacted, resume_at)
        self.assertNotEqual(lbd.watch_state(), "watching")

        etcd.unhide()
        want = lbtest.etcd_pool(etcd, PREFIX, POOL)
        self.assertEqual(set(want), {"b2", "b3", "b4"})
        wait_until(lambda: lbtest.lbd_pool(lbd, POOL) == want, scaled(30),
                   "lbd to re-list after the compaction and equal etcd: %r" % (want,))
        wait_until(lambda: self.answering(lbd, {"b2", "b3", "b4"}, 30), scaled(10),
                   "b2, b3, b4 answering")
        log = lbd.log_text()
        self.assertIn('msg="watch revision compacted, re-listing" revision=%d compacted=%d'
                      % (resume_at, compacted), log)
        self.assertRegex(log, r'msg="re-listed" endpoint=\S+ revision=%d ' % etcd.revision())
        self.assertEqual(lbd.metric("lbd_etcd_relists_total"), relists_before + 1)
        self.assertEqual(lbd.metric("lbd_etcd_revision"), etcd.revision())

    def test_delete_at_the_compaction_revision_is_not_lost(self):
        etcd = Etcd(self.h, side_port=True).start()
        servers = {i: Backend(self.h, i) for i in ("b1", "b2")}
        put_backend(etcd, servers["b1"])
        put_backend(etcd, servers["b2"])
        lbd = Lbd(self.h, etcd.url, PREFIX, [POOL],
                  extra_args=["--shutdown-grace", "2s", "--etcd-backoff-max", "1s"]).start()
        self.addCleanup(lbd.stop, 0)
        wait_until(lambda: lbd.watch_state() == "watching", scaled(10), "lbd watching")
        wait_until(lambda: lbd.metric("lbd_etcd_revision") == etcd.revision(), scaled(10),
                   "lbd to have seen etcd's last revision")
        seen = int(lbd.metric("lbd_etcd_revision"))

        etcd.hide()
        etcd.delete(backend_key(PREFIX, POOL, "b1"))
        self.assertEqual(etcd.revision(), seen + 1, "the delete is the next revision")
        etcd.compact(seen + 1)  # exactly at the delete: etcd 3.4 drops its tombstone
        etcd.unhide()
        want = lbtest.etcd_pool(etcd, PREFIX, POOL)
        self.assertEqual(set(want), {"b2"})
        wait_until(lambda: lbtest.lbd_pool(lbd, POOL) == want, scaled(30),
                   "lbd to lose b1, deleted at the compaction revision")
        self.assertIn('msg="watch revision compacted, re-listing"', lbd.log_text())


if __name__ == "__main__":
    lbtest.main()
