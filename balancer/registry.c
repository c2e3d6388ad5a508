/*
 * Registry: applies discovery updates and operator changes to pools.
 *
 * Updates arrive one by one and only mark pools dirty; commit() publishes
 * each dirty pool once, so a listing of 10,000 backends builds one snapshot,
 * not 10,000.  Operator changes publish at once: `lbctl drain` has taken
 * effect when it returns.
 */
#include "registry.h"
#include "dns.h"
#include "drain.h"
#include "health.h"
#include "lb_log.h"

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

static const char *const algorithm_names[] = {"wrr", "leastconn", "p2c", "maglev"};

int lb_registry_init(struct lb_registry *r, struct ev_loop *loop, size_t n_pools,
                     const char *const *names, const char *const *listens)
{
    memset(r, 0, sizeof(*r));
    r->loop = loop;
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

static void notify(struct lb_registry *r, enum lb_event_type type, struct lb_pool *pool,
                   struct lb_backend *b, const char *id, const char *detail)
{
    struct lb_backend_info info;
    struct lb_event ev = {
        .type = type,
        .pool = pool->name,
        .id = id,
        .backend = NULL,
        .unix_ms = now_unix_ms(),
        .detail = detail ? detail : "",
    };
    struct lb_subscription **pp;

    if (!r->subs)
        return;
    if (b) {
        lb_backend_info(b, &info);
        ev.backend = &info;
    }
    r->notifying++;
    for (struct lb_subscription *s = r->subs; s; s = s->next)
        if (!s->dead)
            s->cb(s->ud, &ev);
    r->notifying--;
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

/* Reports backends of `pool` whose drain just completed. */
static void report_drained(struct lb_registry *r, struct lb_pool *pool)
{
    for (size_t i = 0; i < pool->snap->n_backends; i++) {
        struct lb_backend *b = pool->snap->backends[i];

        if (b->drain && b->active == 0 && !b->drained_reported) {
            b->drained_reported = true;
            LB_INFO("pool", "msg=\"backend drained\" pool=%s backend=%s", pool->name, b->id);
            notify(r, LB_EVENT_DRAINED, pool, b, b->id, "no active connections left");
        }
    }
}

static int publish(struct lb_registry *r, struct lb_pool *pool)
{
    int rc = lb_pool_publish(pool);

    if (rc == 0) {
        for (size_t i = 0; i < pool->snap->n_backends; i++)
            lb_drain_update(pool->snap->backends[i], r->loop);
        report_drained(r, pool);
    }
    return rc;
}

void lb_registry_backend_changed(struct lb_registry *r, struct lb_backend *b,
                                 enum lb_event_type type, const char *detail)
{
    if (b->removed)
        return;
    publish(r, b->pool);
    notify(r, type, b->pool, b, b->id, detail);
}

void lb_registry_connection_closed(struct lb_registry *r, struct lb_backend *b)
{
    if (b->drain && b->active == 0 && !b->drained_reported && !b->removed) {
        b->drained_reported = true;
        LB_INFO("pool", "msg=\"backend drained\" pool=%s backend=%s", b->pool->name, b->id);
        notify(r, LB_EVENT_DRAINED, b->pool, b, b->id, "no active connections left");
    }
}

/* ----------------------------------------------------------- updates -- */

static void apply_backend_put(struct lb_registry *r, struct lb_pool *pool, const char *id,
                              const struct lb_backend_spec *spec)
{
    struct lb_member *m = lb_pool_get_member(pool, id);
    struct lb_backend *b;
    char qaddr[LB_ADDR_MAX + 8];

    if (!m) {
        LB_ERROR("pool", "msg=\"out of memory, backend not added\" pool=%s backend=%s",
                 pool->name, id);
        return;
    }
    lb_log_quote(qaddr, sizeof(qaddr), spec->addr);
    if (m->backend && strcmp(m->backend->spec.addr, spec->addr) == 0) {
        /* Same address: update in place, open connections keep counting here. */
        m->backend->spec = *spec;
        pool->dirty = true;
        LB_INFO("pool", "msg=\"backend changed\" pool=%s backend=%s addr=%s weight=%d", pool->name,
                id, qaddr, spec->weight);
        notify(r, LB_EVENT_BACKEND_CHANGED, pool, m->backend, id, "registration changed");
        return;
    }
    b = lb_backend_new(pool, id, spec);
    if (!b) {
        LB_ERROR("pool", "msg=\"out of memory, backend not added\" pool=%s backend=%s",
                 pool->name, id);
        lb_pool_forget_if_empty(pool, m);
        return;
    }
    /* New address: the old backend finishes its connections on its own. */
    lb_pool_retire_backend(m);
    m->backend = b;
    if (r->loop) {
        b->ramp_start = ev_now(r->loop);
        lb_health_start(b, r->loop);
    }
    lb_dns_start(b);
    pool->dirty = true;
    LB_INFO("pool", "msg=\"backend added\" pool=%s backend=%s addr=%s weight=%d", pool->name, id,
            qaddr, spec->weight);
    notify(r, LB_EVENT_BACKEND_ADDED, pool, b, id, "registered");
}

static void apply_backend_delete(struct lb_registry *r, struct lb_pool *pool, const char *id)
{
    struct lb_member *m = lb_pool_find(pool, id);
    struct lb_backend *b;

    if (!m || !m->backend)
        return;
    b = m->backend;
    b->removed = true;
    pool->dirty = true;
    LB_INFO("pool", "msg=\"backend removed\" pool=%s backend=%s active=%llu", pool->name, id,
            (unsigned long long)b->active);
    notify(r, LB_EVENT_BACKEND_REMOVED, pool, b, id, "deregistered or lease expired");
    lb_pool_retire_backend(m);
    lb_pool_forget_if_empty(pool, m);
}

static void apply_override(struct lb_registry *r, struct lb_pool *pool, const char *id,
                           const struct lb_override *ov)
{
    struct lb_member *m = ov ? lb_pool_get_member(pool, id) : lb_pool_find(pool, id);

    if (!m)
        return;
    if (ov) {
        m->has_cluster_override = true;
        m->cluster_override = *ov;
    } else {
        m->has_cluster_override = false;
        memset(&m->cluster_override, 0, sizeof(m->cluster_override));
    }
    pool->dirty = true;
    LB_INFO("pool", "msg=\"override %s\" pool=%s backend=%s drain=%s weight=%d health=%d",
            ov ? "set" : "cleared", pool->name, id, ov && ov->drain ? "true" : "false",
            ov && ov->has_weight ? ov->weight : -1, ov ? (int)ov->health : 0);
    if (m->backend)
        notify(r, LB_EVENT_BACKEND_CHANGED, pool, m->backend, id, "cluster override");
    else
        lb_pool_forget_if_empty(pool, m);
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
    pool->dirty = true;
    for (size_t i = 0; i < pool->n_members; i++)
        if (pool->members[i]->backend)
            lb_health_restart(pool->members[i]->backend, r->loop);
    LB_INFO("pool", "msg=\"policy applied\" pool=%s algorithm=%s connect_timeout_ms=%lld "
            "idle_timeout_ms=%lld retries=%d", pool->name, algorithm_names[policy->algorithm],
            (long long)policy->connect_timeout_ms, (long long)policy->idle_timeout_ms,
            policy->retries);
    notify(r, LB_EVENT_POLICY_CHANGED, pool, NULL, NULL, "policy changed");
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
    struct lb_registry *r = ctx;

    for (size_t i = 0; i < r->n_pools; i++)
        if (r->pools[i].dirty)
            publish(r, &r->pools[i]);
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
            .backends = (uint32_t)p->snap->n_backends,
            .eligible = (uint32_t)p->snap->n_eligible,
            .active = p->active,
            .total = p->total,
        };

        cb(ud, &info);
    }
}

static void list_pool_backends(struct lb_pool *p, lb_backend_info_cb cb, void *ud)
{
    for (size_t i = 0; i < p->snap->n_backends; i++) {
        struct lb_backend_info info;

        lb_backend_info(p->snap->backends[i], &info);
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
        publish(cc->registry, pool);
        if (m->backend)
            notify(cc->registry, LB_EVENT_BACKEND_CHANGED, pool, m->backend, m->id,
                   "cluster override");
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
        rc = publish(r, p);
        if (rc == 0)
            notify(r, LB_EVENT_BACKEND_CHANGED, p, m->backend, id, "local override");
        return rc;
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
