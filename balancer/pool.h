/*
 * A pool: one listener (from --pool, never from etcd) and the backends etcd
 * registers under <prefix>pools/<name>/.
 *
 * What etcd and operators say about each backend id lives in a member
 * record (the registration, the cluster override from etcd, this process's
 * local override).  Changes mark the pool dirty; lb_pool_publish() folds the
 * members into a new read-only snapshot (the list of backends plus the
 * algorithm's state) and swaps one pointer.  Sessions pick from the current
 * snapshot and then hold only a backend reference, so a swap never touches
 * an open connection.
 */
#ifndef LB_POOL_H
#define LB_POOL_H

#include "algo.h"
#include "backend.h"
#include "control.h"
#include "lb_update.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lb_registry;
struct lb_listener;

struct lb_snapshot {
    struct lb_backend **backends; /* every registered backend, sorted by id */
    size_t n_backends;
    struct lb_backend **eligible; /* those that may get new connections, sorted by id */
    size_t n_eligible;
    const struct lb_algo_ops *algo;
    void *algo_state;
};

/* The local (this process only) layer of overrides; each field optional. */
struct lb_local_override {
    bool has_drain;
    bool drain;
    bool has_weight;   /* weight set locally ... */
    bool clear_weight; /* ... or the cluster's weight override hidden locally */
    int weight;
    bool has_health;
    enum lb_health_override health;
};

struct lb_member {
    char id[LB_NAME_MAX];
    struct lb_backend *backend; /* NULL while only overrides are known */
    bool has_cluster_override;
    struct lb_override cluster_override;
    struct lb_local_override local;
};

struct lb_pool {
    char name[LB_NAME_MAX];
    char listen[LB_ADDR_MAX]; /* as given with --pool */
    struct lb_registry *registry;
    struct lb_listener *listener;
    struct lb_pool_policy policy;
    bool dirty;
    struct lb_snapshot *snap; /* never NULL after lb_pool_new() */
    struct lb_member **members; /* sorted by id */
    size_t n_members, cap_members;
    uint64_t active; /* client connections */
    uint64_t total;
    uint64_t no_backend; /* clients closed because no backend was available */
    uint64_t retries;    /* connects retried on another backend */
    bool panic;          /* too few healthy backends: spreading over all of them */
    size_t n_healthy;    /* candidates that are healthy, at the last publish */
    ev_timer ramp_timer; /* republishes while a backend is in slow start */
};

/* Returns 0 or -ENOMEM; the pool starts with an empty snapshot. */
int lb_pool_init(struct lb_pool *pool, struct lb_registry *registry, const char *name,
                 const char *listen);
void lb_pool_destroy(struct lb_pool *pool);

/* Finds a member by id, or NULL. */
struct lb_member *lb_pool_find(struct lb_pool *pool, const char *id);
/* Finds or creates a member; NULL when out of memory. */
struct lb_member *lb_pool_get_member(struct lb_pool *pool, const char *id);
/*
 * Takes m's backend out of the pool: marks it removed, stops its checks,
 * drain deadline and DNS refresh, and drops the member's reference.  Open
 * sessions keep theirs; the backend is freed with the last one.
 */
void lb_pool_retire_backend(struct lb_member *m);

/* Drops a member that has neither a backend nor any override. */
void lb_pool_forget_if_empty(struct lb_pool *pool, struct lb_member *m);

/*
 * Recomputes every backend's effective state and swaps in a new snapshot.
 * On allocation failure the old snapshot stays and the pool stays dirty
 * (returns -ENOMEM); the next publish tries again.
 */
int lb_pool_publish(struct lb_pool *pool);

/* Number of eligible backends in the current snapshot. */
size_t lb_pool_eligible(const struct lb_pool *pool);

#endif
