/*
 * testutil.h — small helpers shared by the C test suites: where the
 * repository and ../shared are, reading whole files, deterministic random
 * data, and scratch directories.
 */
#ifndef LLMQ_TESTUTIL_H
#define LLMQ_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* $LLMQ_ROOT or "." */
const char *tu_root(void);
/* $LLMQ_SHARED, or NULL when the shared folder is absent. */
const char *tu_shared(void);
/* Whole file, NUL-terminated; NULL on error. Caller frees. */
char *tu_read_file(const char *path, size_t *len);
/* Write len bytes to path; 0 on success. */
int tu_write_file(const char *path, const void *data, size_t len);
/* A fresh temporary directory (mkdtemp); caller removes it with tu_rmtree. */
char *tu_mkdtemp(void);
void tu_rmtree(const char *dir);
/* Deterministic uniform floats in [-scale, scale). */
void tu_fill_random(float *x, size_t n, uint64_t *state, float scale);
uint64_t tu_rand(uint64_t *state);

#endif
