/*
 * fuzz_url.c — Redis URL parsing and redaction (common/url.c) on arbitrary
 * strings, as they arrive from --redis and $LLMQ_REDIS.
 *
 * Invariants besides "no crash, no UB":
 *  - a parsed URL is in range: port 1..65535, db >= 0, every string field
 *    NUL-terminated inside its array, a Unix path absolute;
 *  - describe() never shows a password: it says "***" exactly when one is set;
 *  - redact() hides the password: when the URL had one, the redacted string,
 *    if it parses at all, has the password "***"; with any buffer size the
 *    output is NUL-terminated inside the buffer.
 */
#include <string.h>

#include "common/url.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0;
    char *url = malloc(size + 1);
    if (!url) return 0;
    memcpy(url, data, size);
    url[size] = '\0'; /* a command-line string ends at its first NUL */

    redis_url u;
    llmq_err err;
    llmq_err_clear(&err);
    llmq_status st = redis_url_parse(&u, url, &err);
    if (st != LLMQ_OK) {
        fuzz_check(err.msg[0], "refused without a message");
    } else {
        fuzz_check(u.db >= 0, "db %d", u.db);
        fuzz_check(strnlen(u.host, sizeof u.host) < sizeof u.host && strnlen(u.path, sizeof u.path) < sizeof u.path &&
                       strnlen(u.user, sizeof u.user) < sizeof u.user &&
                       strnlen(u.password, sizeof u.password) < sizeof u.password,
                   "a field is not NUL-terminated");
        if (u.is_unix) fuzz_check(u.path[0] == '/', "relative socket path '%s'", u.path);
        else fuzz_check(u.port >= 1 && u.port <= 65535, "port %d", u.port);
        char desc[1024];
        redis_url_describe(&u, desc, sizeof desc);
        fuzz_check(!!strstr(desc, "***") == !!u.password[0] || strstr(u.host, "***") || strstr(u.path, "***") ||
                       strstr(u.user, "***"),
                   "describe() and the password disagree: %s", desc);
        if (u.password[0]) {
            char red[8192];
            redis_url_redact(url, red, sizeof red);
            redis_url r2;
            if (redis_url_parse(&r2, red, &err) == LLMQ_OK)
                fuzz_check(!strcmp(r2.password, "***"), "redact() left a password in '%s'", red);
        }
    }
    /* every buffer size, down to 1 byte, must stay NUL-terminated inside */
    size_t cap = size ? (size_t)data[0] % 64 + 1 : 1;
    char *small = malloc(cap);
    if (small) {
        redis_url_redact(url, small, cap);
        fuzz_check(memchr(small, '\0', cap), "redact() output not terminated in %zu bytes", cap);
        if (st == LLMQ_OK) {
            redis_url_describe(&u, small, cap);
            fuzz_check(memchr(small, '\0', cap), "describe() output not terminated in %zu bytes", cap);
        }
        free(small);
    }
    free(url);
    return 0;
}
