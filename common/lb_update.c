/*
 * The typed pool updates between discovery and the registry (lb_update.h):
 * here only the pool policy's defaults, the one place they are written.
 */
#include "lb_update.h"

#include <string.h>

void lb_pool_policy_defaults(struct lb_pool_policy *p)
{
    memset(p, 0, sizeof(*p));
    p->algorithm = LB_ALGO_WRR;
    p->health.type = LB_CHECK_TCP;
    strcpy(p->health.path, "/healthz");
    p->health.interval_ms = 2000;
    p->health.timeout_ms = 1000;
    p->health.rise = 2;
    p->health.fall = 3;
    p->connect_timeout_ms = 3000;
    p->idle_timeout_ms = 3600 * 1000;
    p->retries = 2;
    p->max_conns = 0;
    p->slow_start_ms = 0;
    p->drain_timeout_ms = 0;
    p->proxy_protocol = LB_PROXY_NONE;
    p->panic_threshold = 50;
}
