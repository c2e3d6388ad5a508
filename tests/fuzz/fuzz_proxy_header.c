/*
 * Fuzzes the inbound PROXY protocol parser (--pool ...,accept-proxy) with
 * outside bytes.  Checks that a header is never longer than the input or
 * the bound, that every prefix of an accepted header asks for more bytes
 * (so a header read in pieces is parsed the same), and that addresses
 * come out as IPv4, IPv6 or nothing.
 */
#include "proxy_protocol.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sockaddr_storage src, dst;
    int n = lb_proxy_protocol_parse(data, size, &src, &dst);

    if (n < 0)
        return 0;
    if ((size_t)n > size || n > LB_PROXY_HEADER_MAX)
        abort();
    if (src.ss_family != AF_UNSPEC && src.ss_family != AF_INET && src.ss_family != AF_INET6)
        abort();
    if (src.ss_family != dst.ss_family)
        abort();
    if (n > 0)
        for (size_t k = 0; k < (size_t)n; k++) {
            struct sockaddr_storage s2, d2;

            if (lb_proxy_protocol_parse(data, k, &s2, &d2) != 0)
                abort();
        }
    return 0;
}
