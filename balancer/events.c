/*
 * The event queue and the subscriber list (see events.h).  Delivery swaps
 * the queue out before calling anyone, so events queued by a subscriber go
 * into a fresh queue and follow in the same round.  An unsubscribed
 * subscription is marked dead (skipped from then on) and handed to the
 * reaper, which unlinks and frees it once no callback is on the stack.
 */
#include "events.h"
#include "backend.h"
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct lb_subscription {
    struct lb_list link; /* events->subs */
    struct lb_reap reap;
    lb_event_cb cb;
    void *ud;
    bool dead; /* unsubscribed: no more events, freed by the reaper */
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

void lb_events_init(struct lb_events *e, struct lb_reaper *reaper)
{
    memset(e, 0, sizeof(*e));
    lb_list_init(&e->subs);
    e->reaper = reaper;
}

bool lb_events_wanted(const struct lb_events *e)
{
    struct lb_list *pos;

    lb_list_for_each(
        pos, &e->subs) if (!lb_list_entry(pos, struct lb_subscription, link)->dead) return true;
    return false;
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
    struct lb_list *pos;

    /* Subscriptions are freed by the reaper only, so each stays valid here. */
    lb_list_for_each(pos, &e->subs)
    {
        struct lb_subscription *s = lb_list_entry(pos, struct lb_subscription, link);

        if (!s->dead)
            s->cb(s->ud, &ev);
    }
}

void lb_events_deliver(struct lb_events *e)
{
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
}

struct lb_subscription *lb_events_subscribe(struct lb_events *e, lb_event_cb cb, void *ud)
{
    struct lb_subscription *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->cb = cb;
    s->ud = ud;
    lb_list_insert_tail(&e->subs, &s->link);
    return s;
}

static void subscription_free(struct lb_reap *r)
{
    struct lb_subscription *s = lb_container_of(r, struct lb_subscription, reap);

    lb_list_remove(&s->link);
    free(s);
}

void lb_events_unsubscribe(struct lb_events *e, struct lb_subscription *s)
{
    if (!s || s->dead)
        return;
    s->dead = true;
    lb_reaper_defer(e->reaper, &s->reap, subscription_free);
}

void lb_events_destroy(struct lb_events *e)
{
    struct lb_list *pos;

    for (size_t i = 0; i < e->n; i++)
        if (e->queue[i].backend)
            lb_backend_unref(e->queue[i].backend);
    free(e->queue);
    e->queue = NULL;
    e->n = e->cap = 0;
    lb_reaper_run(e->reaper); /* the unsubscribed ones */
    while ((pos = lb_list_first(&e->subs))) {
        lb_list_remove(pos);
        free(lb_list_entry(pos, struct lb_subscription, link));
    }
}
