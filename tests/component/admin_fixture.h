/*
 * What the admin API tests run against: lbd's real registry (balancer/
 * registry.c), fed the way the watcher feeds lbd, through
 * lb_registry_sink(), and an admin server on top of it, on a libev loop
 * running in a thread of its own.
 *
 * Two things stand in for the rest of lbd, at its interfaces only:
 *  - an lb_store whose override writes complete on the loop after a delay
 *    (or fail, or are missing: no etcd), and on success echo the value back
 *    through the sink as etcd's watch would;
 *  - client connections, counted on backends the way proxy sessions do
 *    (a backend reference, active/total counters, and
 *    lb_registry_connection_closed() on close).  A "step" timer closes one
 *    connection of a draining backend every 20 ms unless the backend's
 *    connections are stuck.
 *
 * Fixture pools and backends (every pool without health checks, so state
 * changes only when a test makes it change):
 *   web (wrr, 0.0.0.0:8080):       b1 10.0.0.1:8080 w100,
 *                                  b2 10.0.0.2:8080 w100, 3 connections,
 *                                  b3 [fd00::3]:8080 w50, 2 stuck connections
 *   db  (leastconn, 0.0.0.0:5433): d1 10.0.1.1:5432 w100
 *
 * The test thread touches the loop's objects only through fx_run() (or the
 * helpers below, which use it), so nothing is shared without a lock.  Tests
 * wait for what the loop does with fx_wait_until(): a condition checked
 * against a deadline, never a fixed sleep.
 */
#ifndef LB_TEST_ADMIN_FIXTURE_H
#define LB_TEST_ADMIN_FIXTURE_H

#include "admin_client.h"
#include "admin_server.h"
#include "registry.h"

#include <stdbool.h>

struct ev_loop;

enum fx_store {
    FX_STORE_OK,   /* writes succeed after the delay */
    FX_STORE_FAIL, /* writes fail after the delay ("etcd: connection refused") */
    FX_STORE_NONE, /* no store: CLUSTER scope is refused */
};

struct fx {
    struct ev_loop *loop;
    struct lb_registry registry;
    struct lb_admin_server *server;
    char addr[64]; /* "127.0.0.1:PORT" of server */
};

extern struct fx fx;

/*
 * Builds the fixture and starts the loop thread with a server listening on
 * 127.0.0.1:0 with `opts` (its listen field is ignored) and `limits` (NULL:
 * defaults).  Fails the test on error.
 */
void fx_start(const struct lb_admin_options *opts, const struct lb_admin_limits *limits);
/* Stops the thread and frees everything (pending store writes are cancelled). */
void fx_stop(void);

/* Runs fn(arg) on the loop thread and waits for it to return. */
void fx_run(void (*fn)(void *arg), void *arg);

/* Another server on the same loop and registry; returns 0 or a negative errno (*err set). */
int fx_server_new(const struct lb_admin_options *opts, const struct lb_admin_limits *limits,
                  struct lb_admin_server **out, char **err);
void fx_server_free(struct lb_admin_server *s);

void fx_set_store(enum fx_store mode, double delay_ms);
/*
 * Re-registers web/b1 every interval_ms with its weight flipped between 100
 * and 99 (a BACKEND_CHANGED event each: an unchanged registration is none);
 * 0 stops, and puts weight 100 back.
 */
void fx_set_ticker(double interval_ms);
/* Deletes pool/id's registration (its key deleted, its lease lapsed) on the loop, ms from
 * now (while the test thread waits on a call). */
void fx_delete_backend_later(const char *pool, const char *id, double ms);
/* Registers pool/id at addr with weight 100, on the loop. */
void fx_put_backend(const char *pool, const char *id, const char *addr);
/* Registers n backends bulk-00000.. in `pool` (10.1.x.y:80). */
void fx_add_backends(const char *pool, unsigned n);

/*
 * Polls cond(arg) on the test thread every few milliseconds until it holds
 * or `seconds` pass; returns its last answer.  cond may use fx_run().
 */
bool fx_wait_until(bool (*cond)(void *arg), void *arg, double seconds);

/* True while any registry subscription exists. */
bool fx_has_subscribers(void);
/* Waits (3 s at most) until no subscription is left; fails the test otherwise. */
void fx_wait_no_subscribers(void);
/* Fails the test unless a call ended with `want` and a message containing `needle` (if any). */
void fx_expect_status(int got, const struct lb_admin_status *st, int want, const char *needle);

/* Store writes not completed yet. */
unsigned fx_store_pending(void);
/* Waits (3 s at most) until every store write has completed; fails the test otherwise. */
void fx_wait_store_idle(void);
/* The effective drain flag of pool/id (false when unknown). */
bool fx_backend_drain(const char *pool, const char *id);

/* The value of the metric line starting with `name` (labels included) of server s. */
long long fx_server_metric(struct lb_admin_server *s, const char *name);
/* Waits (3 s at most) until fx_server_metric(s, name) == want; fails the test otherwise. */
void fx_wait_metric(struct lb_admin_server *s, const char *name, long long want);
/* True when a connection of s has output the socket would not take (it waits to write). */
bool fx_server_waits_to_write(struct lb_admin_server *s);

#endif
