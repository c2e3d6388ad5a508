/*
 * One proxied client connection: a state machine with one exit.
 *
 *   CONNECTING --confirmed--> PROXYING --both sides done / error / idle--> CLOSED
 *     |  ^   |  connect failed or timed out: retry on a backend not yet tried
 *     |  |   +----------------------------------------------------------> CLOSED
 *     |  | granted (a slot may be free)
 *     v  |
 *   QUEUED --queue_timeout / client left-----------------------------------> CLOSED
 *
 * A client that finds every eligible backend at max_conns, in a pool with
 * a queue_timeout, waits in the pool's queue (conn_queue.h), first come
 * first served across workers, and is closed at its deadline
 * (end=queue_timeout).  While clients wait, new ones queue behind them.
 * A waiting client is watched only for leaving; what it sends stays in the
 * kernel until a backend is connected.
 *
 * CONNECTING does not wait to be told the connect finished: both sockets
 * are read from the start, client bytes are sent as they come (held while
 * the handshake runs), and the connect is confirmed by the first proof:
 * the backend took bytes, sent some, or closed; or, when both sides stay
 * silent, the kernel says so at the connect timeout.  An error before that
 * is a failed connect: the client's bytes (and the PROXY header) go to the
 * next backend.  The client's EOF is held until the connect is confirmed.
 *
 * Data is read into the worker's shared scratch buffer (up to 256 KiB a
 * read: a bulk transfer costs few system calls) and written to the other
 * side at once; only bytes the other side cannot take yet are copied into a
 * per-direction buffer of just their size, freed once they are sent, so an
 * idle session holds no buffer.  While such bytes are pending, that
 * direction stops reading, so a slow peer applies back-pressure instead of
 * growing memory; and for its next reads it reads 16 KiB at a time, so a
 * peer that stays slow costs at most that much each way.  Reads are small
 * too while the connect runs, and for every session of a worker once its
 * sessions hold 32 MiB of pending bytes: peers that do not read cannot
 * make lbd hold more than that plus 16 KiB each.  A read of 0 (EOF) is forwarded as
 * shutdown(SHUT_WR) once pending bytes are flushed (half-close).
 *
 * A direction that proves bulk (64 KiB in reads of 16 KiB or more; three
 * smaller reads in a row end the run) relays the rest of it with splice(2)
 * through a kernel pipe instead (HAProxy's splice-auto): the bytes never
 * reach user space.  Bytes its destination cannot take stay in the pipe and
 * are pending like a buffer's: reading pauses, EOF waits for them, they
 * count in the worker's pending bytes.  Never while connecting: the
 * client's bytes stay in user space, to be sent again to another backend.
 * The pipe is the worker's (pipe_pool.h), held only while bytes are in it,
 * so an idle session holds no pipe.
 *
 * session_finalize() is the only exit: it stops the watchers, closes both
 * sockets, releases the backend and hands the session to the worker's
 * reaper, which frees it after the current callbacks (lb_reaper.h).
 *
 * At an upgrade a session moves to the next lbd (balancer/upgrade.c):
 *
 *   PROXYING --park--> PARKED --moved (the next process took it)--> CLOSED
 *                        |
 *                        +--unpark (it could not)--> PROXYING, never offered again
 *
 * Parking happens between two callbacks of the session, so never in the
 * middle of a write: what one side sent and the other has not taken yet is
 * in the direction's pending buffer (bytes in a pipe are moved there
 * first), and moves with the sockets.  A parked
 * session has no watcher and no timer running and is off the worker's live
 * list (on its parked list): nothing but moved/unpark ends it.
 *
 * Every session ends with one reason from a small closed set
 * (enum lb_session_end, HAProxy's termination states in spirit) and, when
 * the access log is on, one logfmt line at info level (sub=access):
 *
 *   pool=web backend=b1 client=203.0.113.7:51234 connect_ms=0.412
 *   duration_ms=1532.0 bytes_in=532 bytes_out=10241 retries=0 end=client_closed
 *
 * client is the address of an inbound PROXY header when there was one;
 * backend and connect_ms are left out when no backend was reached
 * (connect_ms: from connect() to the connect confirmed, last attempt);
 * queue_ms, only for a client that waited for a slot, is from when it first
 * queued to when it last left the queue;
 * bytes_in is what reached the backend from the client (lbd's own PROXY
 * header not counted), bytes_out what reached the client.  The line is
 * formatted only when it is written.  Each worker also keeps, per pool,
 * histograms of connect times and session durations (single writer,
 * summed on read by /metrics).
 */
#ifndef LB_SESSION_H
#define LB_SESSION_H

#include "lb_update.h" /* LB_NAME_MAX */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct lb_backend;
struct lb_list;
struct lb_worker;
struct lb_wpool;
struct lb_session;

/*
 * Why a session ended: the `end=` of its access log line.  The names are
 * stable (operators alert on them); append, never renumber or rename.
 */
enum lb_session_end {
    LB_END_CLIENT_CLOSED,         /* the client closed first, then the backend */
    LB_END_BACKEND_CLOSED,        /* the backend closed first, then the client */
    LB_END_CLIENT_RESET,          /* the client reset, or its socket failed */
    LB_END_BACKEND_RESET,         /* the backend reset after the connect, or its socket failed */
    LB_END_CONNECT_TIMEOUT,       /* every attempt failed, the last by the connect timeout */
    LB_END_CONNECT_REFUSED,       /* every attempt failed, the last refused or unreachable */
    LB_END_NO_BACKEND,            /* none eligible, or all at max_conns: nothing tried */
    LB_END_IDLE_TIMEOUT,          /* nothing relayed for idle_timeout, or a peer stalled */
    LB_END_DRAINED_PAST_DEADLINE, /* its backend was drained and drain_timeout passed */
    LB_END_SHUTDOWN,              /* still open when the shutdown grace period ended */
    LB_END_MOVED,                 /* handed to the next lbd at an upgrade: not an error */
    LB_END_KILLED,                /* closed by an operator (lbctl kill sessions) */
    LB_END_BAD_PROXY_HEADER,      /* accept-proxy: no valid PROXY header in time */
    LB_END_OUT_OF_MEMORY,         /* lbd lacked memory or a socket for it */
    LB_END_QUEUE_TIMEOUT,         /* every backend stayed at max_conns for queue_timeout */
    LB_END_COUNT
};

/* The stable name of `end` ("client_closed", ...); "unknown" out of range. */
const char *lb_session_end_name(enum lb_session_end end);

/* False for the normal ends (client_closed, backend_closed, moved): those
 * may be sampled out of the access log; errors never are. */
bool lb_session_end_is_error(enum lb_session_end end);

/*
 * The access log, process-wide: on or off, and 1 line in `sample` for the
 * sessions that end normally (0 or 1: every one).  Call before the workers
 * start; lines are written at info level, so --log-level warn hides them.
 */
void lb_session_set_access_log(bool on, uint64_t sample);

/* Histogram bounds (seconds), Prometheus' `le`; a last bucket is +Inf. */
#define LB_CONNECT_BUCKETS 13
#define LB_CONNECT_BOUNDS                                                                          \
    {                                                                                              \
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5                 \
    }
#define LB_DURATION_BUCKETS 7
#define LB_DURATION_BOUNDS                                                                         \
    {                                                                                              \
        0.01, 0.1, 1, 10, 60, 600, 3600                                                            \
    }

/* The histograms of one pool, summed over workers.  Counts per bucket (not
 * cumulative), the last one beyond the largest bound. */
struct lb_session_histograms {
    uint64_t connect[LB_CONNECT_BUCKETS + 1];
    double connect_sum; /* seconds */
    uint64_t duration[LB_DURATION_BUCKETS + 1];
    double duration_sum; /* seconds */
};

/* The bucket of `v` among n ascending bounds: the first bound >= v, or n. */
size_t lb_histogram_bucket(const double *bounds, size_t n, double v);

/*
 * Sums the histograms of pool `pool` (the registry's index) over workers
 * 0..n_workers-1.  Any thread: each worker writes its own slot (relaxed
 * atomics), readers add them up.  Connect times are observed per connect
 * confirmed; durations per session that ended in this process (a moved one
 * goes on in the next).
 */
void lb_session_histograms(size_t pool, unsigned n_workers, struct lb_session_histograms *out);

/*
 * Takes ownership of an accepted, non-blocking client socket on worker w
 * and starts connecting it to a backend of `pool` (w's copy).  Returns 0,
 * or -ENOMEM (the socket is closed, the session counted as finished).
 */
int lb_session_start(struct lb_worker *w, struct lb_wpool *pool, int client_fd,
                     const struct sockaddr *client, socklen_t client_len);

/*
 * Queueing at capacity (conn_queue.h): tries the sessions of wp whose
 * queue entries were granted to this worker (its `dequeue` async); and,
 * after wp's copy of the pool changed, grants the oldest waiter when a
 * backend has room now.  On wp's worker.
 */
void lb_session_serve_granted(struct lb_wpool *wp);
void lb_session_pool_changed(struct lb_wpool *wp);
/* As lb_session_pool_changed, when the pool's policy may have changed from `was`. */
void lb_session_policy_changed(struct lb_wpool *wp, const struct lb_pool_policy *was);

/*
 * A connect that neither side has spoken through yet is confirmed by what
 * the kernel knows (TCP_INFO): lbd otherwise learns it from the first
 * bytes.  Returns true when s was CONNECTING and is now PROXYING.  Used
 * at an upgrade (such a session can move), by `lbctl show sessions` (it is
 * shown as proxying, not connecting) and by the connect timer.  On s's
 * worker.
 */
bool lb_session_settle(struct lb_session *s);

/* Ends a session now (shutdown grace over). */
void lb_session_abort(struct lb_session *s);

/* Ends a session of a drained backend whose drain timeout passed. */
void lb_session_abort_drained(struct lb_session *s);

/* The oldest open session of b on worker `worker`, or NULL. */
struct lb_session *lb_session_oldest_of(struct lb_backend *b, unsigned worker);

/* What `lbctl show sessions` lists of one session: copies, no pointer into it. */
enum lb_session_view_state {
    LB_SESSION_VIEW_HEADER = 1, /* the admin API's Session.State numbers */
    LB_SESSION_VIEW_CONNECTING = 2,
    LB_SESSION_VIEW_PROXYING = 3,
    LB_SESSION_VIEW_PARKED = 4,
    LB_SESSION_VIEW_QUEUED = 5,
};

struct lb_session_view {
    struct sockaddr_storage client; /* from the PROXY header when there was one */
    char backend[LB_NAME_MAX];      /* backend id, "" while none is picked */
    unsigned worker;
    enum lb_session_view_state state;
    double age_s, idle_s;
    uint64_t bytes_in, bytes_out; /* as the access log counts them */
};

/* Where a session query's answer goes (proxy.h, control.h): views oldest first. */
typedef void (*lb_session_query_done)(void *ctx, const struct lb_session_view *views, size_t n,
                                      uint64_t total);

/* Fills *v from s; on s's worker thread. */
void lb_session_view(const struct lb_session *s, struct lb_session_view *v);

/* The backend s is connected or connecting to (NULL while none); on s's worker. */
const struct lb_backend *lb_session_backend(const struct lb_session *s);

/* Ends s now because an operator asked (end=killed); a parked session is left alone. */
void lb_session_kill(struct lb_session *s);

/* The pool (its worker's copy) s belongs to. */
struct lb_wpool *lb_session_pool(const struct lb_session *s);

/* The session whose worker->live (or ->parked) link is l. */
struct lb_session *lb_session_of_link(struct lb_list *l);

/* What moves with a session to the next process at an upgrade. */
struct lb_session_move {
    int client_fd, server_fd;
    struct sockaddr_storage client;
    socklen_t client_len;
    const char *backend_id, *backend_addr;
    uint64_t bytes_up, bytes_down; /* client -> backend, backend -> client, so far */
    double age_s, idle_s;          /* since accept, since the last byte relayed */
    bool up_eof, up_shut, down_eof, down_shut;
    const char *up_pending, *down_pending; /* read, not yet written */
    size_t up_len, down_len;
};

/*
 * Parks s for a move: stops its watchers and timer, moves it to the
 * worker's parked list and fills *m (its pointers stay valid while parked).
 * Returns 0; -EAGAIN when s cannot move yet (its connect runs, or more than
 * `pending_max` bytes wait in a direction): try again later; -EPERM when it
 * never will (it was offered and refused).
 */
int lb_session_park(struct lb_session *s, size_t pending_max, struct lb_session_move *m);

/*
 * Moves the bytes s holds in pipes (splice) into its pending buffers, so
 * that everything in flight is in user space, as a move needs: called by
 * lb_session_park().  On s's worker thread.  Returns 0, or -ENOMEM (the
 * bytes of one direction stay in its pipe; s goes on as before).
 */
int lb_session_unsplice_all(struct lb_session *s);

/* s will not be offered: it finishes here. */
void lb_session_stay(struct lb_session *s);

/* The next process took s: closes this process's copies of its sockets
 * (the connections stay open) and ends it without a word to either peer. */
void lb_session_moved(struct lb_session *s);

/* The next process could not take s: it goes on here where it stopped. */
void lb_session_unpark(struct lb_session *s);

/*
 * Takes over a session of the previous process on worker w: its sockets,
 * pending bytes (copied), state and age; `b` is the backend it is connected
 * to (a reference passed to the session).  It counts against max_conns and
 * --max-conns like any other, even beyond them.  Returns 0, or -ENOMEM
 * (the sockets are closed, the reference dropped).
 */
int lb_session_adopt(struct lb_worker *w, struct lb_wpool *pool, struct lb_backend *b,
                     const struct lb_session_move *m);

#endif
