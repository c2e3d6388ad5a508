/*
 * Every balancing algorithm through the real pool model: distribution for
 * weights 1,2,3,4, leastconn under uneven connection lengths, the Maglev
 * disruption bound.  Deterministic: a fixed-seed generator drives the
 * simulated clients.
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
#include "registry.h"

#define PICKS 100000

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

struct fixture {
    struct lb_registry registry;
    struct lb_update_sink sink;
    struct lb_pool *pool;
};

static int setup(void **state)
{
    static struct fixture f;
    const char *names[] = {"p"}, *listens[] = {"127.0.0.1:1"};

    memset(&f, 0, sizeof(f));
    rng_state = 0x1234567887654321ULL;
    assert_int_equal(lb_registry_init(&f.registry, NULL, 1, names, listens), 0);
    f.sink = lb_registry_sink(&f.registry);
    f.pool = lb_registry_find_pool(&f.registry, "p");
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    lb_registry_destroy(&f->registry);
    return 0;
}

static void set_algorithm(struct fixture *f, enum lb_algorithm a)
{
    struct lb_update u = {.kind = LB_UPDATE_POLICY_PUT, .pool = "p"};

    lb_pool_policy_defaults(&u.u.policy);
    u.u.policy.algorithm = a;
    f->sink.apply(f->sink.ctx, &u);
}

static void put(struct fixture *f, const char *id, int weight)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "p", .id = id};

    snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "127.0.0.1:%d",
             1000 + (int)(strlen(id) * 31 + (unsigned char)id[strlen(id) - 1]));
    u.u.backend.weight = weight;
    f->sink.apply(f->sink.ctx, &u);
}

static void del(struct fixture *f, const char *id)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_DELETE, .pool = "p", .id = id};

    f->sink.apply(f->sink.ctx, &u);
}

static struct lb_backend *pick_for(struct fixture *f, const struct sockaddr *client)
{
    struct lb_pick p = {.client = client};

    return f->pool->snap->algo->pick(f->pool->snap, &p);
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
static void simulate_n(struct fixture *f, int picks, size_t concurrency, double share[4])
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

static void simulate(struct fixture *f, size_t concurrency, double share[4])
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

static void load_1234(struct fixture *f, enum lb_algorithm a)
{
    set_algorithm(f, a);
    put(f, "a", 1);
    put(f, "b", 2);
    put(f, "c", 3);
    put(f, "d", 4);
    f->sink.commit(f->sink.ctx);
}

static void test_wrr_weights(void **state)
{
    struct fixture *f = *state;
    double share[4];

    load_1234(f, LB_ALGO_WRR);
    assert_string_equal(f->pool->snap->algo->name, "wrr");
    simulate(f, 0, share);
    assert_weighted_1234("wrr", share);
}

static void test_leastconn_weights(void **state)
{
    struct fixture *f = *state;
    double share[4];

    load_1234(f, LB_ALGO_LEASTCONN);
    assert_string_equal(f->pool->snap->algo->name, "leastconn");
    simulate(f, 1000, share);
    assert_weighted_1234("leastconn", share);
}

static void test_p2c_weights(void **state)
{
    struct fixture *f = *state;
    double share[4];

    load_1234(f, LB_ALGO_P2C);
    assert_string_equal(f->pool->snap->algo->name, "p2c");
    /* p2c draws from a randomly seeded generator: 1M picks keep the
     * sampling error (about 0.03 points) far inside the 2% bound. */
    simulate_n(f, 10 * PICKS, 1000, share);
    assert_weighted_1234("p2c (1000 open)", share);
    simulate_n(f, 10 * PICKS, 0, share);
    assert_weighted_1234("p2c (idle)", share);
}

static void test_maglev_weights(void **state)
{
    struct fixture *f = *state;
    double share[4];

    load_1234(f, LB_ALGO_MAGLEV);
    assert_string_equal(f->pool->snap->algo->name, "maglev");
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
    struct fixture *f = *state;
    struct {
        struct lb_backend *b;
        int ends_at;
    } open[4096];
    size_t n_open = 0;
    int count[3] = {0};

    set_algorithm(f, LB_ALGO_LEASTCONN);
    put(f, "a", 100);
    put(f, "b", 100);
    put(f, "c", 100);
    f->sink.commit(f->sink.ctx);
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
        for (size_t i = 0; i < f->pool->snap->n_eligible; i++) {
            uint64_t a = lb_snapshot_eligible_backend(f->pool->snap, i)->active;

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
    struct fixture *f = *state;
    enum { N = 10, CLIENTS = 50000 };
    static char before[CLIENTS];
    char id[8];
    int moved = 0, on_removed = 0;

    set_algorithm(f, LB_ALGO_MAGLEV);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "%c%d", 'a' + i, i);
        put(f, id, 100);
    }
    f->sink.commit(f->sink.ctx);
    rng_state = 42;
    for (int c = 0; c < CLIENTS; c++) {
        struct sockaddr_in sa;

        random_client(&sa);
        before[c] = pick_for(f, (struct sockaddr *)&sa)->id[0];
    }
    del(f, "d3");
    f->sink.commit(f->sink.ctx);
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
    struct fixture *f = *state;
    enum lb_algorithm algos[] = {LB_ALGO_WRR, LB_ALGO_LEASTCONN, LB_ALGO_P2C, LB_ALGO_MAGLEV};

    put(f, "a", 1);
    put(f, "b", 1000);
    put(f, "c", 1);
    for (size_t k = 0; k < sizeof(algos) / sizeof(algos[0]); k++) {
        struct sockaddr_in sa;
        struct lb_backend *tried[2];
        struct lb_pick p = {.client = (struct sockaddr *)&sa, .tried = tried};

        set_algorithm(f, algos[k]);
        f->sink.commit(f->sink.ctx);
        for (int i = 0; i < 200; i++) {
            struct lb_backend *b;

            random_client(&sa);
            p.n_tried = 0;
            tried[p.n_tried++] = f->pool->snap->algo->pick(f->pool->snap, &p);
            b = f->pool->snap->algo->pick(f->pool->snap, &p);
            assert_non_null(b);
            assert_ptr_not_equal(b, tried[0]);
            tried[p.n_tried++] = b;
            b = f->pool->snap->algo->pick(f->pool->snap, &p);
            assert_non_null(b);
            assert_ptr_not_equal(b, tried[0]);
            assert_ptr_not_equal(b, tried[1]);
            {
                /* every backend tried: nothing left */
                struct lb_backend *all[3] = {lb_snapshot_eligible_backend(f->pool->snap, 0),
                                             lb_snapshot_eligible_backend(f->pool->snap, 1),
                                             lb_snapshot_eligible_backend(f->pool->snap, 2)};
                struct lb_pick none = {.client = (struct sockaddr *)&sa, .tried = all,
                                       .n_tried = 3};

                assert_null(f->pool->snap->algo->pick(f->pool->snap, &none));
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
    struct fixture *f = *state;
    enum { N = 1000 };
    static int count[N];
    int per_weight[5] = {0};
    char id[16];

    memset(count, 0, sizeof(count));
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "n%04d", i);
        put(f, id, 1 + i % 4);
    }
    f->sink.commit(f->sink.ctx);
    assert_int_equal(f->pool->snap->n_eligible, N);
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
    del(f, "n0003");
    f->sink.commit(f->sink.ctx);
    memset(count, 0, sizeof(count));
    for (int k = 0; k < 2496; k++)
        count[atoi(pick_for(f, NULL)->id + 1)]++;
    for (int i = 0; i < N; i++)
        assert_in_range(count[i], i == 3 ? 0 : (1 + i % 4) - 1, i == 3 ? 0 : (1 + i % 4) + 1);

    /* a new backend takes its share from now on, without a catch-up burst */
    put(f, "n0003", 4);
    f->sink.commit(f->sink.ctx);
    memset(count, 0, sizeof(count));
    for (int k = 0; k < 2500; k++)
        count[atoi(pick_for(f, NULL)->id + 1)]++;
    assert_in_range(count[3], 3, 5);

    /* a retry skips what it tried, on the heap too */
    for (int k = 0; k < 100; k++) {
        struct lb_backend *tried[2];
        struct lb_pick p = {.tried = tried, .n_tried = 1};

        tried[0] = pick_for(f, NULL);
        tried[1] = f->pool->snap->algo->pick(f->pool->snap, &p);
        assert_non_null(tried[1]);
        assert_ptr_not_equal(tried[1], tried[0]);
        p.n_tried = 2;
        struct lb_backend *third = f->pool->snap->algo->pick(f->pool->snap, &p);
        assert_ptr_not_equal(third, tried[0]);
        assert_ptr_not_equal(third, tried[1]);
    }
}

/* Every algorithm passes over backends at the pool's max_conns. */
static void test_max_conns_skips_full_backends(void **state)
{
    struct fixture *f = *state;
    enum lb_algorithm algos[] = {LB_ALGO_WRR, LB_ALGO_LEASTCONN, LB_ALGO_P2C, LB_ALGO_MAGLEV};
    char id[16];

    for (int i = 0; i < 100; i++) { /* 100 backends: wrr on its heap too */
        snprintf(id, sizeof(id), "k%03d", i);
        put(f, id, 1 + i % 3);
    }
    for (size_t k = 0; k < sizeof(algos) / sizeof(algos[0]); k++) {
        struct lb_pick p = {.max_conns = 2};
        struct sockaddr_in sa;

        set_algorithm(f, algos[k]);
        f->sink.commit(f->sink.ctx);
        /* all but k057 are full */
        for (size_t i = 0; i < f->pool->snap->n_eligible; i++)
            lb_snapshot_eligible_backend(f->pool->snap, i)->active = strcmp(lb_snapshot_eligible_backend(f->pool->snap, i)->id, "k057")
                                                     ? 2 : 1;
        for (int i = 0; i < 50; i++) {
            struct lb_backend *b;

            random_client(&sa);
            p.client = (struct sockaddr *)&sa;
            b = f->pool->snap->algo->pick(f->pool->snap, &p);
            assert_non_null(b);
            assert_string_equal(b->id, "k057");
        }
        lb_pool_find(f->pool, "k057")->backend->active = 2;
        assert_null(f->pool->snap->algo->pick(f->pool->snap, &p));
        for (size_t i = 0; i < f->pool->snap->n_eligible; i++)
            lb_snapshot_eligible_backend(f->pool->snap, i)->active = 0;
    }
}

static void test_empty_pool(void **state)
{
    struct fixture *f = *state;
    enum lb_algorithm algos[] = {LB_ALGO_WRR, LB_ALGO_LEASTCONN, LB_ALGO_P2C, LB_ALGO_MAGLEV};

    for (size_t k = 0; k < sizeof(algos) / sizeof(algos[0]); k++) {
        set_algorithm(f, algos[k]);
        f->sink.commit(f->sink.ctx);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
