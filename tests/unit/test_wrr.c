/*
 * Smooth weighted round robin.  The algorithm itself (order, shares,
 * weight 0, retries) on snapshots built directly (snapshot_fixture.h);
 * what the pool model adds (a backend deleted while a session holds it, a
 * drain override, position carried over across publishes) through the
 * registry's sink, as the watcher feeds it.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "lb_log.h"
#include "registry.h"
#include "snapshot_fixture.h"

/* ------------------------------------------------------ on snapshots -- */

static int snap_setup(void **state)
{
    static struct snap_fixture f;

    snap_fixture_init(&f, LB_ALGO_WRR);
    *state = &f;
    return 0;
}

static int snap_teardown(void **state)
{
    snap_fixture_free(*state);
    return 0;
}

static void test_sequence_5_1_1(void **state)
{
    struct snap_fixture *f = *state;
    const char *expect = "aabacaa";
    char got[8] = {0};

    snap_fixture_add(f, "a", 5);
    snap_fixture_add(f, "b", 1);
    snap_fixture_add(f, "c", 1);
    snap_fixture_build(f);
    for (int i = 0; i < 7; i++)
        got[i] = snap_fixture_pick(f, NULL)->id[0];
    assert_string_equal(got, expect);
}

static void test_shares_over_7000(void **state)
{
    struct snap_fixture *f = *state;
    int count[3] = {0};

    snap_fixture_add(f, "a", 5);
    snap_fixture_add(f, "b", 1);
    snap_fixture_add(f, "c", 1);
    snap_fixture_build(f);
    for (int i = 0; i < 7000; i++)
        count[snap_fixture_pick(f, NULL)->id[0] - 'a']++;
    assert_int_equal(count[0], 5000);
    assert_int_equal(count[1], 1000);
    assert_int_equal(count[2], 1000);
}

static void test_weight_zero_and_tried(void **state)
{
    struct snap_fixture *f = *state;
    struct lb_backend *tried[1];
    struct lb_pick p = {.tried = tried, .n_tried = 1};

    snap_fixture_add(f, "a", 0);
    snap_fixture_add(f, "b", 3);
    snap_fixture_add(f, "c", 1);
    snap_fixture_build(f);
    for (int i = 0; i < 100; i++)
        assert_int_not_equal(snap_fixture_pick(f, NULL)->id[0], 'a');
    tried[0] = snap_fixture_pick(f, NULL);
    for (int i = 0; i < 50; i++)
        assert_ptr_not_equal(snap_fixture_pick(f, &p), tried[0]);
    /* nothing left to try */
    struct lb_backend *both[2] = {lb_snapshot_eligible_backend(f->snap, 0),
                                  lb_snapshot_eligible_backend(f->snap, 1)};
    struct lb_pick none = {.tried = both, .n_tried = 2};
    assert_null(snap_fixture_pick(f, &none));
}

/*
 * A drain (or a backend going down) in place: the entry leaves the
 * rotation at once and the others keep their order; back in, it takes its
 * turns again without a burst.
 */
static void test_ineligible_in_place(void **state)
{
    struct snap_fixture *f = *state;
    char got[16] = {0};

    snap_fixture_add(f, "a", 5);
    snap_fixture_add(f, "b", 1);
    snap_fixture_add(f, "c", 1);
    snap_fixture_build(f);
    got[0] = snap_fixture_pick(f, NULL)->id[0];
    snap_fixture_set_eligible(f, "a", false);
    for (int i = 1; i < 5; i++)
        got[i] = snap_fixture_pick(f, NULL)->id[0];
    assert_string_equal(got, "abcbc");
    snap_fixture_set_eligible(f, "a", true);
    for (int i = 0; i < 14; i++)
        got[i] = snap_fixture_pick(f, NULL)->id[0];
    got[14] = '\0';
    assert_string_equal(got, "aabacaaaabacaa");
}

/* ------------------------------------------------ through the registry -- */

struct fixture {
    struct lb_registry registry;
    struct lb_update_sink sink;
    struct lb_pool *pool;
};

static int setup(void **state)
{
    static struct fixture f;
    const char *names[] = {"web"}, *listens[] = {"127.0.0.1:1"};

    memset(&f, 0, sizeof(f));
    assert_int_equal(lb_registry_init(&f.registry, NULL, 1, names, listens), 0);
    f.sink = lb_registry_sink(&f.registry);
    f.pool = lb_registry_find_pool(&f.registry, "web");
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    lb_registry_destroy(&f->registry);
    return 0;
}

static void put(struct fixture *f, const char *id, int port, int weight)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "web", .id = id};

    snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "127.0.0.1:%d", port);
    u.u.backend.weight = weight;
    f->sink.apply(f->sink.ctx, &u);
}

static void del(struct fixture *f, const char *id)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_DELETE, .pool = "web", .id = id};

    f->sink.apply(f->sink.ctx, &u);
}

static struct lb_backend *pick(struct fixture *f)
{
    struct lb_pick p = {0};

    return f->pool->snap->algo->pick(f->pool->snap, &p);
}

static void test_removed_and_drained_get_nothing(void **state)
{
    struct fixture *f = *state;
    struct lb_update ov = {.kind = LB_UPDATE_OVERRIDE_PUT, .pool = "web", .id = "b"};
    struct lb_backend *a;
    int count[3] = {0};

    put(f, "a", 1001, 1);
    put(f, "b", 1002, 1);
    put(f, "c", 1003, 1);
    f->sink.commit(f->sink.ctx);
    /* a session holds a reference to "a" while etcd deletes it */
    a = pick(f);
    assert_string_equal(a->id, "a");
    lb_backend_ref(a);
    del(f, "a");
    ov.u.override.drain = true;
    f->sink.apply(f->sink.ctx, &ov);
    f->sink.commit(f->sink.ctx);
    assert_true(a->removed);
    for (int i = 0; i < 300; i++)
        count[pick(f)->id[0] - 'a']++;
    assert_int_equal(count[0], 0);
    assert_int_equal(count[1], 0);
    assert_int_equal(count[2], 300);
    assert_int_equal(f->pool->snap->n_entries, 2);
    assert_int_equal(f->pool->snap->n_eligible, 1);
    lb_backend_unref(a); /* the last reference frees it (ASan checks) */
}

static void test_state_carried_over(void **state)
{
    struct fixture *f = *state;
    int count[4] = {0};

    /* Adding a backend mid-cycle must not restart the cycle: over a long
     * run with changes every few picks, shares still follow the weights. */
    put(f, "a", 1001, 2);
    put(f, "b", 1002, 1);
    f->sink.commit(f->sink.ctx);
    for (int round = 0; round < 1000; round++) {
        char id[2] = {(char)('c' + round % 2), 0};

        put(f, id, 2000 + round % 2, 1);
        f->sink.commit(f->sink.ctx);
        for (int i = 0; i < 5; i++)
            count[pick(f)->id[0] - 'a']++;
        del(f, id);
        f->sink.commit(f->sink.ctx);
    }
    /* weights 2:1:1 while c or d is present: a gets half of all picks */
    assert_in_range(count[0], 2450, 2550);
}

int main(void)
{
    lb_log_set_level(LB_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sequence_5_1_1, snap_setup, snap_teardown),
        cmocka_unit_test_setup_teardown(test_shares_over_7000, snap_setup, snap_teardown),
        cmocka_unit_test_setup_teardown(test_weight_zero_and_tried, snap_setup, snap_teardown),
        cmocka_unit_test_setup_teardown(test_ineligible_in_place, snap_setup, snap_teardown),
        cmocka_unit_test_setup_teardown(test_removed_and_drained_get_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_carried_over, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
