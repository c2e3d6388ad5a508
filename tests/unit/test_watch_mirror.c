/*
 * The mirror: a re-list delivers only the difference against what the sink
 * was told (adds, changes, deletes; nothing for unchanged keys), bad values
 * are refused once and never take a good value away, and a DELETE reaches
 * the sink only for keys it knows.  Keys that cannot be of the schema, or
 * whose value cannot be read, are skipped and counted by reason, never
 * stored; a flood of them writes a few log lines, not one per key.
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
#include <unistd.h>

#include "lb_log.h"
#include "lb_mirror.h"
#include "test_rng.h"

struct recorder {
    char log[16384]; /* "+backend web/b1 10.0.0.1:80 100;" ... */
    int applies;
};

static void record(void *ctx, const struct lb_update *u)
{
    struct recorder *r = ctx;
    size_t len = strlen(r->log);
    char *p = r->log + len;
    size_t left = sizeof(r->log) - len;

    r->applies++;
    switch (u->kind) {
    case LB_UPDATE_BACKEND_PUT:
        snprintf(p, left, "+backend %s/%s %s %d;", u->pool, u->id, u->u.backend.addr,
                 u->u.backend.weight);
        break;
    case LB_UPDATE_BACKEND_DELETE:
        snprintf(p, left, "-backend %s/%s;", u->pool, u->id);
        break;
    case LB_UPDATE_POLICY_PUT:
        assert_null(u->id);
        snprintf(p, left, "+policy %s %d;", u->pool, u->u.policy.retries);
        break;
    case LB_UPDATE_POLICY_DELETE:
        assert_null(u->id);
        snprintf(p, left, "-policy %s;", u->pool);
        break;
    case LB_UPDATE_OVERRIDE_PUT:
        snprintf(p, left, "+override %s/%s %d;", u->pool, u->id, u->u.override.drain);
        break;
    case LB_UPDATE_OVERRIDE_DELETE:
        snprintf(p, left, "-override %s/%s;", u->pool, u->id);
        break;
    }
}

static void no_commit(void *ctx)
{
    fail_msg("the mirror never commits");
}

struct fixture {
    struct recorder rec;
    struct lb_mirror *m;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct lb_update_sink sink = {record, no_commit, NULL};

    lb_log_set_level(LB_LOG_ERROR); /* the refusals below are expected */
    sink.ctx = &f->rec;
    assert_int_equal(lb_mirror_new("/lb/", &sink, &f->m), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    lb_mirror_free(f->m);
    free(f);
    lb_log_set_level(LB_LOG_INFO);
    return 0;
}

static int put(struct fixture *f, const char *key, const char *value, int64_t rev)
{
    return lb_mirror_put(f->m, key, strlen(key), value, strlen(value), rev);
}

static int del(struct fixture *f, const char *key)
{
    return lb_mirror_delete(f->m, key, strlen(key));
}

static void take_log(struct fixture *f, const char *expected)
{
    assert_string_equal(f->rec.log, expected);
    f->rec.log[0] = '\0';
    f->rec.applies = 0;
}

#define B1  "/lb/pools/web/backends/b1"
#define B2  "/lb/pools/web/backends/b2"
#define B3  "/lb/pools/web/backends/b3"
#define CFG "/lb/pools/web/config"
#define OV1 "/lb/pools/web/overrides/b1"

static void load_initial(struct fixture *f)
{
    lb_mirror_relist_begin(f->m);
    assert_int_equal(put(f, B1, "{\"addr\":\"10.0.0.1:80\"}", 2), 1);
    assert_int_equal(put(f, B2, "{\"addr\":\"10.0.0.2:80\"}", 3), 1);
    assert_int_equal(put(f, CFG, "{\"retries\":3}", 4), 1);
    assert_int_equal(put(f, OV1, "{\"drain\":true}", 5), 1);
    assert_int_equal(lb_mirror_relist_end(f->m), 0);
    take_log(f, "+backend web/b1 10.0.0.1:80 100;+backend web/b2 10.0.0.2:80 100;"
                "+policy web 3;+override web/b1 1;");
}

static void test_relist_diff(void **state)
{
    struct fixture *f = *state;
    struct lb_mirror_stats st;

    load_initial(f);
    /* meanwhile: b1 unchanged (even at a new revision, e.g. re-put by a new lease),
     * b2 changed, b3 added, config deleted, override unchanged */
    lb_mirror_relist_begin(f->m);
    assert_int_equal(put(f, B1, "{\"addr\":\"10.0.0.1:80\"}", 9), 0);
    assert_int_equal(put(f, B2, "{\"addr\":\"10.0.0.2:80\",\"weight\":5}", 10), 1);
    assert_int_equal(put(f, B3, "{\"addr\":\"10.0.0.3:80\"}", 11), 1);
    assert_int_equal(put(f, OV1, "{\"drain\":true}", 5), 0);
    assert_int_equal(lb_mirror_relist_end(f->m), 1);
    take_log(f, "+backend web/b2 10.0.0.2:80 5;+backend web/b3 10.0.0.3:80 100;-policy web;");
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.keys, 4);

    /* an identical re-list changes nothing */
    lb_mirror_relist_begin(f->m);
    put(f, B1, "{\"addr\":\"10.0.0.1:80\"}", 9);
    put(f, B2, "{\"addr\":\"10.0.0.2:80\",\"weight\":5}", 10);
    put(f, B3, "{\"addr\":\"10.0.0.3:80\"}", 11);
    put(f, OV1, "{\"drain\":true}", 5);
    assert_int_equal(lb_mirror_relist_end(f->m), 0);
    take_log(f, "");

    /* an empty listing deletes everything the sink knows */
    lb_mirror_relist_begin(f->m);
    assert_int_equal(lb_mirror_relist_end(f->m), 4);
    assert_int_equal(f->rec.applies, 4);
    assert_non_null(strstr(f->rec.log, "-backend web/b1;"));
    assert_non_null(strstr(f->rec.log, "-backend web/b2;"));
    assert_non_null(strstr(f->rec.log, "-backend web/b3;"));
    assert_non_null(strstr(f->rec.log, "-override web/b1;"));
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.keys, 0);
}

static void test_watch_events(void **state)
{
    struct fixture *f = *state;

    load_initial(f);
    assert_int_equal(put(f, B1, "{\"addr\":\"10.0.0.1:80\"}", 20), 0); /* same value */
    assert_int_equal(put(f, B1, "{\"addr\":\"10.0.0.9:80\"}", 21), 1);
    assert_int_equal(del(f, B2), 1);
    assert_int_equal(del(f, B2), 0); /* unknown now */
    assert_int_equal(del(f, "/lb/pools/web/backends/never"), 0);
    take_log(f, "+backend web/b1 10.0.0.9:80 100;-backend web/b2;");
}

static void test_bad_values(void **state)
{
    struct fixture *f = *state;
    struct lb_mirror_stats st;

    load_initial(f);
    /* a good key gets a bad value: the sink keeps the last good one */
    assert_int_equal(put(f, B1, "{\"addr\":\"oops\"}", 30), 0);
    take_log(f, "");
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.bad_values, 1);
    /* the same bad value again (a re-list) is not refused twice */
    lb_mirror_relist_begin(f->m);
    put(f, B1, "{\"addr\":\"oops\"}", 30);
    put(f, B2, "{\"addr\":\"10.0.0.2:80\"}", 3);
    put(f, CFG, "{\"retries\":3}", 4);
    put(f, OV1, "{\"drain\":true}", 5);
    assert_int_equal(lb_mirror_relist_end(f->m), 0);
    take_log(f, "");
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.bad_values, 1);
    /* fixed: delivered again */
    assert_int_equal(put(f, B1, "{\"addr\":\"10.0.0.1:81\"}", 31), 1);
    take_log(f, "+backend web/b1 10.0.0.1:81 100;");
    /* deleting a key whose value is bad but whose good value the sink holds */
    put(f, B1, "garbage", 32);
    assert_int_equal(del(f, B1), 1);
    take_log(f, "-backend web/b1;");
    /* a key that never had a good value: nothing delivered, nothing to delete */
    assert_int_equal(put(f, B3, "{}", 33), 0);
    assert_int_equal(del(f, B3), 0);
    take_log(f, "");
    /* a bad key name is skipped each time it is seen, never delivered, never stored */
    assert_int_equal(put(f, "/lb/pools/w b/backends/x", "{\"addr\":\"h:1\"}", 34), 0);
    assert_int_equal(put(f, "/lb/pools/w b/backends/x", "{\"addr\":\"h:1\"}", 35), 0);
    assert_int_equal(del(f, "/lb/pools/w b/backends/x"), 0);
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.bad_values, 3);
    assert_int_equal(st.skipped[LB_SKIP_BAD_VALUE], 3);
    assert_int_equal(st.skipped[LB_SKIP_BAD_KEY], 2);
    take_log(f, "");
}

static void test_outside_schema(void **state)
{
    struct fixture *f = *state;
    struct lb_mirror_stats st;

    /* keys under the prefix that do not fit the schema: skipped and counted, never kept */
    static const char *const junk[] = {
        "/lb/pools/web/notes",        "/lb/other", "/lb/pools/web",
        "/lb/pools/web/backends/",    /* empty id */
        "/lb/pools/web/backends/a/b", /* too deep */
        "/lb/pools/web/overrides/",   /* empty id */
        "/lb/pools//backends/x",      /* empty pool */
        "/lb/pools/web/backends/..",  /* a name that is not one */
        "/lb/pools/web/config/x",     /* too deep */
        "/lb/pools/w\x01b/config",    /* control character */
    };
    char long_id[200];

    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++)
        assert_int_equal(put(f, junk[i], "{\"addr\":\"h:1\"}", (int64_t)i + 2), 0);
    memset(long_id, 'i', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    {
        char key[300];

        snprintf(key, sizeof(key), "/lb/pools/web/backends/%s", long_id); /* id > 127 bytes */
        assert_int_equal(put(f, key, "{\"addr\":\"h:1\"}", 50), 0);
    }
    assert_int_equal(del(f, "/lb/pools/web/notes"), 0);
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.bad_values, 0);
    assert_int_equal(st.skipped[LB_SKIP_BAD_KEY], sizeof(junk) / sizeof(junk[0]) + 1);
    take_log(f, "");
}

static void test_apply_events(void **state)
{
    struct fixture *f = *state;
    struct lb_watch_event ev[2];
    struct lb_watch_msg msg;

    load_initial(f);
    memset(ev, 0, sizeof(ev));
    ev[0].deleted = true;
    ev[0].kv.key = B2;
    ev[0].kv.key_len = strlen(B2);
    ev[0].kv.value = "";
    ev[1].kv.key = B3;
    ev[1].kv.key_len = strlen(B3);
    ev[1].kv.value = "{\"addr\":\"10.0.0.3:80\",\"weight\":2}";
    ev[1].kv.value_len = strlen(ev[1].kv.value);
    ev[1].kv.mod_revision = 40;
    memset(&msg, 0, sizeof(msg));
    msg.events = ev;
    msg.n_events = 2;
    assert_int_equal(lb_mirror_apply_events(f->m, &msg), 2);
    take_log(f, "-backend web/b2;+backend web/b3 10.0.0.3:80 2;");
}

/* A flawed kv as lb_etcd_json_read_kv() leaves it. */
static struct lb_etcd_kv flawed(const char *key, enum lb_etcd_flaw flaw, bool whole, size_t size,
                                int64_t rev)
{
    struct lb_etcd_kv kv;

    memset(&kv, 0, sizeof(kv));
    kv.key = (char *)key;
    kv.key_len = strlen(key);
    kv.key_size = size ? size : kv.key_len;
    kv.value = "";
    kv.mod_revision = rev;
    kv.flaw = flaw;
    kv.key_whole = whole;
    kv.flaw_why = "test";
    return kv;
}

/*
 * A schema key whose value could not be read (too large, malformed) is a
 * bad value: the sink keeps the last good one, a re-list does not delete
 * it nor count it again, a good value later is delivered.  A key that
 * could not be read is skipped and never stored.
 */
static void test_flawed_kvs(void **state)
{
    struct fixture *f = *state;
    struct lb_mirror_stats st;
    struct lb_etcd_kv kv;

    load_initial(f);
    kv = flawed(B1, LB_ETCD_FLAW_VALUE_TOO_LARGE, true, 0, 30);
    assert_int_equal(lb_mirror_put_kv(f->m, &kv), 0);
    take_log(f, "");
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.skipped[LB_SKIP_VALUE_TOO_LARGE], 1);
    assert_int_equal(st.keys, 4);
    /* the same entry in a re-list: kept, not deleted, not counted again */
    lb_mirror_relist_begin(f->m);
    assert_int_equal(lb_mirror_put_kv(f->m, &kv), 0);
    put(f, B2, "{\"addr\":\"10.0.0.2:80\"}", 3);
    put(f, CFG, "{\"retries\":3}", 4);
    put(f, OV1, "{\"drain\":true}", 5);
    assert_int_equal(lb_mirror_relist_end(f->m), 0);
    take_log(f, "");
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.skipped[LB_SKIP_VALUE_TOO_LARGE], 1);
    /* a good value again: delivered */
    assert_int_equal(put(f, B1, "{\"addr\":\"10.0.0.1:80\"}", 31), 1);
    take_log(f, "+backend web/b1 10.0.0.1:80 100;");
    /* a malformed value with its key whole: the same */
    kv = flawed(B2, LB_ETCD_FLAW_MALFORMED, true, 0, 32);
    assert_int_equal(lb_mirror_put_kv(f->m, &kv), 0);
    take_log(f, "");
    /* on a new key: nothing delivered, nothing to delete later */
    kv = flawed(B3, LB_ETCD_FLAW_VALUE_TOO_LARGE, true, 0, 33);
    assert_int_equal(lb_mirror_put_kv(f->m, &kv), 0);
    assert_int_equal(del(f, B3), 0);
    take_log(f, "");
    /* keys that could not be read: skipped, counted, never stored */
    kv = flawed("/lb/pools/other/aaaa", LB_ETCD_FLAW_KEY_TOO_LONG, false, 5000, 34);
    assert_int_equal(lb_mirror_put_kv(f->m, &kv), 0);
    assert_false(lb_mirror_screen(f->m, &kv));
    kv = flawed("", LB_ETCD_FLAW_MALFORMED, false, 0, 35);
    assert_int_equal(lb_mirror_put_kv(f->m, &kv), 0);
    assert_false(lb_mirror_screen(f->m, &kv));
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.skipped[LB_SKIP_KEY_TOO_LONG], 2);
    assert_int_equal(st.skipped[LB_SKIP_MALFORMED], 3);
    assert_int_equal(st.keys, 4);
    /* screening: schema keys pass (bad value or not), junk is counted there */
    kv = flawed(B3, LB_ETCD_FLAW_VALUE_TOO_LARGE, true, 0, 36);
    assert_true(lb_mirror_screen(f->m, &kv));
    kv = flawed("/lb/pools/web/backends/a/b", LB_ETCD_FLAW_NONE, false, 0, 37);
    assert_false(lb_mirror_screen(f->m, &kv));
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.skipped[LB_SKIP_BAD_KEY], 1);
    take_log(f, "");
}

/* lb_mirror_each() into "key=value@rev;" text, sorted by key. */
struct exported {
    char lines[8][256];
    int n;
};

static void export_one(void *ctx, const struct lb_watcher_kv *kv)
{
    struct exported *x = ctx;

    assert_true(x->n < 8);
    snprintf(x->lines[x->n++], sizeof(x->lines[0]), "%.*s=%.*s@%lld;", (int)kv->key_len, kv->key,
             (int)kv->value_len, kv->value, (long long)kv->mod_revision);
}

/* Feeds an exported key to another fixture's mirror, as a listing would. */
static void feed(void *ctx, const struct lb_watcher_kv *kv)
{
    struct fixture *g = ctx;

    assert_true(
        lb_mirror_put(g->m, kv->key, kv->key_len, kv->value, kv->value_len, kv->mod_revision) >= 0);
}

static int line_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void export_text(struct fixture *f, char *out, size_t size)
{
    struct exported x = {.n = 0};

    lb_mirror_each(f->m, export_one, &x);
    qsort(x.lines, (size_t)x.n, sizeof(x.lines[0]), line_cmp);
    out[0] = '\0';
    for (int i = 0; i < x.n; i++)
        strncat(out, x.lines[i], size - strlen(out) - 1);
}

/*
 * What is exported (the state file, an upgrade's view) is what the sink
 * serves: a key whose value turned bad or unreadable is exported with its
 * last good value and that value's revision, until a good one replaces it;
 * a key that never had a good value is exported as last seen (bad), and
 * one never read not at all.  Fed to another mirror, the export delivers
 * exactly what this one's sink holds.
 */
static void test_export_is_what_the_sink_serves(void **state)
{
    struct fixture *f = *state, *g;
    struct lb_mirror_stats st;
    struct lb_etcd_kv kv;
    char text[2048];

    load_initial(f);
    kv = flawed(B1, LB_ETCD_FLAW_VALUE_TOO_LARGE, true, 0, 30);
    assert_int_equal(lb_mirror_put_kv(f->m, &kv), 0);
    assert_int_equal(put(f, B2, "{\"addr\":\"nowhere\"}", 31), 0);
    assert_int_equal(put(f, B2, "{\"addr\":", 32), 0); /* bad again: still the good one kept */
    assert_int_equal(put(f, CFG, "{", 33), 0);
    kv = flawed(OV1, LB_ETCD_FLAW_MALFORMED, true, 0, 34);
    assert_int_equal(lb_mirror_put_kv(f->m, &kv), 0);
    assert_int_equal(put(f, B3, "{\"addr\":", 35), 0); /* never good */
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.bad_keys_last_good, 4);
    assert_int_equal(st.bad_keys_never_good, 1);
    take_log(f, "");
    export_text(f, text, sizeof(text));
    assert_string_equal(text,
                        B1 "={\"addr\":\"10.0.0.1:80\"}@2;" B2 "={\"addr\":\"10.0.0.2:80\"}@3;" B3
                           "={\"addr\":@35;" CFG "={\"retries\":3}@4;" OV1 "={\"drain\":true}@5;");

    /* another mirror fed the export serves the same */
    assert_int_equal(setup((void **)&g), 0);
    lb_mirror_relist_begin(g->m);
    lb_mirror_each(f->m, feed, g);
    assert_int_equal(lb_mirror_relist_end(g->m), 0);
    assert_int_equal(g->rec.applies, 4); /* in no particular order */
    assert_non_null(strstr(g->rec.log, "+backend web/b1 10.0.0.1:80 100;"));
    assert_non_null(strstr(g->rec.log, "+backend web/b2 10.0.0.2:80 100;"));
    assert_non_null(strstr(g->rec.log, "+policy web 3;"));
    assert_non_null(strstr(g->rec.log, "+override web/b1 1;"));
    teardown((void **)&g);

    /* good values again: exported as they are */
    assert_int_equal(put(f, B1, "{\"addr\":\"10.0.0.9:80\"}", 40), 1);
    assert_int_equal(put(f, B2, "{\"addr\":\"10.0.0.2:80\"}", 41), 1);
    take_log(f, "+backend web/b1 10.0.0.9:80 100;+backend web/b2 10.0.0.2:80 100;");
    export_text(f, text, sizeof(text));
    assert_string_equal(text,
                        B1 "={\"addr\":\"10.0.0.9:80\"}@40;" B2 "={\"addr\":\"10.0.0.2:80\"}@41;" B3
                           "={\"addr\":@35;" CFG "={\"retries\":3}@4;" OV1 "={\"drain\":true}@5;");
    /* deleted: gone from the export too */
    assert_int_equal(del(f, CFG), 1);
    take_log(f, "-policy web;");
    export_text(f, text, sizeof(text));
    assert_null(strstr(text, CFG));
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.bad_keys_last_good, 1); /* OV1 */
    assert_int_equal(st.bad_keys_never_good, 1);
    assert_int_equal(del(f, B3), 0);
    assert_int_equal(put(f, OV1, "{\"drain\":false}", 50), 1);
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.bad_keys_last_good + st.bad_keys_never_good, 0);
}

/*
 * The state space: a seeded random run of puts (good, invalid, unreadable),
 * deletes, events the mirror never hears of and re-lists, over a few keys
 * of each kind.  After every step: the sink holds, for each key, the last
 * good value the mirror was told since the key last went away; an export
 * fed to a fresh mirror makes its sink hold exactly the same; the bad-key
 * gauges count what is bad now.  LB_TEST_SEED=N replays a run.
 */
#define SS_KEYS 6
static const char *const ss_keys[SS_KEYS] = {B1, B2, B3, CFG, OV1, "/lb/pools/db/backends/x"};

enum ss_kind { SS_ABSENT, SS_GOOD, SS_BAD, SS_UNREAD };

struct ss_value {
    enum ss_kind kind;
    int n; /* distinguishes good values */
    int64_t rev;
};

/* A sink keeping what it holds per key, as text. */
struct ss_sink {
    char held[SS_KEYS][64];
};

static int ss_index(const char *pool, const char *id, enum lb_update_kind kind)
{
    char key[128];

    if (kind == LB_UPDATE_POLICY_PUT || kind == LB_UPDATE_POLICY_DELETE)
        snprintf(key, sizeof(key), "/lb/pools/%s/config", pool);
    else if (kind == LB_UPDATE_OVERRIDE_PUT || kind == LB_UPDATE_OVERRIDE_DELETE)
        snprintf(key, sizeof(key), "/lb/pools/%s/overrides/%s", pool, id);
    else
        snprintf(key, sizeof(key), "/lb/pools/%s/backends/%s", pool, id);
    for (int i = 0; i < SS_KEYS; i++)
        if (strcmp(ss_keys[i], key) == 0)
            return i;
    fail_msg("update for a key never put: %s", key);
    return -1;
}

static void ss_apply(void *ctx, const struct lb_update *u)
{
    struct ss_sink *k = ctx;
    char *held = k->held[ss_index(u->pool, u->id, u->kind)];

    switch (u->kind) {
    case LB_UPDATE_BACKEND_PUT:
        snprintf(held, 64, "w%d", u->u.backend.weight);
        break;
    case LB_UPDATE_POLICY_PUT:
        snprintf(held, 64, "r%d", u->u.policy.retries);
        break;
    case LB_UPDATE_OVERRIDE_PUT:
        snprintf(held, 64, "o%d", u->u.override.weight);
        break;
    default:
        held[0] = '\0';
    }
}

/* The value text of key i: good ones carry n where the sink shows it. */
static void ss_text(int i, const struct ss_value *v, char *out, size_t size)
{
    if (v->kind == SS_BAD)
        snprintf(out, size, "%s",
                 i == 3   ? "{\"retries\":\"many\"}"
                 : i == 4 ? "{\"weight\":\"heavy\"}"
                          : "{\"addr\":\"nowhere\"}");
    else if (i == 3)
        snprintf(out, size, "{\"retries\":%d}", v->n % 10);
    else if (i == 4)
        snprintf(out, size, "{\"weight\":%d}", v->n);
    else
        snprintf(out, size, "{\"addr\":\"10.0.0.1:80\",\"weight\":%d}", v->n);
}

static void ss_expected(int i, const struct ss_value *v, char *out, size_t size)
{
    snprintf(out, size, "%c%d", i == 3 ? 'r' : i == 4 ? 'o' : 'w', i == 3 ? v->n % 10 : v->n);
}

/* Tells m that key i now holds v (a watch event, or an entry of a listing). */
static void ss_tell(struct lb_mirror *m, int i, const struct ss_value *v)
{
    char text[128];

    if (v->kind == SS_ABSENT) {
        assert_true(lb_mirror_delete(m, ss_keys[i], strlen(ss_keys[i])) >= 0);
    } else if (v->kind == SS_UNREAD) {
        struct lb_etcd_kv kv = flawed(ss_keys[i], LB_ETCD_FLAW_VALUE_TOO_LARGE, true, 0, v->rev);

        assert_true(lb_mirror_put_kv(m, &kv) >= 0);
    } else {
        ss_text(i, v, text, sizeof(text));
        assert_true(lb_mirror_put(m, ss_keys[i], strlen(ss_keys[i]), text, strlen(text), v->rev) >=
                    0);
    }
}

static void ss_feed(void *ctx, const struct lb_watcher_kv *kv)
{
    assert_true(
        lb_mirror_put(ctx, kv->key, kv->key_len, kv->value, kv->value_len, kv->mod_revision) >= 0);
}

static void test_state_space_of_good_and_bad_values(void **state)
{
    const char *env = getenv("LB_TEST_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : 20261201, rng = seed ? seed : 1;
    struct ss_value etcd[SS_KEYS] = {{0}}, told[SS_KEYS] = {{0}};
    char good[SS_KEYS][64] = {{0}}; /* the last good value the mirror was told */
    struct ss_sink held = {{{0}}};
    struct lb_update_sink sink = {ss_apply, no_commit, &held};
    struct lb_mirror *m;
    int64_t rev = 1;

    (void)state;
    lb_log_set_level(LB_LOG_ERROR);
    assert_int_equal(lb_mirror_new("/lb/", &sink, &m), 0);
    for (int step = 0; step < 20000; step++) {
        int i = (int)(test_rng_next(&rng) % SS_KEYS), op = (int)(test_rng_next(&rng) % 100);
        struct ss_value v = {SS_ABSENT, (int)(test_rng_next(&rng) % 900) + 1, ++rev};
        size_t bad_last_good = 0, bad_never_good = 0;
        struct lb_mirror_stats st;

        if (op < 85) { /* a change in etcd; now and then the watch misses it */
            v.kind = op < 35 ? SS_GOOD : op < 55 ? SS_BAD : op < 70 ? SS_UNREAD : SS_ABSENT;
            etcd[i] = v;
            if (op % 7 != 0) {
                told[i] = v;
                ss_tell(m, i, &v);
            }
        } else { /* a listing: every key etcd holds, then the sweep */
            lb_mirror_relist_begin(m);
            for (int k = 0; k < SS_KEYS; k++) {
                told[k] = etcd[k];
                if (etcd[k].kind != SS_ABSENT)
                    ss_tell(m, k, &etcd[k]);
            }
            assert_true(lb_mirror_relist_end(m) >= 0);
        }
        for (int k = 0; k < SS_KEYS; k++) {
            if (told[k].kind == SS_ABSENT)
                good[k][0] = '\0';
            else if (told[k].kind == SS_GOOD)
                ss_expected(k, &told[k], good[k], sizeof(good[k]));
            if (told[k].kind == SS_BAD || told[k].kind == SS_UNREAD)
                (*good[k] ? &bad_last_good : &bad_never_good)[0]++;
            if (strcmp(held.held[k], good[k]) != 0)
                fail_msg("seed %llu step %d: %s held \"%s\", expected \"%s\"",
                         (unsigned long long)seed, step, ss_keys[k], held.held[k], good[k]);
        }
        lb_mirror_get_stats(m, &st);
        if (st.bad_keys_last_good != bad_last_good || st.bad_keys_never_good != bad_never_good)
            fail_msg("seed %llu step %d: bad keys %zu/%zu, expected %zu/%zu",
                     (unsigned long long)seed, step, st.bad_keys_last_good, st.bad_keys_never_good,
                     bad_last_good, bad_never_good);
        if (step % 50 == 0) { /* the export serves the same in a fresh mirror */
            struct ss_sink held2 = {{{0}}};
            struct lb_update_sink sink2 = {ss_apply, no_commit, &held2};
            struct lb_mirror *m2;

            assert_int_equal(lb_mirror_new("/lb/", &sink2, &m2), 0);
            lb_mirror_relist_begin(m2);
            lb_mirror_each(m, ss_feed, m2);
            assert_true(lb_mirror_relist_end(m2) >= 0);
            for (int k = 0; k < SS_KEYS; k++)
                if (strcmp(held2.held[k], held.held[k]) != 0)
                    fail_msg("seed %llu step %d: exported %s serves \"%s\", this one \"%s\"",
                             (unsigned long long)seed, step, ss_keys[k], held2.held[k],
                             held.held[k]);
            lb_mirror_free(m2);
        }
    }
    lb_mirror_free(m);
    lb_log_set_level(LB_LOG_INFO);
}

/* One watch response with bad events among good ones: the good ones apply. */
static void test_apply_events_skips_bad_ones(void **state)
{
    struct fixture *f = *state;
    struct lb_watch_event ev[5];
    struct lb_watch_msg msg;
    struct lb_mirror_stats st;

    load_initial(f);
    memset(ev, 0, sizeof(ev));
    memset(&msg, 0, sizeof(msg));
    ev[0].kv = flawed("/lb/pools/other/xxxx", LB_ETCD_FLAW_KEY_TOO_LONG, false, 5000, 40);
    ev[1].kv.key = B3;
    ev[1].kv.key_len = strlen(B3);
    ev[1].kv.value = "{\"addr\":\"10.0.0.3:80\"}";
    ev[1].kv.value_len = strlen(ev[1].kv.value);
    ev[1].kv.mod_revision = 40;
    ev[2].kv = flawed(B1, LB_ETCD_FLAW_VALUE_TOO_LARGE, true, 0, 40);
    ev[3].kv = flawed(B2, LB_ETCD_FLAW_MALFORMED, true, 0, 40);
    ev[3].deleted = true; /* a delete lbd cannot read: skipped, b2 stays */
    ev[4].deleted = true;
    ev[4].kv.key = OV1;
    ev[4].kv.key_len = strlen(OV1);
    ev[4].kv.value = "";
    msg.events = ev;
    msg.n_events = 5;
    assert_int_equal(lb_mirror_apply_events(f->m, &msg), 2);
    take_log(f, "+backend web/b3 10.0.0.3:80 100;-override web/b1;");
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.skipped[LB_SKIP_KEY_TOO_LONG], 1);
    assert_int_equal(st.skipped[LB_SKIP_VALUE_TOO_LARGE], 1);
    assert_int_equal(st.skipped[LB_SKIP_MALFORMED], 1);
}

/* Junk keys never take places in the table: 20,000 of them leave room for real ones. */
static void test_junk_never_fills_the_table(void **state)
{
    struct fixture *f = *state;
    struct lb_mirror_stats st;
    char key[128];

    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "/lb/pools/other/junk-%d/x", i);
        assert_int_equal(put(f, key, "x", i + 2), 0);
    }
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.skipped[LB_SKIP_BAD_KEY], 20000);
    assert_int_equal(put(f, B1, "{\"addr\":\"10.0.0.1:80\"}", 30000), 1);
    take_log(f, "+backend web/b1 10.0.0.1:80 100;");
}

/* Clamped fields are delivered clamped, and counted. */
static void test_clamped_values_delivered(void **state)
{
    struct fixture *f = *state;
    struct lb_mirror_stats st;

    assert_int_equal(put(f, CFG, "{\"retries\":99,\"health\":{\"interval\":\"1ms\"}}", 2), 1);
    take_log(f, "+policy web 10;");
    assert_int_equal(put(f, B1, "{\"addr\":\"10.0.0.1:80\",\"weight\":5000}", 3), 1);
    take_log(f, "+backend web/b1 10.0.0.1:80 1000;");
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.clamped, 3);
    assert_int_equal(st.bad_values, 0);
}

/* --- log lines under a flood ------------------------------------------------------------ */

static double fake_now;

static double fake_clock(void)
{
    return fake_now;
}

/* Runs fn with stderr going to a file; returns what it wrote (malloc'd). */
static char *capture_stderr(void (*fn)(void *), void *arg)
{
    FILE *tmp = tmpfile();
    int saved = dup(2);
    char *text;
    long n;

    assert_non_null(tmp);
    assert_true(saved >= 0);
    fflush(stderr);
    assert_true(dup2(fileno(tmp), 2) >= 0);
    fn(arg);
    fflush(stderr);
    assert_true(dup2(saved, 2) >= 0);
    close(saved);
    n = (long)lseek(fileno(tmp), 0, SEEK_END);
    assert_true(n >= 0);
    text = calloc(1, (size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(pread(fileno(tmp), text, (size_t)n, 0), n);
    fclose(tmp);
    return text;
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;

    for (const char *p = text; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

static void flood(void *arg)
{
    struct fixture *f = arg;
    char key[128];

    lb_log_set_level(LB_LOG_INFO);
    /* 1,000 bad keys at once, then one a second for 3 seconds */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "/lb/pools/other/junk-%d/x", i);
        put(f, key, "x", i + 2);
    }
    assert_true(lb_mirror_flush_log(f->m) > 0); /* lines held back, a flush due */
    for (int s = 1; s <= 3; s++) {
        fake_now += 1.0;
        assert_true(lb_mirror_flush_log(f->m) < 0); /* the count of those held back */
        snprintf(key, sizeof(key), "/lb/pools/other/late-%d/x", s);
        put(f, key, "x", 2000 + s);
    }
    lb_log_set_level(LB_LOG_ERROR);
}

static void test_flood_of_bad_keys_logs_a_few_lines(void **state)
{
    struct fixture *f = *state;
    char *text;

    fake_now = 100.0;
    lb_mirror_set_clock(f->m, fake_clock);
    text = capture_stderr(flood, f);
    /*
     * a burst of LB_SKIP_LOG_BURST lines, then one a second: the summary of
     * the 995 left out, then each late key's line held back and summed up
     * by the next second's line (the last one is still held)
     */
    assert_int_equal(count_of(text, "reason=bad_key"), LB_SKIP_LOG_BURST + 3);
    assert_int_equal(count_of(text, "suppressed=1 last_key="), 2);
    assert_non_null(strstr(text, "msg=\"etcd keys skipped, log lines suppressed\" reason=bad_key "
                                 "suppressed=995 last_key=\"/lb/pools/other/junk-999/x\""));
    assert_non_null(strstr(text, "key=\"/lb/pools/other/junk-0/x\""));
    free(text);
}

static void test_many_keys(void **state)
{
    struct fixture *f = *state;
    struct lb_mirror_stats st;
    char key[64], value[64];

    /* enough keys to make the table grow several times */
    lb_mirror_relist_begin(f->m);
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof(key), "/lb/pools/p%d/backends/b%d", i % 7, i);
        snprintf(value, sizeof(value), "{\"addr\":\"10.0.%d.%d:80\"}", i / 250, i % 250 + 1);
        assert_int_equal(put(f, key, value, i + 2), 1);
        f->rec.log[0] = '\0';
    }
    assert_int_equal(lb_mirror_relist_end(f->m), 0);
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.keys, 10000);
    /* re-list keeping the even ones: 5000 deletes */
    f->rec.applies = 0;
    lb_mirror_relist_begin(f->m);
    for (int i = 0; i < 10000; i += 2) {
        snprintf(key, sizeof(key), "/lb/pools/p%d/backends/b%d", i % 7, i);
        snprintf(value, sizeof(value), "{\"addr\":\"10.0.%d.%d:80\"}", i / 250, i % 250 + 1);
        assert_int_equal(put(f, key, value, i + 2), 0);
    }
    assert_int_equal(lb_mirror_relist_end(f->m), 5000);
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.keys, 5000);
    assert_int_equal(st.updates, 15000);
    f->rec.log[0] = '\0';
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_relist_diff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outside_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flawed_kvs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_is_what_the_sink_serves, setup, teardown),
        cmocka_unit_test(test_state_space_of_good_and_bad_values),
        cmocka_unit_test_setup_teardown(test_apply_events_skips_bad_ones, setup, teardown),
        cmocka_unit_test_setup_teardown(test_junk_never_fills_the_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clamped_values_delivered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_of_bad_keys_logs_a_few_lines, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
