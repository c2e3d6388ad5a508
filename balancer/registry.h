/*
 * The registry: every pool of this lbd, fed by typed updates from discovery
 * (lb_update_sink) and steered through control.h.  It owns the pools, turns
 * updates into member changes, publishes dirty pools on commit and tells
 * subscribers what changed.
 */
#ifndef LB_REGISTRY_H
#define LB_REGISTRY_H

#include "control.h"
#include "lb_update.h"
#include "pool.h"

#include <ev.h>
#include <stddef.h>

struct lb_subscription;
struct lb_resolver;

struct lb_registry {
    struct ev_loop *loop;
    struct lb_pool *pools;
    size_t n_pools;
    struct lb_store store; /* cluster-scope writes; put_override NULL when none */
    struct lb_resolver *resolver; /* DNS names of backends; NULL: names stay unresolved */
    struct lb_subscription *subs;
    unsigned notifying; /* > 0 while subscribers are being called */
    uint64_t updates_applied;
    uint64_t updates_ignored; /* for pools this lbd does not serve */
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
 * Called when health checks or ejection changed a backend: republishes its
 * pool and tells subscribers.  Ignored for removed backends.
 */
void lb_registry_backend_changed(struct lb_registry *r, struct lb_backend *b,
                                 enum lb_event_type type, const char *detail);

#endif
