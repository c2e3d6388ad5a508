/*
 * Listening sockets (common/lb_listen.h) on real loopback sockets: the
 * options every lbd listener gets, error sentences that name the setting,
 * accept4() without blocking, and the back-off after EMFILE with a real
 * open-files limit and a real libev loop.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lb_listen.h"

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Opens `addr` with `o`, expecting success. */
static void open_ok(const char *addr, const struct lb_listen_options *o, struct lb_listen_socket *s)
{
    char *err = NULL;

    if (lb_listen_open(addr, o, s, &err) != 0)
        fail_msg("%s: %s", addr, err ? err : "?");
    assert_true(s->fd >= 0);
}

/* Opens `addr`, expecting `rc` and a one-line sentence that starts with `start` and has `needle`.
 */
static void open_fails(const char *addr, const struct lb_listen_options *o, int rc,
                       const char *start, const char *needle)
{
    struct lb_listen_socket s;
    char *err = NULL;

    assert_int_equal(lb_listen_open(addr, o, &s, &err), rc);
    assert_int_equal(s.fd, -1);
    assert_non_null(err);
    if (strncmp(err, start, strlen(start)) != 0 || !strstr(err, needle) || strchr(err, '\n'))
        fail_msg("\"%s\" does not start with \"%s\" and say \"%s\"", err, start, needle);
    free(err);
}

static int connect_to(const struct lb_listen_socket *l)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    sa.sin_port = htons((uint16_t)lb_listen_port(l));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void test_errors_name_the_setting_and_the_address(void **state)
{
    struct lb_listen_options o = {.what = "--pool web=ADDR"};
    struct lb_listen_socket busy;

    open_fails("nocolon", &o, -EINVAL, "--pool web=ADDR: ", "missing port");
    open_fails("lbd.example:80", &o, -EINVAL, "--pool web=ADDR: ", "an IP address, not a name");
    open_fails("127.0.0.1:0", &o, -EINVAL, "--pool web=ADDR: ", "port must be a number");
    open_fails("::1:80", &o, -EINVAL, "--pool web=ADDR: ", "[addr]:port");
    o.what = NULL; /* the address itself then */
    open_fails("127.0.0.1:x", &o, -EINVAL, "127.0.0.1:x: ", "port must be a number");

    o.allow_port_zero = true;
    open_ok("127.0.0.1:0", &o, &busy);
    {
        char addr[64], what[80];

        snprintf(addr, sizeof(addr), "127.0.0.1:%d", lb_listen_port(&busy));
        snprintf(what, sizeof(what), "--admin %s", addr);
        o.what = what;
        open_fails(addr, &o, -EADDRINUSE, what,
                   "cannot listen: Address already in use "
                   "(another process has this port)");
    }
    lb_listen_close(&busy);
    lb_listen_close(&busy); /* idempotent */
}

static void test_port_zero_and_loopback(void **state)
{
    const struct lb_listen_options o = {.allow_port_zero = true};
    struct lb_listen_socket v4, v6, any;

    open_ok("127.0.0.1:0", &o, &v4);
    open_ok("[::1]:0", &o, &v6);
    open_ok("0.0.0.0:0", &o, &any);
    assert_true(lb_listen_port(&v4) > 0);
    assert_true(lb_listen_port(&v6) > 0);
    assert_true(lb_listen_is_loopback(&v4));
    assert_true(lb_listen_is_loopback(&v6));
    assert_false(lb_listen_is_loopback(&any));
    assert_true(fcntl(v4.fd, F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(v4.fd, F_GETFD) & FD_CLOEXEC);
    lb_listen_close(&v4);
    lb_listen_close(&v6);
    lb_listen_close(&any);
}

/* [::]:P and 0.0.0.0:P are two listeners: an IPv6 one takes IPv6 clients only. */
static void test_ipv6_listeners_are_v6_only(void **state)
{
    const struct lb_listen_options o = {.allow_port_zero = true};
    struct lb_listen_socket v6, v4;
    char addr[64];
    int on = 0;
    socklen_t len = sizeof(on);

    open_ok("[::]:0", &o, &v6);
    assert_int_equal(getsockopt(v6.fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, &len), 0);
    assert_int_equal(on, 1);
    snprintf(addr, sizeof(addr), "0.0.0.0:%d", lb_listen_port(&v6));
    open_ok(addr, &o, &v4);
    lb_listen_close(&v4);
    lb_listen_close(&v6);
}

static void test_reuse_port_only_when_asked(void **state)
{
    struct lb_listen_options o = {.allow_port_zero = true, .reuse_port = true};
    struct lb_listen_socket a, b;
    char addr[64];

    open_ok("127.0.0.1:0", &o, &a);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", lb_listen_port(&a));
    open_ok(addr, &o, &b); /* a second worker's listener */
    lb_listen_close(&b);
    o.reuse_port = false;
    open_fails(addr, &o, -EADDRINUSE, addr, "cannot listen");
    lb_listen_close(&a);
}

/* Whether a client is waiting in l's accept queue (accepts and closes it). */
static bool took_one(const struct lb_listen_socket *l)
{
    struct sockaddr_storage peer;
    socklen_t len;
    int c = lb_listen_accept(l->fd, &peer, &len);

    if (c < 0)
        return false;
    close(c);
    return true;
}

/*
 * bind_only: a socket of the group that does not listen gets no client, so a
 * process taking over holds its own sockets without clients queueing there
 * (they would be reset if it died before accepting); once it listens, it
 * takes its share.
 */
static void test_bind_only_gets_no_clients_until_it_listens(void **state)
{
    struct lb_listen_options o = {.allow_port_zero = true, .reuse_port = true};
    struct lb_listen_socket a, b;
    unsigned on_a = 0, on_b = 0;
    char addr[64];

    open_ok("127.0.0.1:0", &o, &a);
    assert_false(a.inherited);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", lb_listen_port(&a));
    o.bind_only = true;
    open_ok(addr, &o, &b);
    assert_int_equal(lb_listen_port(&b), lb_listen_port(&a));
    for (int i = 0; i < 64; i++) {
        int c = connect_to(&a);

        assert_true(took_one(&a));
        close(c);
    }
    assert_false(took_one(&b));
    assert_int_equal(lb_listen_start(b.fd, 16), 0);
    for (int i = 0; i < 64; i++) {
        int c = connect_to(&a);

        on_a += took_one(&a);
        on_b += took_one(&b);
        close(c);
    }
    assert_int_equal(on_a + on_b, 64);
    if (on_b == 0)
        fail_msg("a listening member of the group took none of 64 clients");
    lb_listen_close(&b);
    lb_listen_close(&a);
}

/* lb_listen_addr_busy(): what a bind would find, without taking the port. */
static void test_addr_busy(void **state)
{
    struct lb_listen_options o = {.allow_port_zero = true};
    struct lb_listen_socket a;
    char addr[64];

    open_ok("127.0.0.1:0", &o, &a);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", lb_listen_port(&a));
    assert_true(lb_listen_addr_busy(addr));
    assert_true(lb_listen_addr_busy(addr)); /* the probe left nothing behind */
    lb_listen_close(&a);
    assert_false(lb_listen_addr_busy(addr));
    assert_false(lb_listen_addr_busy("127.0.0.1:0"));
    assert_false(lb_listen_addr_busy("not an address"));
    assert_false(lb_listen_addr_busy(NULL));
}

/* Accepted sockets: non-blocking, close-on-exec, TCP_NODELAY from the listener if asked. */
static void test_accept(void **state)
{
    for (int nodelay = 0; nodelay <= 1; nodelay++) {
        const struct lb_listen_options o = {.allow_port_zero = true, .nodelay = nodelay};
        struct lb_listen_socket l;
        struct sockaddr_storage peer;
        socklen_t len;
        int client, fd, on = -1;
        socklen_t olen = sizeof(on);
        char text[64];

        open_ok("127.0.0.1:0", &o, &l);
        assert_int_equal(lb_listen_accept(l.fd, &peer, &len), -EAGAIN);
        client = connect_to(&l);
        fd = lb_listen_accept(l.fd, &peer, &len);
        assert_true(fd >= 0);
        assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &olen), 0);
        assert_int_equal(on != 0, nodelay);
        assert_int_equal(peer.ss_family, AF_INET);
        assert_true(inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, text,
                              sizeof(text)) != NULL);
        assert_string_equal(text, "127.0.0.1");
        assert_int_equal(lb_listen_accept(l.fd, &peer, &len), -EAGAIN);
        close(fd);
        close(client);
        lb_listen_close(&l);
    }
}

/* ---- the back-off, with a real open-files limit ---- */

struct owner {
    unsigned pauses, resumes;
};

static void owner_pause(void *ctx)
{
    ((struct owner *)ctx)->pauses++;
}

static void owner_resume(void *ctx)
{
    ((struct owner *)ctx)->resumes++;
}

static const struct lb_accept_backoff_ops owner_ops = {owner_pause, owner_resume};

/* Takes descriptors until the process has none left; returns how many (in fds[]). */
static size_t exhaust(int *fds, size_t max)
{
    size_t n = 0;

    while (n < max && (fds[n] = dup(0)) >= 0)
        n++;
    assert_int_equal(errno, EMFILE);
    return n;
}

static void release(int *fds, size_t n)
{
    while (n > 0)
        close(fds[--n]);
}

/* Runs the loop until the owner was resumed `want` times, 2 s at most. */
static void wait_resumed(struct ev_loop *loop, const struct owner *w, unsigned want)
{
    double end = now_s() + 2;

    while (w->resumes < want && now_s() < end)
        ev_run(loop, EVRUN_ONCE);
    assert_int_equal(w->resumes, want);
}

static void test_backoff_after_emfile_logs_once_per_episode(void **state)
{
    const struct lb_listen_options o = {.allow_port_zero = true};
    struct ev_loop *loop = ev_loop_new(EVBACKEND_EPOLL);
    struct lb_accept_backoff b;
    struct owner w = {0};
    struct lb_listen_socket l;
    struct sockaddr_storage peer;
    struct rlimit saved, low;
    socklen_t len;
    int fds[256], clients[2], fd;
    size_t n;
    double start;

    assert_non_null(loop);
    open_ok("127.0.0.1:0", &o, &l);
    lb_accept_backoff_init(&b, loop, 0.05, &owner_ops, &w);
    clients[0] = connect_to(&l);
    clients[1] = connect_to(&l);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    low.rlim_cur = 128;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    n = exhaust(fds, 256);

    /* The first EMFILE pauses, says so, and arms the resume. */
    fd = lb_listen_accept(l.fd, &peer, &len);
    assert_int_equal(fd, -EMFILE);
    assert_true(lb_listen_error_is_resource(fd));
    start = now_s();
    assert_int_equal(lb_accept_backoff_check(&b, fd), LB_ACCEPT_PAUSED_NEW);
    assert_int_equal(w.pauses, 1);
    assert_true(lb_accept_backoff_is_pending(&b));
    wait_resumed(loop, &w, 1);
    assert_true(now_s() - start >= 0.04);
    /* Still out of descriptors: paused again, not said again. */
    fd = lb_listen_accept(l.fd, &peer, &len);
    assert_int_equal(lb_accept_backoff_check(&b, fd), LB_ACCEPT_PAUSED);
    assert_int_equal(w.pauses, 2);
    wait_resumed(loop, &w, 2);

    /* Descriptors again: the client waiting in the queue is taken, the episode ends. */
    release(fds, n);
    fd = lb_listen_accept(l.fd, &peer, &len);
    assert_true(fd >= 0);
    assert_int_equal(lb_accept_backoff_check(&b, fd), LB_ACCEPT_GO);
    close(fd);
    /* A later shortage is a new episode, said again. */
    n = exhaust(fds, 256);
    fd = lb_listen_accept(l.fd, &peer, &len);
    assert_int_equal(lb_accept_backoff_check(&b, fd), LB_ACCEPT_PAUSED_NEW);
    release(fds, n);
    lb_accept_backoff_stop(&b);
    assert_false(lb_accept_backoff_is_pending(&b));
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);

    /* Other errors are the caller's: no pause. */
    assert_int_equal(lb_accept_backoff_check(&b, -EINVAL), LB_ACCEPT_FAILED);
    assert_int_equal(lb_accept_backoff_check(&b, -EAGAIN), LB_ACCEPT_GO);
    assert_int_equal(w.pauses, 3);
    close(clients[0]);
    close(clients[1]);
    lb_listen_close(&l);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors_name_the_setting_and_the_address),
        cmocka_unit_test(test_port_zero_and_loopback),
        cmocka_unit_test(test_ipv6_listeners_are_v6_only),
        cmocka_unit_test(test_reuse_port_only_when_asked),
        cmocka_unit_test(test_bind_only_gets_no_clients_until_it_listens),
        cmocka_unit_test(test_addr_busy),
        cmocka_unit_test(test_accept),
        cmocka_unit_test(test_backoff_after_emfile_logs_once_per_episode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
