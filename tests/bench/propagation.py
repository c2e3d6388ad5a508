#!/usr/bin/python3
"""How fast does a change in etcd reach new connections, on every worker?

    /usr/bin/python3 tests/bench/propagation.py [--trials 100] [--workers 2]
                                                [--clients 4] [--bin-dir build]

On free loopback ports (tests/integration/lbtest/): one etcd, lbd with
`--workers N` and checks off, one steady backend, and `clients` threads
opening new connections through lbd back to back (SO_REUSEPORT spreads
them over the workers).  Then, `trials` times each:

  join:  a new backend listens, its key is put (under a lease); the figure
         is the time from just before the put to the first client
         connection the new backend accepts;
  leave: the lease is revoked; the figure is the time from just before
         the revoke to the last client connection that backend accepts.

Both include the client loop's own gap between connections (a fraction of
a millisecond here) and, for joins, the balancer's choice (wrr over two
backends sends every second connection to the new one).  Figures are
printed (p50, p99, max), not asserted.  Target: p99 < 20 ms with 2 workers.
"""

import argparse
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from lbtest import (Backend, Etcd, Harness, Lbd, ask, backend_key,  # noqa: E402
                    backend_value, percentile, scaled, wait_until)

PREFIX = "/lbprop/"
POOL = "prop"


class Clients:
    """Threads opening a new connection after another through lbd."""

    def __init__(self, port, n):
        self.port = port
        self.stopping = False
        self.failures = 0
        self.served = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _loop(self):
        while not self.stopping:
            try:
                ok = ask(self.port, timeout=5.0) is not None
            except OSError:
                ok = False
            with self.lock:
                if ok:
                    self.served += 1
                else:
                    self.failures += 1

    def stop(self):
        self.stopping = True
        for t in self.threads:
            t.join(timeout=10)


def summary(ms):
    return "p50 %.2f ms  p99 %.2f ms  max %.2f ms  (n=%d)" % (
        percentile(ms, 50), percentile(ms, 99), max(ms), len(ms))


def run(trials, workers, n_clients, out=sys.stdout):
    h = Harness("propagation")
    try:
        etcd = Etcd(h).start()
        etcd.put("%spools/%s/config" % (PREFIX, POOL),
                 json.dumps({"algorithm": "wrr", "health": {"type": "none"}}))
        steady = Backend(h, "steady")
        etcd.put(backend_key(PREFIX, POOL, "steady"), backend_value(steady.addr, 100))
        lbd = Lbd(h, etcd.url, PREFIX, [POOL],
                  extra_args=["--workers", str(workers), "--shutdown-grace", "1s"])
        lbd.start(timeout=scaled(60))
        clients = Clients(lbd.pool_port(POOL), n_clients)
        wait_until(lambda: steady.count() > 50, scaled(10), "traffic through lbd")
        joins, leaves = [], []
        for i in range(trials):
            b = Backend(h, "n%d" % i)
            lease = etcd.grant(30)
            key = backend_key(PREFIX, POOL, b.id)
            t0 = time.monotonic()
            etcd.put(key, backend_value(b.addr, 100), lease=lease)
            wait_until(lambda: b.count() > 0, scaled(10), "a connection to %s" % b.id,
                       interval=0.001)
            joins.append((b.client_times()[0] - t0) * 1000)
            t1 = time.monotonic()
            etcd.revoke(lease)
            # Quiet for a while: the last connection sent to it was accepted by now.
            seen = b.count()
            settle = time.monotonic() + 0.25
            while time.monotonic() < settle:
                time.sleep(0.01)
                if b.count() != seen:
                    seen, settle = b.count(), time.monotonic() + 0.25
            times = b.client_times(t1)
            leaves.append(((times[-1] - t1) * 1000) if times else 0.0)
            b.kill()
        clients.stop()
        out.write("propagation through lbd --workers %d, %d trials, %d client threads\n"
                  % (workers, trials, n_clients))
        out.write("  join  (put -> first connection to it):      %s\n" % summary(joins))
        out.write("  leave (revoke -> last connection to it):    %s\n" % summary(leaves))
        out.write("  client connections: %d served, %d failed\n"
                  % (clients.served, clients.failures))
        lbd.stop(0)
        return joins, leaves
    finally:
        h.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--bin-dir", default=None, help="build directory (default: build)")
    args = ap.parse_args()
    if args.bin_dir:
        os.environ["LB_BUILD_DIR"] = os.path.abspath(args.bin_dir)
    run(args.trials, args.workers, args.clients)


if __name__ == "__main__":
    main()
