/*
 * Pool members, backend attach/retire and the publish path.
 *
 * Members are kept in an array sorted by id: etcd lists keys in order, so
 * the start-up sync appends, and lookups are a binary search.
 *
 * A snapshot's entries mirror the members that have a backend, in the same
 * order.  Publishing either rebuilds (membership or policy changed: one new
 * snapshot for the whole batch, the algorithm initialised once) or updates
 * in place: each marked backend's candidate/healthy flags are refreshed and
 * the pool's counts adjusted; if that flips panic mode every entry's weight
 * is recomputed, otherwise only the marked ones; each weight that changed
 * goes through the algorithm's set_weight hook.  Nothing in place
 * allocates, so a health flip cannot fail and costs O(log n).
 *
 * Zone affinity (Envoy's zone-aware routing, decided here and not per
 * pick): when lbd has a zone and the policy a zone_affinity threshold,
 * the snapshot is "zone local" while at least that percent of the entries
 * in lbd's zone are healthy candidates (and the pool is not in panic, as
 * in Envoy); entries of other zones, and entries without a zone, then get
 * weight 0.  Below the threshold the local zone is under-provisioned and
 * every zone is eligible again.  Like panic, a switch re-weighs every
 * entry in place (O(n), no allocation); it also asks for a fresh
 * algorithm state and sends the workers the whole snapshot, so a maglev
 * table is always built over exactly the entries eligible after the
 * switch and replicas in one zone with the same view answer the same.
 */
#include "pool.h"
#include "backend_dns.h"
#include "drain.h"
#include "proxy.h"
#include "lb_log.h"
#include "lb_util.h"
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void pool_ramp_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* --------------------------------------------------------- snapshots -- */

void lb_snapshot_free(struct lb_snapshot *s)
{
    if (!s)
        return;
    if (s->algo && s->algo_state)
        s->algo->destroy(s->algo_state);
    for (size_t i = 0; i < s->n_entries; i++)
        lb_backend_unref(s->entries[i].backend);
    free(s->entries);
    free(s->eligible);
    free(s);
}

static struct lb_snapshot *snapshot_alloc(size_t n)
{
    struct lb_snapshot *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->entries = calloc(n ? n : 1, sizeof(*s->entries));
    s->eligible = calloc(n ? n : 1, sizeof(*s->eligible));
    if (!s->entries || !s->eligible) {
        free(s->entries);
        free(s->eligible);
        free(s);
        return NULL;
    }
    return s;
}

static ev_tstamp pool_now(const struct lb_pool *pool)
{
    struct ev_loop *loop = pool->registry ? pool->registry->loop : NULL;

    return loop ? ev_now(loop) : 0;
}

/*
 * Slow start: a backend that is new or newly healthy ramps linearly from
 * 10% to its full weight over the pool's slow_start window.
 */
static uint32_t ramp_weight(const struct lb_pool *pool, const struct lb_backend *b, ev_tstamp now,
                            bool *ramping)
{
    double window = (double)pool->policy.slow_start_ms / 1000., elapsed, factor;
    int w;

    *ramping = false;
    if (window <= 0 || b->ramp_start <= 0 || now <= 0)
        return (uint32_t)b->base_weight;
    elapsed = now - b->ramp_start;
    if (elapsed >= window)
        return (uint32_t)b->base_weight;
    factor = elapsed / window;
    if (factor < 0.1)
        factor = 0.1;
    w = (int)((double)b->base_weight * factor + 0.5);
    *ramping = true;
    return w < 1 ? 1 : (uint32_t)w;
}

/* True when e's backend registered in lbd's zone. */
static bool entry_is_local(const struct lb_pool *pool, const struct lb_snap_entry *e)
{
    return pool->zone[0] && strcmp(e->backend->spec.zone, pool->zone) == 0;
}

/* Refreshes e's candidate, healthy and local flags and the snapshot's counts. */
static void entry_refresh_flags(const struct lb_pool *pool, struct lb_snapshot *s,
                                struct lb_snap_entry *e)
{
    bool candidate = lb_backend_is_candidate(e->backend);
    bool healthy = candidate && lb_backend_is_healthy(e->backend);
    bool local = entry_is_local(pool, e);

    s->n_local -= e->local;
    s->n_local_eligible -= e->local && e->healthy;
    s->n_local += local;
    s->n_local_eligible += local && healthy;
    e->local = local;

    if (e->candidate && !candidate)
        s->n_candidates--;
    else if (!e->candidate && candidate)
        s->n_candidates++;
    if (e->healthy && !healthy)
        s->n_healthy--;
    else if (!e->healthy && healthy)
        s->n_healthy++;
    e->candidate = candidate;
    e->healthy = healthy;
}

/*
 * Panic (Envoy's panic threshold): when fewer than panic_threshold% of the
 * candidates are healthy, send traffic to all of them rather than pile it
 * on the few; checks may be wrong, an overloaded survivor is certain.
 */
static bool snapshot_wants_panic(const struct lb_pool *pool, const struct lb_snapshot *s)
{
    return s->n_candidates > 0 &&
           s->n_healthy * 100 < (size_t)pool->policy.panic_threshold * s->n_candidates;
}

/*
 * Zone affinity holds: lbd has a zone, the policy a threshold, the pool is
 * not in panic, and at least zone_affinity% of the local zone's entries
 * (one at least) are healthy candidates.  Assumes s->panic is current.
 */
static bool snapshot_wants_zone_local(const struct lb_pool *pool, const struct lb_snapshot *s)
{
    return lb_pool_zone_aware(pool) && !s->panic && s->n_local_eligible > 0 &&
           s->n_local_eligible * 100 >= (size_t)pool->policy.zone_affinity * s->n_local;
}

/* The weight e should have now, and whether it is still ramping up. */
static uint32_t entry_target(const struct lb_pool *pool, const struct lb_snapshot *s,
                             const struct lb_snap_entry *e, ev_tstamp now, bool *ramping)
{
    *ramping = false;
    if (!e->candidate || !(e->healthy || s->panic) || (s->zone_local && !e->local))
        return 0;
    return ramp_weight(pool, e->backend, now, ramping);
}

void lb_snapshot_set_weight(struct lb_snapshot *s, size_t i, uint32_t w)
{
    struct lb_snap_entry *e = &s->entries[i];
    uint32_t old = e->weight;

    if (old == w)
        return;
    if (!old) {
        e->eligible_pos = (uint32_t)s->n_eligible;
        s->eligible[s->n_eligible++] = (uint32_t)i;
    } else if (!w) {
        uint32_t last = s->eligible[--s->n_eligible];

        s->eligible[e->eligible_pos] = last;
        s->entries[last].eligible_pos = e->eligible_pos;
    }
    e->weight = w;
    s->algo->set_weight(s, i, old);
}

/* Notes that entry i changed weight, for the workers' copies. */
static void pool_record_change(struct lb_pool *pool, size_t i)
{
    if (pool->changed_lost)
        return;
    if (pool->n_changed == pool->cap_changed) {
        size_t cap = pool->cap_changed ? pool->cap_changed * 2 : 64;
        uint32_t *v = realloc(pool->changed, cap * sizeof(*v));

        if (!v) {
            pool->changed_lost = true;
            return;
        }
        pool->changed = v;
        pool->cap_changed = cap;
    }
    pool->changed[pool->n_changed++] = (uint32_t)i;
}

static void entry_refresh_weight(struct lb_pool *pool, struct lb_snapshot *s, size_t i,
                                 ev_tstamp now)
{
    struct lb_snap_entry *e = &s->entries[i];
    bool ramping;
    uint32_t w = entry_target(pool, s, e, now, &ramping);

    if (e->ramping != ramping) {
        if (ramping)
            s->n_ramping++;
        else
            s->n_ramping--;
        e->ramping = ramping;
    }
    if (e->weight != w && pool->registry && pool->registry->proxy)
        pool_record_change(pool, i);
    lb_snapshot_set_weight(s, i, w);
}

static void log_panic(const struct lb_pool *pool, const struct lb_snapshot *s)
{
    LB_WARN("pool", "msg=\"%s\" pool=%s healthy=%zu of=%zu panic_threshold=%d",
            s->panic ? "panic: too few healthy backends, spreading over all of them"
            : pool->policy.panic_threshold <= 0 ? "panic over: panic_threshold turned off"
                                                : "panic over: enough healthy backends again",
            pool->name, s->n_healthy, s->n_candidates, pool->policy.panic_threshold);
}

static void log_zone(const struct lb_pool *pool, const struct lb_snapshot *s)
{
    LB_WARN("pool",
            "msg=\"%s\" pool=%s zone=%s local_eligible=%zu local=%zu eligible=%zu "
            "zone_affinity=%d",
            s->zone_local ? "zone local: enough backends in this zone, keeping traffic here"
                          : "zone spill-over: too few eligible backends in this zone, spreading "
                            "over all zones",
            pool->name, pool->zone, s->n_local_eligible, s->n_local, s->n_eligible,
            pool->policy.zone_affinity);
}

/*
 * Builds a snapshot of the current members with the policy's algorithm and
 * swaps it in.  Returns 0, or -ENOMEM with the old snapshot untouched.
 */
static int snapshot_rebuild(struct lb_pool *pool, ev_tstamp now)
{
    struct lb_snapshot *next, *prev = pool->snap;
    size_t n = 0, k = 0;
    int rc;

    for (size_t i = 0; i < pool->n_members; i++)
        n += pool->members[i]->backend != NULL;
    next = snapshot_alloc(n);
    if (!next)
        return -ENOMEM;
    next->algo = lb_algo_for(pool->policy.algorithm);
    for (size_t i = 0; i < pool->n_members; i++) {
        struct lb_backend *b = pool->members[i]->backend;
        struct lb_snap_entry *e = &next->entries[k];

        if (!b)
            continue;
        lb_backend_ref(b);
        e->backend = b;
        next->n_entries = ++k;
        entry_refresh_flags(pool, next, e);
    }
    next->panic = snapshot_wants_panic(pool, next);
    next->zone_local = snapshot_wants_zone_local(pool, next);
    for (size_t i = 0; i < next->n_entries; i++) {
        struct lb_snap_entry *e = &next->entries[i];

        e->weight = entry_target(pool, next, e, now, &e->ramping);
        next->n_ramping += e->ramping;
        if (e->weight) {
            e->eligible_pos = (uint32_t)next->n_eligible;
            next->eligible[next->n_eligible++] = (uint32_t)i;
        }
    }
    rc = next->algo->init(next, prev, &next->algo_state);
    if (rc < 0) {
        next->algo_state = NULL;
        lb_snapshot_free(next);
        return rc;
    }
    if (prev && next->panic != prev->panic)
        log_panic(pool, next);
    if (lb_pool_zone_aware(pool) && prev && next->zone_local != prev->zone_local)
        log_zone(pool, next);
    for (size_t i = 0; i < next->n_entries; i++)
        next->entries[i].backend->snap_index = i;
    pool->snap = next;
    lb_snapshot_free(prev);
    pool->rebuilds++;
    return 0;
}

struct lb_snapshot *lb_snapshot_copy(const struct lb_snap_entry *entries, size_t n,
                                     const struct lb_algo_ops *algo, const struct lb_snapshot *prev)
{
    struct lb_snapshot *s = snapshot_alloc(n);

    if (!s)
        return NULL;
    s->algo = algo;
    for (size_t i = 0; i < n; i++) {
        struct lb_snap_entry *e = &s->entries[i];

        *e = entries[i];
        lb_backend_ref(e->backend);
        s->n_entries = i + 1;
        s->n_candidates += e->candidate;
        s->n_healthy += e->healthy;
        s->n_ramping += e->ramping;
        if (e->weight) {
            e->eligible_pos = (uint32_t)s->n_eligible;
            s->eligible[s->n_eligible++] = (uint32_t)i;
        }
    }
    if (algo->init(s, prev, &s->algo_state) < 0) {
        s->algo_state = NULL;
        lb_snapshot_free(s);
        return NULL;
    }
    return s;
}

/* The algorithm asked for a fresh state (maglev after many changes). */
void lb_snapshot_refresh_algo(struct lb_snapshot *s)
{
    void *state = NULL;

    if (s->algo->init(s, s, &state) < 0)
        return; /* stays stale: pick() is still correct, only slower */
    s->algo->destroy(s->algo_state);
    s->algo_state = state;
    s->algo_stale = false;
}

/* ------------------------------------------------------------- pools -- */

int lb_pool_init(struct lb_pool *pool, struct lb_registry *registry, const char *name,
                 const char *listen)
{
    memset(pool, 0, sizeof(*pool));
    snprintf(pool->name, sizeof(pool->name), "%s", name);
    snprintf(pool->listen, sizeof(pool->listen), "%s", listen);
    pool->registry = registry;
    lb_pool_policy_defaults(&pool->policy);
    ev_init(&pool->ramp_timer, pool_ramp_cb);
    /* The empty pool gets a snapshot like any other: every algorithm is
     * initialised on it, so the first client finds a valid (empty) state. */
    return snapshot_rebuild(pool, 0);
}

static void pool_drop_marks(struct lb_pool *pool)
{
    while (pool->marked) {
        struct lb_backend *b = pool->marked;

        pool->marked = b->mark_next;
        b->mark_next = NULL;
        b->marked = false;
        lb_backend_unref(b);
    }
}

void lb_pool_destroy(struct lb_pool *pool)
{
    if (pool->registry && pool->registry->loop)
        ev_timer_stop(pool->registry->loop, &pool->ramp_timer);
    for (size_t i = 0; i < pool->n_members; i++) {
        struct lb_member *m = pool->members[i];

        lb_pool_retire_backend(pool, m);
        free(m);
    }
    free(pool->members);
    pool->members = NULL;
    pool->n_members = 0;
    pool_drop_marks(pool);
    lb_snapshot_free(pool->snap);
    pool->snap = NULL;
    free(pool->changed);
    pool->changed = NULL;
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

static void pool_want_rebuild(struct lb_pool *pool)
{
    pool->rebuild = true;
    if (pool->registry)
        lb_registry_schedule_publish(pool->registry);
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
    /* Before anyone reads `active` to decide drained: workers then tell at 0. */
    atomic_store(&b->notify_zero, b->drain || b->removed);
}

static void pool_attach(struct lb_pool *pool, struct lb_member *m, struct lb_backend *b);

struct lb_backend *lb_pool_attach_backend(struct lb_pool *pool, struct lb_member *m,
                                          const struct lb_backend_spec *spec)
{
    struct lb_backend *b = lb_backend_new(pool, m->id, spec);

    if (!b)
        return NULL;
    pool_attach(pool, m, b);
    return b;
}

struct lb_backend *lb_pool_readdress(struct lb_pool *pool, struct lb_backend *b,
                                     const struct sockaddr *sa, socklen_t len)
{
    struct lb_member *m = lb_pool_find(pool, b->id);
    struct lb_backend *next;

    if (!m || m->backend != b || len > sizeof(next->sa))
        return NULL;
    next = lb_backend_new(pool, m->id, &b->spec);
    if (!next)
        return NULL;
    memcpy(&next->sa, sa, len);
    next->sa_len = len;
    next->resolved = true;
    next->dns_started = true;
    pool_attach(pool, m, next);
    return next;
}

/* Makes b m's backend: retires the one it replaces, starts checks and DNS. */
static void pool_attach(struct lb_pool *pool, struct lb_member *m, struct lb_backend *b)
{
    /* The old backend (another address) finishes its connections on its own. */
    lb_pool_retire_backend(pool, m);
    m->backend = b;
    member_resolve(m);
    if (b->loop)
        b->ramp_start = ev_now(b->loop);
    if (pool->registry)
        lb_registry_check_address(pool->registry, b);
    lb_health_start(b);
    lb_backend_dns_start(b);
    pool_want_rebuild(pool);
}

void lb_pool_retire_backend(struct lb_pool *pool, struct lb_member *m)
{
    struct lb_backend *b = m->backend;

    if (!b)
        return;
    m->backend = NULL;
    lb_backend_retire(b);
    pool_want_rebuild(pool);
    lb_backend_unref(b);
}

void lb_pool_mark(struct lb_pool *pool, struct lb_backend *b)
{
    if (b->removed || b->marked)
        return;
    lb_backend_ref(b);
    b->marked = true;
    b->mark_next = pool->marked;
    pool->marked = b;
    if (pool->registry)
        lb_registry_schedule_publish(pool->registry);
}

void lb_pool_member_changed(struct lb_pool *pool, struct lb_member *m)
{
    if (!m->backend)
        return;
    member_resolve(m);
    lb_pool_mark(pool, m->backend);
}

void lb_pool_policy_changed(struct lb_pool *pool)
{
    for (size_t i = 0; i < pool->n_members; i++)
        if (pool->members[i]->backend)
            lb_health_restart(pool->members[i]->backend);
    pool_want_rebuild(pool);
}

bool lb_pool_is_dirty(const struct lb_pool *pool)
{
    return pool->rebuild || pool->marked || pool->ramp_due || pool->snap->algo_stale;
}

static void pool_ramp_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_pool *pool = lb_container_of(w, struct lb_pool, ramp_timer);

    pool->ramp_due = true;
    lb_registry_schedule_publish(pool->registry);
}

/* Keeps the ramp timer running exactly while some entry is in slow start. */
static void pool_update_ramp_timer(struct lb_pool *pool)
{
    struct ev_loop *loop = pool->registry ? pool->registry->loop : NULL;

    if (!loop)
        return;
    if (pool->snap->n_ramping && !ev_is_active(&pool->ramp_timer)) {
        double tick = (double)pool->policy.slow_start_ms / 20000.;

        tick = tick < 0.1 ? 0.1 : tick > 1.0 ? 1.0 : tick;
        ev_timer_set(&pool->ramp_timer, tick, tick);
        ev_timer_start(loop, &pool->ramp_timer);
    } else if (!pool->snap->n_ramping) {
        ev_timer_stop(loop, &pool->ramp_timer);
    }
}

/* b's index in s, or SIZE_MAX when s does not list it. */
static size_t snapshot_index_of(const struct lb_snapshot *s, const struct lb_backend *b)
{
    size_t i = b->snap_index;

    return i < s->n_entries && s->entries[i].backend == b ? i : SIZE_MAX;
}

/*
 * Re-evaluates the marked backends in place (no allocation, cannot fail).
 * Returns true when the zone mode switched: the workers then need the
 * whole snapshot (their algorithm state rebuilt over the new eligible set).
 */
static bool snapshot_update(struct lb_pool *pool, ev_tstamp now)
{
    struct lb_snapshot *s = pool->snap;
    bool panic_switch, zone_local, zone_switch;

    for (struct lb_backend *b = pool->marked; b; b = b->mark_next) {
        size_t i = snapshot_index_of(s, b);

        if (i != SIZE_MAX)
            entry_refresh_flags(pool, s, &s->entries[i]);
    }
    panic_switch = snapshot_wants_panic(pool, s) != s->panic;
    if (panic_switch) {
        s->panic = !s->panic;
        log_panic(pool, s);
    }
    zone_local = snapshot_wants_zone_local(pool, s); /* after panic: panic spills */
    zone_switch = zone_local != s->zone_local;
    s->zone_local = zone_local;
    if (panic_switch || zone_switch || pool->ramp_due) {
        for (size_t i = 0; i < s->n_entries; i++)
            entry_refresh_weight(pool, s, i, now);
    } else {
        for (struct lb_backend *b = pool->marked; b; b = b->mark_next) {
            size_t i = snapshot_index_of(s, b);

            if (i != SIZE_MAX)
                entry_refresh_weight(pool, s, i, now);
        }
    }
    if (zone_switch) {
        s->algo_stale = true; /* a state built over exactly the new eligible set */
        log_zone(pool, s);
    }
    pool->updates++;
    return zone_switch;
}

/* Posts what this publish changed to the workers' copies (proxy.h). */
static void pool_replicate(struct lb_pool *pool, bool rebuilt)
{
    struct lb_proxy *proxy = pool->registry ? pool->registry->proxy : NULL;

    if (proxy && (rebuilt || pool->n_changed || pool->changed_lost))
        lb_proxy_pool_published(proxy, pool, rebuilt || pool->changed_lost);
    pool->n_changed = 0;
    pool->changed_lost = false;
}

int lb_pool_publish(struct lb_pool *pool, lb_backend_visit_cb visit, void *ud)
{
    ev_tstamp now = pool_now(pool), t0 = ev_time();
    bool resync;
    int rc = 0;

    if (pool->rebuild) {
        rc = snapshot_rebuild(pool, now);
        pool->rebuild_seconds += ev_time() - t0;
        if (rc == 0) {
            pool->rebuild = false;
            pool->ramp_due = false;
            pool_drop_marks(pool);
            pool_replicate(pool, true);
            for (size_t i = 0; visit && i < pool->snap->n_entries; i++)
                visit(ud, pool->snap->entries[i].backend);
            pool_update_ramp_timer(pool);
            return 0;
        }
        LB_ERROR("pool",
                 "msg=\"out of memory publishing pool, keeping the previous one\" "
                 "pool=%s",
                 pool->name);
    }
    t0 = ev_time();
    resync = snapshot_update(pool, now);
    pool->ramp_due = false;
    while (pool->marked) {
        struct lb_backend *b = pool->marked;

        pool->marked = b->mark_next;
        b->mark_next = NULL;
        b->marked = false;
        if (visit && !b->removed)
            visit(ud, b);
        lb_backend_unref(b);
    }
    if (pool->snap->algo_stale)
        lb_snapshot_refresh_algo(pool->snap);
    pool_replicate(pool, resync);
    pool_update_ramp_timer(pool);
    pool->update_seconds += ev_time() - t0;
    return rc;
}

size_t lb_pool_eligible(const struct lb_pool *pool)
{
    return pool->snap->n_eligible;
}

bool lb_pool_in_panic(const struct lb_pool *pool)
{
    return pool->snap->panic;
}

bool lb_pool_zone_aware(const struct lb_pool *pool)
{
    return pool->zone[0] && pool->policy.zone_affinity > 0;
}

bool lb_pool_zone_local(const struct lb_pool *pool)
{
    return pool->snap->zone_local;
}

const struct lb_snap_entry *lb_pool_entry_of(const struct lb_backend *b)
{
    const struct lb_snapshot *s = b->pool->snap;
    size_t i;

    if (!s)
        return NULL;
    i = snapshot_index_of(s, b);
    return i == SIZE_MAX ? NULL : &s->entries[i];
}
