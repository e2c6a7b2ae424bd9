/*
 * service.h — the worker service: a model's leader loop between Redis and
 * the scheduler (docs/architecture.md "The worker's loop", docs/protocol.md).
 *
 * One thread (and one for the /metrics listener).  Between two steps it
 * makes one pipelined round trip to Redis (this step's chunks and
 * PUBLISHes, final scripts, claim refreshes) and, when the scheduler has
 * room, pulls new entries with a non-blocking XREADGROUP and admits all of
 * them in one more round trip; only when it has nothing to run does it
 * block (a few hundred ms).  Cancels arrive on a separate subscriber
 * connection that is read without blocking.
 * Delivery is at-least-once: a job claimed again resumes from the token ids
 * already in its output stream and continues with the next chunk seq.
 */
#ifndef LLMQ_SERVICE_H
#define LLMQ_SERVICE_H

#include <signal.h>
#include <stdint.h>

#include "common/status.h"
#include "common/comm.h"
#include "worker/model/model.h"

typedef struct service_opts {
    const char *model_dir;      /* Hugging Face model directory */
    const char *model_name;     /* name clients use; the streams are <prefix>req:<name>[#lane] */
    const char *redis_url;      /* redis://... or unix://... */
    const char *prefix;         /* key prefix, default "llmq:" */
    const char *consumer;       /* consumer name in the group (unique per worker) */
    const char *backend;        /* "cpu", "cpu-ref", "cuda" */
    const char *chat_template;  /* force a chat template family; NULL = from tokenizer_config.json */
    const char *llguidance;     /* --llguidance: llguidance's library (file or folder), required to
                                 * load; NULL: $LLMQ_LLGUIDANCE, else python's, optional (guide.h) */
    int max_num_seqs;           /* sequences per step */
    int max_batched_tokens;     /* tokens per step */
    int kv_blocks;              /* KV cache blocks of 16 tokens */
    const char *kv_dtype;       /* --kv-dtype: the KV cache's element type (eng_opts.kv_dtype; NULL = auto) */
    int no_prefix_caching;      /* --no-prefix-caching: every prompt computed in full (sched.h) */
    double mem_util;            /* kv_blocks <= 0 and a backend with mem_info (cuda): size the pool
                                 * to this fraction of the device's memory (eng_opts.mem_util) */
    int metrics_port;           /* 0 = no metrics listener */
    const char *metrics_addr;   /* the listener's bind address (IPv4/IPv6 literal or name);
                                 * NULL = SERVICE_METRICS_ADDR, this host only */
    int claim_idle_ms;          /* entries idle longer than this are claimed from dead consumers */
    int max_attempts;           /* deliveries before a job is failed into the dead stream */
    int result_ttl_s;           /* TTL of a finished job's keys */
    int drain_timeout_s;        /* SIGTERM: time to finish in-flight jobs */
    int block_ms;               /* XREADGROUP BLOCK when idle */
    int lane_burst;             /* the starvation guard: after this many entries taken from higher
                                 * lanes while a lower lane waits, the next comes from the lower one
                                 * (docs/protocol.md "Lanes") */
    int affinity;               /* route by prefix affinity (docs/protocol.md "Affinity"); 0: --no-affinity,
                                 * entries are taken in order as by a plain consumer */
    int affinity_wait_ms;       /* the bound an entry parked for this group's prefix waits before any
                                 * group takes it (and this group takes others' parked entries) */
    int affinity_ttl_s;         /* how long a key names the group that last ran its prefix */
    int affinity_slack;         /* park for the owner while its free slots + this >= the slots our pull
                                 * still has */
    int chunk_interval_ms;      /* coalescing: while Redis has not answered the last step's chunks, a
                                 * job's new ids wait for the next step, up to this many ms, so that a
                                 * chunk carries several tokens; 0 = off, a chunk per step */
    llmq_comm *comm;            /* tensor-parallel group (this process is rank 0); NULL = one rank */
    model_load_opts load;       /* how the weights are held (--quantization); the peers load with the same */
} service_opts;

/* The metrics listener's default address: unauthenticated, so not every
 * interface unless asked for (--metrics-addr 0.0.0.0 in a pod). */
#define SERVICE_METRICS_ADDR "127.0.0.1"

void service_opts_default(service_opts *o);

/* KV blocks used when --kv-blocks is not given (the same on every rank). */
int service_default_kv_blocks(const model_config *cfg, int max_num_seqs);

/* Run until *stop is set (SIGTERM: drain) or a fatal error.  Returns LLMQ_OK
 * on a clean drain. */
llmq_status service_run(const service_opts *o, volatile sig_atomic_t *stop, llmq_err *err);

#endif
