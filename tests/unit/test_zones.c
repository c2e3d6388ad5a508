/*
 * Zone affinity (the pool's zone_affinity with lbd's --zone), decided when
 * a snapshot is published: entries outside lbd's zone get weight 0 while
 * enough of the local zone is eligible, every zone is eligible below the
 * threshold, and back again once the local zone recovers.  Off without a
 * zone on lbd or without a threshold; backends without a zone are another
 * zone.  The in-place path must equal a rebuild; a maglev replica that saw
 * the switches must pick as one built fresh in the same state; and a
 * switch over 10,000 backends must stay cheap.
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
#include <stdlib.h>
#include <string.h>

#include "lb_log.h"
#include "test_rng.h"
#include "registry.h"

#include <ev.h>

static struct lb_registry registry;
static struct lb_update_sink sink;
static struct lb_pool *pool;
static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t rnd(void)
{
    return test_rng_next(&rng);
}

static void registry_open(struct lb_registry *r, struct lb_update_sink *sk, struct lb_pool **p,
                          const char *zone)
{
    const char *names[] = {"p"}, *listens[] = {"127.0.0.1:1"};

    memset(r, 0, sizeof(*r));
    assert_int_equal(lb_registry_init(r, NULL, 1, names, listens), 0);
    *sk = lb_registry_sink(r);
    *p = lb_registry_find_pool(r, "p");
    snprintf((*p)->zone, sizeof((*p)->zone), "%s", zone);
}

static int setup(void **state)
{
    registry_open(&registry, &sink, &pool, "a");
    return 0;
}

static int teardown(void **state)
{
    lb_registry_destroy(&registry);
    return 0;
}

static void set_policy_on(struct lb_update_sink *sk, enum lb_algorithm a, int zone_affinity,
                          int panic_threshold)
{
    struct lb_update u = {.kind = LB_UPDATE_POLICY_PUT, .pool = "p"};

    lb_pool_policy_defaults(&u.u.policy);
    u.u.policy.algorithm = a;
    u.u.policy.health.type = LB_CHECK_NONE;
    u.u.policy.zone_affinity = zone_affinity;
    u.u.policy.panic_threshold = panic_threshold;
    sk->apply(sk->ctx, &u);
    sk->commit(sk->ctx);
}

static void set_policy(enum lb_algorithm a, int zone_affinity)
{
    set_policy_on(&sink, a, zone_affinity, 0);
}

/* Registers n backends "<zone>NNNNN" in `zone` ("" : no zone). */
static void put_zone_on(struct lb_update_sink *sk, const char *zone, size_t n)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "p"};
    char id[32];

    for (size_t i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "%s%05zu", zone[0] ? zone : "none", i);
        u.id = id;
        snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "127.%d.%zu.%zu:%zu",
                 zone[0] ? zone[0] : 9, i / 250, 1 + i % 250, 1000 + i);
        u.u.backend.weight = 100;
        snprintf(u.u.backend.zone, sizeof(u.u.backend.zone), "%s", zone);
        sk->apply(sk->ctx, &u);
    }
    sk->commit(sk->ctx);
}

static void put_zone(const char *zone, size_t n)
{
    put_zone_on(&sink, zone, n);
}

/* Sets the health of the first n backends of `zone` in r's pool. */
static void set_health_on(struct lb_registry *r, struct lb_pool *p, const char *zone, size_t n,
                          enum lb_health_state h)
{
    for (size_t i = 0, k = 0; i < p->n_members && k < n; i++) {
        struct lb_backend *b = p->members[i]->backend;

        if (!b || strcmp(b->spec.zone, zone) != 0)
            continue;
        b->health = h;
        lb_registry_backend_changed(r, b, LB_EVENT_HEALTH_CHANGED, "test");
        k++;
    }
    lb_registry_publish(r);
}

static void set_health(const char *zone, size_t n, enum lb_health_state h)
{
    set_health_on(&registry, pool, zone, n, h);
}

/* Eligible entries of the live snapshot in `zone`. */
static size_t eligible_in(const char *zone)
{
    const struct lb_snapshot *s = pool->snap;
    size_t n = 0;

    for (size_t k = 0; k < s->n_eligible; k++)
        n += strcmp(lb_snapshot_eligible_backend(s, k)->spec.zone, zone) == 0;
    return n;
}

/* 300 picks with every algorithm; counts those landing in `zone`. */
static size_t picks_in(const char *zone, size_t *total)
{
    size_t n = 0;

    *total = 0;
    for (size_t k = 0; k < N_ALGOS; k++) {
        set_policy(test_algos[k], pool->policy.zone_affinity);
        for (int i = 0; i < 300; i++) {
            struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = (uint32_t)rnd()};
            struct lb_pick p = {.client = (struct sockaddr *)&sa};
            struct lb_backend *b = lb_pool_pick(pool, &p);

            assert_non_null(b);
            assert_true(lb_backend_is_eligible(b));
            n += strcmp(b->spec.zone, zone) == 0;
            (*total)++;
        }
    }
    return n;
}

static void test_local_only_spill_and_back(void **state)
{
    size_t total, in_a;

    set_policy(LB_ALGO_WRR, 70);
    put_zone("a", 10);
    put_zone("b", 10);
    assert_true(lb_pool_zone_aware(pool));
    assert_true(lb_pool_zone_local(pool));
    assert_int_equal(pool->snap->n_local, 10);
    assert_int_equal(pool->snap->n_eligible, 10);
    assert_int_equal(eligible_in("a"), 10);
    in_a = picks_in("a", &total);
    assert_int_equal(in_a, total);

    /* 7 of 10 eligible: exactly the threshold, still local */
    set_health("a", 3, LB_HEALTH_DOWN);
    assert_true(lb_pool_zone_local(pool));
    assert_int_equal(pool->snap->n_eligible, 7);
    in_a = picks_in("a", &total);
    assert_int_equal(in_a, total);

    /* 6 of 10: under-provisioned, spill over to every zone */
    set_health("a", 4, LB_HEALTH_DOWN);
    assert_false(lb_pool_zone_local(pool));
    assert_int_equal(eligible_in("a"), 6);
    assert_int_equal(eligible_in("b"), 10);
    assert_true(picks_in("b", &total) > 0 && total > 0);

    /* recovered: back in the zone */
    set_health("a", 10, LB_HEALTH_UP);
    assert_true(lb_pool_zone_local(pool));
    assert_int_equal(pool->snap->n_eligible, 10);
    in_a = picks_in("a", &total);
    assert_int_equal(in_a, total);
}

/* A drain or a weight of 0 makes a local backend ineligible as a failing check does. */
static void test_drain_counts_as_ineligible(void **state)
{
    struct lb_update u = {.kind = LB_UPDATE_OVERRIDE_PUT, .pool = "p"};

    set_policy(LB_ALGO_P2C, 50);
    put_zone("a", 4);
    put_zone("b", 4);
    assert_true(lb_pool_zone_local(pool));
    u.u.override.drain = true;
    for (int i = 0; i < 3; i++) {
        char id[32];

        snprintf(id, sizeof(id), "a%05d", i);
        u.id = id;
        sink.apply(sink.ctx, &u);
    }
    sink.commit(sink.ctx);
    lb_registry_publish(&registry);
    assert_false(lb_pool_zone_local(pool)); /* 1 of 4 */
    assert_int_equal(pool->snap->n_eligible, 5);
    u.kind = LB_UPDATE_OVERRIDE_DELETE;
    u.id = "a00000";
    sink.apply(sink.ctx, &u);
    sink.commit(sink.ctx);
    lb_registry_publish(&registry);
    assert_true(lb_pool_zone_local(pool)); /* 2 of 4 */
    assert_int_equal(pool->snap->n_eligible, 2);
}

static void test_no_zone_on_lbd_is_off(void **state)
{
    size_t total, in_a;

    pool->zone[0] = '\0';
    set_policy(LB_ALGO_WRR, 70);
    put_zone("a", 5);
    put_zone("b", 5);
    assert_false(lb_pool_zone_aware(pool));
    assert_false(lb_pool_zone_local(pool));
    assert_int_equal(pool->snap->n_eligible, 10);
    in_a = picks_in("a", &total);
    assert_true(in_a > 0 && in_a < total);
}

static void test_no_affinity_in_policy_is_off(void **state)
{
    set_policy(LB_ALGO_WRR, 0);
    put_zone("a", 5);
    put_zone("b", 5);
    assert_false(lb_pool_zone_aware(pool));
    assert_int_equal(pool->snap->n_eligible, 10);
}

/* Backends without a zone are another zone: excluded while local, included in spill-over. */
static void test_backends_without_zone(void **state)
{
    set_policy(LB_ALGO_LEASTCONN, 50);
    put_zone("a", 2);
    put_zone("", 3);
    assert_true(lb_pool_zone_local(pool));
    assert_int_equal(pool->snap->n_local, 2);
    assert_int_equal(eligible_in("a"), 2);
    assert_int_equal(eligible_in(""), 0);
    set_health("a", 2, LB_HEALTH_DOWN);
    assert_false(lb_pool_zone_local(pool));
    assert_int_equal(eligible_in(""), 3);
}

/* No local backend at all: nothing to keep traffic on, spill. */
static void test_no_local_backend_spills(void **state)
{
    set_policy(LB_ALGO_WRR, 10);
    put_zone("b", 3);
    assert_false(lb_pool_zone_local(pool));
    assert_int_equal(pool->snap->n_eligible, 3);
}

/* Panic spreads over everything, as in Envoy: zone affinity yields to it. */
static void test_panic_wins(void **state)
{
    set_policy_on(&sink, LB_ALGO_WRR, 50, 50);
    put_zone("a", 2);
    put_zone("b", 8);
    assert_true(lb_pool_zone_local(pool));
    set_health("b", 8, LB_HEALTH_DOWN); /* 2 of 10 healthy: panic */
    assert_true(lb_pool_in_panic(pool));
    assert_false(lb_pool_zone_local(pool));
    assert_int_equal(pool->snap->n_eligible, 10);
}

/* A backend that re-registers in another zone moves between the counts. */
static void test_zone_change_in_place(void **state)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "p", .id = "b00000"};

    set_policy(LB_ALGO_WRR, 100);
    put_zone("a", 1);
    put_zone("b", 2);
    assert_true(lb_pool_zone_local(pool));
    snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "%s",
             lb_pool_find(pool, "b00000")->backend->spec.addr);
    u.u.backend.weight = 100;
    snprintf(u.u.backend.zone, sizeof(u.u.backend.zone), "a");
    sink.apply(sink.ctx, &u);
    sink.commit(sink.ctx);
    lb_registry_publish(&registry);
    assert_int_equal(pool->snap->n_local, 2);
    assert_int_equal(pool->snap->n_eligible, 2);
}

/* Compares the live snapshot with what a rebuild of the same state gives. */
static void check_against_rebuild(void)
{
    static uint32_t live[256];
    const struct lb_snapshot *s = pool->snap;
    size_t n = s->n_entries, n_eligible = s->n_eligible, n_local = s->n_local,
           n_local_eligible = s->n_local_eligible;
    bool zone_local = s->zone_local;

    assert_true(n <= 256);
    for (size_t i = 0; i < n; i++)
        live[i] = s->entries[i].weight;
    pool->rebuild = true;
    lb_registry_publish(&registry);
    s = pool->snap;
    assert_int_equal(s->n_eligible, n_eligible);
    assert_int_equal(s->n_local, n_local);
    assert_int_equal(s->n_local_eligible, n_local_eligible);
    assert_int_equal(s->zone_local, zone_local);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(s->entries[i].weight, live[i]);
}

static void test_incremental_equals_rebuild(void **state)
{
    unsigned switches = 0;

    put_zone("a", 60);
    put_zone("b", 60);
    put_zone("", 20);
    for (size_t k = 0; k < N_ALGOS; k++) {
        set_policy_on(&sink, test_algos[k], 60, 30);
        for (int round = 0; round < 300; round++) {
            struct lb_member *m = pool->members[rnd() % pool->n_members];
            bool was = lb_pool_zone_local(pool);
            int events = 1 + (int)(rnd() % 8);

            for (int e = 0; e < events; e++) {
                m = pool->members[rnd() % pool->n_members];
                m->backend->health = rnd() % 3 ? LB_HEALTH_UP : LB_HEALTH_DOWN;
                lb_registry_backend_changed(&registry, m->backend, LB_EVENT_HEALTH_CHANGED, "test");
            }
            lb_registry_publish(&registry);
            switches += was != lb_pool_zone_local(pool);
            if (round % 5 == 0)
                check_against_rebuild();
        }
    }
    assert_true(switches > 4); /* the walk did cross the threshold */
}

/*
 * Maglev: a replica that went local -> spill -> local picks as one that
 * started in the final state (same zone, same view): a switch rebuilds the
 * table over exactly the eligible entries.
 */
static void test_maglev_replicas_agree(void **state)
{
    struct lb_registry fresh;
    struct lb_update_sink fresh_sink;
    struct lb_pool *fresh_pool;

    set_policy_on(&sink, LB_ALGO_MAGLEV, 70, 0);
    put_zone("a", 20);
    put_zone("b", 20);
    set_health("a", 10, LB_HEALTH_DOWN);
    assert_false(lb_pool_zone_local(pool));
    set_health("a", 10, LB_HEALTH_UP);
    set_health("a", 2, LB_HEALTH_DOWN);
    assert_true(lb_pool_zone_local(pool));

    registry_open(&fresh, &fresh_sink, &fresh_pool, "a");
    set_policy_on(&fresh_sink, LB_ALGO_MAGLEV, 70, 0);
    put_zone_on(&fresh_sink, "a", 20);
    put_zone_on(&fresh_sink, "b", 20);
    set_health_on(&fresh, fresh_pool, "a", 2, LB_HEALTH_DOWN);
    assert_true(lb_pool_zone_local(fresh_pool));
    for (int i = 0; i < 2000; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = (uint32_t)rnd()};
        struct lb_pick p = {.client = (struct sockaddr *)&sa};

        assert_string_equal(lb_pool_pick(pool, &p)->id, lb_pool_pick(fresh_pool, &p)->id);
    }
    lb_registry_destroy(&fresh);
}

/* A switch over 10,000 backends is one pass in place: cheap, and no rebuild. */
static void test_switch_cost_10000(void **state)
{
    for (size_t k = 0; k < N_ALGOS; k++) {
        uint64_t rebuilds;
        double t0, spill, back;

        registry_open(&registry, &sink, &pool, "a");
        set_policy(test_algos[k], 50);
        put_zone("a", 5000);
        put_zone("b", 5000);
        assert_true(lb_pool_zone_local(pool));
        rebuilds = pool->rebuilds;
        t0 = ev_time();
        set_health("a", 2501, LB_HEALTH_DOWN);
        spill = ev_time() - t0;
        assert_false(lb_pool_zone_local(pool));
        assert_int_equal(pool->snap->n_eligible, 2499 + 5000);
        t0 = ev_time();
        set_health("a", 2501, LB_HEALTH_UP);
        back = ev_time() - t0;
        assert_true(lb_pool_zone_local(pool));
        assert_int_equal(pool->snap->n_eligible, 5000);
        assert_int_equal(pool->rebuilds, rebuilds);
        printf("# %s: 10,000 backends, spill %.2f ms, back %.2f ms (2,501 health flips each)\n",
               lb_algorithm_name(test_algos[k]), spill * 1e3, back * 1e3);
        assert_true(spill < 1.0 && back < 1.0);
        lb_registry_destroy(&registry);
    }
    registry_open(&registry, &sink, &pool, "a"); /* for teardown */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_local_only_spill_and_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_counts_as_ineligible, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_zone_on_lbd_is_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_affinity_in_policy_is_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backends_without_zone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_local_backend_spills, setup, teardown),
        cmocka_unit_test_setup_teardown(test_panic_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zone_change_in_place, setup, teardown),
        cmocka_unit_test_setup_teardown(test_incremental_equals_rebuild, setup, teardown),
        cmocka_unit_test_setup_teardown(test_maglev_replicas_agree, setup, teardown),
        cmocka_unit_test(test_switch_cost_10000),
    };

    lb_log_set_level(LB_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
