/*
 * Backend objects: creation with every watcher initialised once, the one
 * retire that stops them all, and the reference count that frees the
 * memory after the last session let go.
 */
#include "backend.h"
#include "backend_dns.h"
#include "drain.h"
#include "lb_addr.h"
#include "pool.h"
#include "registry.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lb_backend *lb_backend_new(struct lb_pool *pool, const char *id,
                                  const struct lb_backend_spec *spec)
{
    struct lb_backend *b = calloc(1, sizeof(*b));
    struct lb_hostport hp;
    const char *why;

    if (!b)
        return NULL;
    b->n_ws = pool->registry && pool->registry->n_workers ? pool->registry->n_workers : 1;
    b->ws = calloc(b->n_ws, sizeof(*b->ws));
    if (!b->ws) {
        free(b);
        return NULL;
    }
    for (unsigned w = 0; w < b->n_ws; w++)
        lb_list_init(&b->ws[w].list);
    atomic_init(&b->refs, 1);
    b->pool = pool;
    b->loop = pool->registry ? pool->registry->loop : NULL;
    snprintf(b->id, sizeof(b->id), "%s", id);
    b->spec = *spec;
    b->health = LB_HEALTH_UNKNOWN;
    b->base_weight = spec->weight;
    b->snap_index = SIZE_MAX;
    lb_health_init(b);
    lb_backend_dns_init(b);
    lb_drain_init(b);
    if (lb_addr_parse(spec->addr, false, &hp, &why) == 0 && lb_addr_is_numeric(&hp))
        b->resolved = lb_addr_to_sockaddr(&hp, &b->sa, &b->sa_len) == 0;
    return b;
}

void lb_backend_ref(struct lb_backend *b)
{
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

/* Nothing the backend embeds may still be active or pending when it is freed. */
static void backend_assert_idle(const struct lb_backend *b)
{
    assert(b->removed || !b->loop);
    assert(!ev_is_active(&b->check.timer) && !ev_is_pending(&b->check.timer));
    assert(!ev_is_active(&b->check.io) && !ev_is_pending(&b->check.io));
    assert(!ev_is_active(&b->check.eject_timer) && !ev_is_pending(&b->check.eject_timer));
    assert(!ev_is_active(&b->dns_timer) && !ev_is_pending(&b->dns_timer));
    assert(!ev_is_active(&b->drain_timer) && !ev_is_pending(&b->drain_timer));
    assert(b->check.fd < 0 && !b->dns_req && !b->marked && b->active == 0);
    for (unsigned w = 0; w < b->n_ws; w++)
        assert(lb_list_is_empty(&b->ws[w].list));
    (void)b;
}

void lb_backend_unref(struct lb_backend *b)
{
    /* The last release may come from any worker: acquire what the others wrote. */
    unsigned before = atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel);

    assert(before > 0);
    if (before != 1)
        return;
    backend_assert_idle(b);
    free(b->ws);
    free(b);
}

void lb_backend_retire(struct lb_backend *b)
{
    if (b->removed)
        return;
    b->removed = true;
    atomic_store(&b->notify_zero, true);
    lb_health_stop(b);
    lb_drain_stop(b);
    lb_backend_dns_stop(b);
}

bool lb_backend_is_candidate(const struct lb_backend *b)
{
    return !b->removed && !b->drain && b->resolved && !b->refused && b->base_weight > 0 &&
           b->health_override != LB_HEALTH_FORCE_DOWN;
}

bool lb_backend_is_healthy(const struct lb_backend *b)
{
    if (b->health_override == LB_HEALTH_FORCE_UP)
        return true;
    if (b->health_override == LB_HEALTH_FORCE_DOWN)
        return false;
    return b->health != LB_HEALTH_DOWN && !b->ejected;
}

bool lb_backend_is_eligible(const struct lb_backend *b)
{
    const struct lb_snap_entry *e = lb_pool_entry_of(b);

    return e && e->weight > 0;
}

/* The one word for b (control.h): the first that applies. */
static enum lb_backend_state backend_state(const struct lb_backend *b,
                                           const struct lb_snap_entry *e, uint64_t active)
{
    if (b->removed)
        return LB_BACKEND_REMOVED;
    if (b->drain)
        return active ? LB_BACKEND_DRAINING : LB_BACKEND_DRAINED;
    if (!b->resolved)
        return LB_BACKEND_UNRESOLVED;
    if (b->refused)
        return LB_BACKEND_REFUSED;
    if (!lb_backend_is_healthy(b))
        return b->ejected && b->health != LB_HEALTH_DOWN &&
                       b->health_override != LB_HEALTH_FORCE_DOWN
                   ? LB_BACKEND_EJECTED
                   : LB_BACKEND_DOWN;
    if (e && e->ramping)
        return LB_BACKEND_SLOW_START;
    return LB_BACKEND_UP;
}

void lb_backend_info(const struct lb_backend *b, struct lb_backend_info *out)
{
    const struct lb_snap_entry *e = lb_pool_entry_of(b);
    struct lb_backend_totals t;

    memset(out, 0, sizeof(*out));
    out->pool = b->pool->name;
    out->id = b->id;
    out->addr = b->spec.addr;
    out->zone = b->spec.zone;
    out->weight = (uint32_t)b->spec.weight;
    out->effective_weight = e ? e->weight : 0;
    out->has_weight_override = b->has_weight_override;
    out->weight_override = (uint32_t)b->weight_override;
    out->drain = b->drain;
    if (b->ejected && b->health != LB_HEALTH_DOWN)
        out->health = LB_HEALTH_DOWN;
    else
        out->health = b->health;
    out->health_override = b->health_override;
    out->active = atomic_load_explicit(&b->active, memory_order_relaxed);
    out->drained = b->drain && out->active == 0; /* the same reading as the state's */
    out->state = backend_state(b, e, out->active);
    lb_backend_totals(b, &t);
    out->total = t.total;
    out->connect_failures = t.connect_failures;
    out->retries = t.retries;
    out->bytes_in = t.bytes_in;
    out->bytes_out = t.bytes_out;
}

void lb_backend_totals(const struct lb_backend *b, struct lb_backend_totals *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned w = 0; w < b->n_ws; w++) {
        const struct lb_backend_wstats *s = &b->ws[w];

        out->total += lb_counter_get(&s->total);
        out->connect_failures += lb_counter_get(&s->connect_failures);
        out->retries += lb_counter_get(&s->retries);
        out->bytes_in += lb_counter_get(&s->bytes_in);
        out->bytes_out += lb_counter_get(&s->bytes_out);
    }
}
