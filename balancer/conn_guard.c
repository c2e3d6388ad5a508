/*
 * Connection admission with shedding, a log limiter and the request budget
 * (see conn_guard.h).  Entries sit in one list in candidate order, oldest
 * first; proven and shed entries stay in it and are skipped.  The lists
 * are short (the caps are a few dozen), so choosing a victim and counting a
 * peer are scans (quadratic for the heaviest peer: a few thousand steps at
 * the caps lbd uses), which keeps everything in one obvious place.
 */
#include "conn_guard.h"

#include <netinet/in.h>
#include <string.h>

void lb_conn_guard_init(struct lb_conn_guard *g, unsigned max_total, unsigned max_per_peer)
{
    memset(g, 0, sizeof(*g));
    lb_list_init(&g->entries);
    g->max_total = max_total;
    g->max_per_peer = max_per_peer;
}

void lb_conn_peer_from_sockaddr(struct lb_conn_peer *p, const struct sockaddr *sa)
{
    memset(p, 0, sizeof(*p));
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

        p->family = AF_INET;
        memcpy(p->addr, &in->sin_addr, sizeof(in->sin_addr));
    } else if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

        p->family = AF_INET6;
        memcpy(p->addr, &in6->sin6_addr, sizeof(in6->sin6_addr));
    }
}

static bool same_peer(const struct lb_conn_peer *a, const struct lb_conn_peer *b)
{
    return a->family == b->family && memcmp(a->addr, b->addr, sizeof(a->addr)) == 0;
}

unsigned lb_conn_guard_peer_count(const struct lb_conn_guard *g, const struct lb_conn_peer *peer)
{
    const struct lb_list *pos;
    unsigned n = 0;

    lb_list_for_each(pos, &g->entries)
    {
        const struct lb_conn_guard_entry *e = lb_list_entry(pos, struct lb_conn_guard_entry, link);

        n += !e->shed && same_peer(&e->peer, peer);
    }
    return n;
}

static bool is_candidate(const struct lb_conn_guard *g, const struct lb_conn_guard_entry *e)
{
    return !e->shed && !e->proven && e->batch != g->batch;
}

/* The oldest candidate of `peer`, or NULL. */
static struct lb_conn_guard_entry *oldest_of_peer(const struct lb_conn_guard *g,
                                                  const struct lb_conn_peer *peer)
{
    struct lb_list *pos;

    lb_list_for_each(pos, &g->entries)
    {
        struct lb_conn_guard_entry *e = lb_list_entry(pos, struct lb_conn_guard_entry, link);

        if (is_candidate(g, e) && same_peer(&e->peer, peer))
            return e;
    }
    return NULL;
}

/* The oldest candidate of the peer that holds the most connections, or NULL. */
static struct lb_conn_guard_entry *oldest_of_heaviest(const struct lb_conn_guard *g)
{
    struct lb_conn_guard_entry *best = NULL;
    unsigned best_count = 0;
    struct lb_list *pos;

    lb_list_for_each(pos, &g->entries)
    {
        struct lb_conn_guard_entry *e = lb_list_entry(pos, struct lb_conn_guard_entry, link);
        unsigned n;

        if (!is_candidate(g, e))
            continue;
        n = lb_conn_guard_peer_count(g, &e->peer);
        if (n > best_count) { /* strictly more: the oldest wins a tie */
            best = e;
            best_count = n;
        }
    }
    return best;
}

/*
 * Within the current batch: the newest connection of the peer holding the
 * most, if that peer holds at least two more than `peer` does, else NULL.
 * So a burst from a few addresses accepted in the same run as a client from
 * another address gives up one of its own slots, and two peers never trade
 * slots back and forth.
 */
static struct lb_conn_guard_entry *newest_of_heavier_in_batch(const struct lb_conn_guard *g,
                                                              const struct lb_conn_peer *peer)
{
    struct lb_conn_guard_entry *best = NULL;
    unsigned best_count = lb_conn_guard_peer_count(g, peer) + 1;
    struct lb_list *pos;

    lb_list_for_each(pos, &g->entries)
    {
        struct lb_conn_guard_entry *e = lb_list_entry(pos, struct lb_conn_guard_entry, link);
        unsigned n;

        if (e->shed || e->proven || e->batch != g->batch)
            continue;
        n = lb_conn_guard_peer_count(g, &e->peer);
        if (n > best_count || (best && same_peer(&e->peer, &best->peer))) {
            best = e; /* the same peer again: a newer one */
            best_count = n;
        }
    }
    return best;
}

void lb_conn_guard_next_batch(struct lb_conn_guard *g)
{
    g->batch++;
}

enum lb_conn_verdict lb_conn_guard_admit(struct lb_conn_guard *g, const struct lb_conn_peer *peer,
                                         struct lb_conn_guard_entry **victim)
{
    struct lb_conn_guard_entry *v = NULL;

    *victim = NULL;
    if (g->max_per_peer && lb_conn_guard_peer_count(g, peer) >= g->max_per_peer) {
        v = oldest_of_peer(g, peer);
        if (!v)
            return LB_CONN_REFUSE_PEER;
    } else if (g->max_total && g->count >= g->max_total) {
        v = oldest_of_heaviest(g);
        if (!v)
            v = newest_of_heavier_in_batch(g, peer);
        if (!v)
            return LB_CONN_REFUSE_TOTAL;
    }
    if (!v)
        return LB_CONN_ADMIT;
    v->shed = true;
    g->count--;
    *victim = v;
    return LB_CONN_SHED;
}

void lb_conn_guard_add(struct lb_conn_guard *g, struct lb_conn_guard_entry *e,
                       const struct lb_conn_peer *peer)
{
    memset(e, 0, sizeof(*e));
    e->peer = *peer;
    e->linked = true;
    e->batch = g->batch;
    lb_list_insert_tail(&g->entries, &e->link);
    g->count++;
}

void lb_conn_guard_remove(struct lb_conn_guard *g, struct lb_conn_guard_entry *e)
{
    if (!e->linked)
        return;
    lb_list_remove(&e->link);
    if (!e->shed)
        g->count--;
    e->linked = false;
}

void lb_conn_guard_set_proven(struct lb_conn_guard *g, struct lb_conn_guard_entry *e, bool proven)
{
    if (!e->linked || e->proven == proven)
        return;
    e->proven = proven;
    if (!proven) {
        lb_list_remove(&e->link);
        lb_list_insert_tail(&g->entries, &e->link);
    }
}

void lb_rate_log_init(struct lb_rate_log *l, double interval)
{
    l->interval = interval;
    l->last = -1;
    l->held = 0;
}

unsigned long lb_rate_log_hit(struct lb_rate_log *l, double now)
{
    unsigned long n;

    if (l->last >= 0 && now - l->last < l->interval) {
        l->held++;
        return 0;
    }
    n = l->held + 1;
    l->held = 0;
    l->last = now;
    return n;
}

unsigned long lb_rate_log_flush(struct lb_rate_log *l, double now)
{
    unsigned long n = l->held;

    if (n == 0 || now - l->last < l->interval)
        return 0;
    l->held = 0;
    l->last = now;
    return n;
}

double lb_rate_log_next(const struct lb_rate_log *l)
{
    return l->last + l->interval;
}

bool lb_request_budget_fits(const struct lb_request_budget *b, size_t conn_used, size_t server_used,
                            size_t more)
{
    if (more > b->conn_max || conn_used > b->conn_max - more)
        return false;
    if (conn_used + more <= b->conn_reserve)
        return true;
    return more <= b->server_max && server_used <= b->server_max - more;
}
