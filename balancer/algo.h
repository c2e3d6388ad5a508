/*
 * Balancing algorithms sit behind one ops struct (after HAProxy's lb_*.c):
 * the core never names an algorithm.  An algorithm's state belongs to a
 * pool snapshot: init() builds it when the snapshot is published, pick()
 * runs per new connection, destroy() frees it with the snapshot.
 *
 * pick() does no I/O and no allocation.  It chooses among
 * snap->eligible[0..n_eligible), skipping backends listed in p->tried (the
 * ones a retrying connection already failed on), and returns NULL when none
 * is left.
 */
#ifndef LB_ALGO_H
#define LB_ALGO_H

#include "lb_update.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct lb_backend;
struct lb_snapshot;

struct lb_pick {
    const struct sockaddr *client;           /* for hashing algorithms */
    struct lb_backend *const *tried;
    size_t n_tried;
};

/* True when b is one of the backends this pick must skip.  The list is a
 * handful of entries (tried and full backends of one client connection). */
static inline bool lb_pick_skips(const struct lb_pick *p, const struct lb_backend *b)
{
    for (size_t i = 0; i < p->n_tried; i++)
        if (p->tried[i] == b)
            return true;
    return false;
}

struct lb_algo_ops {
    const char *name;
    /*
     * Builds snap->algo_state for snap->eligible.  `prev` is the snapshot
     * being replaced (may be NULL, may use another algorithm): carrying
     * position over keeps shares smooth across changes.  Returns 0 or
     * -ENOMEM.
     */
    int (*init)(struct lb_snapshot *snap, const struct lb_snapshot *prev);
    struct lb_backend *(*pick)(struct lb_snapshot *snap, const struct lb_pick *p);
    void (*destroy)(struct lb_snapshot *snap);
};

extern const struct lb_algo_ops lb_algo_wrr;
extern const struct lb_algo_ops lb_algo_leastconn;
extern const struct lb_algo_ops lb_algo_p2c;
extern const struct lb_algo_ops lb_algo_maglev;

/* The ops for a policy's algorithm. */
const struct lb_algo_ops *lb_algo_for(enum lb_algorithm algorithm);

#endif
