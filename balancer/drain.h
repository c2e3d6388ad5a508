/*
 * Drain deadlines.  A drained backend gets no new connections; its open
 * ones may run to completion, unless the pool sets drain_timeout.  Then,
 * once the timeout has passed, the connections still open are closed one by
 * one, spread evenly over a window (a tenth of drain_timeout, between 1 s
 * and 60 s), so that clients reconnecting elsewhere arrive as a trickle and
 * not as a thundering herd.
 */
#ifndef LB_DRAIN_H
#define LB_DRAIN_H

#include <ev.h>

struct lb_backend;

/* Initialises b's deadline timer (not started); from lb_backend_new(). */
void lb_drain_init(struct lb_backend *b);
/* Starts or stops b's deadline to match its drain state and pool policy. */
void lb_drain_update(struct lb_backend *b);
/* Stops the deadline (backend removed: its connections are left alone). */
void lb_drain_stop(struct lb_backend *b);

#endif
