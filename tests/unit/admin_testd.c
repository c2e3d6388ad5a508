/*
 * The admin server on its own, backed by the control.h test double and its
 * fixture (pools web and db), for driving with lbctl or grpcio by hand and
 * from tests:
 *
 *   admin_testd 127.0.0.1:0        prints "port N" on stdout once listening
 *
 * Environment: ADMIN_TESTD_TICK_MS=N emits BACKEND_CHANGED for web/b1 every
 * N ms; ADMIN_TESTD_STORE=ok|fail|none picks how CLUSTER writes behave;
 * ADMIN_TESTD_QUEUE=BYTES sets the per-stream queue bound.  SIGTERM or
 * SIGINT frees everything and exits 0.
 */
#include "admin_server.h"
#include "control_double.h"
#include "lb_log.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    struct ev_loop *loop = ev_default_loop(EVBACKEND_EPOLL);
    struct lb_admin_server *server = NULL;
    struct lb_registry *r;
    ev_signal sigterm, sigint;
    const char *tick = getenv("ADMIN_TESTD_TICK_MS");
    const char *store = getenv("ADMIN_TESTD_STORE");
    const char *queue = getenv("ADMIN_TESTD_QUEUE");
    char *err = NULL;
    int rc;

    if (argc != 2) {
        fprintf(stderr, "usage: admin_testd HOST:PORT\n");
        return 2;
    }
    lb_log_set_level(LB_LOG_DEBUG);
    r = lb_double_new(loop);
    if (!r)
        return 1;
    lb_double_fixture(r);
    if (tick)
        lb_double_set_ticker(r, "web", "b1", atof(tick));
    if (store && strcmp(store, "fail") == 0)
        lb_double_set_store(r, LB_DOUBLE_STORE_FAIL, 5);
    else if (store && strcmp(store, "none") == 0)
        lb_double_set_store(r, LB_DOUBLE_STORE_NONE, 5);
    rc = lb_admin_server_new(loop, argv[1], r, &server, &err);
    if (rc < 0) {
        fprintf(stderr, "admin_testd: %s\n", err ? err : "cannot start");
        free(err);
        lb_double_free(r);
        return 1;
    }
    if (queue) {
        struct lb_admin_limits l;

        lb_admin_limits_defaults(&l);
        l.stream_queue_max = (size_t)atol(queue);
        lb_admin_server_set_limits(server, &l);
    }
    printf("port %d\n", lb_admin_server_port(server));
    fflush(stdout);
    ev_signal_init(&sigterm, on_signal, SIGTERM);
    ev_signal_init(&sigint, on_signal, SIGINT);
    ev_signal_start(loop, &sigterm);
    ev_signal_start(loop, &sigint);
    ev_run(loop, 0);
    lb_admin_server_free(server);
    lb_double_free(r);
    ev_signal_stop(loop, &sigterm);
    ev_signal_stop(loop, &sigint);
    ev_loop_destroy(loop);
    return 0;
}
