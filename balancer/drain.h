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
#include <stdint.h>

struct lb_backend;

/* Initialises b's deadline timer (not started); from lb_backend_new(). */
void lb_drain_init(struct lb_backend *b);
/* Starts or stops b's deadline to match its drain state and pool policy. */
void lb_drain_update(struct lb_backend *b);
/* Stops the deadline (backend removed: its connections are left alone). */
void lb_drain_stop(struct lb_backend *b);
/*
 * Hitless upgrades.  left_ms: the time to b's deadline, at least 1 once it
 * has passed and connections are being closed; 0 when none runs.  adopt:
 * a deadline running here for b (lb_drain_update()) ends `ms` from now
 * instead, as it would have in the previous process; 0 changes nothing.
 */
uint32_t lb_drain_left_ms(const struct lb_backend *b);
void lb_drain_adopt(struct lb_backend *b, uint32_t ms);

#endif
