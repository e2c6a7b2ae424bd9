/* test_threads.c — the kernels' thread count (kernels/cpu/threads.c): cgroup
 * v2 cpu.max and v1 cfs quota files, written into a scratch directory laid
 * out as /sys/fs/cgroup and /proc/self/cgroup are, nested cgroups (the
 * tightest ancestor wins), containers that see their own cgroup at the
 * root, and the choice between the quota and the affinity mask. */
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "kernels/cpu/threads.h"
#include "tests/unit/testutil.h"

static char *g_dir;

/* Write text into g_dir/rel, making its folders. */
static void put(const char *rel, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_dir, rel);
    for (char *p = path + strlen(g_dir) + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
    assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
}

/* cpu_cgroup_cpus with the root at g_dir/fs and the list at g_dir/self. */
static int cpus(char *why, size_t n) {
    char root[1024], self[1024];
    snprintf(root, sizeof root, "%s/fs", g_dir);
    snprintf(self, sizeof self, "%s/self", g_dir);
    why[0] = '\0';
    return cpu_cgroup_cpus(root, self, why, n);
}

static int setup(void **state) {
    g_dir = tu_mkdtemp();
    return g_dir ? 0 : -1;
}

static int teardown(void **state) {
    tu_rmtree(g_dir);
    free(g_dir);
    return 0;
}

static void test_v2_namespace_root(void **state) {
    char why[128];
    put("self", "0::/\n");
    put("fs/cpu.max", "200000 100000\n");
    assert_int_equal(cpus(why, sizeof why), 2);
    assert_string_equal(why, "cgroup cpu.max 200000/100000");
    put("fs/cpu.max", "150000 100000\n"); /* 1.5 CPUs: 2 threads, one of them at half time */
    assert_int_equal(cpus(why, sizeof why), 2);
    put("fs/cpu.max", "50000 100000\n");
    assert_int_equal(cpus(why, sizeof why), 1);
    put("fs/cpu.max", "max 100000\n");
    assert_int_equal(cpus(why, sizeof why), 0);
}

static void test_v2_nested_tightest(void **state) {
    char why[128];
    put("self", "0::/kubepods/pod1/c1\n");
    put("fs/cpu.max", "max 100000\n");
    put("fs/kubepods/cpu.max", "max 100000\n");
    put("fs/kubepods/pod1/cpu.max", "400000 100000\n");
    put("fs/kubepods/pod1/c1/cpu.max", "max 100000\n");
    assert_int_equal(cpus(why, sizeof why), 4);
    assert_string_equal(why, "cgroup cpu.max 400000/100000");
    put("fs/kubepods/pod1/c1/cpu.max", "300000 50000\n"); /* 6 CPUs: the pod's 4 are tighter */
    assert_int_equal(cpus(why, sizeof why), 4);
    put("fs/kubepods/cpu.max", "250000 100000\n"); /* an ancestor tighter still */
    assert_int_equal(cpus(why, sizeof why), 3);
    assert_string_equal(why, "cgroup cpu.max 250000/100000");
}

static void test_v2_host_path_absent(void **state) {
    char why[128];
    /* the list names the host's path; the container's mount shows its own cgroup at the root */
    put("self", "0::/system.slice/docker-abc.scope\n");
    put("fs/cpu.max", "300000 100000\n");
    assert_int_equal(cpus(why, sizeof why), 3);
}

static void test_v1(void **state) {
    char why[128];
    put("self", "12:cpuset:/\n4:cpu,cpuacct:/kubepods/x\n2:cpuacct:/\n1:name=systemd:/\n");
    put("fs/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put("fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put("fs/cpu,cpuacct/kubepods/x/cpu.cfs_quota_us", "250000\n");
    put("fs/cpu,cpuacct/kubepods/x/cpu.cfs_period_us", "100000\n");
    assert_int_equal(cpus(why, sizeof why), 3);
    assert_string_equal(why, "cgroup cpu.cfs_quota_us 250000/100000");
    put("fs/cpu,cpuacct/kubepods/x/cpu.cfs_quota_us", "-1\n"); /* unlimited */
    assert_int_equal(cpus(why, sizeof why), 0);
    /* cpuacct and cpuset alone are not the cpu controller */
    put("self", "3:cpuset:/kubepods/x\n2:cpuacct:/kubepods/x\n");
    put("fs/cpu,cpuacct/kubepods/x/cpu.cfs_quota_us", "100000\n");
    assert_int_equal(cpus(why, sizeof why), 0);
}

static void test_v1_separate_mount(void **state) {
    char why[128];
    /* a container: the list names the host's path, the mount shows the container's cgroup */
    put("self", "1:cpu:/docker/abc\n");
    put("fs/cpu/cpu.cfs_quota_us", "100000\n");
    put("fs/cpu/cpu.cfs_period_us", "100000\n");
    assert_int_equal(cpus(why, sizeof why), 1);
}

static void test_no_files(void **state) {
    char why[128];
    assert_int_equal(cpus(why, sizeof why), 0); /* no list at all */
    put("self", "0::/\n");
    assert_int_equal(cpus(why, sizeof why), 0); /* no cpu.max */
    put("fs/cpu.max", "garbage\n");
    assert_int_equal(cpus(why, sizeof why), 0);
}

static void test_decide(void **state) {
    char root[1024], self[1024], why[192];
    snprintf(root, sizeof root, "%s/fs", g_dir);
    snprintf(self, sizeof self, "%s/self", g_dir);
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
    const int mask = CPU_COUNT(&set);
    unsetenv("OMP_NUM_THREADS");
    put("self", "0::/\n");
    put("fs/cpu.max", "100000 100000\n"); /* 1 CPU: never more than the mask */
    assert_int_equal(cpu_threads_decide(root, self, why, sizeof why), 1);
    if (mask > 1) assert_string_equal(why, "cgroup cpu.max 100000/100000");
    put("fs/cpu.max", "12800000 100000\n"); /* 128 CPUs: the mask is tighter */
    assert_int_equal(cpu_threads_decide(root, self, why, sizeof why), mask);
    assert_non_null(strstr(why, "affinity mask"));
    put("fs/cpu.max", "max 100000\n");
    assert_int_equal(cpu_threads_decide(root, self, why, sizeof why), mask);
    setenv("OMP_NUM_THREADS", "3\"x", 1); /* it wins; printed as digits only */
    cpu_threads_decide(root, self, why, sizeof why);
    assert_string_equal(why, "OMP_NUM_THREADS=3");
    unsetenv("OMP_NUM_THREADS");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v2_namespace_root, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_nested_tightest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_host_path_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_separate_mount, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decide, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
