/*
 * "host:port" text <-> socket addresses.  Hosts are IPv4 literals, IPv6
 * literals in brackets ("[::1]:9000"), or DNS names.  Parsing never touches
 * the network: lb_addr_parse() only splits and checks the text, and
 * lb_addr_resolve_numeric() fills a sockaddr for literal hosts.
 */
#ifndef LB_ADDR_H
#define LB_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define LB_HOST_MAX 256

struct lb_hostport {
    char host[LB_HOST_MAX]; /* without brackets */
    uint16_t port;
    bool is_ipv6_literal;
};

/*
 * Splits "host:port".  Returns 0, or -EINVAL with *err set to a static
 * sentence.  The port must be 1..65535 (0 only when allow_port_zero).
 */
int lb_addr_parse(const char *text, bool allow_port_zero, struct lb_hostport *out,
                  const char **err);

/* True when host is an IPv4 or IPv6 literal (no name service needed). */
bool lb_addr_is_numeric(const struct lb_hostport *hp);

/*
 * Fills *ss for a numeric host.  Returns 0, or -EINVAL when the host is not
 * a literal (it needs DNS).
 */
int lb_addr_to_sockaddr(const struct lb_hostport *hp, struct sockaddr_storage *ss, socklen_t *len);

/* Formats a socket address as "1.2.3.4:80" or "[::1]:80". */
const char *lb_addr_format(const struct sockaddr *sa, char *buf, size_t size);

#endif
