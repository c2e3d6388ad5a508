/*
 * The CPU count (lb_cpus.h) on fake cgroup trees: each test gets a fresh
 * temporary directory holding a stand-in for /proc/self/cgroup ("self")
 * and one for /sys/fs/cgroup ("cgroup/"), writes the files of the case,
 * and asks lb_cpus_from() with an affinity count of its choosing.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lb_cpus.h"
#include "lb_util.h"

static char dir[] = "/tmp/lbd-cpus-XXXXXX";

/* The path of `name` in the test's directory, in one of a few rotating buffers. */
static const char *in_dir(const char *name)
{
    static char paths[4][PATH_MAX];
    static unsigned turn;
    char *buf = paths[turn++ % 4];

    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

/* Creates the directories of `name` (relative to the test's directory) above its last part. */
static void make_parents(const char *name)
{
    char path[PATH_MAX];

    snprintf(path, sizeof(path), "%s", in_dir(name));
    for (char *slash = strchr(path + strlen(dir) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
        *slash = '/';
    }
}

/* Writes `content` to `name` (relative to the test's directory), creating its directories. */
static void put(const char *name, const char *content)
{
    FILE *f;

    make_parents(name);
    f = fopen(in_dir(name), "w");
    assert_non_null(f);
    assert_true(fputs(content, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

/* lb_cpus_from() on the test's tree. */
static unsigned cpus(unsigned affinity)
{
    return lb_cpus_from(in_dir("cgroup"), in_dir("self"), affinity);
}

static int setup(void **state)
{
    strcpy(dir + strlen(dir) - 6, "XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(mkdir(in_dir("cgroup"), 0755), 0);
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    return remove(path);
}

static int teardown(void **state)
{
    assert_int_equal(nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
    return 0;
}

static void test_no_cgroup_files(void **state)
{
    /* No /proc/self/cgroup at all. */
    assert_int_equal(cpus(4), 4);
    /* A cgroup named, with no cpu.max anywhere on the way up. */
    put("self", "0::/app\n");
    put("cgroup/app/memory.max", "max\n");
    assert_int_equal(cpus(4), 4);
    /* At least 1, even when told the mask is empty. */
    assert_int_equal(cpus(0), 1);
}

static void test_v2_max(void **state)
{
    put("self", "0::/app\n");
    put("cgroup/app/cpu.max", "max 100000\n");
    assert_int_equal(cpus(8), 8);
}

static void test_v2_quota_rounds_up(void **state)
{
    static const struct {
        const char *cpu_max;
        unsigned want;
    } cases[] = {
        {"250000 100000\n", 3},                         /* 2.5 CPUs */
        {"150000 100000\n", 2}, {"200000 100000\n", 2}, /* exactly 2 */
        {"50000 100000\n", 1},                          /* half a CPU is still one thread */
        {"1000 100000\n", 1},   {"300000 50000\n", 6},  /* another period */
        {"100000 100000", 1},                           /* without the newline */
    };

    put("self", "0::/app\n");
    for (size_t i = 0; i < LB_ARRAY_SIZE(cases); i++) {
        put("cgroup/app/cpu.max", cases[i].cpu_max);
        if (cpus(8) != cases[i].want)
            fail_msg("cpu.max \"%s\": %u CPUs, want %u", cases[i].cpu_max, cpus(8), cases[i].want);
    }
}

static void test_v2_nested_takes_smallest(void **state)
{
    /* Kubernetes: the pod's quota is smaller than its container's. */
    put("self", "0::/kubepods/pod1/ctr\n");
    put("cgroup/kubepods/cpu.max", "max 100000\n");
    put("cgroup/kubepods/pod1/cpu.max", "100000 100000\n");
    put("cgroup/kubepods/pod1/ctr/cpu.max", "400000 100000\n");
    assert_int_equal(cpus(8), 1);

    /* The container's own quota, smaller than the pod's. */
    put("cgroup/kubepods/pod1/cpu.max", "600000 100000\n");
    put("cgroup/kubepods/pod1/ctr/cpu.max", "300000 100000\n");
    assert_int_equal(cpus(8), 3);

    /* A malformed level does not hide the others. */
    put("cgroup/kubepods/pod1/ctr/cpu.max", "garbage\n");
    assert_int_equal(cpus(8), 6);
}

static void test_v2_host_path_in_own_namespace(void **state)
{
    /* A container sharing the host's cgroup namespace: the host's path, its own cgroup as root. */
    put("self", "0::/system.slice/docker-abc.scope\n");
    put("cgroup/cpu.max", "200000 100000\n");
    assert_int_equal(cpus(8), 2);
}

static void test_v1_no_quota(void **state)
{
    put("self", "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n");
    put("cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n");
    put("cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    put("cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put("cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    assert_int_equal(cpus(8), 8);
}

static void test_v1_quota(void **state)
{
    put("self", "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n");
    put("cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000\n");
    put("cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    assert_int_equal(cpus(8), 2);

    /* An ancestor's smaller quota counts, as in v2. */
    put("cgroup/cpu,cpuacct/docker/cpu.cfs_quota_us", "50000\n");
    put("cgroup/cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n");
    assert_int_equal(cpus(8), 1);

    /* A quota without its period is no quota. */
    assert_int_equal(unlink(in_dir("cgroup/cpu,cpuacct/docker/cpu.cfs_period_us")), 0);
    assert_int_equal(cpus(8), 2);
}

static void test_v1_cpu_mounted_alone(void **state)
{
    /* The cpu controller on a hierarchy of its own, mounted as "cpu". */
    put("self", "2:cpuacct:/x\n1:cpu:/x\n0::/\n");
    put("cgroup/cpu/x/cpu.cfs_quota_us", "350000\n");
    put("cgroup/cpu/x/cpu.cfs_period_us", "100000\n");
    /* cpuacct and cpuset are other controllers. */
    put("cgroup/cpuacct/x/cpu.cfs_quota_us", "100000\n");
    put("cgroup/cpuacct/x/cpu.cfs_period_us", "100000\n");
    assert_int_equal(cpus(8), 4);
}

static void test_v1_wins_on_hybrid_hosts(void **state)
{
    /* The cpu controller is on v1: a cpu.max in the v2 tree is not the process's. */
    put("self", "4:cpu,cpuacct:/app\n0::/app\n");
    put("cgroup/cpu,cpuacct/app/cpu.cfs_quota_us", "300000\n");
    put("cgroup/cpu,cpuacct/app/cpu.cfs_period_us", "100000\n");
    put("cgroup/app/cpu.max", "100000 100000\n");
    assert_int_equal(cpus(8), 3);
}

static void test_garbage_is_no_quota(void **state)
{
    static const char *const cpu_max[] = {
        "",
        "\n",
        "max",
        "banana\n",
        "100000\n",
        "2.5 1\n",
        "-5 100000\n",
        "+100000 100000\n",
        "100000 0\n",
        "0 100000\n",
        "100000  100000\n",
        "100000 100000 7\n",
        "100000 100000\n\n",
        "100000\t100000\n",
        " 100000 100000\n",
        "99999999999999999999999 100000\n",
        /* Valid but longer than any cpu.max: read as absent, not cut. */
        "000000000000000000000000000000000000000000000000000000000000000100000 100000\n",
    };
    static const char *const self[] = {
        "",
        "garbage\n",
        "0:/app\n",         /* one colon */
        "1::/app\n",        /* a v2 line is hierarchy 0 */
        "0::app\n",         /* not absolute */
        "0::/../app\n",     /* outside the cgroup namespace */
        "0::/app/..\n",     /* the same */
        "4:cpuset:/app\n",  /* not the cpu controller */
        "4:cpuacct:/app\n", /* nor this */
    };

    /* Each file in turn is garbage, the other well-formed. */
    put("self", "0::/app\n");
    for (size_t i = 0; i < LB_ARRAY_SIZE(cpu_max); i++) {
        put("cgroup/app/cpu.max", cpu_max[i]);
        if (cpus(8) != 8)
            fail_msg("cpu.max \"%s\": %u CPUs, want 8", cpu_max[i], cpus(8));
    }
    /* These quotas would be read if the self file pointed to them. */
    put("cgroup/app/cpu.max", "100000 100000\n");
    put("app/cpu.max", "100000 100000\n");
    put("cgroup/cpuset/app/cpu.cfs_quota_us", "100000\n");
    put("cgroup/cpuset/app/cpu.cfs_period_us", "100000\n");
    put("cgroup/cpuacct/app/cpu.cfs_quota_us", "100000\n");
    put("cgroup/cpuacct/app/cpu.cfs_period_us", "100000\n");
    for (size_t i = 0; i < LB_ARRAY_SIZE(self); i++) {
        put("self", self[i]);
        if (cpus(8) != 8)
            fail_msg("self \"%s\": %u CPUs, want 8", self[i], cpus(8));
    }

    /* v1: -1 and garbage alike. */
    put("self", "4:cpu,cpuacct:/app\n");
    put("cgroup/cpu,cpuacct/app/cpu.cfs_period_us", "100000\n");
    put("cgroup/cpu,cpuacct/app/cpu.cfs_quota_us", "1.5\n");
    assert_int_equal(cpus(8), 8);
    put("cgroup/cpu,cpuacct/app/cpu.cfs_quota_us", "100000\n");
    put("cgroup/cpu,cpuacct/app/cpu.cfs_period_us", "-1\n");
    assert_int_equal(cpus(8), 8);
}

static void test_fifo_never_blocks(void **state)
{
    /*
     * A FIFO where a file should be: opening it to read could wait forever
     * for a writer.  The alarm ends the run if it does.
     */
    alarm(10);
    put("self", "0::/app\n");
    make_parents("cgroup/app/cpu.max");
    assert_int_equal(mkfifo(in_dir("cgroup/app/cpu.max"), 0644), 0);
    assert_int_equal(cpus(8), 8);
    /* The same for the self file; a directory is no better. */
    assert_int_equal(unlink(in_dir("self")), 0);
    assert_int_equal(mkfifo(in_dir("self"), 0644), 0);
    assert_int_equal(cpus(8), 8);
    assert_int_equal(unlink(in_dir("self")), 0);
    assert_int_equal(mkdir(in_dir("self"), 0755), 0);
    assert_int_equal(cpus(8), 8);
    alarm(0);
}

static void test_affinity_smaller_than_quota_wins(void **state)
{
    put("self", "0::/app\n");
    put("cgroup/app/cpu.max", "400000 100000\n");
    assert_int_equal(cpus(2), 2);
    assert_int_equal(cpus(4), 4);
    assert_int_equal(cpus(6), 4);
}

static void test_available_on_this_host(void **state)
{
    cpu_set_t set;
    unsigned n = lb_cpus_available();

    /* Whatever this host's cgroups say, never more than the mask, never 0. */
    assert_true(n >= 1);
    assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
    assert_true(n <= (unsigned)CPU_COUNT(&set));
}

#define CASE(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        CASE(test_no_cgroup_files),
        CASE(test_v2_max),
        CASE(test_v2_quota_rounds_up),
        CASE(test_v2_nested_takes_smallest),
        CASE(test_v2_host_path_in_own_namespace),
        CASE(test_v1_no_quota),
        CASE(test_v1_quota),
        CASE(test_v1_cpu_mounted_alone),
        CASE(test_v1_wins_on_hybrid_hosts),
        CASE(test_garbage_is_no_quota),
        CASE(test_fifo_never_blocks),
        CASE(test_affinity_smaller_than_quota_wins),
        cmocka_unit_test(test_available_on_this_host),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
