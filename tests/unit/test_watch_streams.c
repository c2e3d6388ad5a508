/*
 * Data-driven watch tests: each tests/data/watch/NAME.stream is a watch
 * response body (lifecycle, compacted and bad_keys were captured from etcd 3.4.23;
 * fragment and garbage were written in the same format), and NAME.expected
 * is the transcript it must produce when it goes through the splitter, the
 * decoder and the mirror exactly as in the watcher:
 *
 *   msg created | msg progress | msg events=N | msg canceled compact_revision=R
 *       followed by " resume=R" when the message moves the resume revision
 *   <update lines>      one per update delivered to the sink
 *   commit              after a message that delivered updates
 *   skipped REASON N    keys the mirror skipped, by reason (lb_skip.h)
 *   clamped N           value fields clamped into their range
 *   error <text>        a line that did not decode
 *
 * Each stream is fed whole, in 7-byte slices and byte by byte; all three
 * must give the same transcript.  LB_TEST_UPDATE=1 rewrites the .expected
 * files from the current output (review the diff before committing).
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb_buf.h"
#include "lb_mirror.h"
#include "lb_watch_decode.h"

struct run {
    struct lb_buf out;
    struct lb_mirror *mirror;
    struct lb_watch_decoder dec;
    int updates;
};

static void out_printf(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void out_printf(struct run *r, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(line));
    assert_int_equal(lb_buf_append(&r->out, line, (size_t)n), 0);
}

static const char *health_name(enum lb_health_override h)
{
    return h == LB_HEALTH_FORCE_UP ? "up" : h == LB_HEALTH_FORCE_DOWN ? "down" : "auto";
}

static void record_apply(void *ctx, const struct lb_update *u)
{
    static const char *const algos[] = {"wrr", "leastconn", "p2c", "maglev"};
    static const char *const checks[] = {"tcp", "http", "none"};
    static const char *const proxies[] = {"none", "v1", "v2"};
    struct run *r = ctx;
    const struct lb_pool_policy *p = &u->u.policy;

    r->updates++;
    switch (u->kind) {
    case LB_UPDATE_BACKEND_PUT:
        out_printf(r, "backend put %s/%s addr=%s weight=%d zone=%s\n", u->pool, u->id,
                   u->u.backend.addr, u->u.backend.weight, u->u.backend.zone);
        break;
    case LB_UPDATE_BACKEND_DELETE:
        out_printf(r, "backend delete %s/%s\n", u->pool, u->id);
        break;
    case LB_UPDATE_POLICY_PUT:
        out_printf(r,
                   "policy put %s algorithm=%s health=%s,%s,%lld,%lld,%d,%d connect=%lld "
                   "idle=%lld retries=%d max_conns=%d slow_start=%lld drain=%lld proxy=%s "
                   "panic=%d\n",
                   u->pool, algos[p->algorithm], checks[p->health.type], p->health.path,
                   (long long)p->health.interval_ms, (long long)p->health.timeout_ms,
                   p->health.rise, p->health.fall, (long long)p->connect_timeout_ms,
                   (long long)p->idle_timeout_ms, p->retries, p->max_conns,
                   (long long)p->slow_start_ms, (long long)p->drain_timeout_ms,
                   proxies[p->proxy_protocol], p->panic_threshold);
        break;
    case LB_UPDATE_POLICY_DELETE:
        out_printf(r, "policy delete %s\n", u->pool);
        break;
    case LB_UPDATE_OVERRIDE_PUT:
        if (u->u.override.has_weight)
            out_printf(r, "override put %s/%s drain=%d weight=%d health=%s\n", u->pool, u->id,
                       u->u.override.drain, u->u.override.weight,
                       health_name(u->u.override.health));
        else
            out_printf(r, "override put %s/%s drain=%d weight=- health=%s\n", u->pool, u->id,
                       u->u.override.drain, health_name(u->u.override.health));
        break;
    case LB_UPDATE_OVERRIDE_DELETE:
        out_printf(r, "override delete %s/%s\n", u->pool, u->id);
        break;
    }
}

static void record_commit(void *ctx)
{
    out_printf(ctx, "commit\n");
}

static void handle_msg(struct run *r, const struct lb_watch_msg *msg)
{
    struct lb_mirror_stats before, after;
    int64_t resume = lb_watch_msg_resume_revision(msg);
    int n;

    if (msg->canceled)
        out_printf(r, "msg canceled compact_revision=%lld", (long long)msg->compact_revision);
    else if (msg->created)
        out_printf(r, "msg created");
    else if (msg->progress)
        out_printf(r, "msg progress");
    else
        out_printf(r, "msg events=%zu", msg->n_events);
    if (resume)
        out_printf(r, " resume=%lld", (long long)resume);
    out_printf(r, "\n");
    lb_mirror_get_stats(r->mirror, &before);
    r->updates = 0;
    n = lb_mirror_apply_events(r->mirror, msg);
    assert_true(n >= 0);
    assert_int_equal(n, r->updates);
    if (n > 0)
        record_commit(r);
    lb_mirror_get_stats(r->mirror, &after);
    for (int i = 0; i < LB_SKIP_REASONS; i++)
        if (after.skipped[i] != before.skipped[i])
            out_printf(r, "skipped %s %llu\n", lb_skip_reason_name(i),
                       (unsigned long long)(after.skipped[i] - before.skipped[i]));
    if (after.clamped != before.clamped)
        out_printf(r, "clamped %llu\n", (unsigned long long)(after.clamped - before.clamped));
}

static int on_line(void *ud, const char *line, size_t len, int status)
{
    struct run *r = ud;
    const struct lb_watch_msg *msg;
    char *err = NULL;
    int rc;

    if (status < 0) {
        out_printf(r, "error line too long\n");
        return 0;
    }
    rc = lb_watch_decoder_line(&r->dec, line, len, &msg, &err);
    if (rc < 0)
        out_printf(r, "error %s\n", err ? err : "(no message)");
    else if (rc == 1)
        handle_msg(r, msg);
    free(err);
    return 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Runs one stream in slices of `slice` bytes; returns the malloc'd transcript. */
static char *transcript(const char *stream, size_t len, size_t slice)
{
    static const struct lb_update_sink sink_template = {record_apply, record_commit, NULL};
    struct lb_update_sink sink = sink_template;
    struct lb_watch_lines lines;
    struct run r;
    char *text;

    memset(&r, 0, sizeof(r));
    lb_buf_init(&r.out, 1 << 20);
    sink.ctx = &r;
    assert_int_equal(lb_mirror_new("/lb/", &sink, &r.mirror), 0);
    lb_watch_decoder_init(&r.dec);
    lb_watch_lines_init(&lines, LB_WATCH_LINE_MAX);
    for (size_t off = 0; off < len; off += slice) {
        size_t n = len - off < slice ? len - off : slice;

        assert_int_equal(lb_watch_lines_feed(&lines, stream + off, n, on_line, &r), 0);
    }
    lb_watch_lines_free(&lines);
    lb_watch_decoder_free(&r.dec);
    lb_mirror_free(r.mirror);
    text = strdup(r.out.data ? r.out.data : "");
    lb_buf_free(&r.out);
    return text;
}

static void check_stream(const char *name)
{
    char path[1024];
    size_t len, expected_len;
    char *stream, *expected, *whole, *sliced, *bytes;

    snprintf(path, sizeof(path), "%s/%s.stream", LB_TEST_DATA_DIR, name);
    stream = read_file(path, &len);
    assert_non_null(stream);
    whole = transcript(stream, len, len ? len : 1);
    sliced = transcript(stream, len, 7);
    bytes = transcript(stream, len, 1);
    assert_string_equal(sliced, whole);
    assert_string_equal(bytes, whole);

    snprintf(path, sizeof(path), "%s/%s.expected", LB_TEST_DATA_DIR, name);
    if (getenv("LB_TEST_UPDATE")) {
        FILE *f = fopen(path, "w");

        assert_non_null(f);
        fputs(whole, f);
        fclose(f);
    }
    expected = read_file(path, &expected_len);
    if (!expected)
        fail_msg("%s is missing", path);
    if (strcmp(expected, whole) != 0)
        fail_msg("%s: transcript differs.\n--- expected\n%s--- got\n%s", name, expected, whole);
    free(expected);
    free(whole);
    free(sliced);
    free(bytes);
    free(stream);
}

static void test_lifecycle(void **state)
{
    check_stream("lifecycle");
}

static void test_compacted(void **state)
{
    check_stream("compacted");
}

static void test_fragment(void **state)
{
    check_stream("fragment");
}

static void test_garbage(void **state)
{
    check_stream("garbage");
}

/*
 * Captured from etcd 3.4.23: a 5,000-byte key, a backend value over
 * LB_VALUE_MAX, a key too deep, a policy with an interval below its
 * floor, and one transaction holding a long key, a good backend and a
 * large value for a backend lbd serves.  Each bad one is skipped and
 * counted, the good ones of the same response apply.
 */
static void test_bad_keys(void **state)
{
    check_stream("bad_keys");
}

/* Every .stream in the data directory has a test above. */
static void test_all_streams_listed(void **state)
{
    static const char *const known[] = {"lifecycle.stream", "compacted.stream", "fragment.stream",
                                        "garbage.stream", "bad_keys.stream"};
    DIR *d = opendir(LB_TEST_DATA_DIR);
    struct dirent *e;

    assert_non_null(d);
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        bool listed = false;

        if (n < 7 || strcmp(e->d_name + n - 7, ".stream") != 0)
            continue;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            listed = listed || strcmp(known[i], e->d_name) == 0;
        if (!listed)
            fail_msg("%s has no test", e->d_name);
    }
    closedir(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle), cmocka_unit_test(test_compacted),
        cmocka_unit_test(test_fragment),  cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_bad_keys),  cmocka_unit_test(test_all_streams_listed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
