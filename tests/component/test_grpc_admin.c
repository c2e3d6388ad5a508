/*
 * The admin server over real loopback sockets, against lbd's real registry
 * (admin_fixture.h): lbctl's client library for ordinary calls, and the raw
 * HTTP/2 client (h2_client.h) for what a well-behaved client never does
 * (wrong content-type, truncated frames, a closed flow-control window,
 * resets, garbage).
 *
 * The server's loop runs in a thread of its own; the test thread touches
 * the server and the registry only through fx_run(), so nothing is shared
 * without a lock.  Waits poll a condition against a deadline.
 *
 * Long because it is one test per admin behaviour (each method, each way a
 * client can misbehave); they share the fixture and nothing else.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin_client.h"
#include "admin_fixture.h"
#include "admin_server.h"
#include "h2_client.h"
#include "lb_grpc_frame.h"

#include "grpc/health/v1/health.pb-c.h"
#include "lb/v1/admin.pb-c.h"

static struct lb_admin_client *client;

static double now_s(void)
{
    return h2_now();
}

static int setup(void **state)
{
    struct lb_admin_options opts = {0};
    struct lb_admin_client_options co = {0};
    struct lb_admin_limits limits;
    char *err = NULL;

    lb_admin_limits_defaults(&limits);
    limits.stream_queue_max = 2048;
    limits.max_message = 1024 * 1024;
    fx_start(&opts, &limits);
    co.addr = fx.addr;
    assert_int_equal(lb_admin_client_new(&co, &client, &err), 0);
    return 0;
}

static int teardown(void **state)
{
    lb_admin_client_free(client);
    fx_stop();
    return 0;
}

/* ---- calls through lbctl's client ---- */

static int call(const char *path, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *type, int64_t timeout_ms, ProtobufCMessage **resp,
                struct lb_admin_status *st)
{
    ProtobufCMessage *dummy = NULL;
    int rc = lb_admin_client_call(client, path, req, type, timeout_ms, resp ? resp : &dummy, st);

    if (dummy)
        protobuf_c_message_free_unpacked(dummy, NULL);
    return rc;
}

/* Undrains pool/id in this lbd only, and expects OK. */
static void undrain_local(const char *pool, const char *id)
{
    Lb__V1__SetDrainRequest sd = LB__V1__SET_DRAIN_REQUEST__INIT;
    struct lb_admin_status st;

    sd.pool = (char *)pool;
    sd.id = (char *)id;
    sd.scope = LB__V1__SCOPE__SCOPE_LOCAL;
    fx_expect_status(call("/lb.v1.Admin/SetDrain", &sd.base,
                          &lb__v1__set_drain_response__descriptor, 2000, NULL, &st),
                     &st, LB_GRPC_OK, NULL);
}

static void test_reads(void **state)
{
    Lb__V1__ListPoolsRequest lp = LB__V1__LIST_POOLS_REQUEST__INIT;
    Lb__V1__ListBackendsRequest lb = LB__V1__LIST_BACKENDS_REQUEST__INIT;
    Lb__V1__GetBackendRequest gb = LB__V1__GET_BACKEND_REQUEST__INIT;
    struct lb_admin_status st;
    ProtobufCMessage *m;
    int rc;

    rc = call("/lb.v1.Admin/ListPools", &lp.base, &lb__v1__list_pools_response__descriptor, 2000,
              &m, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    {
        Lb__V1__ListPoolsResponse *r = (void *)m;

        assert_int_equal(r->n_pools, 2);
        assert_string_equal(r->pools[0]->name, "web");
        assert_string_equal(r->pools[1]->algorithm, "leastconn");
        assert_int_equal(r->pools[0]->backends, 3);
        /* a pool's connection counts are its workers' (none here): see test_workers.py */
        assert_int_equal(r->pools[0]->active_connections, 0);
    }
    protobuf_c_message_free_unpacked(m, NULL);

    lb.pool = "web";
    rc = call("/lb.v1.Admin/ListBackends", &lb.base, &lb__v1__list_backends_response__descriptor,
              2000, &m, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    {
        Lb__V1__ListBackendsResponse *r = (void *)m;

        assert_int_equal(r->n_backends, 3);
        assert_string_equal(r->backends[1]->id, "b2");
        assert_int_equal(r->backends[1]->active_connections, 3);
        assert_string_equal(r->backends[2]->addr, "[fd00::3]:8080");
    }
    protobuf_c_message_free_unpacked(m, NULL);

    lb.pool = "nope";
    rc = call("/lb.v1.Admin/ListBackends", &lb.base, &lb__v1__list_backends_response__descriptor,
              2000, NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_NOT_FOUND, "pool nope not found");

    gb.pool = "web";
    gb.id = "b9";
    rc = call("/lb.v1.Admin/GetBackend", &gb.base, &lb__v1__get_backend_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_NOT_FOUND, "backend web/b9 not found");
    gb.id = "";
    rc = call("/lb.v1.Admin/GetBackend", &gb.base, &lb__v1__get_backend_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_INVALID_ARGUMENT, "id is required");
    gb.id = "bad id";
    rc = call("/lb.v1.Admin/GetBackend", &gb.base, &lb__v1__get_backend_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_INVALID_ARGUMENT, "not a valid name");
    gb.id = "b1";
    rc = call("/lb.v1.Admin/GetBackend", &gb.base, &lb__v1__get_backend_response__descriptor, 2000,
              &m, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    assert_string_equal(((Lb__V1__GetBackendResponse *)m)->backend->addr, "10.0.0.1:8080");
    protobuf_c_message_free_unpacked(m, NULL);
}

static void test_health_and_unknown(void **state)
{
    Grpc__Health__V1__HealthCheckRequest hc = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Lb__V1__ListPoolsRequest lp = LB__V1__LIST_POOLS_REQUEST__INIT;
    struct lb_admin_status st;
    ProtobufCMessage *m;
    int rc;

    rc = call("/grpc.health.v1.Health/Check", &hc.base,
              &grpc__health__v1__health_check_response__descriptor, 2000, &m, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status,
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    protobuf_c_message_free_unpacked(m, NULL);
    hc.service = "nope.Svc";
    rc = call("/grpc.health.v1.Health/Check", &hc.base,
              &grpc__health__v1__health_check_response__descriptor, 2000, NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_NOT_FOUND, "unknown service nope.Svc");

    rc = call("/lb.v1.Admin/Nope", &lp.base, &lb__v1__list_pools_response__descriptor, 2000, NULL,
              &st);
    fx_expect_status(rc, &st, LB_GRPC_UNIMPLEMENTED, "unknown method Nope for service lb.v1.Admin");
    rc = call("/other.v1.Svc/ListPools", &lp.base, &lb__v1__list_pools_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_UNIMPLEMENTED,
                     "unknown method ListPools for service other.v1.Svc");
    rc = call("/nopath", &lp.base, &lb__v1__list_pools_response__descriptor, 2000, NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_UNIMPLEMENTED, "malformed method name");
}

static void test_oversized_request(void **state)
{
    Lb__V1__ListBackendsRequest lb = LB__V1__LIST_BACKENDS_REQUEST__INIT;
    struct lb_admin_status st;
    size_t big = 2 * 1024 * 1024; /* the server in these tests takes 1 MiB */
    char *pool = malloc(big + 1);
    int rc;

    assert_non_null(pool);
    memset(pool, 'a', big);
    pool[big] = '\0';
    lb.pool = pool;
    rc = call("/lb.v1.Admin/ListBackends", &lb.base, &lb__v1__list_backends_response__descriptor,
              5000, NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_RESOURCE_EXHAUSTED, "larger than the maximum");
    free(pool);
}

static void test_mutations(void **state)
{
    Lb__V1__SetWeightRequest sw = LB__V1__SET_WEIGHT_REQUEST__INIT;
    Lb__V1__SetHealthRequest sh = LB__V1__SET_HEALTH_REQUEST__INIT;
    struct lb_admin_status st;
    ProtobufCMessage *m;
    int rc;

    sw.pool = "web";
    sw.id = "b1";
    sw.scope = LB__V1__SCOPE__SCOPE_LOCAL;
    sw.weight_opt_case = LB__V1__SET_WEIGHT_REQUEST__WEIGHT_OPT_WEIGHT;
    sw.weight = 50;
    rc = call("/lb.v1.Admin/SetWeight", &sw.base, &lb__v1__set_weight_response__descriptor, 2000,
              &m, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    {
        Lb__V1__Backend *b = ((Lb__V1__SetWeightResponse *)m)->backend;

        assert_int_equal(b->weight_override_opt_case,
                         LB__V1__BACKEND__WEIGHT_OVERRIDE_OPT_WEIGHT_OVERRIDE);
        assert_int_equal(b->weight_override, 50);
        assert_int_equal(b->effective_weight, 50);
    }
    protobuf_c_message_free_unpacked(m, NULL);

    sw.clear = true;
    rc = call("/lb.v1.Admin/SetWeight", &sw.base, &lb__v1__set_weight_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_INVALID_ARGUMENT, "not both");
    sw.clear = false;
    sw.weight = 1001;
    rc = call("/lb.v1.Admin/SetWeight", &sw.base, &lb__v1__set_weight_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_INVALID_ARGUMENT, "out of range");
    sw.weight_opt_case = LB__V1__SET_WEIGHT_REQUEST__WEIGHT_OPT__NOT_SET;
    sw.clear = true;
    sw.scope = LB__V1__SCOPE__SCOPE_CLUSTER;
    rc = call("/lb.v1.Admin/SetWeight", &sw.base, &lb__v1__set_weight_response__descriptor, 2000,
              &m, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    assert_int_equal(((Lb__V1__SetWeightResponse *)m)->backend->weight_override_opt_case,
                     LB__V1__BACKEND__WEIGHT_OVERRIDE_OPT__NOT_SET);
    protobuf_c_message_free_unpacked(m, NULL);

    sh.pool = "web";
    sh.id = "b1";
    sh.health = LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_FORCE_DOWN;
    rc = call("/lb.v1.Admin/SetHealth", &sh.base, &lb__v1__set_health_response__descriptor, 2000,
              &m, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    {
        Lb__V1__Backend *b = ((Lb__V1__SetHealthResponse *)m)->backend;

        assert_int_equal(b->health_override, LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_FORCE_DOWN);
        assert_int_equal(b->effective_weight, 0); /* forced down: no new connections */
    }
    protobuf_c_message_free_unpacked(m, NULL);
    sh.health = 7;
    rc = call("/lb.v1.Admin/SetHealth", &sh.base, &lb__v1__set_health_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_INVALID_ARGUMENT, "health 7");
    sh.health = LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_AUTO;

    fx_set_store(FX_STORE_FAIL, 5);
    rc = call("/lb.v1.Admin/SetHealth", &sh.base, &lb__v1__set_health_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_UNAVAILABLE, "etcd failed: etcd: connection refused");
    fx_set_store(FX_STORE_NONE, 5);
    rc = call("/lb.v1.Admin/SetHealth", &sh.base, &lb__v1__set_health_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_UNAVAILABLE, "cluster scope needs etcd");
    sh.scope = LB__V1__SCOPE__SCOPE_LOCAL;
    rc = call("/lb.v1.Admin/SetHealth", &sh.base, &lb__v1__set_health_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    fx_set_store(FX_STORE_OK, 5);
}

static void test_drain_wait(void **state)
{
    Lb__V1__SetDrainRequest sd = LB__V1__SET_DRAIN_REQUEST__INIT;
    struct lb_admin_status st;
    ProtobufCMessage *m;
    int rc;

    sd.pool = "web";
    sd.id = "b2"; /* 3 connections that finish one per drain step */
    sd.drain = true;
    sd.wait = true;
    rc = call("/lb.v1.Admin/SetDrain", &sd.base, &lb__v1__set_drain_response__descriptor, 5000, &m,
              &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    assert_true(((Lb__V1__SetDrainResponse *)m)->backend->drained);
    assert_int_equal(((Lb__V1__SetDrainResponse *)m)->backend->active_connections, 0);
    protobuf_c_message_free_unpacked(m, NULL);

    sd.id = "b3"; /* 2 connections that never finish */
    sd.wait_timeout_ms = 150;
    rc = call("/lb.v1.Admin/SetDrain", &sd.base, &lb__v1__set_drain_response__descriptor, 5000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_DEADLINE_EXCEEDED,
                     "backend web/b3 still has 2 active connections after 150ms");
    fx_wait_no_subscribers();

    /* the call's own deadline comes first */
    sd.wait_timeout_ms = 0;
    rc = call("/lb.v1.Admin/SetDrain", &sd.base, &lb__v1__set_drain_response__descriptor, 100, NULL,
              &st);
    fx_expect_status(rc, &st, LB_GRPC_DEADLINE_EXCEEDED, "deadline");
    fx_wait_no_subscribers();

    sd.drain = false;
    sd.wait = false;
    rc = call("/lb.v1.Admin/SetDrain", &sd.base, &lb__v1__set_drain_response__descriptor, 2000, &m,
              &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    assert_false(((Lb__V1__SetDrainResponse *)m)->backend->drain);
    protobuf_c_message_free_unpacked(m, NULL);
}

static void test_cancel_while_store_pending(void **state)
{
    Lb__V1__SetDrainRequest sd = LB__V1__SET_DRAIN_REQUEST__INIT;
    Lb__V1__ListPoolsRequest lp = LB__V1__LIST_POOLS_REQUEST__INIT;
    struct lb_admin_status st;
    int rc;

    /* The etcd write completes 300 ms later, long after the call is gone. */
    fx_set_store(FX_STORE_OK, 300);
    sd.pool = "db";
    sd.id = "d1";
    sd.drain = true;
    sd.wait = true;
    rc = call("/lb.v1.Admin/SetDrain", &sd.base, &lb__v1__set_drain_response__descriptor, 50, NULL,
              &st);
    fx_expect_status(rc, &st, LB_GRPC_DEADLINE_EXCEEDED, NULL);
    fx_wait_store_idle(); /* the write completes for a call that is gone */
    fx_wait_no_subscribers();
    rc = call("/lb.v1.Admin/ListPools", &lp.base, &lb__v1__list_pools_response__descriptor, 2000,
              NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    fx_set_store(FX_STORE_OK, 5);
    undrain_local("db", "d1");
}

/*
 * A CLUSTER change whose backend leaves while etcd takes the write (its
 * lease lapsed): the override is stored, so the call succeeds, without a
 * backend in the answer, instead of NOT_FOUND for a change that was made.
 */
static void test_cluster_change_for_a_backend_that_left_meanwhile(void **state)
{
    Lb__V1__SetWeightRequest sw = LB__V1__SET_WEIGHT_REQUEST__INIT;
    Lb__V1__SetWeightResponse *resp = NULL;
    struct lb_admin_status st;
    int rc;

    fx_set_store(FX_STORE_OK, 300);
    sw.pool = "db";
    sw.id = "d1";
    sw.weight_opt_case = LB__V1__SET_WEIGHT_REQUEST__WEIGHT_OPT_WEIGHT;
    sw.weight = 500;
    fx_delete_backend_later("db", "d1", 100);
    rc = call("/lb.v1.Admin/SetWeight", &sw.base, &lb__v1__set_weight_response__descriptor, 3000,
              (ProtobufCMessage **)&resp, &st);
    fx_expect_status(rc, &st, LB_GRPC_OK, NULL);
    assert_non_null(resp);
    assert_null(resp->backend);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    fx_wait_store_idle();
    fx_set_store(FX_STORE_OK, 5);
    fx_put_backend("db", "d1", "10.0.1.1:5432");
}

struct watch_count {
    int seen;
    int stop_after;
};

static int count_events(void *ud, const ProtobufCMessage *msg)
{
    struct watch_count *w = ud;
    const Lb__V1__Event *ev = (const void *)msg;

    assert_string_equal(ev->pool, "web");
    assert_int_equal(ev->type, LB__V1__EVENT__TYPE__TYPE_BACKEND_CHANGED);
    return ++w->seen >= w->stop_after;
}

static void test_watch(void **state)
{
    Lb__V1__WatchEventsRequest req = LB__V1__WATCH_EVENTS_REQUEST__INIT;
    struct watch_count w = {0, 3};
    struct lb_admin_status st;
    int rc;

    fx_set_ticker(10);
    req.pool = "web";
    rc = lb_admin_client_stream(client, "/lb.v1.Admin/WatchEvents", &req.base,
                                &lb__v1__event__descriptor, 5000, count_events, &w, NULL, &st);
    assert_int_equal(rc, LB_GRPC_CANCELLED);
    assert_int_equal(w.seen, 3);
    fx_wait_no_subscribers();

    req.pool = "nope";
    rc = lb_admin_client_stream(client, "/lb.v1.Admin/WatchEvents", &req.base,
                                &lb__v1__event__descriptor, 5000, count_events, &w, NULL, &st);
    fx_expect_status(rc, &st, LB_GRPC_NOT_FOUND, "pool nope not found");

    /* a deadline ends a stream that is under way */
    w.seen = 0;
    w.stop_after = 1000000;
    req.pool = "";
    rc = lb_admin_client_stream(client, "/lb.v1.Admin/WatchEvents", &req.base,
                                &lb__v1__event__descriptor, 200, count_events, &w, NULL, &st);
    assert_true(rc == LB_GRPC_DEADLINE_EXCEEDED || rc == LB_GRPC_CANCELLED ||
                rc == LB_GRPC_UNAVAILABLE);
    assert_true(w.seen > 3);
    fx_wait_no_subscribers();
    fx_set_ticker(0);
}

/* ---- the raw HTTP/2 client ---- */

static int connect_port = 0; /* 0: the test server */

static int server_port(void)
{
    return connect_port ? connect_port : lb_admin_server_port(fx.server);
}

/* A raw HTTP/2 connection to the test server (or connect_port). */
static void raw_open(struct h2 *c, uint32_t window)
{
    h2_open(c, server_port(), window);
}

/* A TCP connection to the test server (or connect_port), from a loopback address of choice. */
static int tcp_connect_from(const char *ip)
{
    return h2_tcp_connect(ip, server_port(), 0);
}

static int tcp_connect(void)
{
    return tcp_connect_from(NULL);
}

/* True when the peer closed fd within `seconds`. */
static bool closed_within(int fd, double seconds)
{
    return h2_closed_after(fd, seconds) >= 0;
}

static bool got_headers(struct h2 *c, void *arg)
{
    return c->http_status != 0;
}

static bool got_data(struct h2 *c, void *arg)
{
    return c->data_bytes > 0;
}

static void test_raw_rejected_call_waits_for_request_end(void **state)
{
    double start = now_s();
    struct h2 c;

    /*
     * An error known from the headers waits for the request's end, so a
     * client still uploading is not answered under its feet...
     */
    raw_open(&c, 65535);
    c.stall = true; /* the request never ends */
    h2_request(&c, "/lb.v1.Admin/Nope", "application/grpc", NULL, "", 0);
    h2_pump(&c, 1);
    assert_false(c.closed);
    assert_int_equal(c.grpc_status, -1);
    /* ...but not forever: then the status goes out and the stream is reset with NO_ERROR. */
    h2_pump(&c, 8);
    assert_true(c.closed);
    assert_true(now_s() - start > 4);
    assert_int_equal(c.grpc_status, LB_GRPC_UNIMPLEMENTED);
    assert_int_equal(c.close_code, NGHTTP2_NO_ERROR);
    h2_close(&c);
}

/* One request with a whole body on a connection of its own; the answer stays in *c. */
static void raw_unary(struct h2 *c, const char *content_type, const void *body, size_t len)
{
    raw_open(c, 65535);
    h2_request(c, "/lb.v1.Admin/ListPools", content_type, NULL, body, len);
    h2_pump(c, 2);
    h2_close(c);
}

static void test_raw_content_type(void **state)
{
    struct h2 c;

    raw_unary(&c, "application/json", "\0\0\0\0\0", 5);
    assert_true(c.closed);
    assert_int_equal(c.http_status, 415);
}

static void test_raw_truncated_and_compressed(void **state)
{
    struct h2 c;

    raw_unary(&c, "application/grpc", "\0\0\0\0\5ab", 7);
    assert_int_equal(c.http_status, 200);
    assert_int_equal(c.grpc_status, LB_GRPC_INVALID_ARGUMENT);
    assert_non_null(strstr(c.grpc_message, "truncated"));

    raw_unary(&c, "application/grpc+proto", "\1\0\0\0\0", 5);
    assert_int_equal(c.grpc_status, LB_GRPC_INTERNAL);
    assert_non_null(strstr(c.grpc_message, "compressed"));

    raw_unary(&c, "application/grpc", NULL, 0); /* HEADERS with END_STREAM: no message */
    assert_int_equal(c.grpc_status, LB_GRPC_INVALID_ARGUMENT);
    assert_non_null(strstr(c.grpc_message, "exactly one request message, got 0"));
}

static void test_raw_slow_watcher(void **state)
{
    struct h2 c;

    /*
     * A client whose window stays closed: the 2 KiB queue fills and the
     * server gives up on the stream (unsubscribes) without the client
     * reading anything.  Once the client reads again it gets the status,
     * and none of the dropped events.
     */
    fx_set_ticker(1);
    raw_open(&c, 0);
    h2_request(&c, "/lb.v1.Admin/WatchEvents", "application/grpc", NULL, "\0\0\0\0\0", 5);
    assert_true(h2_pump_until(&c, got_headers, NULL, 3)); /* subscribed */
    assert_false(c.closed);
    fx_wait_no_subscribers();
    nghttp2_submit_window_update(c.session, NGHTTP2_FLAG_NONE, c.stream, 1 << 20);
    h2_pump(&c, 5);
    assert_true(c.closed);
    assert_int_equal(c.grpc_status, LB_GRPC_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(c.grpc_message, "fell too far behind"));
    assert_int_equal(c.data_bytes, 0);
    h2_close(&c);
    fx_set_ticker(0);
}

static bool store_busy(void *arg)
{
    return fx_store_pending() > 0;
}

static void test_raw_reset_mid_call(void **state)
{
    static const uint8_t drain_db_d1[] = {0, 0,   0,   0,    14, 0x0a, 2, 'd',  'b', 0x12,
                                          2, 'd', '1', 0x18, 1,  0x20, 0, 0x28, 1};
    struct h2 c;

    /* RST_STREAM while the etcd write is in flight and a drain wait would follow. */
    fx_set_store(FX_STORE_OK, 200);
    raw_open(&c, 65535);
    h2_request(&c, "/lb.v1.Admin/SetDrain", "application/grpc", NULL, drain_db_d1,
               sizeof(drain_db_d1));
    assert_true(fx_wait_until(store_busy, NULL, 3));
    assert_false(c.closed);
    nghttp2_submit_rst_stream(c.session, NGHTTP2_FLAG_NONE, c.stream, NGHTTP2_CANCEL);
    h2_pump_once(&c);
    h2_close(&c);
    fx_wait_store_idle(); /* the write completes for a call that is gone */
    fx_wait_no_subscribers();

    /* A watch reset by its client. */
    fx_set_ticker(5);
    raw_open(&c, 65535);
    h2_request(&c, "/lb.v1.Admin/WatchEvents", "application/grpc", NULL, "\0\0\0\0\0", 5);
    assert_true(h2_pump_until(&c, got_data, NULL, 3));
    nghttp2_submit_rst_stream(c.session, NGHTTP2_FLAG_NONE, c.stream, NGHTTP2_CANCEL);
    h2_pump_once(&c);
    fx_wait_no_subscribers();
    h2_close(&c);
    fx_set_ticker(0);
    fx_set_store(FX_STORE_OK, 5);

    undrain_local("db", "d1");
}

/* Sends bytes on a fresh connection and expects the server to close it. */
static void expect_closed_after(const void *data, size_t len)
{
    int fd = tcp_connect();

    assert_int_equal(send(fd, data, len, MSG_NOSIGNAL), (ssize_t)len);
    assert_true(closed_within(fd, 3));
    close(fd);
}

static void test_garbage(void **state)
{
    static const char http1[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    uint8_t noise[512];
    Lb__V1__ListPoolsRequest lp = LB__V1__LIST_POOLS_REQUEST__INIT;
    struct lb_admin_status st;

    expect_closed_after(http1, sizeof(http1) - 1);
    srand(7);
    for (size_t i = 0; i < sizeof(noise); i++)
        noise[i] = (uint8_t)rand();
    expect_closed_after(noise, sizeof(noise));
    /* a valid preface followed by junk frames */
    {
        uint8_t bad[64] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

        memset(bad + 24, 0xee, sizeof(bad) - 24);
        expect_closed_after(bad, sizeof(bad));
    }
    fx_expect_status(call("/lb.v1.Admin/ListPools", &lp.base,
                          &lb__v1__list_pools_response__descriptor, 2000, NULL, &st),
                     &st, LB_GRPC_OK, NULL);
}

static struct lb_admin_server *second;

static void second_new(const struct lb_admin_limits *limits)
{
    struct lb_admin_options opts = {0};
    char *err = NULL;

    if (fx_server_new(&opts, limits, &second, &err) != 0)
        fail_msg("second server: %s", err);
}

static void second_free(void)
{
    fx_server_free(second);
    second = NULL;
}

static bool b3_drains(void *arg)
{
    return fx_backend_drain("web", "b3");
}

static void test_server_free_with_calls(void **state)
{
    static const uint8_t drain_b3_wait[] = {0,    0, 0,   0,   15,   0x0a, 3,    'w', 'e',  'b',
                                            0x12, 2, 'b', '3', 0x18, 1,    0x20, 1,   0x28, 1};
    struct h2 watch, drain;

    /* A watch and a drain wait in flight when lbd frees its admin server. */
    second_new(NULL);
    connect_port = lb_admin_server_port(second);
    raw_open(&watch, 65535);
    h2_request(&watch, "/lb.v1.Admin/WatchEvents", "application/grpc", NULL, "\0\0\0\0\0", 5);
    raw_open(&drain, 65535);
    h2_request(&drain, "/lb.v1.Admin/SetDrain", "application/grpc", NULL, drain_b3_wait,
               sizeof(drain_b3_wait));
    connect_port = 0;
    /* Both subscribed: the watch has answered its headers, the drain has begun. */
    assert_true(h2_pump_until(&watch, got_headers, NULL, 3));
    assert_int_equal(watch.http_status, 200);
    assert_true(fx_wait_until(b3_drains, NULL, 3));
    second_free();
    h2_pump(&watch, 2);
    h2_pump(&drain, 2);
    assert_int_equal(watch.grpc_status, LB_GRPC_UNAVAILABLE);
    assert_string_equal(watch.grpc_message, "lbd is shutting down");
    assert_int_equal(drain.grpc_status, LB_GRPC_UNAVAILABLE);
    h2_close(&watch);
    h2_close(&drain);
    assert_false(fx_has_subscribers());
    undrain_local("web", "b3");
}

static void h2_unary_ok(struct h2 *c)
{
    h2_request(c, "/lb.v1.Admin/ListPools", "application/grpc", NULL, "\0\0\0\0\0", 5);
    h2_pump(c, 2);
    assert_int_equal(c->grpc_status, LB_GRPC_OK);
}

static void test_full_server_sheds_idle_connections_not_callers(void **state)
{
    struct lb_admin_limits l;
    struct h2 a, b;
    int idle, third;

    lb_admin_limits_defaults(&l);
    l.max_connections = 2;
    l.idle_timeout_ms = 300;
    second_new(&l);
    connect_port = lb_admin_server_port(second);
    raw_open(&a, 65535);
    h2_unary_ok(&a); /* a is an operator's connection */
    idle = tcp_connect();
    fx_wait_metric(second, "lbd_admin_connections", 2);
    /* full: the newcomer takes the idle connection's slot, a keeps working */
    raw_open(&b, 65535);
    assert_true(closed_within(idle, 2));
    close(idle);
    h2_unary_ok(&b);
    h2_unary_ok(&a);
    /* every slot held by connections with calls: only now is a newcomer refused */
    third = tcp_connect();
    assert_true(closed_within(third, 2));
    close(third);
    h2_unary_ok(&a);
    /* idle for longer than 300 ms: GOAWAY and close */
    assert_true(closed_within(b.fd, 2));
    h2_close(&a);
    h2_close(&b);
    connect_port = 0;
    second_free();
}

/*
 * 64 connections that send nothing used to refuse every further
 * connection until the idle timeout (5 min): now each newcomer takes the
 * slot of the oldest silent one, and silent ones are closed after the
 * first-request deadline.
 */
static void test_silent_connections_do_not_lock_out_a_client(void **state)
{
    static const char *const ips[] = {"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"};
    struct lb_admin_limits l;
    struct lb_admin_client *c;
    struct lb_admin_client_options co = {0};
    Lb__V1__ListPoolsRequest lp = LB__V1__LIST_POOLS_REQUEST__INIT;
    struct lb_admin_status st;
    char addr[64], *err = NULL;
    int fds[64];
    double start;

    lb_admin_limits_defaults(&l);
    l.first_request_timeout_ms = 1000;
    second_new(&l);
    connect_port = lb_admin_server_port(second);
    for (int i = 0; i < 64; i++)
        fds[i] = tcp_connect_from(ips[i % 4]);
    fx_wait_metric(second, "lbd_admin_connections", 64);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", connect_port);
    co.addr = addr;
    assert_int_equal(lb_admin_client_new(&co, &c, &err), 0);
    for (int i = 0; i < 3; i++) {
        ProtobufCMessage *m = NULL;

        fx_expect_status(lb_admin_client_call(c, "/lb.v1.Admin/ListPools", &lp.base,
                                              &lb__v1__list_pools_response__descriptor, 2000, &m,
                                              &st),
                         &st, LB_GRPC_OK, NULL);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    lb_admin_client_free(c);
    /* the silent ones are closed by the first-request deadline */
    start = now_s();
    for (int i = 0; i < 64; i++) {
        assert_true(closed_within(fds[i], 3));
        close(fds[i]);
    }
    assert_true(now_s() - start < 3);
    connect_port = 0;
    second_free();
}

static void test_per_peer_cap_sheds_that_peers_oldest_only(void **state)
{
    struct lb_admin_limits l;
    int mine[5], other[3];

    lb_admin_limits_defaults(&l);
    l.max_per_peer = 4;
    second_new(&l);
    connect_port = lb_admin_server_port(second);
    for (int i = 0; i < 3; i++)
        other[i] = tcp_connect_from("127.0.0.3");
    for (int i = 0; i < 4; i++) {
        mine[i] = tcp_connect_from("127.0.0.2");
        fx_wait_metric(second, "lbd_admin_connections", 3 + i + 1); /* accepted in this order */
    }
    /* a fifth from 127.0.0.2 costs 127.0.0.2's oldest its slot, nobody else's */
    mine[4] = tcp_connect_from("127.0.0.2");
    assert_true(closed_within(mine[0], 2));
    for (int i = 1; i < 5; i++)
        assert_false(closed_within(mine[i], 0.05));
    for (int i = 0; i < 3; i++)
        assert_false(closed_within(other[i], 0.05));
    for (int i = 0; i < 5; i++)
        close(mine[i]);
    for (int i = 0; i < 3; i++)
        close(other[i]);
    connect_port = 0;
    second_free();
}

/* A request message announced as `declared` bytes, of which `sent` follow. */
static uint8_t *partial_message(uint32_t declared, size_t sent)
{
    uint8_t *m = calloc(1, LB_GRPC_FRAME_HEADER_LEN + sent);

    assert_non_null(m);
    lb_grpc_frame_header(m, declared);
    memset(m + LB_GRPC_FRAME_HEADER_LEN, 0x0a, sent);
    return m;
}

static void h2_stalled_request(struct h2 *c, const uint8_t *body, size_t len)
{
    raw_open(c, 65535);
    c->stall = true;
    h2_request(c, "/lb.v1.Admin/ListBackends", "application/grpc", NULL, body, len);
}

/*
 * Half-sent messages used to be held forever: now the request deadline
 * resets a stalled call with DEADLINE_EXCEEDED and frees its bytes, and the
 * budgets refuse what would hold too much (RESOURCE_EXHAUSTED) while small
 * calls from elsewhere still get in.
 */
static void test_stalled_and_oversized_requests_are_bounded_and_freed(void **state)
{
    struct lb_admin_limits l;
    uint8_t *big = partial_message(600 * 1024, 100 * 1024);
    uint8_t *huge = partial_message(900 * 1024, 10);
    struct h2 s1, s2, s3, probe;
    double start;

    lb_admin_limits_defaults(&l);
    l.max_message = 1024 * 1024;
    l.conn_request_budget = 800 * 1024;
    l.server_request_budget = 1024 * 1024;
    l.conn_request_reserve = 64 * 1024;
    l.request_timeout_ms = 800;
    second_new(&l);
    connect_port = lb_admin_server_port(second);

    /* one connection's budget: 900 KiB announced is refused at once */
    h2_stalled_request(&s1, huge, LB_GRPC_FRAME_HEADER_LEN + 10);
    h2_pump(&s1, 2);
    assert_int_equal(s1.grpc_status, LB_GRPC_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(s1.grpc_message, "this connection's unfinished requests"));
    h2_close(&s1);

    /* the server's budget: a second 600 KiB request elsewhere does not fit */
    start = now_s();
    h2_stalled_request(&s1, big, LB_GRPC_FRAME_HEADER_LEN + 100 * 1024);
    fx_wait_metric(second, "lbd_admin_request_bytes", 600 * 1024);
    h2_stalled_request(&s2, big, LB_GRPC_FRAME_HEADER_LEN + 100 * 1024);
    h2_pump(&s2, 2);
    assert_int_equal(s2.grpc_status, LB_GRPC_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(s2.grpc_message, "try again shortly"));
    /* a small call still fits in its connection's reserve */
    raw_open(&probe, 65535);
    h2_unary_ok(&probe);
    h2_close(&probe);
    /* the stalled one is reset by the request deadline, and its bytes go back */
    h2_pump(&s1, 3);
    assert_true(s1.closed);
    assert_int_equal(s1.grpc_status, LB_GRPC_DEADLINE_EXCEEDED);
    assert_non_null(strstr(s1.grpc_message, "was not received within"));
    assert_true(now_s() - start >= 0.7);
    assert_int_equal(fx_server_metric(second, "lbd_admin_request_bytes"), 0);
    /* and there is room again */
    h2_stalled_request(&s3, big, LB_GRPC_FRAME_HEADER_LEN + 100 * 1024);
    fx_wait_metric(second, "lbd_admin_request_bytes", 600 * 1024);
    h2_close(&s3); /* the client goes away: freed too */
    fx_wait_metric(second, "lbd_admin_request_bytes", 0);
    assert_int_equal(
        fx_server_metric(second, "lbd_admin_calls_refused_total{reason=\"request_timeout\"}"), 1);
    assert_int_equal(
        fx_server_metric(second, "lbd_admin_calls_refused_total{reason=\"request_budget\"}"), 2);
    h2_close(&s1);
    h2_close(&s2);
    free(big);
    free(huge);
    connect_port = 0;
    second_free();
}

static void test_client_errors(void **state)
{
    struct lb_admin_client *c;
    struct lb_admin_client_options co = {0};
    Lb__V1__ListPoolsRequest lp = LB__V1__LIST_POOLS_REQUEST__INIT;
    struct lb_admin_status st;
    ProtobufCMessage *m;
    char *err = NULL;
    int fd, port;
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    char addr[64];

    co.addr = "nocolon";
    assert_int_equal(lb_admin_client_new(&co, &c, &err), -EINVAL);
    assert_non_null(strstr(err, "HOST:PORT"));
    free(err);
    co.addr = "::1:9000";
    assert_int_equal(lb_admin_client_new(&co, &c, &err), -EINVAL);
    free(err);
    co.addr = "127.0.0.1:9000";
    co.token = "two words";
    assert_int_equal(lb_admin_client_new(&co, &c, &err), -EINVAL);
    assert_non_null(strstr(err, "printable ASCII"));
    assert_null(strstr(err, "two words")); /* never echoes the token */
    free(err);
    co.token = NULL;

    /* a port nobody listens on */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    port = ntohs(sa.sin_port);
    close(fd);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    co.addr = addr;
    assert_int_equal(lb_admin_client_new(&co, &c, &err), 0);
    assert_int_equal(lb_admin_client_call(c, "/lb.v1.Admin/ListPools", &lp.base,
                                          &lb__v1__list_pools_response__descriptor, 1000, &m, &st),
                     LB_GRPC_UNAVAILABLE);
    assert_true(st.transport);
    assert_non_null(strstr(st.message, "connection refused (is lbd running with --admin"));
    lb_admin_client_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads),
        cmocka_unit_test(test_health_and_unknown),
        cmocka_unit_test(test_oversized_request),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_drain_wait),
        cmocka_unit_test(test_cancel_while_store_pending),
        cmocka_unit_test(test_cluster_change_for_a_backend_that_left_meanwhile),
        cmocka_unit_test(test_watch),
        cmocka_unit_test(test_raw_rejected_call_waits_for_request_end),
        cmocka_unit_test(test_raw_content_type),
        cmocka_unit_test(test_raw_truncated_and_compressed),
        cmocka_unit_test(test_raw_slow_watcher),
        cmocka_unit_test(test_raw_reset_mid_call),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_server_free_with_calls),
        cmocka_unit_test(test_full_server_sheds_idle_connections_not_callers),
        cmocka_unit_test(test_silent_connections_do_not_lock_out_a_client),
        cmocka_unit_test(test_per_peer_cap_sheds_that_peers_oldest_only),
        cmocka_unit_test(test_stalled_and_oversized_requests_are_bounded_and_freed),
        cmocka_unit_test(test_client_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
