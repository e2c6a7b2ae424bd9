/*
 * threads.h — how many OpenMP threads the CPU kernels run: as many as the
 * CPUs this process may use, not the host's core count.
 *
 * libgomp sizes its pool by the affinity mask, which in a container is
 * usually the whole node: a worker in a pod limited to 2 CPUs on a 64-core
 * node would run 64 threads, each step's barrier waiting on threads the CFS
 * quota has throttled.  The count is min(affinity mask, ceil(quota /
 * period) of the cgroup CPU limit: v2 cpu.max, v1 cpu.cfs_quota_us over
 * cpu.cfs_period_us, the tightest of the process's cgroup and its
 * ancestors), unless OMP_NUM_THREADS is set, which wins.  It is applied
 * once per process (the pool is OpenMP's, persistent); tensor-parallel
 * ranks on one host divide it (tp_threads_per_rank).
 */
#ifndef LLMQ_KERNELS_CPU_THREADS_H
#define LLMQ_KERNELS_CPU_THREADS_H

#include <stddef.h>

/* CPUs the cgroup CPU quota allows, ceil(quota / period), the tightest over
 * the process's cgroup and its ancestors; 0 when there is no quota (or no
 * cgroup file to read).  root is the cgroup mount ("/sys/fs/cgroup"), self
 * the process's cgroup list ("/proc/self/cgroup").  why gets the limit's
 * figures, e.g. "cgroup cpu.max 200000/100000". */
int cpu_cgroup_cpus(const char *root, const char *self, char *why, size_t why_len);

/* The thread count for this process and why ("OMP_NUM_THREADS=4",
 * "cgroup cpu.max 200000/100000", "affinity mask 2 CPUs"), reading the
 * cgroup files under root and self as cpu_cgroup_cpus. */
int cpu_threads_decide(const char *root, const char *self, char *why, size_t why_len);

/* Decide from /sys/fs/cgroup and /proc/self/cgroup and apply
 * (omp_set_num_threads) on the first call; later calls return the same
 * count.  *why (when why is not NULL) gets the reason. */
int cpu_threads_setup(const char **why);

#endif
