#!/usr/bin/env bash
# Installs the Debian 12 packages lbd needs -- only those missing; apt is not
# touched when all are there.  Two sets, each complete on a fresh Debian 12:
#
#   deploy/install-deps.sh           # all: the demo's set + tests, fuzz, bench
#   deploy/install-deps.sh --demo    # only the demo's set: build lbd and lbctl
#                                    # (cmake -DLB_TESTS=OFF) and run the demo
#   deploy/install-deps.sh --list [--demo]   # print the set, one a line; no apt
#
# (--runtime is the old name of --demo.)  Must run as root (or with sudo).
# Package post-install scripts are not allowed to start services (etcd,
# nginx, haproxy): tests and the demo start their own instances on free
# loopback ports, and a system etcd on 2379 would only confuse a log reader.
#
# Keep DEMO_PKGS in step with every find_package/pkg_check_modules/
# find_program outside tests/ and with what deploy/demo.sh runs;
# tests/fresh/demo-fresh-root.sh proves it on a fresh Debian 12 root.
set -euo pipefail

# --- the demo: build lbd + lbctl with -DLB_TESTS=OFF, then run them -----------
DEMO_PKGS=(
    gcc libc6-dev make cmake pkg-config  # compiler, cmake, find_package(PkgConfig)
    libev-dev                            # find_path(ev.h), find_library(ev)
    libcurl4-openssl-dev                 # pkg_check_modules(libcurl)
    libnghttp2-dev                       # pkg_check_modules(libnghttp2)
    libprotobuf-c-dev                    # pkg_check_modules(libprotobuf-c)
    protobuf-c-compiler                  # find_program(protoc-c)
    libjson-c-dev                        # pkg_check_modules(json-c)
    libmicrohttpd-dev                    # pkg_check_modules(libmicrohttpd)
    libssl-dev                           # pkg_check_modules(libssl, libcrypto)
    libsystemd-dev                       # balancer/: pkg_check_modules(libsystemd)
    etcd-server                          # demo.sh runs etcd
    python3                              # demo.sh's backends and traffic (/usr/bin/python3)
)
# --- what the tests, the fuzzers and the benchmarks add ------------------------
TEST_PKGS=(
    build-essential                      # the full toolchain a developer expects
    libcmocka-dev                        # tests/unit, tests/component
    etcd-client                          # etcdctl in the integration tests
    python3-grpcio python3-yaml          # integration tests (interop, deploy files)
    openssl                              # the TLS tests make certificates
    clang clang-format libclang-rt-14-dev libfuzzer-14-dev   # format, fuzz stages
    debootstrap                          # tests/fresh: the demo on a fresh Debian 12 root
    golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev golang-gopkg-yaml.v3-dev
                                         # tests/chart: Helm's template engine, built offline
    python3-jsonschema python3-kubernetes curl   # tests/chart: schema, API models, the hook Job
    chromium                             # tests/integration/test_status_page.py (headless, CDP pipe)
    zsh                                  # tests/integration/test_lbctl_ux.py: zsh completion
)
BENCH_PKGS=(haproxy nginx libnginx-mod-stream wrk strace)

set_name=all list=0
for arg in "$@"; do
    case "$arg" in
        --demo | --runtime) set_name=demo ;;
        --list) list=1 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install-deps: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done
if [[ $set_name == demo ]]; then
    pkgs=("${DEMO_PKGS[@]}")
else
    pkgs=("${DEMO_PKGS[@]}" "${TEST_PKGS[@]}" "${BENCH_PKGS[@]}")
fi
if ((list)); then
    printf '%s\n' "${pkgs[@]}"
    exit 0
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
    say "all ${#pkgs[@]} packages ($set_name) present; apt not needed"
else
    say "installing ${#missing[@]} missing package(s) ($set_name): ${missing[*]}"
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
if [[ $set_name == all ]] && ! /usr/bin/python3 -c 'import grpc' 2>/dev/null; then
    echo "install-deps: /usr/bin/python3 cannot import grpc (python3-grpcio)" >&2
    exit 1
fi
say "ok"
