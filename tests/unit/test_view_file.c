/*
 * lbd's state file (lb_view_file.h): what a watcher exports, written as a
 * file and read back, is the same view, keys and values byte for byte; and
 * a file that is not whole or not of this format gives nothing at all,
 * with a sentence saying why.
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

#include "lb_view_file.h"

#define KV(k, v, r)                                                                                \
    {                                                                                              \
        k, sizeof(k) - 1, v, sizeof(v) - 1, r                                                      \
    }

static const struct lb_watcher_kv keys[] = {
    KV("/lb/pools/web/backends/b1", "{\"addr\":\"127.0.0.1:8001\"}", 10),
    KV("/lb/pools/web/config", "", 12),                     /* an empty value */
    KV("/lb/pools/web/overrides/b2", "\x00\xff\"\\\n", 13), /* bytes, not text */
    KV("/lb/pools/web/backends/bad", "{\"addr\":", 14),
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

static const struct lb_watcher_view view = {
    .revision = 14, .cluster_id = 18446744073709551615ull, .stale_ms = 2500, .prefix = "/lb/"};

/* The file of `view` with keys [0, n), in a malloc'd buffer. */
static struct lb_buf file_of(size_t n, size_t max)
{
    struct lb_view_file_writer w;
    struct lb_buf b;

    lb_buf_init(&b, max);
    lb_view_file_begin(&w, &b);
    for (size_t i = 0; i < n; i++)
        lb_view_file_add(&w, &keys[i]);
    assert_int_equal(lb_view_file_end(&w, &view, 1764550000123), 0);
    return b;
}

static void test_round_trip(void **state)
{
    struct lb_buf b = file_of(N_KEYS, LB_VIEW_FILE_MAX);
    struct lb_saved_view v;
    char *err = NULL;

    assert_int_equal(lb_view_file_decode(b.data, b.len, &v, &err), 0);
    assert_null(err);
    assert_int_equal(v.view.revision, 14);
    assert_true(v.view.cluster_id == view.cluster_id);
    assert_int_equal(v.view.stale_ms, 2500);
    assert_string_equal(v.view.prefix, "/lb/");
    assert_true(v.written_ms == 1764550000123);
    assert_int_equal(v.n_keys, N_KEYS);
    for (size_t i = 0; i < N_KEYS; i++) {
        assert_int_equal(v.keys[i].key_len, keys[i].key_len);
        assert_memory_equal(v.keys[i].key, keys[i].key, keys[i].key_len);
        assert_int_equal(v.keys[i].value_len, keys[i].value_len);
        if (keys[i].value_len)
            assert_memory_equal(v.keys[i].value, keys[i].value, keys[i].value_len);
        assert_int_equal(v.keys[i].mod_revision, keys[i].mod_revision);
    }
    lb_saved_view_free(&v);
    lb_buf_free(&b);

    b = file_of(0, LB_VIEW_FILE_MAX); /* an empty view is a view */
    assert_int_equal(lb_view_file_decode(b.data, b.len, &v, &err), 0);
    assert_int_equal(v.n_keys, 0);
    lb_saved_view_free(&v);
    lb_buf_free(&b);
}

static void test_writer_bound_leaves_no_file(void **state)
{
    struct lb_view_file_writer w;
    struct lb_buf b;

    lb_buf_init(&b, 64);
    lb_view_file_begin(&w, &b);
    for (size_t i = 0; i < N_KEYS; i++)
        lb_view_file_add(&w, &keys[i]);
    assert_int_equal(lb_view_file_end(&w, &view, 1), -E2BIG);
    assert_int_equal(b.len, 0);
    lb_buf_free(&b);
}

/* The file with `from` replaced by `to` decodes to -EINVAL with `why` in its sentence. */
static void refused(const char *from, const char *to, const char *why)
{
    struct lb_buf b = file_of(N_KEYS, LB_VIEW_FILE_MAX);
    char *text = malloc(b.len + strlen(to) + 1), *at;
    struct lb_saved_view v;
    char *err = NULL;
    size_t len;

    assert_non_null(text);
    memcpy(text, b.data, b.len);
    text[b.len] = '\0';
    at = strstr(text, from);
    assert_non_null(at);
    memmove(at + strlen(to), at + strlen(from), strlen(at + strlen(from)) + 1);
    memcpy(at, to, strlen(to));
    len = strlen(text);
    assert_int_equal(lb_view_file_decode(text, len, &v, &err), -EINVAL);
    assert_non_null(err);
    if (!strstr(err, why))
        fail_msg("\"%s\" does not say \"%s\"", err, why);
    assert_int_equal(v.n_keys, 0);
    assert_null(v.keys);
    free(err);
    free(text);
    lb_buf_free(&b);
}

static void test_what_is_not_whole_gives_nothing(void **state)
{
    struct lb_buf b = file_of(N_KEYS, LB_VIEW_FILE_MAX);
    struct lb_saved_view v;
    char *err = NULL;

    for (size_t cut = 0; cut < b.len - 1; cut += 7) { /* every cut of the file */
        if (lb_view_file_decode(b.data, cut, &v, &err) == 0)
            fail_msg("a file cut at %zu of %zu decodes", cut, b.len);
        assert_non_null(err);
        assert_null(v.keys);
        free(err);
        err = NULL;
    }
    lb_buf_free(&b);

    refused("\"count\":\"4\"", "\"count\":\"5\"", "not whole");
    refused("\"count\":\"4\",", "", "not whole");
    refused("\"format\":1", "\"format\":2", "another format");
    refused("\"lbd\":{", "\"lbe\":{", "not an lbd state file");
    refused("\"prefix\":\"/lb/\"", "\"prefix\":\"/other/\"", "outside the prefix");
    refused("\"prefix\":\"/lb/\"", "\"prefix\":\"lb\"", "key prefix");
    refused("\"prefix\":\"/lb/\"", "\"prefix\":\"/lb\"", "key prefix");
    refused("\"stale_ms\":\"2500\"", "\"stale_ms\":\"-1\"", "stale_ms");
    refused("\"written_ms\":\"1764550000123\"", "\"written_ms\":\"0\"", "written_ms");
    refused("\"revision\":\"14\"", "\"revision\":\"0\"", "no revision");
    refused("\"kvs\":[", "\"kvs\":{\"a\":[", "not JSON");
    refused("\"mod_revision\":\"10\"", "\"mod_revision\":\"x\"", "key 1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_writer_bound_leaves_no_file),
        cmocka_unit_test(test_what_is_not_whole_gives_nothing),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
