#!/usr/bin/env bash
# The sockmap relay experiment of docs/performance.md ("Tried and not kept:
# relaying in the kernel"): builds proxy.c and verdict.bpf.c and runs
# tests/bench/run.sh (HAProxy, nginx and lbd on one etcd) with the proxy as
# one more candidate, kept-alive and bulk traffic. Needs root (BPF), clang-14
# and libbpf-dev besides run.sh's tools; not part of CI.
#
#   BUILD_DIR=build-rel bash tests/bench/sockmap/run.sh -r 3 -d 4s
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d /tmp/lbd-sockmap.XXXXXX)
trap 'rm -rf "$out"' EXIT
clang-14 -O2 -g -target bpf -I/usr/include/"$(gcc -print-multiarch)" \
    -c "$here/verdict.bpf.c" -o "$out/verdict.bpf.o"
gcc -O2 -Wall -Wextra -o "$out/proxy" "$here/proxy.c" -lbpf
ports='$(echo {backends} | tr , "\n" | cut -d: -f2 | tr "\n" " ")'
bash "$here/../run.sh" -m keepalive,bulk "$@" \
    --candidate "$out/proxy $out/verdict.bpf.o {port} $ports" --candidate-name sockmap
