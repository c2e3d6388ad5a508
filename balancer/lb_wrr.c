/*
 * Smooth weighted round robin, nginx's algorithm
 * (ngx_http_upstream_get_peer): on every pick each candidate's current
 * weight grows by its weight, the largest wins and pays back the total.
 * Weights 5,1,1 give a,a,b,a,c,a,a: the heavy backend's turns are spread
 * out instead of bunched.
 *
 * The current weights of backends that stay in the pool are carried over
 * to the next snapshot, so a drain or a new backend does not restart the
 * cycle and cause a burst towards the first backends.
 */
#include "algo.h"
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct wrr_state {
    size_t n;
    int64_t current[]; /* one per eligible backend, same order */
};

static int wrr_init(struct lb_snapshot *snap, const struct lb_snapshot *prev)
{
    struct wrr_state *st = calloc(1, sizeof(*st) + (snap->n_eligible + 1) * sizeof(int64_t));

    if (!st)
        return -ENOMEM;
    st->n = snap->n_eligible;
    if (prev && prev->algo == &lb_algo_wrr && prev->algo_state) {
        const struct wrr_state *old = prev->algo_state;
        size_t i = 0, j = 0;

        /* Both arrays are sorted by id: merge-walk them. */
        while (i < snap->n_eligible && j < prev->n_eligible) {
            int cmp = strcmp(snap->eligible[i]->id, prev->eligible[j]->id);

            if (cmp == 0) {
                if (snap->eligible[i] == prev->eligible[j])
                    st->current[i] = old->current[j];
                i++;
                j++;
            } else if (cmp < 0) {
                i++;
            } else {
                j++;
            }
        }
    }
    snap->algo_state = st;
    return 0;
}

static struct lb_backend *wrr_pick(struct lb_snapshot *snap, const struct lb_pick *p)
{
    struct wrr_state *st = snap->algo_state;
    int64_t total = 0;
    size_t best = SIZE_MAX;

    for (size_t i = 0; i < snap->n_eligible; i++) {
        struct lb_backend *b = snap->eligible[i];

        if (p->n_tried && lb_pick_skips(p, b))
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
