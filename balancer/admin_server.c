/*
 * The admin API transport: a listening socket, one nghttp2 server session
 * per accepted connection, and gRPC calls riding on HTTP/2 streams.
 *
 * Reading: conn_read() feeds socket bytes to nghttp2_session_mem_recv(),
 * whose callbacks collect a call's headers, reassemble its request message
 * and dispatch it through the method table once the client half-closes.
 * Writing: responses are queued per call and pulled by nghttp2 through
 * call_read_cb(); conn_flush() moves nghttp2's output to the socket.
 * nghttp2 must not be re-entered from its own callbacks, so code that
 * queues output while one is running only marks the connection, and the
 * flush after mem_recv() sends it.
 *
 * TLS: with a certificate, each connection first runs a non-blocking
 * OpenSSL handshake (ALPN h2) on the same watchers, bounded by the
 * handshake timeout; nghttp2's output (our SETTINGS) waits for it.  Then
 * conn_recv()/conn_send() go through SSL_read()/SSL_write(), whose
 * WANT_READ/WANT_WRITE turn into the watcher the operation waits for.  A
 * first byte that cannot start a TLS handshake (plain HTTP/2, HTTP/1,
 * noise) is recognised before OpenSSL sees it: one log line, then close.
 *
 * Token: with one configured, on_header() checks each call's authorization
 * header as it arrives (admin_auth.c) and the call ends UNAUTHENTICATED
 * before any method runs, unless the method is open (health probes).
 *
 * Lifetimes: connections and calls are never freed where they fail.  A
 * closing connection goes on a list and a call whose last reference is
 * dropped goes on another; the ev_check watcher frees both after the
 * loop's callbacks have returned (an ev_idle keeps the loop from blocking
 * while the lists are non-empty).  Cancel hooks of a closed connection's
 * calls run from there too, never from inside a send on the same call.
 *
 * Bounds: connections at once, in all and per peer address (conn_guard.h:
 * when a cap is reached the oldest connection that never made an
 * authorized call is shed to make room, and a newcomer is refused only
 * when connections with such calls hold every slot), a first-request
 * deadline from accept (TLS handshake included), max concurrent streams
 * per connection, header bytes per stream, a deadline for a request to
 * arrive whole once its headers did, request bytes held per connection
 * and in all (declared message lengths, charged before they arrive),
 * request and unary response size (RESOURCE_EXHAUSTED), a per-call queue
 * for streaming responses, a bounded socket write buffer, an idle timeout
 * per connection, and a linger timer that resets a finished stream whose
 * client stopped reading.  Pressure from clients (refusals, shedding,
 * silent connections, stalled requests) is logged at most once a second
 * per kind, with a count, and counted for /metrics.
 */
#include "admin_server.h"
#include "admin_auth.h"
#include "admin_service.h"
#include "conn_guard.h"
#include "lb_buf.h"
#include "lb_grpc_frame.h"
#include "lb_log.h"
#include "lb_metrics_text.h"
#include "lb_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LOG_SUB          "admin"
#define PATH_TEXT_MAX    256
#define CONN_WRITE_MAX   (1024 * 1024) /* nghttp2 output waiting for the socket */
#define READ_CHUNK       16384
#define WRITE_GATHER     32768 /* nghttp2 output gathered into one write (one TLS record or two) */
#define FINISH_LINGER_S  10.0  /* a finished call's client gets this long to read */
#define REJECT_WAIT_S    5.0   /* an early error waits this long for the request's end */
#define ACCEPT_BACKOFF_S 1.0   /* after EMFILE and friends */
#define NOTE_INTERVAL_S  1.0   /* at most one line per second per kind of pressure */

enum call_timer_mode { TIMER_NONE, TIMER_DEADLINE, TIMER_LINGER, TIMER_REJECT };

struct admin_conn;

struct lb_admin_call {
    struct lb_admin_server *server; /* NULL once the server is gone (orphan) */
    struct ev_loop *loop;
    struct lb_registry *registry;
    struct admin_conn *conn; /* NULL once the stream is gone */
    int32_t stream_id;
    unsigned refs;
    struct lb_admin_call *conn_prev, *conn_next; /* calls of conn */
    struct lb_admin_call *all_prev, *all_next;   /* every live call of the server */
    struct lb_admin_call *dead_next;             /* refs == 0, waiting for the reaper */

    /* request */
    char http_method[8];
    char path[PATH_TEXT_MAX];
    bool path_too_long;
    char content_type[128];
    char timeout[16];
    bool has_timeout;
    char encoding[32];
    unsigned auth_headers; /* authorization headers seen */
    bool auth_ok;          /* the last one carries the admin token */
    size_t header_bytes;
    const struct lb_admin_method *method;
    struct lb_grpc_decoder decoder;
    struct lb_buf request;
    unsigned request_messages;
    size_t request_charge;  /* bytes held against the connection's and server's budgets */
    ev_timer request_timer; /* the request must end within request_timeout_ms */
    ev_tstamp started;

    /* response */
    bool headers_sent; /* HEADERS submitted (with a data provider unless trailers-only) */
    bool finished;     /* final status decided */
    bool rejected;     /* status decided before the request ended; sent at its end */
    bool trailers_submitted;
    bool deferred; /* call_read_cb returned NGHTTP2_ERR_DEFERRED */
    int status;
    char message[LB_GRPC_MESSAGE_TEXT_MAX];
    struct lb_buf out; /* framed messages not yet handed to nghttp2 */
    size_t out_off;
    size_t frame_left; /* bytes of the frame at out_off not yet handed to nghttp2 */
    size_t queue_max;
    ev_timer timer;
    enum call_timer_mode timer_mode;
    int64_t deadline_ms;

    void (*cancel_cb)(void *ud);
    void *cancel_ud;
    void *data;
    void (*release)(void *data);
};

struct admin_conn {
    struct lb_admin_server *server;
    int fd;
    char peer[64];
    nghttp2_session *session;
    ev_io read_watcher;
    ev_io write_watcher;
    ev_timer idle_timer;
    ev_tstamp last_activity;
    struct lb_buf wbuf;
    size_t woff;
    struct lb_admin_call *calls;
    unsigned n_calls;
    struct lb_conn_guard_entry guard; /* proven by an authorized call */
    ev_tstamp accepted;
    bool got_request;     /* a first request header block arrived */
    size_t request_bytes; /* held by its calls' unfinished requests */
    int in_nghttp2;       /* depth of mem_recv/mem_send on the stack */
    bool dead;
    char proto_error[160];
    struct admin_conn *prev, *next; /* server's open connections */
    struct admin_conn *dead_next;

    /* TLS (ssl NULL on a cleartext listener) */
    SSL *ssl;
    bool handshaking;      /* nghttp2's output waits until the handshake is done */
    bool hello_checked;    /* the first byte looked like a TLS handshake */
    bool alpn_refused;     /* the client offered ALPN without h2 */
    bool tls_failed;       /* no close_notify on a broken TLS session */
    bool read_wants_write; /* SSL_read() needs the socket writable first */
};

struct lb_admin_server {
    struct ev_loop *loop;
    struct lb_registry *registry;
    struct lb_admin_limits limits;
    struct lb_admin_auth auth;
    SSL_CTX *tls; /* NULL: cleartext h2c */
    int fd;
    int port;
    bool loopback; /* bound to 127.0.0.0/8 or ::1 */
    char addr[96];
    ev_io accept_watcher;
    ev_timer accept_backoff;
    ev_check reaper;
    ev_idle reap_kick;
    struct admin_conn *conns;
    unsigned n_conns;
    struct admin_conn *dead_conns;
    struct lb_admin_call *calls;
    struct lb_admin_call *dead_calls;

    /* Pressure from clients: admission, request memory, and what is told about it. */
    struct lb_conn_guard guard;
    size_t request_bytes; /* held by every connection's unfinished requests */
    struct lb_rate_log notes[4];
    ev_timer note_timer;
    uint64_t conns_refused, conns_shed, conns_no_request;
    uint64_t calls_request_timeout, calls_request_budget;
};

/* Kinds of pressure, each logged at most once per NOTE_INTERVAL_S with a count. */
enum server_note { NOTE_REFUSED, NOTE_SHED, NOTE_NO_REQUEST, NOTE_REQUEST_TIMEOUT, NOTE_MAX };

static void conn_flush(struct admin_conn *conn);
static void conn_close(struct admin_conn *conn, const char *reason);
static void call_submit_end(struct lb_admin_call *call);

void lb_admin_limits_defaults(struct lb_admin_limits *l)
{
    l->max_connections = 64;
    l->max_per_peer = 16;
    l->max_streams = 32;
    l->idle_timeout_ms = 5 * 60 * 1000;
    l->max_message = LB_GRPC_MAX_MESSAGE_DEFAULT;
    l->stream_queue_max = 1024 * 1024;
    l->max_header_bytes = 16 * 1024;
    l->handshake_timeout_ms = 5 * 1000;
    l->first_request_timeout_ms = 5 * 1000;
    l->request_timeout_ms = 10 * 1000;
    l->conn_request_budget = LB_GRPC_MAX_MESSAGE_DEFAULT;
    l->server_request_budget = 4 * (size_t)LB_GRPC_MAX_MESSAGE_DEFAULT;
    l->conn_request_reserve = 64 * 1024;
}

/* ---- pressure: one line per second per kind, with a count ---- */

static void server_note_log(const struct lb_admin_server *s, enum server_note what,
                            unsigned long count)
{
    const struct lb_admin_limits *l = &s->limits;

    switch (what) {
    case NOTE_REFUSED:
        LB_WARN(LOG_SUB,
                "msg=\"admin connections refused: connections with authorized calls hold "
                "every slot\" count=%lu max_connections=%u max_per_peer=%u",
                count, l->max_connections, l->max_per_peer);
        break;
    case NOTE_SHED:
        LB_WARN(LOG_SUB,
                "msg=\"admin connections closed to make room for new ones (without an "
                "authorized call, from the address holding the most first)\" count=%lu "
                "max_connections=%u "
                "max_per_peer=%u",
                count, l->max_connections, l->max_per_peer);
        break;
    case NOTE_NO_REQUEST:
        LB_WARN(LOG_SUB,
                "msg=\"admin connections closed: no request within the first-request "
                "deadline\" count=%lu deadline_ms=%lld",
                count, (long long)l->first_request_timeout_ms);
        break;
    case NOTE_REQUEST_TIMEOUT:
        LB_WARN(LOG_SUB,
                "msg=\"admin calls reset: request not received in time\" count=%lu "
                "deadline_ms=%lld",
                count, (long long)l->request_timeout_ms);
        break;
    case NOTE_MAX:
        break;
    }
}

static void server_note_arm(struct lb_admin_server *s)
{
    double next = 0;
    bool any = false;

    for (int i = 0; i < NOTE_MAX; i++) {
        if (s->notes[i].held && (!any || lb_rate_log_next(&s->notes[i]) < next)) {
            next = lb_rate_log_next(&s->notes[i]);
            any = true;
        }
    }
    ev_timer_stop(s->loop, &s->note_timer);
    if (any) {
        double after = next - ev_now(s->loop);

        ev_timer_set(&s->note_timer, after > 0.001 ? after : 0.001, 0.);
        ev_timer_start(s->loop, &s->note_timer);
    }
}

static void server_note(struct lb_admin_server *s, enum server_note what)
{
    unsigned long n = lb_rate_log_hit(&s->notes[what], ev_now(s->loop));

    if (n)
        server_note_log(s, what, n);
    else if (!ev_is_active(&s->note_timer))
        server_note_arm(s);
}

static void server_note_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_admin_server *s = w->data;

    for (int i = 0; i < NOTE_MAX; i++) {
        unsigned long n = lb_rate_log_flush(&s->notes[i], ev_now(loop));

        if (n)
            server_note_log(s, (enum server_note)i, n);
    }
    server_note_arm(s);
}

/* ---- request memory ---- */

/* Frees what a call holds of its request and gives the bytes back to the budgets. */
static void call_release_request(struct lb_admin_call *c)
{
    lb_grpc_decoder_free(&c->decoder);
    lb_buf_free(&c->request);
    if (c->request_charge == 0)
        return;
    if (c->conn)
        c->conn->request_bytes -= c->request_charge;
    if (c->server)
        c->server->request_bytes -= c->request_charge;
    c->request_charge = 0;
}

/* ---- reaping ---- */

static void server_kick_reaper(struct lb_admin_server *s)
{
    ev_idle_start(s->loop, &s->reap_kick);
}

static void call_destroy(struct lb_admin_call *call)
{
    if (call->server) {
        struct lb_admin_server *s = call->server;

        if (call->all_prev)
            call->all_prev->all_next = call->all_next;
        else
            s->calls = call->all_next;
        if (call->all_next)
            call->all_next->all_prev = call->all_prev;
    }
    if (call->release)
        call->release(call->data);
    ev_timer_stop(call->loop, &call->request_timer);
    lb_grpc_decoder_free(&call->decoder);
    lb_buf_free(&call->request);
    lb_buf_free(&call->out);
    free(call);
}

/* Runs the cancel hook once, if the handler has not finished the call itself. */
static void call_cancel(struct lb_admin_call *call)
{
    void (*cb)(void *) = call->cancel_cb;

    call->cancel_cb = NULL;
    if (cb)
        cb(call->cancel_ud);
}

/* The stream is gone (closed, reset, or its connection died). */
static void call_detach(struct lb_admin_call *call)
{
    struct admin_conn *conn = call->conn;

    if (!conn)
        return;
    call_release_request(call);
    ev_timer_stop(call->loop, &call->request_timer);
    if (call->conn_prev)
        call->conn_prev->conn_next = call->conn_next;
    else
        conn->calls = call->conn_next;
    if (call->conn_next)
        call->conn_next->conn_prev = call->conn_prev;
    conn->n_calls--;
    call->conn = NULL;
    if (conn->session && call->stream_id)
        nghttp2_session_set_stream_user_data(conn->session, call->stream_id, NULL);
    call->stream_id = 0;
    ev_timer_stop(call->loop, &call->timer);
    if (!call->finished) {
        call->finished = true;
        call->status = LB_GRPC_CANCELLED;
        LB_DEBUG(LOG_SUB, "msg=\"admin call cancelled\" path=%s peer=%s", call->path, conn->peer);
        call_cancel(call);
    }
    lb_admin_call_unref(call); /* the stream's reference */
}

static void conn_destroy(struct admin_conn *conn)
{
    while (conn->calls)
        call_detach(conn->calls);
    ev_io_stop(conn->server->loop, &conn->read_watcher);
    ev_io_stop(conn->server->loop, &conn->write_watcher);
    ev_timer_stop(conn->server->loop, &conn->idle_timer);
    nghttp2_session_del(conn->session);
    if (conn->ssl) {
        /* close_notify, best effort: the socket is non-blocking. */
        ERR_clear_error();
        if (!conn->handshaking && !conn->tls_failed)
            SSL_shutdown(conn->ssl);
        SSL_free(conn->ssl);
        ERR_clear_error();
    }
    if (conn->fd >= 0)
        close(conn->fd);
    lb_buf_free(&conn->wbuf);
    free(conn);
}

static void server_reap(struct lb_admin_server *s)
{
    while (s->dead_conns || s->dead_calls) {
        struct admin_conn *conn;
        struct lb_admin_call *call;

        while ((conn = s->dead_conns)) {
            s->dead_conns = conn->dead_next;
            conn_destroy(conn);
        }
        while ((call = s->dead_calls)) {
            s->dead_calls = call->dead_next;
            call_destroy(call);
        }
    }
    ev_idle_stop(s->loop, &s->reap_kick);
}

static void server_reaper_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    server_reap(w->data);
}

static void server_reap_kick_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    /* Nothing to do: being active keeps the loop from blocking until the check runs. */
}

/* ---- the call API ---- */

struct ev_loop *lb_admin_call_loop(const struct lb_admin_call *c)
{
    return c->loop;
}

struct lb_registry *lb_admin_call_registry(const struct lb_admin_call *c)
{
    return c->registry;
}

void lb_admin_call_ref(struct lb_admin_call *c)
{
    c->refs++;
}

void lb_admin_call_unref(struct lb_admin_call *c)
{
    if (--c->refs > 0)
        return;
    if (!c->server) {
        /* Orphaned by lb_admin_server_free(): nothing of ours is on the stack. */
        call_destroy(c);
        return;
    }
    c->dead_next = c->server->dead_calls;
    c->server->dead_calls = c;
    server_kick_reaper(c->server);
}

bool lb_admin_call_is_done(const struct lb_admin_call *c)
{
    return c->finished || !c->conn;
}

void lb_admin_call_on_cancel(struct lb_admin_call *c, void (*cb)(void *ud), void *ud)
{
    c->cancel_cb = cb;
    c->cancel_ud = ud;
}

void lb_admin_call_set_data(struct lb_admin_call *c, void *data, void (*release)(void *data))
{
    c->data = data;
    c->release = release;
}

/* Flushes unless an nghttp2 callback is running; on_read() flushes after mem_recv. */
static void conn_kick(struct admin_conn *conn)
{
    if (conn && !conn->dead && conn->in_nghttp2 == 0)
        conn_flush(conn);
}

static ssize_t call_read_cb(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data)
{
    struct lb_admin_call *call = source->ptr;
    size_t avail = call->out.len - call->out_off;

    if (avail > 0) {
        size_t n = avail < length ? avail : length;

        memcpy(buf, call->out.data + call->out_off, n);
        /* Track frame boundaries so that unsent whole messages can be dropped. */
        for (size_t done = 0; done < n;) {
            size_t step;

            if (call->frame_left == 0) {
                const uint8_t *h = (const uint8_t *)call->out.data + call->out_off + done;

                call->frame_left =
                    LB_GRPC_FRAME_HEADER_LEN +
                    ((size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4]);
            }
            step = call->frame_left < n - done ? call->frame_left : n - done;
            call->frame_left -= step;
            done += step;
        }
        call->out_off += n;
        if (call->out_off == call->out.len) {
            lb_buf_reset(&call->out);
            call->out_off = 0;
        }
        return (ssize_t)n;
    }
    if (!call->finished) {
        call->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!call->trailers_submitted) {
        char status[16], message[3 * LB_GRPC_MESSAGE_TEXT_MAX + 1];
        nghttp2_nv nva[2];
        size_t n = 1;

        snprintf(status, sizeof(status), "%d", call->status);
        nva[0] = (nghttp2_nv){(uint8_t *)"grpc-status", (uint8_t *)status, 11, strlen(status),
                              NGHTTP2_NV_FLAG_NONE};
        if (call->message[0]) {
            lb_grpc_percent_encode(call->message, strlen(call->message), message, sizeof(message));
            nva[n++] = (nghttp2_nv){(uint8_t *)"grpc-message", (uint8_t *)message, 12,
                                    strlen(message), NGHTTP2_NV_FLAG_NONE};
        }
        /* Never end the stream without a status: reset it if trailers cannot go. */
        if (nghttp2_submit_trailer(session, stream_id, nva, n) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        call->trailers_submitted = true;
    }
    return 0;
}

void lb_admin_call_begin(struct lb_admin_call *c)
{
    nghttp2_nv nva[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider dp;

    if (!c->conn || c->headers_sent || c->finished)
        return;
    dp.source.ptr = c;
    dp.read_callback = call_read_cb;
    if (nghttp2_submit_response(c->conn->session, c->stream_id, nva, 2, &dp) != 0) {
        conn_close(c->conn, "cannot submit response headers");
        return;
    }
    c->headers_sent = true;
    conn_kick(c->conn);
}

int lb_admin_call_send(struct lb_admin_call *c, const ProtobufCMessage *msg)
{
    size_t size, pending;
    uint8_t *tmp;
    int rc;

    if (lb_admin_call_is_done(c))
        return -ECANCELED;
    size = protobuf_c_message_get_packed_size(msg);
    if (size > c->server->limits.max_message)
        return -EMSGSIZE;
    /* Compact: everything before out_off is already with nghttp2. */
    if (c->out_off > 0) {
        lb_buf_consume(&c->out, c->out_off);
        c->out_off = 0;
    }
    pending = c->out.len;
    if (pending + LB_GRPC_FRAME_HEADER_LEN + size > c->queue_max)
        return -ENOBUFS;
    tmp = malloc(size ? size : 1);
    if (!tmp)
        return -ENOMEM;
    protobuf_c_message_pack(msg, tmp);
    rc = lb_grpc_frame_encode(&c->out, tmp, size);
    free(tmp);
    if (rc < 0)
        return rc == -E2BIG ? -ENOBUFS : rc;
    if (!c->headers_sent)
        lb_admin_call_begin(c);
    if (c->conn && c->deferred) {
        c->deferred = false;
        nghttp2_session_resume_data(c->conn->session, c->stream_id);
    }
    conn_kick(c->conn);
    return 0;
}

static void call_log_end(const struct lb_admin_call *call)
{
    double ms = (ev_now(call->loop) - call->started) * 1000.0;

    if (call->status == LB_GRPC_OK)
        LB_DEBUG(LOG_SUB, "msg=\"admin call\" path=%s status=OK ms=%.1f", call->path, ms);
    else {
        char text[256];

        LB_DEBUG(LOG_SUB, "msg=\"admin call\" path=%s status=%s ms=%.1f message=%s", call->path,
                 lb_grpc_status_name(call->status), ms,
                 lb_log_quote(text, sizeof(text), call->message));
    }
}

/*
 * A call that fails has no use for queued messages: drop every whole message
 * nghttp2 has not started on, so the status can go out even to a client
 * whose flow-control window is closed.  The rest of a message already in
 * flight stays, keeping the stream well-framed.
 */
static void call_drop_unsent(struct lb_admin_call *c)
{
    size_t keep = c->out_off + c->frame_left;

    if (keep < c->out.len) {
        c->out.len = keep;
        c->out.data[keep] = '\0';
    }
}

static void call_set_status(struct lb_admin_call *c, int status, const char *fmt, va_list ap)
{
    c->finished = true;
    c->status = status;
    vsnprintf(c->message, sizeof(c->message), fmt, ap);
    if (status != LB_GRPC_OK)
        call_drop_unsent(c);
}

void lb_admin_call_finish(struct lb_admin_call *c, int status, const char *fmt, ...)
{
    va_list ap;

    if (lb_admin_call_is_done(c))
        return;
    va_start(ap, fmt);
    call_set_status(c, status, fmt, ap);
    va_end(ap);
    c->cancel_cb = NULL; /* the handler ended it: nothing to cancel */
    call_submit_end(c);
}

/* Server-side end of a call the handler may still be working on. */
static void call_abort(struct lb_admin_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void call_abort(struct lb_admin_call *c, int status, const char *fmt, ...)
{
    va_list ap;

    if (lb_admin_call_is_done(c))
        return;
    va_start(ap, fmt);
    call_set_status(c, status, fmt, ap);
    va_end(ap);
    call_cancel(c);
    call_submit_end(c);
}

static void call_timer_start(struct lb_admin_call *c, enum call_timer_mode mode, ev_tstamp after)
{
    ev_timer_stop(c->loop, &c->timer);
    c->timer_mode = mode;
    ev_timer_set(&c->timer, after, 0.);
    ev_timer_start(c->loop, &c->timer);
}

/* Queues the end of the call: trailers after pending data, or trailers-only. */
static void call_submit_end(struct lb_admin_call *c)
{
    struct admin_conn *conn = c->conn;

    call_log_end(c);
    if (!conn)
        return;
    if (!c->headers_sent) {
        char status[16], message[3 * LB_GRPC_MESSAGE_TEXT_MAX + 1];
        nghttp2_nv nva[4] = {
            {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16,
             NGHTTP2_NV_FLAG_NONE},
        };
        size_t n = 3;

        snprintf(status, sizeof(status), "%d", c->status);
        nva[2] = (nghttp2_nv){(uint8_t *)"grpc-status", (uint8_t *)status, 11, strlen(status),
                              NGHTTP2_NV_FLAG_NONE};
        if (c->message[0]) {
            lb_grpc_percent_encode(c->message, strlen(c->message), message, sizeof(message));
            nva[n++] = (nghttp2_nv){(uint8_t *)"grpc-message", (uint8_t *)message, 12,
                                    strlen(message), NGHTTP2_NV_FLAG_NONE};
        }
        if (nghttp2_submit_response(conn->session, c->stream_id, nva, n, NULL) != 0) {
            conn_close(conn, "cannot submit response");
            return;
        }
        c->headers_sent = true;
        c->trailers_submitted = true;
    } else if (c->deferred) {
        c->deferred = false;
        nghttp2_session_resume_data(conn->session, c->stream_id);
    }
    call_timer_start(c, TIMER_LINGER, FINISH_LINGER_S);
    conn_kick(conn);
}

/* Answers before any gRPC response: wrong HTTP method or content-type. */
static void call_reject_http(struct lb_admin_call *c, const char *http_status, int status,
                             const char *message)
{
    char code[16], encoded[3 * LB_GRPC_MESSAGE_TEXT_MAX + 1];
    nghttp2_nv nva[4];

    snprintf(code, sizeof(code), "%d", status);
    lb_grpc_percent_encode(message, strlen(message), encoded, sizeof(encoded));
    nva[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)http_status, 7, strlen(http_status),
                          NGHTTP2_NV_FLAG_NONE};
    nva[1] = (nghttp2_nv){(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16,
                          NGHTTP2_NV_FLAG_NONE};
    nva[2] = (nghttp2_nv){(uint8_t *)"grpc-status", (uint8_t *)code, 11, strlen(code),
                          NGHTTP2_NV_FLAG_NONE};
    nva[3] = (nghttp2_nv){(uint8_t *)"grpc-message", (uint8_t *)encoded, 12, strlen(encoded),
                          NGHTTP2_NV_FLAG_NONE};
    c->finished = true;
    c->status = status;
    snprintf(c->message, sizeof(c->message), "%s", message);
    c->headers_sent = true;
    c->trailers_submitted = true;
    call_log_end(c);
    if (nghttp2_submit_response(c->conn->session, c->stream_id, nva, 4, NULL) != 0)
        conn_close(c->conn, "cannot submit response");
}

/*
 * An error found before the client has sent its whole request (a bad
 * header, a missing token, an unknown method, a message too large).
 * Answering at once would race the client's upload: libcurl 7.88 then
 * stops sending and waits, or loses the answer to the RST_STREAM that must
 * follow it.  So the status waits for the request's end, whose bytes are
 * dropped unread, for REJECT_WAIT_S at most.  No handler runs.
 */
static void call_reject(struct lb_admin_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void call_reject(struct lb_admin_call *c, int status, const char *fmt, ...)
{
    va_list ap;

    if (c->finished || c->rejected)
        return;
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof(c->message), fmt, ap);
    va_end(ap);
    c->status = status;
    c->rejected = true;
    call_timer_start(c, TIMER_REJECT, REJECT_WAIT_S); /* replaces the deadline */
}

/* Sends the status call_reject() decided. */
static void call_end_rejected(struct lb_admin_call *c)
{
    if (!c->rejected || c->finished)
        return;
    c->rejected = false;
    c->finished = true;
    c->cancel_cb = NULL;
    call_submit_end(c);
}

static void call_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_admin_call *c = w->data;
    struct admin_conn *conn = c->conn;

    if (!conn)
        return;
    if (c->timer_mode == TIMER_REJECT) {
        /* The client keeps sending: answer now; on_frame_send() resets the stream. */
        call_end_rejected(c);
        return;
    }
    if (c->timer_mode == TIMER_DEADLINE && !c->finished) {
        char text[32];

        if (!c->headers_sent) {
            call_abort(c, LB_GRPC_DEADLINE_EXCEEDED, "deadline of %s exceeded",
                       lb_grpc_timeout_format(c->deadline_ms, text, sizeof(text)));
            return;
        }
        /* The response is under way: cancel the stream, as grpc servers do. */
        c->finished = true;
        c->status = LB_GRPC_DEADLINE_EXCEEDED;
        snprintf(c->message, sizeof(c->message), "deadline exceeded");
        call_log_end(c);
        call_cancel(c);
    } else if (c->timer_mode == TIMER_LINGER) {
        LB_DEBUG(LOG_SUB,
                 "msg=\"admin client does not read its answer; resetting stream\" "
                 "path=%s peer=%s",
                 c->path, conn->peer);
    } else {
        return;
    }
    if (c->conn) {
        nghttp2_submit_rst_stream(conn->session, NGHTTP2_FLAG_NONE, c->stream_id, NGHTTP2_CANCEL);
        conn_kick(conn);
    }
}

/*
 * The request did not end within request_timeout_ms of its headers (a
 * client that stalls halfway through a message): its bytes are freed at
 * once and the call ends with DEADLINE_EXCEEDED; on_frame_send() then
 * resets the stream, so the client stops sending.
 */
static void call_request_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_admin_call *c = w->data;
    struct lb_admin_server *s = c->server;
    char text[32];

    if (!c->conn || c->finished)
        return;
    if (c->rejected) {
        call_end_rejected(c); /* the status is known: send it now */
        return;
    }
    call_release_request(c);
    s->calls_request_timeout++;
    server_note(s, NOTE_REQUEST_TIMEOUT);
    LB_DEBUG(LOG_SUB, "msg=\"admin call reset: request not received in time\" path=%s peer=%s",
             c->path, c->conn->peer);
    call_abort(c, LB_GRPC_DEADLINE_EXCEEDED,
               "the request was not received within %s of its headers (lbd's limit)",
               lb_grpc_timeout_format(s->limits.request_timeout_ms, text, sizeof(text)));
}

/* ---- request handling (inside nghttp2 callbacks) ---- */

static struct lb_admin_call *call_new(struct admin_conn *conn, int32_t stream_id)
{
    struct lb_admin_server *s = conn->server;
    struct lb_admin_call *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    c->server = s;
    c->loop = s->loop;
    c->registry = s->registry;
    c->conn = conn;
    c->stream_id = stream_id;
    c->refs = 1; /* the stream's */
    c->started = ev_now(s->loop);
    lb_grpc_decoder_init(&c->decoder, s->limits.max_message, false);
    lb_buf_init(&c->request, s->limits.max_message);
    c->queue_max = s->limits.max_message + LB_GRPC_FRAME_HEADER_LEN;
    lb_buf_init(&c->out, c->queue_max);
    ev_init(&c->timer, call_timer_cb);
    c->timer.data = c;
    ev_init(&c->request_timer, call_request_timer_cb);
    c->request_timer.data = c;
    if (s->limits.request_timeout_ms > 0) {
        ev_timer_set(&c->request_timer, (ev_tstamp)s->limits.request_timeout_ms / 1000.0, 0.);
        ev_timer_start(s->loop, &c->request_timer);
    }
    c->conn_next = conn->calls;
    if (conn->calls)
        conn->calls->conn_prev = c;
    conn->calls = c;
    conn->n_calls++;
    c->all_next = s->calls;
    if (s->calls)
        s->calls->all_prev = c;
    s->calls = c;
    return c;
}

static void copy_header(char *dst, size_t size, const uint8_t *value, size_t len, bool *too_long)
{
    if (len >= size) {
        if (too_long)
            *too_long = true;
        len = size - 1;
    }
    memcpy(dst, value, len);
    dst[len] = '\0';
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct admin_conn *conn = ud;
    struct lb_admin_call *c;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (conn->n_calls >= conn->server->limits.max_streams) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    c = call_new(conn, frame->hd.stream_id);
    if (!c)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream only */
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, c);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    struct lb_admin_call *c;

    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    c = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!c)
        return 0;
    c->header_bytes += namelen + valuelen + 32; /* HPACK's accounting */
    if (c->header_bytes > c->server->limits.max_header_bytes)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* request trailers carry nothing we use */
#define IS(lit) (namelen == sizeof(lit) - 1 && memcmp(name, lit, namelen) == 0)
    if (IS(":path"))
        copy_header(c->path, sizeof(c->path), value, valuelen, &c->path_too_long);
    else if (IS(":method"))
        copy_header(c->http_method, sizeof(c->http_method), value, valuelen, NULL);
    else if (IS("content-type"))
        copy_header(c->content_type, sizeof(c->content_type), value, valuelen, NULL);
    else if (IS("grpc-timeout")) {
        copy_header(c->timeout, sizeof(c->timeout), value, valuelen, NULL);
        c->has_timeout = true;
    } else if (IS("grpc-encoding")) {
        copy_header(c->encoding, sizeof(c->encoding), value, valuelen, NULL);
    } else if (IS("authorization")) {
        c->auth_headers++;
        c->auth_ok = lb_admin_auth_accepts(&c->server->auth, (const char *)value, valuelen);
    }
#undef IS
    return 0;
}

/* One authorization header with the token, or no token needed. */
static bool call_is_authorized(const struct lb_admin_call *c)
{
    if (!c->server->auth.required || (c->method && c->method->open))
        return true;
    return c->auth_headers == 1 && c->auth_ok;
}

/* Headers are complete: check them, find the method, arm the deadline. */
static void call_headers_done(struct lb_admin_call *c)
{
    struct admin_conn *conn = c->conn;
    char service[PATH_TEXT_MAX], method[PATH_TEXT_MAX];
    const char *slash;
    bool malformed;

    if (!conn->got_request) {
        /* The first-request deadline is met: from now on the idle timeout applies. */
        conn->got_request = true;
        conn->last_activity = ev_now(c->loop);
        conn->idle_timer.repeat = (ev_tstamp)c->server->limits.idle_timeout_ms / 1000.0;
        ev_timer_again(c->loop, &conn->idle_timer);
    }

    if (strcmp(c->http_method, "POST") != 0) {
        call_reject_http(c, "405", LB_GRPC_INTERNAL, "gRPC requests use POST");
        return;
    }
    if (!lb_grpc_content_type_is_grpc(c->content_type, strlen(c->content_type))) {
        char text[LB_GRPC_MESSAGE_TEXT_MAX];

        snprintf(text, sizeof(text), "invalid gRPC request content-type \"%s\"", c->content_type);
        call_reject_http(c, "415", LB_GRPC_INTERNAL, text);
        return;
    }
    slash = c->path[0] == '/' ? strchr(c->path + 1, '/') : NULL;
    malformed = c->path_too_long || !slash || slash == c->path + 1 || slash[1] == '\0' ||
                strchr(slash + 1, '/');
    if (!malformed) {
        snprintf(service, sizeof(service), "%.*s", (int)(slash - c->path - 1), c->path + 1);
        snprintf(method, sizeof(method), "%s", slash + 1);
        c->method = lb_admin_service_find(service, method);
    }
    /* Without the token nothing is told, not even whether a method exists. */
    if (!call_is_authorized(c)) {
        LB_INFO(LOG_SUB,
                "msg=\"admin call refused: missing or invalid admin token\" path=%s "
                "peer=%s",
                c->path, c->conn->peer);
        c->method = NULL;
        call_reject(c, LB_GRPC_UNAUTHENTICATED, "missing or invalid admin token");
        return;
    }
    if (c->has_timeout) {
        int64_t ms;

        if (lb_grpc_timeout_parse(c->timeout, strlen(c->timeout), &ms) < 0) {
            call_reject(c, LB_GRPC_INVALID_ARGUMENT, "malformed grpc-timeout \"%s\"", c->timeout);
            return;
        }
        c->deadline_ms = ms;
        call_timer_start(c, TIMER_DEADLINE, (ev_tstamp)ms / 1000.0);
    }
    if (c->encoding[0] && strcmp(c->encoding, "identity") != 0) {
        call_reject(c, LB_GRPC_UNIMPLEMENTED,
                    "grpc-encoding \"%s\" is not supported (identity only)", c->encoding);
        return;
    }
    if (malformed) {
        call_reject(c, LB_GRPC_UNIMPLEMENTED, "malformed method name \"%s\"", c->path);
        return;
    }
    if (!c->method) {
        call_reject(c, LB_GRPC_UNIMPLEMENTED, "unknown method %s for service %s", method, service);
        return;
    }
    if (c->method->server_streaming)
        c->queue_max = c->server->limits.stream_queue_max;
    lb_buf_init(&c->out, c->queue_max);
    /*
     * An authorized call: this connection is an operator's and is never
     * closed to make room.  With a token, the open health check proves
     * nothing (anyone may make it); without one, every call does.
     */
    if (!c->method->open || !c->server->auth.required)
        lb_conn_guard_set_proven(&c->server->guard, &conn->guard, true);
}

static int on_request_message(void *ud, const uint8_t *data, size_t len, bool compressed)
{
    struct lb_admin_call *c = ud;

    if (++c->request_messages > 1)
        return 0; /* reported once the request ends */
    return lb_buf_append(&c->request, data, len);
}

/*
 * Charges the call for what its request will hold: the message kept so
 * far plus the declared length of the one arriving.  Declared, not
 * received: a client announcing 4 MiB is told at once when they do not
 * fit, and memory never runs ahead of the budget by more than one DATA
 * frame.  Over the connection's or the server's budget the call is
 * rejected (RESOURCE_EXHAUSTED) and what it held is freed.
 */
static void call_charge_request(struct lb_admin_call *c)
{
    struct admin_conn *conn = c->conn;
    struct lb_admin_server *s = c->server;
    const struct lb_request_budget budget = {
        .conn_max = s->limits.conn_request_budget,
        .conn_reserve = s->limits.conn_request_reserve,
        .server_max = s->limits.server_request_budget,
    };
    size_t need = c->request.len, more;

    if (c->decoder.header_len == LB_GRPC_FRAME_HEADER_LEN)
        need += c->decoder.want;
    if (need <= c->request_charge) {
        conn->request_bytes -= c->request_charge - need;
        s->request_bytes -= c->request_charge - need;
        c->request_charge = need;
        return;
    }
    more = need - c->request_charge;
    if (lb_request_budget_fits(&budget, conn->request_bytes, s->request_bytes, more)) {
        conn->request_bytes += more;
        s->request_bytes += more;
        c->request_charge = need;
        return;
    }
    s->calls_request_budget++;
    LB_DEBUG(LOG_SUB,
             "msg=\"admin call refused: request memory budget\" path=%s peer=%s "
             "need=%zu conn_bytes=%zu server_bytes=%zu",
             c->path, conn->peer, need, conn->request_bytes, s->request_bytes);
    if (conn->request_bytes + more > budget.conn_max)
        call_reject(c, LB_GRPC_RESOURCE_EXHAUSTED,
                    "this connection's unfinished requests would hold more than %zu bytes; send "
                    "fewer or smaller requests at once",
                    budget.conn_max);
    else
        call_reject(c, LB_GRPC_RESOURCE_EXHAUSTED,
                    "lbd's admin API holds %zu bytes of unfinished requests already; try again "
                    "shortly",
                    s->request_bytes);
}

static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                              const uint8_t *data, size_t len, void *ud)
{
    struct lb_admin_call *c = nghttp2_session_get_stream_user_data(session, stream_id);
    int rc;

    if (!c || c->finished || c->rejected)
        return 0; /* dropped unread */
    rc = lb_grpc_decoder_feed(&c->decoder, data, len, on_request_message, c);
    if (rc == 0)
        call_charge_request(c);
    if (rc == -EMSGSIZE || rc == -E2BIG)
        call_reject(c, LB_GRPC_RESOURCE_EXHAUSTED,
                    "request message larger than the maximum of %zu bytes",
                    c->server->limits.max_message);
    else if (rc == -EPROTO)
        call_reject(c, LB_GRPC_INTERNAL,
                    "compressed request message but no grpc-encoding was negotiated");
    else if (rc < 0)
        call_reject(c, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory reading the request");
    if (c->rejected)
        call_release_request(c);
    return 0;
}

/* The client half-closed: decode the request and run the handler. */
static void call_request_done(struct lb_admin_call *c)
{
    ProtobufCMessage *request = NULL;
    char err[LB_GRPC_MESSAGE_TEXT_MAX];
    int status;

    ev_timer_stop(c->loop, &c->request_timer);
    if (c->rejected) {
        call_end_rejected(c);
        return;
    }
    if (c->finished || !c->method)
        return;
    if (lb_grpc_decoder_finish(&c->decoder) < 0) {
        lb_admin_call_finish(c, LB_GRPC_INVALID_ARGUMENT,
                             "request ends inside a gRPC message (truncated frame)");
        return;
    }
    if (c->request_messages != 1) {
        lb_admin_call_finish(c, LB_GRPC_INVALID_ARGUMENT,
                             "%s takes exactly one request message, got %u", c->method->name,
                             c->request_messages);
        return;
    }
    status = lb_admin_service_decode(c->method, (const uint8_t *)c->request.data, c->request.len,
                                     &request, err, sizeof(err));
    call_release_request(c);
    if (status != LB_GRPC_OK) {
        lb_admin_call_finish(c, status, "%s", err);
        return;
    }
    lb_admin_call_ref(c);
    c->method->handle(c, request);
    protobuf_c_message_free_unpacked(request, NULL);
    lb_admin_call_unref(c);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct lb_admin_call *c;

    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    c = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (!c)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST)
        call_headers_done(c);
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        call_request_done(c);
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *ud)
{
    struct lb_admin_call *c = nghttp2_session_get_stream_user_data(session, stream_id);

    if (c)
        call_detach(c);
    return 0;
}

/*
 * The status went out before the client finished its request (a rejected
 * call that waited in vain, a deadline, a non-gRPC client): as gRPC
 * servers do, reset the stream with NO_ERROR, which tells the client to
 * stop sending rather than wait for a window that will never open.
 */
static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    if (frame->hd.type == NGHTTP2_HEADERS && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) == 0)
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_NO_ERROR);
    return 0;
}

static int on_error(nghttp2_session *session, int lib_error_code, const char *msg, size_t len,
                    void *ud)
{
    struct admin_conn *conn = ud;

    if (!conn->proto_error[0])
        snprintf(conn->proto_error, sizeof(conn->proto_error), "%.*s", (int)len, msg);
    return 0;
}

/* ---- connections ---- */

static void conn_close(struct admin_conn *conn, const char *reason)
{
    struct lb_admin_server *s = conn->server;

    if (conn->dead)
        return;
    conn->dead = true;
    if (reason) {
        char detail[200];

        LB_WARN(
            LOG_SUB, "msg=\"admin connection closed: %s\" peer=%s detail=%s", reason, conn->peer,
            lb_log_quote(detail, sizeof(detail), conn->proto_error[0] ? conn->proto_error : "-"));
    } else {
        LB_DEBUG(LOG_SUB, "msg=\"admin connection closed\" peer=%s", conn->peer);
    }
    ev_io_stop(s->loop, &conn->read_watcher);
    ev_io_stop(s->loop, &conn->write_watcher);
    ev_timer_stop(s->loop, &conn->idle_timer);
    lb_conn_guard_remove(&s->guard, &conn->guard);
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        s->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    s->n_conns--;
    conn->dead_next = s->dead_conns;
    s->dead_conns = conn;
    server_kick_reaper(s);
}

/* ---- transport: the socket, or TLS over it ---- */

/* Keeps OpenSSL's first complaint for the close log line; empties its error queue. */
static void conn_tls_error(struct admin_conn *conn)
{
    unsigned long e = ERR_get_error();

    conn->tls_failed = true;
    if (conn->alpn_refused && !conn->proto_error[0])
        snprintf(conn->proto_error, sizeof(conn->proto_error),
                 "the client does not offer ALPN h2 (gRPC needs HTTP/2)");
    if (e && !conn->proto_error[0]) {
        const char *reason = ERR_reason_error_string(e);

        if (reason)
            snprintf(conn->proto_error, sizeof(conn->proto_error), "%s", reason);
        else
            ERR_error_string_n(e, conn->proto_error, sizeof(conn->proto_error));
    }
    ERR_clear_error();
}

/*
 * Reads what the peer sent.  Returns the byte count, 0 at the end of the
 * stream, -EAGAIN when there is nothing now (TLS may have armed the write
 * watcher it needs first), or another negative errno (-EPROTO: TLS error,
 * described in conn->proto_error).
 */
static ssize_t conn_recv(struct admin_conn *conn, uint8_t *buf, size_t len)
{
    struct ev_loop *loop = conn->server->loop;
    int n, saved;

    if (!conn->ssl) {
        ssize_t r = recv(conn->fd, buf, len, 0);

        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return -EAGAIN;
        return r < 0 ? -errno : r;
    }
    ERR_clear_error();
    n = SSL_read(conn->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    saved = errno;
    if (n > 0)
        return n;
    switch (SSL_get_error(conn->ssl, n)) {
    case SSL_ERROR_WANT_READ:
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        /* A TLS message of ours must go out first (a key update). */
        conn->read_wants_write = true;
        ev_io_stop(loop, &conn->read_watcher);
        ev_io_start(loop, &conn->write_watcher);
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        conn->tls_failed = true;
        ERR_clear_error();
        return saved ? -saved : 0;
    default:
        conn_tls_error(conn);
        return -EPROTO;
    }
}

/*
 * Writes up to `len` (> 0) bytes.  Returns the count written, -EAGAIN with
 * the watcher the write waits for armed, -EINTR (try again), or another
 * negative errno (-EPROTO: TLS error, described in conn->proto_error).
 */
static ssize_t conn_send(struct admin_conn *conn, const uint8_t *buf, size_t len)
{
    struct ev_loop *loop = conn->server->loop;
    int n, saved;

    if (!conn->ssl) {
        ssize_t r = send(conn->fd, buf, len, MSG_NOSIGNAL);

        if (r >= 0)
            return r;
        if (errno == EINTR)
            return -EINTR;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            ev_io_start(loop, &conn->write_watcher);
            return -EAGAIN;
        }
        return -errno;
    }
    /* SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER: wbuf may move between retries. */
    ERR_clear_error();
    n = SSL_write(conn->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    saved = errno;
    if (n > 0)
        return n;
    switch (SSL_get_error(conn->ssl, n)) {
    case SSL_ERROR_WANT_WRITE:
        ev_io_start(loop, &conn->write_watcher);
        return -EAGAIN;
    case SSL_ERROR_WANT_READ:
        /* The read watcher is always on, and conn_read() flushes. */
        if (!conn->read_wants_write)
            ev_io_stop(loop, &conn->write_watcher);
        return -EAGAIN;
    case SSL_ERROR_SYSCALL:
        conn->tls_failed = true;
        ERR_clear_error();
        return saved ? -saved : -EPIPE;
    default:
        conn_tls_error(conn);
        return -EPROTO;
    }
}

/*
 * Moves nghttp2's output to the socket.  Frames are gathered first (up to
 * WRITE_GATHER bytes), so a DATA frame's 9-byte header does not go out as
 * a segment (or a TLS record) of its own.  Nothing is appended while a
 * write is pending, so a retried SSL_write() sees the same bytes.
 */
static void conn_flush(struct admin_conn *conn)
{
    struct ev_loop *loop = conn->server->loop;

    while (!conn->dead && !conn->handshaking) {
        ssize_t n;

        if (conn->woff == conn->wbuf.len) {
            lb_buf_reset(&conn->wbuf);
            conn->woff = 0;
            while (conn->wbuf.len < WRITE_GATHER) {
                const uint8_t *data;

                conn->in_nghttp2++;
                n = nghttp2_session_mem_send(conn->session, &data);
                conn->in_nghttp2--;
                if (n < 0) {
                    conn_close(conn, nghttp2_strerror((int)n));
                    return;
                }
                if (n == 0)
                    break;
                /* data is valid until the next mem_send: copy it now */
                if (lb_buf_append(&conn->wbuf, data, (size_t)n) < 0) {
                    conn_close(conn, "output buffer limit reached");
                    return;
                }
            }
            if (conn->wbuf.len == 0)
                break;
        }
        n = conn_send(conn, (const uint8_t *)conn->wbuf.data + conn->woff,
                      conn->wbuf.len - conn->woff);
        if (n == -EINTR)
            continue;
        if (n == -EAGAIN)
            return;
        if (n < 0) {
            if (n == -EPIPE || n == -ECONNRESET)
                conn_close(conn, NULL);
            else
                conn_close(conn, n == -EPROTO ? "TLS error" : strerror((int)-n));
            return;
        }
        conn->woff += (size_t)n;
    }
    if (conn->dead || conn->handshaking)
        return;
    if (!conn->read_wants_write)
        ev_io_stop(loop, &conn->write_watcher);
    if (!nghttp2_session_want_read(conn->session) && !nghttp2_session_want_write(conn->session))
        conn_close(conn, conn->proto_error[0] ? "HTTP/2 protocol error" : NULL);
}

/* Feeds what the peer sent to nghttp2, then flushes what it answers. */
static void conn_read(struct admin_conn *conn)
{
    uint8_t buf[READ_CHUNK];

    do {
        ssize_t n = conn_recv(conn, buf, sizeof(buf)), rv;

        if (n == -EAGAIN)
            break;
        if (n <= 0) {
            conn_close(conn, n == -EPROTO                ? "TLS error"
                             : n < 0 && n != -ECONNRESET ? strerror((int)-n)
                                                         : NULL);
            return;
        }
        conn->last_activity = ev_now(conn->server->loop);
        conn->in_nghttp2++;
        rv = nghttp2_session_mem_recv(conn->session, buf, (size_t)n);
        conn->in_nghttp2--;
        if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
            conn_close(conn, conn->ssl ? "not an HTTP/2 client (expected gRPC)"
                                       : "not an HTTP/2 client (expected h2c prior knowledge, "
                                         "gRPC)");
            return;
        }
        if (rv < 0) {
            if (!conn->proto_error[0])
                snprintf(conn->proto_error, sizeof(conn->proto_error), "%s",
                         nghttp2_strerror((int)rv));
            conn_close(conn, "HTTP/2 protocol error");
            return;
        }
        /* TLS may hold bytes (processed or not) that no socket event will announce. */
    } while (conn->ssl && !conn->dead && SSL_has_pending(conn->ssl));
    conn_flush(conn);
}

/*
 * Says what a first byte that cannot start a TLS handshake most likely is:
 * the usual case is a cleartext client pointed at the TLS port.
 */
static const char *describe_not_tls(const uint8_t *p, size_t n)
{
    static const char preface[] = "PRI * HTTP/2.0";
    size_t i = 0;

    if (n >= 3 && memcmp(p, preface, n < sizeof(preface) - 1 ? n : sizeof(preface) - 1) == 0)
        return "cleartext HTTP/2 (h2c) client on the TLS admin port (lbctl: pass --admin-ca)";
    while (i < n && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    if (i >= 3 && i < n && p[i] == ' ')
        return "cleartext HTTP/1 request on the TLS admin port";
    return "the first bytes are not a TLS handshake";
}

/* Runs the TLS handshake as far as the socket allows. */
static void conn_handshake(struct admin_conn *conn)
{
    struct ev_loop *loop = conn->server->loop;
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    int rc;

    if (!conn->hello_checked) {
        uint8_t first[16];
        ssize_t n = recv(conn->fd, first, sizeof(first), MSG_PEEK);

        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            conn->tls_failed = true; /* connected and left: a port probe */
            conn_close(conn, NULL);
            return;
        }
        if (first[0] != 0x16) { /* TLS record type "handshake" */
            conn->tls_failed = true;
            snprintf(conn->proto_error, sizeof(conn->proto_error), "%s",
                     describe_not_tls(first, (size_t)n));
            conn_close(conn, "not a TLS client");
            return;
        }
        conn->hello_checked = true;
    }
    ERR_clear_error();
    rc = SSL_do_handshake(conn->ssl);
    if (rc != 1) {
        switch (SSL_get_error(conn->ssl, rc)) {
        case SSL_ERROR_WANT_READ:
            ev_io_stop(loop, &conn->write_watcher);
            return;
        case SSL_ERROR_WANT_WRITE:
            ev_io_start(loop, &conn->write_watcher);
            return;
        case SSL_ERROR_SYSCALL:
        case SSL_ERROR_ZERO_RETURN:
            if (ERR_peek_error() == 0) {
                conn->tls_failed = true;
                conn_close(conn, NULL); /* the client went away */
                return;
            }
            /* fall through */
        default:
            conn_tls_error(conn);
            conn_close(conn, "TLS handshake failed");
            return;
        }
    }
    SSL_get0_alpn_selected(conn->ssl, &alpn, &alpn_len);
    LB_DEBUG(LOG_SUB, "msg=\"admin TLS handshake done\" peer=%s version=%s alpn=%.*s", conn->peer,
             SSL_get_version(conn->ssl), alpn_len ? (int)alpn_len : 1,
             alpn_len ? (const char *)alpn : "-");
    conn->handshaking = false;
    ev_io_stop(loop, &conn->write_watcher);
    conn->last_activity = ev_now(loop);
    /* The first-request deadline, counted from accept, still runs. */
    conn_read(conn); /* the client's first bytes may be here already; sends our SETTINGS */
}

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct admin_conn *conn = w->data;

    if (conn->handshaking)
        conn_handshake(conn);
    else
        conn_read(conn);
}

static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct admin_conn *conn = w->data;

    if (conn->handshaking) {
        conn_handshake(conn);
        return;
    }
    if (conn->read_wants_write) {
        conn->read_wants_write = false;
        ev_io_start(loop, &conn->read_watcher);
        conn_read(conn); /* flushes too */
        return;
    }
    conn_flush(conn);
}

/* When a connection without a first request must be closed. */
static ev_tstamp conn_first_deadline(const struct admin_conn *conn)
{
    const struct lb_admin_limits *l = &conn->server->limits;
    ev_tstamp at = conn->accepted + (ev_tstamp)l->first_request_timeout_ms / 1000.0;

    if (conn->handshaking && l->handshake_timeout_ms < l->first_request_timeout_ms)
        at = conn->accepted + (ev_tstamp)l->handshake_timeout_ms / 1000.0;
    return at;
}

static void conn_idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct admin_conn *conn = w->data;
    struct lb_admin_server *s = conn->server;
    ev_tstamp idle = (ev_tstamp)s->limits.idle_timeout_ms / 1000.0;
    ev_tstamp now = ev_now(loop);

    if (!conn->got_request) {
        ev_tstamp at = conn_first_deadline(conn);

        if (now < at) {
            w->repeat = at - now;
            ev_timer_again(loop, w);
            return;
        }
        /* Silent, slow, or stuck in the TLS handshake: one summary line per second. */
        LB_DEBUG(LOG_SUB, "msg=\"admin connection closed: no request in time\" peer=%s tls=%s",
                 conn->peer,
                 conn->handshaking ? "handshaking"
                 : conn->ssl       ? "yes"
                                   : "no");
        if (conn->handshaking)
            conn->tls_failed = true; /* no close_notify: there is no session */
        s->conns_no_request++;
        server_note(s, NOTE_NO_REQUEST);
        conn_close(conn, NULL);
        return;
    }
    if (conn->n_calls > 0)
        conn->last_activity = now; /* a long watch or drain wait is not idleness */
    if (now - conn->last_activity < idle) {
        w->repeat = conn->last_activity + idle - now;
        ev_timer_again(loop, w);
        return;
    }
    LB_DEBUG(LOG_SUB, "msg=\"closing idle admin connection\" peer=%s", conn->peer);
    nghttp2_session_terminate_session(conn->session, NGHTTP2_NO_ERROR);
    conn_flush(conn);
    if (!conn->dead)
        conn_close(conn, NULL);
}

static int conn_new(struct lb_admin_server *s, int fd, const char *peer,
                    const struct lb_conn_peer *addr)
{
    nghttp2_session_callbacks *cb = NULL;
    struct admin_conn *conn;
    nghttp2_settings_entry iv[2];
    int one = 1, rc;

    conn = calloc(1, sizeof(*conn));
    if (!conn)
        return -ENOMEM;
    conn->server = s;
    conn->fd = fd;
    snprintf(conn->peer, sizeof(conn->peer), "%s", peer);
    lb_buf_init(&conn->wbuf, CONN_WRITE_MAX);
    rc = nghttp2_session_callbacks_new(&cb);
    if (rc != 0) {
        rc = -ENOMEM;
        goto out;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_error_callback2(cb, on_error);
    rc = nghttp2_session_server_new(&conn->session, cb, conn);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0) {
        conn->session = NULL;
        rc = -ENOMEM;
        goto out;
    }
    iv[0] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->limits.max_streams};
    iv[1] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
                                     (uint32_t)s->limits.max_header_bytes};
    if (nghttp2_submit_settings(conn->session, NGHTTP2_FLAG_NONE, iv, 2) != 0) {
        rc = -ENOMEM;
        goto out;
    }
    if (s->tls) {
        conn->ssl = SSL_new(s->tls);
        if (!conn->ssl || SSL_set_fd(conn->ssl, fd) != 1) {
            ERR_clear_error();
            rc = -ENOMEM;
            goto out;
        }
        SSL_set_app_data(conn->ssl, conn);
        SSL_set_accept_state(conn->ssl);
        conn->handshaking = true;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ev_io_init(&conn->read_watcher, conn_read_cb, fd, EV_READ);
    ev_io_init(&conn->write_watcher, conn_write_cb, fd, EV_WRITE);
    conn->read_watcher.data = conn->write_watcher.data = conn;
    ev_init(&conn->idle_timer, conn_idle_cb);
    conn->accepted = conn->last_activity = ev_now(s->loop);
    conn->idle_timer.repeat = conn_first_deadline(conn) - conn->accepted;
    conn->idle_timer.data = conn;
    ev_io_start(s->loop, &conn->read_watcher);
    ev_timer_again(s->loop, &conn->idle_timer);
    conn->next = s->conns;
    if (s->conns)
        s->conns->prev = conn;
    s->conns = conn;
    s->n_conns++;
    lb_conn_guard_add(&s->guard, &conn->guard, addr);
    LB_DEBUG(LOG_SUB, "msg=\"admin connection\" peer=%s tls=%s", conn->peer,
             conn->ssl ? "yes" : "no");
    conn_flush(conn); /* our SETTINGS go first (after the TLS handshake) */
    return 0;
out:
    if (conn->ssl)
        SSL_free(conn->ssl);
    if (conn->session)
        nghttp2_session_del(conn->session);
    lb_buf_free(&conn->wbuf);
    free(conn);
    return rc;
}

/* ---- listener ---- */

static void format_peer(const struct sockaddr_storage *ss, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;

        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
        snprintf(buf, size, "%s:%d", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;

        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
        snprintf(buf, size, "[%s]:%d", host, port);
    } else {
        snprintf(buf, size, "unknown");
    }
}

static void server_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_admin_server *s = w->data;

    lb_conn_guard_next_batch(&s->guard);
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        struct lb_conn_peer addr;
        struct lb_conn_guard_entry *victim;
        char peer[64];
        int fd = accept4(s->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            LB_WARN(LOG_SUB, "msg=\"admin accept failed; pausing\" error=\"%s\" pause_s=%.0f",
                    strerror(errno), ACCEPT_BACKOFF_S);
            ev_io_stop(loop, &s->accept_watcher);
            ev_timer_start(loop, &s->accept_backoff);
            return;
        }
        format_peer(&ss, peer, sizeof(peer));
        lb_conn_peer_from_sockaddr(&addr, (const struct sockaddr *)&ss);
        switch (lb_conn_guard_admit(&s->guard, &addr, &victim)) {
        case LB_CONN_ADMIT:
            break;
        case LB_CONN_SHED: {
            struct admin_conn *old = lb_container_of(victim, struct admin_conn, guard);

            LB_DEBUG(LOG_SUB, "msg=\"admin connection closed to make room\" peer=%s for=%s",
                     old->peer, peer);
            s->conns_shed++;
            server_note(s, NOTE_SHED);
            if (old->handshaking)
                old->tls_failed = true;
            conn_close(old, NULL);
            break;
        }
        case LB_CONN_REFUSE_PEER:
        case LB_CONN_REFUSE_TOTAL:
            LB_DEBUG(LOG_SUB, "msg=\"admin connection refused\" peer=%s", peer);
            s->conns_refused++;
            server_note(s, NOTE_REFUSED);
            close(fd);
            continue;
        }
        if (conn_new(s, fd, peer, &addr) < 0) {
            LB_WARN(LOG_SUB, "msg=\"admin connection dropped: out of memory\" peer=%s", peer);
            close(fd);
        }
    }
}

static void server_accept_backoff_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_admin_server *s = w->data;

    ev_io_start(loop, &s->accept_watcher);
}

/* Splits "host:port" / "[v6]:port"; fills host[size] and *port_text. */
static int split_addr(const char *addr, char *host, size_t size, const char **port_text)
{
    const char *colon;
    size_t hlen;

    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');

        if (!end || end[1] != ':')
            return -EINVAL;
        hlen = (size_t)(end - addr - 1);
        addr++;
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || memchr(addr, ':', (size_t)(colon - addr)))
            return -EINVAL;
        hlen = (size_t)(colon - addr);
    }
    if (hlen == 0 || hlen >= size || colon[1] == '\0')
        return -EINVAL;
    memcpy(host, addr, hlen);
    host[hlen] = '\0';
    *port_text = colon + 1;
    return 0;
}

static int server_listen(struct lb_admin_server *s, const char *listen_addr, char **err)
{
    struct addrinfo hints = {0}, *ai = NULL;
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    char host[80];
    const char *port;
    int one = 1, rc, fd = -1;

    if (split_addr(listen_addr, host, sizeof(host), &port) < 0) {
        if (asprintf(err,
                     "admin address \"%s\": expected HOST:PORT, e.g. 127.0.0.1:9000 or "
                     "[::1]:9000",
                     listen_addr) < 0)
            *err = NULL;
        return -EINVAL;
    }
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        if (asprintf(err,
                     "admin address \"%s\": host must be an IP address and port a number "
                     "(%s)",
                     listen_addr, gai_strerror(rc)) < 0)
            *err = NULL;
        return -EINVAL;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 64) < 0 ||
        getsockname(fd, (struct sockaddr *)&bound, &blen) < 0) {
        rc = -errno;
        goto fail;
    }
    s->fd = fd;
    if (bound.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&bound;

        s->port = ntohs(in6->sin6_port);
        s->loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    } else {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&bound;

        s->port = ntohs(in->sin_port);
        s->loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    snprintf(s->addr, sizeof(s->addr), "%s", listen_addr);
    freeaddrinfo(ai);
    return 0;
fail:
    if (asprintf(err, "admin address %s: cannot listen: %s", listen_addr, strerror(-rc)) < 0)
        *err = NULL;
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return rc;
}

/* ---- TLS and token set-up ---- */

static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char h2[] = "\x02h2";
    struct admin_conn *conn = SSL_get_app_data(ssl);

    if (SSL_select_next_proto((unsigned char **)out, outlen, h2, sizeof(h2) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        if (conn)
            conn->alpn_refused = true;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* Encrypted keys would make OpenSSL ask on the terminal: refuse them instead. */
static int no_password_cb(char *buf, int size, int rwflag, void *ud)
{
    return 0;
}

/* OpenSSL's last complaint, for an error sentence; empties its error queue. */
static const char *tls_reason(char *buf, size_t size)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;

    snprintf(buf, size, "%s", reason ? reason : "unknown error");
    ERR_clear_error();
    return buf;
}

static int check_readable(const char *what, const char *path, char **err)
{
    FILE *f = fopen(path, "r");

    if (f) {
        fclose(f);
        return 0;
    }
    if (asprintf(err, "%s %s: cannot read: %s", what, path, strerror(errno)) < 0)
        *err = NULL;
    return -EINVAL;
}

/* Loads the certificate and key into a context that only speaks h2 over TLS 1.2+. */
static int server_tls_init(struct lb_admin_server *s, const struct lb_admin_options *o, char **err)
{
    /* HTTP/2 forbids TLS 1.2 ciphers without forward secrecy or AEAD (RFC 7540, 9.2.2). */
    static const char ciphers12[] = "ECDHE+AESGCM:ECDHE+CHACHA20";
    char why[160];
    SSL_CTX *ctx;
    X509 *cert;
    bool mismatch = false;
    int rc = -EINVAL;

    if (!o->tls_cert_file && !o->tls_key_file)
        return 0;
    if (!o->tls_cert_file || !o->tls_key_file) {
        if (asprintf(err, "--admin-tls-cert and --admin-tls-key go together: give both to serve "
                          "the admin API over TLS") < 0)
            *err = NULL;
        return -EINVAL;
    }
    if (check_readable("admin TLS certificate", o->tls_cert_file, err) < 0 ||
        check_readable("admin TLS key", o->tls_key_file, err) < 0)
        return -EINVAL;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ERR_clear_error();
        return -ENOMEM;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_num_tickets(ctx, 0); /* every lbctl call is a new connection anyway */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ctx, no_password_cb);
    if (SSL_CTX_set_cipher_list(ctx, ciphers12) != 1) {
        if (asprintf(err, "admin TLS: cannot set the cipher list: %s",
                     tls_reason(why, sizeof(why))) < 0)
            *err = NULL;
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, o->tls_cert_file) != 1) {
        if (asprintf(err, "admin TLS certificate %s: not a usable PEM certificate chain (%s)",
                     o->tls_cert_file, tls_reason(why, sizeof(why))) < 0)
            *err = NULL;
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, o->tls_key_file, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();

        /* OpenSSL checks the key against the certificate already. */
        mismatch =
            ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
        if (!mismatch) {
            if (asprintf(err, "admin TLS key %s: not a usable unencrypted PEM private key (%s)",
                         o->tls_key_file, tls_reason(why, sizeof(why))) < 0)
                *err = NULL;
            goto fail;
        }
    }
    if (mismatch || SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        if (asprintf(err, "admin TLS key %s does not belong to the certificate %s", o->tls_key_file,
                     o->tls_cert_file) < 0)
            *err = NULL;
        goto fail;
    }
    cert = SSL_CTX_get0_certificate(ctx);
    if (cert && X509_cmp_current_time(X509_get0_notAfter(cert)) < 0)
        LB_WARN(LOG_SUB,
                "msg=\"admin TLS certificate has expired; clients will refuse it\" "
                "file=%s",
                o->tls_cert_file);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
    s->tls = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

int lb_admin_server_new(struct ev_loop *loop, const struct lb_admin_options *opts,
                        struct lb_registry *registry, struct lb_admin_server **out, char **err)
{
    struct lb_admin_server *s;
    int rc;

    *out = NULL;
    *err = NULL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->registry = registry;
    s->fd = -1;
    lb_admin_limits_defaults(&s->limits);
    lb_conn_guard_init(&s->guard, s->limits.max_connections, s->limits.max_per_peer);
    for (int i = 0; i < NOTE_MAX; i++)
        lb_rate_log_init(&s->notes[i], NOTE_INTERVAL_S);
    rc = opts->token_file ? lb_admin_auth_load(&s->auth, opts->token_file, err) : 0;
    if (rc == 0 && s->auth.file_shared)
        LB_WARN(LOG_SUB,
                "msg=\"the admin token file is readable by every user; chmod o-rwx it\" "
                "file=%s",
                opts->token_file);
    if (rc == 0)
        rc = server_tls_init(s, opts, err);
    if (rc == 0)
        rc = server_listen(s, opts->listen, err);
    if (rc < 0) {
        SSL_CTX_free(s->tls);
        OPENSSL_cleanse(&s->auth, sizeof(s->auth));
        free(s);
        return rc;
    }
    ev_io_init(&s->accept_watcher, server_accept_cb, s->fd, EV_READ);
    s->accept_watcher.data = s;
    ev_timer_init(&s->accept_backoff, server_accept_backoff_cb, ACCEPT_BACKOFF_S, 0.);
    s->accept_backoff.data = s;
    ev_check_init(&s->reaper, server_reaper_cb);
    s->reaper.data = s;
    ev_init(&s->note_timer, server_note_timer_cb);
    s->note_timer.data = s;
    ev_idle_init(&s->reap_kick, server_reap_kick_cb);
    ev_io_start(loop, &s->accept_watcher);
    ev_check_start(loop, &s->reaper);
    /* The reaper alone must not keep lbd's loop alive. */
    ev_unref(loop);
    LB_INFO(LOG_SUB, "msg=\"admin API listening\" addr=%s tls=%s token=%s", s->addr,
            s->tls ? "on" : "off", s->auth.required ? "required" : "none");
    if (!s->loopback && !s->auth.required)
        LB_WARN(LOG_SUB,
                "msg=\"admin API reachable beyond loopback without a token: anyone who "
                "reaches it can drain backends; see --admin-token-file\" addr=%s",
                s->addr);
    else if (!s->loopback && !s->tls)
        LB_WARN(LOG_SUB,
                "msg=\"admin token travels in cleartext beyond loopback; serve the "
                "admin API over TLS (--admin-tls-cert, --admin-tls-key)\" addr=%s",
                s->addr);
    *out = s;
    return 0;
}

void lb_admin_server_set_limits(struct lb_admin_server *s, const struct lb_admin_limits *l)
{
    s->limits = *l;
    s->guard.max_total = l->max_connections;
    s->guard.max_per_peer = l->max_per_peer;
}

int lb_admin_server_render_metrics(const struct lb_admin_server *s, struct lb_buf *out)
{
    int rc =
        lb_metrics_family(out, "lbd_admin_connections", "gauge", "Admin API connections open now.");

    if (!rc)
        rc = lb_metrics_printf(out, "lbd_admin_connections %u\n", s->n_conns);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_admin_connections_closed_total", "counter",
                               "Admin API connections refused at accept (refused), closed to "
                               "make room for a newcomer (shed) or closed without a request in "
                               "time (no_request).");
    if (!rc)
        rc = lb_metrics_printf(out,
                               "lbd_admin_connections_closed_total{reason=\"refused\"} %llu\n"
                               "lbd_admin_connections_closed_total{reason=\"shed\"} %llu\n"
                               "lbd_admin_connections_closed_total{reason=\"no_request\"} %llu\n",
                               (unsigned long long)s->conns_refused,
                               (unsigned long long)s->conns_shed,
                               (unsigned long long)s->conns_no_request);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_admin_calls_refused_total", "counter",
                               "Admin API calls ended before their handler: request not "
                               "received in time (request_timeout) or over the request memory "
                               "budget (request_budget).");
    if (!rc)
        rc = lb_metrics_printf(out,
                               "lbd_admin_calls_refused_total{reason=\"request_timeout\"} %llu\n"
                               "lbd_admin_calls_refused_total{reason=\"request_budget\"} %llu\n",
                               (unsigned long long)s->calls_request_timeout,
                               (unsigned long long)s->calls_request_budget);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_admin_request_bytes", "gauge",
                               "Bytes held for admin API requests not yet complete.");
    if (!rc)
        rc = lb_metrics_printf(out, "lbd_admin_request_bytes %zu\n", s->request_bytes);
    return rc;
}

int lb_admin_server_port(const struct lb_admin_server *s)
{
    return s->port;
}

void lb_admin_server_free(struct lb_admin_server *s)
{
    struct lb_admin_call *call;

    if (!s)
        return;
    ev_io_stop(s->loop, &s->accept_watcher);
    ev_timer_stop(s->loop, &s->accept_backoff);
    close(s->fd);
    /*
     * Calls in flight get a status rather than a torn connection, then
     * GOAWAY; both best effort (a full socket buffer is not waited for).
     */
    for (struct admin_conn *conn = s->conns; conn; conn = conn->next) {
        for (call = conn->calls; call; call = call->conn_next)
            call_abort(call, LB_GRPC_UNAVAILABLE, "lbd is shutting down");
    }
    while (s->conns) {
        struct admin_conn *conn = s->conns;

        conn_flush(conn);
        if (!conn->dead) {
            nghttp2_session_terminate_session(conn->session, NGHTTP2_NO_ERROR);
            conn_flush(conn); /* may close it already */
        }
        conn_close(conn, NULL);
    }
    server_reap(s);
    /* Calls a handler still holds (an etcd write in flight) outlive us. */
    while ((call = s->calls)) {
        s->calls = call->all_next;
        call->server = NULL;
        call->all_prev = call->all_next = NULL;
    }
    ev_timer_stop(s->loop, &s->note_timer);
    ev_ref(s->loop);
    ev_check_stop(s->loop, &s->reaper);
    ev_idle_stop(s->loop, &s->reap_kick);
    SSL_CTX_free(s->tls);
    OPENSSL_cleanse(&s->auth, sizeof(s->auth));
    free(s);
}
