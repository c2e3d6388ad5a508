#include "metrics.h"
#include "lb_update.h"

#include <stdint.h>

enum backend_field {
    F_ACTIVE, F_TOTAL, F_FAILURES, F_RETRIES, F_BYTES_IN, F_BYTES_OUT, F_WEIGHT, F_EFFECTIVE, F_DRAIN,
    F_HEALTHY,
};

static const struct {
    const char *name, *type, *help;
} backend_families[] = {
    [F_ACTIVE] = {"lbd_backend_active_connections", "gauge",
                  "Client connections open to the backend (connecting or proxying)."},
    [F_TOTAL] = {"lbd_backend_connections_total", "counter",
                 "Connections established to the backend."},
    [F_FAILURES] = {"lbd_backend_connect_failures_total", "counter",
                    "Connect attempts to the backend that failed or timed out."},
    [F_RETRIES] = {"lbd_backend_retries_total", "counter",
                   "Failed connects to the backend that were retried on another backend."},
    [F_BYTES_IN] = {"lbd_backend_bytes_in_total", "counter", "Bytes sent from clients to the backend."},
    [F_BYTES_OUT] = {"lbd_backend_bytes_out_total", "counter",
                     "Bytes sent from the backend to clients."},
    [F_WEIGHT] = {"lbd_backend_weight", "gauge", "Registered weight."},
    [F_EFFECTIVE] = {"lbd_backend_effective_weight", "gauge",
                     "Weight used for new connections (0 when drained, down or removed)."},
    [F_DRAIN] = {"lbd_backend_drain", "gauge", "1 when the backend is drained by an operator."},
    [F_HEALTHY] = {"lbd_backend_healthy", "gauge",
                   "1 up, 0 down, -1 not yet checked (after operator overrides)."},
};

static uint64_t backend_value(const struct lb_backend_info *b, enum backend_field f, int64_t *sv)
{
    switch (f) {
    case F_ACTIVE: return b->active;
    case F_TOTAL: return b->total;
    case F_FAILURES: return b->connect_failures;
    case F_RETRIES: return b->retries;
    case F_BYTES_IN: return b->bytes_in;
    case F_BYTES_OUT: return b->bytes_out;
    case F_WEIGHT: return b->weight;
    case F_EFFECTIVE: return b->effective_weight;
    case F_DRAIN: return b->drain;
    case F_HEALTHY:
        if (b->health_override == LB_HEALTH_FORCE_UP)
            *sv = 1;
        else if (b->health_override == LB_HEALTH_FORCE_DOWN)
            *sv = 0;
        else
            *sv = b->health == LB_HEALTH_UP ? 1 : b->health == LB_HEALTH_DOWN ? 0 : -1;
        return 0;
    }
    return 0;
}

struct render_ctx {
    struct lb_buf *out;
    enum backend_field field;
    int rc;
};

static void render_backend(void *ud, const struct lb_backend_info *b)
{
    struct render_ctx *c = ud;
    char pool[LB_NAME_MAX * 2], id[LB_NAME_MAX * 2], addr[LB_ADDR_MAX * 2];
    int64_t sv = INT64_MIN;
    uint64_t v = backend_value(b, c->field, &sv);

    if (c->rc)
        return;
    lb_metrics_escape(b->pool, pool, sizeof(pool));
    lb_metrics_escape(b->id, id, sizeof(id));
    lb_metrics_escape(b->addr, addr, sizeof(addr));
    if (sv != INT64_MIN)
        c->rc = lb_metrics_printf(c->out, "%s{pool=\"%s\",backend=\"%s\",addr=\"%s\"} %lld\n",
                                  backend_families[c->field].name, pool, id, addr, (long long)sv);
    else
        c->rc = lb_metrics_printf(c->out, "%s{pool=\"%s\",backend=\"%s\",addr=\"%s\"} %llu\n",
                                  backend_families[c->field].name, pool, id, addr,
                                  (unsigned long long)v);
}

int lb_metrics_render(struct lb_buf *out, struct lb_registry *r, struct lb_proxy *proxy)
{
    int rc = 0;

    for (size_t f = 0; f < sizeof(backend_families) / sizeof(backend_families[0]) && !rc; f++) {
        struct render_ctx c = {.out = out, .field = (enum backend_field)f};

        rc = lb_metrics_family(out, backend_families[f].name, backend_families[f].type,
                               backend_families[f].help);
        if (!rc) {
            lb_control_list_backends(r, NULL, render_backend, &c);
            rc = c.rc;
        }
    }

#define POOL_FAMILY(fam, type, help, expr)                                                     \
    do {                                                                                         \
        if (!rc)                                                                                 \
            rc = lb_metrics_family(out, fam, type, help);                                       \
        for (size_t i = 0; i < r->n_pools && !rc; i++) {                                         \
            const struct lb_pool *p = &r->pools[i];                                              \
            char pn[LB_NAME_MAX * 2];                                                            \
            rc = lb_metrics_printf(out, "%s{pool=\"%s\"} %llu\n", fam,                          \
                                   lb_metrics_escape(p->name, pn, sizeof(pn)),                   \
                                   (unsigned long long)(expr));                                  \
        }                                                                                        \
    } while (0)

    POOL_FAMILY("lbd_pool_backends", "gauge", "Registered backends.", p->snap->n_backends);
    POOL_FAMILY("lbd_pool_eligible_backends", "gauge",
                "Backends that receive new connections (registered, undrained, not down, "
                "weight > 0).",
                p->snap->n_eligible);
    POOL_FAMILY("lbd_pool_active_connections", "gauge", "Open client connections.", p->active);
    POOL_FAMILY("lbd_pool_connections_total", "counter", "Client connections accepted.", p->total);
    POOL_FAMILY("lbd_pool_no_backend_total", "counter",
                "Client connections closed because no backend could take them.", p->no_backend);
    POOL_FAMILY("lbd_pool_healthy_backends", "gauge",
                "Backends that may get traffic and pass health checks (or are forced up).",
                p->n_healthy);
    POOL_FAMILY("lbd_pool_panic", "gauge",
                "1 when fewer than panic_threshold% of backends are healthy and traffic is "
                "spread over all of them.",
                p->panic);
    POOL_FAMILY("lbd_pool_retries_total", "counter",
                "Failed connects retried on another backend.", p->retries);
#undef POOL_FAMILY

    if (!rc)
        rc = lb_metrics_family(out, "lbd_connections_active", "gauge",
                               "Open client connections, all pools.");
    if (!rc)
        rc = lb_metrics_printf(out, "lbd_connections_active %llu\n",
                               (unsigned long long)proxy->active);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_connections_max", "gauge",
                               "Connection cap (--max-conns); accepting pauses at the cap.");
    if (!rc)
        rc = lb_metrics_printf(out, "lbd_connections_max %llu\n",
                               (unsigned long long)proxy->max_conns);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_accept_errors_total", "counter",
                               "accept() failures (EMFILE and the like).");
    if (!rc)
        rc = lb_metrics_printf(out, "lbd_accept_errors_total %llu\n",
                               (unsigned long long)proxy->accept_errors);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_accept_paused_total", "counter",
                               "Times the connection cap paused accepting.");
    if (!rc)
        rc = lb_metrics_printf(out, "lbd_accept_paused_total %llu\n",
                               (unsigned long long)proxy->cap_pauses);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_build_info", "gauge", "Version of this lbd.");
    if (!rc)
        rc = lb_metrics_printf(out, "lbd_build_info{version=\"%s\"} 1\n", LB_VERSION);
    return rc;
}
