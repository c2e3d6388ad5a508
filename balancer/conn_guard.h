/*
 * Keeping a server reachable when some of its clients are hostile: the
 * admin API and the probe port each hold a few dozen connections, and a
 * client that opens them and then says nothing (or trickles a header
 * line every few seconds) must not lock out the operator or the kubelet.
 *
 * Admission: a global cap and a cap per peer address, well below it.  When
 * a cap is reached the newcomer is not simply refused: a connection that
 * has not proven itself (made an authorized call, or is inside a request
 * that reached its handler) is shed to make room, the oldest of the peer
 * address that holds the most connections.  Connections admitted in the
 * current batch (one run of the accepting code) are not shed, so a client
 * whose request is already in its socket gets it read, with one exception
 * for the global cap: a newcomer whose address holds at least two fewer
 * connections than the heaviest address's takes the slot of that
 * address's newest (so a burst from a few addresses accepted in the same
 * run as the operator does not refuse the operator).  Only when no
 * connection can be shed is the newcomer refused.  So a flood of idle or
 * slow connections costs its own connections their slots, and a client
 * that sends its request at once gets in.
 *
 * Also here, because both servers need them: a log limiter (one line per
 * interval with a count, so a flood does not become a log flood) and the
 * admin API's request memory budget.
 *
 * Pure bookkeeping: no I/O, no clock, no allocation.  The caller embeds an
 * entry in each connection, closes the sockets and logs.
 */
#ifndef LB_CONN_GUARD_H
#define LB_CONN_GUARD_H

#include "lb_list.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A peer's address without its port: what the per-peer cap counts. */
struct lb_conn_peer {
    uint8_t family; /* AF_INET, AF_INET6, or 0 (unknown: one peer for all) */
    uint8_t addr[16];
};

struct lb_conn_guard_entry {
    struct lb_list link; /* in the guard's list: oldest first */
    struct lb_conn_peer peer;
    bool proven; /* never shed */
    bool shed;   /* chosen to make room: no longer counted nor chosen */
    bool linked;
    unsigned long batch; /* admitted in this batch */
};

struct lb_conn_guard {
    unsigned max_total;     /* connections at once (0: no cap) */
    unsigned max_per_peer;  /* connections at once from one address (0: no cap) */
    struct lb_list entries; /* oldest candidate first */
    unsigned count;         /* entries not shed */
    unsigned long batch;    /* lb_conn_guard_next_batch() */
};

enum lb_conn_verdict {
    LB_CONN_ADMIT,        /* there is room */
    LB_CONN_SHED,         /* room is made by closing *victim first */
    LB_CONN_REFUSE_PEER,  /* none of the peer's connections can be shed */
    LB_CONN_REFUSE_TOTAL, /* no connection can be shed */
};

void lb_conn_guard_init(struct lb_conn_guard *g, unsigned max_total, unsigned max_per_peer);

/* Takes the address of an AF_INET or AF_INET6 sockaddr (anything else: family 0). */
void lb_conn_peer_from_sockaddr(struct lb_conn_peer *p, const struct sockaddr *sa);

/* Connections counted from `peer` (shed ones excluded). */
unsigned lb_conn_guard_peer_count(const struct lb_conn_guard *g, const struct lb_conn_peer *peer);

/*
 * Starts a new batch: connections admitted before it may be shed again.
 * Call it each time the accepting code runs (before MHD_run(), at the top
 * of an accept callback).
 */
void lb_conn_guard_next_batch(struct lb_conn_guard *g);

/*
 * Decides about a newcomer from `peer`.  On LB_CONN_SHED, *victim is an
 * unproven connection that makes room: the peer's oldest from an earlier
 * batch when the peer's cap is the one reached, else the oldest from an
 * earlier batch of the peer holding the most connections, else (the global
 * cap, all slots taken in this batch) the newest of a peer holding at least
 * two more than `peer`; it is marked shed and no longer counted,
 * and the caller closes it and then admits the newcomer with
 * lb_conn_guard_add().  On a refusal the caller closes the newcomer.
 * *victim is NULL unless LB_CONN_SHED.
 */
enum lb_conn_verdict lb_conn_guard_admit(struct lb_conn_guard *g, const struct lb_conn_peer *peer,
                                         struct lb_conn_guard_entry **victim);

/* Counts a new connection: the newest candidate, not proven. */
void lb_conn_guard_add(struct lb_conn_guard *g, struct lb_conn_guard_entry *e,
                       const struct lb_conn_peer *peer);

/* Forgets a closed connection (shed or not).  A no-op for an entry not added. */
void lb_conn_guard_remove(struct lb_conn_guard *g, struct lb_conn_guard_entry *e);

/*
 * Marks a connection proven (never shed) or not.  Losing the mark makes it
 * the newest candidate again (a probe connection waiting for its next
 * request is as old as its wait).
 */
void lb_conn_guard_set_proven(struct lb_conn_guard *g, struct lb_conn_guard_entry *e, bool proven);

/*
 * One log line per interval for a repeated event, with a count.  Call
 * lb_rate_log_hit() at each event: it returns how many events to report now
 * (this one and those held back since the last line), or 0 when the line
 * must wait.  When it returned 0, call lb_rate_log_flush() once the
 * interval since the last line has passed (a timer at `next`): it returns
 * the events held back (0: nothing to say).
 */
struct lb_rate_log {
    double interval; /* seconds between lines */
    double last;     /* time of the last line; < 0: none yet */
    unsigned long held;
};

void lb_rate_log_init(struct lb_rate_log *l, double interval);
unsigned long lb_rate_log_hit(struct lb_rate_log *l, double now);
unsigned long lb_rate_log_flush(struct lb_rate_log *l, double now);
/* When the held-back events may be reported (meaningful while held > 0). */
double lb_rate_log_next(const struct lb_rate_log *l);

/*
 * Request memory: bytes a connection's calls may hold (conn_max), and bytes
 * all connections together may hold (server_max), except that every
 * connection may hold conn_reserve bytes whatever the others hold, so that
 * a client with a small request is never locked out by big ones elsewhere.
 * Worst case: server_max + connections x conn_reserve.
 */
struct lb_request_budget {
    size_t conn_max;
    size_t conn_reserve;
    size_t server_max;
};

/* True when `more` bytes fit for a connection holding conn_used, the server holding server_used. */
bool lb_request_budget_fits(const struct lb_request_budget *b, size_t conn_used, size_t server_used,
                            size_t more);

#endif
