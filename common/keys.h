/*
 * keys.h — the Redis key layout of protocol v1 (docs/protocol.md, "Keys").
 *
 * Every key and channel name llmq uses is built here, from a configurable
 * prefix (default "llmq:").  The braces around a job id are literal Redis
 * Cluster hash tags, so the hash, the output stream and the live channel of
 * one job hash to one slot.
 *
 *   <P>req:<model>          stream   requests of a model, priority 0 (group "workers")
 *   <P>req:<model>#high     stream   requests of priority > 0 (group "workers")
 *   <P>req:<model>#low      stream   requests of priority < 0 (group "workers")
 *   <P>job:{<id>}           hash     job state
 *   <P>job:{<id>}:out       stream   output chunks (field "c")
 *   <P>out:{<id>}           channel  output chunks again, for live readers
 *   <P>dead:<model>         stream   poison / exhausted jobs
 *   <P>cancel               channel  job ids to cancel
 *   <P>group:{<group>}:rdv  hash     rendezvous of a tensor-parallel group
 *   <P>workers              hash     worker heartbeats
 *   <P>idem:{<key>}         hash     an Idempotency-Key's job id and body hash
 *
 * Formatting functions write into a caller buffer and return the length of
 * the full name like snprintf; a result >= cap means the name did not fit
 * (the buffer then holds a truncated, NUL-terminated string).  KEYS_MAX is
 * always enough for names whose parts pass keys_id_valid/keys_model_valid.
 */
#ifndef LLMQ_KEYS_H
#define LLMQ_KEYS_H

#include <stddef.h>

#include "common/status.h"

#define KEYS_DEFAULT_PREFIX "llmq:"
#define KEYS_PREFIX_MAX 64   /* bytes of a prefix */
#define KEYS_MAX 512         /* a buffer this big holds any key of valid parts */

typedef struct llmq_keys {
    char prefix[KEYS_PREFIX_MAX + 1]; /* e.g. "llmq:"; NUL terminated */
} llmq_keys;

/* prefix NULL or "" → KEYS_DEFAULT_PREFIX.  LLMQ_ERR_INVALID when the prefix
 * is longer than KEYS_PREFIX_MAX or holds a brace, a space or a control byte. */
llmq_status keys_init(llmq_keys *k, const char *prefix, llmq_err *err);

/*
 * Priority lanes.  A model's requests go to one of KEYS_LANES streams by
 * their `priority`: > 0 high, 0 (or none) default, < 0 low.  The default
 * lane is <P>req:<model>, the one stream of earlier versions, so clients
 * and deployments that know nothing of lanes keep working; the others add a
 * suffix after '#', which no model name holds (keys_model_valid), so a
 * lane's stream is never another model's.  Lanes are numbered highest
 * first: workers read them in this order (docs/protocol.md "Lanes").
 */
enum { KEYS_LANE_HIGH = 0, KEYS_LANE_DEFAULT = 1, KEYS_LANE_LOW = 2, KEYS_LANES = 3 };

/* The lane of a request's priority. */
int keys_lane_of(long long priority);
/* "high", "default", "low" (the label of metrics and logs); "?" when out of range. */
const char *keys_lane_name(int lane);
/* The request stream of one lane of a model. */
size_t keys_req_lane(const llmq_keys *k, const char *model, int lane, char *buf, size_t cap);
/* The default lane's stream: keys_req_lane(k, model, KEYS_LANE_DEFAULT, ...). */
size_t keys_req_stream(const llmq_keys *k, const char *model, char *buf, size_t cap);
size_t keys_job(const llmq_keys *k, const char *id, char *buf, size_t cap);
size_t keys_job_out(const llmq_keys *k, const char *id, char *buf, size_t cap);
size_t keys_out_channel(const llmq_keys *k, const char *id, char *buf, size_t cap);
size_t keys_dead_stream(const llmq_keys *k, const char *model, char *buf, size_t cap);
size_t keys_cancel_channel(const llmq_keys *k, char *buf, size_t cap);
size_t keys_group_rdv(const llmq_keys *k, const char *group, char *buf, size_t cap);
size_t keys_workers(const llmq_keys *k, char *buf, size_t cap);
/* key: as a job id (keys_id_valid). */
size_t keys_idem(const llmq_keys *k, const char *key, char *buf, size_t cap);

/* Extract the id from an output channel name ("<P>out:{<id>}"): returns a
 * pointer into name and sets *len, or NULL when name is not one. */
const char *keys_channel_job_id(const llmq_keys *k, const char *name, size_t name_len, size_t *len);

/* A job id: 1..128 bytes of [A-Za-z0-9._:-] (no braces, so the hash tag holds). */
int keys_id_valid(const char *id);
/* A model name: 1..128 bytes of [A-Za-z0-9._:/@+-] (Hugging Face style names). */
int keys_model_valid(const char *model);

/* A fresh random job id: 32 lowercase hex characters (128 bits from the
 * kernel's getrandom).  buf must hold 33 bytes.  LLMQ_ERR_IO when the kernel
 * gives no randomness. */
llmq_status keys_new_id(char buf[33], llmq_err *err);

#endif
