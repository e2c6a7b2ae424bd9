/* testutil.c — see testutil.h. */
#define _XOPEN_SOURCE 700
#include "tests/unit/testutil.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *tu_root(void) {
    const char *r = getenv("LLMQ_ROOT");
    return r && *r ? r : ".";
}

const char *tu_shared(void) {
    const char *s = getenv("LLMQ_SHARED");
    struct stat sb;
    if (s && *s && stat(s, &sb) == 0 && S_ISDIR(sb.st_mode)) return s;
    return NULL;
}

char *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        if (len) *len = (size_t)n;
    }
    return buf;
}

int tu_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

char *tu_mkdtemp(void) {
    const char *tmp = getenv("TMPDIR");
    char *path = malloc(4096);
    if (!path) return NULL;
    snprintf(path, 4096, "%s/llmq-test.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(path)) {
        free(path);
        return NULL;
    }
    return path;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

void tu_rmtree(const char *dir) {
    if (dir) nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

uint64_t tu_rand(uint64_t *s) {
    uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void tu_fill_random(float *x, size_t n, uint64_t *state, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * (float)((double)(tu_rand(state) >> 11) / 4503599627370496.0 - 1.0);
}
