/*
 * Registry: applies discovery updates and operator changes to pools, and
 * publishes them (see registry.h).
 *
 * Updates arrive one by one and only mark pools dirty; commit() publishes
 * each dirty pool once, so a listing of 10,000 backends builds one snapshot,
 * not 10,000.  Health and DNS changes publish once per loop iteration, in
 * place.  Operator changes publish at once: `lbctl drain` has taken effect
 * when it returns.
 */
#include "registry.h"
#include "addr_policy.h"
#include "drain.h"
#include "lb_addr.h"
#include "lb_log.h"
#include "lb_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct lb_subscription {
    struct lb_subscription *next;
    lb_event_cb cb;
    void *ud;
    bool dead; /* unsubscribed while notifying; freed afterwards */
};

/* An event waiting for the publish that makes it true. */
struct lb_queued_event {
    enum lb_event_type type;
    struct lb_pool *pool;
    struct lb_backend *backend; /* one reference; NULL for policy events */
    const char *detail;         /* static */
    int64_t unix_ms;
};

static void registry_publisher_cb(struct ev_loop *loop, ev_prepare *w, int revents);

int lb_registry_init(struct lb_registry *r, struct ev_loop *loop, size_t n_pools,
                     const char *const *names, const char *const *listens)
{
    memset(r, 0, sizeof(*r));
    r->loop = loop;
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
    if (r->loop)
        ev_prepare_stop(r->loop, &r->publisher);
    for (size_t i = 0; i < r->n_events; i++)
        if (r->events[i].backend)
            lb_backend_unref(r->events[i].backend);
    free(r->events);
    r->events = NULL;
    r->n_events = r->cap_events = 0;
    for (size_t i = 0; i < r->n_pools; i++)
        lb_pool_destroy(&r->pools[i]);
    free(r->pools);
    r->pools = NULL;
    r->n_pools = 0;
    while (r->subs) {
        struct lb_subscription *s = r->subs;

        r->subs = s->next;
        free(s);
    }
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

/* ------------------------------------------------------------ events -- */

static int64_t now_unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Queues an event for the next publish (nothing when no one listens). */
static void notify(struct lb_registry *r, enum lb_event_type type, struct lb_pool *pool,
                   struct lb_backend *b, const char *detail)
{
    struct lb_queued_event *q;

    if (!r->subs)
        return;
    if (r->n_events == r->cap_events) {
        size_t cap = r->cap_events ? r->cap_events * 2 : 16;
        struct lb_queued_event *v = realloc(r->events, cap * sizeof(*v));

        if (!v) {
            r->events_dropped++;
            return;
        }
        r->events = v;
        r->cap_events = cap;
    }
    q = &r->events[r->n_events++];
    q->type = type;
    q->pool = pool;
    q->backend = b;
    q->detail = detail ? detail : "";
    q->unix_ms = now_unix_ms();
    if (b)
        lb_backend_ref(b);
    lb_registry_schedule_publish(r);
}

static void deliver(struct lb_registry *r, const struct lb_queued_event *q)
{
    struct lb_backend_info info;
    struct lb_event ev = {
        .type = q->type,
        .pool = q->pool->name,
        .id = q->backend ? q->backend->id : NULL,
        .backend = NULL,
        .unix_ms = q->unix_ms,
        .detail = q->detail,
    };

    if (q->backend) {
        lb_backend_info(q->backend, &info);
        ev.backend = &info;
    }
    r->notifying++;
    for (struct lb_subscription *s = r->subs; s; s = s->next)
        if (!s->dead)
            s->cb(s->ud, &ev);
    r->notifying--;
}

/* Delivers the queued events in order; subscribers may queue more meanwhile. */
static void deliver_events(struct lb_registry *r)
{
    struct lb_subscription **pp;

    while (r->n_events) {
        struct lb_queued_event *batch = r->events;
        size_t n = r->n_events;

        r->events = NULL;
        r->n_events = r->cap_events = 0;
        for (size_t i = 0; i < n; i++) {
            deliver(r, &batch[i]);
            if (batch[i].backend)
                lb_backend_unref(batch[i].backend);
        }
        free(batch);
    }
    if (r->notifying)
        return;
    for (pp = &r->subs; *pp;) {
        if ((*pp)->dead) {
            struct lb_subscription *dead = *pp;

            *pp = dead->next;
            free(dead);
        } else {
            pp = &(*pp)->next;
        }
    }
}

struct lb_subscription *lb_control_subscribe(struct lb_registry *r, lb_event_cb cb, void *ud)
{
    struct lb_subscription *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->cb = cb;
    s->ud = ud;
    s->next = r->subs;
    r->subs = s;
    return s;
}

void lb_control_unsubscribe(struct lb_registry *r, struct lb_subscription *s)
{
    struct lb_subscription **pp;

    if (!s)
        return;
    if (r->notifying) {
        s->dead = true;
        return;
    }
    for (pp = &r->subs; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            free(s);
            return;
        }
    }
}

/* ----------------------------------------------------------- publish -- */

/* Reports b if its drain just completed. */
static void report_drained(struct lb_registry *r, struct lb_backend *b)
{
    if (b->drain && b->active == 0 && !b->drained_reported && !b->removed) {
        b->drained_reported = true;
        LB_INFO("pool", "msg=\"backend drained\" pool=%s backend=%s", b->pool->name, b->id);
        notify(r, LB_EVENT_DRAINED, b->pool, b, "no active connections left");
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
    deliver_events(r);
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
    notify(r, type, b->pool, b, detail);
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
    char qaddr[LB_ADDR_MAX + 8];

    if (!m) {
        LB_ERROR("pool", "msg=\"out of memory, backend not added\" pool=%s backend=%s", pool->name,
                 id);
        return;
    }
    lb_log_quote(qaddr, sizeof(qaddr), spec->addr);
    if (m->backend && strcmp(m->backend->spec.addr, spec->addr) == 0) {
        /* Same address: update in place, open connections keep counting here. */
        m->backend->spec = *spec;
        lb_pool_member_changed(pool, m);
        LB_INFO("pool", "msg=\"backend changed\" pool=%s backend=%s addr=%s weight=%d", pool->name,
                id, qaddr, spec->weight);
        notify(r, LB_EVENT_BACKEND_CHANGED, pool, m->backend, "registration changed");
        return;
    }
    b = lb_pool_attach_backend(pool, m, spec);
    if (!b) {
        LB_ERROR("pool", "msg=\"out of memory, backend not added\" pool=%s backend=%s", pool->name,
                 id);
        lb_pool_forget_if_empty(pool, m);
        return;
    }
    LB_INFO("pool", "msg=\"backend added\" pool=%s backend=%s addr=%s weight=%d", pool->name, id,
            qaddr, spec->weight);
    notify(r, LB_EVENT_BACKEND_ADDED, pool, b, "registered");
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
    notify(r, LB_EVENT_BACKEND_REMOVED, pool, b, "deregistered or lease expired");
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
        lb_pool_member_changed(pool, m);
        notify(r, LB_EVENT_BACKEND_CHANGED, pool, m->backend,
               ov ? "cluster override set" : "cluster override cleared");
    } else {
        lb_pool_forget_if_empty(pool, m);
    }
}

static void apply_policy(struct lb_registry *r, struct lb_pool *pool,
                         const struct lb_pool_policy *policy)
{
    struct lb_pool_policy def;

    if (!policy) {
        lb_pool_policy_defaults(&def);
        policy = &def;
    }
    pool->policy = *policy;
    lb_pool_policy_changed(pool);
    LB_INFO("pool",
            "msg=\"policy applied\" pool=%s algorithm=%s connect_timeout_ms=%lld "
            "idle_timeout_ms=%lld retries=%d",
            pool->name, lb_algo_name(policy->algorithm), (long long)policy->connect_timeout_ms,
            (long long)policy->idle_timeout_ms, policy->retries);
    notify(r, LB_EVENT_POLICY_CHANGED, pool, NULL, "policy changed");
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

/* ----------------------------------------------------------- control -- */

void lb_control_list_pools(struct lb_registry *r, lb_pool_info_cb cb, void *ud)
{
    for (size_t i = 0; i < r->n_pools; i++) {
        struct lb_pool *p = &r->pools[i];
        struct lb_pool_info info = {
            .name = p->name,
            .listen = p->listen,
            .algorithm = p->snap->algo->name,
            .backends = (uint32_t)p->snap->n_entries,
            .eligible = (uint32_t)p->snap->n_eligible,
            .active = p->active,
            .total = p->total,
        };

        cb(ud, &info);
    }
}

static void list_pool_backends(struct lb_pool *p, lb_backend_info_cb cb, void *ud)
{
    for (size_t i = 0; i < p->snap->n_entries; i++) {
        struct lb_backend_info info;

        lb_backend_info(p->snap->entries[i].backend, &info);
        cb(ud, &info);
    }
}

int lb_control_list_backends(struct lb_registry *r, const char *pool, lb_backend_info_cb cb,
                             void *ud)
{
    struct lb_pool *p;

    if (!pool || !*pool) {
        for (size_t i = 0; i < r->n_pools; i++)
            list_pool_backends(&r->pools[i], cb, ud);
        return 0;
    }
    p = lb_registry_find_pool(r, pool);
    if (!p)
        return -ENOENT;
    list_pool_backends(p, cb, ud);
    return 0;
}

int lb_control_get_backend(struct lb_registry *r, const char *pool, const char *id,
                           lb_backend_info_cb cb, void *ud)
{
    struct lb_pool *p = lb_registry_find_pool(r, pool);
    struct lb_member *m = p ? lb_pool_find(p, id) : NULL;
    struct lb_backend_info info;

    if (!m || !m->backend)
        return -ENOENT;
    lb_backend_info(m->backend, &info);
    cb(ud, &info);
    return 0;
}

static int change_validate(const struct lb_change *c)
{
    switch (c->kind) {
    case LB_CHANGE_DRAIN:
    case LB_CHANGE_CLEAR_WEIGHT:
        return 0;
    case LB_CHANGE_WEIGHT:
        return c->value.weight >= 0 && c->value.weight <= LB_WEIGHT_MAX ? 0 : -EINVAL;
    case LB_CHANGE_HEALTH:
        return c->value.health >= LB_HEALTH_AUTO && c->value.health <= LB_HEALTH_FORCE_DOWN
                   ? 0
                   : -EINVAL;
    }
    return -EINVAL;
}

static void change_apply_local(struct lb_member *m, const struct lb_change *c)
{
    struct lb_local_override *l = &m->local;

    switch (c->kind) {
    case LB_CHANGE_DRAIN:
        l->has_drain = true;
        l->drain = c->value.drain;
        break;
    case LB_CHANGE_WEIGHT:
        l->has_weight = true;
        l->clear_weight = false;
        l->weight = c->value.weight;
        break;
    case LB_CHANGE_CLEAR_WEIGHT:
        l->has_weight = false;
        l->clear_weight = true;
        break;
    case LB_CHANGE_HEALTH:
        l->has_health = true;
        l->health = c->value.health;
        break;
    }
}

/* A cluster-wide decision replaces this process's local tweak of the same field. */
static void change_clear_local(struct lb_member *m, const struct lb_change *c)
{
    switch (c->kind) {
    case LB_CHANGE_DRAIN:
        m->local.has_drain = false;
        break;
    case LB_CHANGE_WEIGHT:
    case LB_CHANGE_CLEAR_WEIGHT:
        m->local.has_weight = false;
        m->local.clear_weight = false;
        break;
    case LB_CHANGE_HEALTH:
        m->local.has_health = false;
        break;
    }
}

static void change_apply_override(struct lb_override *ov, const struct lb_change *c)
{
    switch (c->kind) {
    case LB_CHANGE_DRAIN:
        ov->drain = c->value.drain;
        break;
    case LB_CHANGE_WEIGHT:
        ov->has_weight = true;
        ov->weight = c->value.weight;
        break;
    case LB_CHANGE_CLEAR_WEIGHT:
        ov->has_weight = false;
        ov->weight = 0;
        break;
    case LB_CHANGE_HEALTH:
        ov->health = c->value.health;
        break;
    }
}

static bool override_is_empty(const struct lb_override *ov)
{
    return !ov->drain && !ov->has_weight && ov->health == LB_HEALTH_AUTO;
}

struct cluster_change {
    struct lb_registry *registry;
    char pool[LB_NAME_MAX];
    char id[LB_NAME_MAX];
    struct lb_change change;
    struct lb_override ov;
    bool empty;
    lb_store_done_cb done;
    void *ud;
};

static void cluster_change_done(void *arg, int status, const char *message)
{
    struct cluster_change *cc = arg;
    struct lb_pool *pool = lb_registry_find_pool(cc->registry, cc->pool);
    struct lb_member *m = pool ? lb_pool_find(pool, cc->id) : NULL;

    if (status == 0 && m) {
        /* The watch brings the same value a moment later; apply it now so the
         * change is in effect when the caller hears back. */
        change_clear_local(m, &cc->change);
        m->has_cluster_override = !cc->empty;
        m->cluster_override = cc->ov;
        if (m->backend) {
            lb_pool_member_changed(pool, m);
            notify(cc->registry, LB_EVENT_BACKEND_CHANGED, pool, m->backend,
                   "cluster override set");
        }
        lb_registry_publish(cc->registry);
    }
    cc->done(cc->ud, status, message);
    free(cc);
}

int lb_control_change(struct lb_registry *r, const char *pool, const char *id,
                      const struct lb_change *change, enum lb_scope scope, lb_store_done_cb done,
                      void *ud)
{
    struct lb_pool *p = lb_registry_find_pool(r, pool);
    struct lb_member *m = p ? lb_pool_find(p, id) : NULL;
    struct cluster_change *cc;
    int rc;

    if (!m || !m->backend)
        return -ENOENT;
    rc = change_validate(change);
    if (rc)
        return rc;
    if (scope == LB_SCOPE_LOCAL) {
        change_apply_local(m, change);
        lb_pool_member_changed(p, m);
        notify(r, LB_EVENT_BACKEND_CHANGED, p, m->backend, "local override");
        lb_registry_publish(r);
        return 0;
    }
    if (!r->store.put_override)
        return -ENOTCONN;
    cc = calloc(1, sizeof(*cc));
    if (!cc)
        return -ENOMEM;
    cc->registry = r;
    snprintf(cc->pool, sizeof(cc->pool), "%s", pool);
    snprintf(cc->id, sizeof(cc->id), "%s", id);
    cc->change = *change;
    if (m->has_cluster_override)
        cc->ov = m->cluster_override;
    change_apply_override(&cc->ov, change);
    cc->empty = override_is_empty(&cc->ov);
    cc->done = done;
    cc->ud = ud;
    rc = r->store.put_override(r->store.ctx, pool, id, cc->empty ? NULL : &cc->ov,
                               cluster_change_done, cc);
    if (rc < 0) {
        free(cc);
        return rc;
    }
    return LB_CONTROL_PENDING;
}
