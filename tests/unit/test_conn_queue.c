/*
 * A pool's queue of clients waiting for a backend slot (conn_queue.h):
 * arrival order kept across re-queues, grants go oldest first and wake the
 * right worker, a grant left unused is reported so it can be passed on,
 * each worker takes only its own granted entries; and, from several
 * threads at once, every entry is granted exactly once per grant.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>

#include "conn_queue.h"
#include "lb_util.h"

struct worker {
    struct ev_loop *loop;
    ev_async wake;
};

static void wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)a;
    (void)revents;
}

static void worker_init(struct worker *w)
{
    w->loop = ev_loop_new(EVFLAG_AUTO);
    ev_async_init(&w->wake, wake_cb);
    ev_async_start(w->loop, &w->wake);
}

static void worker_free(struct worker *w)
{
    ev_async_stop(w->loop, &w->wake);
    ev_loop_destroy(w->loop);
}

/* True once, when w was woken since the last call. */
static bool woken(struct worker *w)
{
    bool was = ev_async_pending(&w->wake);

    if (was)
        ev_run(w->loop, EVRUN_NOWAIT);
    return was;
}

static struct lb_queued *take_one(struct lb_conn_queue *q, struct worker *w)
{
    struct lb_list got;
    struct lb_list *l;

    lb_list_init(&got);
    lb_conn_queue_take_granted(q, w->loop, &got);
    l = lb_list_first(&got);
    if (!l)
        return NULL;
    lb_list_remove(l);
    assert_true(lb_list_is_empty(&got));
    return lb_container_of(l, struct lb_queued, link);
}

static void test_grants_go_oldest_first_to_their_worker(void **state)
{
    struct lb_conn_queue q;
    struct worker a, b;
    struct lb_queued e[4];

    assert_int_equal(lb_conn_queue_init(&q), 0);
    worker_init(&a);
    worker_init(&b);
    for (int i = 0; i < 4; i++) {
        lb_queued_init(&e[i]);
        lb_conn_queue_add(&q, &e[i], i % 2 ? b.loop : a.loop, i % 2 ? &b.wake : &a.wake);
    }
    assert_int_equal(lb_conn_queue_length(&q), 4);

    lb_conn_queue_grant(&q); /* e0, a's */
    assert_true(woken(&a));
    assert_false(woken(&b));
    assert_null(take_one(&q, &b)); /* b holds no grant */
    lb_conn_queue_grant(&q);       /* one grant out at a time: nothing yet */
    assert_false(woken(&b));
    assert_ptr_equal(take_one(&q, &a), &e[0]);
    lb_conn_queue_grant(&q); /* taken, not yet tried: still nothing */
    assert_false(woken(&b));
    lb_conn_queue_settle(&q); /* e0 tried */
    lb_conn_queue_grant(&q);  /* e1, b's */
    assert_true(woken(&b));
    assert_ptr_equal(take_one(&q, &b), &e[1]);
    lb_conn_queue_settle(&q);
    assert_int_equal(lb_conn_queue_length(&q), 2);

    /* e0 found every backend full again: back before e2, not after e3. */
    lb_conn_queue_add(&q, &e[0], a.loop, &a.wake);
    lb_conn_queue_grant(&q);
    assert_true(woken(&a));
    assert_ptr_equal(take_one(&q, &a), &e[0]);
    lb_conn_queue_settle(&q);

    /* e2 granted, then leaves (timeout): its grant is reported unused and
     * settled, so the caller can pass it on. */
    lb_conn_queue_grant(&q);
    assert_true(woken(&a));
    assert_true(lb_conn_queue_remove(&q, &e[2]));
    assert_false(lb_conn_queue_remove(&q, &e[2])); /* twice is harmless */
    lb_conn_queue_grant(&q);                       /* e3: the grant passed on */
    assert_true(woken(&b));
    assert_ptr_equal(take_one(&q, &b), &e[3]);
    lb_conn_queue_settle(&q);
    lb_conn_queue_add(&q, &e[3], b.loop, &b.wake); /* no slot after all */
    /* e3 leaves without a grant. */
    assert_false(lb_conn_queue_remove(&q, &e[3]));
    assert_int_equal(lb_conn_queue_length(&q), 0);
    lb_conn_queue_grant(&q); /* nobody waits: nothing happens */
    assert_false(woken(&a));
    assert_false(woken(&b));

    worker_free(&a);
    worker_free(&b);
    lb_conn_queue_destroy(&q);
}

/* Entries put back keep arrival order among themselves and the rest. */
static void test_requeue_keeps_arrival_order(void **state)
{
    struct lb_conn_queue q;
    struct worker a;
    struct lb_queued e[6];

    assert_int_equal(lb_conn_queue_init(&q), 0);
    worker_init(&a);
    for (int i = 0; i < 6; i++) {
        lb_queued_init(&e[i]);
        lb_conn_queue_add(&q, &e[i], a.loop, &a.wake);
    }
    for (int i = 0; i < 3; i++) {
        assert_ptr_equal((lb_conn_queue_grant(&q), take_one(&q, &a)), &e[i]);
        lb_conn_queue_settle(&q);
    }
    /* put back out of order: 2, then 0, then 1 */
    lb_conn_queue_add(&q, &e[2], a.loop, &a.wake);
    lb_conn_queue_add(&q, &e[0], a.loop, &a.wake);
    lb_conn_queue_add(&q, &e[1], a.loop, &a.wake);
    for (int i = 0; i < 6; i++) {
        lb_conn_queue_grant(&q);
        assert_ptr_equal(take_one(&q, &a), &e[i]);
        lb_conn_queue_settle(&q);
    }
    assert_int_equal(lb_conn_queue_length(&q), 0);
    worker_free(&a);
    lb_conn_queue_destroy(&q);
}

/* Threads granting while their owners take, leave and come back: no
 * entry is lost, none is taken twice, the length ends at 0. */
#define THREADS 4
#define PER     200

struct racer {
    struct lb_conn_queue *q;
    struct worker w;
    struct lb_queued e[PER];
    size_t served;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    size_t left = PER, next_leave = 7;

    for (size_t i = 0; i < PER; i++) {
        lb_queued_init(&r->e[i]);
        lb_conn_queue_add(r->q, &r->e[i], r->w.loop, &r->w.wake);
    }
    while (left) {
        struct lb_list got;

        lb_conn_queue_grant(r->q); /* a slot freed somewhere */
        lb_list_init(&got);
        lb_conn_queue_take_granted(r->q, r->w.loop, &got);
        while (!lb_list_is_empty(&got)) {
            struct lb_list *l = lb_list_first(&got);
            struct lb_queued *e = lb_container_of(l, struct lb_queued, link);

            lb_list_remove(l);
            if (--next_leave == 0) { /* no room after all: back in line */
                next_leave = 7;
                lb_conn_queue_add(r->q, e, r->w.loop, &r->w.wake);
                lb_conn_queue_settle(r->q);
                continue;
            }
            r->served++;
            left--;
            lb_conn_queue_settle(r->q);
        }
    }
    return NULL;
}

static void test_threads_lose_and_double_nothing(void **state)
{
    struct lb_conn_queue q;
    struct racer *r = calloc(THREADS, sizeof(*r));
    pthread_t t[THREADS];

    assert_non_null(r);
    assert_int_equal(lb_conn_queue_init(&q), 0);
    for (int i = 0; i < THREADS; i++) {
        r[i].q = &q;
        worker_init(&r[i].w);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(r[i].served, PER);
        worker_free(&r[i].w);
    }
    assert_int_equal(lb_conn_queue_length(&q), 0);
    lb_conn_queue_destroy(&q);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grants_go_oldest_first_to_their_worker),
        cmocka_unit_test(test_requeue_keeps_arrival_order),
        cmocka_unit_test(test_threads_lose_and_double_nothing),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
