#!/usr/bin/python3
"""No key or value under the prefix stops lbd's discovery; policy values are bounded.

Real etcd (its default limits: requests up to 1.5 MiB), real lbd, real
backends.  Under lbd's prefix the test writes what any self-registering
backend could: a 5,000-byte key in a pool lbd does not serve and in the
pool it serves, a 1 MiB key, a backend key holding a 1 MiB value, keys that
break the schema (too deep, empty id, a name with a space, an id longer
than 127 bytes).  Then:

  1. the watch goes on: a backend registered afterwards gets traffic
     within a few seconds;
  2. a restarted lbd lists all of it, becomes ready and routes;
  3. /metrics counts each skipped key by reason;
  4. each skipped key is logged with its key quoted and cut short;
  5. a flood of bad keys makes a few log lines, then one per second with
     the count of the lines left out;
  6. a listing larger than lbd's bound on one etcd response (50 values of
     1.4 MiB) completes without a failed attempt: lbd pages around it.

PolicyBounds: a pool policy with "health.interval":"1ms" is clamped to the
100 ms floor (logged with its key and field), so a backend sees about ten
checks a second, not a thousand.
"""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lbtest import (Backend, Etcd, HarnessTestCase, Lbd, ask, backend_key,  # noqa: E402
                    backend_value, scaled, wait_until)

PREFIX = "/lbtest-bad/"
POOL = "web"
OTHER = "other"
ONE_MIB = 1024 * 1024

LONG_OTHER = "%spools/%s/%s" % (PREFIX, OTHER, "a" * 5000)
LONG_SERVED = backend_key(PREFIX, POOL, "b" * 5000)
HUGE_KEY = "%spools/%s/backends/%s" % (PREFIX, OTHER, "k" * ONE_MIB)
HUGE_VALUE = backend_key(PREFIX, POOL, "huge")
SCHEMA_BREAKERS = [
    backend_key(PREFIX, POOL, "deep/er"),       # too deep
    "%spools/%s/backends/" % (PREFIX, POOL),     # empty id
    backend_key(PREFIX, "w b", "x"),            # pool name with a space
    backend_key(PREFIX, POOL, "i" * 200),       # id longer than 127 bytes
]


def skipped(lbd, reason):
    return lbd.metric("lbd_etcd_skipped_keys_total", reason=reason)


def routes_to(lbd, backend_id, tries=20):
    """True when one of `tries` new connections reaches backend_id."""
    for _ in range(tries):
        if ask(lbd.pool_port(POOL)) == backend_id:
            return True
    return False


class BadKeys(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.etcd = Etcd(h).start()
        cls.b1 = Backend(h, "b1")
        cls.etcd.put(backend_key(PREFIX, POOL, "b1"), backend_value(cls.b1.addr))
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, [POOL],
                      extra_args=["--shutdown-grace", "1s", "--etcd-backoff-max", "1s"]).start()
        wait_until(lambda: routes_to(cls.lbd, "b1"), scaled(10), "lbd routing to b1")
        # What any backend could write under the prefix, while lbd watches.
        cls.etcd.put(LONG_OTHER, "x")
        cls.etcd.put(LONG_SERVED, backend_value("127.0.0.1:1"))
        cls.etcd.put(HUGE_KEY, "x")
        cls.etcd.put(HUGE_VALUE, json.dumps({"addr": "127.0.0.1:1", "meta": "m" * ONE_MIB}))
        for key in SCHEMA_BREAKERS:
            cls.etcd.put(key, backend_value("127.0.0.1:1"))

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    def test_1_backend_registered_after_bad_keys_gets_traffic_within_seconds(self):
        b2 = Backend(self.h, "b2")
        t0 = time.monotonic()
        self.etcd.put(backend_key(PREFIX, POOL, "b2"), backend_value(b2.addr))
        wait_until(lambda: routes_to(self.lbd, "b2"), 5.0, "b2 getting traffic after the bad keys")
        self.assertLess(time.monotonic() - t0, 5.0)
        self.assertEqual(self.lbd.watch_state(), "watching")
        self.assertEqual(self.lbd.http_get("/readyz")[0], 200)

    def test_2_restarted_lbd_becomes_ready_and_routes(self):
        # b2 is registered by test_1; make sure of it if run alone.
        if self.etcd.get(backend_key(PREFIX, POOL, "b2")) is None:
            b2 = Backend(self.h, "b2")
            self.etcd.put(backend_key(PREFIX, POOL, "b2"), backend_value(b2.addr))
        self.lbd.stop(expect_rc=0)
        self.lbd.start(timeout=scaled(15))
        self.assertEqual(self.lbd.http_get("/readyz")[0], 200)
        wait_until(lambda: routes_to(self.lbd, "b1") and routes_to(self.lbd, "b2"), scaled(10),
                   "the restarted lbd routing to b1 and b2")
        self.assertEqual(sorted(self.lbd.backends(POOL)), ["b1", "b2"])
        self.assertEqual(self.lbd.watch_state(), "watching")

    def test_3_metrics_count_skipped_keys_by_reason(self):
        wait_until(lambda: skipped(self.lbd, "key_too_long") >= 3, scaled(5),
                   "three keys counted as too long")
        self.assertGreaterEqual(skipped(self.lbd, "value_too_large"), 1)
        self.assertGreaterEqual(skipped(self.lbd, "bad_key"), len(SCHEMA_BREAKERS))

    def test_4_skipped_keys_are_logged_quoted_and_cut_short(self):
        log = self.lbd.log_text()
        lines = [ln for ln in log.splitlines() if "reason=key_too_long" in ln]
        self.assertTrue(lines, "no log line for the keys that are too long")
        for ln in lines:
            self.assertLess(len(ln), 1024, "a log line carries the whole key: %r..." % ln[:200])
        self.assertTrue(any(('key="%s' % LONG_OTHER[:40]) in ln for ln in lines), lines[:3])
        self.assertTrue(any("reason=value_too_large" in ln and "huge" in ln
                            for ln in log.splitlines()), "no line for the 1 MiB value")
        self.assertTrue(any("reason=bad_key" in ln and "deep/er" in ln
                            for ln in log.splitlines()), "no line for the key that is too deep")

    def test_5_flood_of_bad_keys_is_rate_limited(self):
        mark = len(self.lbd.log_text())
        before = skipped(self.lbd, "key_too_long")
        flood = {"%spools/%s/flood-%03d-%s" % (PREFIX, OTHER, i, "f" * 5000): "x"
                 for i in range(200)}
        t0 = time.monotonic()
        self.etcd.put_many(flood, batch=100)
        wait_until(lambda: skipped(self.lbd, "key_too_long") >= before + 200, scaled(10),
                   "200 more keys counted as too long")
        # the count of the lines left out comes within a couple of seconds
        wait_until(lambda: re.search(r"reason=key_too_long.*suppressed=\d+",
                                     self.lbd.log_text()[mark:]), 3.0,
                   "a line with the count of suppressed lines")
        elapsed = time.monotonic() - t0
        lines = [ln for ln in self.lbd.log_text()[mark:].splitlines()
                 if "reason=key_too_long" in ln]
        self.assertLessEqual(len(lines), 5 + int(elapsed) + 2,
                             "%d lines for 200 bad keys in %.1fs" % (len(lines), elapsed))
        suppressed = sum(int(m) for m in re.findall(r"suppressed=(\d+)", "\n".join(lines)))
        self.assertGreaterEqual(len(lines) + suppressed, 200)
        self.assertEqual(self.lbd.watch_state(), "watching")

    def test_6_listing_over_the_response_bound_pages_around_large_values(self):
        big = json.dumps({"addr": "127.0.0.1:1", "meta": "v" * (1400 * 1024)})
        for i in range(50):
            self.etcd.put("%spools/%s/backends/big-%02d" % (PREFIX, OTHER, i), big)
        self.lbd.stop(expect_rc=0)
        self.lbd.start(timeout=scaled(30))
        self.assertEqual(self.lbd.metric("lbd_etcd_reconnects_total"), 0,
                         "the listing failed and was retried:\n%s" % self.lbd.proc.log_tail(20))
        self.assertGreaterEqual(skipped(self.lbd, "value_too_large"), 50)
        wait_until(lambda: routes_to(self.lbd, "b1"), scaled(10), "lbd routing to b1")
        b3 = Backend(self.h, "b3")
        self.etcd.put(backend_key(PREFIX, POOL, "b3"), backend_value(b3.addr))
        wait_until(lambda: routes_to(self.lbd, "b3"), 5.0, "b3 getting traffic")


class PolicyBounds(HarnessTestCase):
    @classmethod
    def setUpWorld(cls):
        h = cls.h
        cls.etcd = Etcd(h).start()
        cls.b1 = Backend(h, "p1")
        cls.etcd.put(backend_key(PREFIX, POOL, "p1"), backend_value(cls.b1.addr))
        cls.lbd = Lbd(h, cls.etcd.url, PREFIX, [POOL], extra_args=["--shutdown-grace", "1s"]).start()

    @classmethod
    def tearDownWorld(cls):
        cls.lbd.stop(expect_rc=0)

    def test_health_interval_below_the_floor_is_clamped_and_logged(self):
        key = "%spools/%s/config" % (PREFIX, POOL)
        self.etcd.put(key, json.dumps({"health": {"type": "tcp", "interval": "1ms",
                                                  "timeout": "1ms"}}))
        wait_until(lambda: 'msg="policy applied" pool=%s ' % POOL in self.lbd.log_text(),
                   scaled(5), "the policy applied")
        wait_until(lambda: any(key in ln and "health.interval" in ln
                               for ln in self.lbd.log_text().splitlines()),
                   scaled(5), "a log line naming the key and health.interval")
        time.sleep(0.5)  # let the checks of the old policy drain away
        n0 = self.b1.accepted
        t0 = time.monotonic()
        time.sleep(2.0)  # measuring a rate: a fixed window is the point here
        rate = (self.b1.accepted - n0) / (time.monotonic() - t0)
        self.assertLess(rate, 30, "the backend sees %.0f checks a second" % rate)
        self.assertGreater(rate, 3, "checks at the 100 ms floor should still run (%.1f/s)" % rate)
        self.assertGreaterEqual(self.lbd.metric("lbd_etcd_clamped_fields_total"), 2)


if __name__ == "__main__":
    import lbtest
    lbtest.main()
