/*
 * A small in-memory implementation of balancer/control.h for testing the
 * admin API without lbd's pool registry or etcd.  It keeps pools and
 * backends in arrays, applies changes like the registry does, completes
 * CLUSTER changes a few milliseconds later from a timer (as an etcd write
 * would), emits events to subscribers from the loop, and simulates draining:
 * a draining backend loses one active connection per drain step and emits
 * LB_EVENT_DRAINED at zero, unless it is marked stuck.
 */
#ifndef LB_CONTROL_DOUBLE_H
#define LB_CONTROL_DOUBLE_H

#include "control.h"

#include <stdbool.h>
#include <stdint.h>

struct ev_loop;

enum lb_double_store {
    LB_DOUBLE_STORE_OK,   /* CLUSTER writes succeed after store_delay_ms */
    LB_DOUBLE_STORE_FAIL, /* CLUSTER writes fail after store_delay_ms */
    LB_DOUBLE_STORE_NONE, /* no etcd: CLUSTER returns -ENOTCONN */
};

struct lb_registry *lb_double_new(struct ev_loop *loop);
/* Pending store completions are dropped without calling back. */
void lb_double_free(struct lb_registry *r);

int lb_double_add_pool(struct lb_registry *r, const char *name, const char *listen,
                       const char *algorithm);
int lb_double_add_backend(struct lb_registry *r, const char *pool, const char *id,
                          const char *addr, uint32_t weight, uint64_t active, bool stuck);
void lb_double_set_store(struct lb_registry *r, enum lb_double_store mode, double delay_ms);
void lb_double_set_drain_step(struct lb_registry *r, double step_ms);
/* Emits BACKEND_CHANGED for pool/id every interval_ms while > 0. */
void lb_double_set_ticker(struct lb_registry *r, const char *pool, const char *id,
                          double interval_ms);
/* Fills the registry with the fixture used by tests and admin_testd. */
void lb_double_fixture(struct lb_registry *r);
unsigned lb_double_subscribers(const struct lb_registry *r);

#endif
