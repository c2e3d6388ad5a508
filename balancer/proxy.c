#include "proxy.h"
#include "lb_addr.h"
#include "lb_error.h"
#include "lb_log.h"
#include "lb_util.h"
#include "session.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

static void proxy_accept_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_proxy *proxy = lb_container_of(w, struct lb_proxy, accept_retry);

    if (proxy->active < proxy->max_conns)
        proxy_resume_accept(proxy);
}

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
        fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            proxy->accept_errors++;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                LB_ERROR("proxy",
                         "msg=\"cannot accept, pausing 100ms (raise the open-files "
                         "limit or lower --max-conns)\" pool=%s error=\"%s\"",
                         l->pool->name, strerror(errno));
                proxy_pause_accept(proxy);
                ev_timer_set(&proxy->accept_retry, EMFILE_PAUSE_S, 0.);
                ev_timer_start(loop, &proxy->accept_retry);
                return;
            }
            LB_ERROR("proxy", "msg=\"accept failed\" pool=%s error=\"%s\"", l->pool->name,
                     strerror(errno));
            return;
        }
        lb_session_start(proxy, l->pool, fd, (struct sockaddr *)&ss, len);
    }
}

/* Frees sessions that finished during the last loop iteration. */
static void proxy_reaper_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    struct lb_proxy *proxy = lb_container_of(w, struct lb_proxy, reaper);

    while (proxy->graveyard) {
        struct lb_session *s = proxy->graveyard;

        proxy->graveyard = lb_session_next(s);
        lb_session_free(s);
    }
}

static int listener_open(struct lb_listener *l, const char *text, char **err)
{
    struct lb_hostport hp;
    struct sockaddr_storage ss;
    socklen_t len;
    const char *why;
    int one = 1, fd;

    if (lb_addr_parse(text, false, &hp, &why) < 0) {
        lb_error_set(err, 0, "--pool %s=%s: %s", l->pool->name, text, why);
        return -EINVAL;
    }
    if (lb_addr_to_sockaddr(&hp, &ss, &len) < 0) {
        lb_error_set(err, 0, "--pool %s=%s: listen address must be an IP address, not a name",
                     l->pool->name, text);
        return -EINVAL;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        lb_error_set(err, 0, "--pool %s=%s: socket: %s", l->pool->name, text, strerror(errno));
        return -errno;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Accepted sockets inherit TCP_NODELAY from the listener: one system
     * call per listener instead of one per client. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 4096) < 0) {
        int e = errno;

        lb_error_set(err, 0, "--pool %s=%s: cannot listen: %s%s", l->pool->name, text, strerror(e),
                     e == EADDRINUSE ? " (another process has this port)" : "");
        close(fd);
        return -e;
    }
    l->fd = fd;
    ev_io_init(&l->io, listener_accept_cb, fd, EV_READ);
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
    ev_check_init(&proxy->reaper, proxy_reaper_cb);
    ev_check_start(loop, &proxy->reaper);
    ev_init(&proxy->accept_retry, proxy_accept_retry_cb);
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
    ev_timer_stop(proxy->loop, &proxy->accept_retry);
    proxy->listening = false;
}

void lb_proxy_session_finished(struct lb_proxy *proxy)
{
    proxy->active--;
    if (proxy->accept_paused && proxy->active < proxy->max_conns &&
        !ev_is_active(&proxy->accept_retry))
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
    while (proxy->live)
        lb_session_abort(proxy->live);
}

void lb_proxy_destroy(struct lb_proxy *proxy)
{
    lb_proxy_close_all(proxy);
    lb_proxy_stop_listening(proxy);
    ev_check_stop(proxy->loop, &proxy->reaper);
    proxy_reaper_cb(proxy->loop, &proxy->reaper, 0);
    for (size_t i = 0; i < proxy->n_listeners; i++)
        proxy->listeners[i].pool->listener = NULL;
    free(proxy->listeners);
    proxy->listeners = NULL;
    proxy->n_listeners = 0;
}
