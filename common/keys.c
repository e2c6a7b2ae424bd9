/* keys.c — Redis key names of protocol v1 (see keys.h). */
#include "common/keys.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

llmq_status keys_init(llmq_keys *k, const char *prefix, llmq_err *err) {
    if (!prefix || !prefix[0]) prefix = KEYS_DEFAULT_PREFIX;
    size_t n = strlen(prefix);
    if (n > KEYS_PREFIX_MAX)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "key prefix '%s' is longer than %d bytes", prefix,
                            KEYS_PREFIX_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)prefix[i];
        if (c <= ' ' || c == '{' || c == '}' || c == 0x7f)
            return llmq_err_set(err, LLMQ_ERR_INVALID, "key prefix '%s' must not hold braces, spaces or control bytes",
                                prefix);
    }
    memcpy(k->prefix, prefix, n + 1);
    return LLMQ_OK;
}

/* prefix + kind + part + tail, e.g. "llmq:" "job:{" "<id>" "}:out". */
static size_t join(char *buf, size_t cap, const llmq_keys *k, const char *kind, const char *part, const char *tail) {
    int n = snprintf(buf, cap, "%s%s%s%s", k->prefix, kind, part, tail);
    return n < 0 ? cap : (size_t)n;
}

int keys_lane_of(long long priority) {
    return priority > 0 ? KEYS_LANE_HIGH : priority < 0 ? KEYS_LANE_LOW : KEYS_LANE_DEFAULT;
}

/* The name of each lane, and the suffix of its stream (none for the
 * default lane, which keeps the stream name of a model without lanes). */
static const char *const lane_names[KEYS_LANES] = {"high", "default", "low"};
static const char *const lane_suffix[KEYS_LANES] = {"#high", "", "#low"};

const char *keys_lane_name(int lane) { return lane >= 0 && lane < KEYS_LANES ? lane_names[lane] : "?"; }

size_t keys_req_lane(const llmq_keys *k, const char *model, int lane, char *buf, size_t cap) {
    if (lane < 0 || lane >= KEYS_LANES) lane = KEYS_LANE_DEFAULT;
    return join(buf, cap, k, "req:", model, lane_suffix[lane]);
}

size_t keys_req_stream(const llmq_keys *k, const char *model, char *buf, size_t cap) {
    return keys_req_lane(k, model, KEYS_LANE_DEFAULT, buf, cap);
}
size_t keys_job(const llmq_keys *k, const char *id, char *buf, size_t cap) {
    return join(buf, cap, k, "job:{", id, "}");
}
size_t keys_job_out(const llmq_keys *k, const char *id, char *buf, size_t cap) {
    return join(buf, cap, k, "job:{", id, "}:out");
}
size_t keys_out_channel(const llmq_keys *k, const char *id, char *buf, size_t cap) {
    return join(buf, cap, k, "out:{", id, "}");
}
size_t keys_dead_stream(const llmq_keys *k, const char *model, char *buf, size_t cap) {
    return join(buf, cap, k, "dead:", model, "");
}
size_t keys_cancel_channel(const llmq_keys *k, char *buf, size_t cap) {
    return join(buf, cap, k, "cancel", "", "");
}
size_t keys_group_rdv(const llmq_keys *k, const char *group, char *buf, size_t cap) {
    return join(buf, cap, k, "group:{", group, "}:rdv");
}
size_t keys_idem(const llmq_keys *k, const char *key, char *buf, size_t cap) {
    return (size_t)snprintf(buf, cap, "%sidem:{%s}", k->prefix, key);
}

size_t keys_workers(const llmq_keys *k, char *buf, size_t cap) {
    return join(buf, cap, k, "workers", "", "");
}

const char *keys_channel_job_id(const llmq_keys *k, const char *name, size_t name_len, size_t *len) {
    size_t pl = strlen(k->prefix);
    if (name_len < pl + 6 || memcmp(name, k->prefix, pl) != 0 || memcmp(name + pl, "out:{", 5) != 0 ||
        name[name_len - 1] != '}')
        return NULL;
    *len = name_len - pl - 6;
    return name + pl + 5;
}

static int chars_valid(const char *s, size_t max, const char *extra) {
    if (!s) return 0;
    size_t n = strlen(s);
    if (n == 0 || n > max) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) continue;
        if (!strchr(extra, c)) return 0;
    }
    return 1;
}

int keys_id_valid(const char *id) { return chars_valid(id, 128, "._:-"); }

int keys_model_valid(const char *model) { return chars_valid(model, 128, "._:/@+-"); }

llmq_status keys_new_id(char buf[33], llmq_err *err) {
    unsigned char raw[16];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return llmq_err_set(err, LLMQ_ERR_IO, "getrandom: %s", strerror(errno));
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        buf[2 * i] = hex[raw[i] >> 4];
        buf[2 * i + 1] = hex[raw[i] & 15];
    }
    buf[32] = '\0';
    return LLMQ_OK;
}
