/*
 * The key schema and the JSON values under it: what parses, what it parses
 * to, the bounds (out of range is clamped, with a note), and that every
 * refusal comes with a sentence.
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

#include "lb_key.h"
#include "lb_value.h"

static int parse_key(const char *key, struct lb_key *k)
{
    char *err = NULL;
    int rc = lb_key_parse("/lb/", key, strlen(key), k, &err);

    if (rc == -EINVAL)
        assert_non_null(err);
    else
        assert_null(err);
    free(err);
    return rc;
}

static void test_key_schema(void **state)
{
    struct lb_key k;

    assert_int_equal(parse_key("/lb/pools/web/backends/b1", &k), 0);
    assert_int_equal(k.kind, LB_KEY_BACKEND);
    assert_string_equal(k.pool, "web");
    assert_string_equal(k.id, "b1");
    assert_int_equal(parse_key("/lb/pools/web/config", &k), 0);
    assert_int_equal(k.kind, LB_KEY_CONFIG);
    assert_string_equal(k.pool, "web");
    assert_string_equal(k.id, "");
    assert_int_equal(parse_key("/lb/pools/db-1.eu:x_y/overrides/10.0.0.5:8080", &k), 0);
    assert_int_equal(k.kind, LB_KEY_OVERRIDE);
    assert_string_equal(k.pool, "db-1.eu:x_y");
    assert_string_equal(k.id, "10.0.0.5:8080");

    /* not ours: ignored */
    assert_int_equal(parse_key("/lb/other", &k), -ENOENT);
    assert_int_equal(parse_key("/lb/pools/", &k), -ENOENT);
    assert_int_equal(parse_key("/lb/pools/web", &k), -ENOENT);
    assert_int_equal(parse_key("/lb/pools/web/", &k), -ENOENT);
    assert_int_equal(parse_key("/lb/pools/web/configs", &k), -ENOENT);
    assert_int_equal(parse_key("/lb/pools/web/backends/", &k), -ENOENT);
    assert_int_equal(parse_key("/lb/pools/web/backends/b1/extra", &k), -ENOENT);
    assert_int_equal(parse_key("/lb/pools/web/members/b1", &k), -ENOENT);
    assert_int_equal(parse_key("/lbx/pools/web/config", &k), -ENOENT);
    assert_int_equal(parse_key("/other/pools/web/config", &k), -ENOENT);

    /* ours, but with a bad name */
    assert_int_equal(parse_key("/lb/pools/we b/config", &k), -EINVAL);
    assert_int_equal(parse_key("/lb/pools//config", &k), -EINVAL);
    assert_int_equal(parse_key("/lb/pools/web/backends/b\"1", &k), -EINVAL);
    assert_int_equal(parse_key("/lb/pools/web/backends/..", &k), -EINVAL);
    assert_int_equal(parse_key("/lb/pools/./backends/b1", &k), -EINVAL);
    assert_int_equal(parse_key("/lb/pools/w\xc3\xa9/config", &k), -EINVAL);
}

static void test_key_binary_and_long(void **state)
{
    char key[512];
    struct lb_key k;
    char *err = NULL;
    static const char with_nul[] = "/lb/pools/w\0b/config";

    assert_int_equal(lb_key_parse("/lb/", with_nul, sizeof(with_nul) - 1, &k, &err), -EINVAL);
    free(err);
    err = NULL;
    /* 127 characters is the longest name */
    memset(key, 0, sizeof(key));
    strcpy(key, "/lb/pools/");
    memset(key + 10, 'p', 127);
    strcat(key, "/config");
    assert_int_equal(parse_key(key, &k), 0);
    assert_int_equal(strlen(k.pool), 127);
    memset(key, 0, sizeof(key));
    strcpy(key, "/lb/pools/");
    memset(key + 10, 'p', 128);
    strcat(key, "/config");
    assert_int_equal(parse_key(key, &k), -EINVAL);
}

static void test_key_format_and_prefix(void **state)
{
    char buf[256], prefix[LB_PREFIX_MAX];
    char *err = NULL;
    struct lb_key k;

    assert_int_equal(lb_key_format("/lb/", LB_KEY_BACKEND, "web", "b1", buf, sizeof(buf)), 25);
    assert_string_equal(buf, "/lb/pools/web/backends/b1");
    assert_int_equal(parse_key(buf, &k), 0);
    assert_true(lb_key_format("/lb/", LB_KEY_CONFIG, "web", NULL, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "/lb/pools/web/config");
    assert_true(lb_key_format("/lb/", LB_KEY_OVERRIDE, "web", "b1", buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "/lb/pools/web/overrides/b1");
    assert_int_equal(lb_key_format("/lb/", LB_KEY_BACKEND, "we b", "b1", buf, sizeof(buf)),
                     -EINVAL);
    assert_int_equal(lb_key_format("/lb/", LB_KEY_BACKEND, "web", "", buf, sizeof(buf)), -EINVAL);
    assert_int_equal(lb_key_format("/lb/", LB_KEY_BACKEND, "web", "b1", buf, 10), -ENOSPC);

    assert_int_equal(lb_key_prefix_normalize("/lb", prefix, &err), 0);
    assert_string_equal(prefix, "/lb/");
    assert_int_equal(lb_key_prefix_normalize("/a/b/", prefix, &err), 0);
    assert_string_equal(prefix, "/a/b/");
    assert_int_equal(lb_key_prefix_normalize("/", prefix, &err), 0);
    assert_string_equal(prefix, "/");
    assert_int_equal(lb_key_prefix_normalize("lb/", prefix, &err), -EINVAL);
    assert_non_null(err);
    assert_int_equal(lb_key_prefix_normalize("", prefix, &err), -EINVAL);
    assert_int_equal(lb_key_prefix_normalize("/l\nb/", prefix, &err), -EINVAL);
    free(err);
    assert_true(lb_key_name_is_valid("a"));
    assert_false(lb_key_name_is_valid(""));
    assert_false(lb_key_name_is_valid("a/b"));
    assert_false(lb_key_name_is_valid(NULL));
}

static void test_addr(void **state)
{
    static const char *const good[] = {
        "10.0.0.5:8080", "[::1]:80",      "[fd00::1:2]:65535",        "db1.internal:5432",
        "localhost:1",   "my_service:80", "a-b.c-d.example.com.:443", "x:9",
    };
    static const char *const bad[] = {
        "",
        "10.0.0.5",
        ":80",
        "10.0.0.5:",
        "10.0.0.5:0",
        "10.0.0.5:65536",
        "10.0.0.5:80x",
        "10.0.0.5:+80",
        "10.0.0.5: 80",
        "10.0.0.5:\t80",
        "::1:80",
        "[::1]80",
        "[::1:80",
        "[not-v6]:80",
        "999.0.0.1:80",
        "1.2.3:80",
        "-bad.example:80",
        "bad-.example:80",
        "a..b:80",
        "sp ace:80",
        "h\"q:80",
        "[::1]:",
        "10.0.0.5:123456",
    };
    char *err = NULL;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (lb_value_check_addr(good[i], &err) != 0)
            fail_msg("refused %s: %s", good[i], err);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (lb_value_check_addr(bad[i], &err) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_non_null(err);
    }
    free(err);
}

static int backend(const char *json, struct lb_backend_spec *b)
{
    char *err = NULL;
    int rc = lb_value_parse_backend(json, strlen(json), b, &err);

    if (rc)
        assert_non_null(err);
    free(err);
    return rc;
}

static void test_backend_values(void **state)
{
    struct lb_backend_spec b;

    assert_int_equal(backend("{\"addr\":\"10.0.0.5:8080\"}", &b), 0);
    assert_string_equal(b.addr, "10.0.0.5:8080");
    assert_int_equal(b.weight, LB_WEIGHT_DEFAULT);
    assert_string_equal(b.zone, "");
    assert_int_equal(backend("{\"addr\":\"[::1]:1\",\"weight\":0,\"zone\":\"eu-1a\","
                             "\"meta\":{\"v\":[1,2,{\"x\":null}]},\"future\":true}",
                             &b),
                     0);
    assert_int_equal(b.weight, 0);
    assert_string_equal(b.zone, "eu-1a");
    assert_int_equal(backend(" {\"addr\":\"h:1\",\"weight\":1000} \n", &b), 0);
    assert_int_equal(b.weight, 1000);
    assert_int_equal(backend("{\"addr\":\"h:1\",\"weight\":null}", &b), 0);
    assert_int_equal(b.weight, LB_WEIGHT_DEFAULT);

    /* out of range: clamped to the nearest bound (test_backend_weight_clamped) */
    assert_int_equal(backend("{\"addr\":\"h:1\",\"weight\":1001}", &b), 0);
    assert_int_equal(b.weight, LB_WEIGHT_MAX);
    assert_int_equal(backend("{\"addr\":\"h:1\",\"weight\":-1}", &b), 0);
    assert_int_equal(b.weight, 0);
    assert_int_equal(backend("{\"addr\":\"h:1\",\"weight\":99999999999999999999}", &b), 0);
    assert_int_equal(b.weight, LB_WEIGHT_MAX);

    memset(&b, 0x5a, sizeof(b));
    assert_int_equal(backend("{\"addr\":\"h:1\",\"weight\":\"50\"}", &b), -EINVAL);
    assert_int_equal(((unsigned char *)&b)[0], 0x5a); /* untouched on failure */
    assert_int_equal(backend("{\"addr\":\"h:1\",\"weight\":50.5}", &b), -EINVAL);
    assert_int_equal(backend("{\"weight\":5}", &b), -EINVAL);
    assert_int_equal(backend("{\"addr\":5}", &b), -EINVAL);
    assert_int_equal(backend("{\"addr\":\"nope\"}", &b), -EINVAL);
    assert_int_equal(backend("{\"addr\":\"h\\u0000x:1\"}", &b), -EINVAL);
    assert_int_equal(backend("{\"addr\":\"h:1\",\"zone\":\"a b\"}", &b), -EINVAL);
    assert_int_equal(backend("{\"addr\":\"h:1\",\"zone\":7}", &b), -EINVAL);
    assert_int_equal(backend("[\"h:1\"]", &b), -EINVAL);
    assert_int_equal(backend("", &b), -EINVAL);
    assert_int_equal(backend("{\"addr\":\"h:1\"} x", &b), -EINVAL);
    assert_int_equal(backend("{\"addr\":\"h:1\"", &b), -EINVAL);
}

static void test_backend_too_long(void **state)
{
    size_t n = LB_VALUE_MAX + 10;
    char *json = malloc(n + 1);
    struct lb_backend_spec b;
    char *err = NULL;

    assert_non_null(json);
    strcpy(json, "{\"addr\":\"h:1\",\"meta\":\"");
    memset(json + strlen(json), 'x', n - strlen(json) - 2);
    strcpy(json + n - 2, "\"}");
    assert_int_equal(lb_value_parse_backend(json, n, &b, &err), -EINVAL);
    assert_non_null(strstr(err, "larger"));
    free(err);
    free(json);
}

static int override(const char *json, struct lb_override *o)
{
    char *err = NULL;
    int rc = lb_value_parse_override(json, strlen(json), o, &err);

    if (rc)
        assert_non_null(err);
    free(err);
    return rc;
}

static void test_override_values(void **state)
{
    struct lb_override o;

    assert_int_equal(override("{}", &o), 0);
    assert_true(lb_value_override_is_default(&o));
    assert_int_equal(override("{\"drain\":true,\"weight\":50,\"health\":\"down\"}", &o), 0);
    assert_true(o.drain);
    assert_true(o.has_weight);
    assert_int_equal(o.weight, 50);
    assert_int_equal(o.health, LB_HEALTH_FORCE_DOWN);
    assert_false(lb_value_override_is_default(&o));
    assert_int_equal(override("{\"health\":\"up\",\"weight\":0}", &o), 0);
    assert_false(o.drain);
    assert_true(o.has_weight);
    assert_int_equal(o.weight, 0);
    assert_int_equal(o.health, LB_HEALTH_FORCE_UP);
    assert_int_equal(override("{\"health\":\"auto\",\"weight\":null,\"x\":1}", &o), 0);
    assert_false(o.has_weight);
    assert_int_equal(o.health, LB_HEALTH_AUTO);

    assert_int_equal(override("{\"drain\":\"yes\"}", &o), -EINVAL);
    assert_int_equal(override("{\"drain\":1}", &o), -EINVAL);
    assert_int_equal(override("{\"weight\":1001}", &o), 0); /* clamped */
    assert_int_equal(o.weight, LB_WEIGHT_MAX);
    assert_int_equal(override("{\"weight\":\"1\"}", &o), -EINVAL);
    assert_int_equal(override("{\"health\":\"DOWN\"}", &o), -EINVAL);
    assert_int_equal(override("{\"health\":\"sideways\"}", &o), -EINVAL);
    assert_int_equal(override("{\"health\":false}", &o), -EINVAL);
    assert_int_equal(override("true", &o), -EINVAL);
}

static void test_override_encode_roundtrip(void **state)
{
    const struct lb_override cases[] = {
        {.drain = true},
        {.has_weight = true, .weight = 0},
        {.has_weight = true, .weight = 1000, .health = LB_HEALTH_FORCE_UP},
        {.drain = true, .has_weight = true, .weight = 7, .health = LB_HEALTH_FORCE_DOWN},
        {0},
    };
    struct lb_override bad = {.has_weight = true, .weight = 1001};
    char *json;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct lb_override back;

        assert_int_equal(lb_value_encode_override(&cases[i], &json), 0);
        assert_int_equal(override(json, &back), 0);
        assert_int_equal(back.drain, cases[i].drain);
        assert_int_equal(back.has_weight, cases[i].has_weight);
        assert_int_equal(back.weight, cases[i].weight);
        assert_int_equal(back.health, cases[i].health);
        free(json);
    }
    assert_int_equal(lb_value_encode_override(&cases[3], &json), 0);
    assert_string_equal(json, "{\"drain\":true,\"weight\":7,\"health\":\"down\"}");
    free(json);
    assert_int_equal(lb_value_encode_override(&cases[4], &json), 0);
    assert_string_equal(json, "{}");
    free(json);
    assert_int_equal(lb_value_encode_override(&bad, &json), -EINVAL);
    assert_null(json);
}

static void test_backend_encode(void **state)
{
    struct lb_backend_spec spec = {.addr = "[::1]:8080", .weight = 42, .zone = "z"}, back;
    struct lb_backend_spec bad = {.addr = "nope", .weight = 1};
    char *json;

    assert_int_equal(lb_value_encode_backend(&spec, &json), 0);
    assert_string_equal(json, "{\"addr\":\"[::1]:8080\",\"weight\":42,\"zone\":\"z\"}");
    assert_int_equal(backend(json, &back), 0);
    assert_memory_equal(&back, &spec, sizeof(spec));
    free(json);
    assert_int_equal(lb_value_encode_backend(&bad, &json), -EINVAL);
    bad = spec;
    bad.weight = 1001;
    assert_int_equal(lb_value_encode_backend(&bad, &json), -EINVAL);
}

static int policy(const char *json, struct lb_pool_policy *p)
{
    char *err = NULL;
    int rc = lb_value_parse_policy(json, strlen(json), p, &err);

    if (rc)
        assert_non_null(err);
    free(err);
    return rc;
}

static void test_policy_values(void **state)
{
    struct lb_pool_policy p, def;

    lb_pool_policy_defaults(&def);
    assert_int_equal(policy("{}", &p), 0);
    assert_memory_equal(&p, &def, sizeof(p));
    assert_int_equal(
        policy("{\"algorithm\":\"maglev\",\"health\":{\"type\":\"http\",\"path\":\"/ready?x=1\","
               "\"interval\":\"500ms\",\"timeout\":\"250ms\",\"rise\":1,\"fall\":100},"
               "\"connect_timeout\":\"1m30s\",\"idle_timeout\":\"0\",\"retries\":0,"
               "\"max_conns\":1000,\"slow_start\":\"30s\",\"drain_timeout\":\"2h\","
               "\"proxy_protocol\":\"v2\",\"panic_threshold\":0}",
               &p),
        0);
    assert_int_equal(p.algorithm, LB_ALGO_MAGLEV);
    assert_int_equal(p.health.type, LB_CHECK_HTTP);
    assert_string_equal(p.health.path, "/ready?x=1");
    assert_int_equal(p.health.interval_ms, 500);
    assert_int_equal(p.health.timeout_ms, 250);
    assert_int_equal(p.health.rise, 1);
    assert_int_equal(p.health.fall, 100);
    assert_int_equal(p.connect_timeout_ms, 90000);
    assert_int_equal(p.idle_timeout_ms, 0);
    assert_int_equal(p.retries, 0);
    assert_int_equal(p.max_conns, 1000);
    assert_int_equal(p.slow_start_ms, 30000);
    assert_int_equal(p.drain_timeout_ms, 7200000);
    assert_int_equal(p.proxy_protocol, LB_PROXY_V2);
    assert_int_equal(p.panic_threshold, 0);
    /* partial health object keeps the other defaults */
    assert_int_equal(policy("{\"health\":{\"fall\":5}}", &p), 0);
    assert_int_equal(p.health.type, LB_CHECK_TCP);
    assert_int_equal(p.health.fall, 5);
    assert_int_equal(p.health.rise, def.health.rise);
    assert_int_equal(p.health.interval_ms, def.health.interval_ms);
    /* checks off: zero interval is fine */
    assert_int_equal(policy("{\"health\":{\"type\":\"none\",\"interval\":\"0\"}}", &p), 0);
    assert_int_equal(p.health.type, LB_CHECK_NONE);
    assert_int_equal(policy("{\"algorithm\":\"wrr\"}", &p), 0);
    assert_int_equal(policy("{\"algorithm\":\"leastconn\"}", &p), 0);
    assert_int_equal(p.algorithm, LB_ALGO_LEASTCONN);
    assert_int_equal(policy("{\"algorithm\":\"p2c\",\"proxy_protocol\":\"v1\"}", &p), 0);
    assert_int_equal(p.algorithm, LB_ALGO_P2C);
    assert_int_equal(p.proxy_protocol, LB_PROXY_V1);
}

static void test_policy_bad_values(void **state)
{
    /* what does not parse refuses the whole value (out of range is clamped instead) */
    static const char *const bad[] = {
        "{\"algorithm\":\"random\"}",
        "{\"algorithm\":1}",
        "{\"health\":\"tcp\"}",
        "{\"health\":{\"type\":\"udp\"}}",
        "{\"health\":{\"path\":\"healthz\"}}",
        "{\"health\":{\"path\":\"/a b\"}}",
        "{\"health\":{\"interval\":\"2\"}}",
        "{\"health\":{\"interval\":2000}}",
        "{\"health\":{\"interval\":\"2d\"}}",
        "{\"health\":{\"rise\":\"2\"}}",
        "{\"health\":{\"fall\":1.5}}",
        "{\"connect_timeout\":\"3 s\"}",
        "{\"connect_timeout\":\"-3s\"}",
        "{\"idle_timeout\":\"\"}",
        "{\"retries\":true}",
        "{\"max_conns\":\"10\"}",
        "{\"slow_start\":true}",
        "{\"proxy_protocol\":\"v3\"}",
        "{\"panic_threshold\":\"50%\"}",
        "[]",
        "null",
    };
    struct lb_pool_policy p;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (policy(bad[i], &p) != -EINVAL)
            fail_msg("accepted %s", bad[i]);
}

/* Parses a policy expecting success; returns the notes. */
static struct lb_value_notes policy_noted(const char *json, struct lb_pool_policy *p)
{
    struct lb_value_notes notes;
    char *err = NULL;

    notes.n = 0;
    if (lb_value_parse_policy_noted(json, strlen(json), p, &notes, &err) != 0)
        fail_msg("refused %s: %s", json, err ? err : "");
    free(err);
    return notes;
}

/*
 * Every number and duration of the policy has a range: a value out of it
 * is clamped to the nearest bound, with one note naming the field, what was
 * given and what is used.
 */
static void test_policy_out_of_range_is_clamped_with_a_note(void **state)
{
    static const struct {
        const char *json;
        const char *field;
        const char *given, *used;
    } cases[] = {
        {"{\"health\":{\"interval\":\"1ms\"}}", "health.interval", "1ms", "100ms"},
        {"{\"health\":{\"interval\":\"99ms\"}}", "health.interval", "99ms", "100ms"},
        {"{\"health\":{\"interval\":\"2h\"}}", "health.interval", "2h", "1h"},
        {"{\"health\":{\"interval\":\"99999999999999999h\"}}", "health.interval",
         "99999999999999999h", "1h"},
        {"{\"health\":{\"timeout\":\"1ms\"}}", "health.timeout", "1ms", "10ms"},
        {"{\"health\":{\"timeout\":\"5s\"}}", "health.timeout", "5s", "2s"},
        {"{\"health\":{\"timeout\":\"0\"}}", "health.timeout", "0", "1s"},
        {"{\"health\":{\"rise\":0}}", "health.rise", "0", "1"},
        {"{\"health\":{\"fall\":101}}", "health.fall", "101", "100"},
        {"{\"connect_timeout\":\"1ms\"}", "connect_timeout", "1ms", "100ms"},
        {"{\"connect_timeout\":\"1h\"}", "connect_timeout", "1h", "5m"},
        {"{\"idle_timeout\":\"10ms\"}", "idle_timeout", "10ms", "1s"},
        {"{\"idle_timeout\":\"9000h\"}", "idle_timeout", "9000h", "168h"},
        {"{\"retries\":11}", "retries", "11", "10"},
        {"{\"retries\":-1}", "retries", "-1", "0"},
        {"{\"max_conns\":-1}", "max_conns", "-1", "0"},
        {"{\"max_conns\":10000001}", "max_conns", "10000001", "10000000"},
        {"{\"slow_start\":\"1ms\"}", "slow_start", "1ms", "1s"},
        {"{\"slow_start\":\"2h\"}", "slow_start", "2h", "1h"},
        {"{\"queue_timeout\":\"1ms\"}", "queue_timeout", "1ms", "10ms"},
        {"{\"queue_timeout\":\"2h\"}", "queue_timeout", "2h", "1h"},
        {"{\"drain_timeout\":\"1ms\"}", "drain_timeout", "1ms", "1s"},
        {"{\"drain_timeout\":\"48h\"}", "drain_timeout", "48h", "24h"},
        {"{\"panic_threshold\":101}", "panic_threshold", "101", "100"},
        {"{\"panic_threshold\":-5}", "panic_threshold", "-5", "0"},
        {"{\"zone_affinity\":150}", "zone_affinity", "150", "100"},
        {"{\"zone_affinity\":-1}", "zone_affinity", "-1", "0"},
    };
    struct lb_pool_policy p;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct lb_value_notes notes = policy_noted(cases[i].json, &p);

        if (notes.n != 1 || strcmp(notes.note[0].field, cases[i].field) != 0 ||
            strcmp(notes.note[0].given, cases[i].given) != 0 ||
            strcmp(notes.note[0].used, cases[i].used) != 0)
            fail_msg("%s: %zu notes, first %s %s -> %s", cases[i].json, notes.n,
                     notes.n ? notes.note[0].field : "-", notes.n ? notes.note[0].given : "-",
                     notes.n ? notes.note[0].used : "-");
        assert_non_null(notes.note[0].why);
    }
    /* the values themselves */
    policy_noted("{\"health\":{\"interval\":\"1ms\",\"timeout\":\"1ms\"},\"retries\":99,"
                 "\"panic_threshold\":1000,\"slow_start\":\"10ms\",\"drain_timeout\":\"100ms\","
                 "\"connect_timeout\":\"1ms\",\"idle_timeout\":\"1ms\",\"max_conns\":-7}",
                 &p);
    assert_int_equal(p.health.interval_ms, LB_POLICY_INTERVAL_MIN_MS);
    assert_int_equal(p.health.timeout_ms, LB_POLICY_TIMEOUT_MIN_MS);
    assert_int_equal(p.retries, LB_POLICY_RETRIES_MAX);
    assert_int_equal(p.panic_threshold, 100);
    assert_int_equal(p.slow_start_ms, LB_POLICY_SLOW_START_MIN_MS);
    assert_int_equal(p.drain_timeout_ms, LB_POLICY_DRAIN_TIMEOUT_MIN_MS);
    assert_int_equal(p.connect_timeout_ms, LB_POLICY_CONNECT_TIMEOUT_MIN_MS);
    assert_int_equal(p.idle_timeout_ms, LB_POLICY_IDLE_TIMEOUT_MIN_MS);
    assert_int_equal(p.max_conns, 0);
}

/* health.timeout never exceeds health.interval, whoever set which. */
static void test_health_timeout_capped_at_interval(void **state)
{
    struct lb_pool_policy p;
    struct lb_value_notes notes;

    /* the default timeout (1s) under a short interval: capped, no note (nobody wrote it) */
    notes = policy_noted("{\"health\":{\"interval\":\"200ms\"}}", &p);
    assert_int_equal(notes.n, 0);
    assert_int_equal(p.health.interval_ms, 200);
    assert_int_equal(p.health.timeout_ms, 200);
    /* a written one above the interval: capped with a note */
    notes = policy_noted("{\"health\":{\"interval\":\"300ms\",\"timeout\":\"2s\"}}", &p);
    assert_int_equal(notes.n, 1);
    assert_string_equal(notes.note[0].field, "health.timeout");
    assert_string_equal(notes.note[0].used, "300ms");
    assert_int_equal(p.health.timeout_ms, 300);
    /* both clamped: interval to its floor, then timeout to the interval */
    notes = policy_noted("{\"health\":{\"interval\":\"5ms\",\"timeout\":\"3s\"}}", &p);
    assert_int_equal(notes.n, 2);
    assert_int_equal(p.health.interval_ms, 100);
    assert_int_equal(p.health.timeout_ms, 100);
}

/* "0 means off" (DESIGN.md) where off makes sense; in range values are left alone. */
static void test_zero_means_off(void **state)
{
    struct lb_pool_policy p, def;
    struct lb_value_notes notes;

    lb_pool_policy_defaults(&def);
    notes = policy_noted("{\"health\":{\"type\":\"tcp\",\"interval\":\"0\"},"
                         "\"connect_timeout\":\"0\",\"idle_timeout\":\"0s\",\"slow_start\":\"0\","
                         "\"drain_timeout\":\"0ms\",\"max_conns\":0,\"panic_threshold\":0,"
                         "\"retries\":0}",
                         &p);
    assert_int_equal(notes.n, 0);
    assert_int_equal(p.health.type, LB_CHECK_NONE); /* checks off */
    assert_int_equal(p.health.interval_ms, def.health.interval_ms);
    assert_int_equal(p.connect_timeout_ms, 0);
    assert_int_equal(p.idle_timeout_ms, 0);
    assert_int_equal(p.slow_start_ms, 0);
    assert_int_equal(p.drain_timeout_ms, 0);
    assert_int_equal(p.max_conns, 0);
    assert_int_equal(p.panic_threshold, 0);
    assert_int_equal(p.retries, 0);
    /* the bounds themselves are in range */
    notes = policy_noted("{\"health\":{\"interval\":\"100ms\",\"timeout\":\"10ms\",\"rise\":100,"
                         "\"fall\":1},\"connect_timeout\":\"5m\",\"idle_timeout\":\"168h\","
                         "\"slow_start\":\"1s\",\"drain_timeout\":\"24h\",\"retries\":10,"
                         "\"max_conns\":10000000,\"panic_threshold\":100}",
                         &p);
    assert_int_equal(notes.n, 0);
    /* the defaults are in range */
    notes = policy_noted("{}", &p);
    assert_int_equal(notes.n, 0);
    assert_memory_equal(&p, &def, sizeof(p));
}

static void test_backend_weight_clamped(void **state)
{
    struct lb_backend_spec b;
    struct lb_override o;
    struct lb_value_notes notes = {.n = 0};
    const char *json = "{\"addr\":\"h:1\",\"weight\":5000}";

    assert_int_equal(lb_value_parse_backend_noted(json, strlen(json), &b, &notes, NULL), 0);
    assert_int_equal(b.weight, LB_WEIGHT_MAX);
    assert_int_equal(notes.n, 1);
    assert_string_equal(notes.note[0].field, "weight");
    assert_string_equal(notes.note[0].given, "5000");
    assert_string_equal(notes.note[0].used, "1000");
    json = "{\"weight\":-3,\"drain\":true}";
    notes.n = 0;
    assert_int_equal(lb_value_parse_override_noted(json, strlen(json), &o, &notes, NULL), 0);
    assert_true(o.has_weight);
    assert_int_equal(o.weight, 0);
    assert_int_equal(notes.n, 1);
}

static void test_error_sentences_name_the_field(void **state)
{
    struct lb_pool_policy p;
    struct lb_backend_spec b;
    const char *json = "{\"health\":{\"rise\":\"0\"}}";
    char *err = NULL;

    assert_int_equal(lb_value_parse_policy(json, strlen(json), &p, &err), -EINVAL);
    assert_non_null(strstr(err, "health.rise"));
    json = "{\"addr\":\"10.0.0.1:99999\"}";
    assert_int_equal(lb_value_parse_backend(json, strlen(json), &b, &err), -EINVAL);
    assert_non_null(strstr(err, "99999"));
    free(err);
}

/* Checks a policy expecting refusal; returns the problems (the caller looks at them). */
static struct lb_value_problems check_bad(const char *json)
{
    struct lb_value_problems ps;
    struct lb_pool_policy p, before;

    memset(&p, 0x5a, sizeof(p));
    before = p;
    if (lb_value_check_policy(json, strlen(json), &p, &ps, NULL) != -EINVAL)
        fail_msg("accepted %s", json);
    assert_memory_equal(&p, &before, sizeof(p)); /* *out untouched */
    assert_true(ps.n >= 1);
    assert_true(ps.total >= ps.n);
    return ps;
}

/* The problem of `field`, or a failure naming what was found instead. */
static const char *problem_of(const struct lb_value_problems *ps, const char *field)
{
    for (size_t i = 0; i < ps->n; i++)
        if (strcmp(ps->problem[i].field, field) == 0)
            return ps->problem[i].text;
    fail_msg("no problem for %s (first: %s: %s)", field, ps->n ? ps->problem[0].field : "-",
             ps->n ? ps->problem[0].text : "-");
    return NULL;
}

static void assert_mentions(const char *text, const char *needle)
{
    if (!strstr(text, needle))
        fail_msg("\"%s\" does not mention \"%s\"", text, needle);
}

/* A typo in a policy is refused with the field meant, at either level. */
static void test_policy_unknown_fields_named_with_a_suggestion(void **state)
{
    static const struct {
        const char *json, *field, *says;
    } cases[] = {
        {"{\"intervl\":\"1s\"}", "intervl", "did you mean health.interval?"},
        {"{\"interval\":\"1s\"}", "interval", "did you mean health.interval?"},
        {"{\"conect_timeout\":\"1s\"}", "conect_timeout", "did you mean connect_timeout?"},
        {"{\"connect-timeout\":\"1s\"}", "connect-timeout", "did you mean connect_timeout?"},
        {"{\"Algorithm\":\"p2c\"}", "Algorithm", "did you mean algorithm?"},
        {"{\"zone_afinity\":70}", "zone_afinity", "did you mean zone_affinity?"},
        {"{\"helth\":{}}", "helth", "did you mean health?"},
        {"{\"health\":{\"intervl\":\"1s\"}}", "health.intervl", "did you mean interval?"},
        {"{\"health\":{\"tyep\":\"tcp\"}}", "health.tyep", "did you mean type?"},
        {"{\"health\":{\"retries\":3}}", "health.retries",
         "retries belongs at the top level, not in health"},
        {"{\"health\":{\"retrys\":3}}", "health.retrys", "did you mean retries, at the top level?"},
        {"{\"bogus\":1}", "bogus", "a policy takes algorithm, health"},
        {"{\"health\":{\"bogus\":1}}", "health.bogus", "health takes type, path"},
        {"{\"unknown\":{\"a\":1}}", "unknown", "unknown field \"unknown\""},
        {"{\"intervl\":null}", "intervl", "did you mean health.interval?"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct lb_value_problems ps = check_bad(cases[i].json);
        const char *text = problem_of(&ps, cases[i].field);

        assert_int_equal(ps.total, 1);
        assert_mentions(text, "unknown field");
        assert_mentions(text, cases[i].says);
    }
    /* lbd ignores an unknown field (DESIGN.md) and applies the rest; the note
     * it logs carries the field and the suggestion.  Any other problem still
     * refuses the whole value. */
    {
        const char *json = "{\"health\":{\"intervl\":\"1s\"},\"algorithm\":\"p2c\"}";
        const char *worse = "{\"health\":{\"intervl\":\"1s\"},\"algorithm\":\"p3c\"}";
        struct lb_value_notes notes = {.n = 0};
        struct lb_pool_policy p;
        char *err = NULL;

        assert_int_equal(lb_value_parse_policy_noted(json, strlen(json), &p, &notes, &err), 0);
        assert_int_equal(p.algorithm, LB_ALGO_P2C);
        assert_int_equal(notes.n_unknown, 1);
        assert_string_equal(notes.unknown[0],
                            "unknown field \"health.intervl\" (did you mean interval?)");
        assert_int_equal(lb_value_parse_policy(worse, strlen(worse), &p, &err), -EINVAL);
        assert_mentions(err, "unknown field \"health.intervl\"");
        assert_mentions(err, "algorithm");
        free(err);
    }
}

/* Every problem is reported, not just the first, each under its field. */
static void test_policy_every_problem_reported(void **state)
{
    const char *json = "{\"algorithm\":\"leastconns\",\"intervl\":\"1s\","
                       "\"health\":{\"type\":\"udp\",\"path\":\"x y\",\"rise\":\"2\","
                       "\"interval\":\"2 s\",\"timout\":\"1s\"},"
                       "\"connect_timeout\":3,\"retries\":true,\"proxy_protocol\":\"v3\","
                       "\"panic_threshold\":50}";
    struct lb_value_problems ps = check_bad(json);
    struct lb_pool_policy p;
    char *err = NULL;

    assert_mentions(problem_of(&ps, "algorithm"), "did you mean leastconn?");
    assert_mentions(problem_of(&ps, "intervl"), "did you mean health.interval?");
    assert_mentions(problem_of(&ps, "health.timout"), "did you mean timeout?");
    assert_mentions(problem_of(&ps, "health.type"), "\"udp\" is not one of tcp|http|none");
    assert_mentions(problem_of(&ps, "health.path"), "start with '/'");
    assert_mentions(problem_of(&ps, "health.rise"), "whole number");
    assert_mentions(problem_of(&ps, "health.interval"), "health.interval \"2 s\"");
    assert_mentions(problem_of(&ps, "connect_timeout"), "duration string");
    assert_mentions(problem_of(&ps, "retries"), "whole number");
    assert_mentions(problem_of(&ps, "proxy_protocol"), "none|v1|v2");
    assert_int_equal(ps.total, 10);
    assert_int_equal(ps.n, 10);
    /* lbd's line holds them in order and says how many */
    assert_int_equal(lb_value_parse_policy(json, strlen(json), &p, &err), -EINVAL);
    assert_mentions(err, "unknown field \"intervl\"");
    assert_mentions(err, "(10 problems)");
    free(err);
    /* the value as a whole */
    ps = check_bad("[1]");
    assert_string_equal(ps.problem[0].field, "");
    assert_mentions(ps.problem[0].text, "JSON object");
    ps = check_bad("{\"a\":");
    assert_string_equal(ps.problem[0].field, "");
    assert_int_equal(ps.total, 1);
    /* more problems than the array holds: counted, the first ones kept */
    {
        char big[2048];
        size_t o = (size_t)snprintf(big, sizeof(big), "{");

        for (int i = 0; i < 40; i++)
            o += (size_t)snprintf(big + o, sizeof(big) - o, "%s\"zz%02d\":1", i ? "," : "", i);
        snprintf(big + o, sizeof(big) - o, "}");
        ps = check_bad(big);
        assert_int_equal(ps.n, LB_VALUE_PROBLEMS_MAX);
        assert_int_equal(ps.total, 40);
        assert_string_equal(ps.problem[0].field, "zz00");
    }
    /* a good policy: no problems, the notes still say what was clamped */
    {
        const char *good = "{\"health\":{\"interval\":\"1ms\"},\"algorithm\":\"p2c\"}";
        struct lb_value_notes notes = {.n = 0};

        assert_int_equal(lb_value_check_policy(good, strlen(good), &p, &ps, &notes), 0);
        assert_int_equal(ps.total, 0);
        assert_int_equal(notes.n, 1);
        assert_int_equal(p.algorithm, LB_ALGO_P2C);
    }
}

/* The effective policy written out reads back to itself, with every field. */
static void test_policy_encode_roundtrip(void **state)
{
    static const char *const policies[] = {
        "{}",
        "{\"algorithm\":\"maglev\",\"health\":{\"type\":\"http\",\"path\":\"/ready?x=1\","
        "\"interval\":\"500ms\",\"timeout\":\"250ms\",\"rise\":1,\"fall\":100},"
        "\"connect_timeout\":\"1m30s\",\"idle_timeout\":\"0\",\"retries\":0,"
        "\"max_conns\":1000,\"slow_start\":\"30s\",\"drain_timeout\":\"2h\","
        "\"proxy_protocol\":\"v2\",\"panic_threshold\":0,\"zone_affinity\":70,"
        "\"queue_timeout\":\"2.5s\"}",
        "{\"health\":{\"interval\":\"0\"},\"proxy_protocol\":\"v1\"}",
    };

    for (size_t i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
        struct lb_pool_policy p, back;
        char *json = NULL;

        assert_int_equal(policy(policies[i], &p), 0);
        assert_int_equal(lb_value_encode_policy(&p, &json), 0);
        assert_int_equal(policy(json, &back), 0);
        assert_memory_equal(&p, &back, sizeof(p));
        free(json);
    }
    {
        struct lb_pool_policy p;
        char *json = NULL;

        lb_pool_policy_defaults(&p);
        assert_int_equal(lb_value_encode_policy(&p, &json), 0);
        assert_string_equal(json, "{\"algorithm\":\"wrr\",\"health\":{\"type\":\"tcp\","
                                  "\"path\":\"/healthz\",\"interval\":\"2s\",\"timeout\":"
                                  "\"1s\",\"rise\":2,\"fall\":3},\"connect_timeout\":\"3s\","
                                  "\"idle_timeout\":\"1h\",\"retries\":2,\"max_conns\":0,"
                                  "\"slow_start\":\"0s\",\"drain_timeout\":\"0s\","
                                  "\"proxy_protocol\":\"none\",\"panic_threshold\":50,"
                                  "\"zone_affinity\":0,\"queue_timeout\":\"0s\"}");
        free(json);
        p.proxy_protocol = (enum lb_proxy_protocol)7;
        assert_int_equal(lb_value_encode_policy(&p, &json), -EINVAL);
        assert_null(json);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_schema),
        cmocka_unit_test(test_key_binary_and_long),
        cmocka_unit_test(test_key_format_and_prefix),
        cmocka_unit_test(test_addr),
        cmocka_unit_test(test_backend_values),
        cmocka_unit_test(test_backend_too_long),
        cmocka_unit_test(test_override_values),
        cmocka_unit_test(test_override_encode_roundtrip),
        cmocka_unit_test(test_backend_encode),
        cmocka_unit_test(test_policy_values),
        cmocka_unit_test(test_policy_bad_values),
        cmocka_unit_test(test_policy_out_of_range_is_clamped_with_a_note),
        cmocka_unit_test(test_health_timeout_capped_at_interval),
        cmocka_unit_test(test_zero_means_off),
        cmocka_unit_test(test_backend_weight_clamped),
        cmocka_unit_test(test_error_sentences_name_the_field),
        cmocka_unit_test(test_policy_unknown_fields_named_with_a_suggestion),
        cmocka_unit_test(test_policy_every_problem_reported),
        cmocka_unit_test(test_policy_encode_roundtrip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
