/*
 * HTTP to the etcd gateway: JSON POSTs over libcurl.
 *
 * The asynchronous half is one curl multi handle driven by a libev loop
 * through curl_multi_socket_action() (one ev_io per socket curl names, one
 * ev_timer for curl's timeout), after curl's docs/examples/evhiperfifo.c.
 * A call is either unary (the body is collected, bounded, and handed to
 * on_done) or streaming (each slice goes to on_data as it arrives; used for
 * the watch).  Nothing here blocks the loop.
 *
 * Calls may be started and canceled from anywhere on the loop, including
 * from inside on_data/on_done callbacks: when curl is on the stack the
 * handle is added or removed on the next loop iteration instead (curl
 * forbids both from within its own callbacks).  A canceled call never calls
 * back.  lb_etcd_http_free() must not be called from inside a callback.
 *
 * The blocking half, lb_etcd_http_post_sync(), is for processes without a
 * loop to protect (lbctl register).  Both halves share the handle setup and
 * the way a transfer's outcome is turned into a status and a message.
 */
#ifndef LB_ETCD_HTTP_H
#define LB_ETCD_HTTP_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

/* Connection set-up budget for every call. */
#define LB_ETCD_CONNECT_TIMEOUT_MS 3000
/* Bound on an error body read from a streaming call. */
#define LB_ETCD_ERROR_BODY_MAX (64 * 1024)

/*
 * The outcome of one call.  status is 0 when a complete 2xx response
 * arrived, else a negative errno:
 *   -ECONNREFUSED / -EHOSTUNREACH / -ETIMEDOUT  etcd not reached in time
 *   -EINVAL (gRPC 3), -ENOENT (5), -EPERM (7), -ERANGE (11, compacted),
 *   -EACCES (16), -EAGAIN (14 or HTTP 5xx), -EPROTO (other HTTP errors)
 *   -E2BIG   response body above the call's maximum
 *   other    whatever on_data returned to stop a stream
 * message says what happened in words, for a log line or a user.
 */
struct lb_etcd_reply {
    int status;
    long http_code; /* 0 when no response arrived */
    int grpc_code;  /* from an etcd error body, else 0 */
    char *body;     /* NUL-terminated, "" when none (NULL only when memory ran out);
                     * streams: only an error body */
    size_t body_len;
    char message[256];
};

struct lb_etcd_http;
struct lb_etcd_call;

/* Streaming slice: return 0 to go on, or a negative errno to stop the call. */
typedef int (*lb_etcd_data_cb)(void *ud, const char *data, size_t len);
/* The call is over; `reply` and its body are valid during the callback only. */
typedef void (*lb_etcd_done_cb)(void *ud, const struct lb_etcd_reply *reply);

struct lb_etcd_request {
    const char *endpoint;    /* "http://127.0.0.1:2379" */
    const char *path;        /* "/v3/kv/range" */
    const char *body;        /* JSON; copied */
    long timeout_ms;         /* whole transfer, 0 = none (streams) */
    size_t max_response;     /* unary body bound */
    lb_etcd_data_cb on_data; /* NULL: unary call */
    lb_etcd_done_cb on_done; /* required */
    void *ud;
};

int lb_etcd_http_new(struct ev_loop *loop, struct lb_etcd_http **out);
/* Cancels every call (no callbacks) and frees everything. */
void lb_etcd_http_free(struct lb_etcd_http *h);

/*
 * Starts a call.  Returns 0 with *out (may be NULL if the caller does not
 * keep it), or a negative errno, in which case on_done will not be called.
 * The call object is freed just before on_done runs (forget the pointer
 * there; do not cancel it) or when it is canceled.
 */
int lb_etcd_http_start(struct lb_etcd_http *h, const struct lb_etcd_request *req,
                       struct lb_etcd_call **out);

/* Stops a call that has not finished; its callbacks are never called again. */
void lb_etcd_http_cancel(struct lb_etcd_call *c);

/*
 * Performs a unary request (on_data, on_done and ud are ignored) and fills
 * *out; returns out->status.  Release with lb_etcd_reply_free().
 * Blocks for up to req->timeout_ms.
 */
int lb_etcd_http_post_sync(const struct lb_etcd_request *req, struct lb_etcd_reply *out);
void lb_etcd_reply_free(struct lb_etcd_reply *r);

#endif
