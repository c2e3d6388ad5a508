/*
 * The registry: every pool of this lbd, fed by typed updates from discovery
 * (lb_update_sink) and steered through control.h.  It owns the pools and
 * turns updates into member changes.
 *
 * It is also the one publisher: whatever changed a pool (a watcher commit,
 * a health check, DNS, slow start, an operator) only marks it, and
 * lb_registry_publish() applies every pending change of every pool, then
 * tells subscribers what changed, in order.  It runs once per loop
 * iteration (an ev_prepare watcher, started when something is pending), and
 * at once at the end of a watcher commit and of an operator's change, so
 * that `lbctl drain` has taken effect when it returns.  Events wait in a
 * queue until the publish that made them true, so a subscriber never sees
 * an event with the state from before it.
 */
#ifndef LB_REGISTRY_H
#define LB_REGISTRY_H

#include "control.h"
#include "events.h"
#include "lb_update.h"
#include "pool.h"

#include <ev.h>
#include <stddef.h>

struct lb_resolver;
struct lb_addr_policy;
struct lb_proxy;

struct lb_registry {
    struct ev_loop *loop;
    struct lb_pool *pools;
    size_t n_pools;
    struct lb_store store;              /* cluster-scope writes; put_override NULL when none */
    struct lb_resolver *resolver;       /* DNS names of backends; NULL: names stay unresolved */
    struct lb_addr_policy *addr_policy; /* where backends may point; NULL: anywhere */
    struct lb_proxy *proxy;             /* the workers, told of every publish; NULL in tests */
    unsigned n_workers;                 /* counter slots per backend; 0 means 1 */
    struct lb_reaper reaper;            /* deferred frees (subscriptions) */
    struct lb_events events;            /* waiting for the next publish, and who listens */
    ev_prepare publisher;               /* runs lb_registry_publish() once per iteration */
    uint64_t updates_applied;
    uint64_t updates_ignored;  /* for pools this lbd does not serve */
    uint64_t backends_refused; /* registrations pointing where lbd must not route */
    /* lbd's hooks (NULL in tests), called with host_ud: */
    int (*upgrade)(void *ud, const char **why); /* starts an upgrade: the new pid, or -errno */
    bool (*is_ready)(void *ud);                 /* what /readyz answers */
    void *host_ud;
};

/*
 * Creates the registry with one pool per name (listen texts kept for the
 * admin API).  Returns 0, -ENOMEM, or -EINVAL for a duplicate pool name.
 */
int lb_registry_init(struct lb_registry *r, struct ev_loop *loop, size_t n_pools,
                     const char *const *names, const char *const *listens);
void lb_registry_destroy(struct lb_registry *r);

void lb_registry_set_store(struct lb_registry *r, const struct lb_store *store);

/* The sink the watcher feeds. */
struct lb_update_sink lb_registry_sink(struct lb_registry *r);

struct lb_pool *lb_registry_find_pool(struct lb_registry *r, const char *name);

/*
 * Called by the data plane when a backend's active count dropped; reports
 * LB_EVENT_DRAINED when a draining backend's last connection closed.
 */
void lb_registry_connection_closed(struct lb_registry *r, struct lb_backend *b);

/*
 * Called when health checks, ejection or DNS changed a backend: marks it
 * for the next publish and queues an event for subscribers (`detail` says
 * what changed and why; copied).  Ignored for removed backends.
 */
void lb_registry_backend_changed(struct lb_registry *r, struct lb_backend *b,
                                 enum lb_event_type type, const char *detail);

/*
 * Queues an event for subscribers, delivered after the next publish
 * (`detail` is copied; b may be NULL for pool events).  Events of one
 * backend in one publish become one (events.h).
 */
void lb_registry_notify(struct lb_registry *r, enum lb_event_type type, struct lb_pool *pool,
                        struct lb_backend *b, const char *detail);

/*
 * m's overrides changed (`layer`: "cluster override", ...): folds them into
 * its backend (lb_pool_member_changed) and, when that changed what the
 * operator asked of the backend (drain, weight, forced health), queues one
 * BACKEND_CHANGED event that says what: "drained, weight 100 -> 50 by
 * operator (cluster override)".  A change that changes nothing says
 * nothing: etcd echoing back the override this lbd already applied when
 * its write was acknowledged is not a second event.
 */
void lb_registry_member_changed(struct lb_registry *r, struct lb_pool *pool, struct lb_member *m,
                                const char *layer);

/* Something is pending: publish before the loop next blocks. */
void lb_registry_schedule_publish(struct lb_registry *r);

/* Applies every pending change of every pool, then delivers queued events. */
void lb_registry_publish(struct lb_registry *r);

/*
 * Checks b's resolved address against the address policy (lbd's own
 * listeners, --backend-networks): sets b->refused, logs and counts a
 * refusal once per address.  The caller marks b when it was already live.
 */
void lb_registry_check_address(struct lb_registry *r, struct lb_backend *b);

#endif
