/*
 * What lbd can be asked and told while it runs: the surface the admin API
 * (and anything else that steers lbd) uses on the pool registry.  Nothing
 * here knows gRPC or protobuf; the admin service translates.
 *
 * Everything runs on the lbd loop.  Strings inside the info structs point
 * into the registry and stay valid until control returns to the loop: copy
 * what you keep.
 */
#ifndef LB_CONTROL_H
#define LB_CONTROL_H

#include "lb_update.h"
#include "session.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lb_registry;
struct lb_session_query;

enum lb_scope {
    LB_SCOPE_CLUSTER = 0, /* written to etcd's override key; every replica follows */
    LB_SCOPE_LOCAL = 1,   /* this process only; lost on restart */
};

enum lb_health_state { LB_HEALTH_UNKNOWN = 0, LB_HEALTH_UP = 1, LB_HEALTH_DOWN = 2 };

/*
 * A backend in one word (the admin API's BackendState, same numbers).  When
 * several apply, the first of: removed, drained / draining, unresolved,
 * refused, down, ejected, slow start, up.
 */
enum lb_backend_state {
    LB_BACKEND_UP = 1,
    LB_BACKEND_SLOW_START = 2,
    LB_BACKEND_DOWN = 3,    /* checks fail, or forced down */
    LB_BACKEND_EJECTED = 4, /* passive: consecutive failed connects */
    LB_BACKEND_DRAINING = 5,
    LB_BACKEND_DRAINED = 6,
    LB_BACKEND_REMOVED = 7,
    LB_BACKEND_UNRESOLVED = 8, /* a DNS name not resolved yet */
    LB_BACKEND_REFUSED = 9,    /* an address lbd must not route to */
};

struct lb_pool_info {
    const char *name;
    const char *listen;    /* "0.0.0.0:8080" as given with --pool */
    const char *algorithm; /* "wrr", ... */
    uint32_t backends;     /* registered */
    uint32_t eligible;     /* receive new connections now */
    uint64_t active;       /* open client connections */
    uint64_t total;        /* client connections accepted since start */
    uint64_t queued;       /* clients waiting for a backend slot now */
};

struct lb_backend_info {
    const char *pool;
    const char *id;
    const char *addr;
    const char *zone;
    uint32_t weight;           /* registered */
    uint32_t effective_weight; /* after overrides, health and slow start */
    bool has_weight_override;
    uint32_t weight_override;
    bool drain;   /* effective drain (cluster or local override) */
    bool drained; /* drain && active == 0 */
    enum lb_backend_state state;
    enum lb_health_state health;
    enum lb_health_override health_override;
    uint64_t active;
    uint64_t total;
    uint64_t connect_failures;
    uint64_t retries;   /* failed connects retried on another backend */
    uint64_t bytes_in;  /* client -> backend */
    uint64_t bytes_out; /* backend -> client */
};

typedef void (*lb_pool_info_cb)(void *ud, const struct lb_pool_info *info);
typedef void (*lb_backend_info_cb)(void *ud, const struct lb_backend_info *info);

/* Calls cb once per pool, in --pool order. */
void lb_control_list_pools(struct lb_registry *r, lb_pool_info_cb cb, void *ud);

/*
 * Calls cb once per registered backend of `pool` (NULL or "" = every pool),
 * sorted by pool then id.  Returns 0, or -ENOENT when the pool is unknown.
 */
int lb_control_list_backends(struct lb_registry *r, const char *pool, lb_backend_info_cb cb,
                             void *ud);

/* Calls cb once for pool/id.  Returns 0, or -ENOENT (unknown pool or backend). */
int lb_control_get_backend(struct lb_registry *r, const char *pool, const char *id,
                           lb_backend_info_cb cb, void *ud);

/* One operator change; fields of the override that are not named keep their value. */
enum lb_change_kind {
    LB_CHANGE_DRAIN,        /* value.drain */
    LB_CHANGE_WEIGHT,       /* value.weight, 0..LB_WEIGHT_MAX */
    LB_CHANGE_CLEAR_WEIGHT, /* back to the registered weight */
    LB_CHANGE_HEALTH,       /* value.health */
};

struct lb_change {
    enum lb_change_kind kind;
    union {
        bool drain;
        int weight;
        enum lb_health_override health;
    } value;
};

#define LB_CONTROL_PENDING 1

/*
 * Applies a change to pool/id.
 *  - LOCAL: applied before returning; returns 0; `done` is not called.
 *  - CLUSTER: the merged override is written to etcd; returns
 *    LB_CONTROL_PENDING and calls done(ud, status, message) exactly once,
 *    later, from the loop; on success the change is in effect locally by
 *    the time done runs.
 * Errors (done not called): -ENOENT unknown pool or backend, -EINVAL bad
 * value, -ENOTCONN cluster scope without an etcd store.
 */
int lb_control_change(struct lb_registry *r, const char *pool, const char *id,
                      const struct lb_change *change, enum lb_scope scope, lb_store_done_cb done,
                      void *ud);

enum lb_event_type {
    LB_EVENT_BACKEND_ADDED = 1,
    LB_EVENT_BACKEND_CHANGED = 2,
    LB_EVENT_BACKEND_REMOVED = 3,
    LB_EVENT_POLICY_CHANGED = 4,
    LB_EVENT_HEALTH_CHANGED = 5,
    LB_EVENT_DRAINED = 6, /* a draining backend's last connection closed */
};

struct lb_event {
    enum lb_event_type type;
    const char *pool;
    const char *id;                        /* NULL for policy events */
    const struct lb_backend_info *backend; /* NULL for policy events */
    int64_t unix_ms;
    const char *detail; /* short human text, may be "" */
};

typedef void (*lb_event_cb)(void *ud, const struct lb_event *ev);
struct lb_subscription;

/*
 * Calls cb for every event from now on, until lb_control_unsubscribe().
 * Callbacks run on the loop, never from inside lb_control_subscribe().
 * Returns NULL on allocation failure.  It is safe to unsubscribe from
 * inside the callback.
 */
/*
 * Starts a hitless upgrade (lbd's --upgrade-socket): returns the new
 * process's pid, or -ENOTSUP (this lbd cannot), -EBUSY (one is in
 * progress, or lbd is shutting down) or another negative errno, with *why
 * a sentence for the operator.
 */
int lb_control_upgrade(struct lb_registry *r, const char **why);

/* What /readyz says: listeners bound, first etcd sync done, not shutting down. */
bool lb_control_is_ready(struct lb_registry *r);

struct lb_subscription *lb_control_subscribe(struct lb_registry *r, lb_event_cb cb, void *ud);
void lb_control_unsubscribe(struct lb_registry *r, struct lb_subscription *s);

/*
 * Added for the status page (status_page.c): true when `pool` is in panic
 * mode (too few healthy backends: new connections spread over all of them).
 * False for an unknown pool.
 */
bool lb_control_pool_in_panic(struct lb_registry *r, const char *pool);
/*
 * For the status page: 1 while `pool` keeps new connections in lbd's zone,
 * 0 while it spills over to every zone, -1 when zone affinity is off (no
 * --zone, no zone_affinity in the policy) or the pool is unknown.
 */
int lb_control_pool_zone_local(struct lb_registry *r, const char *pool);

/*
 * Lists (kill false) or closes (kill true, access log end=killed) the open
 * sessions of pool, to backend id `backend` ("" = every backend; kill
 * needs one), on every worker; done(ud, ...) runs later on the loop with at
 * most `max` views oldest first and how many matched, or were closed.
 * Returns 0 with *q set (lb_control_sessions_cancel(*q) if the asker goes
 * away first), or -ENOENT (unknown pool or backend), -EINVAL, -EAGAIN (no
 * worker), -ENOMEM; done is then never called.
 */
int lb_control_sessions(struct lb_registry *r, const char *pool, const char *backend, bool kill,
                        size_t max, lb_session_query_done done, void *ud,
                        struct lb_session_query **q);

/* The query's done will not be called. */
void lb_control_sessions_cancel(struct lb_session_query *q);

#endif
