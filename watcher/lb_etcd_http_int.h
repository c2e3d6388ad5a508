/*
 * Inside the etcd HTTP client (lb_etcd_http.h), shared by its two files:
 * lb_etcd_http.c (requests, what a transfer's outcome means, the login,
 * the blocking half) and lb_etcd_http_multi.c (the client object and
 * curl's multi interface on the libev loop: the asynchronous half).
 * Nothing outside these two files includes this header.
 */
#ifndef LB_ETCD_HTTP_INT_H
#define LB_ETCD_HTTP_INT_H

#include "lb_buf.h"
#include "lb_list.h"
#include "lb_etcd_auth.h"
#include "lb_etcd_http.h"

#include <curl/curl.h>
#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#define LOGIN_TIMEOUT_MS   5000
#define LOGIN_RESPONSE_MAX (64 * 1024)
#define AUTH_HEADER_MAX    (LB_ETCD_TOKEN_MAX + 32)

struct http_socket {
    ev_io io;
    struct lb_etcd_http *h;
    curl_socket_t fd;
    struct lb_list link; /* h->sockets */
};

struct lb_etcd_call {
    struct lb_list link; /* h->calls (blocking calls are in no list) */
    struct lb_etcd_http *h;
    CURL *easy;
    struct curl_slist *headers;
    char *endpoint;
    char *secret_body; /* the login's body: ours, so it can be wiped */
    bool added;        /* in the multi */
    bool canceled;     /* no more callbacks; reap on the next chance */
    bool login;        /* this call is the login */
    bool waiting_login;
    bool doomed;     /* the login it waited for failed */
    bool resent;     /* already sent again after a refused token */
    bool error_body; /* non-2xx response: collect the body instead of streaming it */
    bool checked_code;
    int abort_status; /* why a write callback stopped the transfer */
    uint64_t token_gen;
    size_t max_response;
    lb_etcd_data_cb on_data;
    lb_etcd_done_cb on_done;
    void *ud;
    struct lb_buf body;
    char errbuf[CURL_ERROR_SIZE];
};

struct lb_etcd_http {
    struct ev_loop *loop; /* NULL: blocking calls only */
    CURLM *multi;
    ev_timer timer;       /* curl's own timeout */
    ev_timer deferred;    /* adds and removals postponed out of curl callbacks */
    struct lb_list calls; /* every call on the loop */
    struct lb_list sockets;
    int in_curl;

    char *ca_file, *cert_file, *key_file;
    bool has_creds;
    struct lb_etcd_creds creds;
    char token[LB_ETCD_TOKEN_MAX]; /* "" = none */
    uint64_t token_gen;            /* bumped for every new token */
    bool login_off;                /* etcd said authentication is not enabled */
    bool fresh_connect;            /* TLS files re-read: the next call opens a new connection */
    struct lb_etcd_call *login_call;
    struct lb_etcd_http_stats stats;
};

/* snprintf() for messages, which may be cut: an etcd message inside ours is cut first. */
void lb_etcd_say(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A call for req (copies what it needs); NULL with *rc set on failure. */
struct lb_etcd_call *lb_etcd_call_new(struct lb_etcd_http *h, const struct lb_etcd_request *req,
                                      char *secret_body, bool login, int *rc);
void lb_etcd_call_destroy(struct lb_etcd_call *c);
/* (Re)sets the call's headers, the current token included.  Returns 0 or -ENOMEM. */
int lb_etcd_call_set_headers(struct lb_etcd_call *c);
/* The reply of a finished transfer: status, message, body. */
void lb_etcd_call_make_reply(struct lb_etcd_call *c, CURLcode res, struct lb_etcd_reply *r);

/* True when calls need a token and there is none. */
bool lb_etcd_http_login_needed(const struct lb_etcd_http *h);
/* True when etcd refused the token the call carried (and it may be sent again). */
bool lb_etcd_http_token_was_refused(struct lb_etcd_http *h, bool resent,
                                    const struct lb_etcd_reply *r);
/* Drops the token of generation gen (a newer one stays). */
void lb_etcd_http_forget_token(struct lb_etcd_http *h, uint64_t gen);
/* Takes the login's answer: 0 with the token kept, or a status with msg. */
int lb_etcd_http_login_outcome(struct lb_etcd_http *h, const char *endpoint,
                               const struct lb_etcd_reply *r, char *msg, size_t size);

#endif
