/*
 * Data-driven watch tests: every tests/data/watch/NAME.stream is a case
 * (tests/data/watch/README.md says where each one comes from).  The stream
 * is a watch response body; it goes through the splitter, the decoder and
 * the mirror exactly as in the watcher, into a sink that keeps what it was
 * told.  Two files next to it state what must come out:
 *
 * NAME.expected, the transcript, one line per step:
 *
 *   msg created | msg progress | msg events=N | msg canceled compact_revision=R
 *       followed by " resume=R" when the message moves the resume revision
 *   <update lines>      one per update delivered to the sink
 *   commit              after a message that delivered updates
 *   skipped REASON N    keys the mirror skipped, by reason (lb_skip.h)
 *   clamped N           value fields clamped into their range
 *   error <text>        a line that did not decode
 *
 * NAME.pool, the pools the sink holds once the stream has been applied,
 * pools by name, each with its policy, then its backends and overrides by
 * id ("no pools" when nothing is left):
 *
 *   pool web
 *     policy defaults | policy algorithm=... (every field)
 *     backend b1 addr=10.0.0.1:8080 weight=300 zone=a
 *     override b1 drain=1 weight=50 health=down
 *
 * The sink also holds the mirror to its promise that a delete reaches it
 * only for a key it was told about: any other delete fails the case.
 *
 * Each stream is fed whole, in 7-byte slices and byte by byte; all three
 * must give the same transcript and pools.  LB_TEST_UPDATE=1 rewrites the
 * .expected and .pool files from the current output (review the diff
 * before committing).
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

#define TEXT_MAX  (1 << 20) /* a transcript or a pool dump */
#define KEYS_MAX  256       /* keys the sink holds at once */
#define CASES_MAX 64        /* streams in the data directory */

enum held_kind { HELD_POLICY, HELD_BACKEND, HELD_OVERRIDE }; /* the order of a pool dump */

/* One key the sink holds: a pool's policy, a backend or an override. */
struct held {
    enum held_kind kind;
    char pool[LB_NAME_MAX];
    char id[LB_NAME_MAX]; /* "" for a policy */
    union {
        struct lb_backend_spec backend;
        struct lb_pool_policy policy;
        struct lb_override override;
    } u;
};

struct run {
    struct lb_buf out;
    struct lb_mirror *mirror;
    struct lb_watch_decoder dec;
    int updates;
    struct held *held; /* KEYS_MAX slots */
    size_t n_held;
};

static void buf_printf(struct lb_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void buf_printf(struct lb_buf *b, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(line));
    assert_int_equal(lb_buf_append(b, line, (size_t)n), 0);
}

static const char *health_name(enum lb_health_override h)
{
    return h == LB_HEALTH_FORCE_UP ? "up" : h == LB_HEALTH_FORCE_DOWN ? "down" : "auto";
}

/* The fields of a backend, a policy and an override, as both files spell them. */
static void print_backend(struct lb_buf *b, const struct lb_backend_spec *s)
{
    buf_printf(b, "addr=%s weight=%d zone=%s\n", s->addr, s->weight, s->zone);
}

static void print_policy(struct lb_buf *b, const struct lb_pool_policy *p)
{
    static const char *const algos[] = {"wrr", "leastconn", "p2c", "maglev"};
    static const char *const checks[] = {"tcp", "http", "none"};
    static const char *const proxies[] = {"none", "v1", "v2"};

    buf_printf(b,
               "algorithm=%s health=%s,%s,%lld,%lld,%d,%d connect=%lld idle=%lld retries=%d "
               "max_conns=%d slow_start=%lld drain=%lld proxy=%s panic=%d\n",
               algos[p->algorithm], checks[p->health.type], p->health.path,
               (long long)p->health.interval_ms, (long long)p->health.timeout_ms, p->health.rise,
               p->health.fall, (long long)p->connect_timeout_ms, (long long)p->idle_timeout_ms,
               p->retries, p->max_conns, (long long)p->slow_start_ms,
               (long long)p->drain_timeout_ms, proxies[p->proxy_protocol], p->panic_threshold);
}

static void print_override(struct lb_buf *b, const struct lb_override *o)
{
    if (o->has_weight)
        buf_printf(b, "drain=%d weight=%d health=%s\n", o->drain, o->weight,
                   health_name(o->health));
    else
        buf_printf(b, "drain=%d weight=- health=%s\n", o->drain, health_name(o->health));
}

/* ------------------------------------------------------ the pool sink -- */

static struct held *held_find(struct run *r, enum held_kind kind, const char *pool, const char *id)
{
    for (size_t i = 0; i < r->n_held; i++) {
        struct held *h = &r->held[i];

        if (h->kind == kind && strcmp(h->pool, pool) == 0 && strcmp(h->id, id) == 0)
            return h;
    }
    return NULL;
}

/* The slot for a put: the key's own, or a new one. */
static struct held *held_put(struct run *r, enum held_kind kind, const char *pool, const char *id)
{
    struct held *h = held_find(r, kind, pool, id);

    if (h)
        return h;
    if (r->n_held == KEYS_MAX)
        fail_msg("the stream leaves more than %d keys in the sink", KEYS_MAX);
    h = &r->held[r->n_held++];
    memset(h, 0, sizeof(*h));
    h->kind = kind;
    snprintf(h->pool, sizeof(h->pool), "%s", pool);
    snprintf(h->id, sizeof(h->id), "%s", id);
    return h;
}

static void held_delete(struct run *r, enum held_kind kind, const char *pool, const char *id)
{
    static const char *const kinds[] = {"policy", "backend", "override"};
    struct held *h = held_find(r, kind, pool, id);

    if (!h)
        fail_msg("the mirror deleted %s %s/%s, which the sink was never told about", kinds[kind],
                 pool, id);
    *h = r->held[--r->n_held];
}

static void pool_apply(struct run *r, const struct lb_update *u)
{
    const char *id = u->id ? u->id : "";

    switch (u->kind) {
    case LB_UPDATE_BACKEND_PUT:
        held_put(r, HELD_BACKEND, u->pool, id)->u.backend = u->u.backend;
        break;
    case LB_UPDATE_BACKEND_DELETE:
        held_delete(r, HELD_BACKEND, u->pool, id);
        break;
    case LB_UPDATE_POLICY_PUT:
        held_put(r, HELD_POLICY, u->pool, "")->u.policy = u->u.policy;
        break;
    case LB_UPDATE_POLICY_DELETE:
        held_delete(r, HELD_POLICY, u->pool, "");
        break;
    case LB_UPDATE_OVERRIDE_PUT:
        held_put(r, HELD_OVERRIDE, u->pool, id)->u.override = u->u.override;
        break;
    case LB_UPDATE_OVERRIDE_DELETE:
        held_delete(r, HELD_OVERRIDE, u->pool, id);
        break;
    }
}

static int held_cmp(const void *a, const void *b)
{
    const struct held *x = a, *y = b;
    int c = strcmp(x->pool, y->pool);

    if (c)
        return c;
    if (x->kind != y->kind)
        return x->kind < y->kind ? -1 : 1;
    return strcmp(x->id, y->id);
}

/* The pools the sink holds, in the .pool format (malloc'd). */
static char *pool_dump(struct run *r)
{
    struct lb_buf b;
    char *text;

    lb_buf_init(&b, TEXT_MAX);
    qsort(r->held, r->n_held, sizeof(*r->held), held_cmp);
    for (size_t i = 0; i < r->n_held; i++) {
        const struct held *h = &r->held[i];

        if (i == 0 || strcmp(h->pool, r->held[i - 1].pool) != 0) {
            buf_printf(&b, "pool %s\n", h->pool);
            if (h->kind != HELD_POLICY)
                buf_printf(&b, "  policy defaults\n");
        }
        switch (h->kind) {
        case HELD_POLICY:
            buf_printf(&b, "  policy ");
            print_policy(&b, &h->u.policy);
            break;
        case HELD_BACKEND:
            buf_printf(&b, "  backend %s ", h->id);
            print_backend(&b, &h->u.backend);
            break;
        case HELD_OVERRIDE:
            buf_printf(&b, "  override %s ", h->id);
            print_override(&b, &h->u.override);
            break;
        }
    }
    if (r->n_held == 0)
        buf_printf(&b, "no pools\n");
    text = strdup(b.data);
    assert_non_null(text);
    lb_buf_free(&b);
    return text;
}

/* --------------------------------------------------------- transcript -- */

static void record_apply(void *ctx, const struct lb_update *u)
{
    struct run *r = ctx;

    r->updates++;
    switch (u->kind) {
    case LB_UPDATE_BACKEND_PUT:
        buf_printf(&r->out, "backend put %s/%s ", u->pool, u->id);
        print_backend(&r->out, &u->u.backend);
        break;
    case LB_UPDATE_BACKEND_DELETE:
        buf_printf(&r->out, "backend delete %s/%s\n", u->pool, u->id);
        break;
    case LB_UPDATE_POLICY_PUT:
        buf_printf(&r->out, "policy put %s ", u->pool);
        print_policy(&r->out, &u->u.policy);
        break;
    case LB_UPDATE_POLICY_DELETE:
        buf_printf(&r->out, "policy delete %s\n", u->pool);
        break;
    case LB_UPDATE_OVERRIDE_PUT:
        buf_printf(&r->out, "override put %s/%s ", u->pool, u->id);
        print_override(&r->out, &u->u.override);
        break;
    case LB_UPDATE_OVERRIDE_DELETE:
        buf_printf(&r->out, "override delete %s/%s\n", u->pool, u->id);
        break;
    }
    pool_apply(r, u);
}

static void record_commit(void *ctx)
{
    struct run *r = ctx;

    buf_printf(&r->out, "commit\n");
}

static void handle_msg(struct run *r, const struct lb_watch_msg *msg)
{
    struct lb_mirror_stats before, after;
    int64_t resume = lb_watch_msg_resume_revision(msg);
    int n;

    if (msg->canceled)
        buf_printf(&r->out, "msg canceled compact_revision=%lld", (long long)msg->compact_revision);
    else if (msg->created)
        buf_printf(&r->out, "msg created");
    else if (msg->progress)
        buf_printf(&r->out, "msg progress");
    else
        buf_printf(&r->out, "msg events=%zu", msg->n_events);
    if (resume)
        buf_printf(&r->out, " resume=%lld", (long long)resume);
    buf_printf(&r->out, "\n");
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
            buf_printf(&r->out, "skipped %s %llu\n", lb_skip_reason_name(i),
                       (unsigned long long)(after.skipped[i] - before.skipped[i]));
    if (after.clamped != before.clamped)
        buf_printf(&r->out, "clamped %llu\n", (unsigned long long)(after.clamped - before.clamped));
}

static int on_line(void *ud, const char *line, size_t len, int status)
{
    struct run *r = ud;
    const struct lb_watch_msg *msg;
    char *err = NULL;
    int rc;

    if (status < 0) {
        buf_printf(&r->out, "error line too long\n");
        return 0;
    }
    rc = lb_watch_decoder_line(&r->dec, line, len, &msg, &err);
    if (rc < 0)
        buf_printf(&r->out, "error %s\n", err ? err : "(no message)");
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

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/*
 * Runs one stream in slices of `slice` bytes; returns the transcript and
 * the pools left in the sink (both malloc'd).
 */
static void run_stream(const char *stream, size_t len, size_t slice, char **transcript,
                       char **pools)
{
    static const struct lb_update_sink sink_template = {record_apply, record_commit, NULL};
    struct lb_update_sink sink = sink_template;
    struct lb_watch_lines lines;
    struct run r;

    memset(&r, 0, sizeof(r));
    lb_buf_init(&r.out, TEXT_MAX);
    r.held = calloc(KEYS_MAX, sizeof(*r.held));
    assert_non_null(r.held);
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
    *transcript = strdup(r.out.data ? r.out.data : "");
    assert_non_null(*transcript);
    *pools = pool_dump(&r);
    free(r.held);
    lb_buf_free(&r.out);
}

/* Compares `got` with the file NAME.ext (rewritten first under LB_TEST_UPDATE). */
static void check_against(const char *name, const char *ext, const char *got)
{
    char path[1024];
    size_t len;
    char *want;

    snprintf(path, sizeof(path), "%s/%s.%s", LB_TEST_DATA_DIR, name, ext);
    if (getenv("LB_TEST_UPDATE"))
        write_file(path, got);
    want = read_file(path, &len);
    if (!want)
        fail_msg("%s is missing (LB_TEST_UPDATE=1 writes it)", path);
    if (strcmp(want, got) != 0)
        fail_msg("%s.%s differs.\n--- expected\n%s--- got\n%s", name, ext, want, got);
    free(want);
}

/* One case: state is the stream's name without ".stream". */
static void test_stream(void **state)
{
    const char *name = *state;
    char path[1024];
    size_t len;
    char *stream, *whole[2], *sliced[2], *bytes[2];

    snprintf(path, sizeof(path), "%s/%s.stream", LB_TEST_DATA_DIR, name);
    stream = read_file(path, &len);
    assert_non_null(stream);
    run_stream(stream, len, len ? len : 1, &whole[0], &whole[1]);
    run_stream(stream, len, 7, &sliced[0], &sliced[1]);
    run_stream(stream, len, 1, &bytes[0], &bytes[1]);
    for (int i = 0; i < 2; i++) {
        assert_string_equal(sliced[i], whole[i]);
        assert_string_equal(bytes[i], whole[i]);
    }
    check_against(name, "expected", whole[0]);
    check_against(name, "pool", whole[1]);
    for (int i = 0; i < 2; i++) {
        free(whole[i]);
        free(sliced[i]);
        free(bytes[i]);
    }
    free(stream);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * The names of the streams in the data directory, sorted (malloc'd).
 * Returns how many, or -1 (reported on stderr, nothing left allocated).
 */
static int list_streams(char *names[CASES_MAX])
{
    DIR *d = opendir(LB_TEST_DATA_DIR);
    struct dirent *e;
    int n = 0, rc = 0;

    if (!d) {
        fprintf(stderr, "test_watch_streams: cannot open %s: %s\n", LB_TEST_DATA_DIR,
                strerror(errno));
        return -1;
    }
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);

        if (len <= 7 || strcmp(e->d_name + len - 7, ".stream") != 0)
            continue;
        if (n == CASES_MAX) {
            fprintf(stderr, "test_watch_streams: more than %d streams\n", CASES_MAX);
            rc = -1;
            goto out;
        }
        names[n] = strndup(e->d_name, len - 7);
        if (!names[n]) {
            rc = -1;
            goto out;
        }
        n++;
    }
    qsort(names, (size_t)n, sizeof(*names), name_cmp);
out:
    closedir(d);
    if (rc < 0) {
        while (n > 0)
            free(names[--n]);
        return rc;
    }
    return n;
}

int main(void)
{
    struct CMUnitTest tests[CASES_MAX];
    char *names[CASES_MAX];
    int n = list_streams(names), failed;

    if (n <= 0) {
        fprintf(stderr, "test_watch_streams: no .stream files in %s\n", LB_TEST_DATA_DIR);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        struct CMUnitTest t = {
            .name = names[i], .test_func = test_stream, .initial_state = names[i]};

        tests[i] = t;
    }
    failed = _cmocka_run_group_tests("watch_streams", tests, (size_t)n, NULL, NULL);
    for (int i = 0; i < n; i++)
        free(names[i]);
    return failed;
}
