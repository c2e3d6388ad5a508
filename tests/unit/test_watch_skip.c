/*
 * Skip accounting on its own: the token bucket behind the rate-limited
 * log lines (a burst, then one a second, the count of what was left out),
 * and keys quoted for a log line from their bytes (NULs, quotes, control
 * characters, a 5,000-byte key cut short).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_log.h"
#include "lb_skip.h"

static void test_bucket_burst_then_one_a_second(void **state)
{
    struct lb_log_limit l;
    uint64_t suppressed;
    double due;
    int written = 0;

    memset(&l, 0, sizeof(l));
    for (int i = 0; i < 1000; i++)
        written += lb_log_limit_take(&l, 10.0, &suppressed);
    assert_int_equal(written, LB_SKIP_LOG_BURST);
    assert_int_equal(l.suppressed, 1000 - LB_SKIP_LOG_BURST);
    /* nothing may be written yet: the flush says when */
    assert_false(lb_log_limit_flush(&l, 10.0, &suppressed, &due));
    assert_true(due > 0.99 && due <= 1.0);
    assert_false(lb_log_limit_flush(&l, 10.5, &suppressed, &due));
    assert_true(due > 0.49 && due <= 0.5);
    /* a second later: one line, carrying the count */
    assert_true(lb_log_limit_flush(&l, 11.0, &suppressed, &due));
    assert_int_equal(suppressed, 1000 - LB_SKIP_LOG_BURST);
    assert_false(lb_log_limit_flush(&l, 11.0, &suppressed, &due));
    assert_true(due < 0); /* nothing held back */
    /* steady flood: one line a second, each with the count since the last */
    for (int s = 0; s < 10; s++) {
        int lines = 0;
        uint64_t total = 0;

        for (int i = 0; i < 100; i++) {
            if (lb_log_limit_take(&l, 12.0 + s + i / 100.0, &suppressed)) {
                lines++;
                total += suppressed;
            }
        }
        assert_true(lines <= 1);
        if (s > 0)
            assert_true(total >= 99 || lines == 0);
    }
    /* quiet for a long while: the burst is back, and no more */
    written = 0;
    for (int i = 0; i < 100; i++)
        written += lb_log_limit_take(&l, 1000.0, &suppressed);
    assert_int_equal(written, LB_SKIP_LOG_BURST);
}

static void test_quote_key(void **state)
{
    char buf[96], *long_key;

    lb_skip_quote_key(buf, sizeof(buf), "/lb/pools/web/backends/b1", 25, 25);
    assert_string_equal(buf, "\"/lb/pools/web/backends/b1\"");
    lb_skip_quote_key(buf, sizeof(buf), "a\0b\"c\\d\n", 8, 8);
    assert_string_equal(buf, "\"a\\x00b\\\"c\\\\d\\x0a\"");
    lb_skip_quote_key(buf, sizeof(buf), "", 0, 0);
    assert_string_equal(buf, "\"\"");
    /* only the start at hand: marked as cut */
    lb_skip_quote_key(buf, sizeof(buf), "/lb/pools/x", 11, 5000);
    assert_string_equal(buf, "\"/lb/pools/x...\"");
    /* a long key is cut to fit */
    long_key = malloc(5000);
    assert_non_null(long_key);
    memset(long_key, 'a', 5000);
    lb_skip_quote_key(buf, sizeof(buf), long_key, 5000, 5000);
    assert_true(strlen(buf) < sizeof(buf));
    assert_non_null(strstr(buf, "aaa...\""));
    assert_int_equal(buf[0], '"');
    /* tiny buffers never overflow */
    lb_skip_quote_key(buf, 8, long_key, 5000, 5000);
    assert_true(strlen(buf) < 8);
    lb_skip_quote_key(buf, 3, long_key, 5000, 5000);
    assert_string_equal(buf, "");
    free(long_key);
}

static double fake_now;

static double fake_clock(void)
{
    return fake_now;
}

static void test_counters_and_reasons(void **state)
{
    struct lb_skip_log s;

    lb_log_set_level(LB_LOG_ERROR);
    lb_skip_log_init(&s);
    s.clock = fake_clock;
    fake_now = 5.0;
    for (int r = 0; r < LB_SKIP_REASONS; r++)
        for (int i = 0; i <= r; i++)
            lb_skip_note(&s, r, "skipped", "k", 1, 1, NULL);
    for (int r = 0; r < LB_SKIP_REASONS; r++)
        assert_int_equal(s.skipped[r], (uint64_t)r + 1);
    lb_skip_note_clamped(&s, "k", 1, "retries", "99", "10", "above the maximum");
    assert_int_equal(s.clamped, 1);
    assert_string_equal(lb_skip_reason_name(LB_SKIP_KEY_TOO_LONG), "key_too_long");
    assert_string_equal(lb_skip_reason_name(LB_SKIP_VALUE_TOO_LARGE), "value_too_large");
    assert_string_equal(lb_skip_reason_name(LB_SKIP_MALFORMED), "malformed");
    assert_string_equal(lb_skip_reason_name(LB_SKIP_BAD_KEY), "bad_key");
    assert_string_equal(lb_skip_reason_name(LB_SKIP_BAD_VALUE), "bad_value");
    assert_string_equal(lb_skip_reason_name(LB_SKIP_TOO_MANY_KEYS), "too_many_keys");
    assert_string_equal(lb_skip_reason_name(LB_SKIP_REASONS), "unknown");
    /* unknown reasons are ignored, not counted out of bounds */
    lb_skip_note(&s, LB_SKIP_REASONS, "x", "k", 1, 1, NULL);
    /* kinds are limited apart: a flood of one does not silence another */
    for (int i = 0; i < 100; i++)
        lb_skip_note(&s, LB_SKIP_BAD_KEY, "skipped", "k", 1, 1, NULL);
    assert_true(s.limits[LB_SKIP_BAD_KEY].suppressed > 0);
    assert_int_equal(s.limits[LB_SKIP_BAD_VALUE].suppressed, 0);
    lb_log_set_level(LB_LOG_INFO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_burst_then_one_a_second),
        cmocka_unit_test(test_quote_key),
        cmocka_unit_test(test_counters_and_reasons),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
