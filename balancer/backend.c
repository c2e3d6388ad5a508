#include "backend.h"
#include "lb_addr.h"
#include "pool.h"

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
    b->refs = 1;
    b->pool = pool;
    snprintf(b->id, sizeof(b->id), "%s", id);
    b->spec = *spec;
    b->health = LB_HEALTH_UNKNOWN;
    b->check.fd = -1;
    if (lb_addr_parse(spec->addr, false, &hp, &why) == 0 && lb_addr_is_numeric(&hp))
        b->resolved = lb_addr_to_sockaddr(&hp, &b->sa, &b->sa_len) == 0;
    return b;
}

void lb_backend_ref(struct lb_backend *b)
{
    b->refs++;
}

void lb_backend_unref(struct lb_backend *b)
{
    if (--b->refs == 0)
        free(b);
}

bool lb_backend_is_candidate(const struct lb_backend *b)
{
    return !b->removed && !b->drain && b->resolved && b->base_weight > 0 &&
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
    return lb_backend_is_candidate(b) && (lb_backend_is_healthy(b) || b->panic_included);
}

void lb_backend_info(const struct lb_backend *b, struct lb_backend_info *out)
{
    memset(out, 0, sizeof(*out));
    out->pool = b->pool->name;
    out->id = b->id;
    out->addr = b->spec.addr;
    out->zone = b->spec.zone;
    out->weight = (uint32_t)b->spec.weight;
    out->effective_weight = lb_backend_is_eligible(b) ? (uint32_t)b->weight : 0;
    out->has_weight_override = b->has_weight_override;
    out->weight_override = (uint32_t)b->weight_override;
    out->drain = b->drain;
    out->drained = b->drain && b->active == 0;
    if (b->ejected && b->health != LB_HEALTH_DOWN)
        out->health = LB_HEALTH_DOWN;
    else
        out->health = b->health;
    out->health_override = b->health_override;
    out->active = b->active;
    out->total = b->total;
    out->connect_failures = b->connect_failures;
    out->retries = b->retries;
    out->bytes_in = b->bytes_in;
    out->bytes_out = b->bytes_out;
}
