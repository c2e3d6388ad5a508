/*
 * What operators build on, pinned: the access log's end names (stable, a
 * closed set; only three are not errors), the histogram buckets (Prometheus'
 * `le`: a value on a bound counts in that bucket), the /proc/<pid>/stat
 * parser behind process_*, and health gauges that are 0 or 1, with
 * lbd_backend_health_checked saying whether anything was checked.
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

#include "backend.h"
#include "health.h"
#include "lb_log.h"
#include "metrics.h"
#include "proxy.h"
#include "registry.h"
#include "session.h"

static void test_end_names_are_stable(void **state)
{
    static const char *const want[LB_END_COUNT] = {
        "client_closed",         "backend_closed",  "client_reset",  "backend_reset",
        "connect_timeout",       "connect_refused", "no_backend",    "idle_timeout",
        "drained_past_deadline", "shutdown",        "moved",         "killed",
        "bad_proxy_header",      "out_of_memory",   "queue_timeout",
    };

    for (int i = 0; i < LB_END_COUNT; i++) {
        const char *name = lb_session_end_name((enum lb_session_end)i);

        assert_string_equal(name, want[i]);
        for (const char *p = name; *p; p++) /* a bare logfmt value, a label value */
            assert_true((*p >= 'a' && *p <= 'z') || *p == '_');
    }
    assert_string_equal(lb_session_end_name(LB_END_COUNT), "unknown");
    assert_string_equal(lb_session_end_name((enum lb_session_end) - 1), "unknown");
}

static void test_only_normal_ends_may_be_sampled(void **state)
{
    for (int i = 0; i < LB_END_COUNT; i++) {
        bool normal = i == LB_END_CLIENT_CLOSED || i == LB_END_BACKEND_CLOSED || i == LB_END_MOVED;

        assert_int_equal(lb_session_end_is_error((enum lb_session_end)i), !normal);
    }
}

static void test_histogram_buckets_are_le(void **state)
{
    static const double connect[LB_CONNECT_BUCKETS] = LB_CONNECT_BOUNDS;
    static const double duration[LB_DURATION_BUCKETS] = LB_DURATION_BOUNDS;

    assert_int_equal(lb_histogram_bucket(connect, LB_CONNECT_BUCKETS, 0), 0);
    assert_int_equal(lb_histogram_bucket(connect, LB_CONNECT_BUCKETS, 0.0005), 0);
    assert_int_equal(lb_histogram_bucket(connect, LB_CONNECT_BUCKETS, 0.00051), 1);
    assert_int_equal(lb_histogram_bucket(connect, LB_CONNECT_BUCKETS, 0.3), 9);
    assert_int_equal(lb_histogram_bucket(connect, LB_CONNECT_BUCKETS, 5), 12);
    assert_int_equal(lb_histogram_bucket(connect, LB_CONNECT_BUCKETS, 5.01), 13); /* +Inf */
    assert_int_equal(lb_histogram_bucket(duration, LB_DURATION_BUCKETS, 0.05), 1);
    assert_int_equal(lb_histogram_bucket(duration, LB_DURATION_BUCKETS, 3600), 6);
    assert_int_equal(lb_histogram_bucket(duration, LB_DURATION_BUCKETS, 86400), 7);
    for (size_t i = 1; i < LB_CONNECT_BUCKETS; i++)
        assert_true(connect[i] > connect[i - 1]);
    for (size_t i = 1; i < LB_DURATION_BUCKETS; i++)
        assert_true(duration[i] > duration[i - 1]);
}

static void test_histograms_of_no_worker_or_pool_are_empty(void **state)
{
    struct lb_session_histograms h;

    memset(&h, 0x5a, sizeof(h));
    lb_session_histograms(0, 0, &h);
    for (size_t i = 0; i <= LB_CONNECT_BUCKETS; i++)
        assert_int_equal(h.connect[i], 0);
    assert_true(h.connect_sum == 0 && h.duration_sum == 0);
    lb_session_histograms(100000, 4, &h); /* beyond the table: nothing, no crash */
    assert_int_equal(h.duration[0], 0);
}

static void test_proc_stat_parse(void **state)
{
    /* Fields 3..24 of proc(5); comm with a space and parentheses. */
    const char *line = "4242 (lb d) (x)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 "
                       "150 75 0 0 20 0 3 0 123456 187572224 2912 18446744073709551615 1 1 0 0 0 "
                       "0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
    struct lb_proc_stat st;

    assert_int_equal(lb_proc_stat_parse(line, &st), 0);
    assert_int_equal(st.utime, 150);
    assert_int_equal(st.stime, 75);
    assert_int_equal(st.starttime, 123456);
    assert_int_equal(st.vsize, 187572224ULL);
    assert_int_equal(st.rss, 2912);

    assert_int_equal(lb_proc_stat_parse("4242 (lbd) S 1 2 3", &st), -EINVAL);
    assert_int_equal(lb_proc_stat_parse("no parenthesis at all", &st), -EINVAL);
    assert_int_equal(lb_proc_stat_parse("", &st), -EINVAL);
    assert_int_equal(
        lb_proc_stat_parse("1 (x) S 1 1 1 0 -1 4 0 0 0 0 nope 0 0 0 20 0 3 0 1 1 1", &st), -EINVAL);
}

/* ------------------------------------------------------- /metrics -- */

struct fixture {
    struct ev_loop *loop;
    struct lb_registry registry;
    struct lb_update_sink sink;
    struct lb_pool *pool;
};

static struct fixture fx;

static void apply(struct lb_update *u)
{
    fx.sink.apply(fx.sink.ctx, u);
    fx.sink.commit(fx.sink.ctx);
}

static struct lb_backend *put(const char *id, int port)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "p", .id = id};

    snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "127.0.0.1:%d", port);
    u.u.backend.weight = 100;
    apply(&u);
    return lb_pool_find(fx.pool, id)->backend;
}

/* The value of `family` for backend `id` in text, or -100 when absent. */
static long long sample(const char *text, const char *family, const char *id)
{
    char needle[256];
    const char *p;

    snprintf(needle, sizeof(needle), "\n%s{pool=\"p\",backend=\"%s\",", family, id);
    if (!(p = strstr(text, needle)))
        return -100;
    p = strchr(p + 1, '}');
    return strtoll(p + 2, NULL, 10);
}

static void test_health_gauges_are_zero_or_one(void **state)
{
    const char *names[] = {"p"}, *listens[] = {"127.0.0.1:1"};
    struct lb_update u = {.kind = LB_UPDATE_POLICY_PUT, .pool = "p"};
    struct lb_proxy proxy;
    struct lb_buf out;
    struct lb_backend *unknown, *up, *down, *forced, *ejected;

    memset(&fx, 0, sizeof(fx));
    memset(&proxy, 0, sizeof(proxy));
    fx.loop = ev_loop_new(EVBACKEND_EPOLL);
    assert_int_equal(lb_registry_init(&fx.registry, fx.loop, 1, names, listens), 0);
    fx.sink = lb_registry_sink(&fx.registry);
    fx.pool = lb_registry_find_pool(&fx.registry, "p");
    lb_pool_policy_defaults(&u.u.policy);
    u.u.policy.health.type = LB_CHECK_NONE;
    apply(&u);
    proxy.registry = &fx.registry;

    unknown = put("unknown", 1001);
    up = put("up", 1002);
    down = put("down", 1003);
    forced = put("forced", 1004);
    ejected = put("ejected", 1005);
    up->health = LB_HEALTH_UP;
    down->health = LB_HEALTH_DOWN;
    forced->health = LB_HEALTH_UP;
    {
        struct lb_update o = {.kind = LB_UPDATE_OVERRIDE_PUT, .pool = "p", .id = "forced"};

        o.u.override.health = LB_HEALTH_FORCE_DOWN;
        apply(&o);
    }
    for (int i = 0; i < 3; i++)
        lb_health_note_connect(ejected, false);
    assert_true(ejected->ejected);
    (void)unknown;

    lb_buf_init(&out, 16u << 20);
    assert_int_equal(lb_metrics_render(&out, &fx.registry, &proxy), 0);
    assert_int_equal(lb_buf_append(&out, "", 1), 0);
    assert_int_equal(sample(out.data, "lbd_backend_healthy", "unknown"), 1);
    assert_int_equal(sample(out.data, "lbd_backend_health_checked", "unknown"), 0);
    assert_int_equal(sample(out.data, "lbd_backend_healthy", "up"), 1);
    assert_int_equal(sample(out.data, "lbd_backend_health_checked", "up"), 1);
    assert_int_equal(sample(out.data, "lbd_backend_healthy", "down"), 0);
    assert_int_equal(sample(out.data, "lbd_backend_health_checked", "down"), 1);
    assert_int_equal(sample(out.data, "lbd_backend_healthy", "forced"), 0);
    assert_int_equal(sample(out.data, "lbd_backend_healthy", "ejected"), 0);
    assert_int_equal(sample(out.data, "lbd_backend_health_checked", "ejected"), 1);
    assert_null(strstr(out.data, "} -"));
    /* The pool's histograms are there, empty; process_* too. */
    assert_non_null(strstr(out.data, "\nlbd_backend_connect_seconds_bucket{pool=\"p\",le=\"+Inf\"} "
                                     "0\n"));
    assert_non_null(strstr(out.data, "\nlbd_session_duration_seconds_count{pool=\"p\"} 0\n"));
    assert_non_null(strstr(out.data, "\nprocess_resident_memory_bytes "));
    assert_non_null(strstr(out.data, "\nprocess_open_fds "));
    assert_non_null(strstr(out.data, "\nprocess_start_time_seconds "));
    lb_buf_free(&out);
    lb_registry_destroy(&fx.registry);
    ev_loop_destroy(fx.loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_end_names_are_stable),
        cmocka_unit_test(test_only_normal_ends_may_be_sampled),
        cmocka_unit_test(test_histogram_buckets_are_le),
        cmocka_unit_test(test_histograms_of_no_worker_or_pool_are_empty),
        cmocka_unit_test(test_proc_stat_parse),
        cmocka_unit_test(test_health_gauges_are_zero_or_one),
    };

    lb_log_set_level(LB_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
