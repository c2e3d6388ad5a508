/*
 * One proxied client connection: a state machine with one exit.
 *
 *   CONNECTING --connected--> PROXYING --both sides done / error / idle--> CLOSED
 *        |  connect failed or timed out: retry on a backend not yet tried
 *        +--------------------------------------------------------------> CLOSED
 *
 * Data is read into the proxy's shared scratch buffer and written to the
 * other side at once; only bytes the other side cannot take yet are copied
 * into a per-direction buffer, allocated on first use.  While such bytes are
 * pending, that direction stops reading, so a slow peer applies back-pressure
 * instead of growing memory.  A read of 0 (EOF) is forwarded as
 * shutdown(SHUT_WR) once pending bytes are flushed (half-close).
 *
 * session_finalize() is the only exit: it stops the watchers, closes both
 * sockets, releases the backend and hands the session to the proxy's
 * graveyard, which frees it after the current loop iteration.
 */
#ifndef LB_SESSION_H
#define LB_SESSION_H

#include <sys/socket.h>

struct lb_proxy;
struct lb_pool;
struct lb_session;

/*
 * Takes ownership of an accepted, non-blocking client socket and starts
 * connecting it to a backend of `pool`.  Returns 0, or -ENOMEM (the socket
 * is closed).
 */
int lb_session_start(struct lb_proxy *proxy, struct lb_pool *pool, int client_fd,
                     const struct sockaddr *client, socklen_t client_len);

/* Ends a session now (shutdown grace over). */
void lb_session_abort(struct lb_session *s);

/* Ends a session of a drained backend whose drain timeout passed. */
void lb_session_abort_drained(struct lb_session *s);

/* The next (older) session of the same backend, or NULL. */
struct lb_session *lb_session_next_of_backend(struct lb_session *s);

/* Frees a finished session; only the proxy's reaper calls this. */
void lb_session_free(struct lb_session *s);

/* Links used by the proxy's lists. */
struct lb_session *lb_session_next(struct lb_session *s);

#endif
