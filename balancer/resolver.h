/*
 * Name resolution off the loop.  getaddrinfo() blocks, and the lbd loop
 * must never block, so lookups run on one worker thread: the loop queues a
 * request, the worker resolves it and hands the answer back through an
 * ev_async, and the callback runs on the loop.  One thread is enough: a
 * pool's names are few and looked up at registration and every refresh,
 * not per connection.
 */
#ifndef LB_RESOLVER_H
#define LB_RESOLVER_H

#include <ev.h>
#include <stdint.h>
#include <sys/socket.h>

struct lb_resolver;
struct lb_resolve_req;

/*
 * Result of one lookup, on the loop: status 0 with the first address of the
 * name (IPv4 preferred), or a negative errno (-ENOENT: no such name,
 * -EAGAIN: temporary failure) with a static message.
 */
typedef void (*lb_resolve_cb)(void *ud, int status, const struct sockaddr *sa, socklen_t len,
                              const char *message);

/* Starts the worker thread.  Returns 0, -ENOMEM or -EAGAIN. */
int lb_resolver_new(struct ev_loop *loop, struct lb_resolver **out);

/* Stops the worker and frees everything; callbacks of pending lookups are not called. */
void lb_resolver_free(struct lb_resolver *r);

/*
 * Queues a lookup of host (at most 255 bytes) for port.  On success *out is
 * a handle for lb_resolve_cancel(), valid until the callback has run.
 * Returns 0, -EINVAL or -ENOMEM; cb is not called on failure.
 */
int lb_resolve(struct lb_resolver *r, const char *host, uint16_t port, lb_resolve_cb cb, void *ud,
               struct lb_resolve_req **out);

/* The callback of req will not run; req must not be used afterwards. */
void lb_resolve_cancel(struct lb_resolve_req *req);

#endif
