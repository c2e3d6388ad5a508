/*
 * Deferred frees (common/lb_reaper.h) on a real libev loop: nothing is
 * freed inside the callback that queued it, everything is freed before the
 * loop next blocks, in order, including what a free queues, and an idle
 * reaper keeps no watcher running.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>

#include "lb_reaper.h"

struct obj {
    struct lb_reap reap;
    int id;
    struct obj *child; /* queued when this one is freed */
};

static struct lb_reaper reaper;
static int freed[8], n_freed;

static void obj_free(struct lb_reap *r)
{
    struct obj *o = lb_container_of(r, struct obj, reap);

    freed[n_freed++] = o->id;
    if (o->child)
        lb_reaper_defer(&reaper, &o->child->reap, obj_free);
    free(o);
}

static struct obj *obj_new(int id)
{
    struct obj *o = calloc(1, sizeof(*o));

    assert_non_null(o);
    o->id = id;
    return o;
}

static void queue_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct obj *a = obj_new(1), *b = obj_new(2);

    b->child = obj_new(3);
    lb_reaper_defer(&reaper, &a->reap, obj_free);
    lb_reaper_defer(&reaper, &b->reap, obj_free);
    assert_int_equal(n_freed, 0); /* not inside the callback that queued them */
}

static void test_frees_after_the_callbacks_in_order(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
    ev_timer t;

    n_freed = 0;
    lb_reaper_init(&reaper, loop);
    assert_false(ev_is_active(&reaper.prepare));
    ev_timer_init(&t, queue_cb, 0.001, 0.);
    ev_timer_start(loop, &t);
    /* The timer fires, then the reaper runs before the loop would block:
     * with nothing else active, ev_run returns only once it has. */
    ev_run(loop, 0);
    assert_int_equal(n_freed, 3);
    assert_int_equal(freed[0], 1);
    assert_int_equal(freed[1], 2);
    assert_int_equal(freed[2], 3);
    assert_false(ev_is_active(&reaper.prepare));
    lb_reaper_destroy(&reaper);
    ev_loop_destroy(loop);
}

static void test_without_a_loop_frees_on_run(void **state)
{
    struct obj *a = obj_new(7);

    n_freed = 0;
    lb_reaper_init(&reaper, NULL);
    lb_reaper_defer(&reaper, &a->reap, obj_free);
    assert_int_equal(n_freed, 0);
    lb_reaper_destroy(&reaper);
    assert_int_equal(n_freed, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frees_after_the_callbacks_in_order),
        cmocka_unit_test(test_without_a_loop_frees_on_run),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
