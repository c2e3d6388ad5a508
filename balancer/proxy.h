/*
 * The data plane: N workers, each a thread with its own libev loop, its
 * own SO_REUSEPORT listener per pool and the sessions it accepts (nginx's
 * workers with reuseport, Envoy's worker threads).  Nothing on a
 * connection's path takes a lock.
 *
 * What each worker sees of a pool is its own copy of the pool's snapshot
 * and policy (struct lb_wpool).  The control loop, after each publish,
 * posts the change to every worker's mailbox: a rebuild as the new entries
 * (backends referenced, effective weights), an in-place publish as the
 * list of (entry, weight) pairs that changed, which the worker applies
 * through the same lb_snapshot_set_weight() as the control loop: O(log n)
 * each, in order, within one loop iteration of the worker.
 *
 * Numbers that must hold over all workers are atomics: the global cap
 * (--max-conns) is reserved per accept, a backend's open connections
 * (max_conns, leastconn) per pick.  Counters are per worker, single
 * writer, summed on read.  What only the control loop may do (eject a
 * backend, report a drain done, learn that a worker is idle at shutdown)
 * is posted to its mailbox.
 *
 * Lifetimes: lb_proxy_init() binds every listener on the calling (control)
 * thread, so a bad address fails start-up; lb_proxy_start() starts the
 * threads; lb_proxy_destroy() stops and joins them and frees everything.
 */
#ifndef LB_PROXY_H
#define LB_PROXY_H

#include "conn_queue.h"
#include "lb_list.h"
#include "lb_listen.h"
#include "lb_mailbox.h"
#include "lb_reaper.h"
#include "lb_buf.h"
#include "pipe_pool.h"
#include "pool.h"
#include "registry.h"
#include "session.h"

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lb_session;
struct lb_worker;

/* One listening socket of a worker. */
struct lb_wlistener {
    ev_io io;
    int fd; /* set at init, read by the control loop at an upgrade; -1 once closed */
    struct lb_wpool *wp;
    bool bound_only; /* listens once accepting is enabled (lb_proxy_enable_accept) */
};

/*
 * One pool as one worker sees it.  Owned by that worker.  A worker has one
 * listener per pool, and more when an upgrade handed this process more
 * sockets than it has workers (each of them keeps its accept queue).
 */
struct lb_wpool {
    struct lb_pool *pool; /* its name only: everything else belongs to the control loop */
    struct lb_worker *worker;
    struct lb_pool_policy policy; /* as of the last rebuild posted */
    struct lb_snapshot *snap;     /* this worker's copy; never NULL */
    struct lb_wlistener *ls;      /* its listeners */
    size_t n_ls;
    struct lb_conn_queue *queue; /* the pool's, shared by every worker */
    /* single writer (the worker), read by the control loop */
    _Atomic uint64_t active;
    _Atomic uint64_t total;
    _Atomic uint64_t no_backend;        /* clients closed because no backend was available */
    _Atomic uint64_t retries;           /* connects retried on another backend */
    _Atomic uint64_t bad_proxy_headers; /* accept-proxy: clients closed for a bad or late header */
    _Atomic uint64_t queued;            /* clients that waited for a backend slot */
    _Atomic uint64_t queue_timeouts;    /* of those, closed at their queue_timeout */
    ev_tstamp bad_header_logged_at;     /* the worker's own: one line a second */
    uint64_t bad_header_unlogged;
};

struct lb_worker {
    unsigned index;
    struct lb_proxy *proxy;
    struct ev_loop *loop;
    pthread_t thread;
    bool running;
    bool abandoned;          /* could not be stopped (out of memory): left to exit with lbd */
    struct lb_mailbox inbox; /* what the control loop posts */
    ev_async resume;         /* the global cap has room again */
    ev_async dequeue;        /* a waiting client of this worker was granted a backend slot */
    struct lb_wpool *pools;  /* one per pool, same order as the registry's */
    bool accepting;          /* enabled and not shut down */
    bool accept_paused;      /* not accepting now: before sync, at the cap, after EMFILE */
    bool at_cap;             /* paused for the global cap (counted in proxy->n_at_cap) */
    bool shutting_down;
    bool idle_reported;
    uint64_t active;           /* sessions open on this worker */
    size_t pending_bytes;      /* held by its sessions for peers that could not take them yet */
    struct lb_pipe_pool pipes; /* for its sessions' splice(2) relaying */
    struct lb_list live;
    struct lb_list parked; /* sessions offered to the next process at an upgrade */
    struct lb_reaper reaper;
    struct lb_accept_backoff accept_backoff;
    bool offering;       /* upgrade: offering sessions to the next process */
    bool closed_all;     /* the shutdown grace period is over */
    ev_timer offer_tick; /* looks again at sessions that could not move yet */
    uint64_t offer_seq;
    ev_tstamp offering_since;
    /* single writer, read by the control loop */
    _Atomic uint64_t moved;          /* sessions the next process took */
    _Atomic uint64_t ended_offering; /* sessions that ended here since offering began */
    _Atomic uint64_t adopted;        /* sessions taken over from the previous process */
    _Atomic uint64_t given_up;       /* sessions that could not move in time: finish here */
    _Atomic uint64_t accepted;
    _Atomic uint64_t accept_errors;
    _Atomic uint64_t cap_pauses;
    char scratch[262144]; /* read buffer shared by this worker's sessions (big reads for bulk) */
};

struct lb_proxy {
    struct ev_loop *loop; /* the control loop */
    struct lb_registry *registry;
    struct lb_mailbox inbox; /* what workers post to the control loop */
    struct lb_worker *workers;
    unsigned n_workers;
    struct lb_conn_queue *queues; /* one per pool: clients waiting for a backend slot */
    bool listening;               /* listeners bound (for /readyz) */
    bool accept_enabled;          /* after the first etcd sync */
    bool shutting_down;
    unsigned n_idle;                     /* workers that reported no session left, at shutdown */
    _Atomic unsigned n_closed_listeners; /* workers whose listeners are closed, at shutdown */
    uint64_t max_conns;
    _Atomic uint64_t active;                 /* client connections open now, every worker */
    _Atomic unsigned n_at_cap;               /* workers paused at the cap */
    _Atomic uint64_t cap_logged_ms;          /* the cap was last logged (loop time, ms) */
    _Atomic uint64_t cap_pauses_logged;      /* pauses counted at that line */
    void (*on_idle)(struct lb_proxy *proxy); /* shutting down and no session left */
    /* upgrade (lb_proxy_offer_sessions) */
    const struct lb_offer_ops *offer_ops;
    void *offer_ctx;
    unsigned n_offers_done; /* workers with nothing left to offer */
    size_t offer_pending_max;
    unsigned next_adopter; /* the worker the next adopted session goes to */
};

/*
 * At an upgrade, each worker parks the sessions that can move
 * (lb_session_park), encodes each as a record with the control loop's
 * `encode` (on the worker's thread), and posts it as an offer to the
 * control loop, which sends it to the next process and answers it with
 * lb_proxy_offer_answer().  Sessions that cannot move yet (connecting,
 * much pending) are looked at again every 20 ms; `done` runs on the
 * control loop once no worker has anything left to offer.
 */
struct lb_offer {
    struct lb_msg msg;
    struct lb_list link; /* the control loop's: sent, waiting for the answer */
    struct lb_worker *worker;
    struct lb_session *session;
    uint64_t id; /* unique in this process */
    int fds[2];  /* client, backend: the session's own, not duplicates */
    struct lb_buf rec;
    bool taken;
};

struct lb_offer_ops {
    /* On a worker's thread: encodes m (pool index `pool`) as the record of offer `id`. */
    int (*encode)(void *ctx, size_t pool, uint64_t id, const struct lb_session_move *m,
                  struct lb_buf *out);
    /* On the control loop: o is the control loop's until answered. */
    void (*offer)(void *ctx, struct lb_offer *o);
    void (*done)(void *ctx);
};

/* What a pool served, summed over workers. */
struct lb_pool_counters {
    uint64_t active, total, no_backend, retries, bad_proxy_headers;
    uint64_t queued, queue_timeouts;
    uint64_t queue_length; /* waiting now */
};

/*
 * Binds `n_workers` listeners per pool (SO_REUSEPORT) and prepares each
 * worker's loop and pool copies, without starting threads or accepting.
 * Returns 0, or a negative errno with *err set to a malloc'd message naming
 * the pool and the address; nothing is left bound.
 */
int lb_proxy_init(struct lb_proxy *proxy, struct ev_loop *loop, struct lb_registry *registry,
                  uint64_t max_conns, unsigned n_workers, char **err);

/* Starts the worker threads.  Returns 0 or a negative errno (*err set). */
int lb_proxy_start(struct lb_proxy *proxy, char **err);

/*
 * Starts accepting on every worker.  Until then, clients wait in the
 * kernel's accept queues instead of being turned away for lack of
 * backends: lbd calls this once the first etcd listing is applied.
 */
void lb_proxy_enable_accept(struct lb_proxy *proxy);

/*
 * Enters shutdown: every worker takes in what is queued and stops
 * listening, and this returns once they all have (each does it within one
 * loop iteration; 1 s at most): from then on a new client is refused, so
 * one told "not ready" (/readyz) that connects again is never taken in.
 * on_idle runs on the control loop once no worker holds a session.
 */
void lb_proxy_shutdown(struct lb_proxy *proxy, void (*on_idle)(struct lb_proxy *proxy));

/* Closes every open session on every worker (end of the shutdown grace period). */
void lb_proxy_close_all(struct lb_proxy *proxy);

/* Stops and joins the workers, closes what is left, frees everything. */
void lb_proxy_destroy(struct lb_proxy *proxy);

/* Open client connections, all workers. */
uint64_t lb_proxy_active(const struct lb_proxy *proxy);

/* Sums of the workers' counters. */
void lb_proxy_totals(const struct lb_proxy *proxy, uint64_t *accepted, uint64_t *accept_errors,
                     uint64_t *cap_pauses);

/* What pool i served, summed over workers (zeros without workers). */
void lb_proxy_pool_counters(const struct lb_proxy *proxy, size_t i, struct lb_pool_counters *out);

/*
 * The control loop published pool i (registry.c's publisher): posts the
 * change to every worker.  `rebuilt`: the snapshot is new; otherwise
 * pool->changed lists the entries whose weight changed in place.
 */
void lb_proxy_pool_published(struct lb_proxy *proxy, struct lb_pool *pool, bool rebuilt);

/* The drain deadline: asks the worker holding most sessions to b to close its oldest. */
void lb_proxy_close_oldest(struct lb_proxy *proxy, struct lb_backend *b);

/*
 * `lbctl show sessions` and `kill sessions`: the control loop posts the
 * query to every worker; each walks its own sessions of pool `pool` (with
 * backend id `backend`, or every one for ""), copies what it lists or
 * kills them (end=killed; parked ones are left to the upgrade), and posts
 * its part back.  Once every worker answered, `done` runs on the control
 * loop with at most `max` views, oldest first, and `total`: how many
 * matched (listing) or were closed (kill).  Nothing of a session escapes
 * its worker but copies.
 */
struct lb_session_query;

/*
 * Starts a query; on the control loop.  Returns 0 with *out set (pass it to
 * lb_proxy_session_query_cancel() while waiting), or -ENOMEM, or -EAGAIN
 * when there is no worker to ask; `done` is then never called.
 */
int lb_proxy_session_query(struct lb_proxy *proxy, size_t pool, const char *backend, bool kill,
                           size_t max, lb_session_query_done done, void *ctx,
                           struct lb_session_query **out);

/* `done` will not be called; the query frees itself when the last worker answers. */
void lb_proxy_session_query_cancel(struct lb_session_query *q);

/* From a worker: ask the control loop to eject b / to report that b has no connection left. */
void lb_worker_ask_eject(struct lb_worker *w, struct lb_backend *b);
void lb_worker_tell_zero(struct lb_worker *w, struct lb_backend *b);

/* Called by a session after it left the live list (accounting, resume, idle). */
void lb_worker_session_finished(struct lb_worker *w);

/* A session of the previous process joins w (upgrade): counted like an
 * accepted one, over the cap if need be. */
void lb_worker_session_adopted(struct lb_worker *w);

/* Upgrade, old process: every worker starts offering its sessions (after lb_proxy_shutdown). */
void lb_proxy_offer_sessions(struct lb_proxy *proxy, size_t pending_max,
                             const struct lb_offer_ops *ops, void *ctx);

/* The answer to offer o: taken (the session ends here) or not (it goes on here).  Owns o. */
void lb_proxy_offer_answer(struct lb_proxy *proxy, struct lb_offer *o, bool taken);

/* Sessions moved to the next process / ended here since offering began, all workers. */
void lb_proxy_offer_totals(const struct lb_proxy *proxy, uint64_t *moved, uint64_t *kept);

/*
 * Upgrade, new process: gives a session of the previous process (its
 * sockets in m, pending bytes copied) to the next worker in turn, with a
 * reference to b.  Returns 0, or -ENOMEM (nothing taken: the caller still
 * owns the sockets and its reference).
 */
int lb_proxy_adopt(struct lb_proxy *proxy, size_t pool, struct lb_backend *b,
                   const struct lb_session_move *m);

/* Sessions that could not be offered in time (still connecting, much pending), all workers. */
uint64_t lb_proxy_offers_given_up(const struct lb_proxy *proxy);

/* Sessions taken over from the previous process, all workers. */
uint64_t lb_proxy_adopted(const struct lb_proxy *proxy);

/* The listening sockets of every worker, for the next process: calls fn for each still open. */
void lb_proxy_each_listener(const struct lb_proxy *proxy,
                            void (*fn)(void *ctx, size_t pool, int fd), void *ctx);

#endif
