/*
 * The clients of one pool waiting for a backend slot (HAProxy's pendconn
 * queue, `timeout queue`): when every eligible backend is at max_conns, a
 * new client waits here, oldest first, for up to the pool's queue_timeout.
 *
 * One queue per pool, shared by every worker: a slot freed on one worker
 * may be the turn of a client accepted by another.  The queue holds
 * entries embedded in sessions; only the worker owning a session adds or
 * removes its entry, and every other worker touches an entry only under
 * the queue's lock, to grant it (moving it to the granted list).  Nothing
 * here is on the path of a connection that does not wait: that path reads
 * `length` (an atomic that only changes while clients wait) and goes on.
 *
 * A grant says "a slot may be free for you": when a backend slot is
 * released, or a worker sees room in its copy of the pool (a backend
 * added, up again, or max_conns raised), the oldest entry not yet granted
 * is granted and its worker woken (its ev_async).  That worker takes its
 * granted entry off the queue and tries it; one that finds every backend
 * full again goes back in at its arrival position without a new grant:
 * whoever took the slot will release it, and that release is the next
 * grant.  One grant is out at a time: until the granted client has tried
 * (lb_conn_queue_settle) or left, grants wait, and its worker then grants
 * the next if there is room.  Two grants out at once would let a younger
 * client take the one slot while the older one, granted first, finds it
 * gone.  While anyone waits, new clients queue behind them instead of
 * taking a freed slot first, so the order is first come, first served
 * across workers.
 */
#ifndef LB_CONN_QUEUE_H
#define LB_CONN_QUEUE_H

#include "lb_list.h"

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct lb_conn_queue {
    pthread_mutex_t lock;
    struct lb_list waiting; /* struct lb_queued without a grant, by arrival (seq) */
    struct lb_list granted; /* granted, not yet taken by their workers: a few */
    uint64_t next_seq;
    bool grant_out;          /* a grant is out, not yet settled: the next one waits */
    _Atomic uint64_t length; /* entries on either list: readable without the lock */
};

/* One waiting client; embedded in its session, owned by its worker. */
struct lb_queued {
    struct lb_list link;  /* on one of the queue's lists, under its lock */
    uint64_t seq;         /* arrival order, 0 until first queued; kept when queued again */
    bool granted;         /* under the lock: a slot may be free for it */
    struct ev_loop *loop; /* its worker's loop and wake-up, set when queued */
    ev_async *wake;
};

int lb_conn_queue_init(struct lb_conn_queue *q);
/* The queue must be empty (every worker stopped). */
void lb_conn_queue_destroy(struct lb_conn_queue *q);

/* An entry in no queue, never queued. */
void lb_queued_init(struct lb_queued *e);

/*
 * Queues e (not in the queue) at its arrival position: the tail the first
 * time, where its seq puts it when it comes back; not granted.  Any thread,
 * for e's owner.
 */
void lb_conn_queue_add(struct lb_conn_queue *q, struct lb_queued *e, struct ev_loop *loop,
                       ev_async *wake);

/*
 * Takes e off the queue if it is on it.  Returns true when it held a
 * grant it will not use (settled by this): the caller passes it on
 * (lb_conn_queue_grant).
 */
bool lb_conn_queue_remove(struct lb_conn_queue *q, struct lb_queued *e);

/*
 * Grants the oldest entry without a grant, if any, and wakes its worker,
 * unless a grant is out already (that one's settling grants the next).  O(1).
 */
void lb_conn_queue_grant(struct lb_conn_queue *q);

/* The entry granted last was taken and tried (it has a slot, or is back in line). */
void lb_conn_queue_settle(struct lb_conn_queue *q);

/*
 * Moves the granted entries queued from `loop` onto `out` (in the order
 * they were granted, oldest first; still marked granted): the worker of
 * `loop` now owns them, and settles each once tried.  Returns how many.
 * Walks the granted entries only.
 */
size_t lb_conn_queue_take_granted(struct lb_conn_queue *q, struct ev_loop *loop,
                                  struct lb_list *out);

static inline uint64_t lb_conn_queue_length(struct lb_conn_queue *q)
{
    return atomic_load_explicit(&q->length, memory_order_relaxed);
}

#endif
