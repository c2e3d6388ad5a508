/*
 * Where a registered backend may point.  Registration is open to anything
 * that can write to etcd, so it must not grant more than "send me traffic":
 * a backend address that is one of lbd's own listeners (a pool port, the
 * admin API, the HTTP port) would let any client of a pool reach lbd's
 * control surface, or loop traffic into lbd itself.  Such addresses are
 * refused, and --backend-networks CIDR,... narrows what is allowed at all
 * (default: anywhere), so registrations cannot reach etcd or loopback-only
 * services an operator did not mean to expose.
 *
 * A listener bound to a wildcard address (0.0.0.0, ::) is reached through
 * every local address, so its port is refused on any address of this host:
 * loopback, 0.0.0.0/:: themselves, and the interfaces' addresses
 * (getifaddrs, re-read at most every few seconds).
 */
#ifndef LB_ADDR_POLICY_H
#define LB_ADDR_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#define LB_ADDR_POLICY_OWN_MAX 80

struct lb_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix;
};

struct lb_addr_policy {
    struct lb_cidr *allow; /* NULL with n_allow 0: anywhere */
    size_t n_allow;
    struct sockaddr_storage own[LB_ADDR_POLICY_OWN_MAX]; /* lbd's listeners */
    size_t n_own;
    struct lb_cidr *local; /* this host's addresses, as /32 and /128 */
    size_t n_local;
    struct timespec local_read_at;
};

/*
 * Parses "CIDR[,CIDR...]" ("10.0.0.0/8,fd00::/8"; a bare address is a
 * host route; "any" or "" allows everything).  Returns 0, or -EINVAL with
 * *err a sentence naming the bad entry.
 */
int lb_addr_policy_set_networks(struct lb_addr_policy *p, const char *list, char **err);

/* Adds one of lbd's own listening addresses.  Returns 0 or -ENOSPC. */
int lb_addr_policy_add_own(struct lb_addr_policy *p, const struct sockaddr *sa);

/*
 * NULL when lbd may route to sa, otherwise a static reason
 * ("one of lbd's own listeners", "outside --backend-networks").
 */
const char *lb_addr_policy_refuses(struct lb_addr_policy *p, const struct sockaddr *sa);

/* True when sa lies in c. */
bool lb_cidr_contains(const struct lb_cidr *c, const struct sockaddr *sa);

void lb_addr_policy_free(struct lb_addr_policy *p);

#endif
