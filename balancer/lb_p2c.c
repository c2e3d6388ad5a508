/*
 * Power of two choices: draw two backends at random, each with a
 * probability proportional to its weight, and keep the one with fewer
 * active connections per unit of weight (Envoy's least_request with
 * choice_count 2).  It follows load like leastconn without scanning the
 * whole pool, so it stays O(log n) for pools of 10,000 backends.
 *
 * The weights live in a Fenwick tree over the snapshot's entries: a draw
 * descends it in O(log n), and a weight change (health, drain, slow start)
 * updates it in O(log n); an entry of weight 0 has no mass and is never
 * drawn.
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
    size_t n;
    size_t top;      /* highest power of two <= n */
    uint64_t tree[]; /* Fenwick tree, 1-based: tree[1..n] */
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

/* Adds delta (two's complement for a decrease) to entry i's weight. */
static void tree_add(struct p2c_state *st, size_t i, uint64_t delta)
{
    for (size_t k = i + 1; k <= st->n; k += k & (~k + 1))
        st->tree[k] += delta;
}

/* The entry owning point r in [0, total): the first whose prefix sum exceeds r. */
static size_t tree_find(const struct p2c_state *st, uint64_t r)
{
    size_t pos = 0;

    for (size_t step = st->top; step; step >>= 1) {
        if (pos + step <= st->n && st->tree[pos + step] <= r) {
            pos += step;
            r -= st->tree[pos];
        }
    }
    return pos; /* 0-based entry index */
}

static int p2c_init(const struct lb_snapshot *snap, const struct lb_snapshot *prev, void **out)
{
    size_t n = snap->n_entries;
    struct p2c_state *st = calloc(1, sizeof(*st) + (n + 1) * sizeof(uint64_t));
    struct timespec ts;

    if (!st)
        return -ENOMEM;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    st->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ (uintptr_t)st;
    if (prev && prev->algo == &lb_algo_p2c && prev->algo_state)
        st->rng ^= ((const struct p2c_state *)prev->algo_state)->rng;
    if (!st->rng)
        st->rng = 0x9E3779B97F4A7C15ULL;
    st->n = n;
    for (st->top = 1; st->top * 2 <= n; st->top *= 2)
        ;
    /* Linear-time build: each node passes its sum to its parent. */
    for (size_t k = 1; k <= n; k++) {
        size_t parent = k + (k & (~k + 1));

        st->tree[k] += snap->entries[k - 1].weight;
        st->total += snap->entries[k - 1].weight;
        if (parent <= n)
            st->tree[parent] += st->tree[k];
    }
    *out = st;
    return 0;
}

static void p2c_set_weight(struct lb_snapshot *snap, size_t i, uint32_t old_weight)
{
    struct p2c_state *st = snap->algo_state;
    uint64_t delta = (uint64_t)snap->entries[i].weight - (uint64_t)old_weight;

    tree_add(st, i, delta);
    st->total += delta;
}

/* a beats b when a.active/a.weight < b.active/b.weight; a tie keeps a. */
static bool not_busier(const struct lb_snap_entry *a, const struct lb_snap_entry *b)
{
    return a->backend->active * (uint64_t)b->weight <= b->backend->active * (uint64_t)a->weight;
}

static struct lb_backend *p2c_pick(struct lb_snapshot *snap, const struct lb_pick *p)
{
    struct p2c_state *st = snap->algo_state;
    const struct lb_snap_entry *a = NULL, *b = NULL;

    if (snap->n_eligible == 0 || st->total == 0)
        return NULL;
    /* A few draws find untried backends; after that, scan (retries only). */
    for (int i = 0; i < 8 && !b; i++) {
        const struct lb_snap_entry *c = &snap->entries[tree_find(st, next_random(st) % st->total)];

        if (lb_pick_filters(p) && lb_pick_skips(p, c->backend))
            continue;
        if (!a)
            a = c;
        else if (c != a || snap->n_eligible == 1)
            b = c;
    }
    if (!a) {
        for (size_t i = 0; i < snap->n_eligible && !a; i++) {
            const struct lb_snap_entry *c = &snap->entries[snap->eligible[i]];

            if (!lb_pick_skips(p, c->backend))
                a = c;
        }
        return a ? a->backend : NULL;
    }
    if (!b)
        return a->backend;
    return not_busier(a, b) ? a->backend : b->backend;
}

static void p2c_destroy(void *state)
{
    free(state);
}

const struct lb_algo_ops lb_algo_p2c = {
    .name = "p2c",
    .init = p2c_init,
    .set_weight = p2c_set_weight,
    .pick = p2c_pick,
    .destroy = p2c_destroy,
};
