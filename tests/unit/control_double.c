/*
 * Test double of the pool registry behind control.h (see control_double.h).
 * Subscribers are kept in a list; one removed while events are being
 * delivered is only marked, and unlinked once delivery is over, so the
 * "unsubscribe from inside the callback" promise of control.h holds.
 */
#include "control_double.h"

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define MAX_POOLS 8
#define MAX_BACKENDS 64

struct double_pool {
    char name[LB_NAME_MAX];
    char listen[LB_ADDR_MAX];
    char algorithm[16];
};

struct double_backend {
    char pool[LB_NAME_MAX];
    char id[LB_NAME_MAX];
    char addr[LB_ADDR_MAX];
    uint32_t weight;
    struct lb_override ov;
    uint64_t active, total;
    bool stuck;
};

struct lb_subscription {
    lb_event_cb cb;
    void *ud;
    bool dead;
    struct lb_subscription *next;
};

struct store_op {
    struct lb_registry *r;
    ev_timer timer;
    char pool[LB_NAME_MAX], id[LB_NAME_MAX];
    struct lb_change change;
    lb_store_done_cb done;
    void *ud;
    struct store_op *next;
};

struct lb_registry {
    struct ev_loop *loop;
    struct double_pool pools[MAX_POOLS];
    size_t n_pools;
    struct double_backend backends[MAX_BACKENDS];
    size_t n_backends;
    struct lb_subscription *subs;
    int delivering;
    enum lb_double_store store;
    double store_delay_ms;
    struct store_op *ops;
    ev_timer drain_timer;
    ev_timer ticker;
    char tick_pool[LB_NAME_MAX], tick_id[LB_NAME_MAX];
};

static int64_t now_ms(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static struct double_pool *find_pool(struct lb_registry *r, const char *name)
{
    for (size_t i = 0; i < r->n_pools; i++)
        if (strcmp(r->pools[i].name, name) == 0)
            return &r->pools[i];
    return NULL;
}

static struct double_backend *find_backend(struct lb_registry *r, const char *pool,
                                           const char *id)
{
    for (size_t i = 0; i < r->n_backends; i++)
        if (strcmp(r->backends[i].pool, pool) == 0 && strcmp(r->backends[i].id, id) == 0)
            return &r->backends[i];
    return NULL;
}

static void fill_info(const struct double_backend *b, struct lb_backend_info *info)
{
    memset(info, 0, sizeof(*info));
    info->pool = b->pool;
    info->id = b->id;
    info->addr = b->addr;
    info->zone = "a";
    info->weight = b->weight;
    info->has_weight_override = b->ov.has_weight;
    info->weight_override = (uint32_t)b->ov.weight;
    info->drain = b->ov.drain;
    info->drained = b->ov.drain && b->active == 0;
    info->health_override = b->ov.health;
    info->health = b->ov.health == LB_HEALTH_FORCE_DOWN ? LB_HEALTH_DOWN : LB_HEALTH_UP;
    info->effective_weight = info->drain || info->health == LB_HEALTH_DOWN ? 0
                             : b->ov.has_weight                            ? (uint32_t)b->ov.weight
                                                                           : b->weight;
    info->active = b->active;
    info->total = b->total;
}

static void emit(struct lb_registry *r, enum lb_event_type type, const struct double_backend *b,
                 const char *detail)
{
    struct lb_backend_info info;
    struct lb_event ev = {.type = type, .unix_ms = now_ms(), .detail = detail};
    struct lb_subscription **pp;

    fill_info(b, &info);
    ev.pool = b->pool;
    ev.id = b->id;
    ev.backend = &info;
    r->delivering++;
    for (struct lb_subscription *s = r->subs; s; s = s->next)
        if (!s->dead)
            s->cb(s->ud, &ev);
    r->delivering--;
    if (r->delivering)
        return;
    for (pp = &r->subs; *pp;) {
        struct lb_subscription *s = *pp;

        if (s->dead) {
            *pp = s->next;
            free(s);
        } else {
            pp = &s->next;
        }
    }
}

static void drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_registry *r = w->data;

    for (size_t i = 0; i < r->n_backends; i++) {
        struct double_backend *b = &r->backends[i];

        if (!b->ov.drain || b->active == 0 || b->stuck)
            continue;
        if (--b->active == 0)
            emit(r, LB_EVENT_DRAINED, b, "last connection closed");
    }
}

static void ticker_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_registry *r = w->data;
    struct double_backend *b = find_backend(r, r->tick_pool, r->tick_id);

    if (b) {
        b->total++;
        emit(r, LB_EVENT_BACKEND_CHANGED, b, "tick");
    }
}

struct lb_registry *lb_double_new(struct ev_loop *loop)
{
    struct lb_registry *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    r->loop = loop;
    r->store = LB_DOUBLE_STORE_OK;
    r->store_delay_ms = 5;
    ev_timer_init(&r->drain_timer, drain_cb, 0.02, 0.02);
    r->drain_timer.data = r;
    ev_timer_start(loop, &r->drain_timer);
    ev_init(&r->ticker, ticker_cb);
    r->ticker.data = r;
    return r;
}

void lb_double_free(struct lb_registry *r)
{
    if (!r)
        return;
    ev_timer_stop(r->loop, &r->drain_timer);
    ev_timer_stop(r->loop, &r->ticker);
    while (r->ops) {
        struct store_op *op = r->ops;

        r->ops = op->next;
        ev_timer_stop(r->loop, &op->timer);
        free(op);
    }
    while (r->subs) {
        struct lb_subscription *s = r->subs;

        r->subs = s->next;
        free(s);
    }
    free(r);
}

int lb_double_add_pool(struct lb_registry *r, const char *name, const char *listen,
                       const char *algorithm)
{
    struct double_pool *p;

    if (r->n_pools == MAX_POOLS)
        return -ENOSPC;
    p = &r->pools[r->n_pools++];
    snprintf(p->name, sizeof(p->name), "%s", name);
    snprintf(p->listen, sizeof(p->listen), "%s", listen);
    snprintf(p->algorithm, sizeof(p->algorithm), "%s", algorithm);
    return 0;
}

int lb_double_add_backend(struct lb_registry *r, const char *pool, const char *id,
                          const char *addr, uint32_t weight, uint64_t active, bool stuck)
{
    struct double_backend *b;

    if (!find_pool(r, pool))
        return -ENOENT;
    if (r->n_backends == MAX_BACKENDS)
        return -ENOSPC;
    b = &r->backends[r->n_backends++];
    memset(b, 0, sizeof(*b));
    snprintf(b->pool, sizeof(b->pool), "%s", pool);
    snprintf(b->id, sizeof(b->id), "%s", id);
    snprintf(b->addr, sizeof(b->addr), "%s", addr);
    b->weight = weight;
    b->active = active;
    b->total = active * 10;
    b->stuck = stuck;
    return 0;
}

void lb_double_set_store(struct lb_registry *r, enum lb_double_store mode, double delay_ms)
{
    r->store = mode;
    r->store_delay_ms = delay_ms;
}

void lb_double_set_drain_step(struct lb_registry *r, double step_ms)
{
    ev_timer_stop(r->loop, &r->drain_timer);
    ev_timer_set(&r->drain_timer, step_ms / 1000.0, step_ms / 1000.0);
    ev_timer_start(r->loop, &r->drain_timer);
}

void lb_double_set_ticker(struct lb_registry *r, const char *pool, const char *id,
                          double interval_ms)
{
    ev_timer_stop(r->loop, &r->ticker);
    snprintf(r->tick_pool, sizeof(r->tick_pool), "%s", pool);
    snprintf(r->tick_id, sizeof(r->tick_id), "%s", id);
    if (interval_ms > 0) {
        ev_timer_set(&r->ticker, interval_ms / 1000.0, interval_ms / 1000.0);
        ev_timer_start(r->loop, &r->ticker);
    }
}

void lb_double_fixture(struct lb_registry *r)
{
    lb_double_add_pool(r, "web", "0.0.0.0:8080", "wrr");
    lb_double_add_pool(r, "db", "0.0.0.0:5433", "leastconn");
    lb_double_add_backend(r, "db", "d1", "10.0.1.1:5432", 100, 0, false);
    lb_double_add_backend(r, "web", "b1", "10.0.0.1:8080", 100, 0, false);
    lb_double_add_backend(r, "web", "b2", "10.0.0.2:8080", 100, 3, false);
    lb_double_add_backend(r, "web", "b3", "[fd00::3]:8080", 50, 2, true);
}

unsigned lb_double_subscribers(const struct lb_registry *r)
{
    unsigned n = 0;

    for (const struct lb_subscription *s = r->subs; s; s = s->next)
        n += !s->dead;
    return n;
}

/* ---- control.h ---- */

void lb_control_list_pools(struct lb_registry *r, lb_pool_info_cb cb, void *ud)
{
    for (size_t i = 0; i < r->n_pools; i++) {
        struct lb_pool_info info = {.name = r->pools[i].name,
                                    .listen = r->pools[i].listen,
                                    .algorithm = r->pools[i].algorithm};

        for (size_t j = 0; j < r->n_backends; j++) {
            struct lb_backend_info bi;

            if (strcmp(r->backends[j].pool, info.name) != 0)
                continue;
            fill_info(&r->backends[j], &bi);
            info.backends++;
            info.eligible += bi.effective_weight > 0;
            info.active += bi.active;
            info.total += bi.total;
        }
        cb(ud, &info);
    }
}

static int cmp_backend(const void *a, const void *b)
{
    const struct double_backend *x = *(const struct double_backend *const *)a;
    const struct double_backend *y = *(const struct double_backend *const *)b;
    int c = strcmp(x->pool, y->pool);

    return c ? c : strcmp(x->id, y->id);
}

int lb_control_list_backends(struct lb_registry *r, const char *pool, lb_backend_info_cb cb,
                             void *ud)
{
    struct double_backend *sorted[MAX_BACKENDS];
    size_t n = 0;

    if (pool && pool[0] && !find_pool(r, pool))
        return -ENOENT;
    for (size_t i = 0; i < r->n_backends; i++)
        if (!pool || !pool[0] || strcmp(r->backends[i].pool, pool) == 0)
            sorted[n++] = &r->backends[i];
    qsort(sorted, n, sizeof(sorted[0]), cmp_backend);
    for (size_t i = 0; i < n; i++) {
        struct lb_backend_info info;

        fill_info(sorted[i], &info);
        cb(ud, &info);
    }
    return 0;
}

int lb_control_get_backend(struct lb_registry *r, const char *pool, const char *id,
                           lb_backend_info_cb cb, void *ud)
{
    struct double_backend *b = find_backend(r, pool, id);
    struct lb_backend_info info;

    if (!b)
        return -ENOENT;
    fill_info(b, &info);
    cb(ud, &info);
    return 0;
}

static int apply_change(struct lb_registry *r, struct double_backend *b,
                        const struct lb_change *c)
{
    switch (c->kind) {
    case LB_CHANGE_DRAIN:
        b->ov.drain = c->value.drain;
        break;
    case LB_CHANGE_WEIGHT:
        if (c->value.weight < 0 || c->value.weight > LB_WEIGHT_MAX)
            return -EINVAL;
        b->ov.has_weight = true;
        b->ov.weight = c->value.weight;
        break;
    case LB_CHANGE_CLEAR_WEIGHT:
        b->ov.has_weight = false;
        break;
    case LB_CHANGE_HEALTH:
        b->ov.health = c->value.health;
        break;
    }
    emit(r, LB_EVENT_BACKEND_CHANGED, b, "override");
    return 0;
}

static void store_done_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct store_op *op = w->data;
    struct lb_registry *r = op->r;
    struct store_op **pp;
    struct double_backend *b;

    for (pp = &r->ops; *pp != op; pp = &(*pp)->next)
        ;
    *pp = op->next;
    b = find_backend(r, op->pool, op->id);
    if (r->store == LB_DOUBLE_STORE_FAIL || !b)
        op->done(op->ud, -EIO, "etcd: connection refused");
    else {
        apply_change(r, b, &op->change);
        op->done(op->ud, 0, "");
    }
    free(op);
}

int lb_control_change(struct lb_registry *r, const char *pool, const char *id,
                      const struct lb_change *change, enum lb_scope scope, lb_store_done_cb done,
                      void *ud)
{
    struct double_backend *b = find_backend(r, pool, id);
    struct store_op *op;

    if (!b)
        return -ENOENT;
    if (change->kind == LB_CHANGE_WEIGHT &&
        (change->value.weight < 0 || change->value.weight > LB_WEIGHT_MAX))
        return -EINVAL;
    if (scope == LB_SCOPE_LOCAL)
        return apply_change(r, b, change);
    if (r->store == LB_DOUBLE_STORE_NONE)
        return -ENOTCONN;
    op = calloc(1, sizeof(*op));
    if (!op)
        return -ENOMEM;
    op->r = r;
    snprintf(op->pool, sizeof(op->pool), "%s", pool);
    snprintf(op->id, sizeof(op->id), "%s", id);
    op->change = *change;
    op->done = done;
    op->ud = ud;
    op->next = r->ops;
    r->ops = op;
    ev_timer_init(&op->timer, store_done_cb, r->store_delay_ms / 1000.0, 0.);
    op->timer.data = op;
    ev_timer_start(r->loop, &op->timer);
    return LB_CONTROL_PENDING;
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

    if (r->delivering) {
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
