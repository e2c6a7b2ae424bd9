/* test_url.c — Redis URL parsing (common/url.c): forms, defaults, edge cases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/url.h"

static redis_url ok(const char *s) {
    redis_url u;
    llmq_err err;
    llmq_err_clear(&err);
    if (redis_url_parse(&u, s, &err) != LLMQ_OK) fail_msg("'%s' refused: %s", s, err.msg);
    return u;
}

static void bad(const char *s, llmq_status want, const char *needle) {
    redis_url u;
    llmq_err err;
    llmq_err_clear(&err);
    llmq_status st = redis_url_parse(&u, s, &err);
    if (st != want || !strstr(err.msg, needle))
        fail_msg("'%s': status %d (want %d), message '%s' lacks '%s'", s, st, want, err.msg, needle);
}

static void test_tcp_forms(void **state) {
    (void)state;
    redis_url u = ok("redis://localhost:6380/3");
    assert_false(u.is_unix);
    assert_string_equal(u.host, "localhost");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 3);
    assert_string_equal(u.user, "");
    assert_string_equal(u.password, "");
    u = ok("redis://10.1.2.3");
    assert_string_equal(u.host, "10.1.2.3");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    u = ok("redis://");
    assert_string_equal(u.host, "127.0.0.1");
    u = ok("redis://h:1/");
    assert_int_equal(u.db, 0);
    assert_int_equal(u.port, 1);
    u = ok("redis://h?db=5");
    assert_int_equal(u.db, 5);
}

static void test_userinfo(void **state) {
    (void)state;
    redis_url u = ok("redis://alice:s3cret@redis.svc:6379/1");
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.password, "s3cret");
    assert_string_equal(u.host, "redis.svc");
    u = ok("redis://:onlypass@h");
    assert_string_equal(u.user, "");
    assert_string_equal(u.password, "onlypass");
    u = ok("redis://p%40ss%3Aw:a%40b%2Fc@h:7000");
    assert_string_equal(u.user, "p@ss:w");
    assert_string_equal(u.password, "a@b/c");
    assert_int_equal(u.port, 7000);
    /* a raw '@' in the password: the last '@' ends the userinfo */
    u = ok("redis://:pa@ss@h");
    assert_string_equal(u.password, "pa@ss");
    assert_string_equal(u.host, "h");
    u = ok("redis://bob@h");
    assert_string_equal(u.user, "bob");
    assert_string_equal(u.password, "");
    bad("redis://:bad%zz@h", LLMQ_ERR_INVALID, "password");
    bad("redis://:trunc%4@h", LLMQ_ERR_INVALID, "password");
    bad("redis://:nul%00@h", LLMQ_ERR_INVALID, "password");
    char buf[128];
    u = ok("redis://alice:s3cret@h:1/2");
    redis_url_describe(&u, buf, sizeof buf);
    assert_null(strstr(buf, "s3cret"));
    assert_string_equal(buf, "redis://alice@h:1/2");
}

static void test_ipv6(void **state) {
    (void)state;
    redis_url u = ok("redis://[::1]:6390/4");
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6390);
    assert_int_equal(u.db, 4);
    u = ok("redis://u:p@[fe80::1]");
    assert_string_equal(u.host, "fe80::1");
    assert_int_equal(u.port, 6379);
    bad("redis://[::1", LLMQ_ERR_INVALID, "unclosed");
    bad("redis://[::1]x", LLMQ_ERR_INVALID, "':port'");
}

static void test_unix(void **state) {
    (void)state;
    redis_url u = ok("unix:///var/run/redis/redis.sock");
    assert_true(u.is_unix);
    assert_string_equal(u.path, "/var/run/redis/redis.sock");
    assert_int_equal(u.db, 0);
    u = ok("unix:///tmp/r.sock?db=2");
    assert_string_equal(u.path, "/tmp/r.sock");
    assert_int_equal(u.db, 2);
    bad("unix://relative.sock", LLMQ_ERR_INVALID, "absolute path");
    bad("unix://", LLMQ_ERR_INVALID, "absolute path");
    bad("unix:///tmp/r.sock?timeout=3", LLMQ_ERR_INVALID, "db=N");
}

static void test_errors(void **state) {
    (void)state;
    bad("", LLMQ_ERR_INVALID, "empty");
    bad("localhost:6379", LLMQ_ERR_INVALID, "expected redis://");
    bad("http://h:1", LLMQ_ERR_INVALID, "expected redis://");
    bad("rediss://h:6380", LLMQ_ERR_UNSUPPORTED, "TLS");
    bad("redis://h:0", LLMQ_ERR_INVALID, "port");
    bad("redis://h:65536", LLMQ_ERR_INVALID, "port");
    bad("redis://h:12ab", LLMQ_ERR_INVALID, "port");
    bad("redis://h:", LLMQ_ERR_INVALID, "port");
    bad("redis://h/x", LLMQ_ERR_INVALID, "database");
    bad("redis://h/-1", LLMQ_ERR_INVALID, "database");
    bad("redis://h#frag", LLMQ_ERR_INVALID, "fragment");
    char longhost[400] = "redis://";
    memset(longhost + 8, 'a', 300);
    longhost[308] = 0;
    bad(longhost, LLMQ_ERR_INVALID, "host too long");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp_forms), cmocka_unit_test(test_userinfo), cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_unix),      cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
