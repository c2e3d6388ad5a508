/*
 * PROXY protocol v1 and v2 headers (contract in proxy_protocol.h): built
 * towards backends into a caller's buffer with no allocation, and parsed
 * from clients strictly (HAProxy's spec: single spaces, CRLF, the v2
 * signature and command), bounded by LB_PROXY_HEADER_MAX.
 */
#include "proxy_protocol.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static const char v2_signature[12] = "\r\n\r\n\0\r\nQUIT\n";

static int build_v1(const struct sockaddr *c, const struct sockaddr *l, char *buf, size_t size)
{
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
    int n;

    if (c->sa_family == AF_INET && l->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)c, *b = (const void *)l;

        inet_ntop(AF_INET, &a->sin_addr, src, sizeof(src));
        inet_ntop(AF_INET, &b->sin_addr, dst, sizeof(dst));
        n = snprintf(buf, size, "PROXY TCP4 %s %s %u %u\r\n", src, dst, ntohs(a->sin_port),
                     ntohs(b->sin_port));
    } else if (c->sa_family == AF_INET6 && l->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)c, *b = (const void *)l;

        inet_ntop(AF_INET6, &a->sin6_addr, src, sizeof(src));
        inet_ntop(AF_INET6, &b->sin6_addr, dst, sizeof(dst));
        n = snprintf(buf, size, "PROXY TCP6 %s %s %u %u\r\n", src, dst, ntohs(a->sin6_port),
                     ntohs(b->sin6_port));
    } else {
        n = snprintf(buf, size, "PROXY UNKNOWN\r\n");
    }
    return n < 0 || (size_t)n >= size ? -ENOSPC : n;
}

static int build_v2(const struct sockaddr *c, const struct sockaddr *l, char *buf, size_t size)
{
    unsigned char *p = (unsigned char *)buf;
    size_t addr_len;

    if (size < 16 + 36)
        return -ENOSPC;
    memcpy(p, v2_signature, sizeof(v2_signature));
    if (c->sa_family == AF_INET && l->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)c, *b = (const void *)l;

        p[12] = 0x21; /* version 2, PROXY */
        p[13] = 0x11; /* AF_INET, STREAM */
        addr_len = 12;
        memcpy(p + 16, &a->sin_addr, 4);
        memcpy(p + 20, &b->sin_addr, 4);
        memcpy(p + 24, &a->sin_port, 2);
        memcpy(p + 26, &b->sin_port, 2);
    } else if (c->sa_family == AF_INET6 && l->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)c, *b = (const void *)l;

        p[12] = 0x21;
        p[13] = 0x21; /* AF_INET6, STREAM */
        addr_len = 36;
        memcpy(p + 16, &a->sin6_addr, 16);
        memcpy(p + 32, &b->sin6_addr, 16);
        memcpy(p + 48, &a->sin6_port, 2);
        memcpy(p + 50, &b->sin6_port, 2);
    } else {
        p[12] = 0x20; /* version 2, LOCAL: the receiver uses the real connection */
        p[13] = 0x00;
        addr_len = 0;
    }
    p[14] = (unsigned char)(addr_len >> 8);
    p[15] = (unsigned char)(addr_len & 0xff);
    return (int)(16 + addr_len);
}

int lb_proxy_protocol_build(enum lb_proxy_protocol version, const struct sockaddr *client,
                            const struct sockaddr *local, char *buf, size_t size)
{
    switch (version) {
    case LB_PROXY_V1:
        return build_v1(client, local, buf, size);
    case LB_PROXY_V2:
        return build_v2(client, local, buf, size);
    case LB_PROXY_NONE:
        break;
    }
    return -EINVAL;
}

/* ------------------------------------------------------------ inbound -- */

#define V1_MAX 107 /* "PROXY TCP6 " + two addresses, two ports, CRLF: the spec's bound */

static void set_inet(struct sockaddr_storage *ss, const void *addr, const void *port)
{
    struct sockaddr_in *a = (struct sockaddr_in *)ss;

    memset(ss, 0, sizeof(*ss));
    a->sin_family = AF_INET;
    memcpy(&a->sin_addr, addr, 4);
    memcpy(&a->sin_port, port, 2);
}

static void set_inet6(struct sockaddr_storage *ss, const void *addr, const void *port)
{
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    a->sin6_family = AF_INET6;
    memcpy(&a->sin6_addr, addr, 16);
    memcpy(&a->sin6_port, port, 2);
}

/* A decimal port, 0..65535, digits only. */
static int parse_port(const char *s, uint16_t *out)
{
    unsigned long v = 0;

    if (!*s || strlen(s) > 5)
        return -EINVAL;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v > 65535)
        return -EINVAL;
    *out = htons((uint16_t)v);
    return 0;
}

static int parse_v1(const uint8_t *buf, size_t len, struct sockaddr_storage *src,
                    struct sockaddr_storage *dst)
{
    char line[V1_MAX + 1], *f[6], *save = NULL;
    const uint8_t *crlf = NULL;
    unsigned char a[16], b[16];
    uint16_t pa, pb;
    size_t n, nf = 0;
    int family;

    for (size_t i = 0; i + 1 < len && i + 1 < V1_MAX; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n') {
            crlf = buf + i;
            break;
        }
    if (!crlf)
        return len >= V1_MAX ? -EINVAL : 0;
    n = (size_t)(crlf - buf);
    if (memchr(buf, '\0', n))
        return -EINVAL;
    memcpy(line, buf, n);
    line[n] = '\0';
    for (char *t = strtok_r(line, " ", &save); t && nf < 6; t = strtok_r(NULL, " ", &save))
        f[nf++] = t;
    if (nf >= 2 && strcmp(f[1], "UNKNOWN") == 0)
        return (int)n + 2; /* the rest of the line is to be ignored */
    /* Single spaces only: 6 fields rebuilt must be the line. */
    if (nf != 6 || strtok_r(NULL, " ", &save) || strcmp(f[0], "PROXY") != 0)
        return -EINVAL;
    if (strcmp(f[1], "TCP4") == 0)
        family = AF_INET;
    else if (strcmp(f[1], "TCP6") == 0)
        family = AF_INET6;
    else
        return -EINVAL;
    if (strlen(f[0]) + strlen(f[1]) + strlen(f[2]) + strlen(f[3]) + strlen(f[4]) + strlen(f[5]) +
            5 !=
        n)
        return -EINVAL;
    if (inet_pton(family, f[2], a) != 1 || inet_pton(family, f[3], b) != 1 ||
        parse_port(f[4], &pa) < 0 || parse_port(f[5], &pb) < 0)
        return -EINVAL;
    if (family == AF_INET) {
        set_inet(src, a, &pa);
        set_inet(dst, b, &pb);
    } else {
        set_inet6(src, a, &pa);
        set_inet6(dst, b, &pb);
    }
    return (int)n + 2;
}

static int parse_v2(const uint8_t *buf, size_t len, struct sockaddr_storage *src,
                    struct sockaddr_storage *dst)
{
    size_t total;

    if (len < 16)
        return 0;
    if ((buf[12] & 0xf0) != 0x20 || (buf[12] & 0x0f) > 1)
        return -EINVAL; /* version 2; LOCAL or PROXY */
    total = 16 + ((size_t)buf[14] << 8 | buf[15]);
    if (total > LB_PROXY_HEADER_MAX)
        return -EINVAL;
    if (len < total)
        return 0;
    if ((buf[12] & 0x0f) == 0) /* LOCAL: a health check of the balancer in front */
        return (int)total;
    switch (buf[13]) {
    case 0x11: /* TCP over IPv4 */
        if (total < 16 + 12)
            return -EINVAL;
        set_inet(src, buf + 16, buf + 24);
        set_inet(dst, buf + 20, buf + 26);
        break;
    case 0x21: /* TCP over IPv6 */
        if (total < 16 + 36)
            return -EINVAL;
        set_inet6(src, buf + 16, buf + 48);
        set_inet6(dst, buf + 32, buf + 50);
        break;
    default: /* unspecified, UDP, unix: the connection's own addresses stand */
        if ((buf[13] >> 4) > 3 || (buf[13] & 0x0f) > 2)
            return -EINVAL;
        break;
    }
    return (int)total;
}

int lb_proxy_protocol_parse(const uint8_t *buf, size_t len, struct sockaddr_storage *src,
                            struct sockaddr_storage *dst)
{
    static const char v1_prefix[6] = "PROXY ";
    size_t k;

    memset(src, 0, sizeof(*src));
    memset(dst, 0, sizeof(*dst));
    if (len == 0)
        return 0;
    if (buf[0] == 'P') {
        k = len < sizeof(v1_prefix) ? len : sizeof(v1_prefix);
        if (memcmp(buf, v1_prefix, k) != 0)
            return -EINVAL;
        return len < sizeof(v1_prefix) ? 0 : parse_v1(buf, len, src, dst);
    }
    k = len < sizeof(v2_signature) ? len : sizeof(v2_signature);
    if (memcmp(buf, v2_signature, k) != 0)
        return -EINVAL;
    return len < sizeof(v2_signature) ? 0 : parse_v2(buf, len, src, dst);
}
