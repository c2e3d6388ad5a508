#!/usr/bin/env bash
# lbd against HAProxy, nginx (stream) and a direct connection, on loopback,
# with wrk: the same backends, the same load, interleaved rounds, results as
# ratios (this machine is shared and noisy; absolute numbers mean little).
#
#   bash tests/bench/run.sh [lb-compare options]     e.g. -r 5 -d 10s --pin
#
# Needs the lb-compare script ($LB_COMPARE, or ../shared/bench/lb-compare
# next to this checkout), wrk, haproxy, nginx with the stream module and
# etcd (deploy/install-deps.sh installs them).  Builds lbd if needed.
# Starts its own etcd on free loopback ports and stops it at the end.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
LB_COMPARE=${LB_COMPARE:-$ROOT/../shared/bench/lb-compare}
[[ -x $LB_COMPARE ]] || { echo "run.sh: lb-compare not found at $LB_COMPARE (set LB_COMPARE)" >&2; exit 1; }
for tool in wrk haproxy nginx etcd etcdctl; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool missing (bash deploy/install-deps.sh)" >&2; exit 1; }
done
if [[ ! -x $BUILD_DIR/balancer/lbd ]]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$BUILD_DIR" -j "$(nproc)" --target lbd >/dev/null
fi

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tmp=$(mktemp -d /tmp/lbd-bench.XXXXXX)
client=$(free_port) peer=$(free_port)
etcd --name bench --data-dir "$tmp/etcd" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" >"$tmp/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$client/health" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$client/health" >/dev/null || { echo "run.sh: etcd did not start" >&2; cat "$tmp/etcd.log" >&2; exit 1; }

"$LB_COMPARE" "$@" \
    --candidate "bash $ROOT/tests/bench/lbd-candidate.sh {port} {backends} http://127.0.0.1:$client $BUILD_DIR/balancer/lbd" \
    --candidate-name lbd
