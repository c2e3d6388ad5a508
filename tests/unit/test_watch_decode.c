/*
 * The watch stream decoder on its own: the line splitter under every way
 * of slicing a stream, each message shape etcd 3.4 sends (as observed:
 * PUT without "type", DELETE with only key and mod_revision, lease expiry,
 * progress, compaction cancel after created, fragments), and bad input,
 * after which the decoder must go on decoding.  Bad events (keys too long,
 * values too large, anything malformed) are flagged, never fatal to the
 * events around them.
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

#include "lb_value.h"
#include "lb_watch_decode.h"

/* Watch lines as the gateway writes them (keys: /lb/pools/web/backends/b1 and b2). */
#define KEY_B1 "L2xiL3Bvb2xzL3dlYi9iYWNrZW5kcy9iMQ=="
#define KEY_B2 "L2xiL3Bvb2xzL3dlYi9iYWNrZW5kcy9iMg=="
#define HDR(rev)                                                                                   \
    "\"header\":{\"cluster_id\":\"14841639068965178418\",\"member_id\":\"10276657743932975437\","  \
    "\"revision\":\"" rev "\",\"raft_term\":\"2\"}"

static const char LINE_CREATED[] = "{\"result\":{" HDR("7") ",\"created\":true}}";
/* value {"addr":"10.0.0.5:8080"} */
static const char LINE_PUT[] =
    "{\"result\":{" HDR("8") ",\"events\":[{\"kv\":{\"key\":\"" KEY_B1 "\",\"create_revision\":"
                             "\"8\",\"mod_revision\":\"8\",\"version\":\"1\",\"value\":"
                             "\"eyJhZGRyIjoiMTAuMC4wLjU6ODA4MCJ9\"}}]}}";
static const char LINE_DELETE[] =
    "{\"result\":{" HDR("9") ",\"events\":[{\"type\":\"DELETE\",\"kv\":{\"key\":\"" KEY_B1
                             "\",\"mod_revision\":\"9\"}}]}}";
static const char LINE_EXPIRY[] = "{\"result\":{" HDR(
    "15") ",\"events\":[{\"type\":\"DELETE\",\"kv\":{\"key\":\"" KEY_B2
          "\",\"mod_revision\":\"15\"},\"prev_kv\":{\"key\":\"" KEY_B2
          "\",\"create_revision\":\"14\","
          "\"mod_revision\":\"14\",\"version\":\"1\",\"value\":\"YWxpdmU=\",\"lease\":"
          "\"4111120276489552950\"}}]}}";
static const char LINE_PROGRESS[] = "{\"result\":{" HDR("19") "}}";
static const char LINE_COMPACT_CREATED[] = "{\"result\":{" HDR("11") ",\"created\":true}}";
static const char LINE_COMPACT_CANCEL[] =
    "{\"result\":{\"header\":{\"cluster_id\":\"14841639068965178418\",\"member_id\":"
    "\"10276657743932975437\",\"raft_term\":\"2\"},\"canceled\":true,\"compact_revision\":"
    "\"10\"}}";

/* Collects what a feed produced. */
struct collected {
    struct lb_watch_decoder dec;
    int messages;
    int errors;
    int too_long;
    char log[8192]; /* one token per message: C(reated) P(ut) D(elete) G(progress) X(canceled) */
    int64_t last_revision;
};

static void log_token(struct collected *c, const char *tok)
{
    size_t len = strlen(c->log);

    snprintf(c->log + len, sizeof(c->log) - len, "%s ", tok);
}

static int collect_line(void *ud, const char *line, size_t len, int status)
{
    struct collected *c = ud;
    const struct lb_watch_msg *msg;
    char *err = NULL;
    int rc;

    if (status < 0) {
        assert_int_equal(status, -E2BIG);
        assert_null(line);
        c->too_long++;
        log_token(c, "LONG");
        return 0;
    }
    rc = lb_watch_decoder_line(&c->dec, line, len, &msg, &err);
    if (rc < 0) {
        assert_non_null(err);
        c->errors++;
        log_token(c, "ERR");
        free(err);
        return 0;
    }
    assert_null(err);
    if (rc == 0)
        return 0;
    c->messages++;
    c->last_revision = msg->header.revision;
    if (msg->canceled)
        log_token(c, "X");
    else if (msg->created)
        log_token(c, "C");
    else if (msg->progress)
        log_token(c, "G");
    for (size_t i = 0; i < msg->n_events; i++)
        log_token(c, msg->events[i].deleted ? "D" : "P");
    return 0;
}

static char *join_lines(const char *const *lines, size_t n)
{
    size_t total = 1;
    char *s;

    for (size_t i = 0; i < n; i++)
        total += strlen(lines[i]) + 1;
    s = malloc(total);
    assert_non_null(s);
    s[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        strcat(s, lines[i]);
        strcat(s, "\n");
    }
    return s;
}

/* Decodes a single complete line; returns the decoder's verdict. */
static int decode_one(struct lb_watch_decoder *d, const char *line, const struct lb_watch_msg **msg,
                      char **err)
{
    *err = NULL;
    return lb_watch_decoder_line(d, line, strlen(line), msg, err);
}

static void test_split_every_point(void **state)
{
    const char *const lines[] = {LINE_CREATED, LINE_PUT, LINE_DELETE, LINE_EXPIRY, LINE_PROGRESS};
    char *stream = join_lines(lines, 5);
    size_t len = strlen(stream);
    struct lb_watch_lines s;

    lb_watch_lines_init(&s, 4096);
    /* every single split point, then every slice size */
    for (size_t cut = 0; cut <= len; cut++) {
        struct collected c;

        memset(&c, 0, sizeof(c));
        lb_watch_decoder_init(&c.dec);
        lb_watch_lines_reset(&s);
        assert_int_equal(lb_watch_lines_feed(&s, stream, cut, collect_line, &c), 0);
        assert_int_equal(lb_watch_lines_feed(&s, stream + cut, len - cut, collect_line, &c), 0);
        assert_string_equal(c.log, "C P D D G ");
        assert_int_equal(c.errors, 0);
        assert_int_equal(c.last_revision, 19);
        lb_watch_decoder_free(&c.dec);
    }
    for (size_t slice = 1; slice <= 64; slice++) {
        struct collected c;

        memset(&c, 0, sizeof(c));
        lb_watch_decoder_init(&c.dec);
        lb_watch_lines_reset(&s);
        for (size_t off = 0; off < len; off += slice)
            assert_int_equal(lb_watch_lines_feed(&s, stream + off,
                                                 len - off < slice ? len - off : slice,
                                                 collect_line, &c),
                             0);
        assert_string_equal(c.log, "C P D D G ");
        lb_watch_decoder_free(&c.dec);
    }
    lb_watch_lines_free(&s);
    free(stream);
}

static void test_split_two_points(void **state)
{
    const char *const lines[] = {LINE_PUT, LINE_PROGRESS};
    char *stream = join_lines(lines, 2);
    size_t len = strlen(stream);
    struct lb_watch_lines s;

    lb_watch_lines_init(&s, 4096);
    for (size_t a = 0; a <= len; a += 3) {
        for (size_t b = a; b <= len; b += 5) {
            struct collected c;

            memset(&c, 0, sizeof(c));
            lb_watch_decoder_init(&c.dec);
            lb_watch_lines_reset(&s);
            lb_watch_lines_feed(&s, stream, a, collect_line, &c);
            lb_watch_lines_feed(&s, stream + a, b - a, collect_line, &c);
            lb_watch_lines_feed(&s, stream + b, len - b, collect_line, &c);
            assert_string_equal(c.log, "P G ");
            lb_watch_decoder_free(&c.dec);
        }
    }
    lb_watch_lines_free(&s);
    free(stream);
}

static int stop_after_first(void *ud, const char *line, size_t len, int status)
{
    (*(int *)ud)++;
    return -ECANCELED;
}

static void test_split_stop(void **state)
{
    struct lb_watch_lines s;
    int calls = 0;

    lb_watch_lines_init(&s, 64);
    assert_int_equal(lb_watch_lines_feed(&s, "a\nb\nc\n", 6, stop_after_first, &calls), -ECANCELED);
    assert_int_equal(calls, 1);
    lb_watch_lines_free(&s);
}

static void test_crlf_and_blank_lines(void **state)
{
    char stream[2048];
    struct lb_watch_lines s;
    struct collected c;

    snprintf(stream, sizeof(stream), "%s\r\n\n\r\n%s\n", LINE_CREATED, LINE_PUT);
    memset(&c, 0, sizeof(c));
    lb_watch_decoder_init(&c.dec);
    lb_watch_lines_init(&s, 4096);
    assert_int_equal(lb_watch_lines_feed(&s, stream, strlen(stream), collect_line, &c), 0);
    assert_string_equal(c.log, "C P ");
    lb_watch_lines_free(&s);
    lb_watch_decoder_free(&c.dec);
}

static void test_oversized_line(void **state)
{
    struct lb_watch_lines s;
    struct collected c;
    char big[300];
    char stream[4096];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memset(&c, 0, sizeof(c));
    lb_watch_decoder_init(&c.dec);
    lb_watch_lines_init(&s, 256);
    /* whole in one slice */
    snprintf(stream, sizeof(stream), "%s\n%s\n", big, LINE_PROGRESS);
    assert_int_equal(lb_watch_lines_feed(&s, stream, strlen(stream), collect_line, &c), 0);
    assert_string_equal(c.log, "LONG G ");
    /* arriving in small slices: reported once, the rest of the line skipped */
    c.log[0] = '\0';
    for (size_t off = 0; off < strlen(stream); off += 10)
        lb_watch_lines_feed(&s, stream + off, strlen(stream) - off < 10 ? strlen(stream) - off : 10,
                            collect_line, &c);
    assert_string_equal(c.log, "LONG G ");
    assert_int_equal(c.too_long, 2);
    /* a line of exactly the maximum passes */
    memset(stream, ' ', 256);
    memcpy(stream, LINE_PROGRESS, strlen(LINE_PROGRESS));
    stream[256] = '\n';
    c.log[0] = '\0';
    assert_int_equal(lb_watch_lines_feed(&s, stream, 100, collect_line, &c), 0);
    assert_int_equal(lb_watch_lines_feed(&s, stream + 100, 157, collect_line, &c), 0);
    assert_string_equal(c.log, "G ");
    lb_watch_lines_free(&s);
    lb_watch_decoder_free(&c.dec);
}

static void test_put_without_type(void **state)
{
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;

    lb_watch_decoder_init(&d);
    assert_int_equal(decode_one(&d, LINE_PUT, &m, &err), 1);
    assert_int_equal(m->n_events, 1);
    assert_false(m->events[0].deleted);
    assert_string_equal(m->events[0].kv.key, "/lb/pools/web/backends/b1");
    assert_string_equal(m->events[0].kv.value, "{\"addr\":\"10.0.0.5:8080\"}");
    assert_int_equal(m->events[0].kv.mod_revision, 8);
    assert_int_equal(m->events[0].kv.create_revision, 8);
    assert_int_equal(m->events[0].kv.version, 1);
    assert_int_equal(m->header.revision, 8);
    assert_int_equal(m->header.cluster_id, 14841639068965178418ULL);
    assert_false(m->created);
    assert_false(m->progress);
    assert_int_equal(lb_watch_msg_resume_revision(m), 8);
    lb_watch_decoder_free(&d);
}

static void test_delete_only_key(void **state)
{
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;

    lb_watch_decoder_init(&d);
    assert_int_equal(decode_one(&d, LINE_DELETE, &m, &err), 1);
    assert_int_equal(m->n_events, 1);
    assert_true(m->events[0].deleted);
    assert_string_equal(m->events[0].kv.key, "/lb/pools/web/backends/b1");
    assert_int_equal(m->events[0].kv.value_len, 0);
    assert_int_equal(m->events[0].kv.mod_revision, 9);
    assert_int_equal(m->events[0].prev_lease, 0);
    assert_int_equal(lb_watch_msg_resume_revision(m), 9);
    lb_watch_decoder_free(&d);
}

static void test_lease_expiry(void **state)
{
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;

    lb_watch_decoder_init(&d);
    assert_int_equal(decode_one(&d, LINE_EXPIRY, &m, &err), 1);
    assert_true(m->events[0].deleted);
    assert_string_equal(m->events[0].kv.key, "/lb/pools/web/backends/b2");
    /* above 2^53: must not have gone through a double */
    assert_int_equal(m->events[0].prev_lease, 4111120276489552950LL);
    lb_watch_decoder_free(&d);
}

static void test_progress(void **state)
{
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;

    lb_watch_decoder_init(&d);
    assert_int_equal(decode_one(&d, LINE_CREATED, &m, &err), 1);
    assert_true(m->created);
    assert_false(m->progress);
    /* created carries the store's revision, not ours: it must not move the resume point */
    assert_int_equal(lb_watch_msg_resume_revision(m), 0);
    assert_int_equal(decode_one(&d, LINE_PROGRESS, &m, &err), 1);
    assert_true(m->progress);
    assert_int_equal(m->n_events, 0);
    assert_int_equal(m->header.revision, 19);
    assert_int_equal(lb_watch_msg_resume_revision(m), 19);
    lb_watch_decoder_free(&d);
}

static void test_compaction_cancel(void **state)
{
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;

    lb_watch_decoder_init(&d);
    assert_int_equal(decode_one(&d, LINE_COMPACT_CREATED, &m, &err), 1);
    assert_true(m->created);
    assert_int_equal(decode_one(&d, LINE_COMPACT_CANCEL, &m, &err), 1);
    assert_true(m->canceled);
    assert_false(m->progress);
    assert_int_equal(m->compact_revision, 10);
    assert_int_equal(m->header.revision, 0); /* no header.revision on the cancel */
    assert_int_equal(lb_watch_msg_resume_revision(m), 0);
    lb_watch_decoder_free(&d);
}

static void test_cancel_with_reason(void **state)
{
    static const char line[] =
        "{\"result\":{\"header\":{\"cluster_id\":\"1\",\"member_id\":\"2\",\"revision\":\"5\","
        "\"raft_term\":\"2\"},\"watch_id\":\"-1\",\"created\":true,\"canceled\":true,"
        "\"cancel_reason\":\"rpc error: code = InvalidArgument desc = etcdserver: user name is "
        "empty\"}}";
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;

    lb_watch_decoder_init(&d);
    assert_int_equal(decode_one(&d, line, &m, &err), 1);
    assert_true(m->canceled);
    assert_int_equal(m->watch_id, -1);
    assert_int_equal(m->compact_revision, 0);
    assert_non_null(strstr(m->cancel_reason, "user name is empty"));
    lb_watch_decoder_free(&d);
}

static void test_fragment_merge(void **state)
{
    static const char frag1[] =
        "{\"result\":{" HDR("231") ",\"fragment\":true,\"events\":[{\"type\":\"DELETE\",\"kv\":{"
                                   "\"key\":\"" KEY_B1 "\",\"mod_revision\":\"231\"}}]}}";
    static const char frag2[] =
        "{\"result\":{" HDR("231") ",\"events\":[{\"type\":\"DELETE\",\"kv\":{\"key\":\"" KEY_B2
                                   "\",\"mod_revision\":\"231\"}}]}}";
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;

    lb_watch_decoder_init(&d);
    assert_int_equal(decode_one(&d, frag1, &m, &err), 0); /* held */
    assert_null(m);
    assert_int_equal(decode_one(&d, frag1, &m, &err), 0); /* a second fragment */
    assert_int_equal(decode_one(&d, frag2, &m, &err), 1);
    assert_int_equal(m->n_events, 3);
    assert_string_equal(m->events[0].kv.key, "/lb/pools/web/backends/b1");
    assert_string_equal(m->events[2].kv.key, "/lb/pools/web/backends/b2");
    assert_int_equal(lb_watch_msg_resume_revision(m), 231);
    /* the next message starts afresh */
    assert_int_equal(decode_one(&d, LINE_PUT, &m, &err), 1);
    assert_int_equal(m->n_events, 1);
    /* a bad line drops held fragments */
    assert_int_equal(decode_one(&d, frag1, &m, &err), 0);
    assert_true(decode_one(&d, "{", &m, &err) < 0);
    free(err);
    assert_int_equal(decode_one(&d, frag2, &m, &err), 1);
    assert_int_equal(m->n_events, 1);
    /* reset drops them too */
    assert_int_equal(decode_one(&d, frag1, &m, &err), 0);
    lb_watch_decoder_reset(&d);
    assert_int_equal(decode_one(&d, frag2, &m, &err), 1);
    assert_int_equal(m->n_events, 1);
    /* freeing with fragments held leaks nothing */
    assert_int_equal(decode_one(&d, frag1, &m, &err), 0);
    lb_watch_decoder_free(&d);
}

static void test_garbage_then_recovers(void **state)
{
    /* lines that are not watch messages at all: the whole line fails */
    static const char *const bad[] = {
        "hello",
        "{\"result\":",
        "[]",
        "\"result\"",
        "{}",
        "{\"result\":null}",
        "{\"result\":7}",
        "{\"result\":{\"events\":7}}",
        "{\"result\":{\"header\":{\"revision\":{}}}}",
        "{\"result\":{\"header\":[]}}",
        "{\"result\":{\"header\":{\"revision\":\"-5\"}}}",
        "{\"result\":{\"fragment\":1}}",
        "{\"result\":{\"canceled\":true,\"cancel_reason\":5}}",
        "{\"result\":{}} trailing",
        "{\"error\":{\"grpc_code\":14,\"message\":\"etcdserver: no leader\"}}",
        "{\"error\":\"x\",\"code\":3}",
        "{\"result\":{\"created\":true}}\x01",
    };
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;

    lb_watch_decoder_init(&d);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = decode_one(&d, bad[i], &m, &err);

        if (rc >= 0)
            fail_msg("accepted: %s", bad[i]);
        assert_non_null(err);
        assert_null(m);
        free(err);
        /* still usable */
        assert_int_equal(decode_one(&d, LINE_PUT, &m, &err), 1);
        assert_int_equal(m->n_events, 1);
    }
    /* an error written by etcd is told apart from noise */
    assert_int_equal(
        decode_one(&d, "{\"error\":{\"grpc_code\":14,\"message\":\"no leader\"}}", &m, &err),
        -EPROTO);
    assert_non_null(strstr(err, "no leader"));
    free(err);
    lb_watch_decoder_free(&d);
}

/*
 * Events etcd would not write do not fail their line: each is kept,
 * flagged, so the good events of the same response still apply.
 */
static void test_bad_events_are_flagged_not_fatal(void **state)
{
    static const struct {
        const char *events;
        enum lb_etcd_flaw flaw;
        bool key_whole;
    } cases[] = {
        {"[7]", LB_ETCD_FLAW_MALFORMED, false},
        {"[{}]", LB_ETCD_FLAW_MALFORMED, false},
        {"[{\"kv\":{\"key\":\"not base64!\"}}]", LB_ETCD_FLAW_MALFORMED, false},
        {"[{\"kv\":{\"key\":\"QQ\"}}]", LB_ETCD_FLAW_MALFORMED, false},
        {"[{\"kv\":{\"key\":7}}]", LB_ETCD_FLAW_MALFORMED, false},
        {"[{\"kv\":{\"key\":\"QQ==\",\"value\":\"Q===\"}}]", LB_ETCD_FLAW_MALFORMED, true},
        {"[{\"kv\":{\"key\":\"QQ==\",\"value\":7}}]", LB_ETCD_FLAW_MALFORMED, true},
        {"[{\"kv\":{\"key\":\"QQ==\",\"mod_revision\":\"1x\"}}]", LB_ETCD_FLAW_MALFORMED, true},
        {"[{\"kv\":{\"key\":\"QQ==\",\"mod_revision\":\"99999999999999999999\"}}]",
         LB_ETCD_FLAW_MALFORMED, true},
        {"[{\"type\":\"PATCH\",\"kv\":{\"key\":\"QQ==\"}}]", LB_ETCD_FLAW_MALFORMED, true},
        {"[{\"type\":\"DELETE\",\"kv\":{\"key\":\"QQ==\",\"value\":\"QQ==\"}}]",
         LB_ETCD_FLAW_MALFORMED, true},
        {"[{\"kv\":{\"key\":\"QQ==\"},\"prev_kv\":3}]", LB_ETCD_FLAW_MALFORMED, true},
    };
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char line[512], *err;

    lb_watch_decoder_init(&d);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(line, sizeof(line), "{\"result\":{\"events\":%s}}", cases[i].events);
        if (decode_one(&d, line, &m, &err) != 1)
            fail_msg("line failed: %s (%s)", line, err ? err : "");
        assert_int_equal(m->n_events, 1);
        if (m->events[0].kv.flaw != cases[i].flaw ||
            m->events[0].kv.key_whole != cases[i].key_whole)
            fail_msg("%s: flaw %d key_whole %d", cases[i].events, m->events[0].kv.flaw,
                     m->events[0].kv.key_whole);
        assert_non_null(m->events[0].kv.key);
        assert_non_null(m->events[0].kv.value);
        assert_true(m->events[0].kv.flaw_why[0] != '\0');
        if (cases[i].key_whole)
            assert_string_equal(m->events[0].kv.key, "A");
    }
    lb_watch_decoder_free(&d);
}

/* A kv JSON object for key and value (any bytes), as the gateway writes it. */
static char *kv_json(const char *key, size_t key_len, const char *value, size_t value_len,
                     const char *rev)
{
    char *k64, *v64, *out;
    size_t size;

    assert_int_equal(lb_etcd_base64_encode(key, key_len, &k64), 0);
    assert_int_equal(lb_etcd_base64_encode(value, value_len, &v64), 0);
    size = strlen(k64) + strlen(v64) + 128;
    out = malloc(size);
    assert_non_null(out);
    snprintf(out, size,
             "{\"key\":\"%s\",\"create_revision\":\"%s\",\"mod_revision\":\"%s\","
             "\"version\":\"1\",\"value\":\"%s\"}",
             k64, rev, rev, v64);
    free(k64);
    free(v64);
    return out;
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

/*
 * One response: a good PUT, a 5,000-byte key, a 1.5 MiB key, a 70 KiB
 * value, a malformed event and a good DELETE.  All six arrive; the good
 * ones are whole, the others flagged; the response resumes after all.
 */
static void test_huge_keys_and_values_among_good_events(void **state)
{
    static const char good_value[] = "{\"addr\":\"10.0.0.5:8080\"}";
    char *long_key = filled(5000, "/lb/pools/other/", 'a');
    char *huge_key = filled(1500 * 1024, "/lb/pools/other/", 'k');
    char *big_value = filled(70 * 1024, "{\"addr\":\"10.0.0.6:80\",\"meta\":\"", 'v');
    char *e_good = kv_json("/lb/pools/web/backends/b1", 25, good_value, strlen(good_value), "20");
    char *e_long = kv_json(long_key, 5000, "x", 1, "21");
    char *e_huge = kv_json(huge_key, 1500 * 1024, "x", 1, "22");
    char *e_big = kv_json("/lb/pools/web/backends/b2", 25, big_value, 70 * 1024, "23");
    size_t size = strlen(e_good) + strlen(e_long) + strlen(e_huge) + strlen(e_big) + 1024;
    char *line = malloc(size), *err = NULL;
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    const struct lb_etcd_kv *kv;

    assert_non_null(line);
    snprintf(line, size,
             "{\"result\":{" HDR("25") ",\"events\":[{\"kv\":%s},{\"kv\":%s},{\"kv\":%s},"
                                       "{\"kv\":%s},{\"kv\":{\"key\":\"@@@@\",\"mod_revision\":"
                                       "\"24\"}},{\"type\":\"DELETE\",\"kv\":{\"key\":\"" KEY_B2
                                       "\",\"mod_revision\":\"25\"}}]}}",
             e_good, e_long, e_huge, e_big);
    assert_true(strlen(line) < LB_WATCH_LINE_MAX);
    lb_watch_decoder_init(&d);
    assert_int_equal(decode_one(&d, line, &m, &err), 1);
    assert_int_equal(m->n_events, 6);
    /* the good PUT */
    kv = &m->events[0].kv;
    assert_int_equal(kv->flaw, LB_ETCD_FLAW_NONE);
    assert_string_equal(kv->key, "/lb/pools/web/backends/b1");
    assert_string_equal(kv->value, good_value);
    /* the long keys: their first bytes kept for the log, their size told */
    for (int i = 1; i <= 2; i++) {
        kv = &m->events[i].kv;
        assert_int_equal(kv->flaw, LB_ETCD_FLAW_KEY_TOO_LONG);
        assert_false(kv->key_whole);
        assert_true(kv->key_len > 0 && kv->key_len <= LB_ETCD_KEY_SHOWN);
        assert_memory_equal(kv->key, "/lb/pools/other/", 16);
        assert_int_equal(kv->key_size, i == 1 ? 5000 : 1500 * 1024);
        assert_int_equal(kv->value_len, 0);
    }
    /* the large value: not decoded, its key whole */
    kv = &m->events[3].kv;
    assert_int_equal(kv->flaw, LB_ETCD_FLAW_VALUE_TOO_LARGE);
    assert_true(kv->key_whole);
    assert_string_equal(kv->key, "/lb/pools/web/backends/b2");
    assert_int_equal(kv->value_len, 0);
    assert_string_equal(kv->value, "");
    assert_int_equal(kv->value_size, 70 * 1024);
    assert_int_equal(kv->mod_revision, 23);
    /* the malformed one, then the good DELETE */
    assert_int_equal(m->events[4].kv.flaw, LB_ETCD_FLAW_MALFORMED);
    assert_int_equal(m->events[5].kv.flaw, LB_ETCD_FLAW_NONE);
    assert_true(m->events[5].deleted);
    assert_int_equal(lb_watch_msg_resume_revision(m), 25);
    lb_watch_decoder_free(&d);
    free(line);
    free(e_good);
    free(e_long);
    free(e_huge);
    free(e_big);
    free(long_key);
    free(huge_key);
    free(big_value);
}

/* A value of exactly LB_VALUE_MAX bytes is decoded; one byte more is not. */
static void test_value_bound_is_exact(void **state)
{
    char *value = filled(LB_VALUE_MAX + 1, "x", 'y');
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err = NULL, *ev, *line;
    size_t size;

    lb_watch_decoder_init(&d);
    for (size_t len = LB_VALUE_MAX; len <= LB_VALUE_MAX + 1; len++) {
        ev = kv_json("/lb/pools/web/backends/b1", 25, value, len, "9");
        size = strlen(ev) + 64;
        line = malloc(size);
        assert_non_null(line);
        snprintf(line, size, "{\"result\":{\"events\":[{\"kv\":%s}]}}", ev);
        assert_int_equal(decode_one(&d, line, &m, &err), 1);
        assert_int_equal(m->events[0].kv.flaw,
                         len == LB_VALUE_MAX ? LB_ETCD_FLAW_NONE : LB_ETCD_FLAW_VALUE_TOO_LARGE);
        assert_int_equal(m->events[0].kv.value_len, len == LB_VALUE_MAX ? len : 0);
        free(line);
        free(ev);
    }
    lb_watch_decoder_free(&d);
    free(value);
}

static void test_deep_nesting_refused(void **state)
{
    char line[512];
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;
    size_t o = 0;

    o += (size_t)snprintf(line, sizeof(line), "{\"result\":{\"x\":");
    for (int i = 0; i < 100; i++)
        line[o++] = '[';
    for (int i = 0; i < 100; i++)
        line[o++] = ']';
    line[o++] = '}';
    line[o++] = '}';
    line[o] = '\0';
    lb_watch_decoder_init(&d);
    assert_true(decode_one(&d, line, &m, &err) < 0);
    free(err);
    lb_watch_decoder_free(&d);
}

static void test_empty_value_put(void **state)
{
    /* etcd leaves "value" out when it is empty */
    static const char line[] =
        "{\"result\":{" HDR("8") ",\"events\":[{\"kv\":{\"key\":\"" KEY_B1
                                 "\",\"create_revision\":\"8\",\"mod_revision\":\"8\","
                                 "\"version\":\"1\"}}]}}";
    struct lb_watch_decoder d;
    const struct lb_watch_msg *m;
    char *err;

    lb_watch_decoder_init(&d);
    assert_int_equal(decode_one(&d, line, &m, &err), 1);
    assert_false(m->events[0].deleted);
    assert_string_equal(m->events[0].kv.value, "");
    assert_int_equal(m->events[0].kv.value_len, 0);
    lb_watch_decoder_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_every_point),
        cmocka_unit_test(test_split_two_points),
        cmocka_unit_test(test_split_stop),
        cmocka_unit_test(test_crlf_and_blank_lines),
        cmocka_unit_test(test_oversized_line),
        cmocka_unit_test(test_put_without_type),
        cmocka_unit_test(test_delete_only_key),
        cmocka_unit_test(test_lease_expiry),
        cmocka_unit_test(test_progress),
        cmocka_unit_test(test_compaction_cancel),
        cmocka_unit_test(test_cancel_with_reason),
        cmocka_unit_test(test_fragment_merge),
        cmocka_unit_test(test_garbage_then_recovers),
        cmocka_unit_test(test_bad_events_are_flagged_not_fatal),
        cmocka_unit_test(test_huge_keys_and_values_among_good_events),
        cmocka_unit_test(test_value_bound_is_exact),
        cmocka_unit_test(test_deep_nesting_refused),
        cmocka_unit_test(test_empty_value_put),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
