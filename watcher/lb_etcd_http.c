/*
 * The etcd HTTP client's requests (lb_etcd_http.h; the object and the
 * asynchronous half are in lb_etcd_http_multi.c): building a transfer
 * (easy handle, headers, the bounded body), what its outcome means (a
 * status and a message an operator can act on), the login and its
 * answer, and the blocking half used by lbctl register.
 *
 * The login is a call like the others, flagged `login`, of which at most
 * one is in flight (`login_call`).  A call that needs a token while there
 * is none is parked (`waiting_login`, not in the multi) until the login
 * ends: then it is sent with the new token, or fails with the login's
 * error.  A call refused for its token is rewound (removed from the
 * multi, its buffers emptied) and parked the same way; the easy handle
 * keeps its options, so adding it again repeats the same request.
 */
#include "lb_etcd_http_int.h"
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

/* --- outcome of a transfer, shared by both halves --------------------------------------- */

/* snprintf() for messages, which may be cut: an etcd message inside ours is cut first. */
void lb_etcd_say(char *buf, size_t size, const char *fmt, ...)
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
        lb_etcd_say(msg, size, "TLS: cannot load the CA file %s (--etcd-ca): %s",
                    h->ca_file ? h->ca_file : "of the system", detail);
        return;
    case CURLE_SSL_CERTPROBLEM:
        lb_etcd_say(msg, size,
                    "TLS: cannot use the client certificate %s with key %s (--etcd-cert, "
                    "--etcd-key): %s",
                    h->cert_file ? h->cert_file : "-",
                    h->key_file ? h->key_file : "in the same file", detail);
        return;
    case CURLE_PEER_FAILED_VERIFICATION:
        lb_etcd_say(msg, size,
                    "TLS: the certificate of etcd at %s is not trusted (check --etcd-ca, and that "
                    "the certificate names the host of the URL): %s",
                    endpoint, detail);
        return;
    case CURLE_SSL_CONNECT_ERROR:
        lb_etcd_say(msg, size, "TLS handshake with etcd at %s failed%s: %s", endpoint,
                    strstr(detail, "wrong version number") ? " (is it a plain http:// endpoint?)"
                                                           : "",
                    detail);
        return;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
        if (is_https(endpoint) && !answered && new_conn) {
            lb_etcd_say(msg, size,
                        "TLS: etcd at %s closed the session right after the handshake: it probably "
                        "wants a client certificate it trusts (%s) (%s)",
                        endpoint,
                        h->cert_file ? "check --etcd-cert and the CA etcd trusts"
                                     : "none given: --etcd-cert, --etcd-key",
                        detail);
            return;
        }
        if (!is_https(endpoint) && !answered) {
            lb_etcd_say(msg, size,
                        "etcd at %s closed the connection without answering (%s); if "
                        "it serves TLS, use an https:// URL",
                        endpoint, detail);
            return;
        }
        break;
    case CURLE_OPERATION_TIMEDOUT:
        if (!answered && !strstr(detail, "Connection timed out")) {
            lb_etcd_say(msg, size,
                        "etcd at %s took the connection but sent no answer in time (%s): is it "
                        "overloaded, or is the URL not etcd's client URL?",
                        endpoint, detail);
            return;
        }
        break;
    default:
        break;
    }
    lb_etcd_say(msg, size, "%s", detail);
}

/* Fills *r from a finished transfer; the body is handed over (c->body emptied). */
void lb_etcd_call_make_reply(struct lb_etcd_call *c, CURLcode res, struct lb_etcd_reply *r)
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
        lb_etcd_say(r->message, sizeof(r->message), "%s",
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
        lb_etcd_say(r->message, sizeof(r->message), "ok");
        return;
    }
    {
        char *message = NULL;
        int code = 0;

        if (r->body && lb_etcd_json_parse_error(r->body, r->body_len, &code, &message) == 0) {
            r->grpc_code = code;
            r->status = status_from_grpc(code);
            if (code == 3 && strstr(message, "user name is empty") && !c->h->has_creds)
                lb_etcd_say(r->message, sizeof(r->message),
                            "etcd requires a user (give --etcd-user-file): HTTP %ld: %s",
                            r->http_code, message);
            else
                lb_etcd_say(r->message, sizeof(r->message), "HTTP %ld: %s", r->http_code, message);
            free(message);
        } else {
            lb_etcd_say(r->message, sizeof(r->message),
                        "HTTP %ld without an etcd error in the body (is the endpoint etcd's client "
                        "URL, usually port 2379, with its v3 JSON gateway at /v3/?)",
                        r->http_code);
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
    struct lb_etcd_http *h = c->h;
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
    if (h->fresh_connect) {
        /* Rotated TLS files take effect on a new connection; the ones open go on. */
        SET(CURLOPT_FRESH_CONNECT, 1L);
        h->fresh_connect = false;
    }
#if LIBCURL_VERSION_NUM >= 0x075700
    /* Read the CA file for each new connection, not once a day: it may be rotated. */
    SET(CURLOPT_CA_CACHE_TIMEOUT, 0L);
#endif
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
int lb_etcd_call_set_headers(struct lb_etcd_call *c)
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
struct lb_etcd_call *lb_etcd_call_new(struct lb_etcd_http *h, const struct lb_etcd_request *req,
                                      char *secret_body, bool login, int *rc)
{
    struct lb_etcd_call *c = calloc(1, sizeof(*c));

    *rc = -ENOMEM;
    if (!c)
        return NULL;
    lb_list_init(&c->link);
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
        *rc = lb_etcd_call_set_headers(c);
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

/* Frees what lb_etcd_call_new() made; the call is out of the multi and the list. */
void lb_etcd_call_destroy(struct lb_etcd_call *c)
{
    curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    lb_buf_free(&c->body);
    free(c->endpoint);
    lb_etcd_auth_body_free(c->secret_body);
    free(c);
}

/* --- login: what its answer means, for both halves --------------------------------------- */

bool lb_etcd_http_login_needed(const struct lb_etcd_http *h)
{
    return h->has_creds && !h->token[0] && !h->login_off;
}

/* True when etcd refused the call for its token and a fresh login may cure it. */
bool lb_etcd_http_token_was_refused(struct lb_etcd_http *h, bool resent,
                                    const struct lb_etcd_reply *r)
{
    if (!h->has_creds || resent || r->status == 0)
        return false;
    return r->http_code == 401 || r->grpc_code == 16 ||
           (r->grpc_code == 3 && lb_etcd_auth_is_token_error(r->message));
}

/* The token the call carried was refused: forget it, unless a newer one came meanwhile. */
void lb_etcd_http_forget_token(struct lb_etcd_http *h, uint64_t gen)
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
int lb_etcd_http_login_outcome(struct lb_etcd_http *h, const char *endpoint,
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
        lb_etcd_say(msg, size, "cannot log in to etcd at %s as %s: %s", endpoint, h->creds.user,
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
        lb_etcd_say(msg, size, "cannot log in to etcd at %s: %s", endpoint, r->message);
        rc = r->status;
    } else if (r->grpc_code == 3 && strstr(r->message, "authentication failed")) {
        lb_etcd_say(msg, size,
                    "etcd rejected the credentials for user %s (wrong user name or password; see "
                    "--etcd-user-file)",
                    h->creds.user);
        rc = -EACCES;
    } else {
        lb_etcd_say(msg, size, "etcd at %s refused to log in user %s: %s", endpoint, h->creds.user,
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
    c = lb_etcd_call_new(h, req, login_body, login_body != NULL, &rc);
    if (!c) {
        out->status = rc;
        lb_etcd_say(out->message, sizeof(out->message), "cannot set up the request to %s%s",
                    req->endpoint, req->path);
        return out->status;
    }
    res = curl_easy_perform(c->easy);
    lb_etcd_call_make_reply(c, res, out);
    c->secret_body = NULL; /* the caller's */
    lb_etcd_call_destroy(c);
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
        lb_etcd_say(out->message, sizeof(out->message), "out of memory");
        return out->status;
    }
    perform_sync(h, &req, body, &reply);
    lb_etcd_auth_body_free(body);
    rc = lb_etcd_http_login_outcome(h, endpoint, &reply, msg, sizeof(msg));
    if (rc < 0) {
        *out = reply;
        out->status = rc;
        lb_etcd_say(out->message, sizeof(out->message), "%s", msg);
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
        if (lb_etcd_http_login_needed(h)) {
            rc = login_sync(h, req->endpoint, req->timeout_ms, out);
            if (rc)
                return rc;
        }
        gen = h->token_gen;
        rc = perform_sync(h, req, NULL, out);
        if (!lb_etcd_http_token_was_refused(h, resent, out))
            return rc;
        resent = true;
        lb_etcd_http_forget_token(h, gen);
        lb_etcd_reply_free(out);
    }
}

void lb_etcd_http_set_creds(struct lb_etcd_http *h, const struct lb_etcd_creds *creds)
{
    lb_etcd_creds_wipe(&h->creds);
    h->has_creds = creds != NULL;
    if (creds)
        h->creds = *creds;
    /* The token was for the old user or password: the next call logs in again. */
    memset(h->token, 0, sizeof(h->token));
    h->token_gen++;
    h->login_off = false;
}

void lb_etcd_http_renew_tls(struct lb_etcd_http *h)
{
    h->fresh_connect = true;
}
