/*
 * How many CPUs this process may really use, for sizing what scales with
 * them (loops, threads).  The count of online CPUs overstates it twice in a
 * container: the affinity mask (taskset, cpusets) may hold fewer, and a
 * cgroup CPU quota (Kubernetes' limits.cpu, docker --cpus) caps the CPU
 * time the process gets, however many CPUs it may run on.  More threads
 * than the quota allows only get throttled together.
 *
 * The answer is the number of CPUs in the affinity mask, capped by the
 * quota rounded up (1.5 CPUs of quota: 2 threads), and at least 1.  The
 * quota is read from the process's own cgroup as /proc/self/cgroup names
 * it: cgroup v2's cpu.max ("max 100000" or "150000 100000"), or cgroup
 * v1's cpu.cfs_quota_us and cpu.cfs_period_us (-1: none) when the cpu
 * controller is on a v1 hierarchy.  Every cgroup from the process's up to
 * the root may carry a quota (Kubernetes sets one on the pod and one on
 * each container), so the smallest on the way counts.
 *
 * Neither function blocks or fails: a file that is missing, unreadable,
 * not a regular file, longer than expected or not in the kernel's format
 * means "no quota there".
 */
#ifndef LB_CPUS_H
#define LB_CPUS_H

/*
 * The CPUs this process may use: the count of sched_getaffinity()'s mask
 * (the online CPUs if that fails), capped by the cgroup quota found
 * through /proc/self/cgroup under /sys/fs/cgroup.  At least 1.
 */
unsigned lb_cpus_available(void);

/*
 * The same computation on given inputs, for tests: `self_cgroup` is the
 * file to read in place of /proc/self/cgroup, `cgroup_root` the directory
 * in place of /sys/fs/cgroup (laid out the same way: v2 files under
 * <root>/<path>, v1 files under <root>/<controllers>/<path>, e.g.
 * <root>/cpu,cpuacct/<path>), and `affinity_cpus` the count of the
 * affinity mask.  Returns min(affinity_cpus, quota rounded up), at least 1.
 */
unsigned lb_cpus_from(const char *cgroup_root, const char *self_cgroup, unsigned affinity_cpus);

#endif
