/*
 * heartbeat.h — a worker leader's heartbeat (docs/protocol.md, "Heartbeats"):
 * one field of the hash <prefix>workers per worker group, named after its
 * consumer, whose value is a JSON object
 *
 *   {"model", "consumer", "capacity", "running", "waiting", "kv_free",
 *    "kv_total", "max_model_len", "ts"}
 *
 * rewritten every HB_INTERVAL_MS.  The worker writes it (hb_format); the
 * gateway reads the hash to know which models are served and their context
 * length, `llmq submit` to refuse a model nobody serves (hb_parse, hb_live).
 * Fields are never deleted: a worker that died leaves a heartbeat whose `ts`
 * stops moving, so liveness is the age of `ts` (both clocks are wall clocks;
 * HB_LIVE_MS leaves room for a few missed beats and some clock skew).
 */
#ifndef LLMQ_HEARTBEAT_H
#define LLMQ_HEARTBEAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/protocol.h"
#include "common/status.h"

#define HB_INTERVAL_MS 2000   /* a worker rewrites its heartbeat this often */
#define HB_LIVE_MS 15000      /* a heartbeat older than this (or this far ahead) is a dead worker's */
#define HB_CONSUMER_MAX 128   /* bytes of a consumer name kept */

typedef struct hb_info {
    char model[PROTO_MAX_MODEL_LEN + 1]; /* the model the group serves (keys_model_valid) */
    char consumer[HB_CONSUMER_MAX + 1];  /* its consumer name in the group "workers" */
    int capacity;                /* sequences it can run at once (--max-num-seqs) */
    int running, waiting;        /* sequences running / admitted and waiting */
    int kv_free, kv_total;       /* KV cache blocks */
    int max_model_len;           /* tokens of one sequence, prompt + completion; 0 = not reported */
    int64_t ts_ms;               /* Unix ms when written (the worker's clock) */
} hb_info;

/* Parse one heartbeat value.  LLMQ_ERR_INVALID when it is not a JSON object
 * with a valid "model" name and an integer "ts"; other fields missing or of
 * another type read as 0. */
llmq_status hb_parse(hb_info *out, const char *json, size_t len, llmq_err *err);

/* The JSON of hb into buf (NUL terminated).  The length, or -1 when it does
 * not fit in cap or memory ran out. */
int hb_format(const hb_info *hb, char *buf, size_t cap);

/* Whether a heartbeat written at ts_ms still counts at now_ms. */
bool hb_live(int64_t ts_ms, int64_t now_ms);

#endif
