#!/usr/bin/env bash
# lbd as an lb-compare candidate: registers the given backends in an etcd
# that is already running, then becomes lbd (exec), so the benchmark
# measures lbd's process alone.
#
#   lbd-candidate.sh PORT BACKENDS_CSV ETCD_URL LBD_BINARY [lbd flags...]
set -euo pipefail
port=$1 backends=$2 etcd=$3 lbd=$4
shift 4
prefix=/lb-bench-$port/
IFS=, read -r -a list <<<"$backends"
i=0
for b in "${list[@]}"; do
    i=$((i + 1))
    ETCDCTL_API=3 etcdctl --endpoints "$etcd" put "${prefix}pools/bench/backends/b$i" \
        "{\"addr\":\"$b\",\"weight\":100}" >/dev/null
done
# Checks would add their own connections to the backends' load: off here.
ETCDCTL_API=3 etcdctl --endpoints "$etcd" put "${prefix}pools/bench/config" \
    '{"health":{"type":"none"}}' >/dev/null
exec "$lbd" --etcd "$etcd" --prefix "$prefix" --pool "bench=127.0.0.1:$port" \
    --admin 127.0.0.1:0 --http 127.0.0.1:0 --log-level warn "$@"
