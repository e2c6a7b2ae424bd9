/*
 * replay.c — main of the regression replays test_fuzz_<name>, built by the
 * normal `make` (any compiler, no libFuzzer) around one fuzz target.
 *
 * Runs LLVMFuzzerTestOneInput once on every file of
 *   tests/fuzz/corpus/<name>/        the committed seeds (must not be empty)
 *   tests/fuzz/regressions/<name>/   inputs that once crashed (when present)
 * as two cmocka cases, `corpus` and `regressions`.  A target reports a
 * broken invariant by aborting, so a bad input ends the process: tests/run.sh
 * counts that as a failure and shows the last file named on stderr.  Each
 * input is copied into a buffer of exactly its size, so that a sanitizer
 * build (SANITIZER=address) catches a read one byte past it.
 *
 * <name> comes from the executable's name (test_fuzz_<name>); paths are
 * relative to $LLMQ_ROOT (tests/run.sh sets it) or the current directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/fuzz/fuzz.h"

#pragma weak LLVMFuzzerInitialize

static char name[128];

/* Read a whole file into a malloc'd buffer of exactly its size (1 byte for
 * an empty file, so the pointer is never NULL). */
static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && (buf = malloc(sb.st_size ? (size_t)sb.st_size : 1)) &&
        fread(buf, 1, (size_t)sb.st_size, f) != (size_t)sb.st_size) {
        free(buf);
        buf = NULL;
    }
    *len = (size_t)sb.st_size;
    fclose(f);
    return buf;
}

static int not_hidden(const struct dirent *d) { return d->d_name[0] != '.'; }

/* Replay every file of dir; returns how many ran, -1 when dir is missing. */
static int replay_dir(const char *dir) {
    struct dirent **ents;
    int n = scandir(dir, &ents, not_hidden, alphasort);
    if (n < 0) return -1;
    int ran = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, ents[i]->d_name);
        free(ents[i]);
        size_t len = 0;
        uint8_t *data = slurp(path, &len);
        if (!data) fail_msg("cannot read %s: %s", path, strerror(errno));
        fprintf(stderr, "# replay %s (%zu bytes)\n", path, len);
        LLVMFuzzerTestOneInput(data, len);
        free(data);
        ran++;
    }
    free(ents);
    return ran;
}

static void test_corpus(void **state) {
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", fuzz_root(), name);
    int n = replay_dir(dir);
    if (n <= 0) fail_msg("%s: %s", dir, n < 0 ? "missing" : "empty: commit seeds for this target");
    printf("# %s: %d corpus files\n", name, n);
}

static void test_regressions(void **state) {
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/regressions/%s", fuzz_root(), name);
    int n = replay_dir(dir);
    if (n < 0) fail_msg("%s: missing", dir);
    printf("# %s: %d regression files\n", name, n);
}

int main(int argc, char **argv) {
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    if (strncmp(base, "test_fuzz_", 10) != 0) {
        fprintf(stderr, "%s: must be named test_fuzz_<target>\n", argv[0]);
        return 2;
    }
    snprintf(name, sizeof name, "%s", base + 10);
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/regressions/%s", fuzz_root(), name);
    struct stat sb;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus),
        cmocka_unit_test(test_regressions),
    };
    /* the regressions case only where that target has a folder of them */
    size_t n = stat(dir, &sb) == 0 ? 2 : 1;
    return _cmocka_run_group_tests(name, tests, n, NULL, NULL);
}
