/*
 * The etcd HTTP client object and its asynchronous half: libcurl multi on
 * libev (lb_etcd_http.h).  Ownership: the http object owns every call (a
 * list, so free() can reap them all); a call owns its easy handle, its
 * header list and its bounded body buffer.  `in_curl` counts how deep we
 * are inside curl_multi_socket_action(); while it is non-zero, add/remove
 * of easy handles is postponed to the `deferred` zero-timer.  Finished
 * transfers are reaped after curl returns (curl_multi_info_read), which is
 * where on_done runs, with curl no longer on the stack.
 */
#include "lb_etcd_http_int.h"
#include "lb_file.h"
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

/* --- asynchronous half ----------------------------------------------------------------- */

static void call_unlink_free(struct lb_etcd_call *c)
{
    struct lb_etcd_http *h = c->h;

    if (c->added)
        curl_multi_remove_handle(h->multi, c->easy);
    lb_list_remove(&c->link);
    if (h->login_call == c)
        h->login_call = NULL;
    lb_etcd_call_destroy(c);
}

static void call_link(struct lb_etcd_http *h, struct lb_etcd_call *c)
{
    lb_list_insert_head(&h->calls, &c->link);
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
    int rc = lb_etcd_call_set_headers(c);

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
    if (lb_etcd_http_login_needed(c->h)) {
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
    lb_etcd_say(reply.message, sizeof(reply.message), "%s", msg);
    call_unlink_free(c);
    done(ud, &reply);
    lb_etcd_reply_free(&reply);
}

/* Fails every call marked doomed, one at a time: callbacks may change the list. */
static void fail_doomed(struct lb_etcd_http *h, int status, const char *msg)
{
    for (;;) {
        struct lb_etcd_call *c = NULL;
        struct lb_list *pos;

        lb_list_for_each(pos, &h->calls)
        {
            struct lb_etcd_call *e = lb_list_entry(pos, struct lb_etcd_call, link);

            if (e->doomed && !e->canceled) {
                c = e;
                break;
            }
        }
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
    int rc = lb_etcd_http_login_outcome(h, endpoint, reply, msg, sizeof(msg));

    struct lb_list *pos;

    lb_list_for_each(pos, &h->calls)
    {
        struct lb_etcd_call *c = lb_list_entry(pos, struct lb_etcd_call, link);

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
    c = lb_etcd_call_new(h, &req, body, true, &rc);
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

    lb_etcd_call_make_reply(c, res, &reply);
    if (c->login) {
        char endpoint[600];

        snprintf(endpoint, sizeof(endpoint), "%s", c->endpoint);
        call_unlink_free(c);
        login_done(h, endpoint, &reply);
        lb_etcd_reply_free(&reply);
        return;
    }
    if (!canceled && lb_etcd_http_token_was_refused(h, c->resent, &reply)) {
        c->resent = true;
        lb_etcd_http_forget_token(h, c->token_gen);
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
    lb_list_remove(&s->link);
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
        lb_list_insert_head(&h->sockets, &s->link);
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
    struct lb_list *pos = h->calls.next, *next;

    for (; pos != &h->calls; pos = next) {
        struct lb_etcd_call *c = lb_list_entry(pos, struct lb_etcd_call, link);

        next = pos->next;
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
                lb_etcd_say(reply.message, sizeof(reply.message), "cannot start the request");
                snprintf(endpoint, sizeof(endpoint), "%s", c->endpoint);
                call_unlink_free(c);
                login_done(h, endpoint, &reply);
                next = h->calls.next; /* the callbacks may have changed the list */
            } else {
                call_fail(c, -ENOMEM, "cannot start the request");
                next = h->calls.next;
            }
        }
    }
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
    lb_list_init(&h->calls);
    lb_list_init(&h->sockets);
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
    if (!rc && h->ca_file)
        rc = lb_file_check_readable(h->ca_file, "--etcd-ca", err);
    if (!rc && h->cert_file)
        rc = lb_file_check_readable(h->cert_file, "--etcd-cert", err);
    if (!rc && h->key_file)
        rc = lb_file_check_readable(h->key_file, "--etcd-key", err);
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
    struct lb_list *pos;

    if (!h)
        return;
    while ((pos = lb_list_first(&h->calls)))
        call_unlink_free(lb_list_entry(pos, struct lb_etcd_call, link));
    if (h->multi)
        curl_multi_cleanup(h->multi); /* may report sockets removed through socket_cb */
    while ((pos = lb_list_first(&h->sockets)))
        socket_free(h, lb_list_entry(pos, struct http_socket, link));
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
        lb_etcd_http_forget_token(h, h->token_gen);
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
    c = lb_etcd_call_new(h, req, NULL, false, &rc);
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
