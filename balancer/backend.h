/*
 * A backend is one registered address of a pool, as the data plane sees it.
 *
 * Lifecycle (one attach, one retire).  lb_backend_new() initialises every
 * watcher the backend embeds (check timer and socket, ejection timer, DNS
 * timer, drain deadline) exactly once; afterwards they are only stopped,
 * re-armed and started, never re-initialised, so an active watcher can
 * never be corrupted by a second ev_init.  lb_backend_retire() (called by
 * the pool when etcd deletes the key or the address changes) stops all of
 * them, and every function that starts one first checks `removed`: nothing
 * runs on a retired backend.  A debug build asserts, when the memory is
 * released, that no watcher is still active or pending.
 *
 * Backends are reference-counted (atomically: workers hold them too): the
 * pool's member holds one reference, each snapshot that lists it one (the
 * control loop's and each worker's), every session connected (or
 * connecting) to it one.  A retired backend is dropped from the next snapshot but lives
 * on until its last session ends (nginx's zombie peers), so an open
 * connection never loses its counters or its address under it.
 *
 * The backend holds what was said about it (registration, health, the
 * operator's overrides folded by the pool); what follows from it for new
 * connections (effective weight, eligibility) lives in the pool snapshot.
 *
 * Threads.  Everything but the fields marked otherwise belongs to the
 * control loop.  Workers read only what never changes after the backend
 * is published (id, spec.addr, sa: an address change is a new backend),
 * and touch only the atomics (refs, active, connect_failures,
 * notify_zero) and their own slot of `ws`.
 */
#ifndef LB_BACKEND_H
#define LB_BACKEND_H

#include "control.h"
#include "health.h"
#include "lb_list.h"
#include "lb_update.h"

#include <ev.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct lb_pool;
struct lb_resolve_req;

/*
 * Counters with one writer (a worker) and readers on other threads
 * (/metrics, the admin API): a relaxed load and store, no locked
 * instruction on the connection path.
 */
static inline void lb_counter_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t lb_counter_get(const _Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* A worker's own counters of one backend, summed on read (one cache line each). */
struct lb_backend_wstats {
    _Atomic uint64_t sessions; /* this worker's sessions to it now */
    _Atomic uint64_t total;
    _Atomic uint64_t connect_failures;
    _Atomic uint64_t retries;   /* failed connects here that were retried on another backend */
    _Atomic uint64_t bytes_in;  /* client -> backend */
    _Atomic uint64_t bytes_out; /* backend -> client */
    struct lb_list list;        /* this worker's sessions, newest first (drain deadline) */
    ev_tstamp fail_logged_at;   /* connect failures are logged once a second per worker */
    uint64_t fail_unlogged;
} __attribute__((aligned(64)));

struct lb_backend {
    _Atomic unsigned refs;
    struct lb_pool *pool; /* pools live as long as the process */
    struct ev_loop *loop; /* the pool's loop; NULL in loop-less tests */
    char id[LB_NAME_MAX];
    struct lb_backend_spec spec; /* as registered in etcd */
    struct sockaddr_storage sa;
    socklen_t sa_len;
    bool resolved; /* sa is valid */
    bool refused;  /* sa is one lbd must not route to (its own ports, --backend-networks) */
    bool removed;  /* retired: gone from etcd; nothing new starts, freed on last release */

    /* DNS, written by dns.c */
    bool dns_started;               /* the address is a name, looked up by dns.c */
    struct lb_resolve_req *dns_req; /* lookup in flight */
    ev_timer dns_timer;             /* next lookup */

    /* health, written by health.c */
    enum lb_health_state health; /* from active checks */
    bool ejected;                /* passive: too many failed connects */
    struct lb_health_check check;
    ev_tstamp ramp_start; /* slow start began (new or back up); 0 = none */

    /* the operator's intent, folded from the member's overrides by the pool */
    bool drain;
    bool drained_reported; /* LB_EVENT_DRAINED sent for the current drain */
    int base_weight;       /* registered or overridden, before slow start */
    enum lb_health_override health_override;
    bool has_weight_override;
    int weight_override;
    ev_timer drain_timer; /* drain_timeout: closes what is left */

    /* publish bookkeeping, owned by pool.c */
    size_t snap_index;            /* entry in the pool's current snapshot */
    struct lb_backend *mark_next; /* pool->marked list */
    bool marked;

    /* shared with the workers */
    _Atomic uint64_t active;          /* client connections, every worker (reserved at pick) */
    _Atomic int connect_failures_run; /* consecutive failed connects (passive ejection) */
    _Atomic bool notify_zero;         /* drained or retired: tell the control loop at 0 active */
    struct lb_backend_wstats *ws;     /* one per worker */
    unsigned n_ws;
};

/*
 * Creates a backend with one reference (the caller's) and every watcher
 * initialised, none started.  A numeric address is parsed at once; a DNS
 * name leaves resolved false.  Returns NULL when out of memory.
 */
struct lb_backend *lb_backend_new(struct lb_pool *pool, const char *id,
                                  const struct lb_backend_spec *spec);
void lb_backend_ref(struct lb_backend *b);
/* Drops a reference; the last one frees b (which must be retired by then). */
void lb_backend_unref(struct lb_backend *b);

/* Stops every watcher and timer b owns and marks it removed; idempotent. */
void lb_backend_retire(struct lb_backend *b);

/*
 * True when the backend may receive new connections at all (registered,
 * resolved, allowed, not drained, weight > 0, not forced down).
 */
bool lb_backend_is_candidate(const struct lb_backend *b);

/* True when checks, ejection and the operator's override say it is healthy. */
bool lb_backend_is_healthy(const struct lb_backend *b);

/* True when it is eligible in its pool's current snapshot. */
bool lb_backend_is_eligible(const struct lb_backend *b);

/* The sums over workers of b's counters. */
struct lb_backend_totals {
    uint64_t total, connect_failures, retries, bytes_in, bytes_out;
};
void lb_backend_totals(const struct lb_backend *b, struct lb_backend_totals *out);

/* Fills an info record for the admin API and metrics (strings point into b). */
void lb_backend_info(const struct lb_backend *b, struct lb_backend_info *out);

#endif
