/*
 * A mailbox: how one thread hands work to another thread's libev loop (the
 * way Envoy posts to a dispatcher).  Any thread posts a message; the
 * owner's loop runs it, in the order posted, from an ev_async watcher.
 * A message is a struct lb_msg embedded in whatever carries its data; its
 * run function owns it from then on (frees it, or passes it on).
 *
 * Posting takes a mutex for two pointer writes and wakes the loop only
 * when the queue was empty, so a burst costs one wake-up.  Nothing on a
 * connection's path posts: the control loop posts pool changes, workers
 * post the rare things only the control loop may do (an ejection, a drain
 * that reached zero, a worker gone idle at shutdown).
 */
#ifndef LB_MAILBOX_H
#define LB_MAILBOX_H

#include "lb_list.h"

#include <ev.h>
#include <pthread.h>
#include <stdbool.h>

struct lb_msg;

typedef void (*lb_msg_fn)(struct lb_msg *m, void *ctx);

struct lb_msg {
    struct lb_list link;
    lb_msg_fn run; /* on the owner's loop, with the mailbox's ctx; owns m */
};

struct lb_mailbox {
    struct ev_loop *loop;
    void *ctx;
    ev_async wake;
    pthread_mutex_t lock;
    struct lb_list queue; /* under lock */
};

/* Sets the mailbox up on `loop` (its owner) and starts its watcher. */
void lb_mailbox_init(struct lb_mailbox *mb, struct ev_loop *loop, void *ctx);

/* Queues m to run on the owner's loop; from any thread. */
void lb_mailbox_post(struct lb_mailbox *mb, struct lb_msg *m, lb_msg_fn run);

/* Runs what is queued now; on the owner's thread. */
void lb_mailbox_run(struct lb_mailbox *mb);

/*
 * Stops the watcher and runs what is still queued (messages release what
 * they hold); on the owner's thread, once no other thread posts.
 */
void lb_mailbox_destroy(struct lb_mailbox *mb);

#endif
