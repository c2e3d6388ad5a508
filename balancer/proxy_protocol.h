/*
 * PROXY protocol headers (HAProxy's spec, versions 1 and 2) sent to a
 * backend before the client's bytes, so the backend sees the client's
 * address instead of lbd's.
 */
#ifndef LB_PROXY_PROTOCOL_H
#define LB_PROXY_PROTOCOL_H

#include "lb_update.h"

#include <stddef.h>
#include <sys/socket.h>

/*
 * Writes the header for a connection from `client` to `local` (lbd's
 * address the client connected to) into buf.  Mixed or unknown families
 * produce "PROXY UNKNOWN" (v1) or a LOCAL command (v2).  Returns the length,
 * or -ENOSPC when size is too small (108 bytes always suffice), -EINVAL for
 * LB_PROXY_NONE.
 */
int lb_proxy_protocol_build(enum lb_proxy_protocol version, const struct sockaddr *client,
                            const struct sockaddr *local, char *buf, size_t size);

#endif
