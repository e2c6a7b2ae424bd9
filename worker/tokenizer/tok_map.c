/*
 * tok_map.c — the tokenizer's two hash maps, open addressing with linear probing:
 *   tok_strmap   token string -> id (the vocabulary, added-token contents)
 *   tok_pairmap  (left id, right id) -> (rank, merged id) (the BPE merges)
 *
 * Invariants: the slot arrays are powers of two kept at most half full, so a
 * probe always ends at an empty slot; keys are never deleted.  Hashing is XXH3.
 */
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "worker/tokenizer/tok_internal.h"

uint32_t tok_hash(const void *s, size_t n) {
    return (uint32_t)XXH3_64bits(s, n);
}

/* ---------------------------------------------------------------- strings */

static llmq_status strmap_grow(tok_strmap *m) {
    size_t slots = m->mask ? (m->mask + 1) * 2 : 64;
    uint32_t *slot = calloc(slots, sizeof *slot);
    if (!slot) return LLMQ_ERR_NOMEM;
    size_t mask = slots - 1;
    for (size_t i = 0; i < m->n; i++) {
        size_t h = m->ent[i].hash & mask;
        while (slot[h]) h = (h + 1) & mask;
        slot[h] = (uint32_t)i + 1;
    }
    free(m->slot);
    m->slot = slot;
    m->mask = mask;
    return LLMQ_OK;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t len, int32_t dflt) {
    if (!m->slot) return dflt;
    uint32_t h = tok_hash(s, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        uint32_t e = m->slot[i];
        if (!e) return dflt;
        const tok_strmap_ent *en = &m->ent[e - 1];
        if (en->hash == h && en->len == len && !memcmp(m->keys.data + en->off, s, len))
            return en->val;
    }
}

llmq_status tok_strmap_put(tok_strmap *m, const char *s, size_t len, int32_t val) {
    if ((m->n + 1) * 2 > (m->mask ? m->mask + 1 : 0) && strmap_grow(m)) return LLMQ_ERR_NOMEM;
    uint32_t h = tok_hash(s, len);
    size_t i = h & m->mask;
    for (;; i = (i + 1) & m->mask) {
        uint32_t e = m->slot[i];
        if (!e) break;
        tok_strmap_ent *en = &m->ent[e - 1];
        if (en->hash == h && en->len == len && !memcmp(m->keys.data + en->off, s, len)) {
            en->val = val;
            return LLMQ_OK;
        }
    }
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        tok_strmap_ent *ent = realloc(m->ent, cap * sizeof *ent);
        if (!ent) return LLMQ_ERR_NOMEM;
        m->ent = ent;
        m->cap = cap;
    }
    size_t off = m->keys.len;
    if (tok_text_append(&m->keys, s, len)) return LLMQ_ERR_NOMEM;
    m->ent[m->n] = (tok_strmap_ent){.off = (uint32_t)off, .len = (uint32_t)len, .hash = h, .val = val};
    m->slot[i] = (uint32_t)++m->n;
    return LLMQ_OK;
}

void tok_strmap_free(tok_strmap *m) {
    tok_text_deinit(&m->keys);
    free(m->ent);
    free(m->slot);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- pairs */

static inline size_t pair_hash(uint64_t k) {
    return (size_t)XXH3_64bits(&k, sizeof k);
}

static llmq_status pairmap_grow(tok_pairmap *m) {
    size_t slots = m->mask ? (m->mask + 1) * 2 : 1024;
    uint64_t *key = malloc(slots * sizeof *key);
    uint32_t *rank = malloc(slots * sizeof *rank);
    int32_t *val = malloc(slots * sizeof *val);
    if (!key || !rank || !val) {
        free(key), free(rank), free(val);
        return LLMQ_ERR_NOMEM;
    }
    memset(key, 0xFF, slots * sizeof *key);
    size_t mask = slots - 1;
    if (m->key) {
        for (size_t i = 0; i <= m->mask; i++) {
            if (m->key[i] == UINT64_MAX) continue;
            size_t h = pair_hash(m->key[i]) & mask;
            while (key[h] != UINT64_MAX) h = (h + 1) & mask;
            key[h] = m->key[i];
            rank[h] = m->rank[i];
            val[h] = m->val[i];
        }
    }
    free(m->key), free(m->rank), free(m->val);
    m->key = key, m->rank = rank, m->val = val, m->mask = mask;
    return LLMQ_OK;
}

llmq_status tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t val) {
    if ((m->n + 1) * 2 > (m->key ? m->mask + 1 : 0) && pairmap_grow(m)) return LLMQ_ERR_NOMEM;
    uint64_t k = tok_pair_key(a, b);
    size_t i = pair_hash(k) & m->mask;
    while (m->key[i] != UINT64_MAX && m->key[i] != k) i = (i + 1) & m->mask;
    if (m->key[i] == UINT64_MAX) m->n++;
    m->key[i] = k;
    m->rank[i] = rank;
    m->val[i] = val;
    return LLMQ_OK;
}

int tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, uint32_t *rank, int32_t *val) {
    if (!m->key) return 0;
    uint64_t k = tok_pair_key(a, b);
    for (size_t i = pair_hash(k) & m->mask;; i = (i + 1) & m->mask) {
        uint64_t kk = m->key[i];
        if (kk == k) {
            *rank = m->rank[i];
            *val = m->val[i];
            return 1;
        }
        if (kk == UINT64_MAX) return 0;
    }
}

void tok_pairmap_free(tok_pairmap *m) {
    free(m->key), free(m->rank), free(m->val);
    memset(m, 0, sizeof *m);
}
