/* tp.c — see tp.h. */
#include "worker/engine/tp.h"

#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "kernels/cpu/threads.h"
#include "worker/engine/engine.h"
#include "worker/engine/runtime.h"
#include "worker/model/model.h"

int tp_threads_per_rank(int world) {
    /* the process's count (kernels/cpu/threads.h: OMP_NUM_THREADS, else the
     * CPUs the affinity mask and the cgroup quota allow), shared by the ranks */
    int t = cpu_threads_setup(NULL) / (world > 0 ? world : 1);
    return t > 0 ? t : 1;
}

llmq_status tp_group_start(tp_group *g, int world, int timeout_ms, llmq_err *err) {
    memset(g, 0, sizeof *g);
    g->world = world;
    if (world < 1 || world > TP_MAX_WORLD)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "--tp must be between 1 and %d", TP_MAX_WORLD);
    if (world == 1) {
        g->comm = comm_single_create(err);
        return g->comm ? LLMQ_OK : err->code;
    }
    snprintf(g->shm_name, sizeof g->shm_name, "/llmq-tp-%d", (int)getpid());
    /* LLMQ_TP_TRANSPORT=tcp: the local group talks over loopback TCP, as a
     * group started rank by rank across hosts does (tests, benchmarks). */
    const char *tr = getenv("LLMQ_TP_TRANSPORT");
    int tcp = tr && !strcmp(tr, "tcp"), lfd = -1, port = 0;
    if (tr && *tr && !tcp && strcmp(tr, "shm"))
        return llmq_err_set(err, LLMQ_ERR_INVALID, "LLMQ_TP_TRANSPORT is shm or tcp, not '%s'", tr);
    if (tcp && (lfd = comm_tcp_listen("127.0.0.1", 0, &port, err)) < 0) return err->code;
    const pid_t leader = getpid();
    int rank = 0;
    for (int r = 1; r < world; r++) {
        pid_t pid = fork();
        if (pid < 0) {
            llmq_err_set(err, LLMQ_ERR_IO, "fork of tensor-parallel rank %d failed", r);
            if (lfd >= 0) close(lfd);
            tp_group_stop(g, 1);
            return LLMQ_ERR_IO;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != leader) _exit(1); /* the leader died before prctl */
            rank = r;
            memset(g->peers, 0, sizeof g->peers);
            /* GPU ranks: one device each, counted from the leader's */
            const char *base = getenv("LLMQ_CUDA_DEVICE");
            char dev[16];
            snprintf(dev, sizeof dev, "%d", (base && *base ? atoi(base) : 0) + r);
            setenv("LLMQ_CUDA_DEVICE", dev, 1);
            break;
        }
        g->peers[r] = pid;
    }
    g->rank = rank;
    char name[32];
    snprintf(name, sizeof name, "worker[%d]", rank);
    if (rank) log_set_name(name);
    omp_set_num_threads(tp_threads_per_rank(world));
    comm_shm_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.name = g->shm_name;
    cfg.rank = rank;
    cfg.world = world;
    cfg.generation = 1;
    cfg.timeout_ms = timeout_ms;
    cfg.join_timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    cfg.spin_us = -1;
    if (tcp) {
        char where[32];
        snprintf(where, sizeof where, "127.0.0.1:%d", port);
        comm_tcp_config tc = {0};
        tc.rank = rank;
        tc.world = world;
        tc.generation = 1;
        tc.listen_fd = rank == 0 ? lfd : -1;
        if (rank) close(lfd);
        tc.leader = where;
        tc.timeout_ms = cfg.timeout_ms;
        tc.join_timeout_ms = cfg.join_timeout_ms;
        g->comm = comm_tcp_create(&tc, err);
    } else {
        g->comm = comm_shm_create(&cfg, err);
    }
    if (!g->comm) {
        if (rank) {
            log_error("rank %d cannot join the group: %s", rank, err->msg);
            _exit(1);
        }
        tp_group_stop(g, 1);
        return err->code;
    }
    return LLMQ_OK;
}

int tp_group_stop(tp_group *g, int kill_peers) {
    int failed = 0;
    if (g->rank == 0)
        for (int r = 1; r < g->world; r++) {
            if (g->peers[r] <= 0) continue;
            if (kill_peers) kill(g->peers[r], SIGKILL);
            int status = 0;
            if (waitpid(g->peers[r], &status, 0) == g->peers[r] && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                failed++;
            g->peers[r] = 0;
        }
    comm_destroy(g->comm);
    g->comm = NULL;
    return failed;
}

llmq_status tp_peer_run(tp_group *g, const char *dir, const char *backend, const model_load_opts *lo, const eng_opts *eo,
                        llmq_err *err) {
    runtime_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.backend = backend;
    ro.model_dir = dir;
    ro.comm = g->comm;
    if (lo) ro.load = *lo;
    ro.eng = *eo;
    runtime *rt = NULL;
    llmq_status st = runtime_create(&rt, &ro, err);
    if (!st) st = eng_serve(rt->eng, err);
    runtime_destroy(rt);
    if (st) log_error("rank %d: %s", g->rank, err->msg);
    tp_group_stop(g, 0);
    return st;
}
