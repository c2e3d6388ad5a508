/*
 * A listing, page by page, without etcd's transport: range answers built
 * here the way etcd 3.4 writes them (base64 keys and values, int64 as
 * strings, "more" and "count"), fed to lb_listing as the watcher does.
 * No key and no value may stop a listing: a key too long is skipped and
 * the next page starts right after it; a value too large is not read; an
 * answer over the response bound is asked again smaller, down to one key
 * without its value; what is usable is applied.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_buf.h"
#include "lb_etcd_json.h"
#include "lb_listing.h"
#include "lb_log.h"
#include "lb_mirror.h"
#include "lb_value.h"

#define RANGE_KEY     "/lb/pools/"
#define RANGE_END     "/lb/pools0"
#define GOOD_BACKEND  "{\"addr\":\"10.0.0.1:80\"}"
#define GOOD_BACKEND2 "{\"addr\":\"10.0.0.2:80\"}"

/* --- building answers ------------------------------------------------------------------ */

struct entry {
    const char *key; /* NULL: use raw_key */
    size_t key_len;  /* 0: strlen(key) */
    const char *value;
    size_t value_len; /* 0: strlen(value) */
    const char *raw;  /* a kv object written as is (malformed ones) */
};

static char *b64(const char *bytes, size_t len)
{
    char *out;

    assert_int_equal(lb_etcd_base64_encode(bytes, len, &out), 0);
    return out;
}

/* A range answer holding `entries`, with "more" as given. */
static char *answer(const struct entry *entries, size_t n, bool more, size_t *len)
{
    struct lb_buf b;
    char head[256];

    lb_buf_init(&b, (size_t)64 * 1024 * 1024);
    snprintf(head, sizeof(head),
             "{\"header\":{\"cluster_id\":\"13915718962799377783\",\"member_id\":\"1\","
             "\"revision\":\"40\",\"raft_term\":\"2\"},\"kvs\":[");
    assert_int_equal(lb_buf_append(&b, head, strlen(head)), 0);
    for (size_t i = 0; i < n; i++) {
        const struct entry *e = &entries[i];

        if (i)
            assert_int_equal(lb_buf_append(&b, ",", 1), 0);
        if (e->raw) {
            assert_int_equal(lb_buf_append(&b, e->raw, strlen(e->raw)), 0);
            continue;
        }
        {
            char *k = b64(e->key, e->key_len ? e->key_len : strlen(e->key));
            char *v = b64(e->value, e->value_len ? e->value_len : strlen(e->value));
            char rev[128];

            assert_int_equal(lb_buf_append(&b, "{\"key\":\"", 8), 0);
            assert_int_equal(lb_buf_append(&b, k, strlen(k)), 0);
            snprintf(rev, sizeof(rev),
                     "\",\"create_revision\":\"%zu\",\"mod_revision\":\"%zu\",\"version\":\"1\","
                     "\"value\":\"",
                     i + 2, i + 2);
            assert_int_equal(lb_buf_append(&b, rev, strlen(rev)), 0);
            assert_int_equal(lb_buf_append(&b, v, strlen(v)), 0);
            assert_int_equal(lb_buf_append(&b, "\"}", 2), 0);
            free(k);
            free(v);
        }
    }
    snprintf(head, sizeof(head), "]%s,\"count\":\"%zu\"}", more ? ",\"more\":true" : "", n + 10);
    assert_int_equal(lb_buf_append(&b, head, strlen(head)), 0);
    *len = b.len;
    return b.data;
}

static char *filled(size_t len, const char *start, char fill)
{
    char *s = malloc(len + 1);

    assert_non_null(s);
    memset(s, fill, len);
    memcpy(s, start, strlen(start));
    s[len] = '\0';
    return s;
}

/* --- fixture ---------------------------------------------------------------------------- */

struct fixture {
    struct lb_mirror *m;
    struct lb_listing l;
    char log[8192];
};

static void record(void *ctx, const struct lb_update *u)
{
    struct fixture *f = ctx;
    size_t len = strlen(f->log);

    snprintf(f->log + len, sizeof(f->log) - len, "%s %s/%s;",
             u->kind == LB_UPDATE_BACKEND_PUT      ? "+backend"
             : u->kind == LB_UPDATE_BACKEND_DELETE ? "-backend"
             : u->kind == LB_UPDATE_POLICY_PUT     ? "+policy"
             : u->kind == LB_UPDATE_POLICY_DELETE  ? "-policy"
                                                   : "override",
             u->pool, u->id ? u->id : "-");
}

static void commit(void *ctx)
{
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct lb_update_sink sink = {record, commit, NULL};

    lb_log_set_level(LB_LOG_ERROR); /* the skips below are expected */
    sink.ctx = f;
    assert_int_equal(lb_mirror_new("/lb/", &sink, &f->m), 0);
    lb_listing_init(&f->l, f->m, 500);
    assert_int_equal(
        lb_listing_begin(&f->l, RANGE_KEY, strlen(RANGE_KEY), RANGE_END, strlen(RANGE_END)), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    lb_listing_clear(&f->l);
    lb_mirror_free(f->m);
    free(f);
    lb_log_set_level(LB_LOG_INFO);
    return 0;
}

static void take_log(struct fixture *f, const char *expected)
{
    assert_string_equal(f->log, expected);
    f->log[0] = '\0';
}

static uint64_t skipped(struct fixture *f, enum lb_skip_reason r)
{
    struct lb_mirror_stats st;

    lb_mirror_get_stats(f->m, &st);
    return st.skipped[r];
}

/* The next request, read back: its start key (malloc'd), limit and keys_only. */
static char *next_request(struct fixture *f, size_t *key_len, int64_t *limit, bool *keys_only)
{
    json_object *req, *v;
    char *body = NULL, *key = NULL, *err = NULL;

    assert_int_equal(lb_listing_request(&f->l, &body), 0);
    assert_int_equal(lb_etcd_json_parse(body, strlen(body), &req, &err), 0);
    assert_true(json_object_object_get_ex(req, "key", &v));
    assert_int_equal(lb_etcd_base64_decode(json_object_get_string(v),
                                           (size_t)json_object_get_string_len(v), SIZE_MAX, &key,
                                           key_len),
                     0);
    assert_true(json_object_object_get_ex(req, "range_end", &v));
    assert_int_equal(lb_etcd_json_get_int64(req, "limit", limit), 0);
    *keys_only = json_object_object_get_ex(req, "keys_only", &v) && json_object_get_boolean(v);
    json_object_put(req);
    free(body);
    return key;
}

/* --- the page reader -------------------------------------------------------------------- */

/*
 * A page with a good key, a 5,000-byte key, a value over LB_VALUE_MAX and a
 * malformed entry: every entry is there, flagged, and the continuation key
 * is the whole long key of the last entry.
 */
static void test_page_reader_flags_bad_entries(void **state)
{
    char *long_key = filled(5000, "/lb/pools/other/", 'a');
    char *big = filled(LB_VALUE_MAX + 100, "{", 'v');
    const struct entry entries[] = {
        {.key = "/lb/pools/web/backends/b1", .value = GOOD_BACKEND},
        {.key = "/lb/pools/web/backends/b2", .value = big},
        {.raw = "{\"key\":\"%%%%\",\"mod_revision\":\"9\"}"},
        {.key = long_key, .value = "x"},
    };
    struct lb_etcd_range r;
    size_t len, last_len;
    char *body = answer(entries, 4, true, &len), *last = NULL, *err = NULL;

    assert_int_equal(
        lb_etcd_json_parse_range_page(body, len, LB_VALUE_MAX, &r, &last, &last_len, &err), 0);
    assert_int_equal(r.n_kvs, 4);
    assert_true(r.more);
    assert_int_equal(r.kvs[0].flaw, LB_ETCD_FLAW_NONE);
    assert_string_equal(r.kvs[0].value, GOOD_BACKEND);
    assert_int_equal(r.kvs[1].flaw, LB_ETCD_FLAW_VALUE_TOO_LARGE);
    assert_true(r.kvs[1].key_whole);
    assert_int_equal(r.kvs[1].value_size, LB_VALUE_MAX + 100);
    assert_int_equal(r.kvs[1].value_len, 0);
    assert_int_equal(r.kvs[2].flaw, LB_ETCD_FLAW_MALFORMED);
    assert_int_equal(r.kvs[2].mod_revision, 9);
    assert_int_equal(r.kvs[3].flaw, LB_ETCD_FLAW_KEY_TOO_LONG);
    assert_int_equal(r.kvs[3].key_size, 5000);
    assert_int_equal(last_len, 5000);
    assert_memory_equal(last, long_key, 5000);
    lb_etcd_range_free(&r);
    free(last);
    free(body);
    free(big);
    free(long_key);
}

/* With "more", a last key that cannot be read stops the listing; without, it does not matter. */
static void test_page_reader_last_key(void **state)
{
    const struct entry entries[] = {
        {.key = "/lb/pools/web/backends/b1", .value = GOOD_BACKEND},
        {.raw = "{\"key\":7}"},
    };
    struct lb_etcd_range r;
    size_t len, last_len;
    char *body = answer(entries, 2, true, &len), *last = NULL, *err = NULL;

    assert_int_equal(
        lb_etcd_json_parse_range_page(body, len, LB_VALUE_MAX, &r, &last, &last_len, &err),
        -EINVAL);
    assert_non_null(err);
    assert_null(last);
    assert_null(r.kvs);
    free(err);
    err = NULL;
    free(body);
    body = answer(entries, 2, false, &len);
    assert_int_equal(
        lb_etcd_json_parse_range_page(body, len, LB_VALUE_MAX, &r, &last, &last_len, &err), 0);
    assert_int_equal(r.n_kvs, 2);
    assert_null(last);
    lb_etcd_range_free(&r);
    free(body);
    /* an empty range: no kvs, no last key */
    body = answer(NULL, 0, false, &len);
    assert_int_equal(
        lb_etcd_json_parse_range_page(body, len, LB_VALUE_MAX, &r, &last, &last_len, &err), 0);
    assert_int_equal(r.n_kvs, 0);
    assert_null(last);
    lb_etcd_range_free(&r);
    free(body);
}

/* --- the listing ------------------------------------------------------------------------ */

/*
 * Two pages: the first ends with a 5,000-byte key (in a pool lbd does not
 * serve) and holds a 1.5 MiB key, keys that break the schema and a value
 * too large; the second page starts right after the long key.  The
 * listing completes and applies the good keys.
 */
static void test_listing_continues_after_bad_keys(void **state)
{
    struct fixture *f = *state;
    char *long_key = filled(5000, "/lb/pools/other/", 'a');
    char *huge_key = filled(1500 * 1024, "/lb/pools/other/", 'k');
    char *big = filled(LB_VALUE_MAX + 1, "{", 'v');
    const struct entry page1[] = {
        {.key = "/lb/pools/web/backends/", .value = GOOD_BACKEND},    /* empty id */
        {.key = "/lb/pools/web/backends/a/b", .value = GOOD_BACKEND}, /* too deep */
        {.key = "/lb/pools/web/backends/b1", .value = GOOD_BACKEND},
        {.key = "/lb/pools/web/backends/big", .value = big},
        {.key = "/lb/pools/web/backends/w b", .value = GOOD_BACKEND}, /* bad name */
        {.key = huge_key, .value = "x"},
        {.key = long_key, .value = "x"},
    };
    const struct entry page2[] = {
        {.key = "/lb/pools/web/backends/b2", .value = GOOD_BACKEND2},
        {.key = "/lb/pools/web/config", .value = "{\"retries\":3}"},
    };
    size_t len, key_len;
    int64_t limit;
    bool keys_only;
    char *body, *err = NULL, *key;

    key = next_request(f, &key_len, &limit, &keys_only);
    assert_int_equal(key_len, strlen(RANGE_KEY));
    assert_memory_equal(key, RANGE_KEY, key_len);
    assert_int_equal(limit, 500);
    assert_false(keys_only);
    free(key);

    body = answer(page1, 7, true, &len);
    assert_int_equal(lb_listing_page(&f->l, body, len, &err), 1);
    free(body);
    assert_int_equal(f->l.revision, 40);
    assert_int_equal(f->l.n_staged, 2); /* b1, and big without its value */
    /* the next page starts just after the long key: the key and a NUL byte */
    key = next_request(f, &key_len, &limit, &keys_only);
    assert_int_equal(key_len, 5001);
    assert_memory_equal(key, long_key, 5000);
    assert_int_equal(key[5000], '\0');
    free(key);

    body = answer(page2, 2, false, &len);
    assert_int_equal(lb_listing_page(&f->l, body, len, &err), 0);
    free(body);
    assert_int_equal(lb_listing_apply(&f->l), 3);
    take_log(f, "+backend web/b1;+backend web/b2;+policy web/-;");
    assert_int_equal(skipped(f, LB_SKIP_KEY_TOO_LONG), 2);
    assert_int_equal(skipped(f, LB_SKIP_VALUE_TOO_LARGE), 1);
    assert_int_equal(skipped(f, LB_SKIP_BAD_KEY), 3);
    free(long_key);
    free(huge_key);
    free(big);
}

/*
 * An answer over the response bound: the same page is asked for a quarter
 * of the keys, down to one, then for that one key without its value; that
 * key is staged as too large and the listing goes on after it, growing
 * its pages back.
 */
static void test_listing_pages_around_a_huge_value(void **state)
{
    struct fixture *f = *state;
    const struct entry only_key[] = {{.key = "/lb/pools/web/backends/huge", .value = ""}};
    const struct entry rest[] = {{.key = "/lb/pools/web/backends/b1", .value = GOOD_BACKEND}};
    static const int64_t limits[] = {125, 31, 7, 1};
    size_t len, key_len;
    int64_t limit;
    bool keys_only;
    char *body, *err = NULL, *key;

    /* an earlier listing delivered huge: an unreadable value now keeps it */
    assert_int_equal(lb_mirror_put(f->m, "/lb/pools/web/backends/huge", 27, GOOD_BACKEND2,
                                   strlen(GOOD_BACKEND2), 1),
                     1);
    take_log(f, "+backend web/huge;");

    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
        assert_int_equal(lb_listing_too_large(&f->l), 0);
        key = next_request(f, &key_len, &limit, &keys_only);
        assert_memory_equal(key, RANGE_KEY, key_len); /* the same page */
        assert_int_equal(limit, limits[i]);
        assert_false(keys_only);
        free(key);
    }
    assert_int_equal(lb_listing_too_large(&f->l), 0);
    key = next_request(f, &key_len, &limit, &keys_only);
    assert_int_equal(limit, 1);
    assert_true(keys_only);
    free(key);
    /* etcd answers keys_only without the value */
    body = answer(only_key, 1, true, &len);
    assert_int_equal(lb_listing_page(&f->l, body, len, &err), 1);
    free(body);
    assert_int_equal(f->l.n_staged, 1);
    assert_int_equal(f->l.staged[0].flaw, LB_ETCD_FLAW_VALUE_TOO_LARGE);
    /* then on after it, with values again, twice as many keys */
    key = next_request(f, &key_len, &limit, &keys_only);
    assert_int_equal(key_len, 28);
    assert_memory_equal(key, "/lb/pools/web/backends/huge", 28);
    assert_int_equal(limit, 2);
    assert_false(keys_only);
    free(key);
    body = answer(rest, 1, false, &len);
    assert_int_equal(lb_listing_page(&f->l, body, len, &err), 0);
    free(body);
    assert_int_equal(lb_listing_apply(&f->l), 1);
    take_log(f, "+backend web/b1;"); /* huge kept its last good value, not deleted */
    assert_int_equal(skipped(f, LB_SKIP_VALUE_TOO_LARGE), 1);
    assert_int_equal(f->l.retries, 5);
}

/* One key whose name alone passes the bound cannot be asked for in less: the listing gives up. */
static void test_listing_too_large_even_keys_only(void **state)
{
    struct fixture *f = *state;

    lb_listing_clear(&f->l);
    lb_listing_init(&f->l, f->m, 1);
    assert_int_equal(
        lb_listing_begin(&f->l, RANGE_KEY, strlen(RANGE_KEY), RANGE_END, strlen(RANGE_END)), 0);
    assert_int_equal(lb_listing_too_large(&f->l), 0);
    assert_true(f->l.keys_only);
    assert_int_equal(lb_listing_too_large(&f->l), -E2BIG);
}

/* Pages grow back to the page size after answers well under the bound. */
static void test_listing_grows_back(void **state)
{
    struct fixture *f = *state;
    const struct entry one[] = {{.key = "/lb/pools/web/backends/b1", .value = GOOD_BACKEND}};
    size_t len;
    char *body, *err = NULL;
    int64_t expect = 1;

    for (int i = 0; i < 5; i++)
        assert_int_equal(lb_listing_too_large(&f->l), 0);
    assert_true(f->l.keys_only);
    body = answer(one, 1, true, &len);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(lb_listing_page(&f->l, body, len, &err), 1);
        expect = expect * 2 < 500 ? expect * 2 : 500;
        assert_int_equal(f->l.limit, expect);
        assert_false(f->l.keys_only);
    }
    free(body);
}

/* Past the listing's byte budget values are not kept; past its key budget keys are skipped. */
static void test_listing_budgets(void **state)
{
    struct fixture *f = *state;
    const struct entry entries[] = {
        {.key = "/lb/pools/web/backends/b1", .value = GOOD_BACKEND},
        {.key = "/lb/pools/web/backends/b2", .value = GOOD_BACKEND2},
        {.key = "/lb/pools/web/backends/b3", .value = GOOD_BACKEND},
        {.key = "/lb/pools/web/backends/b4", .value = GOOD_BACKEND},
    };
    size_t len;
    char *body = answer(entries, 4, false, &len), *err = NULL;

    f->l.bytes_max = 2 * (25 + strlen(GOOD_BACKEND)) + 10; /* room for two */
    f->l.keys_max = 3;
    assert_int_equal(lb_listing_page(&f->l, body, len, &err), 0);
    free(body);
    assert_int_equal(f->l.n_staged, 3);
    assert_int_equal(f->l.staged[2].flaw, LB_ETCD_FLAW_VALUE_TOO_LARGE);
    assert_int_equal(lb_listing_apply(&f->l), 2);
    take_log(f, "+backend web/b1;+backend web/b2;");
    assert_int_equal(skipped(f, LB_SKIP_VALUE_TOO_LARGE), 1);
    assert_int_equal(skipped(f, LB_SKIP_TOO_MANY_KEYS), 1);
}

/* Not a range answer: the page fails (the watcher retries), the listing stays usable. */
static void test_listing_bad_answer(void **state)
{
    struct fixture *f = *state;
    const struct entry one[] = {{.key = "/lb/pools/web/backends/b1", .value = GOOD_BACKEND}};
    static const char *const bad[] = {"", "[]", "{}", "{\"header\":{},\"kvs\":7}",
                                      "{\"header\":{},\"kvs\":[],\"more\":true}"};
    char *err = NULL, *body;
    size_t len;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (lb_listing_page(&f->l, bad[i], strlen(bad[i]), &err) != -EINVAL)
            fail_msg("accepted %s", bad[i]);
        assert_non_null(err);
    }
    free(err);
    err = NULL;
    body = answer(one, 1, false, &len);
    assert_int_equal(lb_listing_page(&f->l, body, len, &err), 0);
    free(body);
    assert_int_equal(lb_listing_apply(&f->l), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_page_reader_flags_bad_entries),
        cmocka_unit_test(test_page_reader_last_key),
        cmocka_unit_test_setup_teardown(test_listing_continues_after_bad_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listing_pages_around_a_huge_value, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listing_too_large_even_keys_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listing_grows_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listing_budgets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listing_bad_answer, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
