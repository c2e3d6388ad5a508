/*
 * Calls of the admin API and their response path (the API handlers see is
 * admin_call.h; what the HTTP/2 layer and the server add, admin_call_int.h).
 *
 * A call lives on two lists, its connection's and the server's, and holds
 * its stream's reference; a handler takes more.  When the stream goes, the
 * call is detached: a handler still at work sees it done and its cancel
 * hook runs, then the stream's reference goes.  A call whose last
 * reference is dropped goes on the server's dead list, freed by the reaper
 * once the loop's callbacks have returned, so no callback frees the call
 * it runs for.  A call orphaned by the server's end is freed at its last
 * unref, nothing of the server being left on the stack then.
 *
 * Writing: messages are framed into a per-call queue (bounded: the
 * message maximum for unary calls, stream_queue_max for streams, so a slow
 * reader ends with RESOURCE_EXHAUSTED, not with lbd's memory) and pulled
 * by nghttp2 through the data provider; the status goes out as trailers
 * after them, or alone (trailers-only) when nothing was sent.  A failing
 * call drops the whole messages nghttp2 has not started on, so its status
 * reaches even a client whose window is closed.  Nothing here writes to a
 * socket: the connection is asked to flush (admin_conn_kick()), which it
 * does at once unless an nghttp2 callback is running.
 *
 * Timers: the client's grpc-timeout (DEADLINE_EXCEEDED, then a reset once
 * the response is under way), the request deadline (a request must arrive
 * whole within request_timeout_ms of its headers), the wait of a rejected
 * call for its request's end, and a linger that resets a finished stream
 * whose client stopped reading.
 */
#include "admin_call_int.h"
#include "lb_error.h"
#include "admin_conn.h"
#include "admin_server_int.h"
#include "lb_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOG_SUB         ADMIN_LOG_SUB
#define FINISH_LINGER_S 10.0 /* a finished call's client gets this long to read */
#define REJECT_WAIT_S   5.0  /* an early error waits this long for the request's end */

static void call_submit_end(struct lb_admin_call *call);

/* ---- lifetime ---- */

/* Frees what a call holds of its request and gives the bytes back to the budgets. */
void admin_call_release_request(struct lb_admin_call *c)
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

void admin_call_destroy(struct lb_admin_call *call)
{
    lb_list_remove(&call->all_link);
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
void admin_call_detach(struct lb_admin_call *call)
{
    struct admin_conn *conn = call->conn;

    if (!conn)
        return;
    admin_call_release_request(call);
    ev_timer_stop(call->loop, &call->request_timer);
    lb_list_remove(&call->conn_link);
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

/* ---- the call API ---- */

struct ev_loop *lb_admin_call_loop(const struct lb_admin_call *c)
{
    return c->loop;
}

void *lb_admin_call_context(const struct lb_admin_call *c)
{
    return c->context;
}

void lb_admin_call_ref(struct lb_admin_call *c)
{
    c->refs++;
}

static void admin_call_reap(struct lb_reap *r)
{
    admin_call_destroy(lb_container_of(r, struct lb_admin_call, reap));
}

void lb_admin_call_unref(struct lb_admin_call *c)
{
    if (--c->refs > 0)
        return;
    if (!c->server) {
        /* Orphaned by lb_admin_server_free(): nothing of ours is on the stack. */
        admin_call_destroy(c);
        return;
    }
    lb_reaper_defer(&c->server->reaper, &c->reap, admin_call_reap);
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

/* ---- the response path ---- */

/* What a status header block points into while nghttp2 takes it. */
struct status_text {
    char code[16];
    char message[3 * LB_GRPC_MESSAGE_TEXT_MAX + 1]; /* percent-encoded */
};

/*
 * Fills nva[0] with the call's grpc-status and, when it has a message,
 * nva[1] with grpc-message (percent-encoded into t).  Returns how many.
 */
static size_t status_nv(const struct lb_admin_call *c, struct status_text *t, nghttp2_nv *nva)
{
    snprintf(t->code, sizeof(t->code), "%d", c->status);
    nva[0] = (nghttp2_nv){(uint8_t *)"grpc-status", (uint8_t *)t->code, 11, strlen(t->code),
                          NGHTTP2_NV_FLAG_NONE};
    if (!c->message[0])
        return 1;
    lb_grpc_percent_encode(c->message, strlen(c->message), t->message, sizeof(t->message));
    nva[1] = (nghttp2_nv){(uint8_t *)"grpc-message", (uint8_t *)t->message, 12, strlen(t->message),
                          NGHTTP2_NV_FLAG_NONE};
    return 2;
}

/*
 * Answers with one header block that ends the stream: HTTP `http_status`,
 * the call's gRPC status and message (trailers-only).  Closes the
 * connection if nghttp2 cannot take it.
 */
static void call_submit_trailers_only(struct lb_admin_call *c, const char *http_status)
{
    struct status_text t;
    nghttp2_nv nva[4] = {
        {(uint8_t *)":status", (uint8_t *)http_status, 7, strlen(http_status),
         NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE},
    };
    size_t n = 2 + status_nv(c, &t, nva + 2);

    c->headers_sent = true;
    c->trailers_submitted = true;
    if (nghttp2_submit_response(c->conn->session, c->stream_id, nva, n, NULL) != 0)
        admin_conn_close(c->conn, "cannot submit response");
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
        struct status_text t;
        nghttp2_nv nva[2];
        size_t n = status_nv(call, &t, nva);

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
        admin_conn_close(c->conn, "cannot submit response headers");
        return;
    }
    c->headers_sent = true;
    admin_conn_kick(c->conn);
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
    admin_conn_kick(c->conn);
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

/*
 * Decides the status of a call not done yet and queues its end.  `cancel`:
 * the server ends it, so the handler, perhaps still at work, is told
 * through its cancel hook; otherwise the handler ended it itself.
 */
static void call_end(struct lb_admin_call *c, bool cancel, int status, const char *fmt, va_list ap)
{
    if (lb_admin_call_is_done(c))
        return;
    call_set_status(c, status, fmt, ap);
    if (cancel)
        call_cancel(c);
    else
        c->cancel_cb = NULL; /* nothing to cancel */
    call_submit_end(c);
}

void lb_admin_call_finish(struct lb_admin_call *c, int status, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    call_end(c, false, status, fmt, ap);
    va_end(ap);
}

void admin_call_abort(struct lb_admin_call *c, int status, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    call_end(c, true, status, fmt, ap);
    va_end(ap);
}

static void call_timer_start(struct lb_admin_call *c, enum admin_call_timer mode, ev_tstamp after)
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
        call_submit_trailers_only(c, "200");
        if (!c->conn || conn->dead)
            return;
    } else if (c->deferred) {
        c->deferred = false;
        nghttp2_session_resume_data(conn->session, c->stream_id);
    }
    call_timer_start(c, ADMIN_TIMER_LINGER, FINISH_LINGER_S);
    admin_conn_kick(conn);
}

/* Answers before any gRPC response: wrong HTTP method or content-type. */
void admin_call_reject_http(struct lb_admin_call *c, const char *http_status, int status,
                            const char *message)
{
    c->finished = true;
    c->status = status;
    snprintf(c->message, sizeof(c->message), "%s", message);
    call_log_end(c);
    call_submit_trailers_only(c, http_status);
}

/*
 * An error found before the client has sent its whole request (a bad
 * header, a missing token, an unknown method, a message too large).
 * Answering at once would race the client's upload: libcurl 7.88 then
 * stops sending and waits, or loses the answer to the RST_STREAM that must
 * follow it.  So the status waits for the request's end, whose bytes are
 * dropped unread, for REJECT_WAIT_S at most.  No handler runs.
 */
void admin_call_reject(struct lb_admin_call *c, int status, const char *fmt, ...)
{
    va_list ap;

    if (c->finished || c->rejected)
        return;
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof(c->message), fmt, ap);
    va_end(ap);
    c->status = status;
    c->rejected = true;
    call_timer_start(c, ADMIN_TIMER_REJECT, REJECT_WAIT_S); /* replaces the deadline */
}

/* Sends the status admin_call_reject() decided. */
void admin_call_end_rejected(struct lb_admin_call *c)
{
    if (!c->rejected || c->finished)
        return;
    c->rejected = false;
    c->finished = true;
    c->cancel_cb = NULL;
    call_submit_end(c);
}

/* ---- timers ---- */

static void call_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_admin_call *c = w->data;
    struct admin_conn *conn = c->conn;

    if (!conn)
        return;
    if (c->timer_mode == ADMIN_TIMER_REJECT) {
        /* The client keeps sending: answer now; on_frame_send() resets the stream. */
        admin_call_end_rejected(c);
        return;
    }
    if (c->timer_mode == ADMIN_TIMER_DEADLINE && !c->finished) {
        char text[32];

        if (!c->headers_sent) {
            admin_call_abort(c, LB_GRPC_DEADLINE_EXCEEDED, "deadline of %s exceeded",
                             lb_grpc_timeout_format(c->deadline_ms, text, sizeof(text)));
            return;
        }
        /* The response is under way: cancel the stream, as grpc servers do. */
        c->finished = true;
        c->status = LB_GRPC_DEADLINE_EXCEEDED;
        snprintf(c->message, sizeof(c->message), "deadline exceeded");
        call_log_end(c);
        call_cancel(c);
    } else if (c->timer_mode == ADMIN_TIMER_LINGER) {
        LB_DEBUG(LOG_SUB,
                 "msg=\"admin client does not read its answer; resetting stream\" "
                 "path=%s peer=%s",
                 c->path, conn->peer);
    } else {
        return;
    }
    if (c->conn) {
        nghttp2_submit_rst_stream(conn->session, NGHTTP2_FLAG_NONE, c->stream_id, NGHTTP2_CANCEL);
        admin_conn_kick(conn);
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
        admin_call_end_rejected(c); /* the status is known: send it now */
        return;
    }
    admin_call_release_request(c);
    s->calls_request_timeout++;
    admin_server_note(s, ADMIN_NOTE_REQUEST_TIMEOUT);
    LB_DEBUG(LOG_SUB, "msg=\"admin call reset: request not received in time\" path=%s peer=%s",
             c->path, c->conn->peer);
    admin_call_abort(c, LB_GRPC_DEADLINE_EXCEEDED,
                     "the request was not received within %s of its headers (lbd's limit)",
                     lb_grpc_timeout_format(s->limits.request_timeout_ms, text, sizeof(text)));
}

/* ---- a new stream ---- */

struct lb_admin_call *admin_call_new(struct admin_conn *conn, int32_t stream_id)
{
    struct lb_admin_server *s = conn->server;
    struct lb_admin_call *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    lb_list_init(&c->conn_link);
    lb_list_init(&c->all_link);
    c->server = s;
    c->loop = s->loop;
    c->context = s->context;
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
    lb_list_insert_head(&conn->calls, &c->conn_link);
    conn->n_calls++;
    lb_list_insert_head(&s->calls, &c->all_link);
    return c;
}

void admin_call_set_deadline(struct lb_admin_call *c, int64_t ms)
{
    c->deadline_ms = ms;
    call_timer_start(c, ADMIN_TIMER_DEADLINE, (ev_tstamp)ms / 1000.0);
}

/* ---- method tables ---- */

const struct lb_admin_method *lb_admin_method_find(const struct lb_admin_method *methods, size_t n,
                                                   const char *service, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(methods[i].service, service) == 0 && strcmp(methods[i].name, name) == 0)
            return &methods[i];
    return NULL;
}

/* A varint at *p (before end), or -1. */
static int64_t wire_varint(const uint8_t **p, const uint8_t *end)
{
    uint64_t v = 0;

    for (unsigned shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;

        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return v > INT64_MAX ? -1 : (int64_t)v;
    }
    return -1;
}

/*
 * The string field of `desc` (or of a message inside it) whose bytes hold a
 * NUL, or NULL.  protobuf-c hands strings over NUL-terminated, so a pool
 * named "web\0x" would reach a handler as "web": such a request is refused
 * instead of acting on another name.  Walks the wire bytes unpack accepted.
 */
static const ProtobufCFieldDescriptor *string_with_nul(const ProtobufCMessageDescriptor *desc,
                                                       const uint8_t *p, const uint8_t *end,
                                                       unsigned depth)
{
    while (p < end) {
        int64_t tag = wire_varint(&p, end), n;
        const ProtobufCFieldDescriptor *f;

        if (tag < 0)
            return NULL;
        switch (tag & 7) {
        case 0:
            if (wire_varint(&p, end) < 0)
                return NULL;
            break;
        case 1:
            p += end - p < 8 ? end - p : 8;
            break;
        case 5:
            p += end - p < 4 ? end - p : 4;
            break;
        case 2:
            n = wire_varint(&p, end);
            if (n < 0 || n > end - p)
                return NULL;
            f = protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3));
            if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(p, 0, (size_t)n))
                return f;
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE && depth < 16) {
                const ProtobufCFieldDescriptor *in =
                    string_with_nul(f->descriptor, p, p + n, depth + 1);

                if (in)
                    return in;
            }
            p += n;
            break;
        default:
            return NULL; /* groups: not in proto3, and unpack refused them */
        }
    }
    return NULL;
}

int lb_admin_method_decode(const struct lb_admin_method *m, const uint8_t *data, size_t len,
                           ProtobufCMessage **out, char **err)
{
    ProtobufCMessage *msg = protobuf_c_message_unpack(m->request, NULL, len, data);
    const ProtobufCFieldDescriptor *nul;
    int status;

    *out = NULL;
    if (!msg)
        return lb_error_set(err, LB_GRPC_INVALID_ARGUMENT,
                            "cannot decode %s: malformed protobuf message", m->request->name);
    nul = string_with_nul(m->request, data, data + len, 0);
    if (nul) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return lb_error_set(err, LB_GRPC_INVALID_ARGUMENT,
                            "%s: field %s holds a NUL byte, which no name or value here may hold",
                            m->request->name, nul->name);
    }
    status = m->validate ? m->validate(msg, err) : LB_GRPC_OK;
    if (status != LB_GRPC_OK) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return status;
    }
    *out = msg;
    return LB_GRPC_OK;
}
