/*
 * jobwatch.h — follow a job's output: every chunk from a given seq on, in
 * order, each exactly once, the last one carrying `finish` (docs/protocol.md,
 * "Reading output").
 *
 * How: one pub/sub subscription per job id with watchers (shared by all of
 * them), and a catch-up read of the output stream (XRANGE) for each watcher
 * once its subscription is confirmed, after any gap in the live sequence,
 * and after either Redis connection came back.  Chunks are de-duplicated by
 * seq, so the overlap of catch-up and live messages is harmless.
 *
 * Ownership: jobwatch_start returns a watcher the caller stops with
 * jobwatch_stop, also from inside its own callback; after jobwatch_stop the
 * callback is never called again (the memory is released once no Redis
 * reply for it is outstanding).
 */
#ifndef LLMQ_GW_JOBWATCH_H
#define LLMQ_GW_JOBWATCH_H

#include <hiredis/hiredis.h>
#include <stdint.h>

#include "common/keys.h"
#include "common/protocol.h"
#include "gateway/redis.h"

typedef struct jobwatch jobwatch;
typedef struct jobwatch_topic jobwatch_topic;

/* c: the next chunk (seq = previous + 1).  c == NULL: the job had already
 * ended before from_seq (nothing more will come). */
typedef void (*jobwatch_fn)(void *ud, const proto_chunk *c);

#define JOBWATCH_BUCKETS 4096

typedef struct jobwatch_registry {
    gw_redis *redis;                             /* connections (not owned) */
    const llmq_keys *keys;                       /* key layout (not owned) */
    jobwatch_topic *buckets[JOBWATCH_BUCKETS];   /* topics by job id hash */
    size_t n_topics;                             /* topics alive (subscribed or in transition) */
    size_t n_watchers;                           /* watchers started and not stopped */
} jobwatch_registry;

void jobwatch_registry_init(jobwatch_registry *reg, gw_redis *redis, const llmq_keys *keys);
/* Free every topic and orphan every watcher (at shutdown, after the Redis
 * connections are gone). */
void jobwatch_registry_deinit(jobwatch_registry *reg);

/* Events from gateway/redis.c (wired up by main). */
void jobwatch_on_cmd_up(jobwatch_registry *reg);
void jobwatch_on_sub_up(jobwatch_registry *reg);
void jobwatch_on_sub_down(jobwatch_registry *reg);
void jobwatch_on_sub_reply(jobwatch_registry *reg, redisReply *r);

/* Follow job `id` from chunk seq from_seq on.  NULL when out of memory. */
jobwatch *jobwatch_start(jobwatch_registry *reg, const char *id, int64_t from_seq, jobwatch_fn fn, void *ud);

/* Chunks from .. to-1 are no longer in the output stream (it was trimmed:
 * XTRIM, MAXLEN, or entries deleted by hand) and will never be delivered;
 * called with the watcher's ud just before chunk `to` is.  It may stop the
 * watcher.  Without one, a gap is only logged. */
typedef void (*jobwatch_gap_fn)(void *ud, int64_t from, int64_t to);
void jobwatch_on_gap(jobwatch *w, jobwatch_gap_fn gap);
void jobwatch_stop(jobwatch *w);  /* w may be NULL */

#endif
