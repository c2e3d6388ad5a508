/*
 * The admin API transport: a listening socket, one nghttp2 server session
 * per accepted connection, and gRPC calls riding on HTTP/2 streams.
 *
 * Reading: on_read() feeds socket bytes to nghttp2_session_mem_recv(),
 * whose callbacks collect a call's headers, reassemble its request message
 * and dispatch it through the method table once the client half-closes.
 * Writing: responses are queued per call and pulled by nghttp2 through
 * call_read_cb(); conn_flush() moves nghttp2's output to the socket.
 * nghttp2 must not be re-entered from its own callbacks, so code that
 * queues output while one is running only marks the connection, and the
 * flush after mem_recv() sends it.
 *
 * Lifetimes: connections and calls are never freed where they fail.  A
 * closing connection goes on a list and a call whose last reference is
 * dropped goes on another; the ev_check watcher frees both after the
 * loop's callbacks have returned (an ev_idle keeps the loop from blocking
 * while the lists are non-empty).  Cancel hooks of a closed connection's
 * calls run from there too, never from inside a send on the same call.
 *
 * Bounds: max connections (extra ones are closed at accept), max
 * concurrent streams per connection, header bytes per stream, request and
 * unary response size (RESOURCE_EXHAUSTED), a per-call queue for streaming
 * responses, a bounded socket write buffer, an idle timeout per
 * connection, and a linger timer that resets a finished stream whose
 * client stopped reading.
 */
#include "admin_server.h"
#include "admin_service.h"
#include "lb_buf.h"
#include "lb_grpc_frame.h"
#include "lb_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LOG_SUB "admin"
#define PATH_TEXT_MAX 256
#define CONN_WRITE_MAX (1024 * 1024) /* nghttp2 output waiting for the socket */
#define READ_CHUNK 16384
#define FINISH_LINGER_S 10.0         /* a finished call's client gets this long to read */
#define ACCEPT_BACKOFF_S 1.0         /* after EMFILE and friends */

enum call_timer_mode { TIMER_NONE, TIMER_DEADLINE, TIMER_LINGER };

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
    size_t header_bytes;
    const struct lb_admin_method *method;
    struct lb_grpc_decoder decoder;
    struct lb_buf request;
    unsigned request_messages;
    ev_tstamp started;

    /* response */
    bool headers_sent;        /* HEADERS submitted (with a data provider unless trailers-only) */
    bool finished;            /* final status decided */
    bool trailers_submitted;
    bool deferred;            /* call_read_cb returned NGHTTP2_ERR_DEFERRED */
    int status;
    char message[LB_GRPC_MESSAGE_TEXT_MAX];
    struct lb_buf out;        /* framed messages not yet handed to nghttp2 */
    size_t out_off;
    size_t frame_left;        /* bytes of the frame at out_off not yet handed to nghttp2 */
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
    int in_nghttp2;  /* depth of mem_recv/mem_send on the stack */
    bool dead;
    char proto_error[160];
    struct admin_conn *prev, *next; /* server's open connections */
    struct admin_conn *dead_next;
};

struct lb_admin_server {
    struct ev_loop *loop;
    struct lb_registry *registry;
    struct lb_admin_limits limits;
    int fd;
    int port;
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
};

static void conn_flush(struct admin_conn *conn);
static void conn_close(struct admin_conn *conn, const char *reason);
static void call_submit_end(struct lb_admin_call *call);

void lb_admin_limits_defaults(struct lb_admin_limits *l)
{
    l->max_connections = 64;
    l->max_streams = 32;
    l->idle_timeout_ms = 5 * 60 * 1000;
    l->max_message = LB_GRPC_MAX_MESSAGE_DEFAULT;
    l->stream_queue_max = 1024 * 1024;
    l->max_header_bytes = 16 * 1024;
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

                call->frame_left = LB_GRPC_FRAME_HEADER_LEN + ((size_t)h[1] << 24 |
                                                               (size_t)h[2] << 16 |
                                                               (size_t)h[3] << 8 | h[4]);
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
            lb_grpc_percent_encode(call->message, strlen(call->message), message,
                                   sizeof(message));
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

static void call_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_admin_call *c = w->data;
    struct admin_conn *conn = c->conn;

    if (!conn)
        return;
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
        LB_DEBUG(LOG_SUB, "msg=\"admin client does not read its answer; resetting stream\" "
                          "path=%s peer=%s", c->path, conn->peer);
    } else {
        return;
    }
    if (c->conn) {
        nghttp2_submit_rst_stream(conn->session, NGHTTP2_FLAG_NONE, c->stream_id, NGHTTP2_CANCEL);
        conn_kick(conn);
    }
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
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud)
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
    } else if (IS("grpc-encoding"))
        copy_header(c->encoding, sizeof(c->encoding), value, valuelen, NULL);
#undef IS
    return 0;
}

/* Headers are complete: check them, find the method, arm the deadline. */
static void call_headers_done(struct lb_admin_call *c)
{
    char service[PATH_TEXT_MAX], method[PATH_TEXT_MAX];
    const char *slash;

    if (strcmp(c->http_method, "POST") != 0) {
        call_reject_http(c, "405", LB_GRPC_INTERNAL, "gRPC requests use POST");
        return;
    }
    if (!lb_grpc_content_type_is_grpc(c->content_type, strlen(c->content_type))) {
        char text[LB_GRPC_MESSAGE_TEXT_MAX];

        snprintf(text, sizeof(text), "invalid gRPC request content-type \"%s\"",
                 c->content_type);
        call_reject_http(c, "415", LB_GRPC_INTERNAL, text);
        return;
    }
    if (c->has_timeout) {
        int64_t ms;

        if (lb_grpc_timeout_parse(c->timeout, strlen(c->timeout), &ms) < 0) {
            lb_admin_call_finish(c, LB_GRPC_INVALID_ARGUMENT, "malformed grpc-timeout \"%s\"",
                                 c->timeout);
            return;
        }
        c->deadline_ms = ms;
        call_timer_start(c, TIMER_DEADLINE, (ev_tstamp)ms / 1000.0);
    }
    if (c->encoding[0] && strcmp(c->encoding, "identity") != 0) {
        lb_admin_call_finish(c, LB_GRPC_UNIMPLEMENTED,
                             "grpc-encoding \"%s\" is not supported (identity only)", c->encoding);
        return;
    }
    slash = c->path[0] == '/' ? strchr(c->path + 1, '/') : NULL;
    if (c->path_too_long || !slash || slash == c->path + 1 || slash[1] == '\0' ||
        strchr(slash + 1, '/')) {
        lb_admin_call_finish(c, LB_GRPC_UNIMPLEMENTED, "malformed method name \"%s\"", c->path);
        return;
    }
    snprintf(service, sizeof(service), "%.*s", (int)(slash - c->path - 1), c->path + 1);
    snprintf(method, sizeof(method), "%s", slash + 1);
    c->method = lb_admin_service_find(service, method);
    if (!c->method) {
        lb_admin_call_finish(c, LB_GRPC_UNIMPLEMENTED, "unknown method %s for service %s", method,
                             service);
        return;
    }
    if (c->method->server_streaming)
        c->queue_max = c->server->limits.stream_queue_max;
    lb_buf_init(&c->out, c->queue_max);
}

static int on_request_message(void *ud, const uint8_t *data, size_t len, bool compressed)
{
    struct lb_admin_call *c = ud;

    if (++c->request_messages > 1)
        return 0; /* reported once the request ends */
    return lb_buf_append(&c->request, data, len);
}

static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                              const uint8_t *data, size_t len, void *ud)
{
    struct lb_admin_call *c = nghttp2_session_get_stream_user_data(session, stream_id);
    int rc;

    if (!c || c->finished)
        return 0;
    rc = lb_grpc_decoder_feed(&c->decoder, data, len, on_request_message, c);
    if (rc == -EMSGSIZE || rc == -E2BIG)
        lb_admin_call_finish(c, LB_GRPC_RESOURCE_EXHAUSTED,
                             "request message larger than the maximum of %zu bytes",
                             c->server->limits.max_message);
    else if (rc == -EPROTO)
        lb_admin_call_finish(c, LB_GRPC_INTERNAL,
                             "compressed request message but no grpc-encoding was negotiated");
    else if (rc < 0)
        lb_admin_call_finish(c, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory reading the request");
    return 0;
}

/* The client half-closed: decode the request and run the handler. */
static void call_request_done(struct lb_admin_call *c)
{
    ProtobufCMessage *request = NULL;
    char err[LB_GRPC_MESSAGE_TEXT_MAX];
    int status;

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
    status = lb_admin_service_decode(c->method, (const uint8_t *)c->request.data,
                                     c->request.len, &request, err, sizeof(err));
    lb_buf_free(&c->request);
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

        LB_WARN(LOG_SUB, "msg=\"admin connection closed: %s\" peer=%s detail=%s", reason,
                conn->peer,
                lb_log_quote(detail, sizeof(detail),
                             conn->proto_error[0] ? conn->proto_error : "-"));
    } else {
        LB_DEBUG(LOG_SUB, "msg=\"admin connection closed\" peer=%s", conn->peer);
    }
    ev_io_stop(s->loop, &conn->read_watcher);
    ev_io_stop(s->loop, &conn->write_watcher);
    ev_timer_stop(s->loop, &conn->idle_timer);
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

static void conn_flush(struct admin_conn *conn)
{
    struct ev_loop *loop = conn->server->loop;

    while (!conn->dead) {
        if (conn->woff < conn->wbuf.len) {
            ssize_t n = write(conn->fd, conn->wbuf.data + conn->woff, conn->wbuf.len - conn->woff);

            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                ev_io_start(loop, &conn->write_watcher);
                return;
            }
            if (n < 0) {
                if (errno == EPIPE || errno == ECONNRESET)
                    conn_close(conn, NULL);
                else
                    conn_close(conn, strerror(errno));
                return;
            }
            conn->woff += (size_t)n;
            if (conn->woff == conn->wbuf.len) {
                lb_buf_reset(&conn->wbuf);
                conn->woff = 0;
            }
            continue;
        }
        {
            const uint8_t *data;
            ssize_t n;

            conn->in_nghttp2++;
            n = nghttp2_session_mem_send(conn->session, &data);
            conn->in_nghttp2--;
            if (n < 0) {
                conn_close(conn, nghttp2_strerror((int)n));
                return;
            }
            if (n == 0)
                break;
            if (lb_buf_append(&conn->wbuf, data, (size_t)n) < 0) {
                conn_close(conn, "output buffer limit reached");
                return;
            }
        }
    }
    if (conn->dead)
        return;
    ev_io_stop(loop, &conn->write_watcher);
    if (!nghttp2_session_want_read(conn->session) && !nghttp2_session_want_write(conn->session))
        conn_close(conn, conn->proto_error[0] ? "HTTP/2 protocol error" : NULL);
}

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct admin_conn *conn = w->data;
    uint8_t buf[READ_CHUNK];
    ssize_t n, rv;

    n = read(conn->fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        conn_close(conn, n < 0 && errno != ECONNRESET ? strerror(errno) : NULL);
        return;
    }
    conn->last_activity = ev_now(loop);
    conn->in_nghttp2++;
    rv = nghttp2_session_mem_recv(conn->session, buf, (size_t)n);
    conn->in_nghttp2--;
    if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
        conn_close(conn, "not an HTTP/2 client (expected h2c prior knowledge, gRPC)");
        return;
    }
    if (rv < 0) {
        if (!conn->proto_error[0])
            snprintf(conn->proto_error, sizeof(conn->proto_error), "%s",
                     nghttp2_strerror((int)rv));
        conn_close(conn, "HTTP/2 protocol error");
        return;
    }
    conn_flush(conn);
}

static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    conn_flush(w->data);
}

static void conn_idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct admin_conn *conn = w->data;
    ev_tstamp idle = (ev_tstamp)conn->server->limits.idle_timeout_ms / 1000.0;
    ev_tstamp now = ev_now(loop);

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

static int conn_new(struct lb_admin_server *s, int fd, const char *peer)
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
    nghttp2_session_callbacks_set_error_callback2(cb, on_error);
    rc = nghttp2_session_server_new(&conn->session, cb, conn);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0) {
        conn->session = NULL;
        rc = -ENOMEM;
        goto out;
    }
    iv[0] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                     s->limits.max_streams};
    iv[1] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
                                     (uint32_t)s->limits.max_header_bytes};
    if (nghttp2_submit_settings(conn->session, NGHTTP2_FLAG_NONE, iv, 2) != 0) {
        rc = -ENOMEM;
        goto out;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ev_io_init(&conn->read_watcher, conn_read_cb, fd, EV_READ);
    ev_io_init(&conn->write_watcher, conn_write_cb, fd, EV_WRITE);
    conn->read_watcher.data = conn->write_watcher.data = conn;
    ev_init(&conn->idle_timer, conn_idle_cb);
    conn->idle_timer.repeat = (ev_tstamp)s->limits.idle_timeout_ms / 1000.0;
    conn->idle_timer.data = conn;
    conn->last_activity = ev_now(s->loop);
    ev_io_start(s->loop, &conn->read_watcher);
    ev_timer_again(s->loop, &conn->idle_timer);
    conn->next = s->conns;
    if (s->conns)
        s->conns->prev = conn;
    s->conns = conn;
    s->n_conns++;
    LB_DEBUG(LOG_SUB, "msg=\"admin connection\" peer=%s", conn->peer);
    conn_flush(conn); /* our SETTINGS go first */
    return 0;
out:
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

    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
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
        if (s->n_conns >= s->limits.max_connections) {
            LB_WARN(LOG_SUB, "msg=\"admin connection refused: too many connections\" peer=%s "
                             "limit=%u", peer, s->limits.max_connections);
            close(fd);
            continue;
        }
        if (conn_new(s, fd, peer) < 0) {
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
        if (asprintf(err, "admin address \"%s\": expected HOST:PORT, e.g. 127.0.0.1:9000 or "
                          "[::1]:9000", listen_addr) < 0)
            *err = NULL;
        return -EINVAL;
    }
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        if (asprintf(err, "admin address \"%s\": host must be an IP address and port a number "
                          "(%s)", listen_addr, gai_strerror(rc)) < 0)
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
    s->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&bound)->sin_port);
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

int lb_admin_server_new(struct ev_loop *loop, const char *listen_addr,
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
    rc = server_listen(s, listen_addr, err);
    if (rc < 0) {
        free(s);
        return rc;
    }
    ev_io_init(&s->accept_watcher, server_accept_cb, s->fd, EV_READ);
    s->accept_watcher.data = s;
    ev_timer_init(&s->accept_backoff, server_accept_backoff_cb, ACCEPT_BACKOFF_S, 0.);
    s->accept_backoff.data = s;
    ev_check_init(&s->reaper, server_reaper_cb);
    s->reaper.data = s;
    ev_idle_init(&s->reap_kick, server_reap_kick_cb);
    ev_io_start(loop, &s->accept_watcher);
    ev_check_start(loop, &s->reaper);
    /* The reaper alone must not keep lbd's loop alive. */
    ev_unref(loop);
    LB_INFO(LOG_SUB, "msg=\"admin API listening\" addr=%s", s->addr);
    *out = s;
    return 0;
}

void lb_admin_server_set_limits(struct lb_admin_server *s, const struct lb_admin_limits *l)
{
    s->limits = *l;
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
    ev_ref(s->loop);
    ev_check_stop(s->loop, &s->reaper);
    ev_idle_stop(s->loop, &s->reap_kick);
    free(s);
}
