/*
 * libcurl multi on libev, plus the login.  Ownership: the http object owns
 * every call (a list, so free() can reap them all); a call owns its easy
 * handle, its header list and its bounded body buffer.  `in_curl` counts
 * how deep we are inside curl_multi_socket_action(); while it is non-zero,
 * add/remove of easy handles is postponed to the `deferred` zero-timer.
 * Finished transfers are reaped after curl returns (curl_multi_info_read),
 * which is where on_done runs, with curl no longer on the stack.
 *
 * The login is a call like the others, flagged `login`, of which at most
 * one is in flight (`login_call`).  A call that needs a token while there
 * is none is parked (`waiting_login`, not in the multi) until the login
 * ends: then it is sent with the new token, or fails with the login's
 * error.  A call refused for its token is rewound (removed from the
 * multi, its buffers emptied) and parked the same way; the easy handle
 * keeps its options, so adding it again repeats the same request.
 */
#include "lb_etcd_http.h"
#include "lb_buf.h"
#include "lb_error.h"
#include "lb_etcd_auth.h"
#include "lb_etcd_json.h"
#include "lb_log.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOGIN_TIMEOUT_MS   5000
#define LOGIN_RESPONSE_MAX (64 * 1024)
#define AUTH_HEADER_MAX    (LB_ETCD_TOKEN_MAX + 32)

struct http_socket {
    ev_io io;
    struct lb_etcd_http *h;
    curl_socket_t fd;
    struct http_socket *prev, *next;
};

struct lb_etcd_call {
    struct lb_etcd_call *prev, *next;
    struct lb_etcd_http *h;
    CURL *easy;
    struct curl_slist *headers;
    char *endpoint;
    char *secret_body; /* the login's body: ours, so it can be wiped */
    bool linked;       /* in h->calls (blocking calls are not) */
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
    ev_timer timer;    /* curl's own timeout */
    ev_timer deferred; /* adds and removals postponed out of curl callbacks */
    struct lb_etcd_call *calls;
    struct http_socket *sockets;
    int in_curl;

    char *ca_file, *cert_file, *key_file;
    bool has_creds;
    struct lb_etcd_creds creds;
    char token[LB_ETCD_TOKEN_MAX]; /* "" = none */
    uint64_t token_gen;            /* bumped for every new token */
    bool login_off;                /* etcd said authentication is not enabled */
    struct lb_etcd_call *login_call;
    struct lb_etcd_http_stats stats;
};

/* --- outcome of a transfer, shared by both halves --------------------------------------- */

/* snprintf() for messages, which may be cut: an etcd message inside ours is cut first. */
static void say(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void say(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

static int status_from_grpc(int code)
{
    switch (code) {
    case 3:
        return -EINVAL;
    case 4:
        return -ETIMEDOUT;
    case 5:
        return -ENOENT;
    case 7:
        return -EPERM;
    case 11:
        return -ERANGE;
    case 14:
        return -EAGAIN;
    case 16:
        return -EACCES;
    default:
        return 0;
    }
}

static int status_from_curl(CURLcode res)
{
    switch (res) {
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -EHOSTUNREACH;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

static bool is_https(const char *endpoint)
{
    return strncmp(endpoint, "https://", 8) == 0;
}

/*
 * Words a transfer that failed below HTTP, naming what an operator has to
 * look at when it is TLS.  `answered` is false when no response header
 * arrived, the only case in which a broken session can be blamed on the
 * handshake (etcd refuses a client certificate after TLS 1.3's handshake,
 * so curl only sees the connection close when it first reads or writes), and
 * only on a connection made for this transfer (`new_conn`).
 */
static void describe_curl_failure(const struct lb_etcd_http *h, const char *endpoint, CURLcode res,
                                  const char *errbuf, bool answered, bool new_conn, char *msg,
                                  size_t size)
{
    const char *detail = errbuf[0] ? errbuf : curl_easy_strerror(res);

    switch (res) {
    case CURLE_SSL_CACERT_BADFILE:
        say(msg, size, "TLS: cannot load the CA file %s (--etcd-ca): %s",
            h->ca_file ? h->ca_file : "of the system", detail);
        return;
    case CURLE_SSL_CERTPROBLEM:
        say(msg, size,
            "TLS: cannot use the client certificate %s with key %s (--etcd-cert, "
            "--etcd-key): %s",
            h->cert_file ? h->cert_file : "-", h->key_file ? h->key_file : "in the same file",
            detail);
        return;
    case CURLE_PEER_FAILED_VERIFICATION:
        say(msg, size,
            "TLS: the certificate of etcd at %s is not trusted (check --etcd-ca, and that "
            "the certificate names the host of the URL): %s",
            endpoint, detail);
        return;
    case CURLE_SSL_CONNECT_ERROR:
        say(msg, size, "TLS handshake with etcd at %s failed%s: %s", endpoint,
            strstr(detail, "wrong version number") ? " (is it a plain http:// endpoint?)" : "",
            detail);
        return;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
        if (is_https(endpoint) && !answered && new_conn) {
            say(msg, size,
                "TLS: etcd at %s closed the session right after the handshake: it probably "
                "wants a client certificate it trusts (%s) (%s)",
                endpoint,
                h->cert_file ? "check --etcd-cert and the CA etcd trusts"
                             : "none given: --etcd-cert, --etcd-key",
                detail);
            return;
        }
        if (!is_https(endpoint) && !answered) {
            say(msg, size,
                "etcd at %s closed the connection without answering (%s); if "
                "it serves TLS, use an https:// URL",
                endpoint, detail);
            return;
        }
        break;
    default:
        break;
    }
    say(msg, size, "%s", detail);
}

/* Fills *r from a finished transfer; the body is handed over (c->body emptied). */
static void make_reply(struct lb_etcd_call *c, CURLcode res, struct lb_etcd_reply *r)
{
    memset(r, 0, sizeof(*r));
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &r->http_code);
    /* hand the collected body over; an empty one becomes "" (NULL only without memory) */
    if (c->body.data) {
        r->body = c->body.data;
        r->body_len = c->body.len;
        lb_buf_init(&c->body, c->body.max);
    } else {
        r->body = strdup("");
    }
    if (res == CURLE_WRITE_ERROR && c->abort_status) {
        r->status = c->abort_status;
        say(r->message, sizeof(r->message), "%s",
            c->abort_status == -E2BIG ? "response larger than its maximum"
                                      : "transfer stopped by the reader");
        return;
    }
    if (res != CURLE_OK) {
        long connects = 0;

        curl_easy_getinfo(c->easy, CURLINFO_NUM_CONNECTS, &connects);
        r->status = status_from_curl(res);
        describe_curl_failure(c->h, c->endpoint, res, c->errbuf, r->http_code != 0, connects > 0,
                              r->message, sizeof(r->message));
        return;
    }
    if (r->http_code >= 200 && r->http_code < 300 && !c->error_body) {
        r->status = 0;
        say(r->message, sizeof(r->message), "ok");
        return;
    }
    {
        char *message = NULL;
        int code = 0;

        if (r->body && lb_etcd_json_parse_error(r->body, r->body_len, &code, &message) == 0) {
            r->grpc_code = code;
            r->status = status_from_grpc(code);
            if (code == 3 && strstr(message, "user name is empty") && !c->h->has_creds)
                say(r->message, sizeof(r->message),
                    "etcd requires a user (give --etcd-user-file): HTTP %ld: %s", r->http_code,
                    message);
            else
                say(r->message, sizeof(r->message), "HTTP %ld: %s", r->http_code, message);
            free(message);
        } else {
            say(r->message, sizeof(r->message), "HTTP %ld", r->http_code);
        }
    }
    if (r->status == 0)
        r->status = r->http_code == 404   ? -ENOENT
                    : r->http_code == 401 ? -EACCES
                    : r->http_code == 403 ? -EPERM
                    : r->http_code >= 500 ? -EAGAIN
                                          : -EPROTO;
}

void lb_etcd_reply_free(struct lb_etcd_reply *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    struct lb_etcd_call *c = userp;
    size_t len = size * nmemb;
    int rc;

    if (c->canceled)
        return 0;
    if (!c->checked_code) {
        long code = 0;

        c->checked_code = true;
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
        if (c->on_data && (code < 200 || code >= 300)) {
            c->error_body = true;
            c->body.max = LB_ETCD_ERROR_BODY_MAX;
        }
    }
    if (c->on_data && !c->error_body) {
        rc = c->on_data(c->ud, data, len);
        if (rc < 0) {
            c->abort_status = rc;
            return 0;
        }
        return len;
    }
    rc = lb_buf_append(&c->body, data, len);
    if (rc < 0) {
        c->abort_status = rc;
        return 0;
    }
    return len;
}

static int setup_easy(struct lb_etcd_call *c, const struct lb_etcd_request *req)
{
    const struct lb_etcd_http *h = c->h;
    char url[1024];
    CURL *e = c->easy;
    int n = snprintf(url, sizeof(url), "%s%s", req->endpoint, req->path);
    CURLcode res = CURLE_OK;

    if (n < 0 || (size_t)n >= sizeof(url))
        return -ENAMETOOLONG;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (res == CURLE_OK)                                                                       \
            res = curl_easy_setopt(e, opt, val);                                                   \
    } while (0)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    if (c->secret_body) {
        SET(CURLOPT_POSTFIELDSIZE, (long)strlen(c->secret_body));
        SET(CURLOPT_POSTFIELDS, c->secret_body);
    } else {
        SET(CURLOPT_COPYPOSTFIELDS, req->body);
    }
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_TCP_KEEPIDLE, 30L);
    SET(CURLOPT_TCP_KEEPINTVL, 10L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)LB_ETCD_CONNECT_TIMEOUT_MS);
    SET(CURLOPT_TIMEOUT_MS, req->timeout_ms);
    SET(CURLOPT_ERRORBUFFER, c->errbuf);
    SET(CURLOPT_WRITEFUNCTION, write_cb);
    SET(CURLOPT_WRITEDATA, c);
    SET(CURLOPT_PRIVATE, c);
    if (h->ca_file)
        SET(CURLOPT_CAINFO, h->ca_file);
    if (h->cert_file)
        SET(CURLOPT_SSLCERT, h->cert_file);
    if (h->key_file)
        SET(CURLOPT_SSLKEY, h->key_file);
#undef SET
    if (res == CURLE_OUT_OF_MEMORY)
        return -ENOMEM;
    return res == CURLE_OK ? 0 : -EINVAL;
}

/* (Re)builds the call's headers with the current token (none for the login). */
static int call_set_headers(struct lb_etcd_call *c)
{
    struct lb_etcd_http *h = c->h;
    struct curl_slist *l = curl_slist_append(NULL, "Content-Type: application/json"), *t;

    if (l && !(t = curl_slist_append(l, "Expect:"))) {
        curl_slist_free_all(l);
        l = NULL;
    }
    if (l && !c->login && h->token[0]) {
        char line[AUTH_HEADER_MAX];

        snprintf(line, sizeof(line), "Authorization: %s", h->token);
        t = curl_slist_append(l, line);
        explicit_bzero(line, sizeof(line));
        if (!t) {
            curl_slist_free_all(l);
            l = NULL;
        }
    }
    if (!l)
        return -ENOMEM;
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, l);
    curl_slist_free_all(c->headers);
    c->headers = l;
    c->token_gen = c->login ? 0 : h->token_gen;
    return 0;
}

/*
 * A call object with its easy handle set up; not linked, not sent.  With
 * secret_body (the login's), the call owns that buffer from here on, and
 * wipes it when freed; on failure it is still the caller's.
 */
static struct lb_etcd_call *call_new(struct lb_etcd_http *h, const struct lb_etcd_request *req,
                                     char *secret_body, bool login, int *rc)
{
    struct lb_etcd_call *c = calloc(1, sizeof(*c));

    *rc = -ENOMEM;
    if (!c)
        return NULL;
    c->h = h;
    c->login = login;
    c->on_data = req->on_data;
    c->on_done = req->on_done;
    c->ud = req->ud;
    c->secret_body = secret_body;
    c->max_response = req->max_response;
    lb_buf_init(&c->body, req->on_data ? LB_ETCD_ERROR_BODY_MAX : req->max_response);
    c->endpoint = strdup(req->endpoint);
    c->easy = curl_easy_init();
    if (c->endpoint && c->easy)
        *rc = setup_easy(c, req);
    if (*rc == 0)
        *rc = call_set_headers(c);
    if (*rc) {
        if (c->easy)
            curl_easy_cleanup(c->easy);
        curl_slist_free_all(c->headers);
        free(c->endpoint);
        free(c);
        return NULL;
    }
    return c;
}

/* Frees what call_new() made; the call is out of the multi and the list. */
static void call_destroy(struct lb_etcd_call *c)
{
    curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    lb_buf_free(&c->body);
    free(c->endpoint);
    lb_etcd_auth_body_free(c->secret_body);
    free(c);
}

/* --- login: what its answer means, for both halves --------------------------------------- */

static bool login_needed(const struct lb_etcd_http *h)
{
    return h->has_creds && !h->token[0] && !h->login_off;
}

/* True when etcd refused the call for its token and a fresh login may cure it. */
static bool token_refused(struct lb_etcd_http *h, bool resent, const struct lb_etcd_reply *r)
{
    if (!h->has_creds || resent || r->status == 0)
        return false;
    return r->http_code == 401 || r->grpc_code == 16 ||
           (r->grpc_code == 3 && lb_etcd_auth_is_token_error(r->message));
}

/* The token the call carried was refused: forget it, unless a newer one came meanwhile. */
static void forget_token(struct lb_etcd_http *h, uint64_t gen)
{
    h->stats.token_retries++;
    h->login_off = false; /* "user name is empty": authentication was switched on */
    if (gen == h->token_gen)
        explicit_bzero(h->token, sizeof(h->token));
}

/*
 * Reads a login's reply.  Returns 0 with the new token stored, 1 when etcd
 * has authentication off (calls go without a token), or a negative errno
 * with msg saying why the login failed.
 */
static int login_outcome(struct lb_etcd_http *h, const char *endpoint,
                         const struct lb_etcd_reply *r, char *msg, size_t size)
{
    char token[LB_ETCD_TOKEN_MAX], *err = NULL;
    int rc;

    if (r->status == 0) {
        rc = r->body ? lb_etcd_auth_parse_token(r->body, r->body_len, token, &err) : -ENOMEM;
        if (rc == 0) {
            memcpy(h->token, token, sizeof(h->token));
            explicit_bzero(token, sizeof(token));
            h->token_gen++;
            h->stats.logins++;
            /* one line per token: the first, then one per expiry (minutes apart) */
            LB_INFO("etcd", "msg=\"logged in to etcd%s\" user=%s endpoint=%s logins=%llu",
                    h->stats.logins == 1 ? "" : " again (the token expired or was revoked)",
                    h->creds.user, endpoint, (unsigned long long)h->stats.logins);
            return 0;
        }
        say(msg, size, "cannot log in to etcd at %s as %s: %s", endpoint, h->creds.user,
            err ? err : "out of memory");
        free(err);
        rc = -EPROTO;
    } else if (r->grpc_code == 9) {
        if (!h->login_off)
            LB_WARN("etcd",
                    "msg=\"etcd has authentication disabled; requests go without a "
                    "token until it is enabled\" endpoint=%s user=%s",
                    endpoint, h->creds.user);
        h->login_off = true;
        return 1;
    } else if (r->http_code == 0) {
        say(msg, size, "cannot log in to etcd at %s: %s", endpoint, r->message);
        rc = r->status;
    } else if (r->grpc_code == 3 && strstr(r->message, "authentication failed")) {
        say(msg, size,
            "etcd rejected the credentials for user %s (wrong user name or password; see "
            "--etcd-user-file)",
            h->creds.user);
        rc = -EACCES;
    } else {
        say(msg, size, "etcd at %s refused to log in user %s: %s", endpoint, h->creds.user,
            r->message);
        rc = r->status ? r->status : -EPROTO;
    }
    h->stats.login_failures++;
    return rc;
}

/* --- blocking half --------------------------------------------------------------------- */

/* One blocking transfer of req (or of the login, whose body the caller keeps and wipes). */
static int perform_sync(struct lb_etcd_http *h, const struct lb_etcd_request *req, char *login_body,
                        struct lb_etcd_reply *out)
{
    struct lb_etcd_call *c;
    CURLcode res;
    int rc;

    memset(out, 0, sizeof(*out));
    c = call_new(h, req, login_body, login_body != NULL, &rc);
    if (!c) {
        out->status = rc;
        say(out->message, sizeof(out->message), "cannot set up the request to %s%s", req->endpoint,
            req->path);
        return out->status;
    }
    res = curl_easy_perform(c->easy);
    make_reply(c, res, out);
    c->secret_body = NULL; /* the caller's */
    call_destroy(c);
    return out->status;
}

/* Logs in, blocking.  0 (token stored or authentication off) or out filled with the failure. */
static int login_sync(struct lb_etcd_http *h, const char *endpoint, long timeout_ms,
                      struct lb_etcd_reply *out)
{
    struct lb_etcd_request req = {
        .endpoint = endpoint,
        .path = LB_ETCD_PATH_AUTHENTICATE,
        .body = "",
        .timeout_ms = timeout_ms > 0 ? timeout_ms : LOGIN_TIMEOUT_MS,
        .max_response = LOGIN_RESPONSE_MAX,
    };
    struct lb_etcd_reply reply;
    char *body = NULL, msg[sizeof(out->message)];
    int rc;

    memset(out, 0, sizeof(*out));
    if (lb_etcd_auth_request(&h->creds, &body) < 0) {
        out->status = -ENOMEM;
        say(out->message, sizeof(out->message), "out of memory");
        return out->status;
    }
    perform_sync(h, &req, body, &reply);
    lb_etcd_auth_body_free(body);
    rc = login_outcome(h, endpoint, &reply, msg, sizeof(msg));
    if (rc < 0) {
        *out = reply;
        out->status = rc;
        say(out->message, sizeof(out->message), "%s", msg);
        return rc;
    }
    lb_etcd_reply_free(&reply);
    return 0;
}

int lb_etcd_http_post_sync(struct lb_etcd_http *h, const struct lb_etcd_request *req,
                           struct lb_etcd_reply *out)
{
    bool resent = false;
    uint64_t gen;
    int rc;

    for (;;) {
        if (login_needed(h)) {
            rc = login_sync(h, req->endpoint, req->timeout_ms, out);
            if (rc)
                return rc;
        }
        gen = h->token_gen;
        rc = perform_sync(h, req, NULL, out);
        if (!token_refused(h, resent, out))
            return rc;
        resent = true;
        forget_token(h, gen);
        lb_etcd_reply_free(out);
    }
}

/* --- asynchronous half ----------------------------------------------------------------- */

static void call_unlink_free(struct lb_etcd_call *c)
{
    struct lb_etcd_http *h = c->h;

    if (c->added)
        curl_multi_remove_handle(h->multi, c->easy);
    if (c->linked) {
        if (c->prev)
            c->prev->next = c->next;
        else
            h->calls = c->next;
        if (c->next)
            c->next->prev = c->prev;
    }
    if (h->login_call == c)
        h->login_call = NULL;
    call_destroy(c);
}

static void call_link(struct lb_etcd_http *h, struct lb_etcd_call *c)
{
    c->next = h->calls;
    if (h->calls)
        h->calls->prev = c;
    h->calls = c;
    c->linked = true;
}

static void schedule_deferred(struct lb_etcd_http *h)
{
    if (!ev_is_active(&h->deferred)) {
        ev_timer_set(&h->deferred, 0., 0.);
        ev_timer_start(h->loop, &h->deferred);
    }
}

/* Puts the call in the multi (later, if curl is on the stack).  0 or -ENOMEM. */
static int call_send(struct lb_etcd_call *c)
{
    struct lb_etcd_http *h = c->h;
    int rc = call_set_headers(c);

    if (rc)
        return rc;
    c->waiting_login = false;
    if (h->in_curl) {
        schedule_deferred(h);
        return 0;
    }
    if (curl_multi_add_handle(h->multi, c->easy) != CURLM_OK)
        return -ENOMEM;
    c->added = true;
    return 0;
}

static int login_begin(struct lb_etcd_http *h, const char *endpoint);

/* Sends the call now, or parks it until a login brings a token. */
static int call_dispatch(struct lb_etcd_call *c)
{
    if (login_needed(c->h)) {
        c->waiting_login = true;
        return login_begin(c->h, c->endpoint);
    }
    return call_send(c);
}

/* Ends a call that never got (or lost) its transfer: on_done with status and msg. */
static void call_fail(struct lb_etcd_call *c, int status, const char *msg)
{
    struct lb_etcd_reply reply;
    lb_etcd_done_cb done = c->on_done;
    void *ud = c->ud;

    memset(&reply, 0, sizeof(reply));
    reply.status = status;
    reply.body = strdup("");
    say(reply.message, sizeof(reply.message), "%s", msg);
    call_unlink_free(c);
    done(ud, &reply);
    lb_etcd_reply_free(&reply);
}

/* Fails every call marked doomed, one at a time: callbacks may change the list. */
static void fail_doomed(struct lb_etcd_http *h, int status, const char *msg)
{
    for (;;) {
        struct lb_etcd_call *c = h->calls;

        while (c && !(c->doomed && !c->canceled))
            c = c->next;
        if (!c)
            return;
        c->doomed = false;
        call_fail(c, status, msg);
    }
}

/* The login ended: send the calls that waited for it, or fail them with its error. */
static void login_done(struct lb_etcd_http *h, const char *endpoint,
                       const struct lb_etcd_reply *reply)
{
    char msg[sizeof(reply->message)] = "";
    int rc = login_outcome(h, endpoint, reply, msg, sizeof(msg));

    for (struct lb_etcd_call *c = h->calls; c; c = c->next) {
        if (!c->waiting_login || c->canceled)
            continue;
        if (rc < 0 || call_send(c) < 0)
            c->doomed = true;
    }
    if (rc < 0)
        fail_doomed(h, rc, msg);
    else
        fail_doomed(h, -ENOMEM, "cannot start the request");
}

static int login_begin(struct lb_etcd_http *h, const char *endpoint)
{
    struct lb_etcd_request req = {
        .endpoint = endpoint,
        .path = LB_ETCD_PATH_AUTHENTICATE,
        .timeout_ms = LOGIN_TIMEOUT_MS,
        .max_response = LOGIN_RESPONSE_MAX,
        .on_done = NULL, /* login_done(), from finish_call() */
    };
    struct lb_etcd_call *c;
    char *body = NULL;
    int rc;

    if (h->login_call)
        return 0;
    rc = lb_etcd_auth_request(&h->creds, &body);
    if (rc)
        return rc;
    c = call_new(h, &req, body, true, &rc);
    if (!c) {
        lb_etcd_auth_body_free(body);
        return rc;
    }
    call_link(h, c);
    rc = call_send(c);
    if (rc) {
        call_unlink_free(c);
        return rc;
    }
    h->login_call = c;
    return 0;
}

/* Empties a finished call so that adding it again repeats the request. */
static void call_rewind(struct lb_etcd_call *c)
{
    if (c->added) {
        curl_multi_remove_handle(c->h->multi, c->easy);
        c->added = false;
    }
    lb_buf_free(&c->body);
    lb_buf_init(&c->body, c->on_data ? LB_ETCD_ERROR_BODY_MAX : c->max_response);
    c->checked_code = false;
    c->error_body = false;
    c->abort_status = 0;
    c->errbuf[0] = '\0';
}

static void finish_call(struct lb_etcd_call *c, CURLcode res)
{
    struct lb_etcd_http *h = c->h;
    struct lb_etcd_reply reply;
    lb_etcd_done_cb done = c->on_done;
    void *ud = c->ud;
    bool canceled = c->canceled;

    make_reply(c, res, &reply);
    if (c->login) {
        char endpoint[600];

        snprintf(endpoint, sizeof(endpoint), "%s", c->endpoint);
        call_unlink_free(c);
        login_done(h, endpoint, &reply);
        lb_etcd_reply_free(&reply);
        return;
    }
    if (!canceled && token_refused(h, c->resent, &reply)) {
        c->resent = true;
        forget_token(h, c->token_gen);
        call_rewind(c);
        if (call_dispatch(c) == 0) {
            lb_etcd_reply_free(&reply);
            return;
        }
        /* could not send it again: the caller gets etcd's refusal */
    }
    call_unlink_free(c); /* before on_done: the callback may start new calls */
    if (!canceled)
        done(ud, &reply);
    lb_etcd_reply_free(&reply);
}

static void reap_finished(struct lb_etcd_http *h)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(h->multi, &left))) {
        struct lb_etcd_call *c = NULL;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        if (c)
            finish_call(c, msg->data.result);
    }
}

static void socket_action(struct lb_etcd_http *h, curl_socket_t fd, int events)
{
    int running = 0;

    h->in_curl++;
    curl_multi_socket_action(h->multi, fd, events, &running);
    h->in_curl--;
    reap_finished(h);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct http_socket *s = w->data;
    int events =
        (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);

    socket_action(s->h, s->fd, events);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    socket_action(w->data, CURL_SOCKET_TIMEOUT, 0);
}

static void socket_free(struct lb_etcd_http *h, struct http_socket *s)
{
    ev_io_stop(h->loop, &s->io);
    if (s->prev)
        s->prev->next = s->next;
    else
        h->sockets = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s);
}

/* CURLMOPT_SOCKETFUNCTION: keep one ev_io per socket in line with what curl wants. */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct lb_etcd_http *h = userp;
    struct http_socket *s = socketp;
    int events = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);

    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(h->multi, fd, NULL);
            socket_free(h, s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1;
        s->h = h;
        s->fd = fd;
        s->next = h->sockets;
        if (h->sockets)
            h->sockets->prev = s;
        h->sockets = s;
        curl_multi_assign(h->multi, fd, s);
    } else {
        ev_io_stop(h->loop, &s->io);
    }
    ev_io_init(&s->io, io_cb, fd, events);
    s->io.data = s;
    ev_io_start(h->loop, &s->io);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one ev_timer; act in its callback, never here. */
static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct lb_etcd_http *h = userp;

    ev_timer_stop(h->loop, &h->timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&h->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(h->loop, &h->timer);
    }
    return 0;
}

/* Adds pending calls and reaps canceled ones, now that curl is off the stack. */
static void deferred_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_etcd_http *h = w->data;
    struct lb_etcd_call *c = h->calls, *next;

    for (; c; c = next) {
        next = c->next;
        if (c->canceled) {
            call_unlink_free(c);
        } else if (!c->added && !c->waiting_login) {
            if (curl_multi_add_handle(h->multi, c->easy) == CURLM_OK) {
                c->added = true;
            } else if (c->login) {
                struct lb_etcd_reply reply;
                char endpoint[600];

                memset(&reply, 0, sizeof(reply));
                reply.status = -ENOMEM;
                say(reply.message, sizeof(reply.message), "cannot start the request");
                snprintf(endpoint, sizeof(endpoint), "%s", c->endpoint);
                call_unlink_free(c);
                login_done(h, endpoint, &reply);
                next = h->calls; /* the callbacks may have changed the list */
            } else {
                call_fail(c, -ENOMEM, "cannot start the request");
                next = h->calls;
            }
        }
    }
}

/* Opens `path` once, so that a typo shows at start-up and not at the first handshake. */
static int check_readable(const char *path, const char *flag, char **err)
{
    int fd;

    if (!path)
        return 0;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return lb_error_set(err, -errno, "cannot read %s %s: %s", flag, path, strerror(errno));
    close(fd);
    return 0;
}

static int copy_path(const char *path, char **out, char **err)
{
    if (!path || !path[0])
        return 0;
    *out = strdup(path);
    return *out ? 0 : lb_error_set(err, -ENOMEM, "out of memory");
}

int lb_etcd_http_new(struct ev_loop *loop, const struct lb_etcd_http_config *cfg,
                     struct lb_etcd_http **out, char **err)
{
    struct lb_etcd_http *h;
    int rc;

    *out = NULL;
    h = calloc(1, sizeof(*h));
    if (!h)
        return lb_error_set(err, -ENOMEM, "out of memory");
    h->loop = loop;
    rc = copy_path(cfg->ca_file, &h->ca_file, err);
    if (!rc)
        rc = copy_path(cfg->cert_file, &h->cert_file, err);
    if (!rc)
        rc = copy_path(cfg->key_file, &h->key_file, err);
    if (!rc && h->key_file && !h->cert_file)
        rc = lb_error_set(err, -EINVAL,
                          "--etcd-key needs --etcd-cert (the certificate it "
                          "belongs to)");
    if (!rc)
        rc = check_readable(h->ca_file, "--etcd-ca", err);
    if (!rc)
        rc = check_readable(h->cert_file, "--etcd-cert", err);
    if (!rc)
        rc = check_readable(h->key_file, "--etcd-key", err);
    if (rc)
        goto out;
    if (cfg->creds) {
        h->creds = *cfg->creds;
        h->has_creds = true;
    }
    if (loop) {
        h->multi = curl_multi_init();
        if (!h->multi) {
            rc = lb_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        ev_timer_init(&h->timer, timer_cb, 0., 0.);
        h->timer.data = h;
        ev_timer_init(&h->deferred, deferred_cb, 0., 0.);
        h->deferred.data = h;
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    }
out:
    if (rc) {
        lb_etcd_http_free(h);
        return rc;
    }
    *out = h;
    return 0;
}

void lb_etcd_http_free(struct lb_etcd_http *h)
{
    if (!h)
        return;
    while (h->calls)
        call_unlink_free(h->calls);
    if (h->multi)
        curl_multi_cleanup(h->multi); /* may report sockets removed through socket_cb */
    while (h->sockets)
        socket_free(h, h->sockets);
    if (h->loop) {
        ev_timer_stop(h->loop, &h->timer);
        ev_timer_stop(h->loop, &h->deferred);
    }
    free(h->ca_file);
    free(h->cert_file);
    free(h->key_file);
    explicit_bzero(h->token, sizeof(h->token));
    lb_etcd_creds_wipe(&h->creds);
    free(h);
}

bool lb_etcd_http_has_login(const struct lb_etcd_http *h)
{
    return h->has_creds;
}

void lb_etcd_http_token_refused(struct lb_etcd_http *h)
{
    if (h->has_creds)
        forget_token(h, h->token_gen);
}

void lb_etcd_http_get_stats(const struct lb_etcd_http *h, struct lb_etcd_http_stats *out)
{
    *out = h->stats;
}

int lb_etcd_http_start(struct lb_etcd_http *h, const struct lb_etcd_request *req,
                       struct lb_etcd_call **out)
{
    struct lb_etcd_call *c;
    int rc;

    if (out)
        *out = NULL;
    if (!req->on_done || !h->multi)
        return -EINVAL;
    c = call_new(h, req, NULL, false, &rc);
    if (!c)
        return rc;
    call_link(h, c);
    rc = call_dispatch(c);
    if (rc) {
        call_unlink_free(c);
        return rc;
    }
    if (out)
        *out = c;
    return 0;
}

void lb_etcd_http_cancel(struct lb_etcd_call *c)
{
    struct lb_etcd_http *h;

    if (!c || c->canceled)
        return;
    h = c->h;
    c->canceled = true;
    if (h->in_curl)
        schedule_deferred(h);
    else
        call_unlink_free(c);
}
