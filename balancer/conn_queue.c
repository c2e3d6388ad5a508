/*
 * A pool's waiting clients (conn_queue.h): a list under a mutex, touched
 * only by clients that wait and by the releases and snapshots that may end
 * their wait.
 */
#include "conn_queue.h"

#include <errno.h>

int lb_conn_queue_init(struct lb_conn_queue *q)
{
    lb_list_init(&q->waiting);
    q->next_seq = 0;
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
        /* Back after a grant that found no slot: before the first that came later. */
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
    for (pos = q->waiting.next; pos != &q->waiting; pos = pos->next) {
        struct lb_queued *e = lb_list_entry(pos, struct lb_queued, link);

        if (!e->granted) {
            e->granted = true;
            loop = e->loop;
            wake = e->wake;
            break;
        }
    }
    pthread_mutex_unlock(&q->lock);
    if (wake)
        ev_async_send(loop, wake);
}

size_t lb_conn_queue_take_granted(struct lb_conn_queue *q, struct ev_loop *loop,
                                  struct lb_list *out)
{
    struct lb_list *pos, *next;
    size_t n = 0;

    pthread_mutex_lock(&q->lock);
    for (pos = q->waiting.next; pos != &q->waiting; pos = next) {
        struct lb_queued *e = lb_list_entry(pos, struct lb_queued, link);

        next = pos->next;
        if (e->granted && e->loop == loop) {
            lb_list_remove(&e->link);
            lb_list_insert_tail(out, &e->link);
            n++;
        }
    }
    atomic_fetch_sub(&q->length, n);
    pthread_mutex_unlock(&q->lock);
    return n;
}
