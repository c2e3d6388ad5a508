/*
 * Weighted least connections (HAProxy's leastconn): the backend with the
 * smallest (active + 1) / weight wins; the +1 makes a heavier backend win
 * among idle ones.  Ties are broken round robin by starting each scan one
 * place further, so equal backends take turns instead of the first one
 * taking every tie.
 *
 * Scores are compared as cross products, never divided: no floating point
 * on the pick path.  A pick scans the snapshot's eligible set (kept dense
 * by the pool), so a weight or health change needs no work here.
 */
#include "algo.h"
#include "pool.h"

#include <errno.h>
#include <stdlib.h>

struct leastconn_state {
    size_t next_start;
};

static int leastconn_init(const struct lb_snapshot *snap, const struct lb_snapshot *prev,
                          void **out)
{
    struct leastconn_state *st = calloc(1, sizeof(*st));

    if (!st)
        return -ENOMEM;
    *out = st;
    return 0;
}

static void leastconn_set_weight(struct lb_snapshot *snap, size_t i, uint32_t old_weight)
{
}

/* a beats b when (a.active+1)/a.weight < (b.active+1)/b.weight. */
static bool fewer(const struct lb_snap_entry *a, const struct lb_snap_entry *b)
{
    return (a->backend->active + 1) * (uint64_t)b->weight <
           (b->backend->active + 1) * (uint64_t)a->weight;
}

static struct lb_backend *leastconn_pick(struct lb_snapshot *snap, const struct lb_pick *p)
{
    struct leastconn_state *st = snap->algo_state;
    const struct lb_snap_entry *best = NULL;
    size_t n = snap->n_eligible;

    if (n == 0)
        return NULL;
    if (st->next_start >= n)
        st->next_start = 0;
    for (size_t k = 0, i = st->next_start; k < n; k++, i = i + 1 == n ? 0 : i + 1) {
        const struct lb_snap_entry *e = &snap->entries[snap->eligible[i]];

        if (lb_pick_filters(p) && lb_pick_skips(p, e->backend))
            continue;
        if (!best || fewer(e, best))
            best = e;
    }
    st->next_start = st->next_start + 1 == n ? 0 : st->next_start + 1;
    return best ? best->backend : NULL;
}

static void leastconn_destroy(void *state)
{
    free(state);
}

const struct lb_algo_ops lb_algo_leastconn = {
    .name = "leastconn",
    .init = leastconn_init,
    .set_weight = leastconn_set_weight,
    .pick = leastconn_pick,
    .destroy = leastconn_destroy,
};
