/*
 * Backends registered by DNS name: resolved on the resolver thread when
 * they appear, then again every 30 s, so a name that moves is followed.
 * Until the first answer the backend gets no traffic; a failed refresh
 * keeps the last good address.  New connections use the latest address;
 * open ones keep theirs.
 */
#ifndef LB_BACKEND_DNS_H
#define LB_BACKEND_DNS_H

struct lb_backend;

/* Initialises b's refresh timer (none started); from lb_backend_new(). */
void lb_backend_dns_init(struct lb_backend *b);
/* Starts resolving b if its address is a name and the registry has a resolver. */
void lb_backend_dns_start(struct lb_backend *b);
/* Cancels lookups and timers of b; safe to call twice or for numeric backends. */
void lb_backend_dns_stop(struct lb_backend *b);

#endif
