#!/usr/bin/env bash
# The one command: installs what is missing, builds and runs every test.
#
#   bash tests/run-all.sh
#
# Stages (each prints one progress line, all are summed up at the end):
#   deps        deploy/install-deps.sh (apt only for what is missing)
#   format      clang-format --dry-run --Werror on every tracked C file (.clang-format)
#   build       build/       -Werror, RelWithDebInfo
#   test        ctest in build/ (unit, fuzz corpus replay, integration), lbd's default workers
#   asan-build  build-asan/  -DLB_SANITIZE=ON (AddressSanitizer + UBSan)
#   asan-test   ctest in build-asan/ with leak detection on, lbd with one worker
#   tsan-build  build-tsan/  -DLB_TSAN=ON (ThreadSanitizer)
#   tsan-test   unit tests, the mailbox, the multi-worker, upgrade, queue and state file integration tests in build-tsan/
#   fuzz-build  build-fuzz/  clang, -DLB_FUZZ=ON (libFuzzer + ASan + UBSan)
#   fuzz        every fuzz_* target for FUZZ_SECONDS over tests/fuzz/corpus/<name>/,
#               JOBS targets at a time
#   fresh-demo  deploy/demo.sh in a new debootstrapped Debian 12 root (tests/fresh/)
#
# Knobs (environment): JOBS (default: nproc), FUZZ_SECONDS (default 12),
# SKIP_STAGES (e.g. "asan-build asan-test fuzz-build fuzz" for a quick run),
# LB_SKIP_DEPS=1 (never call apt).  Exit status: 0 only if every stage passed.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
FUZZ_SECONDS=${FUZZ_SECONDS:-12}
SKIP_STAGES=" ${SKIP_STAGES:-} "
LOG_DIR=$ROOT/build-logs
mkdir -p "$LOG_DIR"
START=$SECONDS

declare -a STAGE_NAMES=() STAGE_RESULTS=() STAGE_TIMES=()
TESTS_PASSED=0
TESTS_FAILED=0

note() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

record() { # name result seconds
    STAGE_NAMES+=("$1"); STAGE_RESULTS+=("$2"); STAGE_TIMES+=("$3")
    printf '==> stage %-11s %s (%ds)\n' "$1" "$2" "$3"
}

skipped() { [[ "$SKIP_STAGES" == *" $1 "* ]]; }

# run_stage NAME CMD...: runs CMD with output to the terminal and a log file.
run_stage() {
    local name=$1; shift
    if skipped "$name"; then
        record "$name" "SKIPPED" 0
        return 0
    fi
    note "stage $name: $*"
    local t0=$SECONDS rc
    "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    if ((rc == 0)); then record "$name" "PASSED" $((SECONDS - t0)); else
        record "$name" "FAILED(rc=$rc)" $((SECONDS - t0)); fi
    return "$rc"
}

stage_ok() { # name: did the stage pass?
    local i
    for i in "${!STAGE_NAMES[@]}"; do
        [[ "${STAGE_NAMES[$i]}" == "$1" ]] && [[ "${STAGE_RESULTS[$i]}" == PASSED ]] && return 0
    done
    return 1
}

count_ctest() { # log file: add ctest's totals to the counters
    local line passed total failed
    line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$1" | tail -1)
    [[ -n "$line" ]] || return 0
    failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$line")
    passed=$((total - failed))
    TESTS_PASSED=$((TESTS_PASSED + passed))
    TESTS_FAILED=$((TESTS_FAILED + failed))
}

configure_and_build() { # dir cmake-args...
    local dir=$1; shift
    cmake -S "$ROOT" -B "$dir" -DLB_WERROR=ON "$@" && cmake --build "$dir" -j "$JOBS"
}

run_ctest() { # dir
    ctest --test-dir "$1" --output-on-failure --no-tests=error -j "$JOBS"
}

run_ctest_one_worker() { # dir: every lbd started without --workers gets one (LBD_WORKERS)
    LBD_WORKERS=1 run_ctest "$1"
}

# ---------------------------------------------------------------------------

if [[ -n "${LB_SKIP_DEPS:-}" ]]; then
    record deps SKIPPED 0
else
    run_stage deps bash deploy/install-deps.sh
fi

# Formatting: the pinned .clang-format (clang-format 14, Debian 12) over every
# tracked C file; a file that differs fails the stage with the diff's place.
check_format() {
    local files
    mapfile -t files < <(git -C "$ROOT" ls-files '*.c' '*.h' 2>/dev/null ||
                         find "$ROOT"/{common,proto,watcher,balancer,ctl,tests} -name '*.[ch]')
    if ((${#files[@]} == 0)); then
        echo "no C files found"
        return 1
    fi
    (cd "$ROOT" && clang-format --dry-run --Werror "${files[@]}") &&
        echo "format: ${#files[@]} files match .clang-format"
}
run_stage format check_format

run_stage build configure_and_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
if stage_ok build; then
    run_stage test run_ctest build
    count_ctest "$LOG_DIR/test.log"
elif skipped test; then
    record test SKIPPED 0
else
    record test "NOT RUN (build failed)" 0; TESTS_FAILED=$((TESTS_FAILED + 1))
fi

# Sanitizers: leaks fail the run; UBSan stops at the first report.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
run_stage asan-build configure_and_build build-asan -DLB_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
if stage_ok asan-build; then
    # The release stage runs lbd with its default workers (the CPUs here);
    # this one with a single worker (LBD_WORKERS), so both shapes are tested.
    run_stage asan-test run_ctest_one_worker build-asan
    count_ctest "$LOG_DIR/asan-test.log"
elif skipped asan-test; then
    record asan-test SKIPPED 0
else
    record asan-test "NOT RUN (build failed)" 0; TESTS_FAILED=$((TESTS_FAILED + 1))
fi

# ThreadSanitizer: the worker threads against the control loop.  lbd exits
# 66 on a report, and every integration test asserts lbd's exit code.
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:second_deadlock_stack=1}
run_tsan_ctest() {
    ctest --test-dir build-tsan --output-on-failure --no-tests=error -j "$JOBS" \
        -R '^(unit\.|component\.test_mailbox$|integration\.(workers|data_plane|lifecycle|e2e|connect_path|upgrade|edge|queue|state_file)$)'
}
run_stage tsan-build configure_and_build build-tsan -DLB_TSAN=ON -DCMAKE_BUILD_TYPE=Debug
if stage_ok tsan-build; then
    run_stage tsan-test run_tsan_ctest
    count_ctest "$LOG_DIR/tsan-test.log"
elif skipped tsan-test; then
    record tsan-test SKIPPED 0
else
    record tsan-test "NOT RUN (build failed)" 0; TESTS_FAILED=$((TESTS_FAILED + 1))
fi

# libFuzzer: only the fuzz_* targets are built here (the rest is covered above).
fuzz_build() {
    cmake -S "$ROOT" -B build-fuzz -DLB_WERROR=ON -DLB_FUZZ=ON \
        -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo || return 1
    local targets
    targets=$(cmake --build build-fuzz --target help | grep -oE '\bfuzz_[A-Za-z0-9_]+\b' \
              | grep -v '_replay$' | sort -u)
    if [[ -z "$targets" ]]; then
        echo "no fuzz_* targets defined"
        return 0
    fi
    # shellcheck disable=SC2086
    cmake --build build-fuzz -j "$JOBS" --target $targets
}

# fuzz_one BINARY: one target for FUZZ_SECONDS; its log and exit status go to
# $LOG_DIR/fuzz-<name>.log and .rc.
fuzz_one() {
    local b=$1 name rc
    name=$(basename "$b")
    local seeds=$ROOT/tests/fuzz/corpus/$name work=build-fuzz/corpus/$name
    mkdir -p "$work"
    [[ -d "$seeds" ]] || seeds=""
    # The first corpus dir is where libFuzzer writes; the seeds stay untouched.
    "$b" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="build-fuzz/artifacts/$name-" "$work" ${seeds:+"$seeds"} \
        >"$LOG_DIR/fuzz-$name.log" 2>&1
    rc=$?
    echo "$rc" >"$LOG_DIR/fuzz-$name.rc"
}

# Every target, JOBS at a time (each is one process on one core), then the
# results in name order.
fuzz_run() {
    local bins=() b name failed=0 n=0
    mapfile -t bins < <(find build-fuzz -type f -name 'fuzz_*' -perm -u+x ! -name '*_replay' | sort)
    if ((${#bins[@]} == 0)); then
        echo "no fuzz targets built"
        return 0
    fi
    mkdir -p build-fuzz/artifacts
    for b in "${bins[@]}"; do
        while (($(jobs -rp | wc -l) >= JOBS)); do wait -n; done
        rm -f "$LOG_DIR/fuzz-$(basename "$b").rc"
        echo "--> $(basename "$b") for ${FUZZ_SECONDS}s"
        fuzz_one "$b" &
    done
    wait
    for b in "${bins[@]}"; do
        name=$(basename "$b")
        n=$((n + 1))
        if [[ "$(cat "$LOG_DIR/fuzz-$name.rc" 2>/dev/null)" == 0 ]]; then
            echo "    ok: $name: $(grep -E 'stat::number_of_executed_units' "$LOG_DIR/fuzz-$name.log" | awk '{print $2}') runs"
            TESTS_PASSED=$((TESTS_PASSED + 1))
        else
            echo "    FAILED: $name (log $LOG_DIR/fuzz-$name.log); last lines:"
            tail -40 "$LOG_DIR/fuzz-$name.log" | sed 's/^/    /'
            ls -1 build-fuzz/artifacts/"$name"-* 2>/dev/null | sed 's/^/    artifact: /'
            failed=$((failed + 1))
            TESTS_FAILED=$((TESTS_FAILED + 1))
        fi
    done
    echo "fuzz: $((n - failed)) of $n targets clean"
    ((failed == 0))
}

run_stage fuzz-build fuzz_build
if stage_ok fuzz-build; then
    # Not through run_stage's pipe: fuzz_run updates the test counters.
    if skipped fuzz; then record fuzz SKIPPED 0; else
        note "stage fuzz: every fuzz_* target for ${FUZZ_SECONDS}s"
        t0=$SECONDS
        if fuzz_run; then record fuzz PASSED $((SECONDS - t0)); else
            record fuzz FAILED $((SECONDS - t0)); fi
    fi
elif skipped fuzz; then
    record fuzz SKIPPED 0
else
    record fuzz "NOT RUN (build failed)" 0; TESTS_FAILED=$((TESTS_FAILED + 1))
fi

run_stage fresh-demo bash tests/fresh/demo-fresh-root.sh

# ---------------------------------------------------------------------------
note "summary ($((SECONDS - START))s, logs in $LOG_DIR)"
failed_stages=0
for i in "${!STAGE_NAMES[@]}"; do
    printf '    %-11s %-24s %5ss\n' "${STAGE_NAMES[$i]}" "${STAGE_RESULTS[$i]}" "${STAGE_TIMES[$i]}"
    case "${STAGE_RESULTS[$i]}" in PASSED | SKIPPED) ;; *) failed_stages=$((failed_stages + 1)) ;; esac
done
rc=0
if ((failed_stages > 0 || TESTS_FAILED > 0)); then
    echo "run-all: FAILED ($failed_stages stage(s) not passed)"
    rc=1
else
    echo "run-all: every stage passed"
fi
echo "run-all: $TESTS_PASSED passed, $TESTS_FAILED failed"
exit "$rc"
