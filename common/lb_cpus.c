/*
 * The CPUs this process may use (lb_cpus.h).
 *
 * Every file here is small and read whole into a fixed buffer through
 * lb_file_open(), so a FIFO or device where a cgroup file should be cannot
 * block, and a file longer than the buffer is as good as absent.  Anything
 * that is not exactly what the kernel writes reads as "no quota": "max" in
 * cpu.max and -1 in cpu.cfs_quota_us fail the number parser like garbage
 * does, which is the answer both deserve.
 *
 * The walk from the process's cgroup up to the root serves two cases.
 * Kubernetes puts a quota on the pod's cgroup and another on each of its
 * containers, so an ancestor may hold the smaller one.  And a container
 * without its own cgroup namespace sees its host's path in
 * /proc/self/cgroup while its /sys/fs/cgroup is its own cgroup mounted as
 * the root: the path names nothing there, and the walk ends at the root,
 * which is the right cgroup.  Both hold for cgroup v1 as for v2, so both
 * are walked.
 */
#include "lb_cpus.h"
#include "lb_file.h"
#include "lb_util.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* /proc/self/cgroup: a line per v1 hierarchy (about a dozen) and one for v2. */
#define SELF_CGROUP_MAX 8192
/* cpu.max, cpu.cfs_quota_us, cpu.cfs_period_us: two 64-bit numbers at most. */
#define QUOTA_FILE_MAX 64

/*
 * Reads all of `path` into buf, NUL-terminated.  False when it cannot be
 * opened as a regular file, a read fails, or it does not fit in size - 1
 * bytes.
 */
static bool read_small_file(const char *path, char *buf, size_t size)
{
    size_t len = 0;
    bool ok = false;
    int fd = lb_file_open(path, "cgroup file", NULL, NULL);

    if (fd < 0)
        return false;
    while (len < size) {
        ssize_t n = read(fd, buf + len, size - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        if (n == 0) {
            buf[len] = '\0';
            ok = true;
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    return ok;
}

/* Decimal digits at *s, at least one, into *out without overflow; *s moves past them. */
static bool parse_u64(const char **s, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;

    if (*p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned digit = (unsigned)(*p - '0');

        if (v > (UINT64_MAX - digit) / 10)
            return false;
        v = v * 10 + digit;
    }
    *s = p;
    *out = v;
    return true;
}

/* The end of a cgroup file's text: nothing, or the newline the kernel ends it with. */
static bool is_end(const char *s)
{
    return s[0] == '\0' || (s[0] == '\n' && s[1] == '\0');
}

/* A quota of `quota` microseconds per `period`, in CPUs rounded up; 0 (no quota) for zeros. */
static uint64_t quota_cpus(uint64_t quota, uint64_t period)
{
    if (quota == 0 || period == 0)
        return 0;
    return quota / period + (quota % period != 0);
}

/* `dir`/`name` into path (PATH_MAX bytes); false when it does not fit. */
static bool join_path(char *path, const char *dir, const char *name)
{
    int n = snprintf(path, PATH_MAX, "%s/%s", dir, name);

    return n >= 0 && n < PATH_MAX;
}

/* The quota of the v2 cgroup at `dir` in CPUs: cpu.max is "<quota> <period>"; 0 when none. */
static uint64_t v2_quota_cpus(const char *dir)
{
    char path[PATH_MAX], text[QUOTA_FILE_MAX];
    const char *s = text;
    uint64_t quota, period;

    if (!join_path(path, dir, "cpu.max") || !read_small_file(path, text, sizeof(text)))
        return 0;
    if (!parse_u64(&s, &quota) || *s++ != ' ' || !parse_u64(&s, &period) || !is_end(s))
        return 0;
    return quota_cpus(quota, period);
}

/* `dir`/`name` holds one number (a v1 cgroup file): into *out. */
static bool read_u64_file(const char *dir, const char *name, uint64_t *out)
{
    char path[PATH_MAX], text[QUOTA_FILE_MAX];
    const char *s = text;

    return join_path(path, dir, name) && read_small_file(path, text, sizeof(text)) &&
           parse_u64(&s, out) && is_end(s);
}

/* The quota of the v1 cpu cgroup at `dir` in CPUs; 0 when none. */
static uint64_t v1_quota_cpus(const char *dir)
{
    uint64_t quota, period;

    if (!read_u64_file(dir, "cpu.cfs_quota_us", &quota) ||
        !read_u64_file(dir, "cpu.cfs_period_us", &period))
        return 0;
    return quota_cpus(quota, period);
}

/* The smaller of two quotas in CPUs, where 0 is none. */
static uint64_t smaller_quota(uint64_t a, uint64_t b)
{
    if (a == 0)
        return b;
    return b != 0 && b < a ? b : a;
}

/* True when `path` has a ".." component. */
static bool has_parent_component(const char *path)
{
    for (const char *p = strstr(path, "/.."); p; p = strstr(p + 1, "/.."))
        if (p[3] == '/' || p[3] == '\0')
            return true;
    return false;
}

/*
 * The smallest quota (in CPUs) of the cgroup at `base` + `cgroup_path`
 * and of each of its parents up to `base` itself; 0 when none has one.
 * A path with a ".." component names a cgroup outside the process's cgroup
 * namespace, so not under the mount: no quota can be read for it.
 */
static uint64_t smallest_quota_up(const char *base, const char *cgroup_path,
                                  uint64_t (*read_quota)(const char *dir))
{
    char dir[PATH_MAX];
    size_t base_len = strlen(base), len;
    uint64_t smallest = 0;
    int n;

    if (cgroup_path[0] != '/' || has_parent_component(cgroup_path))
        return 0;
    n = snprintf(dir, sizeof(dir), "%s%s", base, cgroup_path);
    if (n < 0 || (size_t)n >= sizeof(dir))
        return 0;
    len = (size_t)n;
    for (;;) {
        while (len > base_len && dir[len - 1] == '/')
            dir[--len] = '\0';
        smallest = smaller_quota(smallest, read_quota(dir));
        if (len <= base_len)
            break;
        /* cgroup_path starts with '/', so there is one at base_len at least. */
        len = (size_t)(strrchr(dir + base_len, '/') - dir);
        dir[len] = '\0';
    }
    return smallest;
}

/*
 * The smallest quota on the way up from v1 cgroup `cgroup_path` of the
 * hierarchy whose controllers are `controllers`.  Its mount is named after
 * them ("cpu,cpuacct"), or "cpu" where each controller is mounted alone or
 * linked so: the same hierarchy under whichever name is there, and names
 * that are not there read nothing.
 */
static uint64_t v1_smallest_quota(const char *cgroup_root, const char *controllers,
                                  const char *cgroup_path)
{
    const char *const mounts[] = {controllers, "cpu,cpuacct", "cpu"};
    char base[PATH_MAX];
    uint64_t smallest = 0;

    for (size_t i = 0; i < LB_ARRAY_SIZE(mounts); i++)
        if (join_path(base, cgroup_root, mounts[i]))
            smallest = smaller_quota(smallest, smallest_quota_up(base, cgroup_path, v1_quota_cpus));
    return smallest;
}

/* True when the comma-separated `list` ("cpu,cpuacct") holds `name`. */
static bool has_controller(const char *list, const char *name)
{
    size_t name_len = strlen(name);

    for (const char *p = list;;) {
        const char *end = strchrnul(p, ',');

        if ((size_t)(end - p) == name_len && memcmp(p, name, name_len) == 0)
            return true;
        if (*end == '\0')
            return false;
        p = end + 1;
    }
}

/*
 * The process's quota in CPUs (0: none) from `self_cgroup`, whose lines
 * are "<hierarchy>:<controllers>:<path>": "0::<path>" for v2, and for v1
 * a line per hierarchy.  When the cpu controller is on a v1 hierarchy
 * (hybrid hosts have both), that is where its files are.
 */
static uint64_t self_quota_cpus(const char *cgroup_root, const char *self_cgroup)
{
    char text[SELF_CGROUP_MAX];
    const char *v1_controllers = NULL, *v1_path = NULL, *v2_path = NULL;
    char *line, *next;

    if (!read_small_file(self_cgroup, text, sizeof(text)))
        return 0;
    for (line = text; *line != '\0'; line = next) {
        char *controllers, *path;

        next = strchrnul(line, '\n');
        if (*next != '\0')
            *next++ = '\0';
        controllers = strchr(line, ':');
        path = controllers ? strchr(controllers + 1, ':') : NULL;
        if (!path)
            continue;
        *controllers++ = '\0';
        *path++ = '\0';
        if (strcmp(line, "0") == 0 && *controllers == '\0') {
            v2_path = path;
        } else if (has_controller(controllers, "cpu")) {
            v1_controllers = controllers;
            v1_path = path;
        }
    }
    if (v1_path)
        return v1_smallest_quota(cgroup_root, v1_controllers, v1_path);
    if (v2_path)
        return smallest_quota_up(cgroup_root, v2_path, v2_quota_cpus);
    return 0;
}

unsigned lb_cpus_from(const char *cgroup_root, const char *self_cgroup, unsigned affinity_cpus)
{
    uint64_t quota = self_quota_cpus(cgroup_root, self_cgroup);
    unsigned cpus = affinity_cpus;

    if (quota != 0 && quota < cpus)
        cpus = (unsigned)quota;
    return cpus > 0 ? cpus : 1;
}

/*
 * The CPUs in the affinity mask.  The kernel refuses a mask smaller than
 * its own (EINVAL), and cpu_set_t holds 1024 CPUs, so the mask grows up to
 * a bound; past it, or out of memory, the online CPUs stand in.
 */
static unsigned affinity_cpus(void)
{
    long online;

    for (int n = CPU_SETSIZE; n <= 1 << 16; n *= 2) {
        cpu_set_t *set = CPU_ALLOC(n);
        size_t size = CPU_ALLOC_SIZE(n);
        int count = 0, e = 0;

        if (!set)
            break;
        if (sched_getaffinity(0, size, set) == 0)
            count = CPU_COUNT_S(size, set);
        else
            e = errno;
        CPU_FREE(set);
        if (count > 0)
            return (unsigned)count;
        if (e != EINVAL)
            break;
    }
    online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (unsigned)online : 1;
}

unsigned lb_cpus_available(void)
{
    return lb_cpus_from("/sys/fs/cgroup", "/proc/self/cgroup", affinity_cpus());
}
