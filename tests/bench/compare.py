#!/usr/bin/python3
"""lbd against HAProxy and nginx (stream) at each thread count, as one table.

    /usr/bin/python3 tests/bench/compare.py [--threads 1,2] [-m keepalive,close,bulk]
                                            [-r ROUNDS] [-d DURATION] [--pin]
                                            [--syscalls [--syscall-conns 2000]]
                                            [--bulk-syscalls SECS] [--baseline LBD]
                                            [--perf FILE] [--keep DIR]

1. Throughput.  For each T in --threads, runs lb-compare (the shared
   script; $LB_COMPARE or ../shared/bench/lb-compare next to this checkout)
   with --lb-threads T, lbd as its candidate (the command of
   lbd-candidate.sh, against an etcd this script starts), and reads the
   per-run results lb-compare writes with --raw.  lbd gets
   `--workers {threads}` only when `lbd --help` mentions --workers; until
   then lbd is one event loop at every T while HAProxy runs T threads and
   nginx T worker processes, and the table says so.
   Per T and mode it prints lbd's median req/s and, as ratios of lbd to
   HAProxy and to nginx: median req/s (bulk: bytes/s, same ratio), balancer
   CPU-seconds per 100k requests (below 1: lbd spends less), median p99
   latency (below 1: lbd is faster).  lb-compare reports no memory figures,
   so there is no RSS-per-connection column.

2. --syscalls.  Starts 3 nginx backends, HAProxy, nginx stream and lbd with
   the configurations lb-compare writes (1 thread each), then for each
   balancer in turn attaches `strace -c -f -p` to its worker (every thread),
   sends --syscall-conns HTTP/1.1 "Connection: close" requests through it,
   one connection each, one after the other, detaches and prints system
   calls per connection by name, the three side by side.

3. --bulk-syscalls SECS.  The same set-up; for each balancer in turn,
   `strace -c -f -p` while `wrk -t1 -c64 -dSECS` fetches the backends'
   1 MiB /big.bin through it; system calls per response (= per MiB).

--baseline LBD: a second lbd binary (say, a build of main) measured in the
same runs beside the first, as lb-compare candidate "lbd-base" (and in
--syscalls/--bulk-syscalls): its rows in the table carry "base".

4. --perf FILE.  With the same set-up, `perf record -g` on lbd while wrk
   runs close mode (--perf-mode keepalive: kept-alive) through it for
   --perf-seconds; read it with `perf report -i FILE`.

Everything listens on 127.0.0.1 on free ports; every process started here
is stopped by PID at the end (lb-compare stops its own).  Absolute numbers
on a shared 2-core machine mean little: read the ratios, and rerun.
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from lbtest import Etcd, Harness, free_port, port_is_open, wait_until  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXIES = ("lbd", "haproxy", "nginx")


def log(msg):
    sys.stderr.write("[compare] %s\n" % msg)
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# lbd


def lbd_has_workers(lbd):
    """True when `lbd --help` documents --workers.

    stdbuf: the help is read through a pipe, where stdout is fully buffered,
    and an lbd that crashes after printing it would lose the last block."""
    argv = [lbd, "--help"]
    if subprocess.run(["sh", "-c", "command -v stdbuf"], capture_output=True).returncode == 0:
        argv = ["stdbuf", "-oL"] + argv
    p = subprocess.run(argv, capture_output=True, timeout=10)
    if p.returncode != 0:
        log("note: `lbd --help` exited with %d (read its output anyway)" % p.returncode)
    return b"--workers" in p.stdout


def candidate_command(etcd_url, lbd, workers):
    """The lb-compare candidate template: lbd-candidate.sh, which registers
    {backends} in etcd and execs lbd on {port}."""
    cmd = "bash %s {port} {backends} %s %s" % (os.path.join(HERE, "lbd-candidate.sh"),
                                               etcd_url, lbd)
    return cmd + (" --workers {threads}" if workers else "")


# ---------------------------------------------------------------------------
# throughput: lb-compare runs and their --raw results


def run_lb_compare(args, threads, candidate, raw_path, out_path):
    # -t: lb-compare's "direct" target (wrk straight to a backend) is not
    # part of the table; skipping it saves a fifth of the run.
    argv = [args.lb_compare, "--lb-threads", str(threads), "-m", args.modes,
            "-r", str(args.rounds), "-d", args.duration, "--raw", raw_path,
            "-t", "haproxy,nginx", "--candidate", candidate, "--candidate-name", "lbd"]
    if args.pin:
        argv.append("--pin")
    if args.baseline_candidate:
        argv += ["--candidate", args.baseline_candidate, "--candidate-name", "lbd-base"]
    log("T=%d: %s" % (threads, " ".join(argv)))
    with open(out_path, "wb") as out:
        # Progress (stderr) goes through; the table (stdout) is kept.
        rc = subprocess.run(argv, stdout=out, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        raise RuntimeError("lb-compare exited with %d at T=%d (its output: %s)"
                           % (rc, threads, out_path))


def read_raw(path):
    """lb-compare's --raw file: '# ' header lines, then a TSV with column
    names.  Returns (header lines, {(mode, target): [row dicts]})."""
    header, cols, runs = [], None, {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#"):
                header.append(line)
            elif cols is None:
                cols = line.split("\t")
            elif line:
                row = dict(zip(cols, line.split("\t")))
                runs.setdefault((row["mode"], row["target"]), []).append(row)
    return header, runs


def summarize(rows):
    """Median req/s and p99 over rounds, balancer CPU-s per 100k requests
    over all rounds (as lb-compare computes them), errors, host busy."""
    req = sum(int(r["requests"]) for r in rows)
    ticks = sum(int(r["lb_ticks"]) for r in rows)
    busy = sum(int(r["host_busy_ticks"]) for r in rows)
    total = sum(int(r["host_total_ticks"]) for r in rows)
    errors = sum(int(r["errors"]) for r in rows)
    return {
        "rps": statistics.median(float(r["rps"]) for r in rows),
        "p99_ms": statistics.median(float(r["p99_us"]) for r in rows) / 1000,
        "cpu100k": ticks / CLK_TCK / req * 100000 if req else None,
        "errors": "wrk-fail" if any(int(r["errors"]) < 0 for r in rows) else errors,
        "host_busy": 100.0 * busy / total if total else None,
    }


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return "%.2f" % (a / b)


def throughput_table(results, modes, workers, lbds=("lbd",)):
    """One row per T, mode and lbd build (lbds: candidate names; "lbd-base"
    is shown as "base")."""
    cols = [("T", 2), ("mode", 9 + (5 if len(lbds) > 1 else 0)), ("lbd req/s", 10), ("rps/hap", 7), ("rps/ngx", 7),
            ("lbd cpu-s", 9), ("cpu/hap", 7), ("cpu/ngx", 7), ("lbd p99", 8),
            ("p99/hap", 7), ("p99/ngx", 7), ("errors", 14), ("host%", 5)]
    lines = [" ".join("%*s" % (w, n) for n, w in cols),
             " ".join("%*s" % (w, n) for n, w in
                      zip(["", "", "median", "", "", "/100k req", "", "", "ms", "", "", "lbd/hap/ngx",
                           "busy"], [w for _, w in cols]))]
    for threads, runs in results:
        for mode, name in ((m, n) for m in modes for n in lbds):
            want = (name, "haproxy", "nginx")
            s = {p: summarize(runs[(mode, p)]) for p in want if (mode, p) in runs}
            label = mode if len(lbds) == 1 else "%s %s" % (mode, "base" if name == "lbd-base" else
                                                            "new")
            if set(s) != set(want):
                lines.append("%2d %9s  (missing results: %s)" % (threads, label, sorted(s)))
                continue
            lbd, hap, ngx = s[name], s["haproxy"], s["nginx"]
            cells = [str(threads), label, "%.0f" % lbd["rps"],
                     ratio(lbd["rps"], hap["rps"]), ratio(lbd["rps"], ngx["rps"]),
                     "%.3f" % lbd["cpu100k"] if lbd["cpu100k"] is not None else "-",
                     ratio(lbd["cpu100k"], hap["cpu100k"]), ratio(lbd["cpu100k"], ngx["cpu100k"]),
                     "%.3f" % lbd["p99_ms"],
                     ratio(lbd["p99_ms"], hap["p99_ms"]), ratio(lbd["p99_ms"], ngx["p99_ms"]),
                     "%s/%s/%s" % (lbd["errors"], hap["errors"], ngx["errors"]),
                     "%.0f" % lbd["host_busy"] if lbd["host_busy"] is not None else "-"]
            lines.append(" ".join("%*s" % (w, c) for c, (_, w) in zip(cells, cols)))
    notes = [
        "rps: median req/s over rounds (bulk: 1 MiB responses, so the ratio is also bytes/s);",
        "cpu-s: balancer CPU-seconds (user+sys, all threads) per 100k requests;",
        "p99: median over rounds of wrk's p99; ratios are lbd / HAProxy (hap), lbd / nginx (ngx):",
        "above 1 is better for rps, below 1 is better for cpu and p99.",
        "host%: whole machine busy during lbd's runs (wrk, backends and balancer share it).",
        "memory per connection: not reported by lb-compare.",
    ]
    if not workers:
        notes.append("lbd has no --workers option: it ran one event loop at every T "
                     "(HAProxy: nbthread T, nginx: T workers).")
    return "\n".join(lines + [""] + ["# " + n for n in notes])


# ---------------------------------------------------------------------------
# the balancers, started here with lb-compare's configurations


def nginx_stream_load():
    """The load_module line nginx needs for 'stream', as lb-compare finds it."""
    v = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    if "--with-stream=dynamic" not in v:
        return ""
    m = re.search(r"--modules-path=(\S+)", v)
    for so in ([m.group(1) + "/ngx_stream_module.so"] if m else []) + \
            ["/usr/lib/nginx/modules/ngx_stream_module.so",
             "/usr/lib64/nginx/modules/ngx_stream_module.so"]:
        if os.path.isfile(so):
            return "load_module %s;" % so
    raise RuntimeError("nginx stream module not found (apt-get install libnginx-mod-stream)")


def start_backends(h, n):
    """n nginx HTTP backends answering 'ok\\n' and serving a 1 MiB /big.bin,
    as lb-compare's."""
    ports = []
    for i in range(1, n + 1):
        port = free_port()
        d = h.path("backend%d" % i)
        os.makedirs(os.path.join(d, "tmp"))
        os.makedirs(os.path.join(d, "www"))
        with open(os.path.join(d, "www", "big.bin"), "wb") as f:
            f.write(bytes(1048576))
        # nginx workers drop to an unprivileged user: let them read the body.
        for path in (h.path(), d, os.path.join(d, "www")):
            os.chmod(path, 0o755)
        os.chmod(os.path.join(d, "www", "big.bin"), 0o644)
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write("""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_timeout 65s;
    keepalive_requests 1000000000;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path       {d}/tmp/proxy;
    fastcgi_temp_path     {d}/tmp/fastcgi;
    uwsgi_temp_path       {d}/tmp/uwsgi;
    scgi_temp_path        {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
        location = /big.bin {{ root {d}/www; }}
    }}
}}
""".format(d=d, port=port))
        h.spawn("backend%d" % i, ["nginx", "-p", d, "-e", d + "/error.log", "-c", d + "/nginx.conf"])
        ports.append(port)
    return ports


def start_haproxy(h, backends):
    port = free_port()
    cfg = h.path("haproxy.cfg")
    with open(cfg, "w") as f:
        f.write("global\n    nbthread 1\n    maxconn 4096\n"
                "defaults\n    mode tcp\n    maxconn 4096\n    timeout connect 5s\n"
                "    timeout client 60s\n    timeout server 60s\n"
                "listen lb\n    bind 127.0.0.1:%d\n    balance roundrobin\n" % port)
        for i, b in enumerate(backends, 1):
            f.write("    server b%d 127.0.0.1:%d\n" % (i, b))
    return h.spawn("haproxy", ["haproxy", "-db", "-f", cfg]), port


def start_nginx_stream(h, backends):
    port = free_port()
    d = h.path("nginx-stream")
    os.makedirs(d)
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write("%s\ndaemon off;\nmaster_process on;\nworker_processes 1;\npid %s/nginx.pid;\n"
                "error_log %s/error.log warn;\nworker_rlimit_nofile 8192;\n"
                "events { worker_connections 8192; }\nstream {\n    upstream backends {\n"
                % (nginx_stream_load(), d, d))
        for b in backends:
            f.write("        server 127.0.0.1:%d;\n" % b)
        f.write("    }\n    server {\n        listen 127.0.0.1:%d;\n        proxy_pass backends;\n"
                "        proxy_connect_timeout 5s;\n    }\n}\n" % port)
    return h.spawn("nginx", ["nginx", "-p", d, "-e", d + "/error.log", "-c", d + "/nginx.conf"]), port


def start_lbd(h, etcd, lbd, backends):
    port = free_port()
    csv = ",".join("127.0.0.1:%d" % b for b in backends)
    # lbd-candidate.sh execs lbd: the PID is lbd's.
    return h.spawn("lbd", ["bash", os.path.join(HERE, "lbd-candidate.sh"), str(port), csv,
                           etcd.url, lbd]), port


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def threads_of(pid):
    return sorted(int(t) for t in os.listdir("/proc/%d/task" % pid))


def http_close(port, timeout=5.0):
    """One request on its own connection; True on HTTP 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.startswith(b"HTTP/1.1 200")


def answers(port):
    try:
        return http_close(port, timeout=1.0)
    except OSError:
        return False


def start_all(h, etcd, lbd, baseline=None):
    backends = start_backends(h, 3)
    for b in backends:
        wait_until(lambda b=b: port_is_open(b), 10, "backend on %d" % b)
    procs = {}
    procs["haproxy"] = start_haproxy(h, backends)
    procs["nginx"] = start_nginx_stream(h, backends)
    procs["lbd"] = start_lbd(h, etcd, lbd, backends)
    if baseline:
        procs["lbd-base"] = start_lbd(h, etcd, baseline, backends)
    for name, (proc, port) in procs.items():
        def up(proc=proc, port=port):
            if not proc.alive():
                raise AssertionError("%s exited:\n%s" % (proc.name, proc.log_tail(30)))
            return answers(port)
        wait_until(up, 20, "%s answers on 127.0.0.1:%d" % (name, port), interval=0.1)
    return procs


def worker_pids(name, proc):
    """The processes that carry connections: nginx's workers, else the
    process itself (HAProxy -db, lbd)."""
    return children(proc.pid) if name == "nginx" else [proc.pid]


# ---------------------------------------------------------------------------
# --syscalls


def parse_strace_summary(path):
    """strace -c's table: {syscall: (calls, errors)}, columns located by the
    dashed rule under the header (usecs/call and errors may be blank)."""
    with open(path) as f:
        lines = f.read().splitlines()
    rule = next(i for i, l in enumerate(lines) if l.startswith("------"))
    spans, pos = [], 0
    for dashes in lines[rule].split(" "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 1
    names = lines[rule - 1].split()  # % time, seconds, usecs/call, calls, errors, syscall
    names = ["pct"] + names[2:]
    out = {}
    for l in lines[rule + 1:]:
        if l.startswith("------"):
            break
        cells = {n: l[a:b].strip() for n, (a, b) in zip(names, spans)}
        cells["syscall"] = l[spans[-1][0]:].strip()
        out[cells["syscall"]] = (int(cells["calls"] or 0), int(cells["errors"] or 0))
    return out


def attach_strace(h, name, proc):
    """strace -c -f on every process and thread of balancer `name`:
    (tracer, output path, threads traced)."""
    pids = worker_pids(name, proc)
    tids = [t for p in pids for t in threads_of(p)]
    out = h.path("strace.%s.txt" % name)
    argv = ["strace", "-c", "-f", "-o", out]
    for p in pids:  # with -f, -p PID attaches every thread of PID
        argv += ["-p", str(p)]
    tracer = h.spawn("strace-%s" % name, argv)
    # strace says "Process N attached [with T threads]" once per -p.
    wait_until(lambda: tracer.log_text().count("attached") >= len(pids), 10,
               "strace attached to %s" % name)
    return tracer, out, len(tids)


def count_syscalls(h, name, proc, port, n, warmup=50):
    for _ in range(warmup):  # lazy set-up (first connections, pools) not counted
        http_close(port)
    tracer, out, ntid = attach_strace(h, name, proc)
    failed = 0
    t0 = time.monotonic()
    for _ in range(n):
        try:
            if not http_close(port):
                failed += 1
        except OSError:
            failed += 1
    elapsed = time.monotonic() - t0
    time.sleep(0.3)  # the balancer's own closes after the client saw EOF
    tracer.stop(timeout=10, sig=signal.SIGINT)
    return parse_strace_summary(out), failed, elapsed, ntid


def count_bulk_syscalls(h, name, proc, port, secs):
    """strace -c while wrk fetches 1 MiB responses through the balancer:
    ({syscall: (calls, errors)}, responses)."""
    tracer, out, _ = attach_strace(h, name, proc)
    wrk = subprocess.run(["wrk", "-t1", "-c64", "-d%ds" % secs,
                          "http://127.0.0.1:%d/big.bin" % port], capture_output=True, text=True)
    tracer.stop(timeout=10, sig=signal.SIGINT)
    m = re.search(r"(\d+) requests in", wrk.stdout)
    if not m or int(m.group(1)) == 0:
        raise RuntimeError("wrk through %s: no responses:\n%s%s" % (name, wrk.stdout, wrk.stderr))
    return parse_strace_summary(out), int(m.group(1))


def syscall_table(counts, n, top, what="per connection"):
    """counts: {balancer: {syscall: (calls, errors)}}, in column order; n:
    {balancer: divisor} or one divisor for all."""
    names_p = list(counts)
    div = n if isinstance(n, dict) else {p: n for p in names_p}
    calls = {p: {k: v[0] / div[p] for k, v in counts[p].items()} for p in names_p}
    errors = {p: sum(v[1] for v in counts[p].values()) / div[p] for p in names_p}
    names = sorted({k for p in names_p for k in calls[p]},
                   key=lambda k: -max(calls[p].get(k, 0) for p in names_p))
    shown = [k for k in names if max(calls[p].get(k, 0) for p in names_p) >= 0.05][:top]
    row = "%-16s" + " %8s" * len(names_p)
    num = lambda fmt: "%-16s" + (" " + fmt) * len(names_p)  # noqa: E731
    lines = [row % ((what,) + tuple(names_p))]
    lines.append(num("%8.1f") % (("total",) + tuple(sum(calls[p].values()) for p in names_p)))
    lines.append(num("%8.1f") % (("(failed calls)",) + tuple(errors[p] for p in names_p)))
    for k in shown:
        lines.append(num("%8.2f") % ((k,) + tuple(calls[p].get(k, 0) for p in names_p)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# --perf


def perf_record(h, proc, port, path, seconds, mode="close"):
    perf = h.spawn("perf", ["perf", "record", "-g", "-F", "999", "-o", path, "-p", str(proc.pid)])
    time.sleep(1.0)  # perf opens its events
    close = ["-H", "Connection: close"] if mode == "close" else []
    wrk = subprocess.run(["wrk", "-t1", "-c64", "-d%ds" % seconds] + close +
                         ["http://127.0.0.1:%d/" % port], capture_output=True, text=True)
    perf.stop(timeout=20, sig=signal.SIGINT)
    m = re.search(r"Requests/sec:\s*(\S+)", wrk.stdout)
    log("perf: wrk %s mode through lbd: %s req/s; perf report -i %s"
        % (mode, m.group(1) if m else "?", path))


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma list of T (default 1,2)")
    ap.add_argument("-m", "--modes", default="keepalive,close,bulk")
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-d", "--duration", default="5s", help="per run, wrk syntax (default 5s)")
    ap.add_argument("--pin", action="store_true", help="pass --pin to lb-compare")
    ap.add_argument("--no-throughput", action="store_true", help="skip the lb-compare runs")
    ap.add_argument("--syscalls", action="store_true",
                    help="count system calls per new connection under strace -c")
    ap.add_argument("--syscall-conns", type=int, default=2000)
    ap.add_argument("--syscall-top", type=int, default=20, help="rows of the syscall table")
    ap.add_argument("--bulk-syscalls", type=int, metavar="SECS",
                    help="count system calls per 1 MiB response under strace -c, wrk for SECS")
    ap.add_argument("--baseline", metavar="LBD",
                    help="a second lbd binary measured beside --lbd (rows marked base)")
    ap.add_argument("--perf", metavar="FILE", help="perf record -g lbd in close mode into FILE")
    ap.add_argument("--perf-seconds", type=int, default=5)
    ap.add_argument("--perf-mode", choices=["close", "keepalive"], default="close",
                    help="wrk's traffic while perf records (default close)")
    ap.add_argument("--lbd", default=os.path.join(ROOT, "build", "balancer", "lbd"))
    ap.add_argument("--lb-compare", default=os.environ.get(
        "LB_COMPARE", os.path.join(ROOT, "..", "shared", "bench", "lb-compare")))
    ap.add_argument("--keep", metavar="DIR", help="save lb-compare's tables and raw TSVs here")
    args = ap.parse_args()

    threads = [int(t) for t in args.threads.split(",")]
    if not os.access(args.lbd, os.X_OK):
        ap.error("no lbd at %s (build first, or --lbd)" % args.lbd)
    if not args.no_throughput and not os.access(args.lb_compare, os.X_OK):
        ap.error("no lb-compare at %s (set LB_COMPARE or --lb-compare)" % args.lb_compare)
    lbd = os.path.abspath(args.lbd)
    baseline = os.path.abspath(args.baseline) if args.baseline else None
    if baseline and not os.access(baseline, os.X_OK):
        ap.error("no lbd at %s (--baseline)" % baseline)
    lbds = ("lbd", "lbd-base") if baseline else ("lbd",)
    workers = lbd_has_workers(lbd)
    log("lbd %s --workers" % ("has" if workers else "has no"))

    h = Harness("compare")
    try:
        etcd = Etcd(h).start()
        keep = args.keep or h.path("results")
        os.makedirs(keep, exist_ok=True)
        if not args.no_throughput:
            results, header = [], []
            cand = candidate_command(etcd.url, lbd, workers)
            args.baseline_candidate = candidate_command(
                etcd.url, baseline, lbd_has_workers(baseline)) if baseline else None
            for t in threads:
                raw = os.path.join(keep, "raw.T%d.tsv" % t)
                run_lb_compare(args, t, cand, raw, os.path.join(keep, "lb-compare.T%d.txt" % t))
                hdr, runs = read_raw(raw)
                header = header or [l for l in hdr if l.startswith(("# host", "# tools"))]
                results.append((t, runs))
            print("\n".join(header))
            print("# lb-compare -m %s -r %d -d %s%s; T = --lb-threads"
                  % (args.modes, args.rounds, args.duration, " --pin" if args.pin else ""))
            print(throughput_table(results, args.modes.split(","), workers, lbds))
            sys.stdout.flush()
        if args.syscalls or args.bulk_syscalls or args.perf:
            procs = start_all(h, etcd, lbd, baseline)
            if args.syscalls:
                counts = {}
                for name in lbds + PROXIES[1:]:
                    proc, port = procs[name]
                    counts[name], failed, secs, ntid = count_syscalls(h, name, proc, port,
                                                                      args.syscall_conns)
                    log("%s: %d connections in %.1f s under strace (%d threads traced), %d failed"
                        % (name, args.syscall_conns, secs, ntid, failed))
                print()
                print("# system calls per connection: %d sequential HTTP/1.1 'Connection: close'"
                      " requests, one connection each, 3 nginx backends, 1 thread each;"
                      " strace -c -f -p <worker threads>" % args.syscall_conns)
                print(syscall_table(counts, args.syscall_conns, args.syscall_top))
            if args.bulk_syscalls:
                counts, responses = {}, {}
                for name in lbds + PROXIES[1:]:
                    proc, port = procs[name]
                    counts[name], responses[name] = count_bulk_syscalls(h, name, proc, port,
                                                                        args.bulk_syscalls)
                    log("%s: %d responses of 1 MiB in %d s under strace"
                        % (name, responses[name], args.bulk_syscalls))
                print()
                print("# system calls per 1 MiB response: wrk -t1 -c64 -d%ds /big.bin, 3 nginx"
                      " backends, 1 thread each; strace -c -f -p <worker threads>"
                      % args.bulk_syscalls)
                print(syscall_table(counts, responses, args.syscall_top, "per MiB"))
            if args.perf:
                proc, port = procs["lbd"]
                perf_record(h, proc, port, os.path.abspath(args.perf), args.perf_seconds,
                            args.perf_mode)
    finally:
        if args.keep:
            os.environ["LBTEST_KEEP"] = "1"  # the harness dir too: configs, strace output, logs
        h.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
