/*
 * Backends registered by name: resolved on the resolver thread, off the
 * loop, then eligible; a backend removed while its lookup is in flight is
 * never touched by the late answer.
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

#include "lb_log.h"
#include "registry.h"
#include "resolver.h"

static struct ev_loop *loop;
static struct lb_registry registry;
static struct lb_update_sink sink;

static int setup(void **state)
{
    const char *names[] = {"p"}, *listens[] = {"127.0.0.1:1"};

    loop = ev_loop_new(EVBACKEND_EPOLL);
    assert_int_equal(lb_registry_init(&registry, loop, 1, names, listens), 0);
    assert_int_equal(lb_resolver_new(loop, &registry.resolver), 0);
    sink = lb_registry_sink(&registry);
    {
        struct lb_update u = {.kind = LB_UPDATE_POLICY_PUT, .pool = "p"};

        lb_pool_policy_defaults(&u.u.policy);
        u.u.policy.health.type = LB_CHECK_NONE;
        sink.apply(sink.ctx, &u);
    }
    return 0;
}

static int teardown(void **state)
{
    lb_registry_destroy(&registry);
    lb_resolver_free(registry.resolver);
    ev_loop_destroy(loop);
    return 0;
}

static void put(const char *id, const char *addr)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "p", .id = id};

    snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "%s", addr);
    u.u.backend.weight = 100;
    sink.apply(sink.ctx, &u);
    sink.commit(sink.ctx);
}

static void del(const char *id)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_DELETE, .pool = "p", .id = id};

    sink.apply(sink.ctx, &u);
    sink.commit(sink.ctx);
}

static void tick_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    ev_break(l, EVBREAK_ONE);
}

static void run_for(double seconds)
{
    ev_timer t;

    ev_timer_init(&t, tick_cb, seconds, 0.);
    ev_timer_start(loop, &t);
    ev_run(loop, 0);
    ev_timer_stop(loop, &t);
}

static void test_name_resolves_then_eligible(void **state)
{
    struct lb_pool *pool = lb_registry_find_pool(&registry, "p");
    struct lb_backend *b;
    ev_tstamp end = ev_time() + 10;

    put("a", "localhost:8081");
    b = lb_pool_find(pool, "a")->backend;
    assert_false(b->resolved);
    assert_int_equal(pool->snap->n_eligible, 0);
    while (!b->resolved && ev_time() < end)
        run_for(0.02);
    assert_true(b->resolved);
    assert_int_equal(pool->snap->n_eligible, 1);
    if (b->sa.ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&b->sa;

        assert_int_equal(ntohl(s4->sin_addr.s_addr), INADDR_LOOPBACK);
        assert_int_equal(ntohs(s4->sin_port), 8081);
    } else {
        assert_int_equal(b->sa.ss_family, AF_INET6);
        assert_int_equal(ntohs(((struct sockaddr_in6 *)&b->sa)->sin6_port), 8081);
    }
    /* a refresh is scheduled */
    assert_true(ev_is_active(&b->dns_timer));
}

static void test_removed_while_resolving(void **state)
{
    struct lb_pool *pool = lb_registry_find_pool(&registry, "p");

    /* removed before the answer comes back: the answer must be dropped */
    for (int i = 0; i < 20; i++) {
        put("a", "localhost:8081");
        del("a");
    }
    run_for(0.3);
    assert_int_equal(pool->snap->n_entries, 0);
    /* and a numeric address needs no lookup at all */
    put("b", "127.0.0.1:9");
    assert_true(lb_pool_find(pool, "b")->backend->resolved);
    assert_false(lb_pool_find(pool, "b")->backend->dns_started);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_name_resolves_then_eligible, setup, teardown),
        cmocka_unit_test_setup_teardown(test_removed_while_resolving, setup, teardown),
    };

    lb_log_set_level(LB_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
