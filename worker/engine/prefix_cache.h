/*
 * prefix_cache.h — the KV block pool, with prefix caching.
 *
 * Every KV block (ENG_BLOCK_SIZE tokens of every layer) is referenced by
 * the sequences whose block tables hold it.  A block with no reference is
 * free: it sits in one free list, least recently freed first, and
 * pc_alloc hands out the head.  A full block whose K/V are computed can be
 * published under the chained hash of its content (pc_block_hash: the
 * parent block's hash, its tokens; the chain starts at pc_root: the cache
 * salt); a published block stays findable while it is referenced AND after
 * it is freed, until pc_alloc reuses it (LRU eviction).  pc_take finds
 * one by its hash and takes a reference, out of the free list if it was
 * there.  So a new sequence reuses the longest run of its prompt's full
 * blocks that some sequence computed before.
 *
 * Sharing is safe because a shared block is only read: the scheduler takes
 * cached blocks only below the sequence's last token (sched.c), so every
 * write lands in a block of its own.  Outputs are bit-identical with the
 * cache on and off because every kernel is batch invariant (kernels/
 * backend.h): K/V computed once equal K/V recomputed.
 *
 * A lookup matches on the 128-bit hash AND on the parent's hash and the
 * block's tokens, so a wrong block would need two equal 128-bit hashes of a
 * keyed XXH3 (the key is drawn per pool): tenants with distinct salts never
 * share a block.
 *
 * With caching off (pc_create's caching = 0) nothing is published and
 * pc_take always misses: a plain pool.  Not thread safe (the scheduler's).
 */
#ifndef LLMQ_PREFIX_CACHE_H
#define LLMQ_PREFIX_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "worker/engine/engine.h"

/* A 128-bit chained block hash. */
typedef struct pc_hash {
    uint64_t lo, hi;
} pc_hash;

typedef struct prefix_cache prefix_cache;

/* A pool of n_blocks blocks, all free (block 0 handed out first).  NULL
 * when out of memory. */
prefix_cache *pc_create(int n_blocks, int caching);
void pc_destroy(prefix_cache *p); /* NULL is a no-op */

int pc_caching(const prefix_cache *p);
/* Turn caching on or off (before any block is published). */
void pc_set_caching(prefix_cache *p, int on);
/* Blocks with no reference (published or not): what pc_alloc can hand out. */
int pc_n_free(const prefix_cache *p);
/* Published blocks (referenced or free): what the cache holds. */
int pc_n_cached(const prefix_cache *p);

/* The chain's start for a sequence: salt (len bytes, may be NULL/0) keys it,
 * so that different salts never share a block. */
pc_hash pc_root(const prefix_cache *p, const char *salt, size_t len);
/* The hash of a full block: its parent's hash (or the root) and its
 * ENG_BLOCK_SIZE token ids. */
pc_hash pc_block_hash(const prefix_cache *p, const pc_hash *parent, const int32_t *tokens);

/* Take the least recently freed free block (one reference); a published
 * one is forgotten (evicted).  -1 when none is free. */
int32_t pc_alloc(prefix_cache *p);
/* Drop one reference to b; at none, b joins the tail of the free list
 * (most recently freed), findable still when published. */
void pc_release(prefix_cache *p, int32_t b);
/* The published block with hash h whose parent hash and tokens are these,
 * with one more reference; -1 on a miss (always, with caching off). */
int32_t pc_take(prefix_cache *p, const pc_hash *h, const pc_hash *parent, const int32_t *tokens);
/* Make b (referenced, full, its K/V computed) findable by h.  No-op with
 * caching off, when b is published already, or when another block holds h
 * (two sequences computed the same block at once: the first one stays). */
void pc_publish(prefix_cache *p, int32_t b, const pc_hash *h, const pc_hash *parent, const int32_t *tokens);

#endif
