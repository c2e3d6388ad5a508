/*
 * libcurl multi on libev.  Ownership: the http object owns every call (a
 * list, so free() can reap them all); a call owns its easy handle and its
 * bounded body buffer.  `in_curl` counts how deep we are inside
 * curl_multi_socket_action(); while it is non-zero, add/remove of easy
 * handles is postponed to the `deferred` zero-timer.  Finished transfers are
 * reaped after curl returns (curl_multi_info_read), which is where on_done
 * runs, with curl no longer on the stack.
 */
#include "lb_etcd_http.h"
#include "lb_buf.h"
#include "lb_etcd_json.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct http_socket {
    ev_io io;
    struct lb_etcd_http *h;
    curl_socket_t fd;
    struct http_socket *prev, *next;
};

struct lb_etcd_call {
    struct lb_etcd_call *prev, *next;
    struct lb_etcd_http *h; /* NULL for a blocking call */
    CURL *easy;
    bool added;      /* in the multi */
    bool canceled;   /* no more callbacks; reap on the next chance */
    bool error_body; /* non-2xx response: collect the body instead of streaming it */
    bool checked_code;
    int abort_status; /* why a write callback stopped the transfer */
    lb_etcd_data_cb on_data;
    lb_etcd_done_cb on_done;
    void *ud;
    struct lb_buf body;
    char errbuf[CURL_ERROR_SIZE];
};

struct lb_etcd_http {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer;    /* curl's own timeout */
    ev_timer deferred; /* adds and removals postponed out of curl callbacks */
    struct curl_slist *headers;
    struct lb_etcd_call *calls;
    struct http_socket *sockets;
    int in_curl;
};

/* --- outcome of a transfer, shared by both halves --------------------------------------- */

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
        snprintf(r->message, sizeof(r->message), "%s",
                 c->abort_status == -E2BIG ? "response larger than its maximum"
                                           : "transfer stopped by the reader");
        return;
    }
    if (res != CURLE_OK) {
        r->status = status_from_curl(res);
        snprintf(r->message, sizeof(r->message), "%s",
                 c->errbuf[0] ? c->errbuf : curl_easy_strerror(res));
        return;
    }
    if (r->http_code >= 200 && r->http_code < 300 && !c->error_body) {
        r->status = 0;
        snprintf(r->message, sizeof(r->message), "ok");
        return;
    }
    {
        char *message = NULL;
        int code = 0;

        if (r->body && lb_etcd_json_parse_error(r->body, r->body_len, &code, &message) == 0) {
            r->grpc_code = code;
            r->status = status_from_grpc(code);
            snprintf(r->message, sizeof(r->message), "HTTP %ld: %s", r->http_code, message);
            free(message);
        } else {
            snprintf(r->message, sizeof(r->message), "HTTP %ld", r->http_code);
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

static int setup_easy(struct lb_etcd_call *c, const struct lb_etcd_request *req,
                      struct curl_slist *headers)
{
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
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_COPYPOSTFIELDS, req->body);
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
#undef SET
    if (res == CURLE_OUT_OF_MEMORY)
        return -ENOMEM;
    return res == CURLE_OK ? 0 : -EINVAL;
}

static struct curl_slist *make_headers(void)
{
    struct curl_slist *l = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *l2 = l ? curl_slist_append(l, "Expect:") : NULL;

    if (!l2)
        curl_slist_free_all(l);
    return l2;
}

/* --- blocking half --------------------------------------------------------------------- */

int lb_etcd_http_post_sync(const struct lb_etcd_request *req, struct lb_etcd_reply *out)
{
    struct lb_etcd_call c;
    struct curl_slist *headers = make_headers();
    CURLcode res;
    int rc;

    memset(out, 0, sizeof(*out));
    memset(&c, 0, sizeof(c));
    lb_buf_init(&c.body, req->max_response);
    c.easy = curl_easy_init();
    if (!c.easy || !headers) {
        out->status = -ENOMEM;
        snprintf(out->message, sizeof(out->message), "out of memory");
        goto out;
    }
    rc = setup_easy(&c, req, headers);
    if (rc) {
        out->status = rc;
        snprintf(out->message, sizeof(out->message), "cannot set up the request to %s%s",
                 req->endpoint, req->path);
        goto out;
    }
    res = curl_easy_perform(c.easy);
    make_reply(&c, res, out);
out:
    lb_buf_free(&c.body);
    if (c.easy)
        curl_easy_cleanup(c.easy);
    curl_slist_free_all(headers);
    return out->status;
}

/* --- asynchronous half ----------------------------------------------------------------- */

static void call_unlink_free(struct lb_etcd_call *c)
{
    struct lb_etcd_http *h = c->h;

    if (c->added)
        curl_multi_remove_handle(h->multi, c->easy);
    if (c->prev)
        c->prev->next = c->next;
    else
        h->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    curl_easy_cleanup(c->easy);
    lb_buf_free(&c->body);
    free(c);
}

static void finish_call(struct lb_etcd_call *c, CURLcode res)
{
    struct lb_etcd_reply reply;
    lb_etcd_done_cb done = c->on_done;
    void *ud = c->ud;
    bool canceled = c->canceled;

    make_reply(c, res, &reply);
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
        } else if (!c->added) {
            if (curl_multi_add_handle(h->multi, c->easy) == CURLM_OK) {
                c->added = true;
            } else {
                struct lb_etcd_reply reply;
                lb_etcd_done_cb done = c->on_done;
                void *ud = c->ud;

                memset(&reply, 0, sizeof(reply));
                reply.status = -ENOMEM;
                snprintf(reply.message, sizeof(reply.message), "cannot start the request");
                call_unlink_free(c);
                done(ud, &reply);
                next = h->calls; /* the callback may have changed the list */
            }
        }
    }
}

static void schedule_deferred(struct lb_etcd_http *h)
{
    if (!ev_is_active(&h->deferred)) {
        ev_timer_set(&h->deferred, 0., 0.);
        ev_timer_start(h->loop, &h->deferred);
    }
}

int lb_etcd_http_new(struct ev_loop *loop, struct lb_etcd_http **out)
{
    struct lb_etcd_http *h;

    *out = NULL;
    h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->loop = loop;
    h->multi = curl_multi_init();
    h->headers = make_headers();
    if (!h->multi || !h->headers) {
        if (h->multi)
            curl_multi_cleanup(h->multi);
        curl_slist_free_all(h->headers);
        free(h);
        return -ENOMEM;
    }
    ev_timer_init(&h->timer, timer_cb, 0., 0.);
    h->timer.data = h;
    ev_timer_init(&h->deferred, deferred_cb, 0., 0.);
    h->deferred.data = h;
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    *out = h;
    return 0;
}

void lb_etcd_http_free(struct lb_etcd_http *h)
{
    if (!h)
        return;
    while (h->calls)
        call_unlink_free(h->calls);
    curl_multi_cleanup(h->multi); /* may report sockets removed through socket_cb */
    while (h->sockets)
        socket_free(h, h->sockets);
    ev_timer_stop(h->loop, &h->timer);
    ev_timer_stop(h->loop, &h->deferred);
    curl_slist_free_all(h->headers);
    free(h);
}

int lb_etcd_http_start(struct lb_etcd_http *h, const struct lb_etcd_request *req,
                       struct lb_etcd_call **out)
{
    struct lb_etcd_call *c;
    int rc;

    if (out)
        *out = NULL;
    if (!req->on_done)
        return -EINVAL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->h = h;
    c->on_data = req->on_data;
    c->on_done = req->on_done;
    c->ud = req->ud;
    lb_buf_init(&c->body, req->on_data ? LB_ETCD_ERROR_BODY_MAX : req->max_response);
    c->easy = curl_easy_init();
    if (!c->easy) {
        free(c);
        return -ENOMEM;
    }
    rc = setup_easy(c, req, h->headers);
    if (rc) {
        curl_easy_cleanup(c->easy);
        free(c);
        return rc;
    }
    c->next = h->calls;
    if (h->calls)
        h->calls->prev = c;
    h->calls = c;
    if (h->in_curl) {
        schedule_deferred(h);
    } else if (curl_multi_add_handle(h->multi, c->easy) == CURLM_OK) {
        c->added = true;
    } else {
        call_unlink_free(c);
        return -ENOMEM;
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
