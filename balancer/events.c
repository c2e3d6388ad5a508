/*
 * The event queue and the subscriber list (see events.h).  Delivery swaps
 * the queue out before calling anyone, so events queued by a subscriber go
 * into a fresh queue and follow in the same round; subscriptions removed
 * while subscribers are being called are only marked, and freed once the
 * outermost delivery is done.
 */
#include "events.h"
#include "backend.h"
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

struct lb_subscription {
    struct lb_subscription *next;
    lb_event_cb cb;
    void *ud;
    bool dead; /* unsubscribed while notifying; freed afterwards */
};

struct lb_queued_event {
    enum lb_event_type type;
    struct lb_pool *pool;
    struct lb_backend *backend; /* one reference; NULL for pool events */
    const char *detail;         /* static */
    int64_t unix_ms;
};

static int64_t now_unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool lb_events_wanted(const struct lb_events *e)
{
    return e->subs != NULL;
}

int lb_events_queue(struct lb_events *e, enum lb_event_type type, struct lb_pool *pool,
                    struct lb_backend *b, const char *detail)
{
    struct lb_queued_event *q;

    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;
        struct lb_queued_event *v = realloc(e->queue, cap * sizeof(*v));

        if (!v) {
            e->dropped++;
            return -ENOMEM;
        }
        e->queue = v;
        e->cap = cap;
    }
    q = &e->queue[e->n++];
    q->type = type;
    q->pool = pool;
    q->backend = b;
    q->detail = detail ? detail : "";
    q->unix_ms = now_unix_ms();
    if (b)
        lb_backend_ref(b);
    return 0;
}

static void deliver_one(struct lb_events *e, const struct lb_queued_event *q)
{
    struct lb_backend_info info;
    struct lb_event ev = {
        .type = q->type,
        .pool = q->pool->name,
        .id = q->backend ? q->backend->id : NULL,
        .backend = NULL,
        .unix_ms = q->unix_ms,
        .detail = q->detail,
    };

    if (q->backend) {
        lb_backend_info(q->backend, &info);
        ev.backend = &info;
    }
    e->notifying++;
    for (struct lb_subscription *s = e->subs; s; s = s->next)
        if (!s->dead)
            s->cb(s->ud, &ev);
    e->notifying--;
}

void lb_events_deliver(struct lb_events *e)
{
    struct lb_subscription **pp;

    while (e->n) {
        struct lb_queued_event *batch = e->queue;
        size_t n = e->n;

        e->queue = NULL;
        e->n = e->cap = 0;
        for (size_t i = 0; i < n; i++) {
            deliver_one(e, &batch[i]);
            if (batch[i].backend)
                lb_backend_unref(batch[i].backend);
        }
        free(batch);
    }
    if (e->notifying)
        return;
    for (pp = &e->subs; *pp;) {
        if ((*pp)->dead) {
            struct lb_subscription *dead = *pp;

            *pp = dead->next;
            free(dead);
        } else {
            pp = &(*pp)->next;
        }
    }
}

struct lb_subscription *lb_events_subscribe(struct lb_events *e, lb_event_cb cb, void *ud)
{
    struct lb_subscription *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->cb = cb;
    s->ud = ud;
    s->next = e->subs;
    e->subs = s;
    return s;
}

void lb_events_unsubscribe(struct lb_events *e, struct lb_subscription *s)
{
    struct lb_subscription **pp;

    if (!s)
        return;
    if (e->notifying) {
        s->dead = true;
        return;
    }
    for (pp = &e->subs; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            free(s);
            return;
        }
    }
}

void lb_events_destroy(struct lb_events *e)
{
    for (size_t i = 0; i < e->n; i++)
        if (e->queue[i].backend)
            lb_backend_unref(e->queue[i].backend);
    free(e->queue);
    e->queue = NULL;
    e->n = e->cap = 0;
    while (e->subs) {
        struct lb_subscription *s = e->subs;

        e->subs = s->next;
        free(s);
    }
}
