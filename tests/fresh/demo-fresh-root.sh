#!/usr/bin/env bash
# The README's first command on a fresh Debian 12 machine:
#
#   bash tests/fresh/demo-fresh-root.sh
#
# 1. debootstrap a minimal Debian 12 root (--variant=minbase: less than any
#    fresh install has) into a new temp dir, from the host's Debian mirror;
# 2. copy the source tree in (tracked and untracked, not ignored: no build*/);
# 3. in that root (chroot, in a PID and a mount namespace of its own), as root,
#    with a clean environment and no terminal: `bash deploy/demo.sh`.  It must
#    install what it needs itself (deploy/install-deps.sh --demo), build lbd
#    and lbctl with -DLB_TESTS=OFF, and show the traffic, the drain and the
#    leave; its exit status, output and the processes left are checked;
# 4. run the demo again (prebuilt) and press Ctrl-C (SIGINT to its process
#    group) in the middle of the traffic: it must exit 130 and leave nothing
#    running.
# Nothing is cached: the root is made anew and removed at the end.
#
# Needs root, debootstrap and unshare (deploy/install-deps.sh installs them)
# and the Debian archive (deb.debian.org or the host's mirror); nothing else
# from the network.  tests/run-all.sh runs it as the stage fresh-demo
# (skip it with SKIP_STAGES=fresh-demo).
#
# Environment: LB_FRESH_MIRROR and LB_FRESH_SECURITY (default: the host's
# Debian mirrors in /etc/apt/sources.list*, else deb.debian.org's),
# LB_FRESH_KEEP=1 keeps the root for a look (printed at the end).
set -euo pipefail

cd "$(dirname "$0")/../.."
SRC=$PWD
SUITE=bookworm
PATH_IN=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
T0=$SECONDS

say() { printf '[fresh-demo %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
fail() { printf '[fresh-demo] FAILED: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "must run as root (debootstrap, chroot, namespaces)"
command -v debootstrap >/dev/null || fail "debootstrap missing (bash deploy/install-deps.sh)"
command -v unshare >/dev/null || fail "unshare missing (util-linux)"

# host_mirror SUITE: the host's URIs serving SUITE (deb822 or one-line
# sources), so a machine behind its own Debian mirror keeps using it.
host_mirror() {
    local f s=$1
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk -v s="$s" '
            function flush() { if (u != "" && ok) print u; u = ""; ok = 0 }
            /^[[:space:]]*$/         { flush(); next }
            tolower($1) == "uris:"   { u = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
            END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        awk -v s="$s" '$1 == "deb" {
            for (i = 2; i < NF; i++) if ($i ~ /^[a-z]+:\/\// && $(i + 1) == s) print $i }' "$f"
    done
}
MIRROR=${LB_FRESH_MIRROR:-$(host_mirror "$SUITE" | sed -n 1p)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}
SECURITY=${LB_FRESH_SECURITY:-$(host_mirror "$SUITE-security" | sed -n 1p)}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
SECURITY=${SECURITY%/}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lbd-fresh.XXXXXX")
R=$WORK/root
OUT=$WORK/demo.out

remove_root() {
    local rc=$?
    # Every mount is made inside the private mount namespace below and is gone
    # with it; never delete through a mount that is somehow still there.
    if grep -qF " $WORK/" /proc/self/mountinfo; then
        echo "[fresh-demo] something is still mounted under $WORK; not removing it" >&2
    elif [[ -n ${LB_FRESH_KEEP:-} ]]; then
        echo "[fresh-demo] kept: $WORK"
    else
        rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}
trap remove_root EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. a fresh Debian 12 root ----------------------------------------------
say "debootstrap --variant=minbase $SUITE from $MIRROR into $R"
if ! debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -30 "$WORK/debootstrap.log" >&2
    fail "debootstrap"
fi
# What a fresh install's apt sees: the release, its updates, security.
cat >"$R/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
cp /etc/resolv.conf /etc/hosts "$R/etc/"
say "root ready: Debian $(cat "$R/etc/debian_version"), $(chroot "$R" dpkg-query -W -f='.\n' | wc -l) packages"

# --- 2. the source tree ------------------------------------------------------
mkdir -p "$R/root/lbd"
if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$SRC" ls-files -z --cached --others --exclude-standard |
        (cd "$SRC" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) |
        tar -C "$SRC" --null -T - -cf - | tar -C "$R/root/lbd" -xf -
else
    tar -C "$SRC" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$R/root/lbd" -xf -
fi
say "source copied: $(find "$R/root/lbd" -type f | wc -l) files"

# in_root SCRIPT: runs SCRIPT with bash inside the root, as PID 1's child in a
# new PID namespace (so when it ends, the kernel ends anything left there) and
# a private mount namespace (so /proc, /dev and /sys go away with it), with a
# clean environment, no terminal and no standard input.
in_root() {
    unshare --mount --pid --fork --kill-child --propagation private -- bash -c '
        R=$1; shift
        mount -t proc proc "$R/proc" && mount --rbind /dev "$R/dev" &&
            mount -t sysfs sysfs "$R/sys" || exit 99
        exec chroot "$R" /usr/bin/env -i PATH="$2" HOME=/root LANG=C.UTF-8 TERM=dumb \
            /bin/bash -c "$1"' bash "$R" "$1" "$PATH_IN" </dev/null
}

# The script inside: PID 1 starts the command as its child, then fails if any
# other process is still there once the command has returned.
LEFTOVERS='
left=()
for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p == 1 || $p == "$$" ]] && continue
    left+=("$p: $(tr "\0" " " <"/proc/$p/cmdline" 2>/dev/null)")
done
if ((${#left[@]})); then
    echo "LEFTOVER PROCESSES:"; printf "    %s\n" "${left[@]}"; exit 98
fi
echo "no process left"'

# --- 3. the demo, as a newcomer runs it -------------------------------------
say "in the root: bash deploy/demo.sh (installs its packages, builds, runs); output in $OUT"
rc=0
in_root 'cd /root/lbd && bash deploy/demo.sh; rc=$?; echo "demo exit status: $rc"
'"$LEFTOVERS"'
exit $rc' >"$OUT" 2>&1 || rc=$?
sed 's/^/    | /' "$OUT"
((rc == 0)) || fail "deploy/demo.sh in a fresh root: exit status $rc (output above)"

check() { # description extended-regex: the demo's output must have a match
    grep -qE -- "$2" "$OUT" || fail "the demo's output lacks $1 (/$2/)"
}
check "its own package install" '^\[install-deps\] installing [0-9]+ missing package\(s\) \(demo\)'
check "the tests-off build" 'Building lbd and lbctl in /root/lbd/build-demo \(tests off: -DLB_TESTS=OFF\)'
check "three registered backends" '^    web +b3 +127\.0\.0\.1:[0-9]+ '
check "traffic to b2 before the drain" '^    b2 +[1-9][0-9]* +#'
check "the drained state" '^    web +b2 .* drained '
check "the final verdict" '^demo: OK: '
check "the clean-up" '^==> Stopping everything the demo started'
check "no process left" '^no process left$'
grep -qiE 'cmocka|python3-grpcio|clang|libfuzzer|haproxy|nginx' <(grep '^\[install-deps\]' "$OUT") &&
    fail "the demo installed a test-only package"
# Round 2 (after the drain) lists b1 and b3 only.
awk '/^==> Round 2/ { r = 1; next } /^==>/ { r = 0 } r && /^    b2 / { bad = 1 } END { exit bad }' "$OUT" ||
    fail "b2 got new connections after the drain"
say "demo passed in the fresh root ($(grep -c . "$OUT") lines of output)"

# --- 4. Ctrl-C in the middle ---------------------------------------------------
say "in the root: the demo again, Ctrl-C (SIGINT to its process group) during round 1"
rc=0
in_root '/usr/bin/python3 - <<"EOF"
import os, signal, subprocess, sys, time
env = dict(os.environ, LB_SKIP_DEPS="1", LB_PREBUILT="1", CONNECTIONS="100000")
out = open("/tmp/ctrl-c.out", "w+")
# As a terminal would: its own process group, SIGINT at its default.
p = subprocess.Popen(["bash", "deploy/demo.sh"], cwd="/root/lbd", env=env, stdout=out,
                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
deadline = time.monotonic() + 120
while "Round 1" not in open("/tmp/ctrl-c.out").read():
    if p.poll() is not None or time.monotonic() > deadline:
        print(open("/tmp/ctrl-c.out").read()); sys.exit("the demo ended or hung before round 1")
    time.sleep(0.1)
time.sleep(1)
os.killpg(p.pid, signal.SIGINT)
t = time.monotonic()
rc = p.wait(timeout=60)
print(open("/tmp/ctrl-c.out").read())
print("demo exit status after Ctrl-C: %d in %.1f s" % (rc, time.monotonic() - t))
sys.exit(0 if rc == 130 else 1)
EOF
rc=$?
'"$LEFTOVERS"'
exit $rc' >"$WORK/ctrl-c.out" 2>&1 || rc=$?
sed -n '/==> Round 1/,$p' "$WORK/ctrl-c.out" | sed 's/^/    | /'
((rc == 0)) || fail "Ctrl-C: exit status $rc (want the demo's 130 and no process left)"
grep -q '^no process left$' "$WORK/ctrl-c.out" || fail "Ctrl-C: processes left"
say "Ctrl-C: the demo stopped everything and exited 130"

say "passed in $((SECONDS - T0)) s"
