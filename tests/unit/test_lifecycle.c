/*
 * The backend lifecycle through the real pool model and a real libev loop:
 * one attach, one retire, and nothing running on a retired backend, whatever
 * was in flight when it was retired (a check, an ejection, a drain
 * deadline, a policy change).  Each test names the order of events it
 * replays; the debug build also asserts, when a backend's memory is
 * released, that none of its watchers is active or pending.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "drain.h"
#include "health.h"
#include "lb_log.h"
#include "test_rng.h"
#include "registry.h"

struct fixture {
    struct ev_loop *loop;
    struct lb_registry registry;
    struct lb_update_sink sink;
    struct lb_pool *pool;
    int listen_fd; /* accepts nothing: checks connect and then wait */
    int port;
};

static struct fixture fx;

static int open_silent_listener(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 64), 0);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    fx.port = ntohs(sa.sin_port);
    fx.listen_fd = fd;
    return fd;
}

static void policy(enum lb_algorithm algo, enum lb_health_type type, int64_t interval_ms,
                   int64_t drain_timeout_ms)
{
    struct lb_update u = {.kind = LB_UPDATE_POLICY_PUT, .pool = "p"};

    lb_pool_policy_defaults(&u.u.policy);
    u.u.policy.algorithm = algo;
    u.u.policy.health.type = type;
    u.u.policy.health.interval_ms = interval_ms;
    u.u.policy.health.timeout_ms = 5000;
    u.u.policy.drain_timeout_ms = drain_timeout_ms;
    fx.sink.apply(fx.sink.ctx, &u);
    fx.sink.commit(fx.sink.ctx);
}

static struct lb_backend *put(const char *id, int port)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "p", .id = id};

    snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "127.0.0.1:%d", port);
    u.u.backend.weight = 100;
    fx.sink.apply(fx.sink.ctx, &u);
    fx.sink.commit(fx.sink.ctx);
    return lb_pool_find(fx.pool, id)->backend;
}

static void del(const char *id)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_DELETE, .pool = "p", .id = id};

    fx.sink.apply(fx.sink.ctx, &u);
    fx.sink.commit(fx.sink.ctx);
}

static void drain(const char *id)
{
    struct lb_update u = {.kind = LB_UPDATE_OVERRIDE_PUT, .pool = "p", .id = id};

    u.u.override.drain = true;
    fx.sink.apply(fx.sink.ctx, &u);
    fx.sink.commit(fx.sink.ctx);
}

static void stop_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_break(loop, EVBREAK_ONE);
}

static void run_for(double seconds)
{
    ev_timer t;

    ev_timer_init(&t, stop_cb, seconds, 0.);
    ev_timer_start(fx.loop, &t);
    ev_run(fx.loop, 0);
    ev_timer_stop(fx.loop, &t);
}

/* Everything a backend owns that runs on the loop. */
static bool any_watcher_active(const struct lb_backend *b)
{
    return ev_is_active(&b->check.timer) || ev_is_active(&b->check.io) ||
           ev_is_active(&b->check.eject_timer) || ev_is_active(&b->dns_timer) ||
           ev_is_active(&b->drain_timer) || b->check.fd >= 0;
}

static void eject(struct lb_backend *b)
{
    for (int i = 0; i < 3; i++)
        lb_health_note_connect(b, false);
    assert_true(b->ejected);
    assert_true(ev_is_active(&b->check.eject_timer));
}

static int setup(void **state)
{
    const char *names[] = {"p"}, *listens[] = {"127.0.0.1:1"};

    memset(&fx, 0, sizeof(fx));
    fx.loop = ev_loop_new(EVBACKEND_EPOLL);
    assert_int_equal(lb_registry_init(&fx.registry, fx.loop, 1, names, listens), 0);
    fx.sink = lb_registry_sink(&fx.registry);
    fx.pool = lb_registry_find_pool(&fx.registry, "p");
    fx.listen_fd = -1;
    return 0;
}

static int teardown(void **state)
{
    if (fx.listen_fd >= 0)
        close(fx.listen_fd);
    lb_registry_destroy(&fx.registry);
    ev_loop_destroy(fx.loop);
    return 0;
}

/* A fresh pool with no key at all, then each algorithm on it: nothing to pick, no crash. */
static void test_empty_pool_picks_nothing_with_every_algorithm(void **state)
{
    struct sockaddr_in client = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    struct lb_pick p = {.client = (struct sockaddr *)&client};

    assert_null(lb_pool_pick(fx.pool, &p));
    for (size_t i = 0; i < N_ALGOS; i++) {
        policy(test_algos[i], LB_CHECK_NONE, 0, 0);
        assert_null(lb_pool_pick(fx.pool, &p));
    }
}

/* Ejected, then removed while the ejection timer runs: the retire stops it. */
static void test_ejected_then_removed_stops_the_ejection(void **state)
{
    struct lb_backend *b;

    policy(LB_ALGO_WRR, LB_CHECK_NONE, 0, 0);
    b = put("a", 1);
    lb_backend_ref(b); /* a session still holds it */
    eject(b);
    del("a");
    assert_true(b->removed);
    assert_false(any_watcher_active(b));
    run_for(0.05);
    lb_backend_unref(b); /* the last reference: freed, nothing may fire on it */
    run_for(0.05);
}

/* Removed while connects are in flight, which then fail: no ejection starts. */
static void test_removed_then_failed_connects_eject_nothing(void **state)
{
    struct lb_backend *b;

    policy(LB_ALGO_WRR, LB_CHECK_NONE, 0, 0);
    b = put("a", 1);
    lb_backend_ref(b);
    del("a");
    for (int i = 0; i < 5; i++)
        lb_health_note_connect(b, false);
    assert_false(b->ejected);
    assert_false(any_watcher_active(b));
    lb_backend_unref(b);
}

/* A policy change while ejected keeps the ejection timer as it was. */
static void test_policy_change_while_ejected_keeps_the_timer(void **state)
{
    struct lb_backend *b;
    ev_tstamp left;

    policy(LB_ALGO_WRR, LB_CHECK_NONE, 0, 0);
    b = put("a", 1);
    put("b", 2);
    eject(b);
    left = ev_timer_remaining(fx.loop, &b->check.eject_timer);
    policy(LB_ALGO_MAGLEV, LB_CHECK_TCP, 1000, 0);
    policy(LB_ALGO_P2C, LB_CHECK_NONE, 0, 0);
    assert_true(b->ejected);
    assert_true(ev_is_active(&b->check.eject_timer));
    assert_true(ev_timer_remaining(fx.loop, &b->check.eject_timer) <= left + 0.001);
    assert_true(ev_timer_remaining(fx.loop, &b->check.eject_timer) > left - 1.0);
    /* the period ends: the timer fires once, through the loop, and is done */
    ev_timer_stop(fx.loop, &b->check.eject_timer);
    ev_feed_event(fx.loop, &b->check.eject_timer, EV_TIMER);
    run_for(0.01);
    assert_false(b->ejected);
    assert_false(ev_is_active(&b->check.eject_timer));
    assert_true(lb_backend_is_eligible(b));
}

/* Removed while a check is connected and waiting for its answer. */
static void test_removed_mid_check_closes_the_check(void **state)
{
    struct lb_backend *b;

    open_silent_listener();
    policy(LB_ALGO_WRR, LB_CHECK_HTTP, 20, 0);
    b = put("a", fx.port);
    lb_backend_ref(b);
    for (int i = 0; i < 100 && b->check.fd < 0; i++)
        run_for(0.01);
    assert_true(b->check.fd >= 0); /* connected, the request sent, no answer */
    del("a");
    assert_false(any_watcher_active(b));
    run_for(0.05);
    lb_backend_unref(b);
}

/* Removed while draining with a deadline: the deadline is stopped. */
static void test_removed_while_draining_stops_the_deadline(void **state)
{
    struct lb_backend *b;

    policy(LB_ALGO_LEASTCONN, LB_CHECK_NONE, 0, 60000);
    b = put("a", 1);
    lb_backend_ref(b);
    drain("a");
    assert_true(b->drain);
    assert_true(ev_is_active(&b->drain_timer));
    del("a");
    assert_false(any_watcher_active(b));
    lb_backend_unref(b);
}

/* A new address replaces the backend: the old one is retired, the new one lives. */
static void test_new_address_retires_the_old_backend(void **state)
{
    struct lb_backend *old, *now;

    open_silent_listener();
    policy(LB_ALGO_WRR, LB_CHECK_TCP, 20, 0);
    old = put("a", 1);
    lb_backend_ref(old);
    eject(old);
    now = put("a", fx.port);
    assert_ptr_not_equal(old, now);
    assert_true(old->removed);
    assert_false(any_watcher_active(old));
    assert_false(now->removed);
    assert_true(ev_is_active(&now->check.timer) || now->check.fd >= 0);
    lb_backend_unref(old);
}

/* Retire is idempotent and starts are refused afterwards. */
static void test_nothing_starts_on_a_retired_backend(void **state)
{
    struct lb_backend *b;

    open_silent_listener();
    policy(LB_ALGO_WRR, LB_CHECK_TCP, 20, 1000);
    b = put("a", fx.port);
    lb_backend_ref(b);
    del("a");
    lb_backend_retire(b);
    lb_health_start(b);
    lb_health_restart(b);
    b->drain = true;
    lb_drain_update(b);
    lb_registry_backend_changed(&fx.registry, b, LB_EVENT_HEALTH_CHANGED, "test");
    assert_false(any_watcher_active(b));
    assert_false(b->marked);
    b->drain = false;
    lb_backend_unref(b);
}

/* A health flip in a pool of 10,000 updates the snapshot in place: no rebuild. */
static void test_health_flip_updates_in_place(void **state)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "p"};
    char id[16];

    for (int i = 0; i < 10000; i++) {
        snprintf(id, sizeof(id), "b%05d", i);
        u.id = id;
        snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "127.0.0.%d:%d", 1 + i % 200,
                 1000 + i);
        u.u.backend.weight = 100;
        fx.sink.apply(fx.sink.ctx, &u);
    }
    for (size_t k = 0; k < N_ALGOS; k++) {
        struct lb_backend *b = lb_pool_find(fx.pool, "b04242")->backend;
        uint64_t rebuilds;
        ev_tstamp t0, spent = 0;

        policy(test_algos[k], LB_CHECK_NONE, 0, 0);
        assert_int_equal(fx.pool->snap->n_eligible, 10000);
        rebuilds = fx.pool->rebuilds;
        for (int flip = 0; flip < 200; flip++) {
            b->health = flip % 2 ? LB_HEALTH_UP : LB_HEALTH_DOWN;
            t0 = ev_time();
            lb_registry_backend_changed(&fx.registry, b, LB_EVENT_HEALTH_CHANGED, "test");
            lb_registry_publish(&fx.registry);
            spent += ev_time() - t0;
            assert_int_equal(lb_backend_is_eligible(b), flip % 2);
            assert_int_equal(fx.pool->snap->n_eligible, 9999 + flip % 2);
        }
        /* maglev may rebuild its table at most once here (a joiner), never the snapshot */
        assert_int_equal(fx.pool->rebuilds, rebuilds);
        print_message("%s: one health flip at 10,000 backends: %.1f us\n",
                      fx.pool->snap->algo->name, spent / 200 * 1e6);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_pool_picks_nothing_with_every_algorithm, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ejected_then_removed_stops_the_ejection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_removed_then_failed_connects_eject_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_policy_change_while_ejected_keeps_the_timer, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_removed_mid_check_closes_the_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_removed_while_draining_stops_the_deadline, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_new_address_retires_the_old_backend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nothing_starts_on_a_retired_backend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health_flip_updates_in_place, setup, teardown),
    };

    lb_log_set_level(LB_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
