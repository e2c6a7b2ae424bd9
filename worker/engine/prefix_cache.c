/*
 * prefix_cache.c — see prefix_cache.h.
 *
 * Invariants:
 *  - a block is on the free list iff its ref is 0; the list runs from the
 *    least recently freed (head, handed out first) to the most recent (tail);
 *  - a block is in the hash table iff published; no two published blocks
 *    have the same hash;
 *  - n_free counts the list, n_cached the table.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "worker/engine/prefix_cache.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

typedef struct pc_block {
    int32_t ref;                     /* block tables holding it */
    int32_t prev, next;              /* free list links (-1: none), meaningful when ref == 0 */
    int32_t hnext;                   /* next block of its hash bucket (-1: none), when published */
    int published;                   /* in the hash table */
    pc_hash hash, parent;            /* when published: its hash and its parent's */
    int32_t tokens[ENG_BLOCK_SIZE];  /* when published: its token ids */
} pc_block;

struct prefix_cache {
    pc_block *b;                     /* [n] */
    int n;
    int caching;                     /* 0: nothing is published, every take misses */
    int32_t head, tail;              /* free list (-1: empty) */
    int n_free, n_cached;
    int32_t *bucket;                 /* [mask + 1] first block of each bucket (-1: none) */
    uint64_t mask;
    uint64_t seed;                   /* XXH3 key: drawn per pool, so hashes cannot be aimed */
};

static void list_unlink(prefix_cache *p, int32_t i) {
    pc_block *k = &p->b[i];
    if (k->prev >= 0) p->b[k->prev].next = k->next;
    else p->head = k->next;
    if (k->next >= 0) p->b[k->next].prev = k->prev;
    else p->tail = k->prev;
    k->prev = k->next = -1;
    p->n_free--;
}

static void list_append(prefix_cache *p, int32_t i) {
    pc_block *k = &p->b[i];
    k->prev = p->tail;
    k->next = -1;
    if (p->tail >= 0) p->b[p->tail].next = i;
    else p->head = i;
    p->tail = i;
    p->n_free++;
}

prefix_cache *pc_create(int n_blocks, int caching) {
    if (n_blocks <= 0) return NULL;
    prefix_cache *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    uint64_t nb = 16;
    while (nb < 2 * (uint64_t)n_blocks) nb <<= 1;
    p->b = calloc((size_t)n_blocks, sizeof *p->b);
    p->bucket = malloc(nb * sizeof *p->bucket);
    if (!p->b || !p->bucket) {
        pc_destroy(p);
        return NULL;
    }
    p->n = n_blocks;
    p->caching = caching;
    p->mask = nb - 1;
    for (uint64_t i = 0; i < nb; i++) p->bucket[i] = -1;
    p->head = p->tail = -1;
    for (int32_t i = 0; i < n_blocks; i++) {
        p->b[i].hnext = -1;
        list_append(p, i);
    }
    if (getrandom(&p->seed, sizeof p->seed, 0) != (ssize_t)sizeof p->seed) { /* no entropy: still distinct per pool */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        p->seed = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 32 ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)p;
    }
    return p;
}

void pc_destroy(prefix_cache *p) {
    if (!p) return;
    free(p->b);
    free(p->bucket);
    free(p);
}

int pc_caching(const prefix_cache *p) { return p->caching; }
void pc_set_caching(prefix_cache *p, int on) { p->caching = on != 0; }
int pc_n_free(const prefix_cache *p) { return p->n_free; }
int pc_n_cached(const prefix_cache *p) { return p->n_cached; }

static pc_hash from128(XXH128_hash_t h) { return (pc_hash){h.low64, h.high64}; }

pc_hash pc_root(const prefix_cache *p, const char *salt, size_t len) {
    /* "llmq-kv", a salt flag, the salt's hash: a salt-less chain differs
     * from every salted one by the flag */
    const XXH128_hash_t hs = XXH3_128bits_withSeed(salt ? salt : "", salt ? len : 0, p->seed);
    uint64_t buf[3];
    memcpy(buf, "llmq-kv", 7);
    ((unsigned char *)buf)[7] = salt ? 1 : 0;
    buf[1] = hs.low64;
    buf[2] = hs.high64;
    return from128(XXH3_128bits_withSeed(buf, sizeof buf, p->seed));
}

pc_hash pc_block_hash(const prefix_cache *p, const pc_hash *parent, const int32_t *tokens) {
    uint64_t buf[2 + ENG_BLOCK_SIZE / 2];
    buf[0] = parent->lo;
    buf[1] = parent->hi;
    memcpy(buf + 2, tokens, ENG_BLOCK_SIZE * sizeof *tokens);
    return from128(XXH3_128bits_withSeed(buf, sizeof buf, p->seed));
}

static int same(const pc_hash *a, const pc_hash *b) { return a->lo == b->lo && a->hi == b->hi; }

static int32_t find(const prefix_cache *p, const pc_hash *h) {
    for (int32_t i = p->bucket[h->lo & p->mask]; i >= 0; i = p->b[i].hnext)
        if (same(&p->b[i].hash, h)) return i;
    return -1;
}

static void unpublish(prefix_cache *p, int32_t i) {
    int32_t *pp = &p->bucket[p->b[i].hash.lo & p->mask];
    while (*pp != i) pp = &p->b[*pp].hnext;
    *pp = p->b[i].hnext;
    p->b[i].hnext = -1;
    p->b[i].published = 0;
    p->n_cached--;
}

int32_t pc_alloc(prefix_cache *p) {
    const int32_t i = p->head;
    if (i < 0) return -1;
    list_unlink(p, i);
    if (p->b[i].published) unpublish(p, i);
    p->b[i].ref = 1;
    return i;
}

void pc_release(prefix_cache *p, int32_t b) {
    if (b < 0 || b >= p->n || p->b[b].ref <= 0) return;
    if (--p->b[b].ref == 0) list_append(p, b);
}

int32_t pc_take(prefix_cache *p, const pc_hash *h, const pc_hash *parent, const int32_t *tokens) {
    if (!p->caching) return -1;
    const int32_t i = find(p, h);
    if (i < 0) return -1;
    pc_block *k = &p->b[i];
    if (!same(&k->parent, parent) || memcmp(k->tokens, tokens, sizeof k->tokens)) return -1;
    if (k->ref++ == 0) list_unlink(p, i);
    return i;
}

void pc_publish(prefix_cache *p, int32_t b, const pc_hash *h, const pc_hash *parent, const int32_t *tokens) {
    if (!p->caching || b < 0 || b >= p->n || p->b[b].published || find(p, h) >= 0) return;
    pc_block *k = &p->b[b];
    k->hash = *h;
    k->parent = *parent;
    memcpy(k->tokens, tokens, sizeof k->tokens);
    k->published = 1;
    const uint64_t slot = h->lo & p->mask;
    k->hnext = p->bucket[slot];
    p->bucket[slot] = b;
    p->n_cached++;
}
