/*
 * Mailboxes (design in lb_mailbox.h): a mutex-guarded intrusive list and an
 * ev_async.  The owner swaps the whole queue out under the lock and runs it
 * unlocked, so a message may post again, even to its own mailbox.
 */
#include "lb_mailbox.h"
#include "lb_util.h"

static void mailbox_wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    lb_mailbox_run(lb_container_of(w, struct lb_mailbox, wake));
}

void lb_mailbox_init(struct lb_mailbox *mb, struct ev_loop *loop, void *ctx)
{
    mb->loop = loop;
    mb->ctx = ctx;
    pthread_mutex_init(&mb->lock, NULL);
    lb_list_init(&mb->queue);
    ev_async_init(&mb->wake, mailbox_wake_cb);
    ev_async_start(loop, &mb->wake);
}

void lb_mailbox_post(struct lb_mailbox *mb, struct lb_msg *m, lb_msg_fn run)
{
    bool was_empty;

    m->run = run;
    pthread_mutex_lock(&mb->lock);
    was_empty = lb_list_is_empty(&mb->queue);
    lb_list_insert_tail(&mb->queue, &m->link);
    pthread_mutex_unlock(&mb->lock);
    if (was_empty)
        ev_async_send(mb->loop, &mb->wake);
}

void lb_mailbox_run(struct lb_mailbox *mb)
{
    struct lb_list batch;
    struct lb_list *l;

    lb_list_init(&batch);
    pthread_mutex_lock(&mb->lock);
    lb_list_splice_tail(&batch, &mb->queue);
    pthread_mutex_unlock(&mb->lock);
    while ((l = lb_list_first(&batch))) {
        struct lb_msg *m = lb_list_entry(l, struct lb_msg, link);

        lb_list_remove(l);
        m->run(m, mb->ctx);
    }
}

void lb_mailbox_destroy(struct lb_mailbox *mb)
{
    ev_async_stop(mb->loop, &mb->wake);
    lb_mailbox_run(mb);
    pthread_mutex_destroy(&mb->lock);
}
