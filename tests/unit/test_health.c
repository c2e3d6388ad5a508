/*
 * Health through the real pool model, a real libev loop and real sockets on
 * 127.0.0.1: active TCP and HTTP checks with rise/fall, passive ejection
 * after connect failures, the operator override winning over checks, the
 * panic threshold, and the slow start ramp.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "health.h"
#include "lb_log.h"
#include "registry.h"

struct fixture {
    struct ev_loop *loop;
    struct lb_registry registry;
    struct lb_update_sink sink;
    struct lb_pool *pool;
    int listen_fd;
    int port;
    ev_io accept_w; /* answers HTTP checks when http_status != 0 */
    int http_status;
};

static struct fixture fx;

/* An accepted check connection waiting for its HTTP request. */
struct http_conn {
    ev_io io;
    bool used;
};

static struct http_conn conns[32];

static void http_conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct http_conn *c = (struct http_conn *)w;
    char buf[512], reply[128];
    ssize_t n = recv(w->fd, buf, sizeof(buf), 0);

    (void)n;
    snprintf(reply, sizeof(reply), "HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n", fx.http_status);
    if (send(w->fd, reply, strlen(reply), MSG_NOSIGNAL) < 0)
        fail_msg("send failed");
    ev_io_stop(loop, w);
    close(w->fd);
    c->used = false;
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    int fd = accept(fx.listen_fd, NULL, NULL);

    if (fd < 0)
        return;
    if (fx.http_status) {
        /* answer once the check's request is there (the loop must not block on it) */
        for (size_t i = 0; i < sizeof(conns) / sizeof(conns[0]); i++) {
            if (!conns[i].used) {
                conns[i].used = true;
                ev_io_init(&conns[i].io, http_conn_cb, fd, EV_READ);
                ev_io_start(loop, &conns[i].io);
                return;
            }
        }
    }
    close(fd);
}

static int open_listener(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)port)};
    socklen_t len = sizeof(sa);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 64), 0);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    fx.port = ntohs(sa.sin_port);
    fx.listen_fd = fd;
    ev_io_init(&fx.accept_w, accept_cb, fd, EV_READ);
    ev_io_start(fx.loop, &fx.accept_w);
    return fd;
}

static void close_listener(void)
{
    for (size_t i = 0; i < sizeof(conns) / sizeof(conns[0]); i++) {
        if (conns[i].used) {
            ev_io_stop(fx.loop, &conns[i].io);
            close(conns[i].io.fd);
            conns[i].used = false;
        }
    }
    ev_io_stop(fx.loop, &fx.accept_w);
    close(fx.listen_fd);
    fx.listen_fd = -1;
}

static void set_policy(enum lb_health_type type, int rise, int fall, int64_t slow_start_ms,
                       int panic)
{
    struct lb_update u = {.kind = LB_UPDATE_POLICY_PUT, .pool = "p"};

    lb_pool_policy_defaults(&u.u.policy);
    u.u.policy.health.type = type;
    u.u.policy.health.interval_ms = 20;
    u.u.policy.health.timeout_ms = 200;
    u.u.policy.health.rise = rise;
    u.u.policy.health.fall = fall;
    u.u.policy.slow_start_ms = slow_start_ms;
    u.u.policy.panic_threshold = panic;
    fx.sink.apply(fx.sink.ctx, &u);
    fx.sink.commit(fx.sink.ctx);
}

static struct lb_backend *put(const char *id, int port, int weight)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = "p", .id = id};

    snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "127.0.0.1:%d", port);
    u.u.backend.weight = weight;
    fx.sink.apply(fx.sink.ctx, &u);
    fx.sink.commit(fx.sink.ctx);
    return lb_pool_find(fx.pool, id)->backend;
}

static int setup(void **state)
{
    const char *names[] = {"p"}, *listens[] = {"127.0.0.1:1"};

    memset(&fx, 0, sizeof(fx));
    fx.loop = ev_loop_new(EVBACKEND_EPOLL);
    assert_int_equal(lb_registry_init(&fx.registry, fx.loop, 1, names, listens), 0);
    fx.sink = lb_registry_sink(&fx.registry);
    fx.pool = lb_registry_find_pool(&fx.registry, "p");
    fx.listen_fd = -1;
    return 0;
}

static int teardown(void **state)
{
    if (fx.listen_fd >= 0)
        close_listener();
    lb_registry_destroy(&fx.registry);
    ev_loop_destroy(fx.loop);
    return 0;
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_break(loop, EVBREAK_ONE);
}

/*
 * Runs the loop until pred() holds or `seconds` pass; returns pred().  One
 * more iteration follows, as in lbd, where what changed is published before
 * the loop next blocks.
 */
static bool run_until(bool (*pred)(void *), void *arg, double seconds)
{
    ev_timer deadline;
    ev_tstamp end = ev_time() + seconds;

    while (!pred(arg) && ev_time() < end) {
        ev_timer_init(&deadline, timeout_cb, 0.01, 0.);
        ev_timer_start(fx.loop, &deadline);
        ev_run(fx.loop, EVRUN_ONCE);
        ev_timer_stop(fx.loop, &deadline);
    }
    ev_run(fx.loop, EVRUN_NOWAIT);
    return pred(arg);
}

static bool is_up(void *b)
{
    return ((struct lb_backend *)b)->health == LB_HEALTH_UP;
}

static bool is_down(void *b)
{
    return ((struct lb_backend *)b)->health == LB_HEALTH_DOWN;
}

static bool is_eligible(void *b)
{
    return lb_backend_is_eligible(b);
}

static bool not_eligible(void *b)
{
    return !lb_backend_is_eligible(b);
}

static void test_tcp_rise_fall(void **state)
{
    struct lb_backend *b;

    open_listener(0);
    set_policy(LB_CHECK_TCP, 2, 3, 0, 0);
    b = put("a", fx.port, 100);
    assert_int_equal(b->health, LB_HEALTH_UNKNOWN);
    assert_true(lb_backend_is_eligible(b)); /* unknown counts as up until checked */
    assert_true(run_until(is_up, b, 5));
    assert_int_equal(fx.pool->snap->n_eligible, 1);

    close_listener();
    assert_true(run_until(is_down, b, 5));
    /* fall = 3: it took three consecutive failures */
    assert_true(b->check.failures >= 3);
    assert_int_equal(fx.pool->snap->n_eligible, 0);

    open_listener(fx.port);
    assert_true(run_until(is_up, b, 5));
    assert_true(b->check.successes >= 2); /* rise = 2 */
    assert_int_equal(fx.pool->snap->n_eligible, 1);
}

static void test_http_status(void **state)
{
    struct lb_backend *b;

    open_listener(0);
    fx.http_status = 503;
    set_policy(LB_CHECK_HTTP, 1, 1, 0, 0);
    b = put("a", fx.port, 100);
    assert_true(run_until(is_down, b, 5));
    fx.http_status = 302;
    assert_true(run_until(is_up, b, 5));
    fx.http_status = 404;
    assert_true(run_until(is_down, b, 5));
    fx.http_status = 200;
    assert_true(run_until(is_up, b, 5));
}

static void test_override_wins(void **state)
{
    struct lb_update ov = {.kind = LB_UPDATE_OVERRIDE_PUT, .pool = "p", .id = "a"};
    struct lb_backend *b;

    set_policy(LB_CHECK_TCP, 1, 1, 0, 0);
    b = put("a", 1, 100); /* port 1: nothing listens, checks fail */
    assert_true(run_until(is_down, b, 5));
    assert_false(lb_backend_is_eligible(b));

    ov.u.override.health = LB_HEALTH_FORCE_UP;
    fx.sink.apply(fx.sink.ctx, &ov);
    fx.sink.commit(fx.sink.ctx);
    assert_true(lb_backend_is_eligible(b));
    /* more failed checks do not change the operator's decision */
    assert_false(run_until(not_eligible, b, 0.2));

    open_listener(0);
    b = put("c", fx.port, 100);
    assert_true(run_until(is_up, b, 5));
    ov.id = "c";
    ov.u.override.health = LB_HEALTH_FORCE_DOWN;
    fx.sink.apply(fx.sink.ctx, &ov);
    fx.sink.commit(fx.sink.ctx);
    assert_false(lb_backend_is_eligible(b));
    assert_false(run_until(is_eligible, b, 0.2));
}

static void test_passive_ejection(void **state)
{
    struct lb_backend *b;
    double first;

    set_policy(LB_CHECK_NONE, 2, 3, 0, 0);
    b = put("a", 1, 100);
    put("b", 2, 100);
    lb_health_note_connect(b, false);
    lb_health_note_connect(b, false);
    assert_false(b->ejected);
    lb_health_note_connect(b, true); /* a success resets the count */
    lb_health_note_connect(b, false);
    lb_health_note_connect(b, false);
    assert_false(b->ejected);
    lb_health_note_connect(b, false);
    assert_true(b->ejected);
    lb_registry_publish(&fx.registry); /* the loop would, before it next blocks */
    assert_false(lb_backend_is_eligible(b));
    assert_int_equal(fx.pool->snap->n_eligible, 1);
    first = ev_timer_remaining(fx.loop, &b->check.eject_timer);
    assert_true(first > 4.0 && first <= 5.0);

    /* the period ends: back, then a second ejection lasts twice as long */
    ev_timer_stop(fx.loop, &b->check.eject_timer);
    ev_feed_event(fx.loop, &b->check.eject_timer, EV_TIMER);
    ev_run(fx.loop, EVRUN_NOWAIT);
    assert_false(b->ejected);
    assert_true(lb_backend_is_eligible(b));
    for (int i = 0; i < 3; i++)
        lb_health_note_connect(b, false);
    assert_true(b->ejected);
    assert_true(ev_timer_remaining(fx.loop, &b->check.eject_timer) > 9.0);
}

static void test_panic_threshold(void **state)
{
    struct lb_backend *b[4];
    char id[2] = "a";

    set_policy(LB_CHECK_TCP, 1, 1, 0, 50);
    open_listener(0);
    for (int i = 0; i < 4; i++) {
        id[0] = (char)('a' + i);
        /* a and b live; c and d point at port 1 where nothing listens */
        b[i] = put(id, i < 2 ? fx.port : 1, 100);
    }
    assert_true(run_until(is_down, b[2], 5));
    assert_true(run_until(is_down, b[3], 5));
    assert_true(run_until(is_up, b[0], 5));
    assert_true(run_until(is_up, b[1], 5));
    /* 2 of 4 healthy = 50%: not below the threshold */
    assert_false(lb_pool_in_panic(fx.pool));
    assert_int_equal(fx.pool->snap->n_eligible, 2);

    close_listener();
    assert_true(run_until(is_down, b[0], 5));
    /* 1 of 4 healthy (or none): panic spreads over all four */
    assert_true(lb_pool_in_panic(fx.pool));
    assert_int_equal(fx.pool->snap->n_eligible, 4);
}

/* The weight new connections see for b. */
static int effective_weight(const struct lb_backend *b)
{
    const struct lb_snap_entry *e = lb_pool_entry_of(b);

    return e ? (int)e->weight : 0;
}

static bool ramp_done(void *b)
{
    return effective_weight(b) == 100;
}

static void test_slow_start_ramp(void **state)
{
    struct lb_backend *b;
    int last = 0, samples = 0;
    ev_tstamp start;

    set_policy(LB_CHECK_NONE, 1, 1, 1000, 0);
    b = put("a", 1, 100);
    start = ev_now(fx.loop);
    /* starts at 10% of its weight */
    assert_int_equal(effective_weight(b), 10);
    /* then rises monotonically, roughly linearly, to the full weight */
    while (effective_weight(b) < 100 && ev_time() - start < 5) {
        ev_run(fx.loop, EVRUN_ONCE);
        if (effective_weight(b) != last) {
            double elapsed = ev_now(fx.loop) - b->ramp_start;
            double expect = elapsed >= 1.0 ? 100 : elapsed < 0.1 ? 10 : 100 * elapsed;

            assert_true(effective_weight(b) >= last);
            assert_in_range(effective_weight(b), (int)expect - 10, (int)expect + 10);
            last = effective_weight(b);
            samples++;
        }
    }
    assert_true(ramp_done(b));
    assert_true(samples >= 5);
    assert_false(ev_is_active(&fx.pool->ramp_timer)); /* timer stops once done */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tcp_rise_fall, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_override_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_passive_ejection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_panic_threshold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_start_ramp, setup, teardown),
    };

    lb_log_set_level(LB_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
