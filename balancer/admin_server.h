/*
 * lbd's admin API transport: gRPC over HTTP/2, cleartext (prior knowledge)
 * or TLS with ALPN h2, one nghttp2 server session per accepted connection,
 * all on one libev loop.  The server owns sockets, TLS, HTTP/2, gRPC
 * framing and the bearer token check; what a method does is given to it as
 * a method table and an opaque context (admin_call.h), so the transport
 * knows no service: lbd passes admin_service.c's table over its registry.
 *
 * Layers, each in its own file, with an internal header that shows the
 * others only what they use of it (admin_server_int.h, admin_conn.h,
 * admin_h2.h, admin_call_int.h):
 *   admin_server.c  listener, admission, TLS context and token set-up, metrics
 *   admin_conn.c    a connection: socket or TLS I/O, handshake, timers
 *   admin_h2.c      nghttp2 callbacks: streams become calls, requests dispatch
 *   admin_call.c    calls and their response path (admin_call.h for handlers)
 */
#ifndef LB_ADMIN_SERVER_H
#define LB_ADMIN_SERVER_H

#include <stddef.h>
#include <stdint.h>

struct ev_loop;
struct lb_admin_server;
struct lb_admin_method;

struct lb_admin_limits {
    /*
     * Admin connections open at once, and from one peer address.  When a
     * cap is reached, the oldest connection that never made an authorized
     * call is closed to make room; a newcomer is refused only when
     * connections with such calls hold every slot it could take.
     */
    unsigned max_connections;
    unsigned max_per_peer;
    unsigned max_streams;         /* concurrent calls per connection (SETTINGS) */
    int64_t idle_timeout_ms;      /* a connection without calls is closed after this */
    size_t max_message;           /* request and unary response size; RESOURCE_EXHAUSTED above */
    size_t stream_queue_max;      /* bytes a streaming call may have queued for a slow client */
    size_t max_header_bytes;      /* request header block per stream */
    int64_t handshake_timeout_ms; /* TLS: a connection must finish its handshake within this */
    /* From accept to a first complete request header block, TLS handshake included. */
    int64_t first_request_timeout_ms;
    /* From a call's headers to its request's end; then DEADLINE_EXCEEDED and a reset. */
    int64_t request_timeout_ms;
    /*
     * Request bytes (declared message lengths) that unfinished requests may
     * hold: per connection, for the whole server, and a reserve every
     * connection has whatever the others hold.  RESOURCE_EXHAUSTED above.
     */
    size_t conn_request_budget;
    size_t server_request_budget;
    size_t conn_request_reserve;
};

/*
 * 64 connections, 16 per peer address, 32 streams, 5 min idle, 4 MiB
 * messages, 1 MiB queue, 16 KiB headers, 5 s TLS handshake, 5 s to a first
 * request, 10 s to send a request, request budgets of 4 MiB per
 * connection and 16 MiB in all with 64 KiB reserved per connection.
 */
void lb_admin_limits_defaults(struct lb_admin_limits *l);

struct lb_admin_options {
    const char *listen;      /* "127.0.0.1:9000", "[::1]:9000"; port 0 picks a free port */
    const char *listen_flag; /* names the setting in errors ("--admin"); NULL: "admin address" */
    /* What is served: methods[n_methods] (admin_call.h), each handler seeing `context`. */
    const struct lb_admin_method *methods;
    size_t n_methods;
    void *context;
    /*
     * NULL: no token.  Otherwise every call but those of methods flagged
     * LB_ADMIN_METHOD_NO_AUTH must carry "authorization: Bearer <token>",
     * the token being the file's first line; others end with
     * UNAUTHENTICATED.  Read once, here.
     */
    const char *token_file;
    /* Both or neither: PEM certificate chain and key; the listener then speaks TLS. */
    const char *tls_cert_file;
    const char *tls_key_file;
};

/*
 * Reads the token and TLS files, binds opts->listen and starts accepting on
 * `loop`.  Returns 0 with *out set, or a negative errno with *err a
 * malloc'd sentence for the operator (the caller frees it).  The method
 * table and the context must outlive the server (and calls a handler still
 * holds after it).
 */
int lb_admin_server_new(struct ev_loop *loop, const struct lb_admin_options *opts,
                        struct lb_admin_server **out, char **err);

/* Applies to connections and calls that start afterwards. */
void lb_admin_server_set_limits(struct lb_admin_server *s, const struct lb_admin_limits *l);

/* The bound port (useful after asking for port 0). */
int lb_admin_server_port(const struct lb_admin_server *s);

struct lb_buf;

/*
 * Appends the admin server's families (open connections, connections
 * refused, shed and closed before a request, calls reset for their request
 * deadline or budget, request bytes held) to `out`.  Returns 0 or
 * -E2BIG/-ENOMEM.
 */
int lb_admin_server_render_metrics(const struct lb_admin_server *s, struct lb_buf *out);

/*
 * Closes the listener and every connection; calls still in flight are
 * cancelled (their cancel hooks run).  Must not be called from inside one
 * of the server's own callbacks.  NULL is a no-op.
 */
void lb_admin_server_free(struct lb_admin_server *s);

/*
 * SIGHUP: reads the token file / the TLS certificate and key again.  New
 * connections and calls use the new ones; open TLS connections go on with
 * the certificate they were made with.  Returns 0 (also when not
 * configured), or a negative errno with *err: the old one stays in use.
 */
int lb_admin_server_reload_token(struct lb_admin_server *s, const char *token_file, char **err);
int lb_admin_server_reload_tls(struct lb_admin_server *s, const struct lb_admin_options *o,
                               char **err);

/* The listening socket (handed to the next process at an upgrade), -1 once closed. */
int lb_admin_server_listen_fd(const struct lb_admin_server *s);

/* Stops accepting and closes the listener; open connections go on (upgrade). */
void lb_admin_server_stop_listening(struct lb_admin_server *s);

/*
 * An upgrade's new process serves the admin address from now on: stops
 * listening, ends every stream (WatchEvents) with UNAVAILABLE saying so,
 * so that its client calls the new process instead of watching this one
 * wind down, and sends GOAWAY on every connection.  Unary calls in flight
 * finish as they would.
 */
void lb_admin_server_hand_over(struct lb_admin_server *s);

#endif
