/*
 * One proxied client connection: a state machine with one exit.
 *
 *   CONNECTING --confirmed--> PROXYING --both sides done / error / idle--> CLOSED
 *        |  connect failed or timed out: retry on a backend not yet tried
 *        +--------------------------------------------------------------> CLOSED
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
 * session_finalize() is the only exit: it stops the watchers, closes both
 * sockets, releases the backend and hands the session to the worker's
 * reaper, which frees it after the current callbacks (lb_reaper.h).
 */
#ifndef LB_SESSION_H
#define LB_SESSION_H

#include <sys/socket.h>

struct lb_backend;
struct lb_list;
struct lb_worker;
struct lb_wpool;
struct lb_session;

/*
 * Takes ownership of an accepted, non-blocking client socket on worker w
 * and starts connecting it to a backend of `pool` (w's copy).  Returns 0,
 * or -ENOMEM (the socket is closed, the session counted as finished).
 */
int lb_session_start(struct lb_worker *w, struct lb_wpool *pool, int client_fd,
                     const struct sockaddr *client, socklen_t client_len);

/* Ends a session now (shutdown grace over). */
void lb_session_abort(struct lb_session *s);

/* Ends a session of a drained backend whose drain timeout passed. */
void lb_session_abort_drained(struct lb_session *s);

/* The oldest open session of b on worker `worker`, or NULL. */
struct lb_session *lb_session_oldest_of(struct lb_backend *b, unsigned worker);

/* The session whose worker->live link is l. */
struct lb_session *lb_session_of_link(struct lb_list *l);

#endif
