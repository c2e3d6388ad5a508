/*
 * The etcd gateway's JSON, as etcd 3.4.23 writes it (bodies below were
 * captured from it): base64 keys and values, int64 as strings, absent
 * zero values, range pages, error bodies, lease answers; and the request
 * bodies built for it, read back.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_etcd_json.h"
#include "lb_lease.h"

static void test_base64(void **state)
{
    static const struct {
        const char *text, *bytes;
    } good[] = {
        {"", ""},
        {"YQ==", "a"},
        {"YWI=", "ab"},
        {"YWJj", "abc"},
        {"L2FwcC9jZmcv", "/app/cfg/"},
        {"L2xiL3Bvb2xzLw==", "/lb/pools/"},
    };
    static const char *const bad[] = {"YQ",   "YQ=",  "Y===", "YQ=a", "Y Q==", "YQ==\n",
                                      "@@@@", "YW=j", "=YWJ", "YWJ-", "YWJ_"};
    char *out, *enc;
    size_t len;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        assert_int_equal(lb_etcd_base64_decode(good[i].text, strlen(good[i].text), 100, &out, &len),
                         0);
        assert_int_equal(len, strlen(good[i].bytes));
        assert_memory_equal(out, good[i].bytes, len);
        assert_int_equal(out[len], '\0');
        free(out);
        assert_int_equal(lb_etcd_base64_encode(good[i].bytes, strlen(good[i].bytes), &enc), 0);
        assert_string_equal(enc, good[i].text);
        free(enc);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (lb_etcd_base64_decode(bad[i], strlen(bad[i]), 100, &out, &len) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_null(out);
    }
    assert_int_equal(lb_etcd_base64_decode("YWJj", 4, 2, &out, &len), -E2BIG);
    assert_int_equal(lb_etcd_base64_decode("YWI=", 4, 2, &out, &len), 0);
    free(out);
    /* binary, NUL included */
    assert_int_equal(lb_etcd_base64_encode("\0\xff\x01", 3, &enc), 0);
    assert_int_equal(lb_etcd_base64_decode(enc, strlen(enc), 3, &out, &len), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(out, "\0\xff\x01", 3);
    free(out);
    free(enc);
}

static void test_prefix_end(void **state)
{
    char buf[16];

    assert_int_equal(lb_etcd_prefix_end("/lb/pools/", 10, buf), 10);
    assert_memory_equal(buf, "/lb/pools0", 10);
    assert_int_equal(lb_etcd_prefix_end("a\xff\xff", 3, buf), 1);
    assert_memory_equal(buf, "b", 1);
    assert_int_equal(lb_etcd_prefix_end("\xff", 1, buf), 1);
    assert_int_equal(buf[0], '\0');
    assert_int_equal(lb_etcd_prefix_end("", 0, buf), 1);
    assert_int_equal(buf[0], '\0');
}

static json_object *parse(const char *text)
{
    json_object *o = NULL;
    char *err = NULL;

    assert_int_equal(lb_etcd_json_parse(text, strlen(text), &o, &err), 0);
    return o;
}

static void test_int64(void **state)
{
    json_object *o = parse("{\"a\":\"4111120276489552950\",\"b\":30,\"c\":\"-1\",\"d\":\"\","
                           "\"e\":\"1e3\",\"f\":1.5,\"g\":\"99999999999999999999\",\"h\":true,"
                           "\"i\":\" 5\",\"j\":\"-\"}");
    int64_t v;

    assert_int_equal(lb_etcd_json_get_int64(o, "a", &v), 0);
    assert_int_equal(v, 4111120276489552950LL);
    assert_int_equal(lb_etcd_json_get_int64(o, "b", &v), 0);
    assert_int_equal(v, 30);
    assert_int_equal(lb_etcd_json_get_int64(o, "c", &v), 0);
    assert_int_equal(v, -1);
    assert_int_equal(lb_etcd_json_get_int64(o, "absent", &v), 0);
    assert_int_equal(v, 0);
    for (const char *bad = "defghij"; *bad; bad++) {
        char name[2] = {*bad, 0};

        if (lb_etcd_json_get_int64(o, name, &v) != -EINVAL)
            fail_msg("accepted member %s", name);
    }
    json_object_put(o);
}

static char *read_data(const char *name, size_t *len)
{
    char path[1024];
    FILE *f;
    char *buf;
    long n;

    snprintf(path, sizeof(path), "%s/%s", LB_TEST_DATA_DIR, name);
    f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void test_range_page(void **state)
{
    struct lb_etcd_range r;
    char *err = NULL;
    size_t len;
    char *body = read_data("range_page.json", &len);

    assert_int_equal(lb_etcd_json_parse_range(body, len, &r, &err), 0);
    assert_int_equal(r.header.revision, 14);
    assert_int_equal(r.header.cluster_id, 13915718962799377783ULL);
    assert_true(r.more);
    assert_int_equal(r.count, 4);
    assert_int_equal(r.n_kvs, 2);
    assert_string_equal(r.kvs[0].key, "/lb/pools/web/backends/b1");
    assert_string_equal(r.kvs[0].value,
                        "{\"addr\":\"10.0.0.1:8080\",\"weight\":300,\"zone\":\"a\"}");
    assert_int_equal(r.kvs[0].create_revision, 3);
    assert_int_equal(r.kvs[0].mod_revision, 4);
    assert_int_equal(r.kvs[0].version, 2);
    assert_int_equal(r.kvs[0].lease, 0);
    assert_string_equal(r.kvs[1].key, "/lb/pools/web/backends/b3");
    lb_etcd_range_free(&r);
    free(body);
}

static void test_range_shapes(void **state)
{
    static const char empty[] = "{\"header\":{\"cluster_id\":\"1\",\"member_id\":\"2\","
                                "\"revision\":\"5\",\"raft_term\":\"2\"}}";
    static const char *const bad[] = {
        "",
        "[]",
        "{}",
        "{\"header\":{\"revision\":\"x\"}}",
        "{\"header\":{},\"kvs\":{}}",
        "{\"header\":{},\"kvs\":[1]}",
        "{\"header\":{},\"kvs\":[{\"key\":\"%%%%\"}]}",
        "{\"header\":{},\"kvs\":[{\"value\":\"YQ==\"}]}",
        "{\"header\":{},\"more\":\"yes\"}",
        "{\"header\":{},\"count\":[]}",
    };
    struct lb_etcd_range r;
    char *err = NULL;

    /* a range with no keys has no kvs and no count */
    assert_int_equal(lb_etcd_json_parse_range(empty, strlen(empty), &r, &err), 0);
    assert_int_equal(r.n_kvs, 0);
    assert_int_equal(r.count, 0);
    assert_false(r.more);
    assert_int_equal(r.header.revision, 5);
    lb_etcd_range_free(&r);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (lb_etcd_json_parse_range(bad[i], strlen(bad[i]), &r, &err) >= 0)
            fail_msg("accepted %s", bad[i]);
        assert_non_null(err);
        assert_int_equal(r.n_kvs, 0);
        assert_null(r.kvs);
    }
    free(err);
}

static void test_error_bodies(void **state)
{
    static const char unary[] = "{\"error\":\"etcdserver: mvcc: required revision has been "
                                "compacted\",\"message\":\"etcdserver: mvcc: required revision "
                                "has been compacted\",\"code\":11}";
    static const char stream[] = "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":"
                                 "\"etcdserver: no leader\",\"http_status\":\"Service "
                                 "Unavailable\"}}";
    int code;
    char *msg;

    assert_int_equal(lb_etcd_json_parse_error(unary, strlen(unary), &code, &msg), 0);
    assert_int_equal(code, 11);
    assert_string_equal(msg, "etcdserver: mvcc: required revision has been compacted");
    free(msg);
    assert_int_equal(lb_etcd_json_parse_error(stream, strlen(stream), &code, &msg), 0);
    assert_int_equal(code, 14);
    assert_string_equal(msg, "etcdserver: no leader");
    free(msg);
    assert_int_equal(lb_etcd_json_parse_error("404 page not found", 18, &code, &msg), -EINVAL);
    assert_null(msg);
    assert_int_equal(lb_etcd_json_parse_error("{\"header\":{}}", 13, &code, &msg), -EINVAL);
}

/* Reads back a request body: the base64 member `name` decoded. */
static char *member_bytes(json_object *o, const char *name, size_t *len)
{
    json_object *v;
    char *out;

    assert_true(json_object_object_get_ex(o, name, &v));
    assert_int_equal(lb_etcd_base64_decode(json_object_get_string(v),
                                           (size_t)json_object_get_string_len(v), 1 << 20, &out,
                                           len),
                     0);
    return out;
}

static void test_requests(void **state)
{
    json_object *o, *c, *v;
    char *body, *b;
    size_t len;
    int64_t n;

    assert_int_equal(lb_etcd_json_range_request("/lb/pools/", 10, "/lb/pools0", 10, 42, 500, &body),
                     0);
    o = parse(body);
    b = member_bytes(o, "key", &len);
    assert_string_equal(b, "/lb/pools/");
    free(b);
    b = member_bytes(o, "range_end", &len);
    assert_string_equal(b, "/lb/pools0");
    free(b);
    assert_int_equal(lb_etcd_json_get_int64(o, "revision", &n), 0);
    assert_int_equal(n, 42);
    assert_int_equal(lb_etcd_json_get_int64(o, "limit", &n), 0);
    assert_int_equal(n, 500);
    json_object_put(o);
    free(body);

    /* a continuation key holds a NUL: it must survive */
    assert_int_equal(lb_etcd_json_range_request("/lb/pools/a\0", 12, "/lb/pools0", 10, 0, 0, &body),
                     0);
    o = parse(body);
    b = member_bytes(o, "key", &len);
    assert_int_equal(len, 12);
    assert_memory_equal(b, "/lb/pools/a\0", 12);
    free(b);
    assert_false(json_object_object_get_ex(o, "revision", &v));
    assert_false(json_object_object_get_ex(o, "limit", &v));
    json_object_put(o);
    free(body);

    assert_int_equal(
        lb_etcd_json_put_request("/k", 2, "{\"a\":1}", 7, 4111120276489552950LL, &body), 0);
    assert_non_null(strstr(body, "\"lease\":\"4111120276489552950\""));
    o = parse(body);
    b = member_bytes(o, "value", &len);
    assert_string_equal(b, "{\"a\":1}");
    free(b);
    json_object_put(o);
    free(body);
    assert_int_equal(lb_etcd_json_put_request("/k", 2, "", 0, 0, &body), 0);
    assert_null(strstr(body, "lease"));
    free(body);

    assert_int_equal(lb_etcd_json_delete_request("/k", 2, &body), 0);
    assert_string_equal(body, "{\"key\":\"L2s=\"}");
    free(body);

    assert_int_equal(lb_etcd_json_watch_request("/lb/pools/", 10, "/lb/pools0", 10, 8, &body), 0);
    o = parse(body);
    assert_true(json_object_object_get_ex(o, "create_request", &c));
    assert_int_equal(lb_etcd_json_get_int64(c, "start_revision", &n), 0);
    assert_int_equal(n, 8);
    assert_true(json_object_object_get_ex(c, "prev_kv", &v) && json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(c, "progress_notify", &v) && json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(c, "fragment", &v) && json_object_get_boolean(v));
    json_object_put(o);
    free(body);
}

static void test_lease_bodies(void **state)
{
    static const char grant[] =
        "{\"header\":{\"cluster_id\":\"13915718962799377783\","
        "\"member_id\":\"9798502074856375577\",\"revision\":\"14\","
        "\"raft_term\":\"2\"},\"ID\":\"367503087138185496\",\"TTL\":\"30\"}";
    static const char alive[] = "{\"result\":{\"header\":{\"revision\":\"14\"},\"ID\":"
                                "\"367503087138185496\",\"TTL\":\"29\"}}";
    static const char gone[] = "{\"result\":{\"header\":{\"cluster_id\":\"13915718962799377783\","
                               "\"member_id\":\"9798502074856375577\",\"revision\":\"14\","
                               "\"raft_term\":\"2\"},\"ID\":\"999\"}}";
    int64_t id, ttl;
    char *err = NULL, *body;

    assert_int_equal(lb_lease_parse_grant(grant, strlen(grant), &id, &ttl, &err), 0);
    assert_int_equal(id, 367503087138185496LL);
    assert_int_equal(ttl, 30);
    assert_int_equal(lb_lease_parse_grant("{\"header\":{}}", 13, &id, &ttl, &err), -EINVAL);
    assert_int_equal(lb_lease_parse_grant("{\"ID\":\"1\",\"TTL\":{}}", 19, &id, &ttl, &err),
                     -EINVAL);
    assert_int_equal(lb_lease_parse_keepalive(alive, strlen(alive), &ttl, &err), 0);
    assert_int_equal(ttl, 29);
    /* a lost lease answers 200 without TTL */
    assert_int_equal(lb_lease_parse_keepalive(gone, strlen(gone), &ttl, &err), -ENOENT);
    assert_int_equal(lb_lease_parse_keepalive(grant, strlen(grant), &ttl, &err), -EINVAL);
    assert_int_equal(lb_lease_parse_keepalive("nope", 4, &ttl, &err), -EINVAL);
    free(err);

    assert_int_equal(lb_lease_grant_request(10, &body), 0);
    assert_string_equal(body, "{\"TTL\":\"10\"}");
    free(body);
    assert_int_equal(lb_lease_id_request(4111120276489552950LL, &body), 0);
    assert_string_equal(body, "{\"ID\":\"4111120276489552950\"}");
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64),       cmocka_unit_test(test_prefix_end),
        cmocka_unit_test(test_int64),        cmocka_unit_test(test_range_page),
        cmocka_unit_test(test_range_shapes), cmocka_unit_test(test_error_bodies),
        cmocka_unit_test(test_requests),     cmocka_unit_test(test_lease_bodies),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
