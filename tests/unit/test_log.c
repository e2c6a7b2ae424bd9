/* test_log.c — common/log.c: a message's control bytes are escaped (no
 * forged line), a long message is cut at LOG_LINE_MAX with a mark, never
 * inside a UTF-8 sequence.  The lines are read back from a real stderr. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/log.h"

static FILE *g_tmp;
static int g_saved = -1;

/* stderr to a temporary file until captured() */
static void capture(void) {
    fflush(stderr);
    g_saved = dup(2);
    g_tmp = tmpfile();
    assert_non_null(g_tmp);
    dup2(fileno(g_tmp), 2);
}

/* stderr back; what was written meanwhile */
static char *captured(void) {
    FILE *tmp = g_tmp;
    int saved = g_saved;
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    long n = ftell(tmp);
    assert_true(n > 0);
    char *text = calloc(1, (size_t)n + 1);
    rewind(tmp);
    assert_int_equal(fread(text, 1, (size_t)n, tmp), (size_t)n);
    fclose(tmp);
    return text;
}

static size_t count_lines(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void test_control_bytes_escaped(void **state) {
    (void)state;
    const char *id = "abc\n2026-12-07T00:00:00.000Z ERROR gateway: forged\r\x1b[31m\x7f\tend";
    capture();
    log_info("job %s: done", id);
    char *line = captured();
    assert_int_equal(count_lines(line), 1);
    assert_non_null(strstr(line, "INFO  llmq: job abc\\x0a2026-12-07T00:00:00.000Z ERROR gateway: forged"
                                 "\\x0d\\x1b[31m\\x7f\\x09end: done\n"));
    for (const char *p = line; *p; p++)
        if (*p != '\n') assert_false((unsigned char)*p < 0x20 || *p == 0x7f);
    free(line);
    /* text that needs no escape, UTF-8 included, is written as it is */
    capture();
    log_warn("model '%s'", "caf\xc3\xa9 \\x41");
    line = captured();
    assert_non_null(strstr(line, "WARN  llmq: model 'caf\xc3\xa9 \\x41'\n"));
    free(line);
}

static void test_long_message_cut(void **state) {
    (void)state;
    size_t n = 10000;
    char *id = malloc(n + 1);
    memset(id, 'j', n);
    id[n] = '\0';
    capture();
    log_error("job %s", id);
    char *line = captured();
    assert_int_equal(count_lines(line), 1);
    const char *msg = strstr(line, "llmq: ") + 6;
    const char *mark = strstr(msg, " ...[cut: ");
    assert_non_null(mark);
    assert_int_equal((size_t)(mark - msg), LOG_LINE_MAX);
    /* the mark says how much of the message was left out: 4 + 10000 - 2048 */
    assert_non_null(strstr(mark, " ...[cut: 7956 more bytes]\n"));
    free(line);
    /* escaping counts: 1,000 newlines take 4,000 bytes, cut at 512 escapes */
    memset(id, '\n', 1000);
    id[1000] = '\0';
    capture();
    log_info("%s", id);
    line = captured();
    assert_int_equal(count_lines(line), 1);
    assert_non_null(strstr(line, " ...[cut: 488 more bytes]\n"));
    free(line);
    free(id);
}

static void test_cut_keeps_utf8_whole(void **state) {
    (void)state;
    /* 2047 ASCII bytes then a 2-byte character: it does not fit whole and is left out */
    char buf[4000];
    memset(buf, 'a', 2047);
    strcpy(buf + 2047, "\xc3\xa9zz");
    char out[LOG_LINE_MAX + 1];
    assert_int_equal(log_escape(out, sizeof out, buf, strlen(buf)), 2047);
    assert_int_equal(strlen(out), 2047);
    /* one byte less before it: it fits */
    assert_int_equal(log_escape(out, sizeof out, buf + 1, strlen(buf + 1)), 2048);
    assert_string_equal(out + 2046, "\xc3\xa9");
    /* an escape is never cut in half either */
    assert_int_equal(log_escape(out, 6, "ab\ncd", 5), 2);
    assert_string_equal(out, "ab");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_control_bytes_escaped),
        cmocka_unit_test(test_long_message_cut),
        cmocka_unit_test(test_cut_keeps_utf8_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
