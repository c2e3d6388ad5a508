/*
 * Weighted least connections (HAProxy's leastconn): the backend with the
 * smallest (active + 1) / weight wins; the +1 makes a heavier backend win
 * among idle ones.  Ties are broken round robin by starting each scan one
 * place further, so equal backends take turns instead of the first one
 * taking every tie.
 *
 * Scores are compared as cross products, never divided: no floating point
 * on the pick path.
 */
#include "algo.h"
#include "pool.h"

#include <errno.h>
#include <stdlib.h>

struct leastconn_state {
    size_t next_start;
};

static int leastconn_init(struct lb_snapshot *snap, const struct lb_snapshot *prev)
{
    struct leastconn_state *st = calloc(1, sizeof(*st));

    if (!st)
        return -ENOMEM;
    snap->algo_state = st;
    return 0;
}

/* a beats b when (a.active+1)/a.weight < (b.active+1)/b.weight. */
static bool fewer(const struct lb_backend *a, const struct lb_backend *b)
{
    return (a->active + 1) * (uint64_t)b->weight < (b->active + 1) * (uint64_t)a->weight;
}

static struct lb_backend *leastconn_pick(struct lb_snapshot *snap, const struct lb_pick *p)
{
    struct leastconn_state *st = snap->algo_state;
    struct lb_backend *best = NULL;
    size_t n = snap->n_eligible;

    if (n == 0)
        return NULL;
    for (size_t k = 0; k < n; k++) {
        struct lb_backend *b = snap->eligible[(st->next_start + k) % n];

        if (lb_pick_filters(p) && lb_pick_skips(p, b))
            continue;
        if (!best || fewer(b, best))
            best = b;
    }
    st->next_start = (st->next_start + 1) % n;
    return best;
}

static void leastconn_destroy(struct lb_snapshot *snap)
{
    free(snap->algo_state);
    snap->algo_state = NULL;
}

const struct lb_algo_ops lb_algo_leastconn = {
    .name = "leastconn",
    .init = leastconn_init,
    .pick = leastconn_pick,
    .destroy = leastconn_destroy,
};
