/*
 * Listening sockets (see lb_listen.h): bind with the options lbd's servers
 * share, accept without blocking, and one back-off policy for running out
 * of descriptors or memory.
 *
 * The back-off is a timer and a flag per owner, not per listener: when the
 * process is out of descriptors every listener is, so all of the owner's
 * watchers pause together, and the owner logs one line for the episode
 * however many pauses it takes.
 */
#include "lb_listen.h"
#include "lb_addr.h"
#include "lb_error.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>

static void set_flag(int fd, int level, int name)
{
    int one = 1;

    /* Best effort: each of these only tunes a socket that works without it. */
    (void)setsockopt(fd, level, name, &one, sizeof(one));
}

/* ---- sockets of the previous process ---- */

#define INHERITED_MAX 1024

static struct {
    int fd;
    struct sockaddr_storage addr;
    socklen_t len;
} inherited[INHERITED_MAX];
static size_t n_inherited;

int lb_listen_inherit(int fd)
{
    int type = 0, listening = 0;
    socklen_t tl = sizeof(type), ll = sizeof(listening);

    if (n_inherited == INHERITED_MAX) {
        close(fd);
        return -ENOSPC;
    }
    inherited[n_inherited].len = sizeof(inherited[n_inherited].addr);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_STREAM ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ll) < 0 || !listening ||
        getsockname(fd, (struct sockaddr *)&inherited[n_inherited].addr,
                    &inherited[n_inherited].len) < 0 ||
        (inherited[n_inherited].addr.ss_family != AF_INET &&
         inherited[n_inherited].addr.ss_family != AF_INET6)) {
        close(fd);
        return -EINVAL;
    }
    inherited[n_inherited++].fd = fd;
    return 0;
}

int lb_listen_take_inherited(const struct sockaddr *addr, socklen_t len)
{
    for (size_t i = 0; i < n_inherited; i++) {
        int fd = inherited[i].fd;

        if (inherited[i].len != len || memcmp(&inherited[i].addr, addr, len) != 0)
            continue;
        inherited[i] = inherited[--n_inherited];
        return fd;
    }
    return -1;
}

size_t lb_listen_close_inherited(void)
{
    size_t n = n_inherited;

    while (n_inherited)
        close(inherited[--n_inherited].fd);
    return n;
}

/* ---- binding ---- */

/*
 * Whether anything listens on s->addr already: a bind without SO_REUSEPORT
 * fails then, where one with it would join that socket's group and take a
 * share of its clients.  (SO_REUSEADDR: connections in TIME_WAIT do not count.)
 */
static int probe_in_use(const struct sockaddr_storage *addr, socklen_t len)
{
    int probe = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), rc = 0;

    if (probe < 0)
        return -errno;
    set_flag(probe, SOL_SOCKET, SO_REUSEADDR);
    if (addr->ss_family == AF_INET6)
        set_flag(probe, IPPROTO_IPV6, IPV6_V6ONLY);
    if (bind(probe, (const struct sockaddr *)addr, len) < 0 && errno == EADDRINUSE)
        rc = 1;
    close(probe);
    return rc;
}

static int check_unused(const struct lb_listen_socket *s, const char *what, char **err)
{
    int rc = probe_in_use(&s->addr, s->addr_len);

    if (rc < 0)
        return lb_error_set(err, rc, "%s: socket: %s", what, strerror(-rc));
    if (rc > 0)
        return lb_error_set(err, -EADDRINUSE,
                            "%s: cannot listen: Address already in use (another process "
                            "listens there; a second lbd needs ports of its own, and a new lbd "
                            "takes over a running one with --upgrade-socket)",
                            what);
    return 0;
}

bool lb_listen_addr_busy(const char *addr)
{
    struct sockaddr_storage ss;
    struct lb_hostport hp;
    socklen_t len;
    const char *why;

    if (!addr || lb_addr_parse(addr, true, &hp, &why) < 0 || hp.port == 0 ||
        lb_addr_to_sockaddr(&hp, &ss, &len) < 0)
        return false;
    return probe_in_use(&ss, len) > 0;
}

int lb_listen_open(const char *addr, const struct lb_listen_options *o,
                   struct lb_listen_socket *out, char **err)
{
    const char *what = o->what ? o->what : addr, *why;
    struct lb_hostport hp;
    int fd = -1, rc = 0;

    memset(out, 0, sizeof(*out));
    out->fd = -1;
    if (lb_addr_parse(addr, o->allow_port_zero, &hp, &why) < 0)
        return lb_error_set(err, -EINVAL, "%s: %s", what, why);
    if (lb_addr_to_sockaddr(&hp, &out->addr, &out->addr_len) < 0)
        return lb_error_set(err, -EINVAL, "%s: listen address must be an IP address, not a name",
                            what);
    if (hp.port != 0 &&
        (fd = lb_listen_take_inherited((struct sockaddr *)&out->addr, out->addr_len)) >= 0) {
        /* The previous process's socket: bound and listening, options set. */
        out->fd = fd;
        out->inherited = true;
        return 0;
    }
    if (o->reuse_port && o->exclusive && hp.port != 0) {
        rc = check_unused(out, what, err);
        if (rc)
            return rc;
    }
    fd = socket(out->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return lb_error_set(err, -errno, "%s: socket: %s", what, strerror(errno));
    set_flag(fd, SOL_SOCKET, SO_REUSEADDR);
    if (o->reuse_port)
        set_flag(fd, SOL_SOCKET, SO_REUSEPORT);
    if (out->addr.ss_family == AF_INET6)
        set_flag(fd, IPPROTO_IPV6, IPV6_V6ONLY);
    if (o->nodelay)
        set_flag(fd, IPPROTO_TCP, TCP_NODELAY);
    if (bind(fd, (struct sockaddr *)&out->addr, out->addr_len) < 0 ||
        (!o->bind_only && listen(fd, o->backlog > 0 ? o->backlog : SOMAXCONN) < 0)) {
        int e = errno;

        rc = lb_error_set(err, -e, "%s: cannot listen: %s%s", what, strerror(e),
                          e == EADDRINUSE ? " (another process has this port)" : "");
        goto out;
    }
    out->addr_len = sizeof(out->addr);
    if (getsockname(fd, (struct sockaddr *)&out->addr, &out->addr_len) < 0) {
        rc = lb_error_set(err, -errno, "%s: cannot read the bound address: %s", what,
                          strerror(errno));
        goto out;
    }
    out->fd = fd;
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

int lb_listen_start(int fd, int backlog)
{
    return listen(fd, backlog > 0 ? backlog : SOMAXCONN) < 0 ? -errno : 0;
}

void lb_listen_close(struct lb_listen_socket *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

int lb_listen_port(const struct lb_listen_socket *s)
{
    if (s->addr.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&s->addr)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&s->addr)->sin_port);
}

bool lb_listen_is_loopback(const struct lb_listen_socket *s)
{
    if (s->addr.ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&s->addr)->sin6_addr);
    return (ntohl(((const struct sockaddr_in *)&s->addr)->sin_addr.s_addr) >> 24) == 127;
}

int lb_listen_accept(int fd, struct sockaddr_storage *peer, socklen_t *len)
{
    for (;;) {
        int c;

        *len = sizeof(*peer);
        c = accept4(fd, (struct sockaddr *)peer, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c >= 0)
            return c;
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
            continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

bool lb_listen_error_is_resource(int err)
{
    return err == -EMFILE || err == -ENFILE || err == -ENOBUFS || err == -ENOMEM;
}

/* ---- back-off ---- */

static void backoff_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_accept_backoff *b = w->data;

    b->ops->resume(b->ctx);
}

void lb_accept_backoff_init(struct lb_accept_backoff *b, struct ev_loop *loop, double delay_s,
                            const struct lb_accept_backoff_ops *ops, void *ctx)
{
    memset(b, 0, sizeof(*b));
    b->loop = loop;
    b->delay_s = delay_s;
    b->ops = ops;
    b->ctx = ctx;
    ev_timer_init(&b->timer, backoff_timer_cb, delay_s, 0.);
    b->timer.data = b;
}

enum lb_accept_verdict lb_accept_backoff_check(struct lb_accept_backoff *b, int rc)
{
    bool first;

    if (rc >= 0 || rc == -EAGAIN) {
        b->in_episode = false;
        return LB_ACCEPT_GO;
    }
    if (!lb_listen_error_is_resource(rc))
        return LB_ACCEPT_FAILED;
    b->ops->pause(b->ctx);
    first = !b->in_episode;
    b->in_episode = true;
    ev_timer_stop(b->loop, &b->timer);
    ev_timer_set(&b->timer, b->delay_s, 0.);
    ev_timer_start(b->loop, &b->timer);
    return first ? LB_ACCEPT_PAUSED_NEW : LB_ACCEPT_PAUSED;
}

bool lb_accept_backoff_is_pending(const struct lb_accept_backoff *b)
{
    return ev_is_active(&b->timer);
}

void lb_accept_backoff_stop(struct lb_accept_backoff *b)
{
    ev_timer_stop(b->loop, &b->timer);
}
