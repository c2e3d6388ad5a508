#!/usr/bin/python3
"""lbd against a three-member etcd cluster: losing the member it watches.

lbd is given all three members.  The test finds the member lbd's watch is
connected to (lbd_etcd_endpoint_info while lbd_etcd_watch_state is
"watching") and kills it; while lbd moves to another member, a writer
keeps putting, changing and deleting backend keys through a member that
stays up.  lbd must resume on another member and miss nothing: in the end
its backends (lbctl -o json backends) equal etcd's, address and weight of
every key included.
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (EtcdCluster, EtcdError, Harness, HarnessTestCase, Lbd,  # noqa: E402
                    backend_key, backend_value, etcd_pool, lbd_pool, scaled, wait_until)

PREFIX = "/lbtest-cluster/"
POOL = "web"


class Writer:
    """Puts, re-weights and deletes backend keys through one member, retrying
    each operation until etcd acknowledges it (a leader election may be going
    on).  Runs until stopped; `acked` counts acknowledged operations."""

    def __init__(self, member):
        self.member = member
        self.acked = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _do(self, op, *args):
        deadline = time.monotonic() + scaled(30)
        while True:
            try:
                op(*args)
                self.acked += 1
                return
            except (EtcdError, OSError):
                self.errors += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            key = backend_key(PREFIX, POOL, "w%d" % i)
            self._do(self.member.put, key, backend_value("127.0.0.1:%d" % (20000 + i), 10))
            if i % 3 == 1:
                self._do(self.member.put, key, backend_value("127.0.0.1:%d" % (20000 + i), 500))
            if i % 3 == 2:
                self._do(self.member.delete, backend_key(PREFIX, POOL, "w%d" % (i - 1)))
            i += 1
            self._stop.wait(0.02)

    def stop(self):
        self._stop.set()
        self._thread.join(scaled(60))


class EtcdCluster3(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)

    def test_watched_member_dies_while_keys_change(self):
        cluster = EtcdCluster(self.h, 3).start()
        cluster.put("%spools/%s/config" % (PREFIX, POOL), '{"health":{"type":"none"}}')
        for i in range(5):
            cluster.put(backend_key(PREFIX, POOL, "s%d" % i), backend_value("127.0.0.1:%d" % (19000 + i)))
        lbd = Lbd(self.h, cluster.url, PREFIX, [POOL],
                  extra_args=["--shutdown-grace", "1s", "--etcd-backoff-max", "1s"]).start()
        self.addCleanup(lbd.stop, 0)
        wait_until(lambda: len(lbd_pool(lbd, POOL)) == 5, scaled(10), "lbd to list 5 backends")
        watched = wait_until(lbd.watched_endpoint, scaled(10), "lbd to watch a member")
        victim = next(m for m in cluster.members if m.url == watched)
        survivors = [m for m in cluster.members if m is not victim]
        events_before = lbd.metric("lbd_etcd_events_total")

        writer = Writer(survivors[0])
        wait_until(lambda: writer.acked >= 10, scaled(10), "the writer to get going")
        victim.kill()
        t_kill = time.monotonic()
        moved_to = wait_until(lambda: lbd.watched_endpoint() not in (None, watched) and
                              lbd.watched_endpoint(), scaled(15),
                              "lbd to watch another member after %s died" % watched)
        switch_s = time.monotonic() - t_kill
        acked_at_switch = writer.acked
        wait_until(lambda: writer.acked >= acked_at_switch + 30, scaled(20),
                   "more writes after the switch")
        writer.stop()

        want = etcd_pool(survivors[0], PREFIX, POOL)
        self.assertGreater(len(want), 10)
        got = wait_until(lambda: lbd_pool(lbd, POOL) == want and lbd_pool(lbd, POOL), scaled(10),
                         "lbd's backends to equal etcd's (%d keys)" % len(want))
        self.assertEqual(got, want)
        self.assertIn(moved_to, [m.url for m in survivors])
        log = lbd.log_text()
        self.assertIn('msg="watching" endpoint=%s' % moved_to, log)
        relists = lbd.metric("lbd_etcd_relists_total")
        events = lbd.metric("lbd_etcd_events_total") - events_before
        sys.stderr.write("\nwatch moved %s -> %s in %.2fs; %d writes acknowledged (%d retried), "
                         "%d watch events applied, %d re-lists, %d backends at the end\n"
                         % (watched, moved_to, switch_s, writer.acked, writer.errors, events,
                            relists, len(want)))
        self.assertEqual(lbd.http_get("/readyz")[0], 200)
        if relists == 0:
            # resumed, not re-listed: every acknowledged write came as a watch
            # event (a retried write may have been applied twice)
            self.assertGreaterEqual(events, writer.acked)


if __name__ == "__main__":
    lbtest.main()
