/*
 * The readiness check of `lbctl register --check`: the backend's key is in
 * etcd only while this check passes.
 *
 *   --check tcp                    connect to --addr
 *   --check tcp://HOST:PORT        connect to HOST:PORT
 *   --check http://HOST[:PORT]/P   GET /P; a 2xx or 3xx status passes
 *
 * The semantics are those of lbd's own active checks (balancer/health.c):
 * a TCP check passes when the connect does, an HTTP check when the status
 * line says 2xx or 3xx (the body is not read), each check has a timeout,
 * and the state moves after `rise` passes or `fall` failures in a row.
 * Unlike lbd's, the start state is down: the backend is not ready until
 * the check has risen once.
 *
 * The check runs on a libcurl multi handle of its own, so a DNS name, a
 * connect and the HTTP exchange never block: lbctl_check_wait() is the
 * registrar's only way to sleep, and it drives the check while it waits
 * for the registrar's signal fd.  The registrar's etcd calls block (each
 * bounded by its timeout); the time spent outside lbctl_check_wait() does
 * not count against a running check's timeout, so a slow etcd never makes
 * a backend that answered look dead.
 */
#ifndef LBCTL_REGISTER_CHECK_H
#define LBCTL_REGISTER_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#define LBCTL_CHECK_URL_MAX 600

enum lbctl_check_kind {
    LBCTL_CHECK_TCP,
    LBCTL_CHECK_HTTP,
};

struct lbctl_check_spec {
    enum lbctl_check_kind kind;
    char
        url[LBCTL_CHECK_URL_MAX]; /* what libcurl is given (tcp: http://HOST:PORT/, connect only) */
    char target[LBCTL_CHECK_URL_MAX]; /* as log lines name it: HOST:PORT (tcp) or the URL (http) */
    int64_t interval_ms;              /* from the end of one check to the start of the next */
    int64_t timeout_ms;               /* of one check: connect, request and status line */
    int rise, fall;                   /* passes / failures in a row that move the state */
};

/*
 * Reads the --check value `text`; `addr` is the registered --addr, the
 * target of plain "tcp".  Fills kind, url and target (the caller sets the
 * timing).  Returns 0, or -EINVAL with *err (malloc'd) saying what is
 * expected, for a usage line.
 */
int lbctl_check_parse(const char *text, const char *addr, struct lbctl_check_spec *out, char **err);

/* Rise/fall counting, kept apart from the I/O so that it can be tested alone. */
struct lbctl_check_state {
    bool up; /* starts false: not ready until the first rise */
    int passes;
    int failures;
};

enum lbctl_check_change {
    LBCTL_CHECK_SAME = 0,
    LBCTL_CHECK_ROSE = 1, /* `rise` passes in a row while down */
    LBCTL_CHECK_FELL = 2, /* `fall` failures in a row while up */
};

/* Counts one result; returns the change it makes. */
enum lbctl_check_change lbctl_check_count(struct lbctl_check_state *s, bool ok, int rise, int fall);

struct lbctl_check;

/* Creates the check (nothing runs before lbctl_check_wait()); 0 or -ENOMEM with *err. */
int lbctl_check_new(const struct lbctl_check_spec *spec, struct lbctl_check **out, char **err);
/* Abandons a running check and frees everything; NULL is fine. */
void lbctl_check_free(struct lbctl_check *c);

/*
 * Sleeps up to timeout_ms while running the check: starts one when it is
 * due, follows it, ends it at its timeout.  Returns as soon as `fd` is
 * readable (*fd_ready = true), the state changed (LBCTL_CHECK_ROSE or
 * LBCTL_CHECK_FELL), or the time ran out (LBCTL_CHECK_SAME); or a negative
 * errno when waiting itself failed.
 */
int lbctl_check_wait(struct lbctl_check *c, int fd, int64_t timeout_ms, bool *fd_ready);

/* True once the check has risen, until it falls. */
bool lbctl_check_is_up(const struct lbctl_check *c);
/* The spec it runs. */
const struct lbctl_check_spec *lbctl_check_spec(const struct lbctl_check *c);
/*
 * Why the state last changed, as a log value: "backend ready: http 200
 * from http://127.0.0.1:8080/ready (2 passes in a row)"; "" before any.
 */
const char *lbctl_check_reason(const struct lbctl_check *c);
/* What the latest check found ("http 503 from ..."), "" before the first; and counts. */
const char *lbctl_check_last(const struct lbctl_check *c);
const struct lbctl_check_state *lbctl_check_state(const struct lbctl_check *c);

#endif
