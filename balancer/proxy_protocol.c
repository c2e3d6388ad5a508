/*
 * PROXY protocol v1 and v2 headers towards backends (contract in
 * proxy_protocol.h), built into a caller's buffer with no allocation.
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
