/*
 * Every algorithm on every degenerate snapshot, and the incremental publish
 * checked against a rebuild.
 *
 * Degenerate snapshots: no backend, one, 65 (the first above wrr's heap
 * threshold), 10,000; every weight 0; every backend drained; every backend
 * down, with panic (spread over all) and without (panic_threshold 0: none).
 * On each, pick() must return only eligible backends, NULL when there is
 * none, NULL when every backend was tried or is full, and never crash.
 *
 * Then a seeded random walk of health flips, ejections, drains, weight
 * overrides and forced health over 200 backends, for each algorithm: after
 * every publish, the in-place snapshot must equal the one a rebuild
 * produces (eligibility, weights, panic, counts), and picks must land only
 * on eligible backends, in proportion to their weights for wrr.
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

static struct lb_registry registry;
static struct lb_update_sink sink;
static struct lb_pool *pool;
static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint64_t rnd(void)
{
    return test_rng_next(&rng);
}

static int setup(void **state)
{
    const char *names[] = {"p"}, *listens[] = {"127.0.0.1:1"};

    memset(&registry, 0, sizeof(registry));
    assert_int_equal(lb_registry_init(&registry, NULL, 1, names, listens), 0);
    sink = lb_registry_sink(&registry);
    pool = lb_registry_find_pool(&registry, "p");
    return 0;
}

static int teardown(void **state)
{
    lb_registry_destroy(&registry);
    return 0;
}

static void set_policy(enum lb_algorithm a, int panic_threshold)
{
    struct lb_update u = {.kind = LB_UPDATE_POLICY_PUT, .pool = "p"};

    lb_pool_policy_defaults(&u.u.policy);
    u.u.policy.algorithm = a;
    u.u.policy.health.type = LB_CHECK_NONE;
    u.u.policy.panic_threshold = panic_threshold;
    sink.apply(sink.ctx, &u);
    sink.commit(sink.ctx);
}

static void put_many(size_t n, int weight)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "p"};
    char id[32];

    for (size_t i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "b%05zu", i);
        u.id = id;
        snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "127.0.%zu.%zu:%zu", i / 250,
                 1 + i % 250, 1000 + i);
        u.u.backend.weight = weight;
        sink.apply(sink.ctx, &u);
    }
    sink.commit(sink.ctx);
}

static void override_all(bool drain)
{
    struct lb_update u = {.kind = LB_UPDATE_OVERRIDE_PUT, .pool = "p"};

    u.u.override.drain = drain;
    for (size_t i = 0; i < pool->n_members; i++) {
        u.id = pool->members[i]->id;
        sink.apply(sink.ctx, &u);
    }
    sink.commit(sink.ctx);
}

/* Marks every backend down, as failing checks would. */
static void all_down(void)
{
    for (size_t i = 0; i < pool->n_members; i++) {
        struct lb_backend *b = pool->members[i]->backend;

        b->health = LB_HEALTH_DOWN;
        lb_registry_backend_changed(&registry, b, LB_EVENT_HEALTH_CHANGED, "test");
    }
    lb_registry_publish(&registry);
}

static void client(struct sockaddr_in *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = (uint32_t)rnd();
}

/*
 * Picks `n` times with every algorithm: each pick is eligible (or NULL when
 * nothing is); with every eligible backend tried, or all at max_conns, NULL.
 */
static void check_picks(size_t expect_eligible)
{
    for (size_t k = 0; k < N_ALGOS; k++) {
        const struct lb_snapshot *s;
        struct sockaddr_in sa;

        set_policy(test_algos[k], pool->policy.panic_threshold);
        s = pool->snap;
        assert_int_equal(s->n_eligible, expect_eligible);
        for (int i = 0; i < 300; i++) {
            struct lb_pick p = {.client = (struct sockaddr *)&sa};
            struct lb_backend *b;

            client(&sa);
            b = lb_pool_pick(pool, &p);
            if (!expect_eligible) {
                assert_null(b);
                continue;
            }
            assert_non_null(b);
            assert_true(lb_backend_is_eligible(b));
        }
        if (expect_eligible && expect_eligible <= 8) {
            struct lb_backend *tried[8];
            struct lb_pick p = {
                .client = (struct sockaddr *)&sa, .tried = tried, .n_tried = expect_eligible};

            for (size_t i = 0; i < expect_eligible; i++)
                tried[i] = lb_snapshot_eligible_backend(s, i);
            assert_null(lb_pool_pick(pool, &p));
        }
        if (expect_eligible) {
            struct lb_pick p = {.client = (struct sockaddr *)&sa, .max_conns = 1};

            for (size_t i = 0; i < s->n_entries; i++)
                s->entries[i].backend->active++;
            assert_null(lb_pool_pick(pool, &p));
            for (size_t i = 0; i < s->n_entries; i++)
                s->entries[i].backend->active--;
        }
    }
}

static void test_no_backend(void **state)
{
    set_policy(LB_ALGO_WRR, 50);
    check_picks(0);
}

static void test_one_backend(void **state)
{
    set_policy(LB_ALGO_WRR, 50);
    put_many(1, 100);
    check_picks(1);
}

static void test_65_backends(void **state)
{
    set_policy(LB_ALGO_WRR, 50);
    put_many(65, 7);
    check_picks(65);
}

static void test_10000_backends(void **state)
{
    set_policy(LB_ALGO_WRR, 50);
    put_many(10000, 100);
    check_picks(10000);
}

static void test_every_weight_zero(void **state)
{
    set_policy(LB_ALGO_WRR, 50);
    put_many(70, 0);
    check_picks(0);
}

static void test_every_backend_drained(void **state)
{
    set_policy(LB_ALGO_WRR, 50);
    put_many(70, 100);
    override_all(true);
    check_picks(0);
    override_all(false);
    check_picks(70);
}

static void test_every_backend_down_with_panic(void **state)
{
    set_policy(LB_ALGO_WRR, 50);
    put_many(70, 100);
    all_down();
    assert_true(lb_pool_in_panic(pool));
    check_picks(70); /* panic: spread over all of them */
}

static void test_every_backend_down_without_panic(void **state)
{
    set_policy(LB_ALGO_WRR, 0);
    put_many(70, 100);
    all_down();
    assert_false(lb_pool_in_panic(pool));
    check_picks(0);
}

/* ------------------------------------------------ incremental vs rebuild -- */

struct expected {
    uint32_t weight;
    bool candidate, healthy;
};

/* Compares the live snapshot with what a rebuild of the same state gives. */
static void check_against_rebuild(void)
{
    static struct expected live[256];
    const struct lb_snapshot *s = pool->snap;
    size_t n = s->n_entries, n_eligible = s->n_eligible, n_healthy = s->n_healthy,
           n_candidates = s->n_candidates;
    bool panic = s->panic;

    assert_true(n <= 256);
    for (size_t i = 0; i < n; i++) {
        live[i].weight = s->entries[i].weight;
        live[i].candidate = s->entries[i].candidate;
        live[i].healthy = s->entries[i].healthy;
        /* the eligible set holds exactly the entries with a weight */
        if (s->entries[i].weight)
            assert_int_equal(s->eligible[s->entries[i].eligible_pos], i);
    }
    pool->rebuild = true;
    lb_registry_publish(&registry);
    s = pool->snap;
    assert_int_equal(s->n_entries, n);
    assert_int_equal(s->n_eligible, n_eligible);
    assert_int_equal(s->n_healthy, n_healthy);
    assert_int_equal(s->n_candidates, n_candidates);
    assert_int_equal(s->panic, panic);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(s->entries[i].weight, live[i].weight);
        assert_int_equal(s->entries[i].candidate, live[i].candidate);
        assert_int_equal(s->entries[i].healthy, live[i].healthy);
    }
}

/* One random event on a random backend, as the registry would see it. */
static void random_event(void)
{
    struct lb_member *m = pool->members[rnd() % pool->n_members];
    struct lb_backend *b = m->backend;
    struct lb_update u = {.kind = LB_UPDATE_OVERRIDE_PUT, .pool = "p", .id = m->id};

    switch (rnd() % 6) {
    case 0:
        b->health = rnd() % 2 ? LB_HEALTH_DOWN : LB_HEALTH_UP;
        lb_registry_backend_changed(&registry, b, LB_EVENT_HEALTH_CHANGED, "test");
        break;
    case 1:
        b->ejected = !b->ejected;
        lb_registry_backend_changed(&registry, b, LB_EVENT_HEALTH_CHANGED, "test");
        break;
    case 2:
        u.u.override.drain = rnd() % 3 == 0;
        sink.apply(sink.ctx, &u);
        break;
    case 3:
        u.u.override.has_weight = true;
        u.u.override.weight = (int)(rnd() % 5) * 25;
        sink.apply(sink.ctx, &u);
        break;
    case 4:
        u.u.override.health = (enum lb_health_override)(rnd() % 3);
        sink.apply(sink.ctx, &u);
        break;
    case 5:
        u.kind = LB_UPDATE_OVERRIDE_DELETE;
        sink.apply(sink.ctx, &u);
        break;
    }
}

static void test_incremental_equals_rebuild(void **state)
{
    set_policy(LB_ALGO_WRR, 50);
    put_many(200, 100);
    for (size_t k = 0; k < N_ALGOS; k++) {
        set_policy(test_algos[k], 50);
        for (int round = 0; round < 300; round++) {
            int events = 1 + (int)(rnd() % (round % 10 == 0 ? 150 : 3));

            for (int e = 0; e < events; e++)
                random_event();
            lb_registry_publish(&registry);
            for (int i = 0; i < 20; i++) {
                struct sockaddr_in sa;
                struct lb_pick p = {.client = (struct sockaddr *)&sa};
                struct lb_backend *b;

                client(&sa);
                b = lb_pool_pick(pool, &p);
                assert_true(b ? lb_backend_is_eligible(b) : pool->snap->n_eligible == 0);
            }
            if (round % 7 == 0)
                check_against_rebuild();
        }
    }
}

/* After in-place changes, wrr still gives every eligible backend its share. */
static void test_wrr_shares_after_in_place_changes(void **state)
{
    static int count[200];
    uint64_t total = 0;

    set_policy(LB_ALGO_WRR, 0);
    put_many(200, 100);
    for (int e = 0; e < 400; e++)
        random_event();
    lb_registry_publish(&registry);
    for (size_t i = 0; i < pool->snap->n_entries; i++)
        total += pool->snap->entries[i].weight;
    memset(count, 0, sizeof(count));
    for (int round = 0; round < 3; round++)
        for (uint64_t k = 0; k < total; k++) {
            struct lb_pick p = {0};
            struct lb_backend *b = lb_pool_pick(pool, &p);

            assert_non_null(b);
            count[atoi(b->id + 1)]++;
        }
    for (size_t i = 0; i < pool->snap->n_entries; i++) {
        const struct lb_snap_entry *e = &pool->snap->entries[i];
        int want = 3 * (int)e->weight, got = count[atoi(e->backend->id + 1)];

        assert_in_range(got, want > 2 ? want - 2 : 0, want + 2);
    }
}

/* Each algorithm's ops carry the name the one table gives it. */
static void test_algorithm_names_are_one_table(void **state)
{
    for (size_t k = 0; k < N_ALGOS; k++)
        assert_string_equal(lb_algo_for(test_algos[k])->name, lb_algorithm_name(test_algos[k]));
    assert_string_equal(LB_ALGORITHM_NAMES, "wrr|leastconn|p2c|maglev");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_algorithm_names_are_one_table),
        cmocka_unit_test_setup_teardown(test_no_backend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_backend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_65_backends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_10000_backends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_weight_zero, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_backend_drained, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_backend_down_with_panic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_backend_down_without_panic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_incremental_equals_rebuild, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrr_shares_after_in_place_changes, setup, teardown),
    };

    lb_log_set_level(LB_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
