/*
 * Pool events for subscribers (the admin API's WatchEvents, drain waits):
 * a queue and the list of subscribers.
 *
 * An event is queued when something changes and delivered by the registry
 * right after the publish that makes it true, so a subscriber reading the
 * backend's state from the event sees the state the event announces.  A
 * queued event holds a reference to its backend.  Subscribers may
 * unsubscribe, and queue new events, from inside their callback; new events
 * are delivered in the same round, in order, and a subscription is freed
 * by the reaper, never while the list is being walked.
 *
 * One event per backend per publish: what is queued for a backend that
 * already has an event waiting joins that event (the stronger type wins,
 * the details are joined with "; "), since both would carry the same state
 * anyway -- a drain that finds no connection open is one DRAINED event,
 * not a CHANGED and a DRAINED with the same state.
 */
#ifndef LB_EVENTS_H
#define LB_EVENTS_H

#include "control.h"
#include "lb_list.h"
#include "lb_reaper.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lb_pool;
struct lb_backend;
struct lb_queued_event;

#define LB_EVENT_DETAIL_MAX 256 /* an event's detail text, with the NUL; longer is cut */

struct lb_events {
    struct lb_list subs;      /* struct lb_subscription */
    struct lb_reaper *reaper; /* frees what unsubscribed, after the current callbacks */
    struct lb_queued_event *queue;
    size_t n, cap;
    uint32_t *by_backend; /* open-addressing index of queue (entry + 1, 0 = free); 2 * cap slots */
    uint64_t dropped;     /* not queued for lack of memory */
};

/* An empty queue, no subscriber; `reaper` frees subscriptions (it outlives e). */
void lb_events_init(struct lb_events *e, struct lb_reaper *reaper);

/* Frees the queue (dropping its references) and every subscription. */
void lb_events_destroy(struct lb_events *e);

/* True when someone listens: without subscribers nothing is queued. */
bool lb_events_wanted(const struct lb_events *e);

/*
 * Queues an event, or joins it to the one already queued for `b` (see the
 * top of this file).  `detail` is copied (NULL: none); `b` may be NULL for
 * pool events, which are never joined.  Returns 0, or -ENOMEM after
 * counting it in `dropped`.
 */
int lb_events_queue(struct lb_events *e, enum lb_event_type type, struct lb_pool *pool,
                    struct lb_backend *b, const char *detail);

/* Delivers every queued event to every subscriber, in order. */
void lb_events_deliver(struct lb_events *e);

/* Adds a subscriber; NULL when out of memory. */
struct lb_subscription *lb_events_subscribe(struct lb_events *e, lb_event_cb cb, void *ud);
/* Removes one: it gets no more events, and is freed by the reaper (so this
 * is safe from inside any subscriber's callback).  NULL is a no-op. */
void lb_events_unsubscribe(struct lb_events *e, struct lb_subscription *s);
/* Subscribers now (unsubscribed ones not counted): gRPC WatchEvents and /events streams. */
size_t lb_events_subscribers(const struct lb_events *e);

#endif
