/*
 * The mirror: a re-list delivers only the difference against what the sink
 * was told (adds, changes, deletes; nothing for unchanged keys), bad values
 * are refused once and never take a good value away, and a DELETE reaches
 * the sink only for keys it knows.
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

#include "lb_log.h"
#include "lb_mirror.h"

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
    /* a bad key name is refused once, and never delivered */
    assert_int_equal(put(f, "/lb/pools/w b/backends/x", "{\"addr\":\"h:1\"}", 34), 0);
    assert_int_equal(put(f, "/lb/pools/w b/backends/x", "{\"addr\":\"h:1\"}", 35), 0);
    assert_int_equal(del(f, "/lb/pools/w b/backends/x"), 0);
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.bad_values, 4);
    take_log(f, "");
}

static void test_outside_schema(void **state)
{
    struct fixture *f = *state;
    struct lb_mirror_stats st;

    assert_int_equal(put(f, "/lb/pools/web/notes", "hello", 2), 0);
    assert_int_equal(put(f, "/lb/other", "{}", 3), 0);
    assert_int_equal(del(f, "/lb/pools/web/notes"), 0);
    lb_mirror_get_stats(f->m, &st);
    assert_int_equal(st.keys, 0);
    assert_int_equal(st.bad_values, 0);
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
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
