/*
 * The readiness check of `lbctl register --check` without sockets: what
 * --check accepts and what it refuses (with a sentence naming the value),
 * and the rise/fall counting that decides when the key is put and deleted.
 * The check on the wire, against real servers: tests/integration.
 */
#include <curl/curl.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "register_check.h"

static void parse_ok(const char *text, const char *addr, enum lbctl_check_kind kind,
                     const char *url, const char *target)
{
    struct lbctl_check_spec s;
    char *err = NULL;

    if (lbctl_check_parse(text, addr, &s, &err) != 0)
        fail_msg("\"%s\" refused: %s", text, err ? err : "(no message)");
    assert_null(err);
    assert_int_equal(s.kind, kind);
    assert_string_equal(s.url, url);
    assert_string_equal(s.target, target);
}

static void parse_bad(const char *text, const char *addr, const char *needle)
{
    struct lbctl_check_spec s;
    char *err = NULL;

    assert_int_equal(lbctl_check_parse(text, addr, &s, &err), -EINVAL);
    assert_non_null(err);
    if (!strstr(err, needle))
        fail_msg("\"%s\": \"%s\" does not say \"%s\"", text, err, needle);
    assert_null(strchr(err, '\n'));
    free(err);
}

static void test_parse_accepts(void **state)
{
    (void)state;
    parse_ok("tcp", "10.0.0.5:8080", LBCTL_CHECK_TCP, "http://10.0.0.5:8080/", "10.0.0.5:8080");
    parse_ok("tcp", "[::1]:8080", LBCTL_CHECK_TCP, "http://[::1]:8080/", "[::1]:8080");
    parse_ok("tcp", "web-0.svc:80", LBCTL_CHECK_TCP, "http://web-0.svc:80/", "web-0.svc:80");
    parse_ok("tcp://127.0.0.1:9000", "10.0.0.5:8080", LBCTL_CHECK_TCP, "http://127.0.0.1:9000/",
             "127.0.0.1:9000");
    parse_ok("http://127.0.0.1:8080/ready", "10.0.0.5:8080", LBCTL_CHECK_HTTP,
             "http://127.0.0.1:8080/ready", "http://127.0.0.1:8080/ready");
    parse_ok("http://127.0.0.1:8080/ready?full=1", "x:1", LBCTL_CHECK_HTTP,
             "http://127.0.0.1:8080/ready?full=1", "http://127.0.0.1:8080/ready?full=1");
    /* no path: /; no port: 80 */
    parse_ok("http://127.0.0.1:8080", "x:1", LBCTL_CHECK_HTTP, "http://127.0.0.1:8080/",
             "http://127.0.0.1:8080/");
    parse_ok("http://localhost/healthz", "x:1", LBCTL_CHECK_HTTP, "http://localhost:80/healthz",
             "http://localhost:80/healthz");
    parse_ok("http://[::1]/r", "x:1", LBCTL_CHECK_HTTP, "http://[::1]:80/r", "http://[::1]:80/r");
    parse_ok("http://[::1]:81/r", "x:1", LBCTL_CHECK_HTTP, "http://[::1]:81/r",
             "http://[::1]:81/r");
}

static void test_parse_refuses(void **state)
{
    char long_path[400];

    (void)state;
    parse_bad("ftp://127.0.0.1/ready", "x:1", "use tcp, tcp://HOST:PORT or http://HOST:PORT/PATH");
    parse_bad("https://127.0.0.1/ready", "x:1", "\"https://127.0.0.1/ready\": use tcp");
    parse_bad("", "x:1", "use tcp");
    parse_bad("TCP", "x:1", "use tcp");
    parse_bad("tcp:", "x:1", "use tcp");
    parse_bad("tcp://", "x:1", "empty address");
    parse_bad("tcp://nowhere", "x:1", "missing port");
    parse_bad("tcp://1.2.3.4:0", "x:1", "port");
    parse_bad("http://", "x:1", "no host");
    parse_bad("http:///ready", "x:1", "no host");
    parse_bad("http://127.0.0.1:99999/", "x:1", "port");
    parse_bad("http://user@127.0.0.1:80/", "x:1", "use tcp");
    parse_bad("http://127.0.0.1:80/a b", "x:1", "the path must be printable");
    parse_bad("http://127.0.0.1:80/a#frag", "x:1", "the path must be printable");
    parse_bad("http://bad host/", "x:1", "host has characters");
    parse_bad("http://[zz]:80/", "x:1", "IPv6");
    memset(long_path, 'a', sizeof(long_path));
    memcpy(long_path, "http://h/", 9);
    long_path[sizeof(long_path) - 1] = '\0';
    parse_bad(long_path, "x:1", "shorter than");
}

static void test_rise_and_fall(void **state)
{
    struct lbctl_check_state s = {0};

    (void)state;
    /* down at start; failures change nothing */
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
    assert_false(s.up);
    /* one pass between failures is not `rise` */
    assert_int_equal(lbctl_check_count(&s, true, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, true, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, true, 2, 3), LBCTL_CHECK_ROSE);
    assert_true(s.up);
    assert_int_equal(s.passes, 2);
    assert_int_equal(lbctl_check_count(&s, true, 2, 3), LBCTL_CHECK_SAME);
    /* fewer than `fall` failures keep it up */
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, true, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_FELL);
    assert_false(s.up);
    assert_int_equal(s.failures, 3);
    assert_int_equal(lbctl_check_count(&s, false, 2, 3), LBCTL_CHECK_SAME);
}

static void test_rise_and_fall_of_one(void **state)
{
    struct lbctl_check_state s = {0};

    (void)state;
    assert_int_equal(lbctl_check_count(&s, true, 1, 1), LBCTL_CHECK_ROSE);
    assert_int_equal(lbctl_check_count(&s, true, 1, 1), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, false, 1, 1), LBCTL_CHECK_FELL);
    assert_int_equal(lbctl_check_count(&s, false, 1, 1), LBCTL_CHECK_SAME);
    assert_int_equal(lbctl_check_count(&s, true, 1, 1), LBCTL_CHECK_ROSE);
}

/* A check that never runs: created and freed with nothing started. */
static void test_new_and_free(void **state)
{
    struct lbctl_check_spec s;
    struct lbctl_check *c = NULL;
    char *err = NULL;

    (void)state;
    assert_int_equal(lbctl_check_parse("tcp", "127.0.0.1:9", &s, &err), 0);
    s.interval_ms = 1000;
    s.timeout_ms = 1000;
    s.rise = 2;
    s.fall = 3;
    assert_int_equal(lbctl_check_new(&s, &c, &err), 0);
    assert_false(lbctl_check_is_up(c));
    assert_string_equal(lbctl_check_reason(c), "");
    assert_string_equal(lbctl_check_last(c), "");
    lbctl_check_free(c);
    lbctl_check_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_accepts), cmocka_unit_test(test_parse_refuses),
        cmocka_unit_test(test_rise_and_fall), cmocka_unit_test(test_rise_and_fall_of_one),
        cmocka_unit_test(test_new_and_free),
    };

    int failed;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    failed = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return failed;
}
