/*
 * Inside a call (admin_call.c): its state, and what the HTTP/2 layer and
 * the server do to it besides the handlers' API (admin_call.h): create it
 * for a stream, end it early, detach it when the stream goes, free it.
 * Not for use outside the admin transport.
 */
#ifndef LB_ADMIN_CALL_INT_H
#define LB_ADMIN_CALL_INT_H

#include "admin_call.h"
#include "lb_buf.h"
#include "lb_list.h"
#include "lb_reaper.h"
#include "lb_grpc_frame.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ADMIN_PATH_TEXT_MAX 256

struct admin_conn;
struct lb_admin_server;

enum admin_call_timer {
    ADMIN_TIMER_NONE,
    ADMIN_TIMER_DEADLINE,
    ADMIN_TIMER_LINGER,
    ADMIN_TIMER_REJECT
};

struct lb_admin_call {
    struct lb_admin_server *server; /* NULL once the server is gone (orphan) */
    struct ev_loop *loop;
    void *context;           /* the server's, for the handler */
    struct admin_conn *conn; /* NULL once the stream is gone */
    int32_t stream_id;
    unsigned refs;
    struct lb_list conn_link; /* conn->calls */
    struct lb_list all_link;  /* server->calls: every live call */
    struct lb_reap reap;      /* refs == 0: freed by the server's reaper */

    /* request (filled by admin_h2.c) */
    char http_method[8];
    char path[ADMIN_PATH_TEXT_MAX];
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
    bool deferred; /* the data provider returned NGHTTP2_ERR_DEFERRED */
    int status;
    char message[LB_GRPC_MESSAGE_TEXT_MAX];
    struct lb_buf out; /* framed messages not yet handed to nghttp2 */
    size_t out_off;
    size_t frame_left; /* bytes of the frame at out_off not yet handed to nghttp2 */
    size_t queue_max;
    ev_timer timer;
    enum admin_call_timer timer_mode;
    int64_t deadline_ms;

    void (*cancel_cb)(void *ud);
    void *cancel_ud;
    void *data;
    void (*release)(void *data);
};

/*
 * A call for a new stream of `conn`, holding the stream's reference, on
 * the connection's and the server's lists, its request deadline running.
 * NULL when memory runs out.
 */
struct lb_admin_call *admin_call_new(struct admin_conn *conn, int32_t stream_id);

/*
 * The stream is gone (closed, reset, or its connection died): the call
 * leaves the connection, a call not finished yet is cancelled (its hook
 * runs), and the stream's reference is dropped.  Idempotent.
 */
void admin_call_detach(struct lb_admin_call *call);

/* The handler's reference count is zero and nothing of the call is on the stack: free it. */
void admin_call_destroy(struct lb_admin_call *call);

/* Frees what the call holds of its request and gives the bytes back to the budgets. */
void admin_call_release_request(struct lb_admin_call *call);

/* The call's grpc-timeout: DEADLINE_EXCEEDED after `ms`. */
void admin_call_set_deadline(struct lb_admin_call *call, int64_t ms);

/*
 * Answers before any gRPC response: a wrong HTTP method or content-type
 * (HTTP status `http_status`, gRPC `status` and `message` in the headers).
 */
void admin_call_reject_http(struct lb_admin_call *call, const char *http_status, int status,
                            const char *message);

/*
 * An error found before the client has sent its whole request (a bad
 * header, a missing token, an unknown method, a message too large): the
 * status is sent at the request's end, or after a few seconds at most.
 * No handler runs.
 */
void admin_call_reject(struct lb_admin_call *call, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sends the status admin_call_reject() decided (the request ended). */
void admin_call_end_rejected(struct lb_admin_call *call);

/* Server-side end of a call the handler may still be working on: its cancel hook runs. */
void admin_call_abort(struct lb_admin_call *call, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
