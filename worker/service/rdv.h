/*
 * rdv.h — rendezvous of a tensor-parallel group through Redis, for ranks
 * started one by one (`llmq-worker --rank R --group G --tp N`, e.g. by a
 * LeaderWorkerSet, one pod per host).  The leader listens for its peers
 * first, then publishes a new generation in the hash <prefix>group:{G}:rdv:
 * generation (HINCRBY), world, addr (the leader's host:port), token (random,
 * per generation: a peer must present it) and model.  Peers wait for a
 * generation, connect to addr (worker/comm/comm_tcp.c) and join it; the leader
 * refuses a peer of another generation ("stale generation").  GPU ranks
 * then pass their NCCL unique id over that connection (be_ops.group_comm).
 */
#ifndef LLMQ_RDV_H
#define LLMQ_RDV_H

#include <stdint.h>

#include "common/status.h"

typedef struct rdv_info {
    uint64_t generation;
    int world;
    char addr[280];  /* the leader's host:port */
    char token[33];  /* 32 hex digits */
    char model[128];
} rdv_info;

/* Leader: HINCRBY generation, HSET the rest (addr = "host:port" where it
 * listens, a fresh token), EXPIRE 1 day; fills *out. */
llmq_status rdv_publish(const char *url, const char *prefix, const char *group, int world, const char *model,
                        const char *addr, rdv_info *out, llmq_err *err);
/* Peer: poll until the hash names a generation newer than `after` for a
 * group of `world` ranks, or timeout_ms passes. */
llmq_status rdv_wait(const char *url, const char *prefix, const char *group, int world, uint64_t after,
                     int timeout_ms, rdv_info *out, llmq_err *err);

#endif
