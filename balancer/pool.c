/*
 * Pool members and snapshot publication.  Members are kept in an array
 * sorted by id: etcd lists keys in order, so the start-up sync appends, and
 * lookups are a binary search.
 */
#include "pool.h"
#include "dns.h"
#include "drain.h"
#include "lb_log.h"
#include "lb_util.h"
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void pool_ramp_cb(struct ev_loop *loop, ev_timer *w, int revents);

static struct lb_snapshot *snapshot_new_empty(void)
{
    struct lb_snapshot *s = calloc(1, sizeof(*s));

    if (s)
        s->algo = &lb_algo_wrr;
    return s;
}

static void snapshot_free(struct lb_snapshot *s)
{
    if (!s)
        return;
    if (s->algo && s->algo->destroy)
        s->algo->destroy(s);
    for (size_t i = 0; i < s->n_backends; i++)
        lb_backend_unref(s->backends[i]);
    free(s->backends);
    free(s->eligible);
    free(s);
}

int lb_pool_init(struct lb_pool *pool, struct lb_registry *registry, const char *name,
                 const char *listen)
{
    memset(pool, 0, sizeof(*pool));
    snprintf(pool->name, sizeof(pool->name), "%s", name);
    snprintf(pool->listen, sizeof(pool->listen), "%s", listen);
    pool->registry = registry;
    lb_pool_policy_defaults(&pool->policy);
    ev_init(&pool->ramp_timer, pool_ramp_cb);
    pool->snap = snapshot_new_empty();
    return pool->snap ? 0 : -ENOMEM;
}

void lb_pool_destroy(struct lb_pool *pool)
{
    if (pool->registry && pool->registry->loop)
        ev_timer_stop(pool->registry->loop, &pool->ramp_timer);
    snapshot_free(pool->snap);
    pool->snap = NULL;
    for (size_t i = 0; i < pool->n_members; i++) {
        struct lb_member *m = pool->members[i];

        lb_pool_retire_backend(m);
        free(m);
    }
    free(pool->members);
    pool->members = NULL;
    pool->n_members = 0;
}

/* Index of the first member with id >= `id`. */
static size_t member_lower_bound(const struct lb_pool *pool, const char *id)
{
    size_t lo = 0, hi = pool->n_members;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (strcmp(pool->members[mid]->id, id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct lb_member *lb_pool_find(struct lb_pool *pool, const char *id)
{
    size_t i = member_lower_bound(pool, id);

    if (i < pool->n_members && strcmp(pool->members[i]->id, id) == 0)
        return pool->members[i];
    return NULL;
}

struct lb_member *lb_pool_get_member(struct lb_pool *pool, const char *id)
{
    size_t i = member_lower_bound(pool, id);
    struct lb_member *m;

    if (i < pool->n_members && strcmp(pool->members[i]->id, id) == 0)
        return pool->members[i];
    if (pool->n_members == pool->cap_members) {
        size_t cap = pool->cap_members ? pool->cap_members * 2 : 16;
        struct lb_member **v = realloc(pool->members, cap * sizeof(*v));

        if (!v)
            return NULL;
        pool->members = v;
        pool->cap_members = cap;
    }
    m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    snprintf(m->id, sizeof(m->id), "%s", id);
    memmove(pool->members + i + 1, pool->members + i,
            (pool->n_members - i) * sizeof(*pool->members));
    pool->members[i] = m;
    pool->n_members++;
    return m;
}

void lb_pool_retire_backend(struct lb_member *m)
{
    struct lb_backend *b = m->backend;

    if (!b)
        return;
    m->backend = NULL;
    b->removed = true;
    lb_health_stop(b);
    lb_drain_stop(b);
    lb_dns_stop(b);
    lb_backend_unref(b);
}

void lb_pool_forget_if_empty(struct lb_pool *pool, struct lb_member *m)
{
    size_t i;

    if (m->backend || m->has_cluster_override || m->local.has_drain || m->local.has_weight ||
        m->local.clear_weight || m->local.has_health)
        return;
    i = member_lower_bound(pool, m->id);
    if (i >= pool->n_members || pool->members[i] != m)
        return;
    memmove(pool->members + i, pool->members + i + 1,
            (pool->n_members - i - 1) * sizeof(*pool->members));
    pool->n_members--;
    free(m);
}

/* Folds registration, cluster override and local override into b. */
static void member_resolve(struct lb_member *m)
{
    struct lb_backend *b = m->backend;
    const struct lb_override *c = m->has_cluster_override ? &m->cluster_override : NULL;
    const struct lb_local_override *l = &m->local;

    b->drain = l->has_drain ? l->drain : (c && c->drain);
    if (l->has_weight) {
        b->has_weight_override = true;
        b->weight_override = l->weight;
    } else if (!l->clear_weight && c && c->has_weight) {
        b->has_weight_override = true;
        b->weight_override = c->weight;
    } else {
        b->has_weight_override = false;
        b->weight_override = 0;
    }
    b->base_weight = b->has_weight_override ? b->weight_override : b->spec.weight;
    b->health_override = l->has_health ? l->health : (c ? c->health : LB_HEALTH_AUTO);
    if (!b->drain)
        b->drained_reported = false;
}

/*
 * Slow start: a backend that is new or newly healthy ramps linearly from
 * 10% to its full weight over the pool's slow_start window.  Returns true
 * while it is still ramping.
 */
static bool apply_slow_start(struct lb_pool *pool, struct lb_backend *b, ev_tstamp now)
{
    double window = (double)pool->policy.slow_start_ms / 1000., elapsed, factor;
    int w;

    b->weight = b->base_weight;
    if (window <= 0 || b->ramp_start <= 0 || now <= 0)
        return false;
    elapsed = now - b->ramp_start;
    if (elapsed >= window)
        return false;
    factor = elapsed / window;
    if (factor < 0.1)
        factor = 0.1;
    w = (int)((double)b->base_weight * factor + 0.5);
    b->weight = w < 1 ? 1 : w;
    return true;
}

static void pool_ramp_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_pool *pool = lb_container_of(w, struct lb_pool, ramp_timer);

    lb_pool_publish(pool);
}

int lb_pool_publish(struct lb_pool *pool)
{
    struct ev_loop *loop = pool->registry ? pool->registry->loop : NULL;
    ev_tstamp now = loop ? ev_now(loop) : 0;
    struct lb_snapshot *next = calloc(1, sizeof(*next));
    size_t n = 0, n_candidates = 0, n_healthy = 0;
    bool ramping = false, panic;
    int rc = -ENOMEM;

    if (!next)
        goto fail;
    next->algo = lb_algo_for(pool->policy.algorithm);
    for (size_t i = 0; i < pool->n_members; i++)
        n += pool->members[i]->backend != NULL;
    next->backends = calloc(n ? n : 1, sizeof(*next->backends));
    next->eligible = calloc(n ? n : 1, sizeof(*next->eligible));
    if (!next->backends || !next->eligible)
        goto fail;
    for (size_t i = 0; i < pool->n_members; i++) {
        struct lb_member *m = pool->members[i];
        struct lb_backend *b = m->backend;

        if (!b)
            continue;
        member_resolve(m);
        b->panic_included = false;
        lb_backend_ref(b);
        next->backends[next->n_backends++] = b;
        if (!lb_backend_is_candidate(b))
            continue;
        n_candidates++;
        n_healthy += lb_backend_is_healthy(b);
        ramping |= apply_slow_start(pool, b, now);
    }
    /*
     * Panic (Envoy's panic threshold): when fewer than panic_threshold% of the
     * candidates are healthy, send traffic to all of them rather than pile it
     * on the few; checks may be wrong, an overloaded survivor is certain.
     */
    panic = n_candidates > 0 && n_healthy * 100 < (size_t)pool->policy.panic_threshold * n_candidates;
    for (size_t i = 0; i < next->n_backends; i++) {
        struct lb_backend *b = next->backends[i];

        if (!lb_backend_is_candidate(b))
            continue;
        if (!lb_backend_is_healthy(b)) {
            if (!panic)
                continue;
            b->panic_included = true;
        }
        next->eligible[next->n_eligible++] = b;
    }
    rc = next->algo->init(next, pool->snap);
    if (rc < 0) {
        next->algo = NULL; /* nothing to destroy */
        goto fail;
    }
    if (panic != pool->panic)
        LB_WARN("pool", "msg=\"%s\" pool=%s healthy=%zu of=%zu panic_threshold=%d", 
                panic ? "panic: too few healthy backends, spreading over all of them"
                      : "panic over: enough healthy backends again",
                pool->name, n_healthy, n_candidates, pool->policy.panic_threshold);
    pool->panic = panic;
    pool->n_healthy = n_healthy;
    snapshot_free(pool->snap);
    pool->snap = next;
    pool->dirty = false;
    if (loop) {
        if (ramping && !ev_is_active(&pool->ramp_timer)) {
            double tick = (double)pool->policy.slow_start_ms / 20000.;

            tick = tick < 0.1 ? 0.1 : tick > 1.0 ? 1.0 : tick;
            ev_timer_init(&pool->ramp_timer, pool_ramp_cb, tick, tick);
            ev_timer_start(loop, &pool->ramp_timer);
        } else if (!ramping && ev_is_active(&pool->ramp_timer)) {
            ev_timer_stop(loop, &pool->ramp_timer);
        }
    }
    return 0;
fail:
    snapshot_free(next);
    LB_ERROR("pool", "msg=\"out of memory publishing pool, keeping the previous one\" pool=%s",
             pool->name);
    return rc;
}

size_t lb_pool_eligible(const struct lb_pool *pool)
{
    return pool->snap->n_eligible;
}
