/*
 * The watcher's view of etcd across an upgrade: what one watcher exports is
 * what the next one takes (lb_watcher_seed) as if it had listed it itself,
 * delivered to the sink in one batch and committed with the watcher
 * already synced (lbd accepts from that commit), without a byte to etcd.
 * A view of another key prefix is not taken at all, a watcher seeds once,
 * and one that has not listed etcd has nothing to export.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_etcd_opts.h"
#include "lb_watcher.h"

struct sink_log {
    struct lb_watcher *w;
    int backends, configs, overrides, commits;
    bool synced_at_commit;
};

static void apply(void *ctx, const struct lb_update *u)
{
    struct sink_log *s = ctx;

    s->backends += u->kind == LB_UPDATE_BACKEND_PUT;
    s->configs += u->kind == LB_UPDATE_POLICY_PUT;
    s->overrides += u->kind == LB_UPDATE_OVERRIDE_PUT;
}

static void commit(void *ctx)
{
    struct sink_log *s = ctx;

    s->commits++;
    s->synced_at_commit = lb_watcher_has_synced(s->w);
}

/* A watcher on `prefix` that never reaches etcd (it is never started). */
static struct lb_watcher *watcher(struct ev_loop *loop, const char *prefix, struct sink_log *s)
{
    static char url[] = "http://127.0.0.1:9";
    static char *urls[] = {url};
    static struct lb_etcd_opts opts;
    struct lb_watcher_config cfg = {.etcd = &opts, .prefix = prefix};
    struct lb_update_sink sink = {apply, commit, s};
    struct lb_watcher *w = NULL;
    char *err = NULL;

    opts.etcd.v = urls;
    opts.etcd.n = 1;
    memset(s, 0, sizeof(*s));
    assert_int_equal(lb_watcher_new(loop, &cfg, &sink, &w, &err), 0);
    assert_null(err);
    s->w = w;
    return w;
}

#define MAX_KV 8
struct copy {
    struct lb_watcher_kv kv[MAX_KV];
    char bytes[MAX_KV][256];
    size_t n;
};

static void keep(void *ctx, const struct lb_watcher_kv *kv)
{
    struct copy *c = ctx;
    char *b = c->bytes[c->n];

    assert_true(c->n < MAX_KV && kv->key_len + kv->value_len < sizeof(c->bytes[0]));
    memcpy(b, kv->key, kv->key_len);
    memcpy(b + kv->key_len, kv->value, kv->value_len);
    c->kv[c->n] = *kv;
    c->kv[c->n].key = b;
    c->kv[c->n].value = b + kv->key_len;
    c->n++;
}

#define KV(k, v, r)                                                                                \
    {                                                                                              \
        k, sizeof(k) - 1, v, sizeof(v) - 1, r                                                      \
    }

static const struct lb_watcher_kv view_keys[] = {
    KV("/lb/pools/web/backends/b1", "{\"addr\":\"127.0.0.1:8001\"}", 10),
    KV("/lb/pools/web/backends/b2", "{\"addr\":\"127.0.0.1:8002\",\"weight\":5}", 11),
    KV("/lb/pools/web/config", "{\"algorithm\":\"leastconn\"}", 12),
    KV("/lb/pools/web/overrides/b2", "{\"drain\":true}", 13),
    KV("/lb/pools/web/backends/bad", "{\"addr\":", 14), /* judged, as in a listing */
};
#define N_VIEW (sizeof(view_keys) / sizeof(view_keys[0]))

static void test_seed_then_export_gives_the_same_view(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct lb_watcher_view view = {
        .revision = 14, .cluster_id = 77, .stale_ms = 0, .prefix = "/lb/"};
    struct lb_watcher_view out;
    struct sink_log s, s2;
    struct copy c = {0};
    struct lb_watcher *w = watcher(loop, "/lb", &s), *next;

    assert_false(lb_watcher_export(w, &out, keep, &c)); /* nothing listed: nothing to hand */
    assert_int_equal(lb_watcher_seed(w, &view, view_keys, N_VIEW), (int)N_VIEW);
    assert_int_equal(s.commits, 1);
    assert_true(s.synced_at_commit);
    assert_int_equal(s.backends, 2);
    assert_int_equal(s.configs, 1);
    assert_int_equal(s.overrides, 1);
    assert_int_equal(lb_watcher_seed(w, &view, view_keys, N_VIEW), -EALREADY);
    assert_int_equal(s.commits, 1);

    /* the next process takes what this one exports: the same keys, the bad one too */
    assert_true(lb_watcher_export(w, &out, keep, &c));
    assert_int_equal(out.revision, 14);
    assert_int_equal(out.cluster_id, 77);
    assert_string_equal(out.prefix, "/lb/");
    assert_int_equal(c.n, N_VIEW);
    next = watcher(loop, "/lb/", &s2);
    assert_int_equal(lb_watcher_seed(next, &out, c.kv, c.n), (int)N_VIEW);
    assert_int_equal(s2.backends, 2);
    assert_int_equal(s2.overrides, 1);
    assert_true(s2.synced_at_commit);
    lb_watcher_free(next);
    lb_watcher_free(w);
    ev_loop_destroy(loop);
}

static void test_seed_of_another_prefix_takes_nothing(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct lb_watcher_view view = {.revision = 14, .prefix = "/lb/"};
    struct sink_log s;
    struct lb_watcher *w = watcher(loop, "/other/", &s);
    struct lb_watcher_stats st;

    assert_int_equal(lb_watcher_seed(w, &view, view_keys, N_VIEW), -EXDEV);
    assert_int_equal(s.commits + s.backends + s.configs + s.overrides, 0);
    assert_false(lb_watcher_has_synced(w));
    lb_watcher_get_stats(w, &st);
    assert_int_equal(st.keys, 0);
    lb_watcher_free(w);
    ev_loop_destroy(loop);
}

static void test_staleness_goes_on_from_the_previous_process(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct lb_watcher_view view = {.revision = 3, .stale_ms = 42000, .prefix = "/lb/"};
    struct sink_log s;
    struct lb_watcher *w = watcher(loop, "/lb/", &s);
    struct lb_watcher_stats st;

    ev_now_update(loop);
    assert_int_equal(lb_watcher_seed(w, &view, NULL, 0), 0);
    assert_int_equal(s.commits, 1);           /* an empty view is a view: lbd accepts */
    assert_int_equal(lb_watcher_start(w), 0); /* listing (nothing listens at :9) */
    lb_watcher_get_stats(w, &st);
    assert_true(st.synced);
    assert_int_equal(st.revision, 3);
    assert_in_range(st.staleness_ms, 42000, 45000);
    lb_watcher_free(w);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seed_then_export_gives_the_same_view),
        cmocka_unit_test(test_seed_of_another_prefix_takes_nothing),
        cmocka_unit_test(test_staleness_goes_on_from_the_previous_process),
    };
    int rc;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
