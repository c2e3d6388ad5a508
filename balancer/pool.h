/*
 * A pool: one listener (from --pool, never from etcd) and the backends etcd
 * registers under <prefix>pools/<name>/.
 *
 * What etcd and operators say about each backend id lives in a member
 * record (the registration, the cluster override from etcd, this process's
 * local override).  The member owns its backend: lb_pool_attach_backend()
 * is the one place a backend starts its life (checks, DNS), and
 * lb_pool_retire_backend() the one place it ends (every watcher and timer
 * stopped, nothing can start one again); sessions may hold it a while
 * longer, by reference.
 *
 * What new connections see is the pool's snapshot: one entry per
 * registered backend with its effective weight (0: not eligible), the
 * counts that decide panic mode, and the algorithm's state.  Readers
 * (pick, metrics, the admin API) never compute effective state; only
 * lb_pool_publish() writes it, and only into the snapshot.
 *
 * Every change goes through one publish path.  A change of one backend
 * (health, ejection, DNS, override, registered weight) marks it; a change
 * of membership or policy asks for a rebuild.  lb_pool_publish() then
 * applies the marks through the algorithm's incremental hook (O(log n) per
 * backend, no allocation, cannot fail), or builds a new snapshot once for
 * the whole batch and swaps one pointer (on allocation failure the old one
 * stays and the pool stays dirty).  The registry calls it once per loop
 * iteration, and at once for operator changes and watcher commits.
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

struct lb_snap_entry {
    struct lb_backend *backend; /* one reference */
    uint32_t weight;            /* effective weight, slow start included; 0 = not eligible */
    uint32_t eligible_pos;      /* index in snapshot->eligible while weight > 0 */
    bool candidate;             /* registered, resolved, undrained, weight > 0, not forced down */
    bool healthy;               /* checks, ejection and the operator's override say healthy */
    bool ramping;               /* in slow start, below its full weight */
    bool local;                 /* in lbd's own zone (never when lbd has no zone) */
};

struct lb_snapshot {
    struct lb_snap_entry *entries; /* every registered backend, sorted by id */
    size_t n_entries;
    uint32_t *eligible; /* indices of entries with weight > 0, in no particular order */
    size_t n_eligible;
    size_t n_candidates;
    size_t n_healthy; /* candidates that are healthy */
    size_t n_ramping;
    bool panic;              /* too few healthy candidates: all candidates are eligible */
    size_t n_local;          /* entries in lbd's own zone */
    size_t n_local_eligible; /* ... of which healthy candidates */
    bool zone_local;         /* zone affinity holds: entries of other zones get weight 0 */
    const struct lb_algo_ops *algo;
    void *algo_state;
    bool algo_stale; /* the algorithm asked for its state to be rebuilt */
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
    bool accept_proxy;        /* --pool ...,accept-proxy: clients start with a PROXY header */
    struct lb_registry *registry;
    struct lb_pool_policy policy;
    char zone[LB_ZONE_MAX];     /* lbd's zone (--zone); "" = no zone awareness */
    struct lb_snapshot *snap;   /* never NULL after lb_pool_init() */
    bool rebuild;               /* membership or policy changed since the last publish */
    bool ramp_due;              /* slow start weights to step up */
    struct lb_backend *marked;  /* backends to re-evaluate (each holds a reference) */
    struct lb_member **members; /* sorted by id */
    size_t n_members, cap_members;
    uint32_t *changed; /* entries whose weight changed in this publish (for the workers) */
    size_t n_changed, cap_changed;
    bool changed_lost;      /* out of memory recording them: the workers get the whole snapshot */
    uint64_t rebuilds;      /* snapshots built (membership and policy changes) */
    uint64_t updates;       /* in-place publishes (health, weight, drain changes) */
    double rebuild_seconds; /* loop time spent building snapshots */
    double update_seconds;  /* loop time spent publishing in place */
    ev_timer ramp_timer;    /* steps slow start up while a backend ramps */
};

/* Returns 0 or -ENOMEM; the pool starts with an empty snapshot. */
int lb_pool_init(struct lb_pool *pool, struct lb_registry *registry, const char *name,
                 const char *listen);
/* Retires every backend and frees the members and the snapshot. */
void lb_pool_destroy(struct lb_pool *pool);

/* Finds a member by id, or NULL. */
struct lb_member *lb_pool_find(struct lb_pool *pool, const char *id);
/* Finds or creates a member; NULL when out of memory. */
struct lb_member *lb_pool_get_member(struct lb_pool *pool, const char *id);
/* Drops a member that has neither a backend nor any override. */
void lb_pool_forget_if_empty(struct lb_pool *pool, struct lb_member *m);

/*
 * Gives m a new backend for `spec` (a new registration or a new address):
 * starts its checks and DNS, retires the one it replaces (whose open
 * sessions finish on their own) and asks for a rebuild.  Returns the
 * backend, or NULL when out of memory (m is unchanged).
 */
struct lb_backend *lb_pool_attach_backend(struct lb_pool *pool, struct lb_member *m,
                                          const struct lb_backend_spec *spec);
/*
 * b's DNS name now resolves to another address: b is replaced by a new
 * backend at `sa` (an address never changes under a published backend:
 * workers read it without a lock, as Envoy's hosts), and retired; its
 * sessions finish on their own.  Returns the new backend (already
 * resolved, its DNS marked started), or NULL (out of memory, or b is no
 * longer its member's backend).
 */
struct lb_backend *lb_pool_readdress(struct lb_pool *pool, struct lb_backend *b,
                                     const struct sockaddr *sa, socklen_t len);

/*
 * Takes m's backend out of the pool: retires it (lb_backend_retire) and
 * drops the member's reference; asks for a rebuild.  No-op without one.
 */
void lb_pool_retire_backend(struct lb_pool *pool, struct lb_member *m);

/*
 * m's overrides changed: folds registration, cluster and local overrides
 * into its backend and marks it.
 */
void lb_pool_member_changed(struct lb_pool *pool, struct lb_member *m);

/* b's health, ejection, address or registration changed: re-evaluate it. */
void lb_pool_mark(struct lb_pool *pool, struct lb_backend *b);

/* The policy changed: restart checks and rebuild with the new algorithm. */
void lb_pool_policy_changed(struct lb_pool *pool);

/* True when a publish has something to do. */
bool lb_pool_is_dirty(const struct lb_pool *pool);

typedef void (*lb_backend_visit_cb)(void *ud, struct lb_backend *b);

/*
 * Applies what changed since the last publish (see the file comment).
 * `visit`, when not NULL, is called for every backend re-evaluated (every
 * backend after a rebuild), after the new state is in place.  Returns 0,
 * or -ENOMEM when a rebuild failed: the old snapshot stays in use, its
 * marked backends are still re-evaluated, and the pool stays dirty.
 */
int lb_pool_publish(struct lb_pool *pool, lb_backend_visit_cb visit, void *ud);

/* Picks a backend for a new connection from the current snapshot, or NULL. */
static inline struct lb_backend *lb_pool_pick(struct lb_pool *pool, const struct lb_pick *p)
{
    return pool->snap->algo->pick(pool->snap, p);
}

/*
 * A worker's copy of a snapshot: entries[0..n) (backends referenced anew,
 * weights as given), the eligible set, and `algo` initialised with `prev`
 * (the copy it replaces, may be NULL).  NULL when out of memory.
 */
struct lb_snapshot *lb_snapshot_copy(const struct lb_snap_entry *entries, size_t n,
                                     const struct lb_algo_ops *algo,
                                     const struct lb_snapshot *prev);

/* The algorithm asked for a fresh state: rebuild it (stays stale when out of memory). */
void lb_snapshot_refresh_algo(struct lb_snapshot *s);

/* Frees a snapshot: the algorithm's state and the entries' references.  NULL is a no-op. */
void lb_snapshot_free(struct lb_snapshot *s);

/*
 * Moves entry i of s to weight w (0: not eligible): the eligible set and the
 * algorithm (its set_weight hook) follow.  No allocation; cannot fail.  The
 * publisher's one way to change an entry, also used by test fixtures that
 * build snapshots directly.
 */
void lb_snapshot_set_weight(struct lb_snapshot *s, size_t i, uint32_t w);

/* The k-th eligible backend of s (k < s->n_eligible), in no particular order. */
static inline struct lb_backend *lb_snapshot_eligible_backend(const struct lb_snapshot *s, size_t k)
{
    return s->entries[s->eligible[k]].backend;
}

/* Number of eligible backends in the current snapshot. */
size_t lb_pool_eligible(const struct lb_pool *pool);
/* True when the pool spreads over unhealthy backends too (panic mode). */
bool lb_pool_in_panic(const struct lb_pool *pool);
/* True when zone affinity is on for this pool: lbd has a zone and the policy a threshold. */
bool lb_pool_zone_aware(const struct lb_pool *pool);
/* True when new connections stay in lbd's zone (only meaningful when zone aware). */
bool lb_pool_zone_local(const struct lb_pool *pool);

/* b's entry in its pool's current snapshot, or NULL (removed, not yet published). */
const struct lb_snap_entry *lb_pool_entry_of(const struct lb_backend *b);

#endif
