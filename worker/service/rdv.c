/* rdv.c — see rdv.h. */
#include "worker/service/rdv.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/keys.h"
#include "common/rconn.h"
#include "common/url.h"

static redisContext *open_redis(const char *url, llmq_err *err) {
    redis_url u;
    if (redis_url_resolve(&u, url, err)) return NULL;
    return rconn_connect(&u, 5000, err);
}

static llmq_status fresh_token(char out[33], llmq_err *err) {
    unsigned char b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t n = f ? fread(b, 1, sizeof b, f) : 0;
    if (f) fclose(f);
    if (n != sizeof b) return llmq_err_set(err, LLMQ_ERR_IO, "rendezvous: cannot read /dev/urandom");
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
    return LLMQ_OK;
}

llmq_status rdv_publish(const char *url, const char *prefix, const char *group, int world, const char *model,
                        const char *addr, rdv_info *out, llmq_err *err) {
    llmq_keys k;
    char key[KEYS_MAX];
    if (keys_init(&k, prefix, err)) return err->code;
    if (!keys_model_valid(group)) return llmq_err_set(err, LLMQ_ERR_INVALID, "invalid --group '%s'", group);
    keys_group_rdv(&k, group, key, sizeof key);
    redisContext *c = open_redis(url, err);
    if (!c) return err->code;
    llmq_status st = LLMQ_OK;
    redisReply *r = redisCommand(c, "HINCRBY %s generation 1", key);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        st = llmq_err_set(err, LLMQ_ERR_REDIS, "rendezvous %s: %s", key, r && r->str ? r->str : c->errstr);
        goto out;
    }
    memset(out, 0, sizeof *out);
    out->generation = (uint64_t)r->integer;
    out->world = world;
    snprintf(out->addr, sizeof out->addr, "%s", addr);
    snprintf(out->model, sizeof out->model, "%s", model);
    freeReplyObject(r);
    r = NULL;
    if ((st = fresh_token(out->token, err))) goto out;
    r = redisCommand(c, "HSET %s world %d addr %s token %s model %s", key, world, out->addr, out->token, model);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        st = llmq_err_set(err, LLMQ_ERR_REDIS, "rendezvous %s: %s", key, r && r->str ? r->str : c->errstr);
        goto out;
    }
    freeReplyObject(r);
    r = redisCommand(c, "EXPIRE %s 86400", key);
out:
    freeReplyObject(r);
    redisFree(c);
    return st;
}

llmq_status rdv_wait(const char *url, const char *prefix, const char *group, int world, uint64_t after,
                     int timeout_ms, rdv_info *out, llmq_err *err) {
    llmq_keys k;
    char key[KEYS_MAX];
    if (keys_init(&k, prefix, err)) return err->code;
    keys_group_rdv(&k, group, key, sizeof key);
    redisContext *c = open_redis(url, err);
    if (!c) return err->code;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    llmq_status st = LLMQ_ERR_TIMEOUT;
    for (;;) {
        redisReply *r = redisCommand(c, "HMGET %s generation world addr model token", key);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 5) {
            st = llmq_err_set(err, LLMQ_ERR_REDIS, "rendezvous %s: %s", key, r && r->str ? r->str : c->errstr);
            freeReplyObject(r);
            break;
        }
        if (r->element[0]->type == REDIS_REPLY_STRING && r->element[2]->type == REDIS_REPLY_STRING &&
            r->element[4]->type == REDIS_REPLY_STRING) {
            uint64_t gen = strtoull(r->element[0]->str, NULL, 10);
            int w = r->element[1]->type == REDIS_REPLY_STRING ? atoi(r->element[1]->str) : 0;
            if (gen > after && w == world) {
                memset(out, 0, sizeof *out);
                out->generation = gen;
                out->world = w;
                snprintf(out->addr, sizeof out->addr, "%s", r->element[2]->str);
                snprintf(out->token, sizeof out->token, "%s", r->element[4]->str);
                if (r->element[3]->type == REDIS_REPLY_STRING)
                    snprintf(out->model, sizeof out->model, "%s", r->element[3]->str);
                freeReplyObject(r);
                st = LLMQ_OK;
                break;
            }
            if (gen > after && w != world) {
                st = llmq_err_set(err, LLMQ_ERR_INVALID, "rendezvous %s: the leader's group has %d ranks, this rank expects %d",
                                  key, w, world);
                freeReplyObject(r);
                break;
            }
        }
        freeReplyObject(r);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > timeout_ms) {
            st = llmq_err_set(err, LLMQ_ERR_TIMEOUT, "rendezvous %s: no leader published a group within %d ms", key,
                              timeout_ms);
            break;
        }
        usleep(100000);
    }
    redisFree(c);
    return st;
}
