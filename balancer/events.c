/*
 * The event queue and the subscriber list (see events.h).  Delivery swaps
 * the queue out before calling anyone, so events queued by a subscriber go
 * into a fresh queue and follow in the same round.  An unsubscribed
 * subscription is marked dead (skipped from then on) and handed to the
 * reaper, which unlinks and frees it once no callback is on the stack.
 *
 * Joining an event to the one queued for the same backend needs that one
 * found fast: a listing of 10,000 backends queues 10,000 events in a
 * round.  An open-addressing table keyed by the backend's address, twice
 * the queue's capacity and rebuilt when the queue grows, holds each
 * queued backend's index.
 */
#include "events.h"
#include "backend.h"
#include "pool.h"

#include <errno.h>
#include <stdio.h>
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
    int64_t unix_ms;
    char detail[LB_EVENT_DETAIL_MAX];
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

/* Which of two types an event joining another keeps: the one that says more. */
static int type_rank(enum lb_event_type t)
{
    switch (t) {
    case LB_EVENT_BACKEND_REMOVED:
        return 5;
    case LB_EVENT_BACKEND_ADDED:
        return 4;
    case LB_EVENT_DRAINED:
        return 3;
    case LB_EVENT_HEALTH_CHANGED:
        return 2;
    default:
        return 1;
    }
}

static size_t slot_of(const struct lb_backend *b, size_t n_slots)
{
    uint64_t h = (uint64_t)(uintptr_t)b * 0x9e3779b97f4a7c15ull;

    return (size_t)(h >> 32) & (n_slots - 1);
}

/* The queue index of b's waiting event, or SIZE_MAX. */
static size_t find_queued(const struct lb_events *e, const struct lb_backend *b)
{
    size_t n_slots = 2 * e->cap;

    if (!e->by_backend)
        return SIZE_MAX;
    for (size_t i = slot_of(b, n_slots);; i = (i + 1) & (n_slots - 1)) {
        uint32_t v = e->by_backend[i];

        if (v == 0)
            return SIZE_MAX;
        if (e->queue[v - 1].backend == b)
            return v - 1;
    }
}

static void index_insert(struct lb_events *e, size_t q)
{
    size_t n_slots = 2 * e->cap, i = slot_of(e->queue[q].backend, n_slots);

    while (e->by_backend[i])
        i = (i + 1) & (n_slots - 1);
    e->by_backend[i] = (uint32_t)(q + 1);
}

/* Room for one more event (and its index slot).  Returns 0 or -ENOMEM. */
static int queue_grow(struct lb_events *e)
{
    size_t cap = e->cap ? e->cap * 2 : 16;
    struct lb_queued_event *v;
    uint32_t *index;

    if (cap > UINT32_MAX / 4)
        return -ENOMEM;
    index = calloc(2 * cap, sizeof(*index));
    if (!index)
        return -ENOMEM;
    v = realloc(e->queue, cap * sizeof(*v));
    if (!v) {
        free(index);
        return -ENOMEM;
    }
    free(e->by_backend);
    e->queue = v;
    e->cap = cap;
    e->by_backend = index;
    for (size_t q = 0; q < e->n; q++)
        if (e->queue[q].backend)
            index_insert(e, q);
    return 0;
}

/* Appends "; detail" to q's detail unless it says that already (cut at the maximum). */
static void detail_join(struct lb_queued_event *q, const char *detail)
{
    size_t len = strlen(q->detail);

    if (!detail[0] || strstr(q->detail, detail))
        return;
    if (!len) {
        snprintf(q->detail, sizeof(q->detail), "%s", detail);
        return;
    }
    snprintf(q->detail + len, sizeof(q->detail) - len, "; %s", detail);
}

int lb_events_queue(struct lb_events *e, enum lb_event_type type, struct lb_pool *pool,
                    struct lb_backend *b, const char *detail)
{
    size_t found = b ? find_queued(e, b) : SIZE_MAX;
    struct lb_queued_event *q;

    if (!detail)
        detail = "";
    if (found != SIZE_MAX) {
        q = &e->queue[found];
        /* A drain that completes in the round it began (no connection was
         * open) shows in the state; the detail of what began it is the one
         * to read. */
        if (type != LB_EVENT_DRAINED || !q->detail[0])
            detail_join(q, detail);
        if (type_rank(type) > type_rank(q->type))
            q->type = type;
        return 0;
    }
    if (e->n == e->cap && queue_grow(e) < 0) {
        e->dropped++;
        return -ENOMEM;
    }
    q = &e->queue[e->n];
    q->type = type;
    q->pool = pool;
    q->backend = b;
    snprintf(q->detail, sizeof(q->detail), "%s", detail);
    q->unix_ms = now_unix_ms();
    if (b) {
        lb_backend_ref(b);
        index_insert(e, e->n);
    }
    e->n++;
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
        free(e->by_backend);
        e->by_backend = NULL;
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

size_t lb_events_subscribers(const struct lb_events *e)
{
    const struct lb_list *pos;
    size_t n = 0;

    for (pos = e->subs.next; pos != &e->subs; pos = pos->next)
        n += !lb_list_entry(pos, const struct lb_subscription, link)->dead;
    return n;
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
    free(e->by_backend);
    e->by_backend = NULL;
    lb_reaper_run(e->reaper); /* the unsubscribed ones */
    while ((pos = lb_list_first(&e->subs))) {
        lb_list_remove(pos);
        free(lb_list_entry(pos, struct lb_subscription, link));
    }
}
