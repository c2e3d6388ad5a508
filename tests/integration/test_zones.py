#!/usr/bin/python3
"""Zone-aware routing: lbd --zone a and a pool policy with zone_affinity.

One etcd, one pool "web" with three backends in zone a (a1..a3) and two in
zone b (b1, b2), checks every 200 ms (fall 2), zone_affinity 60 (at least
60% of a's backends eligible, i.e. 2 of 3, keep traffic in a) and
panic_threshold 0 (panic would spread over everything and hide the zone
logic).  Two lbds watch it: one started with --zone a, one without.

  1. while a is healthy, every new connection through the zoned lbd lands
     in a; lbd_pool_zone_local is 1 and /status.json says zone_local true;
     the lbd without --zone spreads over both zones and has no gauge;
  2. two of a's backends killed (1 of 3 left, under 60%): the zoned lbd
     spills over to every zone (b gets traffic, so does the survivor a3),
     the gauge drops to 0 and one "zone spill-over" line is logged with
     the counts; one killed is still 2 of 3: traffic stays in a;
  3. restarted on the same ports: back to a only, gauge 1, "zone local"
     logged;
  4. the same with lbctl drain (an operator's drain counts as ineligible)
     and undrain.

The time from the second kill to the first connection in b is printed as a
"figure:" line.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, ask_many, figure,  # noqa: E402
                    scaled, wait_until)

PREFIX = "/zones/"
POOL = "web"
POLICY = {"health": {"type": "tcp", "interval": "200ms", "timeout": "200ms", "rise": 1,
                     "fall": 2},
          "zone_affinity": 60, "panic_threshold": 0}


def zone_of(bid):
    return bid[0] if bid else None


class Zones(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.etcd = Etcd(h).start()
        cls.etcd.put("%spools/%s/config" % (PREFIX, POOL), json.dumps(POLICY))
        cls.backends = {}
        for bid, zone in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("b2", "b")):
            b = Backend(h, bid)
            cls.backends[bid] = b
            cls.etcd.put("%spools/%s/backends/%s" % (PREFIX, POOL, bid),
                         json.dumps({"addr": b.addr, "weight": 100, "zone": zone}))
        cls.zoned = Lbd(h, cls.etcd.url, PREFIX, [POOL], extra_args=["--zone", "a"],
                        name="lbd-a").start()
        cls.plain = Lbd(h, cls.etcd.url, PREFIX, [POOL], name="lbd-nozone").start()
        cls.port = cls.zoned.pool_port(POOL)
        # every backend up in both (checks passed once), zone a local
        for lbd in (cls.zoned, cls.plain):
            wait_until(lambda: lbd.metric("lbd_pool_healthy_backends", pool=POOL) == 5,
                       scaled(10), "all five backends healthy in %s" % lbd.name)

    def zones_seen(self, n=60, lbd=None):
        counts = ask_many((lbd or self.zoned).pool_port(POOL), n)
        self.assertNotIn(None, counts, "failed connections: %r" % counts)
        return counts

    def zone_local_metric(self, lbd=None):
        return [v for n, lab, v in (lbd or self.zoned).metrics()
                if n == "lbd_pool_zone_local" and lab.get("pool") == POOL]

    def status_zone_local(self, lbd=None):
        status, body = (lbd or self.zoned).http_get("/status.json")
        self.assertEqual(status, 200)
        return {p["name"]: p for p in json.loads(body)["pools"]}[POOL]["zone_local"]

    def assert_local(self, what):
        counts = self.zones_seen()
        self.assertEqual({zone_of(b) for b in counts}, {"a"}, "%s: %r" % (what, counts))
        self.assertEqual(self.zone_local_metric(), [1])
        self.assertIs(self.status_zone_local(), True)

    def spilling(self):
        return self.zone_local_metric() == [0]

    def local(self):
        return self.zone_local_metric() == [1]

    def test_1_traffic_stays_in_the_local_zone(self):
        self.assert_local("all healthy")
        counts = self.zones_seen(lbd=self.plain)
        self.assertEqual({zone_of(b) for b in counts}, {"a", "b"},
                         "lbd without --zone: %r" % counts)
        self.assertEqual(self.zone_local_metric(self.plain), [])
        self.assertIsNone(self.status_zone_local(self.plain))

    def test_2_kill_below_threshold_spills_then_comes_back(self):
        self.backends["a1"].kill()
        wait_until(lambda: self.zoned.metric("lbd_pool_healthy_backends", pool=POOL) == 4,
                   scaled(5), "a1 marked down")
        self.assert_local("2 of 3 in a still healthy (>= 60%)")

        killed = time.monotonic()
        self.backends["a2"].kill()
        wait_until(self.spilling, scaled(5), "zone spill-over after a2 died")
        figure("zone spill-over after the second kill", "%.2f" % (time.monotonic() - killed),
               "s")
        counts = self.zones_seen(100)
        self.assertEqual(set(counts), {"a3", "b1", "b2"}, "spilling over: %r" % counts)
        self.assertIs(self.status_zone_local(), False)
        self.assertRegex(self.zoned.log_text(),
                         r'zone spill-over.*pool=web zone=a local_eligible=1 local=3')

        for bid in ("a1", "a2"):
            self.backends[bid].restart()
        wait_until(self.local, scaled(5), "back to zone a after a1 and a2 came back")
        self.assert_local("restored")
        self.assertRegex(self.zoned.log_text(), r'zone local: .*pool=web zone=a local_eligible=')
        # the lbd without a zone kept spreading all along
        self.assertEqual({zone_of(b) for b in self.zones_seen(lbd=self.plain)}, {"a", "b"})

    def test_3_drain_below_threshold_spills_then_comes_back(self):
        wait_until(lambda: self.zoned.metric("lbd_pool_healthy_backends", pool=POOL) == 5,
                   scaled(5), "all five backends healthy")
        for bid in ("a1", "a2"):
            rc, out, err = self.zoned.ctl("drain", POOL, bid)
            self.assertEqual(rc, 0, "lbctl drain %s: %s %s" % (bid, out, err))
        wait_until(self.spilling, scaled(5), "zone spill-over after draining a1 and a2")
        counts = self.zones_seen(100)
        self.assertEqual(set(counts), {"a3", "b1", "b2"}, "spilling over: %r" % counts)
        for bid in ("a1", "a2"):
            rc, out, err = self.zoned.ctl("undrain", POOL, bid)
            self.assertEqual(rc, 0, "lbctl undrain %s: %s %s" % (bid, out, err))
        wait_until(self.local, scaled(5), "back to zone a after undrain")
        self.assert_local("undrained")


if __name__ == "__main__":
    lbtest.main()
