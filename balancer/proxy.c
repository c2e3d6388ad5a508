/*
 * The pools' listeners and the accounting of the sessions they accept (see
 * proxy.h).  Binding, accept4() and the back-off after EMFILE and the like
 * are common/lb_listen.c's, shared with the admin API; what is the data
 * plane's own is the global cap: at --max-conns accepting pauses and
 * clients wait in the kernel's queue until a session finishes.
 */
#include "proxy.h"
#include "lb_error.h"
#include "lb_listen.h"
#include "lb_log.h"
#include "lb_util.h"
#include "session.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ACCEPTS_PER_WAKEUP 64
#define EMFILE_PAUSE_S     0.1

static void proxy_pause_accept(struct lb_proxy *proxy)
{
    if (proxy->accept_paused)
        return;
    proxy->accept_paused = true;
    for (size_t i = 0; i < proxy->n_listeners; i++)
        ev_io_stop(proxy->loop, &proxy->listeners[i].io);
}

static void proxy_resume_accept(struct lb_proxy *proxy)
{
    if (!proxy->accept_paused || !proxy->accept_enabled || proxy->shutting_down ||
        !proxy->listening)
        return;
    proxy->accept_paused = false;
    for (size_t i = 0; i < proxy->n_listeners; i++)
        if (proxy->listeners[i].fd >= 0)
            ev_io_start(proxy->loop, &proxy->listeners[i].io);
}

/* Back-off hooks (lb_listen.h): all listeners pause and resume together. */
static void proxy_backoff_pause(void *ctx)
{
    proxy_pause_accept(ctx);
}

static void proxy_backoff_resume(void *ctx)
{
    struct lb_proxy *proxy = ctx;

    if (proxy->active < proxy->max_conns)
        proxy_resume_accept(proxy);
}

static const struct lb_accept_backoff_ops proxy_backoff_ops = {
    .pause = proxy_backoff_pause,
    .resume = proxy_backoff_resume,
};

static void listener_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_listener *l = lb_container_of(w, struct lb_listener, io);
    struct lb_proxy *proxy = l->proxy;

    for (int i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd;

        if (proxy->active >= proxy->max_conns) {
            /* At the cap: leave clients in the kernel's backlog until one closes.
             * Under steady load this pauses at every close: log once a second. */
            if (!proxy->accept_paused) {
                proxy->cap_pauses++;
                if (ev_now(loop) - proxy->cap_logged_at >= 1.0) {
                    LB_WARN("proxy",
                            "msg=\"connection cap reached, accepting paused\" "
                            "max_conns=%llu pauses_since_last_line=%llu",
                            (unsigned long long)proxy->max_conns,
                            (unsigned long long)(proxy->cap_pauses - proxy->cap_pauses_logged));
                    proxy->cap_logged_at = ev_now(loop);
                    proxy->cap_pauses_logged = proxy->cap_pauses;
                }
            }
            proxy_pause_accept(proxy);
            return;
        }
        fd = lb_listen_accept(l->fd, &ss, &len);
        switch (lb_accept_backoff_check(&proxy->accept_backoff, fd)) {
        case LB_ACCEPT_GO:
            if (fd == -EAGAIN)
                return;
            break;
        case LB_ACCEPT_PAUSED_NEW:
            LB_ERROR("proxy",
                     "msg=\"cannot accept, pausing 100ms (raise the open-files "
                     "limit or lower --max-conns)\" pool=%s error=\"%s\"",
                     l->pool->name, strerror(-fd));
            /* fall through */
        case LB_ACCEPT_PAUSED:
            proxy->accept_errors++;
            return;
        case LB_ACCEPT_FAILED:
            proxy->accept_errors++;
            LB_ERROR("proxy", "msg=\"accept failed\" pool=%s error=\"%s\"", l->pool->name,
                     strerror(-fd));
            return;
        }
        lb_session_start(proxy, l->pool, fd, (struct sockaddr *)&ss, len);
    }
}

static int listener_open(struct lb_listener *l, const char *text, char **err)
{
    char what[LB_NAME_MAX + 320];
    const struct lb_listen_options o = {
        .what = what,
        .backlog = 4096,
        /* Accepted sockets inherit TCP_NODELAY from the listener: one system
         * call per listener instead of one per client. */
        .nodelay = true,
    };
    struct lb_listen_socket sock;
    int rc;

    snprintf(what, sizeof(what), "--pool %s=%s", l->pool->name, text);
    rc = lb_listen_open(text, &o, &sock, err);
    if (rc < 0)
        return rc;
    l->fd = sock.fd;
    ev_io_init(&l->io, listener_accept_cb, l->fd, EV_READ);
    return 0;
}

int lb_proxy_init(struct lb_proxy *proxy, struct ev_loop *loop, struct lb_registry *registry,
                  uint64_t max_conns, char **err)
{
    int rc = 0;

    memset(proxy, 0, sizeof(*proxy));
    proxy->loop = loop;
    proxy->registry = registry;
    proxy->max_conns = max_conns;
    lb_list_init(&proxy->live);
    lb_reaper_init(&proxy->reaper, loop);
    lb_accept_backoff_init(&proxy->accept_backoff, loop, EMFILE_PAUSE_S, &proxy_backoff_ops, proxy);
    proxy->listeners = calloc(registry->n_pools ? registry->n_pools : 1, sizeof(*proxy->listeners));
    if (!proxy->listeners) {
        lb_error_set(err, 0, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < registry->n_pools; i++) {
        struct lb_listener *l = &proxy->listeners[i];

        l->fd = -1;
        l->pool = &registry->pools[i];
        l->proxy = proxy;
        registry->pools[i].listener = l;
        rc = listener_open(l, registry->pools[i].listen, err);
        if (rc < 0)
            break;
        proxy->n_listeners++;
    }
    if (rc < 0) {
        for (size_t i = 0; i < proxy->n_listeners; i++)
            close(proxy->listeners[i].fd);
        proxy->n_listeners = 0;
        return rc;
    }
    for (size_t i = 0; i < proxy->n_listeners; i++)
        LB_INFO("proxy", "msg=\"listening\" pool=%s addr=%s", proxy->listeners[i].pool->name,
                proxy->listeners[i].pool->listen);
    proxy->listening = true;
    proxy->accept_paused = true;
    return 0;
}

void lb_proxy_enable_accept(struct lb_proxy *proxy)
{
    if (proxy->accept_enabled)
        return;
    proxy->accept_enabled = true;
    proxy_resume_accept(proxy);
}

void lb_proxy_stop_listening(struct lb_proxy *proxy)
{
    for (size_t i = 0; i < proxy->n_listeners; i++) {
        struct lb_listener *l = &proxy->listeners[i];

        if (l->fd < 0)
            continue;
        ev_io_stop(proxy->loop, &l->io);
        close(l->fd);
        l->fd = -1;
    }
    lb_accept_backoff_stop(&proxy->accept_backoff);
    proxy->listening = false;
}

void lb_proxy_session_finished(struct lb_proxy *proxy)
{
    proxy->active--;
    if (proxy->accept_paused && proxy->active < proxy->max_conns &&
        !lb_accept_backoff_is_pending(&proxy->accept_backoff))
        proxy_resume_accept(proxy);
    if (proxy->shutting_down && proxy->active == 0 && proxy->on_idle) {
        void (*cb)(struct lb_proxy *) = proxy->on_idle;

        proxy->on_idle = NULL;
        cb(proxy);
    }
}

void lb_proxy_shutdown(struct lb_proxy *proxy, void (*on_idle)(struct lb_proxy *proxy))
{
    /* Clients already in the kernel's accept queue completed their handshake:
     * closing the listener now would reset them.  Take them in first. */
    for (size_t i = 0; i < proxy->n_listeners; i++) {
        struct lb_listener *l = &proxy->listeners[i];
        uint64_t before;

        if (l->fd < 0 || !proxy->accept_enabled)
            continue;
        do {
            before = proxy->accepted;
            listener_accept_cb(proxy->loop, &l->io, EV_READ);
        } while (proxy->accepted - before == ACCEPTS_PER_WAKEUP);
    }
    proxy->shutting_down = true;
    lb_proxy_stop_listening(proxy);
    if (proxy->active == 0) {
        on_idle(proxy);
        return;
    }
    proxy->on_idle = on_idle;
}

void lb_proxy_close_all(struct lb_proxy *proxy)
{
    struct lb_list *first;

    while ((first = lb_list_first(&proxy->live)))
        lb_session_abort(lb_session_of_link(first));
}

void lb_proxy_destroy(struct lb_proxy *proxy)
{
    lb_proxy_close_all(proxy);
    lb_proxy_stop_listening(proxy);
    lb_reaper_destroy(&proxy->reaper);
    for (size_t i = 0; i < proxy->n_listeners; i++)
        proxy->listeners[i].pool->listener = NULL;
    free(proxy->listeners);
    proxy->listeners = NULL;
    proxy->n_listeners = 0;
}
