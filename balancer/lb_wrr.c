/*
 * Smooth weighted round robin.
 *
 * Up to WRR_SCAN_MAX backends, nginx's algorithm (ngx_http_upstream_get_peer):
 * on every pick each candidate's current weight grows by its weight, the
 * largest wins and pays back the total.  Weights 5,1,1 give a,a,b,a,c,a,a:
 * the heavy backend's turns are spread out instead of bunched.  It costs a
 * scan of the pool per pick, which is nothing for a few dozen backends and
 * too much for thousands.
 *
 * Above that, earliest virtual finish time (stride scheduling without its
 * rounding): a backend of weight w picked k times so far is due at
 * (k + 1) / w, and the earliest due is next.  Times are compared as cross
 * products, exactly, so over every sum-of-weights picks each backend gets
 * exactly its weight.  A min-heap keeps the pick at O(log n).  Shares and
 * smoothness are those of nginx's algorithm; only the order within a tie
 * differs.
 *
 * In both modes the position of backends that stay in the pool is carried
 * over to the next snapshot, so a drain or a new backend does not restart
 * the cycle and cause a burst towards the first backends; a backend new to
 * the heap starts at the current virtual time, so it takes its share from
 * now on without a catch-up burst.
 */
#include "algo.h"
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define WRR_SCAN_MAX 64

struct wrr_state {
    size_t n;
    bool heap_mode;
    int64_t *current; /* scan mode: per eligible backend, same order */
    uint64_t *picks;  /* heap mode: picks so far, in units of this weight */
    uint64_t *weight; /* heap mode: the weight picks[] is counted against */
    uint32_t *heap;   /* heap mode: eligible indices, min-heap on due time, then index */
    uint32_t *pos;    /* heap mode: position of each index in heap */
    uint64_t data[];  /* storage for the arrays above */
};

/* ------------------------------------------------------------- heap -- */

/* a is due before b: (picks_a + 1) / w_a < (picks_b + 1) / w_b, ties by index. */
static bool heap_less(const struct wrr_state *st, uint32_t a, uint32_t b)
{
    uint64_t da = (st->picks[a] + 1) * st->weight[b], db = (st->picks[b] + 1) * st->weight[a];

    return da < db || (da == db && a < b);
}

static void heap_swap(struct wrr_state *st, size_t i, size_t j)
{
    uint32_t t = st->heap[i];

    st->heap[i] = st->heap[j];
    st->heap[j] = t;
    st->pos[st->heap[i]] = (uint32_t)i;
    st->pos[st->heap[j]] = (uint32_t)j;
}

static void heap_down(struct wrr_state *st, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;

        if (l < st->n && heap_less(st, st->heap[l], st->heap[m]))
            m = l;
        if (r < st->n && heap_less(st, st->heap[r], st->heap[m]))
            m = r;
        if (m == i)
            return;
        heap_swap(st, i, m);
        i = m;
    }
}

static void heap_build(struct wrr_state *st)
{
    for (size_t i = 0; i < st->n; i++) {
        st->heap[i] = (uint32_t)i;
        st->pos[i] = (uint32_t)i;
    }
    for (size_t i = st->n / 2; i-- > 0;)
        heap_down(st, i);
}

/* ------------------------------------------------------------- init -- */

/* Runs body with i, j set for each backend present (same object) in both sorted arrays. */
#define WRR_FOR_EACH_KEPT(snap, prev, i, j, body)                                              \
    do {                                                                                       \
        size_t i = 0, j = 0;                                                                   \
        while (i < (snap)->n_eligible && j < (prev)->n_eligible) {                             \
            int cmp_ = strcmp((snap)->eligible[i]->id, (prev)->eligible[j]->id);               \
            if (cmp_ == 0) {                                                                   \
                if ((snap)->eligible[i] == (prev)->eligible[j]) {                              \
                    body;                                                                      \
                }                                                                              \
                i++;                                                                           \
                j++;                                                                           \
            } else if (cmp_ < 0) {                                                             \
                i++;                                                                           \
            } else {                                                                           \
                j++;                                                                           \
            }                                                                                  \
        }                                                                                      \
    } while (0)

static uint64_t weight_of(const struct lb_backend *b)
{
    return b->weight > 0 ? (uint64_t)b->weight : 1;
}

static int wrr_init(struct lb_snapshot *snap, const struct lb_snapshot *prev)
{
    size_t n = snap->n_eligible;
    bool heap_mode = n > WRR_SCAN_MAX;
    size_t words = heap_mode ? 3 * n : n; /* picks[], weight[], heap[] + pos[] */
    struct wrr_state *st = calloc(1, sizeof(*st) + (words + 1) * sizeof(uint64_t));
    const struct wrr_state *old = NULL;

    if (!st)
        return -ENOMEM;
    st->n = n;
    st->heap_mode = heap_mode;
    if (prev && prev->algo == &lb_algo_wrr && prev->algo_state)
        old = prev->algo_state;
    if (!heap_mode) {
        st->current = (int64_t *)st->data;
        if (old && !old->heap_mode)
            WRR_FOR_EACH_KEPT(snap, prev, i, j, st->current[i] = old->current[j]);
    } else {
        /* Virtual time now: the due time of the backend at the top of the old heap. */
        uint64_t vt_num = 0, vt_den = 1;
        bool *kept = calloc(n, sizeof(*kept));

        if (!kept) {
            free(st);
            return -ENOMEM;
        }
        if (old && old->heap_mode && old->n) {
            vt_num = old->picks[old->heap[0]];
            vt_den = old->weight[old->heap[0]];
        }
        st->picks = st->data;
        st->weight = st->data + n;
        st->heap = (uint32_t *)(st->data + 2 * n);
        st->pos = st->heap + n;
        for (size_t i = 0; i < n; i++)
            st->weight[i] = weight_of(snap->eligible[i]);
        if (old && old->heap_mode)
            WRR_FOR_EACH_KEPT(snap, prev, i, j, {
                /* same virtual time, counted against the (maybe new) weight */
                st->picks[i] = old->picks[j] * st->weight[i] / old->weight[j];
                kept[i] = true;
            });
        for (size_t i = 0; i < n; i++)
            if (!kept[i])
                st->picks[i] = vt_num * st->weight[i] / vt_den;
        free(kept);
        heap_build(st);
    }
    snap->algo_state = st;
    return 0;
}

/* ------------------------------------------------------------- pick -- */

static struct lb_backend *scan_pick(struct lb_snapshot *snap, struct wrr_state *st,
                                    const struct lb_pick *p)
{
    int64_t total = 0;
    size_t best = SIZE_MAX;

    for (size_t i = 0; i < snap->n_eligible; i++) {
        struct lb_backend *b = snap->eligible[i];

        if (lb_pick_filters(p) && lb_pick_skips(p, b))
            continue;
        st->current[i] += b->weight;
        total += b->weight;
        if (best == SIZE_MAX || st->current[i] > st->current[best])
            best = i;
    }
    if (best == SIZE_MAX)
        return NULL;
    st->current[best] -= total;
    return snap->eligible[best];
}

static struct lb_backend *heap_pick(struct lb_snapshot *snap, struct wrr_state *st,
                                    const struct lb_pick *p)
{
    uint32_t best;

    if (st->n == 0)
        return NULL;
    best = st->heap[0];
    if (lb_pick_filters(p) && lb_pick_skips(p, snap->eligible[best])) {
        /* A retry or a full backend: the earliest due among the others (a scan). */
        bool found = false;

        for (uint32_t i = 0; i < st->n; i++) {
            if (lb_pick_skips(p, snap->eligible[i]))
                continue;
            if (!found || heap_less(st, i, best)) {
                best = i;
                found = true;
            }
        }
        if (!found)
            return NULL;
    }
    st->picks[best]++;
    heap_down(st, st->pos[best]);
    return snap->eligible[best];
}

static struct lb_backend *wrr_pick(struct lb_snapshot *snap, const struct lb_pick *p)
{
    struct wrr_state *st = snap->algo_state;

    return st->heap_mode ? heap_pick(snap, st, p) : scan_pick(snap, st, p);
}

static void wrr_destroy(struct lb_snapshot *snap)
{
    free(snap->algo_state);
    snap->algo_state = NULL;
}

const struct lb_algo_ops lb_algo_wrr = {
    .name = "wrr",
    .init = wrr_init,
    .pick = wrr_pick,
    .destroy = wrr_destroy,
};
