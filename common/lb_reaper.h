/*
 * Deferred frees (Redis's freeClientAsync(), the idea of nginx's posted
 * events): an object that ends inside a callback must not be freed there,
 * because the code that called the callback may still touch it.  It is
 * queued instead, and freed once the loop's current callbacks have
 * returned: from an ev_prepare, which libev runs after the callbacks of an
 * iteration and before it polls again.  (Not an ev_check plus an ev_idle
 * to keep the loop from blocking: that costs every iteration that ends a
 * session one more epoll_wait.)  One
 * reaper serves every kind of object (sessions, admin connections and
 * calls, subscriptions): each carries a struct lb_reap and names its free
 * function.  Objects are freed in the order they were queued; a free may
 * queue more, which are freed in the same run.
 */
#ifndef LB_REAPER_H
#define LB_REAPER_H

#include "lb_list.h"

#include <ev.h>

struct lb_reap {
    struct lb_list link;
    void (*free_fn)(struct lb_reap *r);
};

struct lb_reaper {
    struct ev_loop *loop; /* NULL: nothing is freed until lb_reaper_run() (loop-less tests) */
    ev_prepare prepare;
    struct lb_list queue;
};

void lb_reaper_init(struct lb_reaper *r, struct ev_loop *loop);

/*
 * Queues obj, to be freed by free_fn(obj) after the current callbacks.
 * obj must not be queued already.
 */
void lb_reaper_defer(struct lb_reaper *r, struct lb_reap *obj, void (*free_fn)(struct lb_reap *));

/* Frees everything queued now (and what those frees queue). */
void lb_reaper_run(struct lb_reaper *r);

/* Runs, then stops its watchers.  Must not be called from a callback of a queued object. */
void lb_reaper_destroy(struct lb_reaper *r);

#endif
