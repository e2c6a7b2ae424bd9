/* jobops.c — the job commands of protocol v1 (see jobops.h). */
#include "common/jobops.h"

#include <inttypes.h>
#include <string.h>

/* KEYS[1] job hash, KEYS[2] output stream; ARGV[1] output channel, ARGV[2]
 * cancel channel, ARGV[3] id, ARGV[4] now ms, ARGV[5] ttl s, ARGV[6] chunk. */
static const char cancel_lua[] =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return 0 end\n"
    "if st == 'queued' then\n"
    "  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finish_reason', 'cancelled', 'cancel', '1',\n"
    "             'finished', ARGV[4], 'prompt_tokens', '0', 'completion_tokens', '0')\n"
    "  redis.call('XADD', KEYS[2], '*', 'c', ARGV[6])\n"
    "  redis.call('PUBLISH', ARGV[1], ARGV[6])\n"
    "  redis.call('PUBLISH', ARGV[2], ARGV[3])\n"
    "  if tonumber(ARGV[5]) > 0 then\n"
    "    redis.call('EXPIRE', KEYS[1], ARGV[5])\n"
    "    redis.call('EXPIRE', KEYS[2], ARGV[5])\n"
    "  end\n"
    "  return 2\n"
    "end\n"
    "if st == 'running' then\n"
    "  redis.call('HSET', KEYS[1], 'cancel', '1')\n"
    "  redis.call('PUBLISH', ARGV[2], ARGV[3])\n"
    "  return 1\n"
    "end\n"
    "return 3\n";

/* KEYS[1] job hash; ARGV[1] model, ARGV[2] worker, ARGV[3] now ms, ARGV[4] seed. */
static const char admit_lua[] =
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if st == 'done' or st == 'failed' or st == 'cancelled' or st == 'expired' then return {0, 0, ''} end\n"
    "if not st then redis.call('HSET', KEYS[1], 'model', ARGV[1], 'created', ARGV[3]) end\n"
    "local att = redis.call('HINCRBY', KEYS[1], 'attempts', 1)\n"
    "redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2])\n"
    "redis.call('HSETNX', KEYS[1], 'started', ARGV[3])\n"
    "redis.call('HSETNX', KEYS[1], 'seed', ARGV[4])\n"
    "local seed = redis.call('HGET', KEYS[1], 'seed')\n"
    "if redis.call('HGET', KEYS[1], 'cancel') == '1' then return {2, att, seed} end\n"
    "return {1, att, seed}\n";

void jobops_submit(rcmd *hset, rcmd *xadd, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model,
                   const void *payload, size_t payload_len, int64_t now_ms) {
    keys_job(k, id, kb->job, sizeof kb->job);
    keys_req_stream(k, model, kb->req, sizeof kb->req);
    rcmd_init(hset);
    rcmd_str(hset, "HSET");
    rcmd_str(hset, kb->job);
    rcmd_str(hset, "state");
    rcmd_str(hset, "queued");
    rcmd_str(hset, "model");
    rcmd_str(hset, model);
    rcmd_str(hset, "created");
    rcmd_fmt(hset, "%" PRId64, now_ms);
    rcmd_str(hset, "attempts");
    rcmd_str(hset, "0");
    rcmd_init(xadd);
    rcmd_str(xadd, "XADD");
    rcmd_str(xadd, kb->req);
    rcmd_str(xadd, "*");
    rcmd_str(xadd, PROTO_FIELD_ID);
    rcmd_str(xadd, id);
    rcmd_str(xadd, PROTO_FIELD_REQ);
    rcmd_arg(xadd, payload, payload_len);
}

void jobops_group_create(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *model) {
    keys_req_stream(k, model, kb->req, sizeof kb->req);
    rcmd_init(c);
    rcmd_str(c, "XGROUP");
    rcmd_str(c, "CREATE");
    rcmd_str(c, kb->req);
    rcmd_str(c, PROTO_GROUP);
    rcmd_str(c, "0");
    rcmd_str(c, "MKSTREAM");
}

void jobops_cancel(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, int64_t now_ms, int64_t result_ttl_s,
                   const void *final_chunk, size_t final_chunk_len) {
    keys_job(k, id, kb->job, sizeof kb->job);
    keys_job_out(k, id, kb->out, sizeof kb->out);
    keys_out_channel(k, id, kb->chan, sizeof kb->chan);
    keys_cancel_channel(k, kb->cancel, sizeof kb->cancel);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, cancel_lua);
    rcmd_str(c, "2");
    rcmd_str(c, kb->job);
    rcmd_str(c, kb->out);
    rcmd_str(c, kb->chan);
    rcmd_str(c, kb->cancel);
    rcmd_str(c, id);
    rcmd_fmt(c, "%" PRId64, now_ms);
    rcmd_fmt(c, "%" PRId64, result_ttl_s);
    rcmd_arg(c, final_chunk, final_chunk_len);
}

llmq_status jobops_cancel_chunk(proto_buf *out, llmq_err *err) {
    proto_chunk ch;
    proto_chunk_init(&ch);
    ch.seq = 0;
    ch.finish = (char *)"cancelled";
    ch.has_usage = true;
    return proto_chunk_encode(&ch, out, err);
}

void jobops_admit(rcmd *c, jobops_keys *kb, const llmq_keys *k, const char *id, const char *model, const char *worker,
                  int64_t now_ms, uint64_t seed) {
    keys_job(k, id, kb->job, sizeof kb->job);
    rcmd_init(c);
    rcmd_str(c, "EVAL");
    rcmd_str(c, admit_lua);
    rcmd_str(c, "1");
    rcmd_str(c, kb->job);
    rcmd_str(c, model);
    rcmd_str(c, worker);
    rcmd_fmt(c, "%" PRId64, now_ms);
    rcmd_fmt(c, "%" PRIu64, seed);
}
