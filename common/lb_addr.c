/*
 * host:port text to socket addresses and back (contract in lb_addr.h):
 * IPv4, bracketed IPv6 and DNS names, no name service on these paths.
 */
#include "lb_addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool host_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

int lb_addr_parse(const char *text, bool allow_port_zero, struct lb_hostport *out, const char **err)
{
    const char *colon, *host = text;
    size_t hlen;
    char *end;
    long port;

    memset(out, 0, sizeof(*out));
    if (!text || !*text) {
        *err = "empty address (expected host:port)";
        return -EINVAL;
    }
    if (text[0] == '[') {
        const char *close = strchr(text, ']');

        if (!close || close[1] != ':') {
            *err = "IPv6 address must be written [addr]:port";
            return -EINVAL;
        }
        host = text + 1;
        hlen = (size_t)(close - host);
        colon = close + 1;
        out->is_ipv6_literal = true;
    } else {
        colon = strrchr(text, ':');
        if (!colon) {
            *err = text[strspn(text, "0123456789")] == '\0'
                       ? "missing host: a port alone is not an address (expected host:port, "
                         "e.g. 127.0.0.1:8080, or 0.0.0.0:8080 for every IPv4 address)"
                       : "missing port (expected host:port)";
            return -EINVAL;
        }
        if (memchr(text, ':', (size_t)(colon - text))) {
            *err = "IPv6 address must be written [addr]:port";
            return -EINVAL;
        }
        hlen = (size_t)(colon - text);
    }
    if (hlen == 0) {
        *err = "missing host (expected host:port, e.g. 127.0.0.1:8080, or 0.0.0.0:8080 for "
               "every IPv4 address)";
        return -EINVAL;
    }
    if (hlen >= LB_HOST_MAX) {
        *err = "host name too long";
        return -EINVAL;
    }
    memcpy(out->host, host, hlen);
    out->host[hlen] = '\0';
    if (out->is_ipv6_literal) {
        struct in6_addr a6;

        if (inet_pton(AF_INET6, out->host, &a6) != 1) {
            *err = "not a valid IPv6 address";
            return -EINVAL;
        }
    } else {
        for (size_t i = 0; i < hlen; i++) {
            if (!host_char_ok(out->host[i])) {
                *err = "host has characters not allowed in a name or IPv4 address";
                return -EINVAL;
            }
        }
    }
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno || !isdigit((unsigned char)colon[1]) || *end || port < (allow_port_zero ? 0 : 1) ||
        port > 65535) {
        *err = "port must be a number from 1 to 65535";
        return -EINVAL;
    }
    out->port = (uint16_t)port;
    return 0;
}

bool lb_addr_is_numeric(const struct lb_hostport *hp)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (hp->is_ipv6_literal)
        return inet_pton(AF_INET6, hp->host, &a6) == 1;
    return inet_pton(AF_INET, hp->host, &a4) == 1;
}

int lb_addr_to_sockaddr(const struct lb_hostport *hp, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (hp->is_ipv6_literal) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

        if (inet_pton(AF_INET6, hp->host, &s6->sin6_addr) != 1)
            return -EINVAL;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(hp->port);
        *len = sizeof(*s6);
        return 0;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

        if (inet_pton(AF_INET, hp->host, &s4->sin_addr) != 1)
            return -EINVAL;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(hp->port);
        *len = sizeof(*s4);
        return 0;
    }
}

const char *lb_addr_format(const struct sockaddr *sa, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN];

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
        snprintf(buf, size, "[%s]:%u", host, ntohs(s6->sin6_port));
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
        snprintf(buf, size, "%s:%u", host, ntohs(s4->sin_port));
    } else {
        snprintf(buf, size, "(family %d)", sa->sa_family);
    }
    return buf;
}
