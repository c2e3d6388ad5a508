/*
 * The deferred-free queue (lb_reaper.h).  Its watchers run only while
 * something is queued, so an idle lbd pays nothing for it, and they never
 * keep the loop alive on their own beyond that.
 */
#include "lb_reaper.h"

static void reaper_prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    lb_reaper_run(lb_container_of(w, struct lb_reaper, prepare));
}

void lb_reaper_init(struct lb_reaper *r, struct ev_loop *loop)
{
    r->loop = loop;
    ev_prepare_init(&r->prepare, reaper_prepare_cb);
    lb_list_init(&r->queue);
}

void lb_reaper_defer(struct lb_reaper *r, struct lb_reap *obj, void (*free_fn)(struct lb_reap *))
{
    obj->free_fn = free_fn;
    lb_list_insert_tail(&r->queue, &obj->link);
    if (r->loop && !ev_is_active(&r->prepare))
        ev_prepare_start(r->loop, &r->prepare);
}

void lb_reaper_run(struct lb_reaper *r)
{
    struct lb_list *e;

    while ((e = lb_list_first(&r->queue))) {
        struct lb_reap *obj = lb_list_entry(e, struct lb_reap, link);

        lb_list_remove(e);
        obj->free_fn(obj);
    }
    if (r->loop)
        ev_prepare_stop(r->loop, &r->prepare);
}

void lb_reaper_destroy(struct lb_reaper *r)
{
    lb_reaper_run(r);
}
