/*
 * Backend health: active checks, passive ejection and slow start.
 *
 * Active checks (per pool policy) connect to the backend every interval,
 * with jitter so that 10,000 backends are not checked in the same
 * millisecond: `tcp` succeeds when the connect does, `http` when the reply's
 * status line is 2xx or 3xx.  HAProxy's rise/fall semantics: a backend goes
 * down after `fall` consecutive failures and up after `rise` consecutive
 * successes; the first result of a new backend decides at once.
 *
 * Passive ejection (Envoy's outlier detection): `fall` consecutive failed
 * connects from client traffic eject the backend for 5 s, doubling with each
 * ejection up to 5 min; it comes back when the period ends or at once on a
 * successful active check.
 *
 * Every change goes through lb_registry_backend_changed(), which marks the
 * backend for the pool's next publish (an O(log n) update, never a
 * rebuild).  The operator's override (FORCE_UP / FORCE_DOWN) is applied
 * when the pool folds the state, so it always wins over what the checks
 * say.
 *
 * The watchers live in the backend and are initialised once, by
 * lb_health_init() from lb_backend_new(); start, restart and the passive
 * signal only re-arm them, and do nothing on a retired backend.
 */
#ifndef LB_HEALTH_H
#define LB_HEALTH_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

struct lb_backend;

struct lb_health_check {
    ev_timer timer; /* next check, then the running check's timeout */
    ev_io io;       /* the running check's socket */
    int fd;         /* -1 when no check runs */
    size_t sent;
    size_t got;
    char reply[64]; /* the start of the status line */
    int successes;  /* consecutive */
    int failures;   /* consecutive */

    /* passive ejection */
    ev_timer eject_timer;
    unsigned ejections; /* times ejected; sets the next period */
};

/* Initialises the watchers of a new backend (none started). */
void lb_health_init(struct lb_backend *b);
/* Starts checking b according to its pool's policy (no-op for "none" or retired). */
void lb_health_start(struct lb_backend *b);
/* Stops checks and the ejection timer; safe to call twice. */
void lb_health_stop(struct lb_backend *b);
/*
 * Restarts checks after a policy change: the running check is abandoned
 * and counting starts over; an ejection in progress keeps its timer.
 */
void lb_health_restart(struct lb_backend *b);

/*
 * Passive signal from a client connection's connect attempt, on any
 * worker: counts consecutive failures in the backend's atomic; returns
 * true when this failure reached `fall` and the control loop should eject
 * (lb_health_eject()).  Never touches a watcher.
 */
bool lb_health_connect_result(struct lb_backend *b, bool ok, int fall);

/* Ejects b after consecutive connect failures; control loop only (ignored once retired). */
void lb_health_eject(struct lb_backend *b);

/*
 * Hitless upgrades.  export: what the checks and the passive ejection know
 * of b (health 0 unknown, 1 up, 2 down; ejections in a row, at most 64;
 * the ejection's time left in ms, 0 when not ejected).  adopt: takes that
 * over in a new process, before its first check of b has ended: a state it
 * has found out itself is kept; checks go on as they were.
 */
void lb_health_export(const struct lb_backend *b, uint8_t *health, uint8_t *ejections,
                      uint32_t *ejected_ms);
void lb_health_adopt(struct lb_backend *b, uint8_t health, unsigned ejections, uint32_t ejected_ms);

/* Both of the above on the control loop, with the pool's own policy (tests, tools). */
void lb_health_note_connect(struct lb_backend *b, bool ok);

#endif
