/*
 * Power of two choices: draw two backends at random, each with a
 * probability proportional to its weight, and keep the one with fewer
 * active connections per unit of weight (Envoy's least_request with
 * choice_count 2).  It follows load like leastconn without scanning the
 * whole pool, so it stays O(log n) for pools of 10,000 backends.
 *
 * init() builds the prefix sums of the weights; a draw is a binary search.
 * The random generator is xorshift64*, seeded per snapshot: good enough for
 * spreading load, no system call and no lock on the pick path.
 */
#include "algo.h"
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

struct p2c_state {
    uint64_t rng;
    uint64_t total;
    uint64_t prefix[]; /* prefix[i] = sum of weights of eligible[0..i] */
};

static uint64_t next_random(struct p2c_state *st)
{
    uint64_t x = st->rng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    st->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static int p2c_init(struct lb_snapshot *snap, const struct lb_snapshot *prev)
{
    struct p2c_state *st = calloc(1, sizeof(*st) + (snap->n_eligible + 1) * sizeof(uint64_t));
    struct timespec ts;

    if (!st)
        return -ENOMEM;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    st->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uintptr_t)st;
    if (prev && prev->algo == &lb_algo_p2c && prev->algo_state)
        st->rng ^= ((const struct p2c_state *)prev->algo_state)->rng;
    if (!st->rng)
        st->rng = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < snap->n_eligible; i++) {
        st->total += (uint64_t)snap->eligible[i]->weight;
        st->prefix[i] = st->total;
    }
    snap->algo_state = st;
    return 0;
}

/* Index of the backend owning point r in [0, total). */
static size_t draw(const struct lb_snapshot *snap, const struct p2c_state *st, uint64_t r)
{
    size_t lo = 0, hi = snap->n_eligible - 1;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (st->prefix[mid] > r)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* a beats b when a.active/a.weight < b.active/b.weight; a tie keeps a. */
static bool not_busier(const struct lb_backend *a, const struct lb_backend *b)
{
    return a->active * (uint64_t)b->weight <= b->active * (uint64_t)a->weight;
}

static struct lb_backend *p2c_pick(struct lb_snapshot *snap, const struct lb_pick *p)
{
    struct p2c_state *st = snap->algo_state;
    struct lb_backend *a = NULL, *b = NULL;

    if (snap->n_eligible == 0 || st->total == 0)
        return NULL;
    /* A few draws find untried backends; after that, scan (retries only). */
    for (int i = 0; i < 8 && !b; i++) {
        struct lb_backend *c = snap->eligible[draw(snap, st, next_random(st) % st->total)];

        if (lb_pick_filters(p) && lb_pick_skips(p, c))
            continue;
        if (!a)
            a = c;
        else if (c != a || snap->n_eligible == 1)
            b = c;
    }
    if (!a) {
        for (size_t i = 0; i < snap->n_eligible && !a; i++)
            if (!lb_pick_skips(p, snap->eligible[i]))
                a = snap->eligible[i];
        return a;
    }
    if (!b)
        return a;
    return not_busier(a, b) ? a : b;
}

static void p2c_destroy(struct lb_snapshot *snap)
{
    free(snap->algo_state);
    snap->algo_state = NULL;
}

const struct lb_algo_ops lb_algo_p2c = {
    .name = "p2c",
    .init = p2c_init,
    .pick = p2c_pick,
    .destroy = p2c_destroy,
};
