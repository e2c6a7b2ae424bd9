/*
 * rdv.h — rendezvous of a tensor-parallel group through Redis, for ranks
 * started one by one (`llmq-worker --rank R --group G --tp N`, e.g. by a
 * LeaderWorkerSet).  The leader publishes a new generation in the hash
 * <prefix>group:{G}:rdv (generation, world, comm = the shared-memory name,
 * model); peers wait for it and join that generation.  A peer of an older
 * generation is refused by the communicator itself ("stale generation").
 */
#ifndef LLMQ_RDV_H
#define LLMQ_RDV_H

#include <stdint.h>

#include "common/status.h"

typedef struct rdv_info {
    uint64_t generation;
    int world;
    char comm[64];   /* shm name of this generation */
    char model[128];
} rdv_info;

/* Leader: HINCRBY generation, HSET the rest, EXPIRE 1 day; fills *out. */
llmq_status rdv_publish(const char *url, const char *prefix, const char *group, int world, const char *model,
                        rdv_info *out, llmq_err *err);
/* Peer: poll until the hash names a generation newer than `after` for a
 * group of `world` ranks, or timeout_ms passes. */
llmq_status rdv_wait(const char *url, const char *prefix, const char *group, int world, uint64_t after,
                     int timeout_ms, rdv_info *out, llmq_err *err);

#endif
