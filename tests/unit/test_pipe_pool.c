/*
 * pipe_pool: pipes handed out up to the cap, empty ones kept for the next
 * taker up to LB_PIPES_KEPT and closed beyond, dropped ones closed, the
 * capacity asked for, nothing left open after destroy.  Real pipes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "pipe_pool.h"

static bool fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

static void test_get_gives_a_non_blocking_pipe_of_the_asked_size(void **state)
{
    struct lb_pipe_pool pp;
    struct lb_pipe p;
    char byte = 'x';

    (void)state;
    lb_pipe_pool_init(&pp, 4);
    assert_int_equal(lb_pipe_pool_get(&pp, &p), 0);
    assert_true(p.rd >= 0 && p.wr >= 0);
    assert_true(fcntl(p.rd, F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(p.rd, F_GETFD) & FD_CLOEXEC);
    /* LB_PIPE_SIZE unless this user is over the soft limit of pipe pages. */
    assert_int_equal((long)p.size, (long)fcntl(p.wr, F_GETPIPE_SZ));
    assert_true(p.size == LB_PIPE_SIZE || p.size == 65536);
    assert_int_equal(read(p.rd, &byte, 1), -1); /* empty, and does not block */
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(pp.n_open, 1);
    lb_pipe_pool_put(&pp, &p);
    assert_int_equal(p.rd, -1);
    lb_pipe_pool_destroy(&pp);
    assert_int_equal(pp.n_open, 0);
}

static void test_cap_counts_pipes_in_use_and_kept(void **state)
{
    struct lb_pipe_pool pp;
    struct lb_pipe p[3], q;

    (void)state;
    lb_pipe_pool_init(&pp, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(lb_pipe_pool_get(&pp, &p[i]), 0);
    assert_int_equal(lb_pipe_pool_get(&pp, &q), -EAGAIN);
    lb_pipe_pool_put(&pp, &p[1]); /* kept: still open, still counted */
    assert_int_equal(pp.n_open, 3);
    assert_int_equal(pp.n_kept, 1);
    assert_int_equal(lb_pipe_pool_get(&pp, &q), 0); /* the kept one again */
    assert_int_equal(pp.n_kept, 0);
    assert_int_equal(lb_pipe_pool_get(&pp, &p[1]), -EAGAIN);
    lb_pipe_pool_put(&pp, &q);
    lb_pipe_pool_put(&pp, &p[0]);
    lb_pipe_pool_put(&pp, &p[2]);
    lb_pipe_pool_destroy(&pp);
    assert_int_equal(pp.n_open, 0);
}

static void test_dropped_pipe_is_closed_with_its_bytes(void **state)
{
    struct lb_pipe_pool pp;
    struct lb_pipe p;
    int rd, wr;

    (void)state;
    lb_pipe_pool_init(&pp, 2);
    assert_int_equal(lb_pipe_pool_get(&pp, &p), 0);
    rd = p.rd;
    wr = p.wr;
    assert_int_equal(write(p.wr, "abc", 3), 3);
    lb_pipe_pool_drop(&pp, &p);
    assert_int_equal(p.rd, -1);
    assert_false(fd_is_open(rd));
    assert_false(fd_is_open(wr));
    assert_int_equal(pp.n_open, 0);
    assert_int_equal(pp.n_kept, 0);
    lb_pipe_pool_drop(&pp, &p); /* no pipe: nothing happens */
    lb_pipe_pool_put(&pp, &p);
    assert_int_equal(pp.n_open, 0);
    lb_pipe_pool_destroy(&pp);
}

static void test_kept_pipes_are_bounded_and_closed_at_destroy(void **state)
{
    enum { N = LB_PIPES_KEPT + 3 };
    struct lb_pipe_pool pp;
    struct lb_pipe p[N];
    int fds[N][2];

    (void)state;
    lb_pipe_pool_init(&pp, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(lb_pipe_pool_get(&pp, &p[i]), 0);
        fds[i][0] = p[i].rd;
        fds[i][1] = p[i].wr;
    }
    for (int i = 0; i < N; i++)
        lb_pipe_pool_put(&pp, &p[i]);
    assert_int_equal(pp.n_kept, LB_PIPES_KEPT);
    assert_int_equal(pp.n_open, LB_PIPES_KEPT);
    for (int i = 0; i < N; i++) /* the first ones were kept, the rest closed */
        assert_int_equal(fd_is_open(fds[i][0]), i < LB_PIPES_KEPT);
    lb_pipe_pool_destroy(&pp);
    assert_int_equal(pp.n_open, 0);
    for (int i = 0; i < N; i++) {
        assert_false(fd_is_open(fds[i][0]));
        assert_false(fd_is_open(fds[i][1]));
    }
}

static void test_disabled_pool_hands_out_nothing_and_keeps_nothing(void **state)
{
    struct lb_pipe_pool pp;
    struct lb_pipe p;

    (void)state;
    lb_pipe_pool_init(&pp, 4);
    assert_int_equal(lb_pipe_pool_get(&pp, &p), 0);
    pp.disabled = true; /* splice() refused meanwhile */
    lb_pipe_pool_put(&pp, &p);
    assert_int_equal(pp.n_kept, 0);
    assert_int_equal(pp.n_open, 0);
    assert_int_equal(lb_pipe_pool_get(&pp, &p), -EAGAIN);
    lb_pipe_pool_destroy(&pp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_gives_a_non_blocking_pipe_of_the_asked_size),
        cmocka_unit_test(test_cap_counts_pipes_in_use_and_kept),
        cmocka_unit_test(test_dropped_pipe_is_closed_with_its_bytes),
        cmocka_unit_test(test_kept_pipes_are_bounded_and_closed_at_destroy),
        cmocka_unit_test(test_disabled_pool_hands_out_nothing_and_keeps_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
