#!/usr/bin/python3
"""A CI-sized run of tests/bench/sync_10k.py: 2,000 backend keys in one pool,
lbd's start-up sync, then a forced re-list of all of them (etcd cut off,
keys changed, compacted, back) while a client connects through lbd back
to back.  Asserts only what must hold on any machine: every connection
succeeds and lbd ends with etcd's backends; the figures are printed.

And a key that flaps (put, delete, as fast as etcd takes them: a backend
in a crash loop) in a maglev pool of 2,000: lbd rebuilds the pool once per
read of the watch stream, not once per event, so the control loop keeps
answering /healthz and applies the next change promptly.
"""

import json
import os
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
import lbtest  # noqa: E402
import sync_10k  # noqa: E402
from lbtest import (Backend, Etcd, Harness, HarnessTestCase, Lbd, backend_key,  # noqa: E402
                    backend_value, figure, scaled, wait_until)

FLAP_POOL_SIZE = 2000


class EtcdScale(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)

    def test_relist_of_2000_backends_under_traffic(self):
        figures = sync_10k.run(n_keys=2000, cycles=1, out=sys.stderr, h=self.h)
        self.assertEqual(len(figures["relist_s"]), 1)
        self.assertGreater(figures["connections"], 300)

    def test_a_flapping_key_does_not_starve_the_control_loop(self):
        prefix = "/flap/"
        etcd = Etcd(self.h).start()
        b = Backend(self.h, "b")
        etcd.put("%spools/web/config" % prefix,
                 json.dumps({"algorithm": "maglev", "health": {"type": "none"}}))
        etcd.put_many({backend_key(prefix, "web", "d%05d" % i): backend_value(b.addr)
                       for i in range(FLAP_POOL_SIZE)})
        lbd = Lbd(self.h, etcd.url, prefix, ["web"]).start()
        wait_until(lambda: lbd.metric("lbd_pool_backends", pool="web") == FLAP_POOL_SIZE,
                   scaled(20), "the pool of %d" % FLAP_POOL_SIZE)
        worst, stop = [0.0], threading.Event()

        def probe():
            while not stop.is_set():
                t = time.monotonic()
                try:
                    urllib.request.urlopen("http://127.0.0.1:%d/healthz" % lbd.http_port,
                                           timeout=30).read()
                except OSError:
                    pass
                worst[0] = max(worst[0], time.monotonic() - t)
                stop.wait(0.05)
        prober = threading.Thread(target=probe)
        prober.start()
        try:
            t0, pairs = time.monotonic(), 0
            while time.monotonic() - t0 < 2.0:
                etcd.put(backend_key(prefix, "web", "flap"), backend_value(b.addr))
                etcd.delete(backend_key(prefix, "web", "flap"))
                pairs += 1
            etcd.put(backend_key(prefix, "web", "marker"), backend_value(b.addr))
            t1 = time.monotonic()
            wait_until(lambda: "marker" in lbd.backends("web"), scaled(30), "the marker")
            lag = time.monotonic() - t1
        finally:
            stop.set()
            prober.join()
        figure("flap: %d put+delete pairs in 2 s on a maglev pool of %d; the next change in"
               % (pairs, FLAP_POOL_SIZE), "%.2f s, worst /healthz %.2f s" % (lag, worst[0]))
        self.assertLess(worst[0], scaled(1.0), "/healthz stalled behind the flapping key")
        self.assertLess(lag, scaled(1.5), "the next change waited behind the flapping key")
        lbd.stop(expect_rc=0)


if __name__ == "__main__":
    lbtest.main()
