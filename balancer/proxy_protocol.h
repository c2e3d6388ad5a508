/*
 * PROXY protocol headers (HAProxy's spec, versions 1 and 2): sent to a
 * backend before the client's bytes, so the backend sees the client's
 * address instead of lbd's; and read from clients of a pool served behind
 * a load balancer that sends them (--pool NAME=ADDR:PORT,accept-proxy).
 */
#ifndef LB_PROXY_PROTOCOL_H
#define LB_PROXY_PROTOCOL_H

#include "lb_update.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The longest inbound header accepted: v1 is at most 107 bytes, v2 with
 * addresses 52, and the rest is room for the TLVs cloud load balancers add. */
#define LB_PROXY_HEADER_MAX 1024

/*
 * Writes the header for a connection from `client` to `local` (lbd's
 * address the client connected to) into buf.  Mixed or unknown families
 * produce "PROXY UNKNOWN" (v1) or a LOCAL command (v2).  Returns the length,
 * or -ENOSPC when size is too small (108 bytes always suffice), -EINVAL for
 * LB_PROXY_NONE.
 */
int lb_proxy_protocol_build(enum lb_proxy_protocol version, const struct sockaddr *client,
                            const struct sockaddr *local, char *buf, size_t size);

/*
 * Reads an inbound header at the start of buf[0..len), v1 or v2.  Returns
 * its length (> 0): *src and *dst are the client's and the address it
 * connected to when the header carries TCP over IPv4 or IPv6, and have
 * family AF_UNSPEC otherwise (v1 UNKNOWN, v2 LOCAL, other families: the
 * connection's own addresses stand).  Returns 0 when the bytes so far are
 * a valid beginning and more are needed; -EINVAL when they are not a
 * header, or the header is longer than LB_PROXY_HEADER_MAX.
 */
int lb_proxy_protocol_parse(const uint8_t *buf, size_t len, struct sockaddr_storage *src,
                            struct sockaddr_storage *dst);

#endif
