/*
 * The outage log limiter: which failures make a line, and when the end of
 * an outage is worth one.  Time is a plain number of seconds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "lb_outage.h"

/* Retries every 0.5 s for 31 s: the first line, one reminder, the end. */
static void test_long_outage(void **state)
{
    struct lb_outage o;
    unsigned first = 0, still = 0;
    double down = 0, t;
    uint64_t failures = 0;

    lb_outage_init(&o, 30.0);
    for (t = 100.0; t < 131.0; t += 0.5) {
        switch (lb_outage_failed(&o, t)) {
        case LB_OUTAGE_FIRST:
            assert_true(t == 100.0);
            first++;
            break;
        case LB_OUTAGE_STILL:
            assert_true(t >= 130.0);
            still++;
            break;
        case LB_OUTAGE_QUIET:
            break;
        }
    }
    assert_int_equal(first, 1);
    assert_int_equal(still, 1);
    assert_true(lb_outage_duration(&o, 131.0) > 30.9);
    assert_true(lb_outage_ended(&o, 131.2, &down, &failures));
    assert_true(down > 31.1 && down < 31.3);
    assert_int_equal(failures, 62);
    /* a success with no outage says nothing */
    assert_false(lb_outage_ended(&o, 132.0, &down, &failures));
    assert_int_equal(failures, 0);
    assert_true(lb_outage_duration(&o, 133.0) == 0);
}

/* An etcd that drops the watch every 5 s: at most two lines per 30 s. */
static void test_flapping(void **state)
{
    struct lb_outage o;
    unsigned lines = 0;
    double down;
    uint64_t failures;

    lb_outage_init(&o, 30.0);
    for (double t = 0; t < 300.0; t += 5.0) {
        if (lb_outage_failed(&o, t) != LB_OUTAGE_QUIET)
            lines++;
        if (lb_outage_ended(&o, t + 0.1, &down, &failures))
            lines++;
    }
    assert_true(lines <= 2 * (300 / 30) + 2);
    assert_true(lines >= 300 / 30);
}

/* A second outage long after the first is announced again, with a fresh count. */
static void test_second_outage(void **state)
{
    struct lb_outage o;
    double down;
    uint64_t failures;

    lb_outage_init(&o, 30.0);
    assert_int_equal(lb_outage_failed(&o, 0), LB_OUTAGE_FIRST);
    assert_int_equal(lb_outage_failed(&o, 1), LB_OUTAGE_QUIET);
    assert_true(lb_outage_ended(&o, 2, &down, &failures));
    assert_int_equal(failures, 2);
    assert_int_equal(lb_outage_failed(&o, 100), LB_OUTAGE_FIRST);
    assert_true(lb_outage_ended(&o, 100.5, &down, &failures));
    assert_int_equal(failures, 1);
    /* starts 10 s after the last line: quiet, and it ends quietly */
    assert_int_equal(lb_outage_failed(&o, 110), LB_OUTAGE_QUIET);
    assert_false(lb_outage_ended(&o, 111, &down, &failures));
    assert_int_equal(failures, 1);
    /* a zero interval falls back to the default */
    lb_outage_init(&o, 0);
    assert_true(o.interval_s == LB_OUTAGE_INTERVAL_S);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_long_outage),
        cmocka_unit_test(test_flapping),
        cmocka_unit_test(test_second_outage),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
