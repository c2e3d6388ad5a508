#!/usr/bin/env bash
# lbd in two minutes, on one machine:
#
#   bash deploy/demo.sh
#
# Installs what is missing (`deploy/install-deps.sh --demo`: compiler, cmake,
# the libraries, etcd, python3; nothing test-only), builds lbd and lbctl with
# -DLB_TESTS=OFF in build-demo/ (never the tests' build/), starts a real etcd
# on free loopback ports, three demo backends that register themselves with
# `lbctl register`, and lbd in front of them.  Sends traffic, drains one
# backend with `lbctl drain`, sends traffic again, lets one backend leave,
# checks who answered each round, then stops everything it started (by PID,
# on success, failure or Ctrl-C).  Only 127.0.0.1 is used.  Logs stay in the
# printed directory.  The last line is "demo: OK ..." and the exit status 0
# only if every round went as described.
#
# Environment: CONNECTIONS (default 300), BUILD_DIR (default build-demo),
# LB_SKIP_DEPS=1 to never call apt, LB_PREBUILT=1 to use BUILD_DIR's binaries as they are.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build-demo}
CONNECTIONS=${CONNECTIONS:-300}
PY=/usr/bin/python3
PREFIX=/lb-demo/
POOL=web

if [[ -t 1 ]]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
say() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$PLAIN"; }
info() { printf '    %s\n' "$*"; }

# --- 1. packages and build -------------------------------------------------
say "Checking packages (apt runs only for missing ones)"
if [[ -z "${LB_SKIP_DEPS:-}" ]]; then
    bash deploy/install-deps.sh --demo
fi

if [[ -n "${LB_PREBUILT:-}" ]]; then
    say "Using prebuilt lbd and lbctl from $BUILD_DIR"
else
    say "Building lbd and lbctl in $BUILD_DIR (tests off: -DLB_TESTS=OFF)"
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLB_TESTS=OFF >/dev/null
    cmake --build "$BUILD_DIR" -j "$(nproc)" --target lbd lbctl >/dev/null
fi
LBD=$BUILD_DIR/balancer/lbd
LBCTL=$BUILD_DIR/ctl/lbctl
info "lbd:   $LBD"
info "lbctl: $LBCTL"

# --- helpers ----------------------------------------------------------------
DEMO_DIR=$(mktemp -d /tmp/lbd-demo.XXXXXX)
PIDS=()

# Every process the demo starts is its own child, recorded in PIDS.  Only
# those PIDs are signalled, and only while /proc says the PID is still a live
# child of this shell (so a PID reused by a stranger is never touched); each
# is reaped here, so none outlives the demo.
ours() { # pid: a live (not zombie) child of this shell?
    local stat rest state ppid
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) }             # after "pid (comm) ": "state ppid ..."
    read -r state ppid _ <<<"$rest"
    [[ $state != Z && $ppid == "$$" ]]
}

cleanup() {
    local rc=$? pid i alive
    trap - EXIT INT TERM HUP
    if ((${#PIDS[@]})); then
        say "Stopping everything the demo started"
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
            pid=${PIDS[$i]}
            if ours "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
        done
        for _ in $(seq 50); do # up to 5 s for all of them together
            alive=0
            for pid in "${PIDS[@]}"; do
                if ours "$pid"; then alive=1; fi
            done
            ((alive)) || break
            sleep 0.1
        done
        for pid in "${PIDS[@]}"; do
            if ours "$pid"; then
                info "pid $pid did not stop on SIGTERM within 5 s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            wait "$pid" 2>/dev/null || true
        done
        PIDS=()
    fi
    rm -rf "$DEMO_DIR/etcd.data"
    printf '\nLogs: %s\n' "$DEMO_DIR"
    ls -1 "$DEMO_DIR" | sed 's/^/    /'
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

start() { # name cmd... : runs in the background, output to $DEMO_DIR/name.log
    local name=$1; shift
    "$@" >"$DEMO_DIR/$name.log" 2>&1 &
    PIDS+=($!)
    info "started $name (pid $!): $*"
}

free_ports() { # n: n distinct free loopback ports, one per line
    "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_for() { # what timeout-seconds python-expression
    "$PY" - "$@" <<'EOF' || { echo "demo: timed out waiting for $1" >&2; exit 1; }
import signal, sys, time, urllib.request, subprocess, socket
signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: stop quietly
what, timeout, expr = sys.argv[1], float(sys.argv[2]), sys.argv[3]
def http_ok(url):
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except Exception:
        return False
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    if eval(expr):
        sys.exit(0)
    time.sleep(0.1)
sys.exit(1)
EOF
}

cat >"$DEMO_DIR/backend.py" <<'EOF'
# A demo backend: says its id on every new connection, then echoes.
import socket, sys, threading
bid, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(256)
def serve(c):
    with c:
        c.sendall(bid.encode() + b"\n")
        while (d := c.recv(4096)):
            c.sendall(d)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF

cat >"$DEMO_DIR/traffic.py" <<'EOF'
# Opens N new connections to the pool and shows who answered.  Then checks:
# every connection was answered by a backend, each +ID got some, no -ID any.
import collections, signal, socket, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: stop quietly
port, n, expect = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
seen = collections.Counter()
for _ in range(n):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            line = s.makefile().readline().strip()
            seen[line or "(no answer)"] += 1
    except OSError as e:
        seen["(error: %s)" % e.strerror] += 1
for who in sorted(seen):
    print("    %-12s %4d  %s" % (who, seen[who], "#" * (seen[who] * 50 // n)))
bad = [who for who in seen if who.startswith("(")]
bad += ["%s got none" % e[1:] for e in expect if e[0] == "+" and not seen[e[1:]]]
bad += ["%s got %d" % (e[1:], seen[e[1:]]) for e in expect if e[0] == "-" and seen[e[1:]]]
if bad:
    sys.exit("demo: unexpected: " + "; ".join(bad))
EOF

mapfile -t PORTS < <(free_ports 9)
((${#PORTS[@]} == 9)) || { echo "demo: could not find free loopback ports" >&2; exit 1; }
ETCD_CLIENT=${PORTS[0]} ETCD_PEER=${PORTS[1]}
POOL_PORT=${PORTS[2]} ADMIN_PORT=${PORTS[3]} HTTP_PORT=${PORTS[4]}
BACKEND_PORTS=("${PORTS[5]}" "${PORTS[6]}" "${PORTS[7]}")
ETCD_URL=http://127.0.0.1:$ETCD_CLIENT
ADMIN=127.0.0.1:$ADMIN_PORT
ctl() { "$LBCTL" --admin "$ADMIN" "$@"; }

# --- 2. etcd -----------------------------------------------------------------
say "Starting etcd on $ETCD_URL (data in $DEMO_DIR/etcd.data)"
start etcd etcd --name lbd-demo --data-dir "$DEMO_DIR/etcd.data" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "lbd-demo=http://127.0.0.1:$ETCD_PEER" --listen-metrics-urls "" \
    --logger zap --log-outputs stderr --log-level warn
wait_for "etcd" 30 "http_ok('$ETCD_URL/health')"
info "etcd is healthy"

# --- 3. backends that register themselves ----------------------------------
say "Starting three backends; each registers itself with 'lbctl register' (lease TTL 5s)"
for i in 0 1 2; do
    id=b$((i + 1)) port=${BACKEND_PORTS[$i]}
    start "backend-$id" "$PY" "$DEMO_DIR/backend.py" "$id" "$port"
    start "register-$id" "$LBCTL" register --etcd "$ETCD_URL" --prefix "$PREFIX" \
        --pool "$POOL" --id "$id" --addr "127.0.0.1:$port" --ttl 5s
done
REGISTER_B3_PID=${PIDS[-1]}

# --- 4. lbd ------------------------------------------------------------------
say "Starting lbd: pool '$POOL' on 127.0.0.1:$POOL_PORT, admin $ADMIN, metrics on :$HTTP_PORT"
start lbd "$LBD" --etcd "$ETCD_URL" --prefix "$PREFIX" --pool "$POOL=127.0.0.1:$POOL_PORT" \
    --admin "$ADMIN" --http "127.0.0.1:$HTTP_PORT" --shutdown-grace 5s --log-level info
wait_for "lbd /readyz" 30 "http_ok('http://127.0.0.1:$HTTP_PORT/readyz')"
info "lbd is ready"
wait_for "three backends in lbd" 15 \
    "subprocess.run(['$LBCTL','--admin','$ADMIN','-o','json','backends','$POOL'],capture_output=True).stdout.count(b'127.0.0.1:') >= 3"

say "lbctl backends $POOL"
ctl backends "$POOL" | sed 's/^/    /'

# --- 5. traffic ----------------------------------------------------------------
say "Round 1: $CONNECTIONS new connections to 127.0.0.1:$POOL_PORT"
"$PY" "$DEMO_DIR/traffic.py" "$POOL_PORT" "$CONNECTIONS" +b1 +b2 +b3

# --- 6. drain ------------------------------------------------------------------
say "Draining b2: lbctl drain $POOL b2 (open connections would run to completion)"
ctl drain "$POOL" b2 | sed 's/^/    /'
say "lbctl backends $POOL"
ctl backends "$POOL" | sed 's/^/    /'

say "Round 2: $CONNECTIONS new connections; b2 should get none"
"$PY" "$DEMO_DIR/traffic.py" "$POOL_PORT" "$CONNECTIONS" +b1 -b2 +b3

# --- 7. a backend leaves -------------------------------------------------------
say "b3's registrar gets SIGTERM (its pod is going away): it revokes its lease"
kill -TERM "$REGISTER_B3_PID"
wait "$REGISTER_B3_PID" 2>/dev/null || true # reaped: no longer ours to signal
for i in "${!PIDS[@]}"; do [[ ${PIDS[$i]} != "$REGISTER_B3_PID" ]] || unset 'PIDS[i]'; done
PIDS=("${PIDS[@]}")
wait_for "b3 to leave" 10 \
    "b'\"b3\"' not in subprocess.run(['$LBCTL','--admin','$ADMIN','-o','json','backends','$POOL'],capture_output=True).stdout"
say "Round 3: only b1 is left to take new connections"
"$PY" "$DEMO_DIR/traffic.py" "$POOL_PORT" 30 +b1 -b2 -b3
ctl backends "$POOL" | sed 's/^/    /'

say "Done. Metrics: curl http://127.0.0.1:$HTTP_PORT/metrics while it runs; lbd's log is in $DEMO_DIR/lbd.log"
echo "demo: OK: traffic reached b1, b2 and b3; drained b2 got no new connections; after b3 left, b1 took them all"
