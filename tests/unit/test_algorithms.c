/*
 * Every balancing algorithm on snapshots built directly (snapshot_fixture.h):
 * distribution for weights 1,2,3,4, leastconn under uneven connection
 * lengths, the Maglev disruption bound, retries and max_conns, and weight
 * and eligibility changes in place through set_weight.  Deterministic but
 * for p2c's own generator: a fixed-seed generator drives the simulated
 * clients.
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
#include "snapshot_fixture.h"

#define PICKS 100000

static uint64_t rng_state;

static uint64_t rnd(void)
{
    return test_rng_next(&rng_state);
}

static int setup(void **state)
{
    static struct snap_fixture f;

    rng_state = 0x1234567887654321ULL;
    snap_fixture_init(&f, LB_ALGO_WRR);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    snap_fixture_free(*state);
    return 0;
}

static struct lb_backend *pick_for(struct snap_fixture *f, const struct sockaddr *client)
{
    struct lb_pick p = {.client = client};

    return snap_fixture_pick(f, &p);
}

static void random_client(struct sockaddr_in *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = (uint32_t)rnd();
    sa->sin_port = htons((uint16_t)(rnd() | 1024));
}

/*
 * Runs PICKS new connections while keeping `concurrency` open ones: each
 * step closes a random open connection first (0 = connections close at
 * once).  Returns the share of picks per backend index (by id order).
 */
static void simulate_n(struct snap_fixture *f, int picks, size_t concurrency, double share[4])
{
    struct lb_backend **open = calloc(concurrency ? concurrency : 1, sizeof(*open));
    size_t n_open = 0;
    int count[4] = {0};

    assert_non_null(open);
    for (int i = 0; i < picks; i++) {
        struct sockaddr_in client;
        struct lb_backend *b;

        if (concurrency && n_open == concurrency) {
            size_t k = rnd() % n_open;

            open[k]->active--;
            open[k] = open[--n_open];
        }
        random_client(&client);
        b = pick_for(f, (struct sockaddr *)&client);
        assert_non_null(b);
        count[b->id[0] - 'a']++;
        if (concurrency) {
            b->active++;
            open[n_open++] = b;
        }
    }
    for (size_t k = 0; k < n_open; k++)
        open[k]->active--;
    free(open);
    for (int i = 0; i < 4; i++)
        share[i] = (double)count[i] / picks;
}

static void simulate(struct snap_fixture *f, size_t concurrency, double share[4])
{
    simulate_n(f, PICKS, concurrency, share);
}

static void assert_weighted_1234(const char *algo, const double share[4])
{
    for (int i = 0; i < 4; i++) {
        double expect = (i + 1) / 10.0;
        double err = share[i] - expect;

        if (err < 0)
            err = -err;
        print_message("%s: backend %c share %.4f (expected %.2f)\n", algo, 'a' + i, share[i],
                      expect);
        if (err > 0.02 * expect)
            fail_msg("%s: share of backend %c is %.4f, more than 2%% off %.2f", algo, 'a' + i,
                     share[i], expect);
    }
}

static void load_1234(struct snap_fixture *f, enum lb_algorithm a)
{
    snap_fixture_set_algorithm(f, a);
    snap_fixture_add(f, "a", 1);
    snap_fixture_add(f, "b", 2);
    snap_fixture_add(f, "c", 3);
    snap_fixture_add(f, "d", 4);
    snap_fixture_build(f);
}

static void test_wrr_weights(void **state)
{
    struct snap_fixture *f = *state;
    double share[4];

    load_1234(f, LB_ALGO_WRR);
    assert_string_equal(f->snap->algo->name, "wrr");
    simulate(f, 0, share);
    assert_weighted_1234("wrr", share);
}

static void test_leastconn_weights(void **state)
{
    struct snap_fixture *f = *state;
    double share[4];

    load_1234(f, LB_ALGO_LEASTCONN);
    assert_string_equal(f->snap->algo->name, "leastconn");
    simulate(f, 1000, share);
    assert_weighted_1234("leastconn", share);
}

static void test_p2c_weights(void **state)
{
    struct snap_fixture *f = *state;
    double share[4];

    load_1234(f, LB_ALGO_P2C);
    assert_string_equal(f->snap->algo->name, "p2c");
    /* p2c draws from a randomly seeded generator: 1M picks keep the
     * sampling error (about 0.03 points) far inside the 2% bound. */
    simulate_n(f, 10 * PICKS, 1000, share);
    assert_weighted_1234("p2c (1000 open)", share);
    simulate_n(f, 10 * PICKS, 0, share);
    assert_weighted_1234("p2c (idle)", share);
}

static void test_maglev_weights(void **state)
{
    struct snap_fixture *f = *state;
    double share[4];

    load_1234(f, LB_ALGO_MAGLEV);
    assert_string_equal(f->snap->algo->name, "maglev");
    simulate(f, 0, share);
    assert_weighted_1234("maglev", share);
}

/*
 * Leastconn with uneven connection lengths: backend "a" holds its
 * connections ten times longer than the others.  Equal weights, so the
 * open connections must stay level: "a" gets far fewer new connections,
 * and no backend ever has more than one connection above another.
 */
static void test_leastconn_uneven_lengths(void **state)
{
    struct snap_fixture *f = *state;
    struct {
        struct lb_backend *b;
        int ends_at;
    } open[4096];
    size_t n_open = 0;
    int count[3] = {0};

    snap_fixture_set_algorithm(f, LB_ALGO_LEASTCONN);
    snap_fixture_add(f, "a", 100);
    snap_fixture_add(f, "b", 100);
    snap_fixture_add(f, "c", 100);
    snap_fixture_build(f);
    for (int t = 0; t < 30000; t++) {
        struct lb_backend *b;
        uint64_t lo = UINT64_MAX, hi = 0;

        for (size_t k = 0; k < n_open;) {
            if (open[k].ends_at <= t) {
                open[k].b->active--;
                open[k] = open[--n_open];
            } else {
                k++;
            }
        }
        b = pick_for(f, NULL);
        count[b->id[0] - 'a']++;
        b->active++;
        assert_true(n_open < 4096);
        open[n_open].b = b;
        open[n_open].ends_at = t + (b->id[0] == 'a' ? 300 : 30);
        n_open++;
        for (size_t i = 0; i < f->snap->n_eligible; i++) {
            uint64_t a = lb_snapshot_eligible_backend(f->snap, i)->active;

            lo = a < lo ? a : lo;
            hi = a > hi ? a : hi;
        }
        assert_true(hi - lo <= 1);
    }
    print_message("leastconn uneven: a=%d b=%d c=%d\n", count[0], count[1], count[2]);
    /* a's connections last 10x longer, so it must get about 1/10 of b's picks */
    assert_true(count[0] * 5 < count[1]);
    assert_true(count[0] * 5 < count[2]);
    for (size_t k = 0; k < n_open; k++)
        open[k].b->active--;
}

/* Removing one of N backends moves about 1/N of the clients, not more. */
static void test_maglev_disruption(void **state)
{
    struct snap_fixture *f = *state;
    enum { N = 10, CLIENTS = 50000 };
    static char before[CLIENTS];
    char id[8];
    int moved = 0, on_removed = 0;

    snap_fixture_set_algorithm(f, LB_ALGO_MAGLEV);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "%c%d", 'a' + i, i);
        snap_fixture_add(f, id, 100);
    }
    snap_fixture_build(f);
    rng_state = 42;
    for (int c = 0; c < CLIENTS; c++) {
        struct sockaddr_in sa;

        random_client(&sa);
        before[c] = pick_for(f, (struct sockaddr *)&sa)->id[0];
    }
    snap_fixture_remove(f, "d3");
    snap_fixture_build(f);
    rng_state = 42;
    for (int c = 0; c < CLIENTS; c++) {
        struct sockaddr_in sa;
        char now;

        random_client(&sa);
        now = pick_for(f, (struct sockaddr *)&sa)->id[0];
        assert_int_not_equal(now, 'd');
        on_removed += before[c] == 'd';
        moved += now != before[c];
    }
    print_message("maglev: %d of %d clients moved (%d were on the removed backend)\n", moved,
                  CLIENTS, on_removed);
    /* everyone on the removed backend moves; few others may (table refill) */
    assert_true(moved >= on_removed);
    assert_true(moved <= CLIENTS / N * 13 / 10);
    /* the same client always lands on the same backend */
    struct sockaddr_in sa;
    random_client(&sa);
    struct lb_backend *first = pick_for(f, (struct sockaddr *)&sa);
    for (int i = 0; i < 100; i++)
        assert_ptr_equal(pick_for(f, (struct sockaddr *)&sa), first);
}

static void test_retry_skips_tried(void **state)
{
    struct snap_fixture *f = *state;

    snap_fixture_add(f, "a", 1);
    snap_fixture_add(f, "b", 1000);
    snap_fixture_add(f, "c", 1);
    for (size_t k = 0; k < N_ALGOS; k++) {
        struct sockaddr_in sa;
        struct lb_backend *tried[2];
        struct lb_pick p = {.client = (struct sockaddr *)&sa, .tried = tried};

        snap_fixture_set_algorithm(f, test_algos[k]);
        snap_fixture_build(f);
        for (int i = 0; i < 200; i++) {
            struct lb_backend *b;

            random_client(&sa);
            p.n_tried = 0;
            tried[p.n_tried++] = snap_fixture_pick(f, &p);
            b = snap_fixture_pick(f, &p);
            assert_non_null(b);
            assert_ptr_not_equal(b, tried[0]);
            tried[p.n_tried++] = b;
            b = snap_fixture_pick(f, &p);
            assert_non_null(b);
            assert_ptr_not_equal(b, tried[0]);
            assert_ptr_not_equal(b, tried[1]);
            {
                /* every backend tried: nothing left */
                struct lb_backend *all[3] = {lb_snapshot_eligible_backend(f->snap, 0),
                                             lb_snapshot_eligible_backend(f->snap, 1),
                                             lb_snapshot_eligible_backend(f->snap, 2)};
                struct lb_pick none = {
                    .client = (struct sockaddr *)&sa, .tried = all, .n_tried = 3};

                assert_null(snap_fixture_pick(f, &none));
            }
        }
    }
}

/*
 * Pools above a few dozen backends use stride scheduling on a heap: same
 * shares, same smoothness, O(log n) per pick.
 */
static void test_wrr_large_pool(void **state)
{
    struct snap_fixture *f = *state;
    enum { N = 1000 };
    static int count[N];
    int per_weight[5] = {0};
    char id[16];

    memset(count, 0, sizeof(count));
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "n%04d", i);
        snap_fixture_add(f, id, 1 + i % 4);
    }
    snap_fixture_build(f);
    assert_int_equal(f->snap->n_eligible, N);
    /* 2500 weight units: 100 full rounds give every backend exactly its weight each round */
    for (int r = 0; r < 100; r++) {
        for (int k = 0; k < 2500; k++) {
            struct lb_backend *b = pick_for(f, NULL);

            count[atoi(b->id + 1)]++;
        }
        for (int i = 0; i < N; i++)
            assert_int_equal(count[i], (r + 1) * (1 + i % 4));
    }
    for (int i = 0; i < N; i++)
        per_weight[1 + i % 4] += count[i];
    print_message("wrr 1000 backends: weight 1..4 got %d %d %d %d picks\n", per_weight[1],
                  per_weight[2], per_weight[3], per_weight[4]);

    /* removing one backend neither restarts the cycle nor bursts */
    snap_fixture_remove(f, "n0003");
    snap_fixture_build(f);
    memset(count, 0, sizeof(count));
    for (int k = 0; k < 2496; k++)
        count[atoi(pick_for(f, NULL)->id + 1)]++;
    for (int i = 0; i < N; i++)
        assert_in_range(count[i], i == 3 ? 0 : (1 + i % 4) - 1, i == 3 ? 0 : (1 + i % 4) + 1);

    /* a new backend takes its share from now on, without a catch-up burst */
    snap_fixture_add(f, "n0003", 4);
    snap_fixture_build(f);
    memset(count, 0, sizeof(count));
    for (int k = 0; k < 2500; k++)
        count[atoi(pick_for(f, NULL)->id + 1)]++;
    assert_in_range(count[3], 3, 5);

    /* a retry skips what it tried, on the heap too */
    for (int k = 0; k < 100; k++) {
        struct lb_backend *tried[2];
        struct lb_pick p = {.tried = tried, .n_tried = 1};

        tried[0] = pick_for(f, NULL);
        tried[1] = snap_fixture_pick(f, &p);
        assert_non_null(tried[1]);
        assert_ptr_not_equal(tried[1], tried[0]);
        p.n_tried = 2;
        struct lb_backend *third = snap_fixture_pick(f, &p);
        assert_ptr_not_equal(third, tried[0]);
        assert_ptr_not_equal(third, tried[1]);
    }
}

/* Every algorithm passes over backends at the pool's max_conns. */
static void test_max_conns_skips_full_backends(void **state)
{
    struct snap_fixture *f = *state;
    char id[16];

    for (int i = 0; i < 100; i++) { /* 100 backends: wrr on its heap too */
        snprintf(id, sizeof(id), "k%03d", i);
        snap_fixture_add(f, id, 1 + i % 3);
    }
    for (size_t k = 0; k < N_ALGOS; k++) {
        struct lb_pick p = {.max_conns = 2};
        struct sockaddr_in sa;

        snap_fixture_set_algorithm(f, test_algos[k]);
        snap_fixture_build(f);
        /* all but k057 are full */
        for (size_t i = 0; i < f->snap->n_eligible; i++)
            lb_snapshot_eligible_backend(f->snap, i)->active =
                strcmp(lb_snapshot_eligible_backend(f->snap, i)->id, "k057") ? 2 : 1;
        for (int i = 0; i < 50; i++) {
            struct lb_backend *b;

            random_client(&sa);
            p.client = (struct sockaddr *)&sa;
            b = snap_fixture_pick(f, &p);
            assert_non_null(b);
            assert_string_equal(b->id, "k057");
        }
        snap_fixture_backend(f, "k057")->active = 2;
        assert_null(snap_fixture_pick(f, &p));
        for (size_t i = 0; i < f->snap->n_eligible; i++)
            lb_snapshot_eligible_backend(f->snap, i)->active = 0;
    }
}

static void test_empty_pool(void **state)
{
    struct snap_fixture *f = *state;

    for (size_t k = 0; k < N_ALGOS; k++) {
        snap_fixture_set_algorithm(f, test_algos[k]);
        snap_fixture_build(f);
        assert_null(pick_for(f, NULL));
    }
}

/*
 * Weights changed in place (an operator's weight, slow start), through
 * set_weight on the live snapshot: the shares follow without a rebuild
 * (maglev asks for one, which the next publish does).
 */
static void test_weights_changed_in_place(void **state)
{
    struct snap_fixture *f = *state;
    double share[4];

    for (size_t k = 0; k < N_ALGOS; k++) {
        const char *name = lb_algo_for(test_algos[k])->name;

        snap_fixture_free(f);
        snap_fixture_init(f, test_algos[k]);
        snap_fixture_add(f, "a", 4);
        snap_fixture_add(f, "b", 3);
        snap_fixture_add(f, "c", 2);
        snap_fixture_add(f, "d", 1);
        snap_fixture_build(f);
        simulate_n(f, PICKS / 10, 1000, share);
        snap_fixture_set_weight(f, "a", 1);
        snap_fixture_set_weight(f, "b", 2);
        snap_fixture_set_weight(f, "c", 3);
        snap_fixture_set_weight(f, "d", 4);
        simulate_n(f, test_algos[k] == LB_ALGO_P2C ? 10 * PICKS : PICKS, 1000, share);
        assert_weighted_1234(name, share);
    }
}

/*
 * Entries that are not eligible (down, drained) are never picked, by any
 * algorithm, on a snapshot built with them and after flips in place; an
 * entry that becomes eligible again is picked again.
 */
static void test_ineligible_entries_are_never_picked(void **state)
{
    struct snap_fixture *f = *state;

    for (size_t k = 0; k < N_ALGOS; k++) {
        struct sockaddr_in sa;
        int count[3];

        snap_fixture_free(f);
        snap_fixture_init(f, test_algos[k]);
        snap_fixture_add(f, "a", 100);
        snap_fixture_add_ineligible(f, "b", 500);
        snap_fixture_add(f, "c", 100);
        snap_fixture_build(f);
        assert_int_equal(f->snap->n_eligible, 2);
        memset(count, 0, sizeof(count));
        for (int i = 0; i < 3000; i++) {
            random_client(&sa);
            count[pick_for(f, (struct sockaddr *)&sa)->id[0] - 'a']++;
        }
        assert_int_equal(count[1], 0);
        assert_true(count[0] > 0 && count[2] > 0);

        snap_fixture_set_eligible(f, "b", true);
        snap_fixture_set_eligible(f, "a", false);
        assert_int_equal(f->snap->n_eligible, 2);
        memset(count, 0, sizeof(count));
        for (int i = 0; i < 3000; i++) {
            random_client(&sa);
            count[pick_for(f, (struct sockaddr *)&sa)->id[0] - 'a']++;
        }
        print_message("%s: after the flips a=%d b=%d c=%d\n", lb_algo_for(test_algos[k])->name,
                      count[0], count[1], count[2]);
        assert_int_equal(count[0], 0);
        assert_true(count[1] > count[2]); /* weight 500 against 100 */

        snap_fixture_set_eligible(f, "b", false);
        snap_fixture_set_eligible(f, "c", false);
        assert_int_equal(f->snap->n_eligible, 0);
        assert_null(pick_for(f, NULL));
    }
}

int main(void)
{
    lb_log_set_level(LB_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_wrr_weights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leastconn_weights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_p2c_weights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_maglev_weights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leastconn_uneven_lengths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_maglev_disruption, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_skips_tried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrr_large_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_conns_skips_full_backends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_weights_changed_in_place, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ineligible_entries_are_never_picked, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
