#!/usr/bin/env bash
# Installs the Debian 12 packages lbd needs to build, test, fuzz and
# benchmark -- only those missing; apt is not touched when all are there.
#
#   deploy/install-deps.sh            # everything (build, tests, fuzz, bench)
#   deploy/install-deps.sh --runtime  # only what running the demo needs
#
# Must run as root (or with sudo available).  Package post-install scripts
# are not allowed to start services (etcd, nginx, haproxy): tests and the
# demo start their own instances on free loopback ports, and a system etcd
# listening on 2379 would only confuse someone reading a log.
set -euo pipefail

BUILD_PKGS=(build-essential cmake pkg-config libev-dev libcurl4-openssl-dev libnghttp2-dev
            libprotobuf-c-dev protobuf-c-compiler libjson-c-dev libmicrohttpd-dev libssl-dev
            libsystemd-dev)
TEST_PKGS=(libcmocka-dev etcd-server etcd-client python3 python3-grpcio
           python3-yaml clang clang-format libclang-rt-14-dev libfuzzer-14-dev)
BENCH_PKGS=(haproxy nginx libnginx-mod-stream wrk)

pkgs=("${BUILD_PKGS[@]}" etcd-server etcd-client python3)
if [[ "${1:-}" != "--runtime" ]]; then
    pkgs=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}" "${BENCH_PKGS[@]}")
fi

say() { printf '[install-deps] %s\n' "$*"; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-deps: run as root (or install sudo)" >&2; exit 1; }
    SUDO=(sudo)
fi

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

missing=()
for p in "${pkgs[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    say "all ${#pkgs[@]} packages present; apt not needed"
else
    say "installing ${#missing[@]} missing package(s): ${missing[*]}"
    # Keep postinst scripts from starting daemons while we install.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        made_policy=1
    fi
    cleanup_policy() { if ((made_policy)); then "${SUDO[@]}" rm -f "$policy"; fi; }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
    cleanup_policy
    made_policy=0
    trap - EXIT
fi

# A system etcd left running by the package (or by an earlier install) holds
# 127.0.0.1:2379.  Tests never use fixed ports, but stop and disable it so
# nothing answers there by surprise.
if is_installed etcd-server; then
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        if systemctl is-active --quiet etcd 2>/dev/null || systemctl is-enabled --quiet etcd 2>/dev/null; then
            say "stopping and disabling the system etcd service"
            "${SUDO[@]}" systemctl disable --now etcd >/dev/null 2>&1 || true
        fi
    elif [[ -x /etc/init.d/etcd ]] && /etc/init.d/etcd status >/dev/null 2>&1; then
        say "stopping the system etcd service"
        "${SUDO[@]}" /etc/init.d/etcd stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null && "${SUDO[@]}" update-rc.d etcd disable >/dev/null 2>&1 || true
    fi
fi

# The interpreter the tests use must have grpc.
if [[ "${1:-}" != "--runtime" ]] && ! /usr/bin/python3 -c 'import grpc' 2>/dev/null; then
    echo "install-deps: /usr/bin/python3 cannot import grpc (python3-grpcio)" >&2
    exit 1
fi
say "ok"
