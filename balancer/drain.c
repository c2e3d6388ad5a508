/*
 * Drain deadlines (design in drain.h): one timer per backend, armed when a
 * drained backend's pool has a drain_timeout, stopped on undrain or retire.
 */
#include "drain.h"
#include "backend.h"
#include "lb_log.h"
#include "lb_util.h"
#include "pool.h"
#include "proxy.h"
#include "registry.h"

#define WINDOW_MIN_S 1.0
#define WINDOW_MAX_S 60.0

static double drain_window(const struct lb_backend *b)
{
    double w = (double)b->pool->policy.drain_timeout_ms / 10000.;

    return w < WINDOW_MIN_S ? WINDOW_MIN_S : w > WINDOW_MAX_S ? WINDOW_MAX_S : w;
}

/*
 * Phase 1: the timer fires once at drain_timeout.  Phase 2: it repeats
 * every window / (connections left at phase 1), closing one each time.
 */
static void drain_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_backend *b = lb_container_of(w, struct lb_backend, drain_timer);
    uint64_t active = atomic_load(&b->active);
    struct lb_proxy *proxy = b->pool->registry ? b->pool->registry->proxy : NULL;

    if (!active || !proxy) {
        ev_timer_stop(loop, w);
        return;
    }
    if (w->repeat == 0.) {
        double step = drain_window(b) / (double)active;

        LB_INFO("drain",
                "msg=\"drain timeout passed, closing remaining connections\" pool=%s "
                "backend=%s connections=%llu window_s=%.1f",
                b->pool->name, b->id, (unsigned long long)active, drain_window(b));
        w->repeat = step > 0.001 ? step : 0.001;
        ev_timer_again(loop, w);
    }
    /* The worker holding most of b's sessions closes its oldest; the timer
     * stops at the first tick that finds none left. */
    lb_proxy_close_oldest(proxy, b);
}

void lb_drain_init(struct lb_backend *b)
{
    ev_init(&b->drain_timer, drain_timer_cb);
}

void lb_drain_update(struct lb_backend *b)
{
    bool want = b->drain && !b->removed && b->pool->policy.drain_timeout_ms > 0;

    if (!b->loop)
        return;
    if (!want) {
        ev_timer_stop(b->loop, &b->drain_timer);
        return;
    }
    if (ev_is_active(&b->drain_timer))
        return;
    ev_timer_set(&b->drain_timer, (double)b->pool->policy.drain_timeout_ms / 1000., 0.);
    ev_timer_start(b->loop, &b->drain_timer);
}

uint32_t lb_drain_left_ms(const struct lb_backend *b)
{
    double left;

    if (!b->loop || !ev_is_active(&b->drain_timer))
        return 0;
    if (b->drain_timer.repeat != 0.)
        return 1; /* closing already */
    left = ev_timer_remaining(b->loop, (ev_timer *)&b->drain_timer) * 1000.;
    return left < 1. ? 1 : left > 86400000. ? 86400000u : (uint32_t)left;
}

void lb_drain_adopt(struct lb_backend *b, uint32_t ms)
{
    if (!ms || !b->loop || !ev_is_active(&b->drain_timer) || b->drain_timer.repeat != 0. ||
        ev_timer_remaining(b->loop, &b->drain_timer) * 1000. <= ms)
        return;
    ev_timer_stop(b->loop, &b->drain_timer);
    ev_timer_set(&b->drain_timer, (double)ms / 1000., 0.);
    ev_timer_start(b->loop, &b->drain_timer);
    LB_INFO("drain",
            "msg=\"drain deadline carried over from the previous process\" pool=%s backend=%s "
            "left_ms=%u",
            b->pool->name, b->id, ms);
}

void lb_drain_stop(struct lb_backend *b)
{
    if (b->loop)
        ev_timer_stop(b->loop, &b->drain_timer);
}
