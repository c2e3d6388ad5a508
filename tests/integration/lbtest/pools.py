"""PoolTestCase: a HarnessTestCase whose world is one etcd (cls.etcd) and
one lbd (cls.lbd) under a key prefix (cls.PREFIX), with the helpers the
data-plane tests share: register backends, start them, wait for lbd's own
count of their open connections, hold connections through lbd.
"""

import json

from .backends import Backend
from .clients import open_conn
from .lbd import backend_key
from .procs import scaled, wait_until
from .testcase import HarnessTestCase


class PoolTestCase(HarnessTestCase):
    PREFIX = "/lbtest/"  # subclasses set their own

    def put_backend(self, pool, backend_id, addr, prefix=None, weight=100):
        self.etcd.put(backend_key(prefix or self.PREFIX, pool, backend_id),
                      json.dumps({"addr": addr, "weight": weight}))

    def add_backends(self, pool, ids, lbd=None, prefix=None, proxy_header=False):
        """Starts one backend per id, registers them, waits until lbd lists them."""
        lbd = lbd or self.lbd
        backends = {i: Backend(self.h, i, proxy_header=proxy_header) for i in ids}
        for i, b in backends.items():
            self.put_backend(pool, i, b.addr, prefix=prefix)
        wait_until(lambda: set(ids) <= set(lbd.backends(pool)), scaled(10),
                   "lbctl backends %s to list %s" % (pool, sorted(ids)))
        return backends

    def wait_active(self, pool, expected, lbd=None):
        """lbd's own count of open connections per backend equals `expected`
        ({backend id: count})."""
        lbd = lbd or self.lbd

        def matches():
            got = {lab.get("backend"): int(v) for n, lab, v in lbd.metrics()
                   if n == "lbd_backend_active_connections" and lab.get("pool") == pool}
            return {i: got.get(i) for i in expected} == expected or None

        wait_until(matches, scaled(5), "active connections in pool %s to be %s" % (pool, expected))

    def held(self, port, n):
        """n connections through lbd kept open (closed at the test's end):
        [(socket, backend id)]."""
        out = []
        for _ in range(n):
            s, bid = open_conn(port)
            self.addCleanup(s.close)
            out.append((s, bid))
        return out
