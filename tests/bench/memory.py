#!/usr/bin/python3
"""Memory per proxied connection: lbd beside HAProxy, at T threads/workers.

    /usr/bin/python3 tests/bench/memory.py [--conns 4000] [--threads 1,2]
                                           [--bin-dir build]

On free loopback ports: one echo_fleet.py process with 3 backends, one etcd,
and for each T: HAProxy (mode tcp, roundrobin, nbthread T, the same
settings lb-compare uses) and lbd --workers T in front of them.  For each
balancer: its RSS (VmRSS of the process, all threads) once idle, then with
`conns` client connections open and idle (each has read its backend's
greeting line), then after every one of them sent and got back 16 KiB
(buffers that grew on the way may stay), then after they closed.  Printed:
bytes per connection, idle and after traffic, and lbd / HAProxy.  Kernel
socket memory is not in RSS and is the same for both.  Figures are
printed, not asserted.  Target: lbd <= 0.5x HAProxy.
"""

import argparse
import json
import os
import resource
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from lbtest import (Etcd, Harness, Lbd, backend_key, backend_value, free_port,  # noqa: E402
                    port_is_open, read_line, scaled, wait_until)
from scale_10k import start_fleet  # noqa: E402

PREFIX = "/lbmem/"
POOL = "mem"
PAYLOAD = b"m" * 16384


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start_haproxy(h, threads, backends, conns):
    port = free_port()
    cfg = h.path("haproxy-%d.cfg" % threads)
    with open(cfg, "w") as f:
        f.write("global\n    nbthread %d\n    maxconn %d\n" % (threads, conns * 2 + 100))
        f.write("defaults\n    mode tcp\n    maxconn %d\n" % (conns * 2 + 100))
        f.write("    timeout connect 5s\n    timeout client 600s\n    timeout server 600s\n")
        f.write("listen lb\n    bind 127.0.0.1:%d\n    balance roundrobin\n" % port)
        for i, (_, p) in enumerate(backends):
            f.write("    server b%d 127.0.0.1:%d\n" % (i + 1, p))
    proc = h.spawn("haproxy-%d" % threads, ["haproxy", "-db", "-f", cfg])
    wait_until(lambda: port_is_open(port), scaled(10), "haproxy listening")
    return proc, port


def measure(name, pid, port, conns, out):
    time.sleep(0.5)
    base = rss(pid)
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if read_line(s) is None:
            raise AssertionError("%s: no greeting through the balancer" % name)
        socks.append(s)
    time.sleep(0.5)
    idle = rss(pid)
    for s in socks:
        s.sendall(PAYLOAD)
    for s in socks:
        got = 0
        while got < len(PAYLOAD):
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError("%s: connection closed during the exchange" % name)
            got += len(chunk)
    time.sleep(0.5)
    after = rss(pid)
    for s in socks:
        s.close()
    time.sleep(1.0)
    closed = rss(pid)
    per_idle = (idle - base) / conns
    per_after = (after - base) / conns
    out.write("  %-8s base %6.1f MB  idle %7.0f B/conn  after traffic %7.0f B/conn  "
              "closed %6.1f MB\n" % (name, base / 1e6, per_idle, per_after, closed / 1e6))
    out.flush()
    return per_idle, per_after


def run(conns, threads_list, out=sys.stdout):
    h = Harness("memory")
    try:
        etcd = Etcd(h).start()
        backends = [("m%d" % i, free_port()) for i in range(3)]
        start_fleet(h, backends, "fleet")
        etcd.put("%spools/%s/config" % (PREFIX, POOL), json.dumps({"health": {"type": "none"}}))
        for bid, p in backends:
            etcd.put(backend_key(PREFIX, POOL, bid), backend_value("127.0.0.1:%d" % p, 100))
        out.write("memory per proxied connection, %d connections\n" % conns)
        for t in threads_list:
            out.write("T=%d\n" % t)
            hap, hport = start_haproxy(h, t, backends, conns)
            hi, ha = measure("haproxy", hap.pid, hport, conns, out)
            hap.stop()
            lbd = Lbd(h, etcd.url, PREFIX, [POOL],
                      extra_args=["--workers", str(t), "--log-level", "warn",
                                  "--shutdown-grace", "1s"], name="lbd-%d" % t)
            lbd.start(timeout=scaled(60))
            li, la = measure("lbd", lbd.proc.pid, lbd.pool_port(POOL), conns, out)
            lbd.stop(0)
            out.write("  lbd / haproxy: idle %.2f, after traffic %.2f\n" % (li / hi, la / ha))
    finally:
        h.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=4000)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--bin-dir", default=None)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the children inherit it
    if args.bin_dir:
        os.environ["LB_BUILD_DIR"] = os.path.abspath(args.bin_dir)
    run(args.conns, [int(t) for t in args.threads.split(",")])


if __name__ == "__main__":
    main()
