/*
 * A backend is one registered address of a pool, as the data plane sees it.
 *
 * Backends are reference-counted: the pool snapshot that lists a backend
 * holds one reference, and every session connected (or connecting) to it
 * holds one.  When etcd deletes the key, the backend is marked removed and
 * dropped from the next snapshot, but lives on until its last session ends
 * (nginx's zombie peers), so an open connection never loses its counters or
 * its address under it.
 *
 * The fields under "effective state" are written only when the pool
 * publishes a snapshot; readers (sessions, metrics, the admin API) never
 * compute them.
 */
#ifndef LB_BACKEND_H
#define LB_BACKEND_H

#include "control.h"
#include "health.h"
#include "lb_update.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct lb_pool;
struct lb_resolve_req;

struct lb_backend {
    unsigned refs;
    struct lb_pool *pool; /* pools live as long as the process */
    char id[LB_NAME_MAX];
    struct lb_backend_spec spec; /* as registered in etcd */
    struct sockaddr_storage sa;
    socklen_t sa_len;
    bool resolved; /* sa is valid */
    bool dns_started;              /* the address is a name, looked up by dns.c */
    struct lb_resolve_req *dns_req; /* lookup in flight */
    ev_timer dns_timer;            /* next lookup */
    bool removed;  /* gone from etcd: no new connections, freed on last release */

    /* health, written by health.c */
    enum lb_health_state health; /* from active checks */
    bool ejected;                /* passive: too many failed connects */
    struct lb_health_check check;
    ev_tstamp ramp_start;        /* slow start began (new or back up); 0 = none */

    /* effective state, recomputed when the pool publishes */
    bool drain;
    bool drained_reported; /* LB_EVENT_DRAINED sent for the current drain */
    int weight;            /* what the algorithm uses, slow start included */
    int base_weight;       /* registered or overridden, before slow start */
    bool panic_included;   /* down, but included because the pool is in panic */
    enum lb_health_override health_override;
    bool has_weight_override;
    int weight_override;
    ev_timer drain_timer;  /* drain_timeout: closes what is left */
    struct lb_session *sessions; /* open sessions, for the drain deadline */

    /* counters */
    uint64_t active;
    uint64_t total;
    uint64_t connect_failures;
    uint64_t retries;   /* failed connects here that were retried on another backend */
    uint64_t bytes_in;  /* client -> backend */
    uint64_t bytes_out; /* backend -> client */
    ev_tstamp fail_logged_at; /* connect failures are logged once a second */
    uint64_t fail_unlogged;
};

/*
 * Creates a backend with one reference (the caller's).  A numeric address
 * is resolved at once; a DNS name leaves resolved false.  Returns NULL when
 * out of memory.
 */
struct lb_backend *lb_backend_new(struct lb_pool *pool, const char *id,
                                  const struct lb_backend_spec *spec);
void lb_backend_ref(struct lb_backend *b);
void lb_backend_unref(struct lb_backend *b);

/* True when the backend may receive new connections at all (registered,
 * resolved, not drained, weight > 0, not forced down). */
bool lb_backend_is_candidate(const struct lb_backend *b);

/* True when checks, ejection and the operator's override say it is healthy. */
bool lb_backend_is_healthy(const struct lb_backend *b);

/* True when it is in the current snapshot's eligible set. */
bool lb_backend_is_eligible(const struct lb_backend *b);

/* Fills an info record for the admin API and metrics (strings point into b). */
void lb_backend_info(const struct lb_backend *b, struct lb_backend_info *out);

#endif
