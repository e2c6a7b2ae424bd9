/* threads.c — the kernels' thread count from the affinity mask and the
 * cgroup CPU quota (threads.h). */
#include "kernels/cpu/threads.h"

#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Read "<quota> <period>" (v2 cpu.max) or, with period_file, the two v1
 * files; CPUs ceil(quota / period), 0 when unlimited or unreadable. */
static int quota_cpus(const char *quota_file, const char *period_file, long long *q, long long *p) {
    char buf[64] = {0};
    FILE *f = fopen(quota_file, "r");
    if (!f) return 0;
    const int got = fgets(buf, sizeof buf, f) != NULL;
    fclose(f);
    if (!got) return 0;
    *q = *p = 0;
    if (!period_file) { /* "max 100000" or "200000 100000" */
        if (sscanf(buf, "%lld %lld", q, p) != 2) return 0;
    } else { /* cpu.cfs_quota_us: -1 when unlimited */
        if (sscanf(buf, "%lld", q) != 1) return 0;
        f = fopen(period_file, "r");
        if (!f) return 0;
        const int n = fscanf(f, "%lld", p);
        fclose(f);
        if (n != 1) return 0;
    }
    if (*q <= 0 || *p <= 0) return 0;
    return (int)((*q + *p - 1) / *p);
}

/* The tightest quota from dir up to (and including) top, a prefix of dir. */
static int walk_up(char *dir, size_t top, const char *quota_name, const char *period_name, const char *label,
                   char *why, size_t why_len, int best) {
    for (;;) {
        char qf[4096], pf[4096];
        long long q = 0, p = 0;
        if (snprintf(qf, sizeof qf, "%s/%s", dir, quota_name) >= (int)sizeof qf) break; /* too long to be one */
        if (period_name && snprintf(pf, sizeof pf, "%s/%s", dir, period_name) >= (int)sizeof pf) break;
        const int c = quota_cpus(qf, period_name ? pf : NULL, &q, &p);
        if (c > 0 && (best == 0 || c < best)) {
            best = c;
            if (why && why_len) snprintf(why, why_len, "cgroup %s %lld/%lld", label, q, p);
        }
        char *slash = strrchr(dir + top, '/');
        if (!slash || strlen(dir) <= top) break;
        *slash = '\0';
    }
    return best;
}

static int is_dir(const char *path) {
    char probe[4096];
    if (snprintf(probe, sizeof probe, "%s/.", path) >= (int)sizeof probe) return 0;
    FILE *f = fopen(probe, "r");
    if (f) fclose(f);
    return f != NULL;
}

int cpu_cgroup_cpus(const char *root, const char *self, char *why, size_t why_len) {
    FILE *f = fopen(self, "r");
    if (!f) return 0;
    char line[4096];
    int best = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        /* "ID:controllers:path"; v2 is "0::path" */
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = *c2 = '\0';
        const char *ctrl = c1 + 1, *path = c2 + 1;
        char dir[4096];
        if (!*ctrl) { /* v2: the unified hierarchy at root */
            snprintf(dir, sizeof dir, "%s%s", root, strcmp(path, "/") ? path : "");
            /* a container sees its own cgroup at root when the path names the host's */
            if (!is_dir(dir)) snprintf(dir, sizeof dir, "%s", root);
            best = walk_up(dir, strlen(root), "cpu.max", NULL, "cpu.max", why, why_len, best);
            continue;
        }
        /* v1: the controller list must hold "cpu" as one item (not cpuset, cpuacct) */
        char list[256];
        snprintf(list, sizeof list, ",%s,", ctrl);
        if (!strstr(list, ",cpu,")) continue;
        static const char *const mounts[] = {NULL, "cpu", "cpu,cpuacct", "cpuacct,cpu"};
        for (int i = 0; i < 4; i++) {
            char base[1024];
            snprintf(base, sizeof base, "%s/%s", root, mounts[i] ? mounts[i] : ctrl);
            if (!is_dir(base)) continue;
            snprintf(dir, sizeof dir, "%s%s", base, strcmp(path, "/") ? path : "");
            if (!is_dir(dir)) snprintf(dir, sizeof dir, "%s", base);
            best = walk_up(dir, strlen(base), "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.cfs_quota_us", why,
                           why_len, best);
            break;
        }
    }
    fclose(f);
    return best;
}

int cpu_threads_decide(const char *root, const char *self, char *why, size_t why_len) {
    const char *env = getenv("OMP_NUM_THREADS");
    if (env && *env) {
        char v[33];
        size_t k = 0;
        for (const char *c = env; *c && k + 1 < sizeof v; c++)
            if ((*c >= '0' && *c <= '9') || *c == ',') v[k++] = *c; /* a figure fit to print in JSON and logs */
        v[k] = '\0';
        snprintf(why, why_len, "OMP_NUM_THREADS=%s", v);
        return omp_get_max_threads(); /* libgomp parsed it (a list's first level) */
    }
    cpu_set_t set;
    int mask = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0) mask = CPU_COUNT(&set);
    if (mask < 1) mask = omp_get_num_procs();
    char cg_why[128] = {0};
    const int cg = cpu_cgroup_cpus(root, self, cg_why, sizeof cg_why);
    if (cg > 0 && cg < mask) {
        snprintf(why, why_len, "%s", cg_why);
        return cg;
    }
    snprintf(why, why_len, "affinity mask %d CPU%s%s%s", mask, mask == 1 ? "" : "s", cg > 0 ? ", " : "",
             cg > 0 ? cg_why : "");
    return mask;
}

static int threads_n;
static char threads_why[192];

int cpu_threads_setup(const char **why) {
    if (!threads_n) {
        threads_n = cpu_threads_decide("/sys/fs/cgroup", "/proc/self/cgroup", threads_why, sizeof threads_why);
        if (threads_n < 1) threads_n = 1;
        if (!getenv("OMP_NUM_THREADS") || !*getenv("OMP_NUM_THREADS")) omp_set_num_threads(threads_n);
    }
    if (why) *why = threads_why;
    return threads_n;
}
