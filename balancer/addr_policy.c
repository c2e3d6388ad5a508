/*
 * The backend address policy (see addr_policy.h).  Addresses are compared
 * as raw bytes per family; an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * counts as the IPv4 address it carries, so no spelling slips through.
 */
#include "addr_policy.h"
#include "lb_error.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOCAL_REREAD_S 5

/* Family, address bytes and port of sa, with v4-mapped IPv6 unwrapped. */
static bool split(const struct sockaddr *sa, int *family, uint8_t addr[16], uint16_t *port)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

        *family = AF_INET;
        memcpy(addr, &s4->sin_addr, 4);
        *port = ntohs(s4->sin_port);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

        *port = ntohs(s6->sin6_port);
        if (memcmp(s6->sin6_addr.s6_addr, mapped, sizeof(mapped)) == 0) {
            *family = AF_INET;
            memcpy(addr, s6->sin6_addr.s6_addr + 12, 4);
        } else {
            *family = AF_INET6;
            memcpy(addr, s6->sin6_addr.s6_addr, 16);
        }
        return true;
    }
    return false;
}

static bool prefix_matches(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned bytes = bits / 8, rest = bits % 8;

    if (memcmp(a, b, bytes) != 0)
        return false;
    if (!rest)
        return true;
    return ((a[bytes] ^ b[bytes]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

bool lb_cidr_contains(const struct lb_cidr *c, const struct sockaddr *sa)
{
    int family;
    uint8_t addr[16];
    uint16_t port;

    if (!split(sa, &family, addr, &port) || family != c->family)
        return false;
    return prefix_matches(c->addr, addr, c->prefix);
}

/* Parses one "ADDR[/BITS]" into c.  Returns 0 or -EINVAL. */
static int cidr_parse(const char *text, size_t len, struct lb_cidr *c)
{
    char buf[INET6_ADDRSTRLEN + 8], *slash, *end;
    unsigned max;
    long bits;

    if (len == 0 || len >= sizeof(buf))
        return -EINVAL;
    memcpy(buf, text, len);
    buf[len] = '\0';
    slash = strchr(buf, '/');
    if (slash)
        *slash = '\0';
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, buf, c->addr) == 1) {
        c->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, c->addr) == 1) {
        c->family = AF_INET6;
        max = 128;
    } else {
        return -EINVAL;
    }
    c->prefix = max;
    if (slash) {
        errno = 0;
        bits = strtol(slash + 1, &end, 10);
        if (errno || !isdigit((unsigned char)slash[1]) || *end || bits < 0 || bits > (long)max)
            return -EINVAL;
        c->prefix = (unsigned)bits;
    }
    return 0;
}

int lb_addr_policy_set_networks(struct lb_addr_policy *p, const char *list, char **err)
{
    struct lb_cidr *v = NULL;
    size_t n = 0, cap = 0;
    const char *s = list ? list : "";

    if (!*s || strcmp(s, "any") == 0) {
        free(p->allow);
        p->allow = NULL;
        p->n_allow = 0;
        return 0;
    }
    while (*s) {
        size_t len = strcspn(s, ",");
        const char *item = s;

        while (len && (*item == ' ')) {
            item++;
            len--;
        }
        while (len && item[len - 1] == ' ')
            len--;
        if (n == cap) {
            struct lb_cidr *nv;

            cap = cap ? cap * 2 : 8;
            nv = realloc(v, cap * sizeof(*v));
            if (!nv) {
                free(v);
                return lb_error_set(err, -ENOMEM, "out of memory");
            }
            v = nv;
        }
        if (cidr_parse(item, len, &v[n]) < 0) {
            int rc = lb_error_set(err, -EINVAL,
                                  "--backend-networks: \"%.*s\" is not an address or CIDR "
                                  "(e.g. 10.0.0.0/8,fd00::/8)",
                                  (int)(len > 64 ? 64 : len), item);

            free(v);
            return rc;
        }
        n++;
        s += strcspn(s, ",");
        if (*s == ',')
            s++;
    }
    free(p->allow);
    p->allow = v;
    p->n_allow = n;
    return 0;
}

int lb_addr_policy_add_own(struct lb_addr_policy *p, const struct sockaddr *sa)
{
    if (p->n_own == LB_ADDR_POLICY_OWN_MAX)
        return -ENOSPC;
    memset(&p->own[p->n_own], 0, sizeof(p->own[p->n_own]));
    memcpy(&p->own[p->n_own], sa,
           sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    p->n_own++;
    return 0;
}

/* Re-reads this host's addresses when the copy is older than a few seconds. */
static void local_refresh(struct lb_addr_policy *p)
{
    struct ifaddrs *ifa = NULL;
    struct timespec now;
    struct lb_cidr *v;
    size_t n = 0;

    clock_gettime(CLOCK_MONOTONIC, &now);
    if (p->local && now.tv_sec - p->local_read_at.tv_sec < LOCAL_REREAD_S)
        return;
    if (getifaddrs(&ifa) < 0)
        return; /* keep what we had */
    for (struct ifaddrs *i = ifa; i; i = i->ifa_next)
        n += i->ifa_addr &&
             (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6);
    v = calloc(n ? n : 1, sizeof(*v));
    if (v) {
        size_t k = 0;

        for (struct ifaddrs *i = ifa; i; i = i->ifa_next) {
            uint16_t port;

            if (!i->ifa_addr ||
                (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6))
                continue;
            if (split(i->ifa_addr, &v[k].family, v[k].addr, &port)) {
                v[k].prefix = v[k].family == AF_INET ? 32 : 128;
                k++;
            }
        }
        free(p->local);
        p->local = v;
        p->n_local = k;
        p->local_read_at = now;
    }
    freeifaddrs(ifa);
}

/* True when connecting to addr reaches this host. */
static bool is_local(struct lb_addr_policy *p, int family, const uint8_t *addr)
{
    static const uint8_t zero[16], loop6[16] = {[15] = 1};

    if (family == AF_INET && (addr[0] == 127 || memcmp(addr, zero, 4) == 0))
        return true;
    if (family == AF_INET6 && (memcmp(addr, zero, 16) == 0 || memcmp(addr, loop6, 16) == 0))
        return true;
    local_refresh(p);
    for (size_t i = 0; i < p->n_local; i++)
        if (p->local[i].family == family &&
            memcmp(p->local[i].addr, addr, family == AF_INET ? 4 : 16) == 0)
            return true;
    return false;
}

static bool is_any(int family, const uint8_t *addr)
{
    static const uint8_t zero[16];

    return memcmp(addr, zero, family == AF_INET ? 4 : 16) == 0;
}

const char *lb_addr_policy_refuses(struct lb_addr_policy *p, const struct sockaddr *sa)
{
    int family;
    uint8_t addr[16];
    uint16_t port;
    bool allowed = p->n_allow == 0;

    if (!split(sa, &family, addr, &port))
        return "not an IP address";
    for (size_t i = 0; i < p->n_own; i++) {
        int ofamily;
        uint8_t oaddr[16];
        uint16_t oport;

        if (!split((const struct sockaddr *)&p->own[i], &ofamily, oaddr, &oport) || oport != port)
            continue;
        /* 0.0.0.0 and :: as a destination mean this host: any listener on the port. */
        if (is_any(family, addr))
            return "one of lbd's own listeners";
        if (is_any(ofamily, oaddr)
                ? is_local(p, family, addr)
                : ofamily == family && memcmp(oaddr, addr, family == AF_INET ? 4 : 16) == 0)
            return "one of lbd's own listeners";
    }
    for (size_t i = 0; !allowed && i < p->n_allow; i++)
        allowed = lb_cidr_contains(&p->allow[i], sa);
    return allowed ? NULL : "outside --backend-networks";
}

void lb_addr_policy_free(struct lb_addr_policy *p)
{
    free(p->allow);
    free(p->local);
    memset(p, 0, sizeof(*p));
}
