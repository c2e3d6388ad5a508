/*
 * Mailboxes (common/lb_mailbox.h) between real threads: what other threads
 * post runs on the owner's loop, every message once, in the order each
 * thread posted; a message may post again; destroy runs what is left.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>

#include "lb_mailbox.h"
#include "lb_util.h"

#define THREADS    4
#define PER_THREAD 5000

struct counted {
    struct lb_msg msg;
    int thread, seq;
};

struct owner {
    struct ev_loop *loop;
    struct lb_mailbox mb;
    int next[THREADS + 1]; /* next sequence number expected from each thread */
    int ran;
    int out_of_order;
    int total;
};

static void counted_run(struct lb_msg *m, void *ctx)
{
    struct counted *c = lb_container_of(m, struct counted, msg);
    struct owner *o = ctx;

    if (c->seq != o->next[c->thread])
        o->out_of_order++;
    o->next[c->thread] = c->seq + 1;
    o->ran++;
    free(c);
    if (o->ran == o->total)
        ev_break(o->loop, EVBREAK_ALL);
}

struct poster {
    struct owner *o;
    int thread;
};

static void *poster_main(void *arg)
{
    struct poster *p = arg;

    for (int i = 0; i < PER_THREAD; i++) {
        struct counted *c = calloc(1, sizeof(*c));

        c->thread = p->thread;
        c->seq = i;
        lb_mailbox_post(&p->o->mb, &c->msg, counted_run);
    }
    return NULL;
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_break(loop, EVBREAK_ALL); /* the test then fails on the count */
}

static void test_every_message_runs_once_in_order_per_thread(void **state)
{
    struct owner o = {.total = THREADS * PER_THREAD};
    struct poster p[THREADS];
    pthread_t t[THREADS];
    ev_timer deadline;

    o.loop = ev_loop_new(EVBACKEND_EPOLL);
    lb_mailbox_init(&o.mb, o.loop, &o);
    ev_timer_init(&deadline, deadline_cb, 30., 0.);
    ev_timer_start(o.loop, &deadline);
    for (int i = 0; i < THREADS; i++) {
        p[i] = (struct poster){&o, i};
        assert_int_equal(pthread_create(&t[i], NULL, poster_main, &p[i]), 0);
    }
    ev_run(o.loop, 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(o.ran, o.total);
    assert_int_equal(o.out_of_order, 0);
    ev_timer_stop(o.loop, &deadline);
    lb_mailbox_destroy(&o.mb);
    ev_loop_destroy(o.loop);
}

/* A message that posts the next one to its own mailbox, `left` times. */
struct chain {
    struct lb_msg msg;
    int left;
};

static int chain_ran;

static void chain_run(struct lb_msg *m, void *ctx)
{
    struct chain *c = lb_container_of(m, struct chain, msg);
    struct lb_mailbox *mb = ctx;

    chain_ran++;
    if (c->left-- > 0) {
        lb_mailbox_post(mb, &c->msg, chain_run);
        return;
    }
    free(c);
}

static void test_a_message_may_post_and_destroy_runs_what_is_left(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
    struct lb_mailbox mb;
    struct chain *c = calloc(1, sizeof(*c));

    lb_mailbox_init(&mb, loop, &mb);
    chain_ran = 0;
    c->left = 3;
    lb_mailbox_post(&mb, &c->msg, chain_run);
    /* Each run queues the next one; the loop runs them one wake-up apart. */
    for (int i = 0; i < 10 && chain_ran < 4; i++)
        ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(chain_ran, 4);

    /* Posted and never run by the loop: destroy runs it (it frees itself). */
    c = calloc(1, sizeof(*c));
    lb_mailbox_post(&mb, &c->msg, chain_run);
    lb_mailbox_destroy(&mb);
    assert_int_equal(chain_ran, 5);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_message_runs_once_in_order_per_thread),
        cmocka_unit_test(test_a_message_may_post_and_destroy_runs_what_is_left),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
