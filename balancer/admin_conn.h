/*
 * One admin API connection (admin_conn.c): a socket, or TLS over it, that
 * carries one nghttp2 server session.  What the layers around it need:
 * the server accepts and reaps connections; the HTTP/2 layer and the calls
 * keep their per-connection state here and ask for a flush or a close.
 * Not for use outside the admin transport.
 */
#ifndef LB_ADMIN_CONN_H
#define LB_ADMIN_CONN_H

#include "conn_guard.h"
#include "lb_buf.h"
#include "lb_list.h"
#include "lb_reaper.h"

#include <ev.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

struct lb_admin_server;
struct lb_admin_call;

struct admin_conn {
    struct lb_admin_server *server;
    int fd;
    char peer[64];
    ev_io read_watcher;
    ev_io write_watcher;
    ev_timer idle_timer; /* first-request deadline, then the idle timeout */
    ev_tstamp accepted;
    ev_tstamp last_activity;
    bool got_request; /* a first request header block arrived */
    bool dead;
    char proto_error[160]; /* the first HTTP/2 or TLS complaint, for the close log line */

    /* HTTP/2 (admin_h2.c) and its calls (admin_call.c) */
    nghttp2_session *session;
    int in_nghttp2;     /* depth of mem_recv/mem_send on the stack */
    struct lb_buf wbuf; /* nghttp2 output waiting for the socket */
    size_t woff;
    struct lb_list calls; /* its calls (struct lb_admin_call conn_link) */
    unsigned n_calls;
    size_t request_bytes; /* held by its calls' unfinished requests */

    /* admission (admin_server.c) */
    struct lb_conn_guard_entry guard; /* proven by an authorized call */
    struct lb_list link;              /* server's open connections */
    struct lb_reap reap;              /* closed: freed by the server's reaper */

    /* TLS (ssl NULL on a cleartext listener) */
    SSL *ssl;
    bool handshaking;      /* nghttp2's output waits until the handshake is done */
    bool hello_checked;    /* the first byte looked like a TLS handshake */
    bool alpn_refused;     /* the client offered ALPN without h2 */
    bool tls_failed;       /* no close_notify on a broken TLS session */
    bool read_wants_write; /* SSL_read() needs the socket writable first */
};

/*
 * Wraps the accepted, non-blocking `fd` from `peer` (text for log lines;
 * `addr` for admission): an nghttp2 session with lbd's SETTINGS queued,
 * TLS in accept state if the server has a context, watchers and the
 * first-request deadline started; the server is told
 * (admin_server_conn_opened()) and our SETTINGS flushed.  Returns 0, or
 * -ENOMEM (fd is left to the caller).
 */
int admin_conn_new(struct lb_admin_server *s, int fd, const char *peer,
                   const struct lb_conn_peer *addr);

/*
 * Sends what nghttp2 has queued, as far as the socket takes it (not while
 * the TLS handshake runs).  May close the connection.
 */
void admin_conn_flush(struct admin_conn *conn);

/*
 * admin_conn_flush() unless an nghttp2 callback is on the stack (nghttp2
 * must not be re-entered): the flush after mem_recv() sends it then.
 */
void admin_conn_kick(struct admin_conn *conn);

/*
 * Stops the connection's watchers and hands it to the server's reaper;
 * idempotent.  With a reason, one warning line names it (and the first
 * protocol complaint); without, a debug line.  Its calls are detached only
 * by the reaper, so nothing is freed under a running callback.
 */
void admin_conn_close(struct admin_conn *conn, const char *reason);

/* Sends GOAWAY (NO_ERROR) and flushes, best effort. */
void admin_conn_goaway(struct admin_conn *conn);

/*
 * Sends GOAWAY (NO_ERROR) naming the last stream begun: those go on to
 * their end (their trailers are sent), no new one starts, and the
 * connection closes once none is left.
 */
void admin_conn_goaway_graceful(struct admin_conn *conn);

/* A first request header block arrived: from now on the idle timeout applies. */
void admin_conn_request_started(struct admin_conn *conn);

/* Frees the connection and detaches its calls (the reaper, after admin_conn_close()). */
void admin_conn_destroy(struct admin_conn *conn);

#endif
