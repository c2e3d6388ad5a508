#!/usr/bin/python3
"""A CI-sized run of tests/bench/sync_10k.py: 2,000 backend keys in one pool,
lbd's start-up sync, then a forced re-list of all of them (etcd cut off,
keys changed, compacted, back) while a client connects through lbd back
to back.  Asserts only what must hold on any machine: every connection
succeeds and lbd ends with etcd's backends; the figures are printed.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
import lbtest  # noqa: E402
import sync_10k  # noqa: E402
from lbtest import Harness, HarnessTestCase  # noqa: E402


class EtcdScale(HarnessTestCase):
    def setUp(self):
        self.h = Harness(self.id().rsplit(".", 1)[-1])
        self.addCleanup(self.h.cleanup)

    def test_relist_of_2000_backends_under_traffic(self):
        figures = sync_10k.run(n_keys=2000, cycles=1, out=sys.stderr, h=self.h)
        self.assertEqual(len(figures["relist_s"]), 1)
        self.assertGreater(figures["connections"], 300)


if __name__ == "__main__":
    lbtest.main()
