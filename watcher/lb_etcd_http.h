/*
 * HTTP to the etcd gateway: JSON POSTs over libcurl, with TLS and etcd
 * users.
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
 * loop to protect (lbctl register).  Both halves share the handle setup,
 * the login, and the way a transfer's outcome is turned into a status and
 * a message.
 *
 * TLS: every handle gets the CA file, client certificate and key of the
 * config; an https:// endpoint is verified against the CA (host name
 * included).  A failed handshake is reported as what failed: the CA file,
 * our certificate, etcd's certificate, or etcd refusing ours.
 *
 * etcd users: with credentials, the first call authenticates
 * (/v3/auth/authenticate) and every call carries the token raw in
 * Authorization.  Calls started while a login is under way wait for it.
 * A call that etcd answers with "invalid auth token" (401, code 16: the
 * token expired, or was revoked) or "user name is empty" (auth was
 * switched on since) logs in again and is sent once more, unseen by its
 * caller.  A watch is refused inside a 200 stream instead; its owner calls
 * lb_etcd_http_token_refused() and starts it again.  When the login itself
 * fails, the waiting calls end with that failure ("etcd rejected the
 * credentials for user X"); the next call tries again.  If etcd says
 * authentication is not enabled, calls go without a token until it is.
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
 *   -EIO     the connection broke (or a TLS session failed: see message)
 *   -EINVAL (gRPC 3), -ENOENT (5), -EPERM (7), -ERANGE (11, compacted),
 *   -EACCES (16; also: the login was refused), -EAGAIN (14 or HTTP 5xx),
 *   -EPROTO (other HTTP errors)
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
    char message[400];
};

struct lb_etcd_http;
struct lb_etcd_call;
struct lb_etcd_creds;

/* How to reach etcd beyond its URL.  Strings and creds are copied. */
struct lb_etcd_http_config {
    const char *ca_file;   /* PEM bundle that signs etcd's certificate; NULL: the system's */
    const char *cert_file; /* client certificate (PEM) for --client-cert-auth; NULL: none */
    const char *key_file;  /* its private key (PEM); NULL: inside cert_file */
    const struct lb_etcd_creds *creds; /* etcd user; NULL: no login */
};

struct lb_etcd_http_stats {
    unsigned long long logins;         /* tokens obtained */
    unsigned long long login_failures; /* logins refused or not answered */
    unsigned long long token_retries;  /* calls sent again after a refused token */
};

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

/*
 * Creates the client.  loop may be NULL for a client that only makes
 * blocking calls.  The TLS files are opened once here so that a path that
 * cannot be read is reported at start-up.  Returns 0, or a negative errno
 * with *err (malloc'd) naming the setting (--etcd-ca, --etcd-cert,
 * --etcd-key) and what is wrong.
 */
int lb_etcd_http_new(struct ev_loop *loop, const struct lb_etcd_http_config *cfg,
                     struct lb_etcd_http **out, char **err);
/* Cancels every call (no callbacks), wipes the credentials, frees everything. */
void lb_etcd_http_free(struct lb_etcd_http *h);

/*
 * SIGHUP: new credentials (copied; NULL: none) replace the old ones and the
 * token is dropped, so the next call logs in with them; calls in flight
 * finish with the token they carry.
 */
void lb_etcd_http_set_creds(struct lb_etcd_http *h, const struct lb_etcd_creds *creds);

/* SIGHUP: the TLS files may have changed: the next call opens a new connection. */
void lb_etcd_http_renew_tls(struct lb_etcd_http *h);

/* True when the config names etcd credentials. */
bool lb_etcd_http_has_login(const struct lb_etcd_http *h);

/*
 * etcd refused the token a call carried, in a way this layer could not see
 * (a watch canceled inside its 200 stream).  The next call logs in again.
 */
void lb_etcd_http_token_refused(struct lb_etcd_http *h);

void lb_etcd_http_get_stats(const struct lb_etcd_http *h, struct lb_etcd_http_stats *out);

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
 * *out; returns out->status.  Release with lb_etcd_reply_free().  Logs in
 * first when needed, and again once if etcd refuses the token; each
 * request blocks for up to req->timeout_ms.
 */
int lb_etcd_http_post_sync(struct lb_etcd_http *h, const struct lb_etcd_request *req,
                           struct lb_etcd_reply *out);
void lb_etcd_reply_free(struct lb_etcd_reply *r);

#endif
