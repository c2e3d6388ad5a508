#!/usr/bin/python3
"""A CI-sized run of tests/bench/scale_10k.py: 2,000 backends in one pool
with TCP checks every second, a client connecting through lbd every 10 ms,
then every backend going down and coming back while a neighbouring pool
serves.

Asserts only what holds on any machine: no connection fails, and health
flips never rebuild the pool (each one is an in-place update), so a pool
of thousands of checked backends does not freeze the data plane.  The
latency figures are printed.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
import lbtest  # noqa: E402
import scale_10k  # noqa: E402
from lbtest import Harness, HarnessTestCase  # noqa: E402


class ScaleChecks(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)

    def test_health_flips_of_2000_backends_update_in_place_and_fail_no_client(self):
        figures = scale_10k.run(n=2000, seconds=5, interval="1s", out=sys.stderr, h=self.h)
        for phase in ("off", "on", "flap"):
            self.assertEqual(figures[phase]["failed"], 0, phase)
            self.assertGreater(figures[phase]["n"], 100, phase)
        self.assertGreater(figures["flap"]["updates"], 0, "no in-place update counted")
        self.assertEqual(figures["flap"]["rebuilds"], 0,
                         "health flips rebuilt the pool instead of updating it in place")


if __name__ == "__main__":
    lbtest.main()
