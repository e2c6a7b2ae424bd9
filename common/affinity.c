/*
 * affinity.c — the prefix affinity key of a request (affinity.h).
 *
 * Written out so that any client can compute the same keys in a few lines
 * (tests/e2e/test_affinity.py does, in Python): FNV-1a 64 over bytes, the
 * chain's parent hash mixed in as its 8 little-endian bytes first.
 */
#include "common/affinity.h"

#include <stdio.h>
#include <string.h>

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= FNV_PRIME;
    }
    return h;
}

/* A child of parent: FNV-1a of (parent as 8 LE bytes, tag, the bytes). */
static uint64_t child(uint64_t parent, char tag, const void *p, size_t n) {
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(parent >> (8 * i));
    uint64_t h = fnv(FNV_OFFSET, le, sizeof le);
    h = fnv(h, &tag, 1);
    return fnv(h, p, n);
}

/* The keys kept: a ring of the last AFFINITY_MAX_KEYS of the chain. */
typedef struct chain {
    uint64_t key[AFFINITY_MAX_KEYS];
    size_t n; /* units hashed (the ring holds the last min(n, MAX) of them) */
} chain;

static void push(chain *c, uint64_t h) { c->key[c->n++ % AFFINITY_MAX_KEYS] = h; }

static size_t put_key(char *out, size_t len, uint64_t h) {
    if (len) out[len++] = ' ';
    snprintf(out + len, 17, "%016llx", (unsigned long long)h);
    return len + 16;
}

size_t affinity_keys(const proto_request *r, const char *prefix_key, char out[AFFINITY_FIELD_MAX]) {
    out[0] = '\0';
    if (!r || r->op != PROTO_OP_GENERATE) return 0;
    static const char seed[] = "llmq-affinity-1";
    uint64_t root = fnv(FNV_OFFSET, seed, sizeof seed - 1);
    if (r->cache_salt) root = child(root, 's', r->cache_salt, strlen(r->cache_salt));
    if (r->tools) root = child(root, 't', r->tools, strlen(r->tools));
    chain c = {.n = 0};
    uint64_t h = root;
    if (r->kind == PROTO_PROMPT_MESSAGES) {
        for (size_t i = 0; i < r->n_messages; i++) {
            const proto_message *m = &r->messages[i];
            /* role NUL content NUL tool_calls, hashed in parts: the same bytes */
            unsigned char le[8];
            for (int b = 0; b < 8; b++) le[b] = (unsigned char)(h >> (8 * b));
            uint64_t x = fnv(FNV_OFFSET, le, sizeof le);
            x = fnv(x, "m", 1);
            const char *role = m->role ? m->role : "", *content = m->content ? m->content : "";
            x = fnv(x, role, strlen(role) + 1);
            x = fnv(x, content, strlen(content) + 1);
            if (m->tool_calls) x = fnv(x, m->tool_calls, strlen(m->tool_calls));
            push(&c, h = x);
        }
    } else if (r->kind == PROTO_PROMPT_TEXT && r->prompt) {
        size_t len = strlen(r->prompt);
        for (size_t o = 0; o + AFFINITY_CHUNK <= len; o += AFFINITY_CHUNK)
            push(&c, h = child(h, 'p', r->prompt + o, AFFINITY_CHUNK));
    } else if (r->kind == PROTO_PROMPT_IDS) {
        unsigned char buf[4 * AFFINITY_CHUNK_IDS];
        for (size_t o = 0; o + AFFINITY_CHUNK_IDS <= r->n_prompt_ids; o += AFFINITY_CHUNK_IDS) {
            for (size_t i = 0; i < AFFINITY_CHUNK_IDS; i++) {
                uint32_t v = (uint32_t)r->prompt_ids[o + i];
                for (int b = 0; b < 4; b++) buf[4 * i + b] = (unsigned char)(v >> (8 * b));
            }
            push(&c, h = child(h, 'i', buf, sizeof buf));
        }
    }
    size_t len = 0;
    size_t kept = c.n < AFFINITY_MAX_KEYS ? c.n : AFFINITY_MAX_KEYS;
    for (size_t i = c.n - kept; i < c.n; i++) len = put_key(out, len, c.key[i % AFFINITY_MAX_KEYS]);
    if (prefix_key && *prefix_key) len = put_key(out, len, child(root, 'k', prefix_key, strlen(prefix_key)));
    return len;
}
