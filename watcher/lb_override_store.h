/*
 * Cluster-scope override writes (struct lb_store of lb_update.h) over the
 * watcher's etcd connection: put_override() PUTs
 * <prefix>pools/<pool>/overrides/<id> with the override as JSON, or DELETEs
 * the key when the override is NULL or changes nothing.  The write goes to
 * the watcher's current endpoint and, if etcd cannot be reached there, to
 * each other endpoint once.  The change reaches every lbd replica, this one
 * included, through the watch.
 */
#ifndef LB_OVERRIDE_STORE_H
#define LB_OVERRIDE_STORE_H

#include "lb_etcd_http.h"
#include "lb_update.h"

#include <stddef.h>
#include <stdint.h>

struct lb_override_store;

struct lb_override_store_config {
    struct lb_etcd_http *http;
    const char *prefix;     /* normalised; copied */
    char *const *endpoints; /* owned by the caller, outlive the store */
    size_t n_endpoints;
    const size_t *current_endpoint; /* the caller's index of the endpoint in use */
    int64_t timeout_ms;             /* per attempt */
};

int lb_override_store_new(const struct lb_override_store_config *cfg,
                          struct lb_override_store **out);
/* Cancels writes in flight; each one's done callback runs with -ECANCELED. */
void lb_override_store_free(struct lb_override_store *s);
/* The struct lb_store to hand to the balancer. */
struct lb_store lb_override_store_iface(struct lb_override_store *s);

#endif
