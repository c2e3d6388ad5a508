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
 * The mode is chosen by the snapshot's size (its entries, eligible or not),
 * so a health flip never switches modes.  A backend whose weight changes
 * keeps its virtual time (its pick count is rescaled to the new weight and
 * it moves in the heap, O(log n)); one that leaves the eligible set leaves
 * the heap; one that joins it starts at the current virtual time, so it
 * takes its share from now on without a catch-up burst.
 *
 * In both modes the position of backends that stay in the pool is carried
 * over to the next snapshot, so a membership change does not restart the
 * cycle and cause a burst towards the first backends.
 */
#include "algo.h"
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define WRR_SCAN_MAX 64
#define NOT_IN_HEAP  UINT32_MAX

struct wrr_state {
    size_t n;      /* entries */
    size_t heap_n; /* heap mode: eligible entries in the heap */
    bool heap_mode;
    int64_t *current; /* scan mode: per entry */
    uint64_t *picks;  /* heap mode: picks so far, in units of this weight */
    uint64_t *weight; /* heap mode: the weight picks[] is counted against */
    uint32_t *heap;   /* heap mode: entry indices, min-heap on due time, then index */
    uint32_t *pos;    /* heap mode: position of each entry in heap, or NOT_IN_HEAP */
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

        if (l < st->heap_n && heap_less(st, st->heap[l], st->heap[m]))
            m = l;
        if (r < st->heap_n && heap_less(st, st->heap[r], st->heap[m]))
            m = r;
        if (m == i)
            return;
        heap_swap(st, i, m);
        i = m;
    }
}

static void heap_up(struct wrr_state *st, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;

        if (!heap_less(st, st->heap[i], st->heap[parent]))
            return;
        heap_swap(st, i, parent);
        i = parent;
    }
}

/* The entry at heap position i changed its due time: restore the heap. */
static void heap_fix(struct wrr_state *st, size_t i)
{
    uint32_t e = st->heap[i];

    heap_up(st, i);
    heap_down(st, st->pos[e]);
}

static void heap_insert(struct wrr_state *st, uint32_t e)
{
    st->heap[st->heap_n] = e;
    st->pos[e] = (uint32_t)st->heap_n;
    st->heap_n++;
    heap_up(st, st->heap_n - 1);
}

static void heap_remove(struct wrr_state *st, uint32_t e)
{
    size_t i = st->pos[e], last = st->heap_n - 1;

    if (i != last) {
        heap_swap(st, i, last);
        st->heap_n--;
        st->pos[e] = NOT_IN_HEAP;
        heap_fix(st, i);
    } else {
        st->heap_n--;
        st->pos[e] = NOT_IN_HEAP;
    }
}

/* Virtual time now, as a fraction: the due time of the backend at the top. */
static void heap_now(const struct wrr_state *st, uint64_t *num, uint64_t *den)
{
    *num = 0;
    *den = 1;
    if (st->heap_n) {
        *num = st->picks[st->heap[0]];
        *den = st->weight[st->heap[0]];
    }
}

/* ------------------------------------------------------------- init -- */

/* Runs body with i, j set for each backend present (same object) in both sorted snapshots. */
#define WRR_FOR_EACH_KEPT(snap, prev, i, j, body)                                                  \
    do {                                                                                           \
        size_t i = 0, j = 0;                                                                       \
        while (i < (snap)->n_entries && j < (prev)->n_entries) {                                   \
            int cmp_ = strcmp((snap)->entries[i].backend->id, (prev)->entries[j].backend->id);     \
            if (cmp_ == 0) {                                                                       \
                if ((snap)->entries[i].backend == (prev)->entries[j].backend) {                    \
                    body;                                                                          \
                }                                                                                  \
                i++;                                                                               \
                j++;                                                                               \
            } else if (cmp_ < 0) {                                                                 \
                i++;                                                                               \
            } else {                                                                               \
                j++;                                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static int wrr_init(const struct lb_snapshot *snap, const struct lb_snapshot *prev, void **out)
{
    size_t n = snap->n_entries;
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
        for (size_t i = 0; i < n; i++)
            if (!snap->entries[i].weight)
                st->current[i] = 0;
    } else {
        uint64_t vt_num = 0, vt_den = 1;

        st->picks = st->data;
        st->weight = st->data + n;
        st->heap = (uint32_t *)(st->data + 2 * n);
        st->pos = st->heap + n;
        if (old && old->heap_mode)
            heap_now(old, &vt_num, &vt_den);
        for (size_t i = 0; i < n; i++) {
            st->weight[i] = snap->entries[i].weight ? snap->entries[i].weight : 1;
            st->picks[i] = UINT64_MAX; /* not carried over yet */
            st->pos[i] = NOT_IN_HEAP;
        }
        if (old && old->heap_mode)
            WRR_FOR_EACH_KEPT(snap, prev, i, j, {
                /* same virtual time, counted against the (maybe new) weight */
                if (old->pos[j] != NOT_IN_HEAP)
                    st->picks[i] = old->picks[j] * st->weight[i] / old->weight[j];
            });
        for (size_t i = 0; i < n; i++) {
            if (st->picks[i] == UINT64_MAX)
                st->picks[i] = vt_num * st->weight[i] / vt_den;
            if (snap->entries[i].weight) {
                st->heap[st->heap_n] = (uint32_t)i;
                st->pos[i] = (uint32_t)st->heap_n++;
            }
        }
        for (size_t i = st->heap_n / 2; i-- > 0;)
            heap_down(st, i);
    }
    *out = st;
    return 0;
}

static void wrr_set_weight(struct lb_snapshot *snap, size_t i, uint32_t old_weight)
{
    struct wrr_state *st = snap->algo_state;
    uint32_t w = snap->entries[i].weight;

    if (!st->heap_mode) {
        if (!w)
            st->current[i] = 0;
        return;
    }
    if (!w) {
        if (st->pos[i] != NOT_IN_HEAP)
            heap_remove(st, (uint32_t)i);
        return;
    }
    if (st->pos[i] == NOT_IN_HEAP) {
        uint64_t vt_num, vt_den;

        heap_now(st, &vt_num, &vt_den);
        st->weight[i] = w;
        st->picks[i] = vt_num * w / vt_den;
        heap_insert(st, (uint32_t)i);
        return;
    }
    st->picks[i] = st->picks[i] * w / st->weight[i];
    st->weight[i] = w;
    heap_fix(st, st->pos[i]);
}

/* ------------------------------------------------------------- pick -- */

static struct lb_backend *scan_pick(struct lb_snapshot *snap, struct wrr_state *st,
                                    const struct lb_pick *p)
{
    int64_t total = 0;
    size_t best = SIZE_MAX;

    for (size_t i = 0; i < snap->n_entries; i++) {
        const struct lb_snap_entry *e = &snap->entries[i];

        if (!e->weight || (lb_pick_filters(p) && lb_pick_skips(p, e->backend)))
            continue;
        st->current[i] += e->weight;
        total += e->weight;
        if (best == SIZE_MAX || st->current[i] > st->current[best])
            best = i;
    }
    if (best == SIZE_MAX)
        return NULL;
    st->current[best] -= total;
    return snap->entries[best].backend;
}

static struct lb_backend *heap_pick(struct lb_snapshot *snap, struct wrr_state *st,
                                    const struct lb_pick *p)
{
    uint32_t best;

    if (st->heap_n == 0)
        return NULL;
    best = st->heap[0];
    if (lb_pick_filters(p) && lb_pick_skips(p, snap->entries[best].backend)) {
        /* A retry or a full backend: the earliest due among the others (a scan). */
        bool found = false;

        for (size_t k = 0; k < st->heap_n; k++) {
            uint32_t i = st->heap[k];

            if (lb_pick_skips(p, snap->entries[i].backend))
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
    return snap->entries[best].backend;
}

static struct lb_backend *wrr_pick(struct lb_snapshot *snap, const struct lb_pick *p)
{
    struct wrr_state *st = snap->algo_state;

    return st->heap_mode ? heap_pick(snap, st, p) : scan_pick(snap, st, p);
}

static void wrr_destroy(void *state)
{
    free(state);
}

const struct lb_algo_ops lb_algo_wrr = {
    .name = "wrr",
    .init = wrr_init,
    .set_weight = wrr_set_weight,
    .pick = wrr_pick,
    .destroy = wrr_destroy,
};
