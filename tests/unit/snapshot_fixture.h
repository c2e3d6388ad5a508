/*
 * A pool fixture for the algorithm tests: snapshots built directly, the
 * way lb_pool_publish() builds them, without the registry, the update
 * sink, health checks or a loop.
 *
 * The fixture owns backends made with lb_backend_new() on a dummy pool
 * (a name and a policy, no registry: nothing starts, nothing needs a
 * loop), kept in id order like a pool's members, each with a weight and
 * an eligible flag.  snap_fixture_build() makes the next snapshot of
 * them, as a rebuild does: one entry per backend with its weight (0 when
 * not eligible), the eligible[] index, and the algorithm's state from
 * ops->init(snap, prev, &state) with the snapshot it replaces as `prev`,
 * so what an algorithm carries over across rebuilds is tested too.
 * snap_fixture_set_weight() and snap_fixture_set_eligible() change one
 * entry of the current snapshot in place through ops->set_weight, as a
 * health flip, a drain or an operator's weight does, and rebuild the
 * algorithm's state when it asks for that (algo_stale), as the next
 * publish would.
 *
 * Tests touch the backends directly (their `active` counts stand for open
 * connections).  snap_fixture_free() releases everything; ASan checks
 * that nothing is left.  A fixture must not move in memory once
 * initialised (its backends point at its pool).
 */
#ifndef LB_TEST_SNAPSHOT_FIXTURE_H
#define LB_TEST_SNAPSHOT_FIXTURE_H

#include "algo.h"
#include "pool.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SNAP_FIXTURE_MAX 10000 /* backends in one fixture */

struct snap_fixture_member {
    struct lb_backend *backend; /* the fixture's reference */
    uint32_t weight;            /* as registered (or set by the operator) */
    bool eligible;              /* up and undrained: its entry gets `weight`, else 0 */
};

struct snap_fixture {
    struct lb_pool pool;                 /* dummy; pool.snap is the current snapshot */
    enum lb_algorithm algorithm;         /* of the next build */
    struct snap_fixture_member *members; /* sorted by id */
    size_t n_members, cap_members;
    unsigned added;           /* backends added so far (their ports) */
    struct lb_snapshot *snap; /* the current snapshot, NULL before the first build */
};

/* An empty fixture whose snapshots use `algorithm`. */
void snap_fixture_init(struct snap_fixture *f, enum lb_algorithm algorithm);
/* Frees the snapshot and every backend. */
void snap_fixture_free(struct snap_fixture *f);

/*
 * Adds backend `id` (not yet listed) with `weight` (0..LB_WEIGHT_MAX; 0 is
 * never eligible) for the next build; returns it.  Its address is
 * 127.0.0.1 with a port of its own, so every backend resolves.
 */
struct lb_backend *snap_fixture_add(struct snap_fixture *f, const char *id, uint32_t weight);
/* Adds a backend that is registered but not eligible (down, drained). */
struct lb_backend *snap_fixture_add_ineligible(struct snap_fixture *f, const char *id,
                                               uint32_t weight);
/* Removes backend `id` (which must be listed) from the next build; it is retired at once. */
void snap_fixture_remove(struct snap_fixture *f, const char *id);
/* The algorithm of the next build. */
void snap_fixture_set_algorithm(struct snap_fixture *f, enum lb_algorithm algorithm);

/*
 * Builds the next snapshot of the members with the current algorithm,
 * `prev` being the snapshot it replaces (then freed).  Returns it.
 */
struct lb_snapshot *snap_fixture_build(struct snap_fixture *f);

/* Backend `id` of the fixture, or NULL. */
struct lb_backend *snap_fixture_backend(const struct snap_fixture *f, const char *id);

/*
 * In place, on the current snapshot: backend `id`'s weight becomes
 * `weight` (its entry's too while eligible), or its eligibility changes.
 * The eligible set and the algorithm follow (ops->set_weight).
 */
void snap_fixture_set_weight(struct snap_fixture *f, const char *id, uint32_t weight);
void snap_fixture_set_eligible(struct snap_fixture *f, const char *id, bool eligible);

/* pick() on the current snapshot; p may be NULL (no client, nothing to skip). */
struct lb_backend *snap_fixture_pick(struct snap_fixture *f, const struct lb_pick *p);

#endif
