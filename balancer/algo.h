/*
 * Balancing algorithms sit behind one ops struct (after HAProxy's lb_*.c
 * and its lbprm hooks): the core never names an algorithm.
 *
 * An algorithm's state belongs to a pool snapshot.  init() builds it over
 * the snapshot's entries when the pool's membership or policy changes;
 * set_weight() follows one entry whose effective weight changed (health,
 * ejection, drain, an operator's weight, slow start) in O(log n) or less,
 * without allocating, so a health flip never rebuilds anything; pick() runs
 * per new connection.  An entry with weight 0 is not eligible and is never
 * picked.
 *
 * pick() does no I/O and no allocation.  It skips what lb_pick_skips()
 * names (the backends a retrying connection already failed on, and those
 * at the pool's max_conns) and returns NULL when nothing is left; it is
 * defined on every snapshot: empty, one entry, every weight 0.
 */
#ifndef LB_ALGO_H
#define LB_ALGO_H

#include "backend.h"
#include "lb_update.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct lb_snapshot;

struct lb_pick {
    const struct sockaddr *client;   /* for hashing algorithms */
    struct lb_backend *const *tried; /* backends this connection already failed on */
    size_t n_tried;
    uint64_t max_conns; /* skip backends with this many open; 0 = no cap */
};

/* True when some backend may have to be skipped (the fast paths check this). */
static inline bool lb_pick_filters(const struct lb_pick *p)
{
    return p->n_tried || p->max_conns;
}

/* True when this pick must skip b: already tried (a handful at most), or full. */
static inline bool lb_pick_skips(const struct lb_pick *p, const struct lb_backend *b)
{
    if (p->max_conns && b->active >= p->max_conns)
        return true;
    for (size_t i = 0; i < p->n_tried; i++)
        if (p->tried[i] == b)
            return true;
    return false;
}

struct lb_algo_ops {
    const char *name;
    /*
     * Builds the state for snap->entries (weights already set) into
     * *state.  `prev` is the snapshot being replaced (may be NULL, may use
     * another algorithm): carrying position over keeps shares smooth across
     * changes.  Returns 0 or -ENOMEM (nothing allocated).
     */
    int (*init)(const struct lb_snapshot *snap, const struct lb_snapshot *prev, void **state);
    /*
     * snap->entries[i].weight changed from old_weight (either may be 0).
     * Never allocates, never fails.  An algorithm that cannot follow a
     * change cheaply sets snap->algo_stale; the pool then rebuilds the state
     * once, at its next publish, and pick() stays correct meanwhile.
     */
    void (*set_weight)(struct lb_snapshot *snap, size_t i, uint32_t old_weight);
    struct lb_backend *(*pick)(struct lb_snapshot *snap, const struct lb_pick *p);
    void (*destroy)(void *state);
};

extern const struct lb_algo_ops lb_algo_wrr;
extern const struct lb_algo_ops lb_algo_leastconn;
extern const struct lb_algo_ops lb_algo_p2c;
extern const struct lb_algo_ops lb_algo_maglev;

/* The ops for a policy's algorithm. */
const struct lb_algo_ops *lb_algo_for(enum lb_algorithm algorithm);

#endif
