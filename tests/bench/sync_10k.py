#!/usr/bin/python3
"""lbd with 10,000 registered backends: start-up sync, and the data plane
while lbd re-lists all of them.

    /usr/bin/python3 tests/bench/sync_10k.py [--keys 10000] [--cycles 3] [--bin-dir build]

What it does, on free loopback ports (the integration harness, tests/integration/lbtest/):

  1. one etcd; N backend keys in one pool, put 128 to a transaction
     (etcd's --max-txn-ops), all pointing at 4 listeners of one
     selector-driven echo process (echo_fleet.py); the pool's active TCP
     checks are on, every 2 s (the default), as in production: the sync,
     the re-lists and the data plane share the loop with 5,000 checks a
     second at 10,000 backends;
  2. lbd starts: start-up sync = lbd spawned -> /readyz 200 (process start,
     listing every key in pages, building the pool);
  3. a client makes connections through lbd back to back (connect, read
     the backend's line, one echo round trip, close) while lbd is forced
     to re-list every key, `cycles` times.  The re-list is a real one: etcd
     moves to a port only this script knows (lbd backs off), a few keys
     change and etcd compacts past lbd's revision, etcd comes back: lbd's
     resumed watch is refused as compacted and lbd lists all N keys again.
     The re-list window is read from lbd's log (from "re-listing" to
     "re-listed"); latencies of the connections that overlap it are
     reported next to those made before, as p50/p99/max.

Figures are printed, not asserted (this machine is shared); what is
asserted is that every connection succeeds and that lbd ends with etcd's
backends.  tests/integration/test_etcd_scale.py runs a small version.
"""

import argparse
import datetime
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import lbtest  # noqa: E402
from lbtest import (ClientLoop, Etcd, Harness, Lbd, backend_key, backend_value,  # noqa: E402
                    free_port, percentile, scaled, wait_until)
from scale_10k import start_fleet  # noqa: E402

PREFIX = "/lbbench/"
POOL = "web"

_TS = re.compile(r"^ts=(\S+) ")


def _log_times(text, needle):
    """Wall-clock times (seconds) of the log lines that contain needle."""
    out = []
    for line in text.splitlines():
        if needle in line:
            m = _TS.match(line)
            if m:
                ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
                out.append(ts.replace(tzinfo=datetime.timezone.utc).timestamp())
    return out


def _stats(ms):
    if not ms:
        return "n=0"
    return "n=%d p50=%.2fms p99=%.2fms max=%.2fms" % (len(ms), percentile(ms, 50),
                                                      percentile(ms, 99), max(ms))


def run(n_keys=10000, cycles=3, out=sys.stdout, h=None):
    """Runs the benchmark; returns a dict of figures.  Raises AssertionError
    if a connection fails or lbd does not end with etcd's backends."""
    own = h is None
    h = h or Harness("sync%d" % n_keys)
    figures = {"keys": n_keys}
    try:
        etcd = Etcd(h, side_port=True).start()
        addrs = ["127.0.0.1:%d" % free_port() for _ in range(4)]
        start_fleet(h, [("e%d" % i, int(a.rsplit(":", 1)[1])) for i, a in enumerate(addrs)],
                    "fleet")
        etcd.put("%spools/%s/config" % (PREFIX, POOL),
                 '{"health":{"type":"tcp","interval":"2s","timeout":"1s"}}')
        t0 = time.monotonic()
        etcd.put_many({backend_key(PREFIX, POOL, "b%05d" % i):
                       backend_value(addrs[i % 4], 100) for i in range(n_keys)})
        figures["put_s"] = time.monotonic() - t0

        lbd = Lbd(h, etcd.url, PREFIX, [POOL],
                  extra_args=["--shutdown-grace", "1s", "--etcd-backoff-max", "500ms",
                              "--log-level", "info"])
        t0 = time.monotonic()
        lbd.start(timeout=scaled(120))
        figures["startup_sync_s"] = time.monotonic() - t0
        figures["startup_list_s"] = lbd.metric("lbd_etcd_last_list_seconds")
        if lbd.metric("lbd_etcd_keys") < n_keys:
            raise AssertionError("lbd knows %d keys, not %d" % (lbd.metric("lbd_etcd_keys"),
                                                                 n_keys))
        wait_until(lambda: lbd.watch_state() == "watching", scaled(10), "lbd watching")

        clients = ClientLoop(lbd.pool_port(POOL), interval=0.0)
        wall_minus_mono = time.time() - time.monotonic()
        wait_until(lambda: clients.count() >= 300, scaled(30), "300 baseline connections")
        baseline_end = time.monotonic()
        # From here on lbd is watched through its log only: rendering /metrics
        # for 10,000 backends is work on lbd's loop that would blur the figures.
        for c in range(cycles):
            relists = lbd.log_text().count('msg="re-listed"')
            watching = lbd.log_text().count('msg="watching"')
            etcd.hide()
            for i in range(c * 10, c * 10 + 10):
                etcd.put(backend_key(PREFIX, POOL, "b%05d" % i),
                         backend_value(addrs[i % 4], 50 + c))
            etcd.compact()
            etcd.unhide(timeout=scaled(60))
            wait_until(lambda: lbd.log_text().count('msg="re-listed"') > relists, scaled(60),
                       "lbd to re-list (cycle %d)" % (c + 1))
            wait_until(lambda: lbd.log_text().count('msg="watching"') > watching, scaled(10),
                       "lbd watching again")
        # a little traffic after the last re-list, as after any other
        settled = clients.count()
        wait_until(lambda: clients.count() >= settled + 100, scaled(30), "traffic after")
        records = clients.stop()

        failures = [r for r in records if r[3] is not None]
        if failures:
            raise AssertionError("%d of %d connections failed, first: %r"
                                 % (len(failures), len(records), failures[0]))
        log = lbd.log_text()
        starts = _log_times(log, 'msg="watch revision compacted, re-listing"')
        ends = _log_times(log, 'msg="re-listed"')
        if len(starts) < cycles or len(ends) < cycles:
            raise AssertionError("expected %d re-lists in lbd's log, found %d/%d"
                                 % (cycles, len(starts), len(ends)))
        windows = [(s - wall_minus_mono, e - wall_minus_mono) for s, e in zip(starts, ends)]
        during = [r[1] * 1000 for r in records
                  if any(r[0] < e and r[0] + r[1] > s for s, e in windows)]
        before = [r[1] * 1000 for r in records if r[0] + r[1] < baseline_end]
        figures["relist_s"] = [e - s for s, e in windows]
        figures["during"] = during
        figures["before"] = before
        figures["connections"] = len(records)

        want = lbtest.etcd_pool(etcd, PREFIX, POOL)
        got = {i: (b["addr"], int(b["weight"])) for i, b in lbd.backends(POOL).items()}
        if got != want:
            raise AssertionError("lbd has %d backends, etcd %d (or they differ)"
                                 % (len(got), len(want)))
        figures["lag_max_s"] = lbd.metric("lbd_etcd_update_lag_max_seconds")

        out.write("\nlbd sync benchmark, %d backend keys in one pool (%s)\n" % (n_keys,
                  lbtest.lbd_binary()))
        out.write("  put into etcd (txn of 128):        %.2fs\n" % figures["put_s"])
        out.write("  start-up sync (spawn -> /readyz):  %.3fs (listing itself %.3fs)\n"
                  % (figures["startup_sync_s"], figures["startup_list_s"]))
        out.write("  forced re-lists of %d keys:        %s\n"
                  % (n_keys, ", ".join("%.3fs" % d for d in figures["relist_s"])))
        out.write("  connect + echo through lbd, before: %s\n" % _stats(before))
        out.write("  connect + echo during the re-lists: %s\n" % _stats(during))
        out.write("  connections made: %d, failed: 0; lbd ends equal to etcd (%d backends)\n"
                  % (len(records), len(want)))
        out.flush()
        lbd.stop(0)
        return figures
    finally:
        if own:
            h.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--bin-dir")
    a = ap.parse_args()
    if a.bin_dir:
        os.environ["LB_BUILD_DIR"] = os.path.abspath(a.bin_dir)
    run(a.keys, a.cycles)


if __name__ == "__main__":
    main()
