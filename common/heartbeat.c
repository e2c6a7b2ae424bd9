/*
 * heartbeat.c — the heartbeat's JSON, written and read in one place (see
 * heartbeat.h).  jansson does the JSON both ways, so a consumer name with a
 * quote in it cannot break the object for its readers.
 */
#include "common/heartbeat.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/keys.h"

static int get_int(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    if (!json_is_integer(v)) return 0;
    json_int_t x = json_integer_value(v);
    return x < 0 ? 0 : x > INT32_MAX ? INT32_MAX : (int)x;
}

llmq_status hb_parse(hb_info *out, const char *s, size_t len, llmq_err *err) {
    memset(out, 0, sizeof *out);
    json_t *o = json_loadb(s, len, 0, NULL);
    const json_t *model = json_object_get(o, "model"), *ts = json_object_get(o, "ts");
    if (!json_is_object(o) || !json_is_string(model) || !keys_model_valid(json_string_value(model)) ||
        !json_is_integer(ts)) {
        json_decref(o);
        return llmq_err_set(err, LLMQ_ERR_INVALID, "not a heartbeat: an object with a valid \"model\" and an integer "
                                                   "\"ts\" is expected");
    }
    snprintf(out->model, sizeof out->model, "%s", json_string_value(model));
    const json_t *consumer = json_object_get(o, "consumer");
    if (json_is_string(consumer)) snprintf(out->consumer, sizeof out->consumer, "%s", json_string_value(consumer));
    out->capacity = get_int(o, "capacity");
    out->running = get_int(o, "running");
    out->waiting = get_int(o, "waiting");
    out->kv_free = get_int(o, "kv_free");
    out->kv_total = get_int(o, "kv_total");
    out->max_model_len = get_int(o, "max_model_len");
    out->ts_ms = json_integer_value(ts);
    json_decref(o);
    return LLMQ_OK;
}

int hb_format(const hb_info *hb, char *buf, size_t cap) {
    json_t *o = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:I}", "model", hb->model, "consumer",
                          hb->consumer, "capacity", hb->capacity, "running", hb->running, "waiting", hb->waiting,
                          "kv_free", hb->kv_free, "kv_total", hb->kv_total, "max_model_len", hb->max_model_len, "ts",
                          (json_int_t)hb->ts_ms);
    if (!o) return -1;
    size_t n = json_dumpb(o, buf, cap, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (n == 0 || n >= cap) return -1;
    buf[n] = '\0';
    return (int)n;
}

bool hb_live(int64_t ts_ms, int64_t now_ms) {
    return ts_ms >= now_ms - HB_LIVE_MS && ts_ms <= now_ms + HB_LIVE_MS;
}
