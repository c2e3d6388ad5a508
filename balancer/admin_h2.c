/*
 * The admin API's HTTP/2 layer: nghttp2 server callbacks that turn streams
 * into calls and requests into handler invocations.
 *
 * A stream's HEADERS open a call (refused with REFUSED_STREAM above
 * max_streams); each header is copied into the call with bounds, and the
 * header block is bounded too (max_header_bytes, HPACK's accounting).  With
 * a token configured, the authorization header is checked as it arrives
 * (admin_auth.c).  Once the block is complete the call is checked in gRPC's
 * order: POST and a gRPC content-type (else an HTTP error), the token
 * (UNAUTHENTICATED, and nothing is told about the method, not even whether
 * it exists, unless the method table flags it LB_ADMIN_METHOD_NO_AUTH),
 * grpc-timeout, grpc-encoding, the method's path.  An error found there
 * waits for the request's end (admin_call_reject()).
 *
 * DATA frames feed the call's gRPC decoder.  The request memory is charged
 * against the connection's and the server's budgets by declared message
 * length, before the bytes arrive; over budget the call is rejected and
 * what it held freed.  When the client half-closes, the request is decoded
 * and validated (lb_admin_method_decode()) and the method's handler runs.
 *
 * The table is the server's: this layer knows no service.
 */
#include "admin_call_int.h"
#include "admin_conn.h"
#include "admin_h2.h"
#include "admin_server_int.h"
#include "lb_log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define LOG_SUB ADMIN_LOG_SUB

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
    c = admin_call_new(conn, frame->hd.stream_id);
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
    if (!c->server->auth.required || (c->method && (c->method->flags & LB_ADMIN_METHOD_NO_AUTH)))
        return true;
    return c->auth_headers == 1 && c->auth_ok;
}

/* Headers are complete: check them, find the method, arm the deadline. */
static void call_headers_done(struct lb_admin_call *c)
{
    struct admin_conn *conn = c->conn;
    char service[ADMIN_PATH_TEXT_MAX], method[ADMIN_PATH_TEXT_MAX];
    const char *slash;
    bool malformed;

    admin_conn_request_started(conn);
    if (strcmp(c->http_method, "POST") != 0) {
        admin_call_reject_http(c, "405", LB_GRPC_INTERNAL, "gRPC requests use POST");
        return;
    }
    if (!lb_grpc_content_type_is_grpc(c->content_type, strlen(c->content_type))) {
        char text[LB_GRPC_MESSAGE_TEXT_MAX];

        snprintf(text, sizeof(text), "invalid gRPC request content-type \"%s\"", c->content_type);
        admin_call_reject_http(c, "415", LB_GRPC_INTERNAL, text);
        return;
    }
    slash = c->path[0] == '/' ? strchr(c->path + 1, '/') : NULL;
    malformed = c->path_too_long || !slash || slash == c->path + 1 || slash[1] == '\0' ||
                strchr(slash + 1, '/');
    if (!malformed) {
        snprintf(service, sizeof(service), "%.*s", (int)(slash - c->path - 1), c->path + 1);
        snprintf(method, sizeof(method), "%s", slash + 1);
        c->method = lb_admin_method_find(c->server->methods, c->server->n_methods, service, method);
    }
    /* Without the token nothing is told, not even whether a method exists. */
    if (!call_is_authorized(c)) {
        LB_INFO(LOG_SUB,
                "msg=\"admin call refused: missing or invalid admin token\" path=%s "
                "peer=%s",
                c->path, c->conn->peer);
        c->method = NULL;
        admin_call_reject(c, LB_GRPC_UNAUTHENTICATED, "missing or invalid admin token");
        return;
    }
    if (c->has_timeout) {
        int64_t ms;

        if (lb_grpc_timeout_parse(c->timeout, strlen(c->timeout), &ms) < 0) {
            admin_call_reject(c, LB_GRPC_INVALID_ARGUMENT, "malformed grpc-timeout \"%s\"",
                              c->timeout);
            return;
        }
        admin_call_set_deadline(c, ms);
    }
    if (c->encoding[0] && strcmp(c->encoding, "identity") != 0) {
        admin_call_reject(c, LB_GRPC_UNIMPLEMENTED,
                          "grpc-encoding \"%s\" is not supported (identity only)", c->encoding);
        return;
    }
    if (malformed) {
        admin_call_reject(c, LB_GRPC_UNIMPLEMENTED, "malformed method name \"%s\"", c->path);
        return;
    }
    if (!c->method) {
        admin_call_reject(c, LB_GRPC_UNIMPLEMENTED, "unknown method %s for service %s", method,
                          service);
        return;
    }
    if (c->method->flags & LB_ADMIN_METHOD_STREAMING)
        c->queue_max = c->server->limits.stream_queue_max;
    lb_buf_init(&c->out, c->queue_max);
    /*
     * An authorized call: this connection is an operator's and is never
     * closed to make room.  With a token, the open health check proves
     * nothing (anyone may make it); without one, every call does.
     */
    if (!(c->method->flags & LB_ADMIN_METHOD_NO_AUTH) || !c->server->auth.required)
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
        admin_call_reject(
            c, LB_GRPC_RESOURCE_EXHAUSTED,
            "this connection's unfinished requests would hold more than %zu bytes; send "
            "fewer or smaller requests at once",
            budget.conn_max);
    else
        admin_call_reject(
            c, LB_GRPC_RESOURCE_EXHAUSTED,
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
        admin_call_reject(c, LB_GRPC_RESOURCE_EXHAUSTED,
                          "request message larger than the maximum of %zu bytes",
                          c->server->limits.max_message);
    else if (rc == -EPROTO)
        admin_call_reject(c, LB_GRPC_INTERNAL,
                          "compressed request message but no grpc-encoding was negotiated");
    else if (rc < 0)
        admin_call_reject(c, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory reading the request");
    if (c->rejected)
        admin_call_release_request(c);
    return 0;
}

/* The client half-closed: decode the request and run the handler. */
static void call_request_done(struct lb_admin_call *c)
{
    ProtobufCMessage *request = NULL;
    char *err = NULL;
    int status;

    ev_timer_stop(c->loop, &c->request_timer);
    if (c->rejected) {
        admin_call_end_rejected(c);
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
    status = lb_admin_method_decode(c->method, (const uint8_t *)c->request.data, c->request.len,
                                    &request, &err);
    admin_call_release_request(c);
    if (status != LB_GRPC_OK) {
        lb_admin_call_finish(c, status, "%s", err ? err : "invalid request");
        free(err);
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
        admin_call_detach(c);
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

int admin_h2_session_new(struct admin_conn *conn, nghttp2_session **out)
{
    const struct lb_admin_limits *l = &conn->server->limits;
    nghttp2_session_callbacks *cb = NULL;
    nghttp2_session *session = NULL;
    nghttp2_settings_entry iv[2];
    int rc = -ENOMEM;

    *out = NULL;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return -ENOMEM;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_error_callback2(cb, on_error);
    if (nghttp2_session_server_new(&session, cb, conn) != 0) {
        session = NULL;
        goto out;
    }
    iv[0] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, l->max_streams};
    iv[1] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE,
                                     (uint32_t)l->max_header_bytes};
    if (nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, iv, 2) != 0)
        goto out;
    *out = session;
    session = NULL;
    rc = 0;
out:
    nghttp2_session_callbacks_del(cb);
    nghttp2_session_del(session);
    return rc;
}
