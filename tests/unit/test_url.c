/* test_url.c — Redis URL parsing (common/url.c): forms, defaults, edge cases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    assert_string_equal(buf, "redis://alice:***@h:1/2");
    u = ok("redis://:s3cret@h");
    assert_string_equal(redis_url_describe(&u, buf, sizeof buf), "redis://:***@h:6379/0");
    u = ok("redis://bob@[::1]:7/1");
    assert_string_equal(redis_url_describe(&u, buf, sizeof buf), "redis://bob@[::1]:7/1");
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

/* redis-sentinel://[[user]:password@]h[:p],h[:p]/master[/db] (issue 23). */
static void test_sentinel(void **state) {
    (void)state;
    redis_url u = ok("redis-sentinel://s1:26380,[::1],10.0.0.3/mymaster");
    assert_false(u.is_unix);
    assert_int_equal(u.n_sentinels, 3);
    assert_string_equal(u.sentinel[0].host, "s1");
    assert_int_equal(u.sentinel[0].port, 26380);
    assert_string_equal(u.sentinel[1].host, "::1");
    assert_int_equal(u.sentinel[1].port, 26379);
    assert_string_equal(u.sentinel[2].host, "10.0.0.3");
    assert_int_equal(u.sentinel[2].port, 26379);
    assert_string_equal(u.master, "mymaster");
    assert_int_equal(u.db, 0);
    u = ok("redis-sentinel://:p%40ss@h:1/my-primary.1/4");
    assert_int_equal(u.n_sentinels, 1);
    assert_string_equal(u.password, "p@ss");
    assert_string_equal(u.master, "my-primary.1");
    assert_int_equal(u.db, 4);
    u = ok("redis-sentinel://bob:pw@h:2/m?db=3");
    assert_string_equal(u.user, "bob");
    assert_int_equal(u.db, 3);
    char buf[512];
    assert_string_equal(redis_url_describe(&u, buf, sizeof buf), "redis-sentinel://bob:***@h:2/m/3");
    assert_string_equal(redis_url_redact("redis-sentinel://:pw@a:1,b:2/m", buf, sizeof buf),
                        "redis-sentinel://:***@a:1,b:2/m");
    u = ok("redis://h:1/0");
    assert_int_equal(u.n_sentinels, 0);

    bad("redis-sentinel://h:1", LLMQ_ERR_INVALID, "master-name");
    bad("redis-sentinel://h:1/", LLMQ_ERR_INVALID, "master-name");
    bad("redis-sentinel:///m", LLMQ_ERR_INVALID, "no sentinel");
    bad("redis-sentinel://a:1,,b:2/m", LLMQ_ERR_INVALID, "empty sentinel");
    bad("redis-sentinel://a:1,/m", LLMQ_ERR_INVALID, "empty sentinel");
    bad("redis-sentinel://a:0/m", LLMQ_ERR_INVALID, "port");
    bad("redis-sentinel://a:1/m/x", LLMQ_ERR_INVALID, "database");
    bad("redis-sentinel://1,2,3,4,5,6,7,8,9/m", LLMQ_ERR_INVALID, "at most 8 sentinels");
    bad("redis-sentinel://:secret@a:x/m", LLMQ_ERR_INVALID, "***");
    bad("redis-sentinel://a:1/m%2Fx", LLMQ_ERR_INVALID, "master name");
    bad("redis-sentinel://a:1/m*", LLMQ_ERR_INVALID, "master name");
    bad("redis-sentinel://a*b:1/m", LLMQ_ERR_INVALID, "bad sentinel host");
}

/* Messages and redact() never show a password, even of URLs that fail. */
static void test_redaction(void **state) {
    (void)state;
    char buf[256];
    assert_string_equal(redis_url_redact("redis://u:pw@h:1/0", buf, sizeof buf), "redis://u:***@h:1/0");
    assert_string_equal(redis_url_redact("redis://:pw@h", buf, sizeof buf), "redis://:***@h");
    assert_string_equal(redis_url_redact("redis://u@h", buf, sizeof buf), "redis://u@h");
    assert_string_equal(redis_url_redact("redis://h:6379", buf, sizeof buf), "redis://h:6379");
    assert_string_equal(redis_url_redact("http://u:p#w@h", buf, sizeof buf), "http://u:***@h");
    assert_string_equal(redis_url_redact("u:pw@h", buf, sizeof buf), "u:***@h");
    static const char *const failing[] = {"redis://u:topsecret@h:99999", "redis://:topsecret@h/x",
                                          "rediss://u:topsecret@h", "http://u:topsecret@h",
                                          "redis://:top#secret@h", "redis://:topsecret@[::1"};
    for (size_t i = 0; i < sizeof failing / sizeof *failing; i++) {
        redis_url u;
        llmq_err err;
        llmq_err_clear(&err);
        assert_int_not_equal(redis_url_parse(&u, failing[i], &err), LLMQ_OK);
        if (strstr(err.msg, "secret")) fail_msg("'%s': message shows the password: %s", failing[i], err.msg);
    }
    redis_url u = ok("unix:///tmp/r.sock?db=3");
    snprintf(u.password, sizeof u.password, "pw");
    assert_string_equal(redis_url_describe(&u, buf, sizeof buf), "unix:///tmp/r.sock?db=3 (AUTH :***)");
}

static void write_file(const char *path, const char *text, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, n, f), n);
    fclose(f);
}

/* Password sources: URL > --redis-password-file > $LLMQ_REDIS_PASSWORD_FILE
 * > $LLMQ_REDIS_PASSWORD; a bad file is an error, never "no password". */
static void test_credentials(void **state) {
    (void)state;
    char dir[] = "/tmp/llmq-test-url.XXXXXX", f1[64], f2[64], empty[64], multi[64], big[64], missing[64];
    assert_non_null(mkdtemp(dir));
    snprintf(f1, sizeof f1, "%s/one", dir);
    snprintf(f2, sizeof f2, "%s/two", dir);
    snprintf(empty, sizeof empty, "%s/empty", dir);
    snprintf(multi, sizeof multi, "%s/multi", dir);
    snprintf(big, sizeof big, "%s/big", dir);
    snprintf(missing, sizeof missing, "%s/missing", dir);
    write_file(f1, "from-flag\n", 10);
    write_file(f2, "from-env-file\r\n", 15);
    write_file(empty, "\n", 1);
    write_file(multi, "a\nb\n", 4);
    char longpw[300];
    memset(longpw, 'x', sizeof longpw);
    write_file(big, longpw, sizeof longpw);

    redis_url u;
    llmq_err err;
    llmq_err_clear(&err);
    unsetenv("LLMQ_REDIS_PASSWORD_FILE");
    unsetenv("LLMQ_REDIS_PASSWORD");
    redis_url_set_password_file(NULL);
    assert_int_equal(redis_url_resolve(&u, "redis://h", &err), LLMQ_OK);
    assert_string_equal(u.password, "");

    setenv("LLMQ_REDIS_PASSWORD", "from-env", 1);
    assert_int_equal(redis_url_resolve(&u, "redis://h", &err), LLMQ_OK);
    assert_string_equal(u.password, "from-env");
    setenv("LLMQ_REDIS_PASSWORD_FILE", f2, 1);
    assert_int_equal(redis_url_resolve(&u, "redis://h", &err), LLMQ_OK);
    assert_string_equal(u.password, "from-env-file");
    redis_url_set_password_file(f1);
    assert_int_equal(redis_url_resolve(&u, "redis://alice@h", &err), LLMQ_OK);
    assert_string_equal(u.password, "from-flag");
    assert_string_equal(u.user, "alice");
    assert_int_equal(redis_url_resolve(&u, "redis://:in-url@h", &err), LLMQ_OK);
    assert_string_equal(u.password, "in-url");

    const char *bad_files[] = {empty, multi, big, missing};
    const llmq_status want[] = {LLMQ_ERR_INVALID, LLMQ_ERR_INVALID, LLMQ_ERR_INVALID, LLMQ_ERR_IO};
    for (size_t i = 0; i < 4; i++) {
        redis_url_set_password_file(bad_files[i]);
        llmq_err_clear(&err);
        assert_int_equal(redis_url_resolve(&u, "redis://h", &err), want[i]);
        assert_non_null(strstr(err.msg, "--redis-password-file"));
        assert_null(strstr(err.msg, "xxxxxxxx"));
    }
    redis_url_set_password_file(NULL);
    setenv("LLMQ_REDIS_PASSWORD_FILE", missing, 1);
    assert_int_equal(redis_url_resolve(&u, "redis://h", &err), LLMQ_ERR_IO);
    assert_non_null(strstr(err.msg, "LLMQ_REDIS_PASSWORD_FILE"));
    unsetenv("LLMQ_REDIS_PASSWORD_FILE");
    unsetenv("LLMQ_REDIS_PASSWORD");
    const char *files[] = {f1, f2, empty, multi, big};
    for (size_t i = 0; i < 5; i++) unlink(files[i]);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp_forms), cmocka_unit_test(test_userinfo), cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_unix),      cmocka_unit_test(test_errors),   cmocka_unit_test(test_redaction),
        cmocka_unit_test(test_credentials), cmocka_unit_test(test_sentinel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
