/*
 * Keeping an etcd outage readable in the log.  A client that retries every
 * few hundred milliseconds would write a warning per attempt; during a
 * long outage that buries everything else.  An lb_outage tracks one run of
 * failures and tells its owner when to write a line:
 *
 *   the first failure               -> LB_OUTAGE_FIRST  ("etcd ... failed")
 *   later failures                  -> LB_OUTAGE_QUIET, except
 *   one at least `interval` after
 *   the last line                   -> LB_OUTAGE_STILL  (with the count so far)
 *   the first success after that    -> lb_outage_ended() is true
 *                                      ("etcd reachable again after 31.2s")
 *
 * A run that starts within `interval` of the last line stays quiet until
 * the interval has passed, so a flapping etcd costs at most about two
 * lines per interval; an outage nobody was told about ends quietly too.
 * Pure: time comes in as seconds on any monotonic clock.
 */
#ifndef LB_OUTAGE_H
#define LB_OUTAGE_H

#include <stdbool.h>
#include <stdint.h>

#define LB_OUTAGE_INTERVAL_S 30.0

enum lb_outage_report {
    LB_OUTAGE_QUIET, /* counted, no line */
    LB_OUTAGE_FIRST, /* the first line of this run */
    LB_OUTAGE_STILL, /* a reminder: still failing */
};

struct lb_outage {
    double interval_s;
    bool down;         /* a run of failures is going on */
    bool announced;    /* a line was written for this run */
    bool ever_logged;  /* last_line is valid */
    double since;      /* first failure of the run */
    double last_line;  /* when a failure line was last written */
    uint64_t failures; /* in this run */
};

void lb_outage_init(struct lb_outage *o, double interval_s);

/* A failure at `now`: says whether and which line to write. */
enum lb_outage_report lb_outage_failed(struct lb_outage *o, double now);

/*
 * A success at `now`.  Ends the run; returns true when the run had been
 * announced, with its length in *down_s and its failures in *failures,
 * so the owner writes one "reachable again" line.
 */
bool lb_outage_ended(struct lb_outage *o, double now, double *down_s, uint64_t *failures);

/* Seconds the current run has lasted (0 when none). */
double lb_outage_duration(const struct lb_outage *o, double now);

#endif
