/*
 * Registry: applies discovery updates and operator changes to pools, and
 * publishes them (see registry.h).
 *
 * Updates arrive one by one and only mark pools dirty; commit() publishes
 * each dirty pool once, so a listing of 10,000 backends builds one snapshot,
 * not 10,000.  Watch responses after the first listing, health and DNS
 * changes publish once per loop iteration (lb_registry_schedule_publish),
 * so a flood of events costs one rebuild per read, not one per event.
 * Operator changes publish at once: `lbctl drain` has taken effect when it
 * returns.
 */
#include "registry.h"
#include "addr_policy.h"
#include "drain.h"
#include "lb_addr.h"
#include "lb_log.h"
#include "lb_duration.h"
#include "lb_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void registry_publisher_cb(struct ev_loop *loop, ev_prepare *w, int revents);

int lb_registry_init(struct lb_registry *r, struct ev_loop *loop, size_t n_pools,
                     const char *const *names, const char *const *listens)
{
    memset(r, 0, sizeof(*r));
    r->loop = loop;
    lb_reaper_init(&r->reaper, loop);
    lb_events_init(&r->events, &r->reaper);
    ev_prepare_init(&r->publisher, registry_publisher_cb);
    r->pools = calloc(n_pools ? n_pools : 1, sizeof(*r->pools));
    if (!r->pools)
        return -ENOMEM;
    for (size_t i = 0; i < n_pools; i++) {
        for (size_t j = 0; j < i; j++)
            if (strcmp(names[i], names[j]) == 0)
                return -EINVAL;
        if (lb_pool_init(&r->pools[i], r, names[i], listens[i]) < 0)
            return -ENOMEM;
        r->n_pools++;
    }
    return 0;
}

void lb_registry_destroy(struct lb_registry *r)
{
    if (!r->events.reaper)
        return; /* never initialised (lbd --help, a usage error) */
    if (r->loop)
        ev_prepare_stop(r->loop, &r->publisher);
    lb_events_destroy(&r->events);
    lb_reaper_destroy(&r->reaper);
    for (size_t i = 0; i < r->n_pools; i++)
        lb_pool_destroy(&r->pools[i]);
    free(r->pools);
    r->pools = NULL;
    r->n_pools = 0;
}

void lb_registry_set_store(struct lb_registry *r, const struct lb_store *store)
{
    r->store = *store;
}

struct lb_pool *lb_registry_find_pool(struct lb_registry *r, const char *name)
{
    for (size_t i = 0; i < r->n_pools; i++)
        if (strcmp(r->pools[i].name, name) == 0)
            return &r->pools[i];
    return NULL;
}

/* ----------------------------------------------------------- publish -- */

void lb_registry_notify(struct lb_registry *r, enum lb_event_type type, struct lb_pool *pool,
                        struct lb_backend *b, const char *detail)
{
    if (lb_events_wanted(&r->events) && lb_events_queue(&r->events, type, pool, b, detail) == 0)
        lb_registry_schedule_publish(r);
}

/* Reports b if its drain just completed. */
static void report_drained(struct lb_registry *r, struct lb_backend *b)
{
    if (b->drain && b->active == 0 && !b->drained_reported && !b->removed) {
        b->drained_reported = true;
        LB_INFO("pool", "msg=\"backend drained\" pool=%s backend=%s", b->pool->name, b->id);
        lb_registry_notify(r, LB_EVENT_DRAINED, b->pool, b,
                           "drain complete: no active connections left");
    }
}

/* After a publish, for each backend it re-evaluated. */
static void published_backend(void *ud, struct lb_backend *b)
{
    struct lb_registry *r = ud;

    lb_drain_update(b);
    report_drained(r, b);
}

void lb_registry_publish(struct lb_registry *r)
{
    bool dirty = false;

    if (r->loop)
        ev_prepare_stop(r->loop, &r->publisher);
    for (size_t i = 0; i < r->n_pools; i++) {
        struct lb_pool *pool = &r->pools[i];

        if (lb_pool_is_dirty(pool))
            lb_pool_publish(pool, published_backend, r);
        dirty |= lb_pool_is_dirty(pool); /* a rebuild that ran out of memory */
    }
    lb_events_deliver(&r->events);
    if (dirty)
        lb_registry_schedule_publish(r);
}

void lb_registry_schedule_publish(struct lb_registry *r)
{
    if (r->loop && !ev_is_active(&r->publisher))
        ev_prepare_start(r->loop, &r->publisher);
}

static void registry_publisher_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct lb_registry *r = lb_container_of(w, struct lb_registry, publisher);

    lb_registry_publish(r);
}

void lb_registry_backend_changed(struct lb_registry *r, struct lb_backend *b,
                                 enum lb_event_type type, const char *detail)
{
    if (b->removed)
        return;
    lb_pool_mark(b->pool, b);
    lb_registry_notify(r, type, b->pool, b, detail);
}

/* What the operator's overrides make of a backend: what an event about them tells. */
struct intent {
    bool drain;
    int weight; /* registered or overridden */
    bool has_weight_override;
    enum lb_health_override health;
};

static void intent_of(const struct lb_backend *b, struct intent *out)
{
    out->drain = b->drain;
    out->weight = b->base_weight;
    out->has_weight_override = b->has_weight_override;
    out->health = b->health_override;
}

/* Appends ", text" (or text) to buf. */
static void describe_add(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void describe_add(char *buf, size_t size, const char *fmt, ...)
{
    size_t len = strlen(buf);
    va_list ap;

    if (len && len + 2 < size) {
        memcpy(buf + len, ", ", 3);
        len += 2;
    }
    va_start(ap, fmt);
    vsnprintf(buf + len, size - len, fmt, ap);
    va_end(ap);
}

/* "drained, weight 100 -> 50" into buf; false when the two say the same. */
static bool intent_describe(const struct intent *was, const struct intent *now, char *buf,
                            size_t size)
{
    buf[0] = '\0';
    if (was->drain != now->drain)
        describe_add(buf, size, "%s", now->drain ? "drained" : "undrained");
    if (was->weight != now->weight)
        describe_add(buf, size, "weight %d -> %d", was->weight, now->weight);
    else if (was->has_weight_override != now->has_weight_override)
        describe_add(buf, size, "weight override %s (weight %d)",
                     now->has_weight_override ? "set" : "cleared", now->weight);
    if (was->health != now->health)
        describe_add(buf, size, "%s",
                     now->health == LB_HEALTH_FORCE_UP     ? "health forced up"
                     : now->health == LB_HEALTH_FORCE_DOWN ? "health forced down"
                                                           : "health back to the checks");
    return buf[0] != '\0';
}

void lb_registry_member_changed(struct lb_registry *r, struct lb_pool *pool, struct lb_member *m,
                                const char *layer)
{
    struct intent was, now;
    char what[160], detail[LB_EVENT_DETAIL_MAX];

    if (!m->backend)
        return;
    intent_of(m->backend, &was);
    lb_pool_member_changed(pool, m);
    intent_of(m->backend, &now);
    if (!intent_describe(&was, &now, what, sizeof(what)))
        return; /* e.g. etcd echoing the override this lbd applied when its write was acknowledged
                 */
    snprintf(detail, sizeof(detail), "%s by operator (%s)", what, layer);
    lb_registry_notify(r, LB_EVENT_BACKEND_CHANGED, pool, m->backend, detail);
}

void lb_registry_connection_closed(struct lb_registry *r, struct lb_backend *b)
{
    if (b->drain && b->active == 0)
        report_drained(r, b);
}

void lb_registry_check_address(struct lb_registry *r, struct lb_backend *b)
{
    char addr[64];
    const char *why;

    if (!b->resolved || !r->addr_policy) {
        b->refused = false;
        return;
    }
    why = lb_addr_policy_refuses(r->addr_policy, (const struct sockaddr *)&b->sa);
    if (why && !b->refused) {
        r->backends_refused++;
        LB_WARN("pool",
                "msg=\"backend address refused, no traffic will be sent to it\" pool=%s "
                "backend=%s addr=%s address=%s reason=\"%s\"",
                b->pool->name, b->id, b->spec.addr,
                lb_addr_format((const struct sockaddr *)&b->sa, addr, sizeof(addr)), why);
    }
    b->refused = why != NULL;
}

/* ----------------------------------------------------------- updates -- */

static void apply_backend_put(struct lb_registry *r, struct lb_pool *pool, const char *id,
                              const struct lb_backend_spec *spec)
{
    struct lb_member *m = lb_pool_get_member(pool, id);
    struct lb_backend *b;
    char qaddr[LB_ADDR_MAX + 8], added[2 * LB_ADDR_MAX + 64]; /* cut to LB_EVENT_DETAIL_MAX */

    if (!m) {
        LB_ERROR("pool", "msg=\"out of memory, backend not added\" pool=%s backend=%s", pool->name,
                 id);
        return;
    }
    lb_log_quote(qaddr, sizeof(qaddr), spec->addr);
    if (m->backend && strcmp(m->backend->spec.addr, spec->addr) == 0) {
        /* Same address: update in place, open connections keep counting here. */
        struct lb_backend_spec was = m->backend->spec;
        char detail[LB_EVENT_DETAIL_MAX] = "";

        if (was.weight == spec->weight && strcmp(was.zone, spec->zone) == 0) {
            LB_DEBUG("pool", "msg=\"backend registered again, unchanged\" pool=%s backend=%s",
                     pool->name, id);
            return;
        }
        m->backend->spec = *spec;
        lb_pool_member_changed(pool, m);
        LB_INFO("pool", "msg=\"backend changed\" pool=%s backend=%s addr=%s weight=%d", pool->name,
                id, qaddr, spec->weight);
        if (was.weight != spec->weight)
            describe_add(detail, sizeof(detail), "registered weight %d -> %d", was.weight,
                         spec->weight);
        if (strcmp(was.zone, spec->zone) != 0)
            describe_add(detail, sizeof(detail), "zone \"%s\" -> \"%s\"", was.zone, spec->zone);
        lb_registry_notify(r, LB_EVENT_BACKEND_CHANGED, pool, m->backend, detail);
        return;
    }
    if (m->backend)
        snprintf(added, sizeof(added), "registered again at a new address: %s -> %s",
                 m->backend->spec.addr, spec->addr);
    else
        snprintf(added, sizeof(added), "registered at %s, weight %d", spec->addr, spec->weight);
    b = lb_pool_attach_backend(pool, m, spec);
    if (!b) {
        LB_ERROR("pool", "msg=\"out of memory, backend not added\" pool=%s backend=%s", pool->name,
                 id);
        lb_pool_forget_if_empty(pool, m);
        return;
    }
    LB_INFO("pool", "msg=\"backend added\" pool=%s backend=%s addr=%s weight=%d", pool->name, id,
            qaddr, spec->weight);
    lb_registry_notify(r, LB_EVENT_BACKEND_ADDED, pool, b, added);
}

static void apply_backend_delete(struct lb_registry *r, struct lb_pool *pool, const char *id)
{
    struct lb_member *m = lb_pool_find(pool, id);
    struct lb_backend *b;

    if (!m || !m->backend)
        return;
    b = m->backend;
    LB_INFO("pool", "msg=\"backend removed\" pool=%s backend=%s active=%llu", pool->name, id,
            (unsigned long long)b->active);
    lb_registry_notify(r, LB_EVENT_BACKEND_REMOVED, pool, b,
                       "removed: key deleted or lease expired");
    lb_pool_retire_backend(pool, m);
    lb_pool_forget_if_empty(pool, m);
}

static void apply_override(struct lb_registry *r, struct lb_pool *pool, const char *id,
                           const struct lb_override *ov)
{
    struct lb_member *m = ov ? lb_pool_get_member(pool, id) : lb_pool_find(pool, id);

    if (!m)
        return;
    if (ov) {
        char weight[16];

        m->has_cluster_override = true;
        m->cluster_override = *ov;
        if (ov->has_weight)
            snprintf(weight, sizeof(weight), "%d", ov->weight);
        else
            snprintf(weight, sizeof(weight), "registered");
        LB_INFO("pool", "msg=\"override set\" pool=%s backend=%s drain=%s weight=%s health=%s",
                pool->name, id, ov->drain ? "true" : "false", weight,
                ov->health == LB_HEALTH_FORCE_UP     ? "up"
                : ov->health == LB_HEALTH_FORCE_DOWN ? "down"
                                                     : "auto");
    } else {
        m->has_cluster_override = false;
        memset(&m->cluster_override, 0, sizeof(m->cluster_override));
        LB_INFO("pool", "msg=\"override cleared\" pool=%s backend=%s", pool->name, id);
    }
    if (m->backend) {
        lb_registry_member_changed(r, pool, m, "cluster override");
    } else {
        lb_pool_forget_if_empty(pool, m);
    }
}

/* ", max_conns 0 -> 1, queue_timeout 0s -> 30s": what an operator changed, for the event. */
static void policy_describe(const struct lb_pool_policy *a, const struct lb_pool_policy *b,
                            char *buf, size_t size)
{
    /* The numbers of a policy: a duration (int64_t ms, `ms`) or an int. */
    static const struct {
        const char *name;
        size_t off;
        bool ms;
    } fields[] = {
        {"health.interval", offsetof(struct lb_pool_policy, health.interval_ms), true},
        {"health.timeout", offsetof(struct lb_pool_policy, health.timeout_ms), true},
        {"health.rise", offsetof(struct lb_pool_policy, health.rise), false},
        {"health.fall", offsetof(struct lb_pool_policy, health.fall), false},
        {"connect_timeout", offsetof(struct lb_pool_policy, connect_timeout_ms), true},
        {"idle_timeout", offsetof(struct lb_pool_policy, idle_timeout_ms), true},
        {"retries", offsetof(struct lb_pool_policy, retries), false},
        {"max_conns", offsetof(struct lb_pool_policy, max_conns), false},
        {"slow_start", offsetof(struct lb_pool_policy, slow_start_ms), true},
        {"drain_timeout", offsetof(struct lb_pool_policy, drain_timeout_ms), true},
        {"panic_threshold", offsetof(struct lb_pool_policy, panic_threshold), false},
        {"zone_affinity", offsetof(struct lb_pool_policy, zone_affinity), false},
        {"queue_timeout", offsetof(struct lb_pool_policy, queue_timeout_ms), true},
    };

    if (a->algorithm != b->algorithm)
        describe_add(buf, size, "algorithm %s -> %s", lb_algorithm_name(a->algorithm),
                     lb_algorithm_name(b->algorithm));
    if (a->health.type != b->health.type)
        describe_add(buf, size, "health checks %s",
                     b->health.type == LB_CHECK_NONE   ? "off"
                     : b->health.type == LB_CHECK_HTTP ? "http"
                                                       : "tcp");
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        const char *pa = (const char *)a + fields[i].off, *pb = (const char *)b + fields[i].off;
        int64_t x, y;
        int xi, yi;
        char tx[32], ty[32];

        if (fields[i].ms) {
            memcpy(&x, pa, sizeof(x));
            memcpy(&y, pb, sizeof(y));
            if (x != y)
                describe_add(buf, size, "%s %s -> %s", fields[i].name,
                             lb_duration_format(x, tx, sizeof(tx)),
                             lb_duration_format(y, ty, sizeof(ty)));
        } else {
            memcpy(&xi, pa, sizeof(xi));
            memcpy(&yi, pb, sizeof(yi));
            if (xi != yi)
                describe_add(buf, size, "%s %d -> %d", fields[i].name, xi, yi);
        }
    }
}

static void apply_policy(struct lb_registry *r, struct lb_pool *pool,
                         const struct lb_pool_policy *policy)
{
    struct lb_pool_policy def, was = pool->policy;
    char detail[LB_EVENT_DETAIL_MAX];

    if (!policy) {
        lb_pool_policy_defaults(&def);
        policy = &def;
    }
    pool->policy = *policy;
    lb_pool_policy_changed(pool);
    LB_INFO("pool",
            "msg=\"policy applied\" pool=%s algorithm=%s connect_timeout_ms=%lld "
            "idle_timeout_ms=%lld retries=%d max_conns=%d queue_timeout_ms=%lld",
            pool->name, lb_algorithm_name(policy->algorithm), (long long)policy->connect_timeout_ms,
            (long long)policy->idle_timeout_ms, policy->retries, policy->max_conns,
            (long long)policy->queue_timeout_ms);
    if (policy->queue_timeout_ms > 0 && policy->max_conns <= 0)
        LB_WARN("pool",
                "msg=\"queue_timeout has no effect without max_conns: no backend is ever full, "
                "so no client waits; set max_conns to queue clients\" pool=%s",
                pool->name);
    snprintf(detail, sizeof(detail), "%s",
             policy == &def ? "policy deleted: defaults apply" : "policy changed");
    policy_describe(&was, policy, detail, sizeof(detail));
    lb_registry_notify(r, LB_EVENT_POLICY_CHANGED, pool, NULL, detail);
}

static void sink_apply(void *ctx, const struct lb_update *u)
{
    struct lb_registry *r = ctx;
    struct lb_pool *pool = lb_registry_find_pool(r, u->pool);

    if (!pool) {
        r->updates_ignored++;
        LB_DEBUG("pool", "msg=\"update for a pool this lbd does not serve, ignored\" pool=%s",
                 u->pool);
        return;
    }
    r->updates_applied++;
    switch (u->kind) {
    case LB_UPDATE_BACKEND_PUT:
        apply_backend_put(r, pool, u->id, &u->u.backend);
        break;
    case LB_UPDATE_BACKEND_DELETE:
        apply_backend_delete(r, pool, u->id);
        break;
    case LB_UPDATE_OVERRIDE_PUT:
        apply_override(r, pool, u->id, &u->u.override);
        break;
    case LB_UPDATE_OVERRIDE_DELETE:
        apply_override(r, pool, u->id, NULL);
        break;
    case LB_UPDATE_POLICY_PUT:
        apply_policy(r, pool, &u->u.policy);
        break;
    case LB_UPDATE_POLICY_DELETE:
        apply_policy(r, pool, NULL);
        break;
    }
}

static void sink_commit(void *ctx)
{
    lb_registry_publish(ctx);
}

struct lb_update_sink lb_registry_sink(struct lb_registry *r)
{
    struct lb_update_sink sink = {.apply = sink_apply, .commit = sink_commit, .ctx = r};

    return sink;
}
