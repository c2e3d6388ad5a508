/*
 * Active checks and passive ejection (design in health.h).  Every watcher
 * is the backend's own and initialised once; the functions here only
 * re-arm them, and refuse to on a retired backend.
 */
#include "health.h"
#include "backend.h"
#include "lb_log.h"
#include "lb_util.h"
#include "pool.h"
#include "registry.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define EJECT_BASE_S 5.0
#define EJECT_MAX_S  300.0

static double jitter(double seconds, double spread)
{
    return seconds * (1.0 - spread + 2.0 * spread * ((double)random() / RAND_MAX));
}

static const struct lb_pool_policy *policy_of(const struct lb_backend *b)
{
    return &b->pool->policy;
}

static void check_close(struct lb_backend *b)
{
    struct lb_health_check *c = &b->check;

    if (c->fd >= 0) {
        /* Close with a reset, as HAProxy does: 10,000 backends checked every
         * second would otherwise leave 600,000 sockets in TIME_WAIT here. */
        struct linger abort_now = {.l_onoff = 1, .l_linger = 0};

        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &abort_now, sizeof(abort_now));
        ev_io_stop(b->loop, &c->io);
        close(c->fd);
        c->fd = -1;
    }
}

/* Re-arms the check timer; never on a retired backend. */
static void schedule_next(struct lb_backend *b, double after)
{
    struct lb_health_check *c = &b->check;

    ev_timer_stop(b->loop, &c->timer);
    if (b->removed)
        return;
    ev_timer_set(&c->timer, after, 0.);
    ev_timer_start(b->loop, &c->timer);
}

static void set_health(struct lb_backend *b, enum lb_health_state state, const char *why)
{
    enum lb_health_state old = b->health;
    char detail[160];
    int n;

    if (old == state)
        return;
    b->health = state;
    if (state == LB_HEALTH_UP && old == LB_HEALTH_DOWN)
        b->ramp_start = ev_now(b->loop);
    LB_INFO("health", "msg=\"backend is %s\" pool=%s backend=%s addr=%s reason=\"%s\"",
            state == LB_HEALTH_UP ? "up" : "down", b->pool->name, b->id, b->spec.addr, why);
    /* "health down: 3 failed checks (Connection refused)" */
    n = state == LB_HEALTH_UP ? b->check.successes : b->check.failures;
    snprintf(detail, sizeof(detail), "health %s: %d %s check%s (%s)",
             state == LB_HEALTH_UP ? "up" : "down", n, state == LB_HEALTH_UP ? "passed" : "failed",
             n == 1 ? "" : "s", why);
    lb_registry_backend_changed(b->pool->registry, b, LB_EVENT_HEALTH_CHANGED, detail);
}

static void unject(struct lb_backend *b, const char *why)
{
    char detail[96];

    if (!b->ejected)
        return;
    b->ejected = false;
    ev_timer_stop(b->loop, &b->check.eject_timer);
    b->ramp_start = ev_now(b->loop);
    LB_INFO("health", "msg=\"backend back from ejection\" pool=%s backend=%s reason=\"%s\"",
            b->pool->name, b->id, why);
    snprintf(detail, sizeof(detail), "back from ejection: %s", why);
    lb_registry_backend_changed(b->pool->registry, b, LB_EVENT_HEALTH_CHANGED, detail);
}

static void check_done(struct lb_backend *b, bool ok, const char *why)
{
    struct lb_health_check *c = &b->check;
    const struct lb_pool_policy *p = policy_of(b);

    check_close(b);
    if (ok) {
        c->failures = 0;
        c->successes++;
        if (b->health == LB_HEALTH_UNKNOWN || c->successes >= p->health.rise)
            set_health(b, LB_HEALTH_UP, why);
        if (b->ejected) {
            c->ejections = 0;
            unject(b, "health check passed");
        }
    } else {
        c->successes = 0;
        c->failures++;
        LB_DEBUG("health", "msg=\"check failed\" pool=%s backend=%s reason=\"%s\" failures=%d",
                 b->pool->name, b->id, why, c->failures);
        if (b->health == LB_HEALTH_UNKNOWN || c->failures >= p->health.fall)
            set_health(b, LB_HEALTH_DOWN, why);
    }
    schedule_next(b, jitter((double)p->health.interval_ms / 1000., 0.1));
}

static void check_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_health_check *c = lb_container_of(w, struct lb_health_check, io);
    struct lb_backend *b = lb_container_of(c, struct lb_backend, check);
    const struct lb_pool_policy *p = policy_of(b);
    char request[LB_HEALTH_PATH_MAX + LB_ADDR_MAX + 128];
    int len, err = 0;
    socklen_t elen = sizeof(err);

    if (c->sent == 0 && c->got == 0 && (revents & EV_WRITE)) {
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
            err = errno;
        if (err) {
            check_done(b, false, strerror(err));
            return;
        }
        if (p->health.type == LB_CHECK_TCP) {
            check_done(b, true, "connect succeeded");
            return;
        }
    }
    len = snprintf(request, sizeof(request),
                   "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: lbd-health-check\r\n"
                   "Connection: close\r\n\r\n",
                   p->health.path, b->spec.addr);
    if ((size_t)len >= sizeof(request))
        len = (int)sizeof(request) - 1;
    if (c->sent < (size_t)len) {
        ssize_t n = send(c->fd, request + c->sent, (size_t)len - c->sent, MSG_NOSIGNAL);

        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            check_done(b, false, strerror(errno));
            return;
        }
        if (n > 0)
            c->sent += (size_t)n;
        if (c->sent == (size_t)len) {
            ev_io_stop(loop, &c->io);
            ev_io_set(&c->io, c->fd, EV_READ);
            ev_io_start(loop, &c->io);
        }
        return;
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->reply + c->got, sizeof(c->reply) - 1 - c->got, 0);
        char *eol;

        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return;
            check_done(b, false, strerror(errno));
            return;
        }
        c->got += (size_t)n;
        c->reply[c->got] = '\0';
        eol = strstr(c->reply, "\r\n");
        if (eol || n == 0 || c->got == sizeof(c->reply) - 1) {
            int status = 0;

            if (strncmp(c->reply, "HTTP/1.", 7) == 0 && c->got >= 12)
                status = atoi(c->reply + 9);
            if (status >= 200 && status < 400) {
                check_done(b, true, "http check passed");
            } else {
                char why[80];

                if (status)
                    snprintf(why, sizeof(why), "http status %d", status);
                else
                    snprintf(why, sizeof(why), "no HTTP status line in the reply");
                check_done(b, false, why);
            }
            return;
        }
    }
}

static void check_begin(struct lb_backend *b)
{
    struct lb_health_check *c = &b->check;
    const struct lb_pool_policy *p = policy_of(b);
    int fd;

    c->sent = c->got = 0;
    c->reply[0] = '\0';
    if (!b->resolved || b->refused) {
        schedule_next(b, (double)p->health.interval_ms / 1000.);
        return;
    }
    fd = socket(b->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        /* Out of descriptors is our problem, not the backend's: try later. */
        LB_WARN("health", "msg=\"cannot create check socket\" pool=%s error=\"%s\"", b->pool->name,
                strerror(errno));
        schedule_next(b, (double)p->health.interval_ms / 1000.);
        return;
    }
    c->fd = fd;
    if (connect(fd, (struct sockaddr *)&b->sa, b->sa_len) < 0 && errno != EINPROGRESS) {
        check_done(b, false, strerror(errno));
        return;
    }
    ev_io_set(&c->io, fd, EV_WRITE);
    ev_io_start(b->loop, &c->io);
    schedule_next(b, (double)p->health.timeout_ms / 1000.);
}

static void check_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_health_check *c = lb_container_of(w, struct lb_health_check, timer);
    struct lb_backend *b = lb_container_of(c, struct lb_backend, check);

    if (c->fd >= 0)
        check_done(b, false, "check timed out");
    else
        check_begin(b);
}

static void eject_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_health_check *c = lb_container_of(w, struct lb_health_check, eject_timer);
    struct lb_backend *b = lb_container_of(c, struct lb_backend, check);

    unject(b, "ejection period over");
}

void lb_health_init(struct lb_backend *b)
{
    struct lb_health_check *c = &b->check;

    c->fd = -1;
    ev_init(&c->timer, check_timer_cb);
    ev_init(&c->io, check_io_cb);
    ev_init(&c->eject_timer, eject_timer_cb);
    /* In a loop iteration with both, client traffic goes before checks:
     * 10,000 checks a second must not queue in front of a connection. */
    ev_set_priority(&c->timer, EV_MINPRI);
    ev_set_priority(&c->io, EV_MINPRI);
}

void lb_health_start(struct lb_backend *b)
{
    const struct lb_pool_policy *p = policy_of(b);

    if (!b->loop || b->removed)
        return;
    if (p->health.type == LB_CHECK_NONE || p->health.interval_ms <= 0)
        return;
    /* First check at a random point of the first interval: spreads the load. */
    schedule_next(b, jitter((double)p->health.interval_ms / 2000., 1.0));
}

void lb_health_export(const struct lb_backend *b, uint8_t *health, uint8_t *ejections,
                      uint32_t *ejected_ms)
{
    double left = 0.;

    *health = (uint8_t)b->health;
    *ejections = (uint8_t)(b->check.ejections < 64 ? b->check.ejections : 64);
    if (b->ejected && b->loop && ev_is_active(&b->check.eject_timer))
        left = ev_timer_remaining(b->loop, (ev_timer *)&b->check.eject_timer);
    /* at least 1 ms while ejected: 0 says "not ejected" */
    *ejected_ms = !b->ejected    ? 0
                  : left < 0.001 ? 1
                  : left > 3600. ? 3600000u
                                 : (uint32_t)(left * 1000.);
}

void lb_health_adopt(struct lb_backend *b, uint8_t health, unsigned ejections, uint32_t ejected_ms)
{
    struct lb_health_check *c = &b->check;
    char detail[96];

    if (!b->loop || b->removed)
        return;
    if (c->ejections < ejections)
        c->ejections = ejections;
    if (b->health == LB_HEALTH_UNKNOWN && (health == LB_HEALTH_UP || health == LB_HEALTH_DOWN) &&
        policy_of(b)->health.type != LB_CHECK_NONE) {
        b->health = (enum lb_health_state)health;
        snprintf(detail, sizeof(detail), "health %s, as the previous lbd checked it",
                 health == LB_HEALTH_UP ? "up" : "down");
        lb_registry_backend_changed(b->pool->registry, b, LB_EVENT_HEALTH_CHANGED, detail);
    }
    if (ejected_ms && !b->ejected) {
        b->ejected = true;
        ev_timer_stop(b->loop, &c->eject_timer);
        ev_timer_set(&c->eject_timer, (double)ejected_ms / 1000., 0.);
        ev_timer_start(b->loop, &c->eject_timer);
        snprintf(detail, sizeof(detail), "ejected, as the previous lbd had it (%.1fs left)",
                 (double)ejected_ms / 1000.);
        lb_registry_backend_changed(b->pool->registry, b, LB_EVENT_HEALTH_CHANGED, detail);
    }
}

void lb_health_stop(struct lb_backend *b)
{
    struct lb_health_check *c = &b->check;

    if (!b->loop)
        return;
    check_close(b);
    ev_timer_stop(b->loop, &c->timer);
    ev_timer_stop(b->loop, &c->eject_timer);
}

void lb_health_restart(struct lb_backend *b)
{
    struct lb_health_check *c = &b->check;

    if (!b->loop || b->removed)
        return;
    check_close(b);
    ev_timer_stop(b->loop, &c->timer);
    c->successes = c->failures = 0;
    if (policy_of(b)->health.type == LB_CHECK_NONE && b->health != LB_HEALTH_UNKNOWN) {
        /* Without checks, nothing would ever bring a down backend back. */
        b->health = LB_HEALTH_UNKNOWN;
        lb_registry_backend_changed(b->pool->registry, b, LB_EVENT_HEALTH_CHANGED,
                                    "health checks off");
    }
    lb_health_start(b);
}

bool lb_health_connect_result(struct lb_backend *b, bool ok, int fall)
{
    int threshold = fall > 0 ? fall : 3;

    if (ok) {
        /* Read first: a busy backend's line is not written on every connect. */
        if (atomic_load_explicit(&b->connect_failures_run, memory_order_relaxed))
            atomic_store_explicit(&b->connect_failures_run, 0, memory_order_relaxed);
        return false;
    }
    /* Every `threshold` failures in a row ask once; the control loop ignores
     * the asks of a backend already ejected or retired. */
    return (atomic_fetch_add_explicit(&b->connect_failures_run, 1, memory_order_relaxed) + 1) %
               threshold ==
           0;
}

void lb_health_note_connect(struct lb_backend *b, bool ok)
{
    if (lb_health_connect_result(b, ok, policy_of(b)->health.fall))
        lb_health_eject(b);
}

void lb_health_eject(struct lb_backend *b)
{
    struct lb_health_check *c = &b->check;
    int threshold = policy_of(b)->health.fall > 0 ? policy_of(b)->health.fall : 3;
    char detail[96];
    double period;

    atomic_store_explicit(&b->connect_failures_run, 0, memory_order_relaxed);
    /* A retired backend is gone: nothing to eject, no timer may start on it. */
    if (!b->loop || b->removed || b->ejected)
        return;
    period = EJECT_BASE_S * (double)(1u << (c->ejections < 6 ? c->ejections : 6));
    if (period > EJECT_MAX_S)
        period = EJECT_MAX_S;
    c->ejections++;
    b->ejected = true;
    ev_timer_stop(b->loop, &c->eject_timer);
    ev_timer_set(&c->eject_timer, period, 0.);
    ev_timer_start(b->loop, &c->eject_timer);
    LB_WARN("health",
            "msg=\"backend ejected after consecutive connect failures\" pool=%s "
            "backend=%s addr=%s failures=%d seconds=%.0f",
            b->pool->name, b->id, b->spec.addr, threshold, period);
    snprintf(detail, sizeof(detail), "ejected: %d connect failures in a row (for %.0fs)", threshold,
             period);
    lb_registry_backend_changed(b->pool->registry, b, LB_EVENT_HEALTH_CHANGED, detail);
}
