/*
 * The control API (control.h) over the registry: what the admin API reads
 * (pools, backends) and changes (drain, weight, health) and how it listens
 * for events.
 *
 * A LOCAL change lands in the member's local override layer and is
 * published at once; being an in-place update of one backend it cannot
 * fail, so when the call returns the change is in effect.  A CLUSTER change
 * is written to etcd first (lb_store); only once etcd has it is it applied
 * here too (the watch brings the same value a moment later), so a failed
 * write leaves nothing applied.
 */
#include "control.h"
#include "proxy.h"
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lb_subscription *lb_control_subscribe(struct lb_registry *r, lb_event_cb cb, void *ud)
{
    return lb_events_subscribe(&r->events, cb, ud);
}

void lb_control_unsubscribe(struct lb_registry *r, struct lb_subscription *s)
{
    lb_events_unsubscribe(&r->events, s);
}

void lb_control_list_pools(struct lb_registry *r, lb_pool_info_cb cb, void *ud)
{
    for (size_t i = 0; i < r->n_pools; i++) {
        struct lb_pool *p = &r->pools[i];
        struct lb_pool_counters c;
        struct lb_pool_info info = {
            .name = p->name,
            .listen = p->listen,
            .algorithm = p->snap->algo->name,
            .backends = (uint32_t)p->snap->n_entries,
            .eligible = (uint32_t)p->snap->n_eligible,
        };

        lb_proxy_pool_counters(r->proxy, i, &c);
        info.active = c.active;
        info.total = c.total;
        info.queued = c.queue_length;
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
        /* The watch brings the same value a moment later (or brought it
         * already); apply it now so the change is in effect when the caller
         * hears back.  Whichever of the two comes second changes nothing,
         * so subscribers hear of the change once. */
        change_clear_local(m, &cc->change);
        m->has_cluster_override = !cc->empty;
        m->cluster_override = cc->ov;
        lb_registry_member_changed(cc->registry, pool, m, "cluster override");
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
        lb_registry_member_changed(r, p, m, "local override, this lbd only");
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

int lb_control_upgrade(struct lb_registry *r, const char **why)
{
    if (!r->upgrade) {
        *why = "an upgrade needs lbd started with --upgrade-socket PATH";
        return -ENOTSUP;
    }
    return r->upgrade(r->host_ud, why);
}

bool lb_control_is_ready(struct lb_registry *r)
{
    return !r->is_ready || r->is_ready(r->host_ud);
}

/* ---- added for the status page (status_page.c) ---- */

bool lb_control_pool_in_panic(struct lb_registry *r, const char *pool)
{
    struct lb_pool *p = lb_registry_find_pool(r, pool);

    return p && p->snap->panic;
}

int lb_control_pool_zone_local(struct lb_registry *r, const char *pool)
{
    struct lb_pool *p = lb_registry_find_pool(r, pool);

    if (!p || !lb_pool_zone_aware(p))
        return -1;
    return lb_pool_zone_local(p) ? 1 : 0;
}

int lb_control_sessions(struct lb_registry *r, const char *pool, const char *backend, bool kill,
                        size_t max, lb_session_query_done done, void *ud,
                        struct lb_session_query **q)
{
    struct lb_pool *p = lb_registry_find_pool(r, pool);

    if (!p)
        return -ENOENT;
    if (backend && backend[0]) {
        struct lb_member *m = lb_pool_find(p, backend);

        if (!m || !m->backend)
            return -ENOENT;
    } else if (kill) {
        return -EINVAL;
    }
    if (!r->proxy)
        return -EAGAIN;
    return lb_proxy_session_query(r->proxy, (size_t)(p - r->pools), backend, kill, max, done, ud,
                                  q);
}

void lb_control_sessions_cancel(struct lb_session_query *q)
{
    lb_proxy_session_query_cancel(q);
}
