#!/usr/bin/python3
"""lbd while etcd is gone for 30 seconds.

A client makes a new connection through lbd every 10 ms for the whole
outage: not one may fail, and /readyz stays 200 (lbd serves the last pools
it knew).  lbd_etcd_staleness_seconds grows while etcd is away and is 0
again once lbd watches; the log holds one warning when the outage starts,
at most one reminder per 30 s, and one line when etcd is back.  After etcd
returns, a backend put there is serving within 2 seconds.
"""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lbtest  # noqa: E402
from lbtest import (Backend, ClientLoop, Etcd, Harness, HarnessTestCase, Lbd,  # noqa: E402
                    backend_key, backend_value, lbd_pool, percentile, scaled, wait_until)

PREFIX = "/lbtest-outage/"
POOL = "web"
OUTAGE_S = 30.0


class EtcdOutage(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)

    def test_thirty_seconds_without_etcd(self):
        etcd = Etcd(self.h).start()
        b1, b2, b3 = (Backend(self.h, i) for i in ("b1", "b2", "b3"))
        for b in (b1, b2):
            etcd.put(backend_key(PREFIX, POOL, b.id), backend_value(b.addr))
        lbd = Lbd(self.h, etcd.url, PREFIX, [POOL],
                  extra_args=["--shutdown-grace", "1s"]).start()
        self.addCleanup(lbd.stop, 0)
        wait_until(lambda: set(lbd_pool(lbd, POOL)) == {"b1", "b2"}, scaled(10), "b1 and b2")
        wait_until(lambda: lbd.watch_state() == "watching", scaled(10), "lbd watching")
        self.assertEqual(lbd.metric("lbd_etcd_staleness_seconds"), 0)

        clients = ClientLoop(lbd.pool_port(POOL), interval=0.01)
        self.addCleanup(clients.stop)
        wait_until(lambda: clients.count() >= 20, scaled(10), "the client loop to get going")
        log_mark = len(lbd.log_text())
        etcd.kill()
        t_kill = time.monotonic()

        # Watch lbd for the whole outage: readiness and staleness, sampled.
        not_ready, staleness = [], []
        while time.monotonic() - t_kill < OUTAGE_S:
            status = lbd.http_get("/readyz")[0]
            if status != 200:
                not_ready.append((time.monotonic() - t_kill, status))
            staleness.append((time.monotonic() - t_kill, lbd.metric("lbd_etcd_staleness_seconds")))
            time.sleep(0.5)  # sampling period of the observation, not a wait for a condition
        self.assertEqual(not_ready, [], "/readyz left 200 while etcd was down")
        late = [v for t, v in staleness if t > OUTAGE_S - 5]
        early = [v for t, v in staleness if 2 < t < 5]
        self.assertTrue(early and late, staleness)
        self.assertGreater(min(late), OUTAGE_S - 8, "staleness should be about the outage: %r"
                           % staleness[-5:])
        self.assertGreater(min(late), max(early), "staleness should grow: %r" % staleness)

        etcd.restart()
        etcd.put(backend_key(PREFIX, POOL, "b3"), backend_value(b3.addr))
        t_put = time.monotonic()
        wait_until(lambda: "b3" in lbd_pool(lbd, POOL), 2.0,
                   "b3, put after etcd came back, to reach lbd within 2 s")
        applied_s = time.monotonic() - t_put
        wait_until(lambda: lbd.metric("lbd_etcd_staleness_seconds") == 0, scaled(5),
                   "staleness back to 0")
        wait_until(lambda: clients.count() > 0 and
                   {r[2] for r in clients.records[-30:]} >= {"b3"}, scaled(10),
                   "clients to reach b3")
        records = clients.stop()

        failures = [r for r in records if r[3] is not None]
        during = [r for r in records if r[0] >= t_kill]
        self.assertEqual(failures, [], "client connections failed: %r" % failures[:5])
        self.assertGreater(len(during), OUTAGE_S * 50, "the client loop stalled: %d connections"
                           % len(during))
        self.assertLessEqual({r[2] for r in during if r[0] < t_kill + OUTAGE_S}, {"b1", "b2"})

        log = lbd.log_text()[log_mark:]
        warns = [ln for ln in log.splitlines() if "level=warn" in ln and "sub=watcher" in ln]
        back = re.findall(r'msg="etcd reachable again after ([0-9.]+)s, resumed at revision (\d+)"',
                          log)
        self.assertTrue(1 <= len(warns) <= 3, "outage warnings:\n" + "\n".join(warns))
        self.assertIn("etcd watch failed", warns[0])
        self.assertEqual(len(back), 1, "one recovery line expected:\n" + log[-3000:])
        self.assertGreater(float(back[0][0]), OUTAGE_S - 1)
        lat = [r[1] * 1000 for r in during]
        sys.stderr.write("\n%d connections during the outage, 0 failed (p50 %.2f ms, p99 %.2f ms, "
                         "max %.2f ms); staleness reached %.1fs; b3 applied %.2fs after its put; "
                         "%d warning lines; '%s'\n"
                         % (len(during), percentile(lat, 50), percentile(lat, 99), max(lat),
                            max(v for _, v in staleness), applied_s, len(warns),
                            "etcd reachable again after %ss, resumed at revision %s" % back[0]))


if __name__ == "__main__":
    lbtest.main()
