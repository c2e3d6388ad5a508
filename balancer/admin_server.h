/*
 * lbd's admin API transport: gRPC over HTTP/2, cleartext (prior knowledge)
 * or TLS with ALPN h2, one nghttp2 server session per accepted connection,
 * all on the lbd libev loop.  The server owns sockets, TLS, HTTP/2, gRPC
 * framing and the bearer token check; what a method does lives in
 * admin_service.c, which sees only the call API below.
 *
 * A call is reference counted.  The open stream holds one reference; a
 * handler that answers later (an etcd write, a drain wait, an event stream)
 * takes its own.  When the client resets the stream, the deadline passes or
 * the connection goes away, the call is marked done and its cancel hook
 * runs, but its memory (and the handler state attached to it) is freed only
 * once the last reference is dropped, at the end of a loop iteration.  So a
 * completion that arrives after a cancel finds a valid, done call and simply
 * lets go of it.
 */
#ifndef LB_ADMIN_SERVER_H
#define LB_ADMIN_SERVER_H

#include <protobuf-c/protobuf-c.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ev_loop;
struct lb_registry;
struct lb_admin_server;
struct lb_admin_call;

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
    const char *listen; /* "127.0.0.1:9000", "[::1]:9000"; port 0 picks a free port */
    /*
     * NULL: no token.  Otherwise every call but grpc.health.v1.Health/Check
     * must carry "authorization: Bearer <token>", the token being the
     * file's first line; others end with UNAUTHENTICATED.  Read once, here.
     */
    const char *token_file;
    /* Both or neither: PEM certificate chain and key; the listener then speaks TLS. */
    const char *tls_cert_file;
    const char *tls_key_file;
};

/*
 * Reads the token and TLS files, binds opts->listen and starts accepting on
 * `loop`.  Returns 0 with *out set, or a negative errno with *err a
 * malloc'd sentence for the operator (the caller frees it).  `registry`
 * must outlive the server.
 */
int lb_admin_server_new(struct ev_loop *loop, const struct lb_admin_options *opts,
                        struct lb_registry *registry, struct lb_admin_server **out, char **err);

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

/* ---- What a method handler sees (all on the loop) ---- */

struct ev_loop *lb_admin_call_loop(const struct lb_admin_call *c);
struct lb_registry *lb_admin_call_registry(const struct lb_admin_call *c);

void lb_admin_call_ref(struct lb_admin_call *c);
/* Drops a reference; the call is freed later, never inside this function's caller's stack. */
void lb_admin_call_unref(struct lb_admin_call *c);

/* True once the call is finished or cancelled: nothing more can be sent. */
bool lb_admin_call_is_done(const struct lb_admin_call *c);

/*
 * Hook run at most once when the call ends without the handler finishing it:
 * client RST_STREAM, deadline, connection closed, server freed.  It should
 * stop what feeds the call (unsubscribe, stop timers) and drop the
 * handler's reference; it must not free anything attached with
 * lb_admin_call_set_data() (the call does that).
 */
void lb_admin_call_on_cancel(struct lb_admin_call *c, void (*cb)(void *ud), void *ud);

/* Attaches handler state, released with `release` when the call is freed. */
void lb_admin_call_set_data(struct lb_admin_call *c, void *data, void (*release)(void *data));

/* Sends response headers now (streaming calls do, so the client sees the call start). */
void lb_admin_call_begin(struct lb_admin_call *c);

/*
 * Queues one response message.  Returns 0; -ECANCELED when the call is done;
 * -EMSGSIZE when the message is over the maximum; -ENOBUFS when the call's
 * queue is full (a slow client: finish with RESOURCE_EXHAUSTED); -ENOMEM.
 */
int lb_admin_call_send(struct lb_admin_call *c, const ProtobufCMessage *msg);

/*
 * Ends the call with a gRPC status and a readable message (printf format;
 * percent-encoded on the wire).  Queued messages still go out before the
 * trailers.  A no-op on a done call.
 */
void lb_admin_call_finish(struct lb_admin_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
