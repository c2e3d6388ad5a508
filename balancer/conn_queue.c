/*
 * A pool's waiting clients (conn_queue.h): two lists under a mutex, those
 * waiting by arrival and those granted a slot not yet taken, touched only
 * by clients that wait and by the releases and snapshots that may end
 * their wait.  A grant takes the head of the first list (O(1)); a worker
 * looks only at the second, which holds about as many entries as slots
 * just freed; a client put back after a grant that found no slot is among
 * the oldest, so its place is found near the head.
 */
#include "conn_queue.h"

#include <errno.h>

int lb_conn_queue_init(struct lb_conn_queue *q)
{
    lb_list_init(&q->waiting);
    lb_list_init(&q->granted);
    q->next_seq = 0;
    q->grant_out = false;
    atomic_init(&q->length, 0);
    return pthread_mutex_init(&q->lock, NULL) ? -ENOMEM : 0;
}

void lb_conn_queue_destroy(struct lb_conn_queue *q)
{
    pthread_mutex_destroy(&q->lock);
}

void lb_queued_init(struct lb_queued *e)
{
    lb_list_init(&e->link);
    e->seq = 0;
    e->granted = false;
    e->loop = NULL;
    e->wake = NULL;
}

void lb_conn_queue_add(struct lb_conn_queue *q, struct lb_queued *e, struct ev_loop *loop,
                       ev_async *wake)
{
    struct lb_list *pos;

    pthread_mutex_lock(&q->lock);
    e->loop = loop;
    e->wake = wake;
    e->granted = false;
    if (!e->seq) {
        e->seq = ++q->next_seq;
        lb_list_insert_tail(&q->waiting, &e->link);
    } else {
        /* Back after a grant that found no slot: before the first that came
         * later (it is among the oldest, so the walk is short). */
        for (pos = q->waiting.next; pos != &q->waiting; pos = pos->next)
            if (lb_list_entry(pos, struct lb_queued, link)->seq > e->seq)
                break;
        lb_list_insert_tail(pos, &e->link); /* before pos */
    }
    atomic_fetch_add(&q->length, 1);
    pthread_mutex_unlock(&q->lock);
}

bool lb_conn_queue_remove(struct lb_conn_queue *q, struct lb_queued *e)
{
    bool unused_grant = false;

    pthread_mutex_lock(&q->lock);
    if (lb_list_is_linked(&e->link)) {
        lb_list_remove(&e->link);
        atomic_fetch_sub(&q->length, 1);
        unused_grant = e->granted;
        if (unused_grant)
            q->grant_out = false;
    }
    e->granted = false;
    pthread_mutex_unlock(&q->lock);
    return unused_grant;
}

void lb_conn_queue_grant(struct lb_conn_queue *q)
{
    struct ev_loop *loop = NULL;
    ev_async *wake = NULL;
    struct lb_list *pos;

    pthread_mutex_lock(&q->lock);
    if (!q->grant_out && (pos = lb_list_first(&q->waiting))) {
        struct lb_queued *e = lb_list_entry(pos, struct lb_queued, link);

        lb_list_remove(pos);
        lb_list_insert_tail(&q->granted, pos);
        e->granted = true;
        q->grant_out = true;
        loop = e->loop;
        wake = e->wake;
    }
    pthread_mutex_unlock(&q->lock);
    if (wake)
        ev_async_send(loop, wake);
}

void lb_conn_queue_settle(struct lb_conn_queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->grant_out = false;
    pthread_mutex_unlock(&q->lock);
}

size_t lb_conn_queue_take_granted(struct lb_conn_queue *q, struct ev_loop *loop,
                                  struct lb_list *out)
{
    struct lb_list *pos, *next;
    size_t n = 0;

    pthread_mutex_lock(&q->lock);
    for (pos = q->granted.next; pos != &q->granted; pos = next) {
        struct lb_queued *e = lb_list_entry(pos, struct lb_queued, link);

        next = pos->next;
        if (e->loop == loop) {
            lb_list_remove(&e->link);
            lb_list_insert_tail(out, &e->link);
            n++;
        }
    }
    atomic_fetch_sub(&q->length, n);
    pthread_mutex_unlock(&q->lock);
    return n;
}
