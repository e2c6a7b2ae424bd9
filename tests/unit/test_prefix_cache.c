/*
 * test_prefix_cache.c — the KV block pool with prefix caching
 * (worker/engine/prefix_cache.h): reference counts, the LRU free list,
 * chained hashes that depend on the whole prefix and on the salt, and a
 * lookup that checks what it finds.  The expected block ids and counts are
 * worked out by hand from the contract in the header.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "worker/engine/prefix_cache.h"

static void fill(int32_t *t, int32_t base) {
    for (int i = 0; i < ENG_BLOCK_SIZE; i++) t[i] = base + i;
}

/* Block 0 first, then in order; freed blocks come back least recently
 * freed first; a shared block is free only when its last holder lets go. */
static void test_refcounts_and_lru(void **st) {
    (void)st;
    prefix_cache *p = pc_create(4, 1);
    assert_non_null(p);
    assert_int_equal(pc_n_free(p), 4);
    assert_int_equal(pc_alloc(p), 0);
    assert_int_equal(pc_alloc(p), 1);
    assert_int_equal(pc_alloc(p), 2);
    assert_int_equal(pc_alloc(p), 3);
    assert_int_equal(pc_alloc(p), -1);
    assert_int_equal(pc_n_free(p), 0);
    /* publish block 1 and take it: two references */
    int32_t t[ENG_BLOCK_SIZE];
    fill(t, 10);
    const pc_hash root = pc_root(p, NULL, 0), h = pc_block_hash(p, &root, t);
    pc_publish(p, 1, &h, &root, t);
    assert_int_equal(pc_n_cached(p), 1);
    assert_int_equal(pc_take(p, &h, &root, t), 1);
    pc_release(p, 1);
    assert_int_equal(pc_n_free(p), 0); /* still held once */
    pc_release(p, 2);
    pc_release(p, 1);
    pc_release(p, 0);
    assert_int_equal(pc_n_free(p), 3);
    /* free, block 1 is still findable; taking it takes it off the free list */
    assert_int_equal(pc_take(p, &h, &root, t), 1);
    assert_int_equal(pc_n_free(p), 2);
    pc_release(p, 1); /* free order now: 2, 0, 1 */
    assert_int_equal(pc_alloc(p), 2);
    assert_int_equal(pc_alloc(p), 0);
    assert_int_equal(pc_n_cached(p), 1);
    assert_int_equal(pc_alloc(p), 1); /* reused: evicted */
    assert_int_equal(pc_n_cached(p), 0);
    assert_int_equal(pc_take(p, &h, &root, t), -1);
    pc_destroy(p);
}

/* A block's hash depends on every block before it and on the salt; a
 * second block with a hash already published stays unpublished. */
static void test_chain_and_salt(void **st) {
    (void)st;
    prefix_cache *p = pc_create(8, 1);
    int32_t a[ENG_BLOCK_SIZE], b[ENG_BLOCK_SIZE], c[ENG_BLOCK_SIZE];
    fill(a, 1);
    fill(b, 100);
    fill(c, 200);
    const pc_hash r0 = pc_root(p, NULL, 0), r1 = pc_root(p, "tenant-1", 8), r2 = pc_root(p, "tenant-2", 8);
    const pc_hash r_empty = pc_root(p, "", 0);
    assert_true(memcmp(&r0, &r1, sizeof r0) != 0);
    assert_true(memcmp(&r1, &r2, sizeof r1) != 0);
    assert_true(memcmp(&r0, &r_empty, sizeof r0) != 0); /* an empty salt is a salt */
    /* chain a -> b published as blocks 0, 1 */
    const int32_t b0 = pc_alloc(p), b1 = pc_alloc(p);
    const pc_hash ha = pc_block_hash(p, &r0, a), hb = pc_block_hash(p, &ha, b);
    pc_publish(p, b0, &ha, &r0, a);
    pc_publish(p, b1, &hb, &ha, b);
    /* b after another first block c: another hash, no hit */
    const pc_hash hc = pc_block_hash(p, &r0, c), hcb = pc_block_hash(p, &hc, b);
    assert_true(memcmp(&hb, &hcb, sizeof hb) != 0);
    assert_int_equal(pc_take(p, &hcb, &hc, b), -1);
    /* the same tokens under a salt: no hit */
    const pc_hash ha1 = pc_block_hash(p, &r1, a);
    assert_int_equal(pc_take(p, &ha1, &r1, a), -1);
    /* the right hash with the wrong parent or tokens: no hit */
    assert_int_equal(pc_take(p, &hb, &hc, b), -1);
    assert_int_equal(pc_take(p, &hb, &ha, c), -1);
    assert_int_equal(pc_take(p, &hb, &ha, b), b1);
    /* the same hash computed again in another block: the first stays */
    const int32_t dup = pc_alloc(p);
    pc_publish(p, dup, &ha, &r0, a);
    assert_int_equal(pc_n_cached(p), 2);
    assert_int_equal(pc_take(p, &ha, &r0, a), b0);
    pc_destroy(p);
}

/* Caching off: nothing is published, nothing is found; the pool works. */
static void test_off(void **st) {
    (void)st;
    prefix_cache *p = pc_create(2, 0);
    int32_t a[ENG_BLOCK_SIZE];
    fill(a, 1);
    const pc_hash r = pc_root(p, NULL, 0), h = pc_block_hash(p, &r, a);
    const int32_t b = pc_alloc(p);
    pc_publish(p, b, &h, &r, a);
    assert_int_equal(pc_n_cached(p), 0);
    assert_int_equal(pc_take(p, &h, &r, a), -1);
    pc_release(p, b);
    assert_int_equal(pc_n_free(p), 2);
    pc_destroy(p);
    pc_destroy(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refcounts_and_lru),
        cmocka_unit_test(test_chain_and_salt),
        cmocka_unit_test(test_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
