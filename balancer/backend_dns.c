/*
 * Following a backend's DNS name (design in backend_dns.h): lookups go to
 * the resolver thread, answers come back on the loop, and the refresh timer
 * lives in the backend, so the backend's retire cancels both.
 */
#include "backend_dns.h"
#include "backend.h"
#include "lb_addr.h"
#include "lb_log.h"
#include "lb_util.h"
#include "pool.h"
#include "registry.h"
#include "resolver.h"

#include <string.h>

#define DNS_REFRESH_S 30.0
#define DNS_RETRY_S   5.0

static void dns_lookup(struct lb_backend *b);

static void dns_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_backend *b = lb_container_of(w, struct lb_backend, dns_timer);

    dns_lookup(b);
}

/* Re-arms the refresh timer; never on a retired backend. */
static void dns_schedule(struct lb_backend *b, double after)
{
    ev_timer_stop(b->loop, &b->dns_timer);
    if (b->removed)
        return;
    ev_timer_set(&b->dns_timer, after, 0.);
    ev_timer_start(b->loop, &b->dns_timer);
}

static void dns_done_cb(void *ud, int status, const struct sockaddr *sa, socklen_t len,
                        const char *message)
{
    struct lb_backend *b = ud;
    char addr[64];

    b->dns_req = NULL;
    if (status < 0) {
        LB_WARN("dns",
                "msg=\"cannot resolve backend address%s\" pool=%s backend=%s addr=%s "
                "error=\"%s\"",
                b->resolved ? ", keeping the last one" : ", backend gets no traffic", b->pool->name,
                b->id, b->spec.addr, message);
        dns_schedule(b, b->resolved ? DNS_REFRESH_S : DNS_RETRY_S);
        return;
    }
    dns_schedule(b, DNS_REFRESH_S);
    if (b->resolved && b->sa_len == len && memcmp(&b->sa, sa, len) == 0)
        return;
    LB_INFO("dns", "msg=\"backend address resolved\" pool=%s backend=%s name=%s address=%s",
            b->pool->name, b->id, b->spec.addr, lb_addr_format(sa, addr, sizeof(addr)));
    if (b->resolved) {
        /* Workers may be connecting to the old address right now: a new
         * address is a new backend, the old one is retired. */
        struct lb_backend *next = lb_pool_readdress(b->pool, b, sa, len);

        if (!next)
            return; /* keeps the last address; the next refresh tries again */
        dns_schedule(next, DNS_REFRESH_S);
        b = next;
    } else {
        /* Not published as eligible yet: no worker reads it before the next publish. */
        memcpy(&b->sa, sa, len);
        b->sa_len = len;
        b->resolved = true;
    }
    lb_registry_check_address(b->pool->registry, b);
    lb_registry_backend_changed(b->pool->registry, b, LB_EVENT_BACKEND_CHANGED, "address resolved");
}

static void dns_lookup(struct lb_backend *b)
{
    struct lb_registry *r = b->pool->registry;
    struct lb_hostport hp;
    const char *why;
    int rc;

    if (b->removed || lb_addr_parse(b->spec.addr, false, &hp, &why) < 0)
        return;
    rc = lb_resolve(r->resolver, hp.host, hp.port, dns_done_cb, b, &b->dns_req);
    if (rc < 0) {
        b->dns_req = NULL;
        dns_schedule(b, DNS_RETRY_S);
    }
}

void lb_backend_dns_init(struct lb_backend *b)
{
    ev_init(&b->dns_timer, dns_timer_cb);
}

void lb_backend_dns_start(struct lb_backend *b)
{
    struct lb_registry *r = b->pool->registry;

    if (b->resolved || b->removed || !r || !r->resolver || !b->loop)
        return;
    b->dns_started = true;
    dns_lookup(b);
}

void lb_backend_dns_stop(struct lb_backend *b)
{
    if (!b->dns_started)
        return;
    if (b->dns_req) {
        lb_resolve_cancel(b->dns_req);
        b->dns_req = NULL;
    }
    ev_timer_stop(b->loop, &b->dns_timer);
    b->dns_started = false;
}
