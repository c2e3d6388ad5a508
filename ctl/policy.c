/*
 * `lbctl policy get|validate|set POOL [FILE|-]`: the policy at
 * <prefix>pools/<pool>/config, read and written through etcd's JSON
 * gateway with the watcher's client (TLS, etcd users: lb_etcd_opts.h) and
 * checked by lbd's own validator, lb_value_check_policy().  There is one
 * implementation of what a good policy is, so what lbctl accepts lbd
 * applies, field for field.
 *
 * lbctl is the stricter of the two on two points.  lbd clamps a number or
 * duration outside its range, and ignores an unknown field (a policy
 * written for a newer lbd still applies), logging each with the nearest
 * known name, and applies the rest: a running balancer should not drop a
 * policy over one field.  lbctl refuses both, because the person typing
 * can fix them now, and a policy that runs with other values than it says
 * is a mistake waiting to be found.
 *
 *   get       the stored policy: pretty JSON, or with -o json the bytes as
 *             stored.  What lbd finds wrong in it goes to stderr.
 *   validate  every problem of FILE (or stdin), one line each; exit 0 when
 *             lbd would apply it as written, 1 otherwise.  No etcd needed.
 *   set       validate, then write -- only if the key still holds what was
 *             read (an etcd transaction on its mod revision), so two
 *             operators never overwrite each other unseen -- and print the
 *             fields that change.  A refused policy touches nothing.
 *
 * What is written is the input re-serialised compactly (same fields, same
 * order, same spellings); "unchanged" means etcd already holds exactly
 * that.  Requests block, each bounded by --etcd-timeout, and go to the
 * next endpoint when one cannot be reached.
 */
#include "policy.h"
#include "lb_error.h"
#include "lb_etcd_http.h"
#include "lb_etcd_json.h"
#include "lb_etcd_opts.h"
#include "lb_key.h"
#include "lb_settings.h"
#include "lb_value.h"

#include <curl/curl.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_OK      0
#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

/* A range answer holds one value of up to LB_ETCD_VALUE_MAX, base64'd. */
#define RANGE_RESPONSE_MAX (4 * 1024 * 1024)
#define TXN_RESPONSE_MAX   (64 * 1024)
#define KEY_MAX            (LB_PREFIX_MAX + LB_NAME_MAX + 32)

struct policy_opts {
    struct lb_etcd_opts etcd;
    char *prefix;
    char *output;
    int64_t timeout_ms;
    bool help;
};

#define O(f) offsetof(struct policy_opts, f)
static const struct lb_setting policy_rows[] = {
    LB_ETCD_SETTINGS("LBCTL_", struct policy_opts, etcd),
    {"prefix", 0, "LBCTL_PREFIX", LB_SETTING_STRING, O(prefix), 0, LB_PREFIX_MAX - 2, "/lb/", NULL,
     "PREFIX", "key prefix"},
    {"output", 'o', "LBCTL_OUTPUT", LB_SETTING_STRING, O(output), 0, 0, NULL, "table|json",
     "FORMAT", "table: readable; json: for scripts (get: the value as stored)"},
    {"etcd-timeout", 0, "LBCTL_ETCD_TIMEOUT", LB_SETTING_DURATION, O(timeout_ms), 100, 600 * 1000,
     "5s", NULL, "DURATION", "deadline of each etcd request"},
    {"help", 'h', NULL, LB_SETTING_BOOL, O(help), 0, 0, NULL, NULL, NULL, "show this help"},
};
#undef O
#define N_ROWS (sizeof(policy_rows) / sizeof(policy_rows[0]))

const struct lb_setting *lbctl_policy_settings(size_t *n)
{
    *n = N_ROWS;
    return policy_rows;
}

/* One run: the verb's arguments, checked, and the etcd client once opened. */
struct policy_run {
    const char *verb;
    const char *pool;
    const char *source; /* FILE, or "-" for stdin */
    bool json;
    char key[KEY_MAX];
    long timeout_ms;
    struct lb_etcd_endpoints etcd;
    size_t endpoint;
    struct lb_etcd_http *http;
};

/* What etcd holds at the key. */
struct stored {
    bool present;
    char *value; /* malloc'd, NUL-terminated; NULL when absent */
    size_t len;
    int64_t mod_revision;
    int64_t revision; /* of the answer */
};

static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    lb_settings_usage_line("lbctl policy", "lbctl policy", fmt, ap);
    va_end(ap);
    return EXIT_USAGE;
}

static void print_help(void)
{
    printf("usage: lbctl policy get POOL [-o json]\n"
           "       lbctl policy validate POOL [FILE|-]\n"
           "       lbctl policy set POOL [FILE|-]\n"
           "           [--etcd URL[,URL...]] [--prefix /lb/] [--etcd-ca FILE]\n"
           "           [--etcd-cert FILE --etcd-key FILE] [--etcd-user-file FILE]\n\n"
           "The policy of pool POOL, at <prefix>pools/POOL/config in etcd.\n"
           "  get       print it (pretty; -o json: the value as stored)\n"
           "  validate  check FILE (default: stdin) with lbd's own validator: every problem,\n"
           "            one line each, unknown fields with the nearest known one\n"
           "  set       validate, then write it and print the fields that change; a policy\n"
           "            with any problem is refused and nothing is written\n"
           "Values lbd would clamp into their range are refused here too.\n\n"
           "Exit codes: 0 ok, 1 refused or etcd failed, 2 usage error.\n\n");
    lb_settings_print_help(stdout, policy_rows, N_ROWS);
}

/* ---- input ---- */

/*
 * Reads FILE, or stdin for "-", up to LB_VALUE_MAX bytes (what lbd reads).
 * Returns 0 with a malloc'd NUL-terminated *out, or a negative errno with
 * *err.
 */
static int read_source(const char *source, char **out, size_t *len, char **err)
{
    bool is_stdin = strcmp(source, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(source, "rb");
    size_t n = 0, got;
    char *buf = NULL;
    int rc = 0;

    *out = NULL;
    if (!f)
        return lb_error_set(err, -errno, "%s: %s", source, strerror(errno));
    buf = malloc(LB_VALUE_MAX + 2);
    if (!buf) {
        rc = lb_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    while (n <= LB_VALUE_MAX && (got = fread(buf + n, 1, LB_VALUE_MAX + 1 - n, f)) > 0)
        n += got;
    if (ferror(f)) {
        int e = errno ? errno : EIO;

        rc = lb_error_set(err, -e, "%s: cannot read it: %s%s", is_stdin ? "stdin" : source,
                          strerror(e), e == EISDIR ? " (give the policy's JSON file)" : "");
        goto out;
    }
    if (n > LB_VALUE_MAX) {
        rc = lb_error_set(err, -E2BIG, "%s: larger than %d bytes, the most lbd reads",
                          is_stdin ? "stdin" : source, LB_VALUE_MAX);
        goto out;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
out:
    free(buf);
    if (!is_stdin)
        fclose(f);
    return rc;
}

static const char *source_name(const struct policy_run *r)
{
    return strcmp(r->source, "-") == 0 ? "stdin" : r->source;
}

/* ---- validation ---- */

/*
 * The validator's verdict on one text: problems, and (kept apart) clamps.
 * Clamps are found for every field that parsed, also when others did not,
 * so one run reports all there is to fix.
 */
struct verdict {
    struct lb_value_problems problems;
    struct lb_value_notes notes;
    struct lb_pool_policy policy;
    int rc; /* 0, -EINVAL or -ENOMEM */
};

static void judge(const char *text, size_t len, struct verdict *v)
{
    memset(v, 0, sizeof(*v));
    v->rc = lb_value_check_policy(text, len, &v->policy, &v->problems, &v->notes);
}

/* True when lbd would apply the policy exactly as written. */
static bool verdict_is_clean(const struct verdict *v)
{
    return v->rc == 0 && v->notes.n == 0;
}

static void clamp_sentence(const struct lb_value_note *n, char *buf, size_t size)
{
    snprintf(buf, size, "%s \"%s\": %s; lbd would use %s", n->field, n->given,
             n->why ? n->why : "out of range", n->used);
}

/* Prints every problem and clamp, one line each on stderr, prefixed with `where`. */
static void print_verdict_lines(const struct verdict *v, const char *where)
{
    char line[400];

    if (v->rc == -ENOMEM) {
        fprintf(stderr, "lbctl policy: out of memory\n");
        return;
    }
    for (size_t i = 0; i < v->problems.n; i++)
        fprintf(stderr, "lbctl policy: %s%s\n", where, v->problems.problem[i].text);
    if (v->problems.total > v->problems.n)
        fprintf(stderr, "lbctl policy: %s... and %zu more problems\n", where,
                v->problems.total - v->problems.n);
    for (size_t i = 0; i < v->notes.n; i++) {
        clamp_sentence(&v->notes.note[i], line, sizeof(line));
        fprintf(stderr, "lbctl policy: %s%s\n", where, line);
    }
}

static size_t verdict_count(const struct verdict *v)
{
    return v->problems.total + v->notes.n;
}

/* {"valid":..,"problems":[{"field":..,"message":..}]}, problems and clamps alike. */
static json_object *verdict_json(const struct verdict *v)
{
    json_object *o = json_object_new_object(), *arr = json_object_new_array();
    char line[400];

    for (size_t i = 0; i < v->problems.n; i++) {
        json_object *p = json_object_new_object();

        json_object_object_add(p, "field", json_object_new_string(v->problems.problem[i].field));
        json_object_object_add(p, "message", json_object_new_string(v->problems.problem[i].text));
        json_object_array_add(arr, p);
    }
    for (size_t i = 0; i < v->notes.n; i++) {
        json_object *p = json_object_new_object();

        clamp_sentence(&v->notes.note[i], line, sizeof(line));
        json_object_object_add(p, "field", json_object_new_string(v->notes.note[i].field));
        json_object_object_add(p, "message", json_object_new_string(line));
        json_object_array_add(arr, p);
    }
    json_object_object_add(o, "valid", json_object_new_boolean(verdict_is_clean(v)));
    json_object_object_add(o, "problems", arr);
    return o;
}

static void print_json(json_object *o, int flags)
{
    printf("%s\n", json_object_to_json_string_ext(o, flags | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

/* ---- etcd ---- */

static bool is_unreachable(int status)
{
    return status == -ECONNREFUSED || status == -EHOSTUNREACH || status == -ETIMEDOUT ||
           status == -EIO || status == -EAGAIN;
}

/*
 * POSTs body to path, trying each endpoint in turn while etcd cannot be
 * reached there.  Returns 0 with *reply (free with lb_etcd_reply_free), or
 * a negative errno with *err.
 */
static int etcd_post(struct policy_run *r, const char *path, const char *body, size_t max,
                     const char *what, struct lb_etcd_reply *reply, char **err)
{
    int rc = -EIO;

    for (size_t tries = 0; tries < r->etcd.n; tries++) {
        struct lb_etcd_request req = {
            .endpoint = r->etcd.v[r->endpoint],
            .path = path,
            .body = body,
            .timeout_ms = r->timeout_ms,
            .max_response = max,
        };

        lb_etcd_reply_free(reply);
        memset(reply, 0, sizeof(*reply));
        rc = lb_etcd_http_post_sync(r->http, &req, reply);
        if (rc == 0)
            return 0;
        lb_error_set(err, rc, "%s at %s: %s", what, req.endpoint, reply->message);
        if (!is_unreachable(rc))
            break;
        r->endpoint = (r->endpoint + 1) % r->etcd.n;
    }
    return rc;
}

static void stored_free(struct stored *s)
{
    free(s->value);
    memset(s, 0, sizeof(*s));
}

/* Reads the key.  Returns 0 with *out (present or not), or a negative errno with *err. */
static int read_stored(struct policy_run *r, struct stored *out, char **err)
{
    struct lb_etcd_reply reply = {0};
    struct lb_etcd_range range;
    char *body = NULL, *why = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    rc = lb_etcd_json_range_request(r->key, strlen(r->key), NULL, 0, 0, 0, &body);
    if (rc) {
        lb_error_set(err, rc, "out of memory");
        goto out;
    }
    rc = etcd_post(r, "/v3/kv/range", body, RANGE_RESPONSE_MAX, "reading the policy", &reply, err);
    if (rc)
        goto out;
    rc = lb_etcd_json_parse_range(reply.body, reply.body_len, &range, &why);
    if (rc) {
        lb_error_set(err, rc, "reading the policy at %s: %s", r->etcd.v[r->endpoint],
                     why ? why : "bad response");
        goto out;
    }
    out->revision = range.header.revision;
    if (range.n_kvs > 0) {
        out->present = true;
        out->value = range.kvs[0].value;
        out->len = range.kvs[0].value_len;
        out->mod_revision = range.kvs[0].mod_revision;
        range.kvs[0].value = NULL; /* ours now */
    }
    lb_etcd_range_free(&range);
out:
    free(why);
    free(body);
    lb_etcd_reply_free(&reply);
    return rc;
}

/*
 * The body of a transaction that puts key=value only while the key's mod
 * revision is still `mod_revision` (0: the key does not exist).  0 or
 * -ENOMEM.
 */
static int txn_request(const char *key, const char *value, int64_t mod_revision, char **out)
{
    json_object *req = json_object_new_object(), *compare = json_object_new_array(),
                *success = json_object_new_array(), *cmp = json_object_new_object(),
                *op = json_object_new_object(), *put = json_object_new_object();
    char rev[24];
    int rc = -ENOMEM;

    *out = NULL;
    if (!req || !compare || !success || !cmp || !op || !put)
        goto fail;
    snprintf(rev, sizeof(rev), "%lld", (long long)mod_revision);
    if (lb_etcd_json_add_bytes(cmp, "key", key, strlen(key)) < 0 ||
        json_object_object_add(cmp, "target", json_object_new_string("MOD")) < 0 ||
        json_object_object_add(cmp, "result", json_object_new_string("EQUAL")) < 0 ||
        json_object_object_add(cmp, "mod_revision", json_object_new_string(rev)) < 0 ||
        lb_etcd_json_add_bytes(put, "key", key, strlen(key)) < 0 ||
        lb_etcd_json_add_bytes(put, "value", value, strlen(value)))
        goto fail;
    json_object_array_add(compare, cmp);
    cmp = NULL;
    json_object_object_add(op, "request_put", put);
    put = NULL;
    json_object_array_add(success, op);
    op = NULL;
    json_object_object_add(req, "compare", compare);
    compare = NULL;
    json_object_object_add(req, "success", success);
    return lb_etcd_json_finish(req, out);
fail:
    json_object_put(req);
    json_object_put(compare);
    json_object_put(success);
    json_object_put(cmp);
    json_object_put(op);
    json_object_put(put);
    return rc;
}

/*
 * Writes value if the key is still at mod_revision.  Returns 0 with
 * *written (false: someone wrote the key meanwhile) and *revision, or a
 * negative errno with *err.
 */
static int write_if_unchanged(struct policy_run *r, const char *value, int64_t mod_revision,
                              bool *written, int64_t *revision, char **err)
{
    struct lb_etcd_reply reply = {0};
    json_object *root = NULL, *ok = NULL, *header = NULL;
    struct lb_etcd_header h = {0};
    char *body = NULL, *why = NULL;
    int rc;

    *written = false;
    rc = txn_request(r->key, value, mod_revision, &body);
    if (rc) {
        lb_error_set(err, rc, "out of memory");
        goto out;
    }
    rc = etcd_post(r, "/v3/kv/txn", body, TXN_RESPONSE_MAX, "writing the policy", &reply, err);
    if (rc)
        goto out;
    rc = lb_etcd_json_parse(reply.body, reply.body_len, &root, &why);
    if (!rc && !json_object_is_type(root, json_type_object))
        rc = -EINVAL;
    if (!rc && json_object_object_get_ex(root, "header", &header))
        rc = lb_etcd_json_parse_header(header, &h, &why);
    if (rc) {
        lb_error_set(err, rc, "writing the policy at %s: unexpected answer (%s)",
                     r->etcd.v[r->endpoint], why ? why : "not a transaction response");
        goto out;
    }
    /* the gateway leaves out fields at their zero value: no "succeeded" is false */
    *written = json_object_object_get_ex(root, "succeeded", &ok) && json_object_get_boolean(ok);
    *revision = h.revision;
out:
    json_object_put(root);
    free(why);
    free(body);
    lb_etcd_reply_free(&reply);
    return rc;
}

/* Checks the flags that name etcd and opens the client.  0 or an exit code (printed). */
static int etcd_open(struct policy_run *r, const struct policy_opts *o)
{
    char *err = NULL;
    int rc;

    if (lb_etcd_opts_endpoints(&o->etcd, &r->etcd, &err) < 0) {
        rc = usage("%s", err ? err : "bad --etcd");
        free(err);
        return rc;
    }
    if (lb_etcd_opts_client(&o->etcd, &r->etcd, NULL, "policy", &r->http, &err) < 0) {
        fprintf(stderr, "lbctl policy: %s\n", err ? err : "cannot set up the etcd client");
        free(err);
        return EXIT_RUNTIME;
    }
    return 0;
}

/* ---- what changed ---- */

/* The effective policy written out with every field, parsed: NULL when out of memory. */
static json_object *effective_json(const struct lb_pool_policy *p)
{
    json_object *o = NULL;
    char *text = NULL;

    if (lb_value_encode_policy(p, &text) == 0)
        lb_etcd_json_parse(text, strlen(text), &o, NULL);
    free(text);
    return o;
}

static const char *member_text(json_object *o)
{
    return json_object_is_type(o, json_type_string) ? json_object_get_string(o)
                                                    : json_object_to_json_string(o);
}

/*
 * Adds one {"field","old","new"} per field whose effective value differs
 * between old and new (health.* inside), in the policy's order.
 */
static void diff_objects(json_object *old, json_object *new, const char *where, json_object *out)
{
    json_object_object_foreach(new, key, nv)
    {
        json_object *ov = NULL, *change;
        char field[64];

        json_object_object_get_ex(old, key, &ov);
        snprintf(field, sizeof(field), "%s%s", where, key);
        if (json_object_is_type(nv, json_type_object)) {
            diff_objects(ov, nv, "health.", out);
            continue;
        }
        if (ov && strcmp(member_text(ov), member_text(nv)) == 0)
            continue;
        change = json_object_new_object();
        json_object_object_add(change, "field", json_object_new_string(field));
        json_object_object_add(change, "old",
                               json_object_new_string(ov ? member_text(ov) : "(none)"));
        json_object_object_add(change, "new", json_object_new_string(member_text(nv)));
        json_object_array_add(out, change);
    }
}

static json_object *policy_changes(const struct lb_pool_policy *old,
                                   const struct lb_pool_policy *new)
{
    json_object *o = effective_json(old), *n = effective_json(new), *out = json_object_new_array();

    if (o && n && out)
        diff_objects(o, n, "", out);
    json_object_put(o);
    json_object_put(n);
    return out;
}

/* ---- the verbs ---- */

/* Fields that are valid but do nothing as combined: one "note:" line each on stderr. */
static void print_inert_fields(const struct policy_run *r, const struct verdict *v)
{
    if (v->rc == 0 && v->policy.queue_timeout_ms > 0 && v->policy.max_conns <= 0)
        fprintf(stderr,
                "lbctl policy: %s: note: queue_timeout has no effect without max_conns (no "
                "backend is ever full, so no client waits); set max_conns to queue clients\n",
                source_name(r));
}

static int cmd_validate(struct policy_run *r, const char *text, size_t len)
{
    struct verdict *v = malloc(sizeof(*v));
    int rc;

    if (!v) {
        fprintf(stderr, "lbctl policy: out of memory\n");
        return EXIT_RUNTIME;
    }
    judge(text, len, v);
    if (v->rc == -ENOMEM) {
        fprintf(stderr, "lbctl policy: out of memory\n");
        free(v);
        return EXIT_RUNTIME;
    }
    rc = verdict_is_clean(v) ? EXIT_OK : EXIT_RUNTIME;
    if (r->json) {
        print_json(verdict_json(v), JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED);
    } else if (rc == EXIT_OK) {
        printf("%s: valid policy for pool %s\n", source_name(r), r->pool);
    } else {
        char where[300];

        snprintf(where, sizeof(where), "%s: ", source_name(r));
        print_verdict_lines(v, where);
        fprintf(stderr,
                "lbctl policy: %s: %zu problem%s, not a policy lbd would apply as written\n",
                source_name(r), verdict_count(v), verdict_count(v) == 1 ? "" : "s");
    }
    fflush(stdout);
    print_inert_fields(r, v);
    free(v);
    return rc;
}

static int cmd_get(struct policy_run *r)
{
    struct stored s;
    struct verdict *v = NULL;
    char *err = NULL;
    int rc;

    rc = read_stored(r, &s, &err);
    if (rc) {
        fprintf(stderr, "lbctl policy: %s\n", err ? err : "cannot read the policy");
        free(err);
        return EXIT_RUNTIME;
    }
    if (!s.present) {
        fprintf(stderr, "lbctl policy: no policy at %s (pool %s runs lbd's defaults)\n", r->key,
                r->pool);
        stored_free(&s);
        return EXIT_RUNTIME;
    }
    if (r->json) {
        fwrite(s.value, 1, s.len, stdout);
        if (s.len == 0 || s.value[s.len - 1] != '\n')
            putchar('\n');
    } else {
        json_object *o = NULL;

        if (lb_etcd_json_parse(s.value, s.len, &o, NULL) == 0)
            print_json(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED);
        else
            printf("%s\n", s.value);
    }
    /* Say what lbd thinks of it, where a script reading stdout is not disturbed. */
    v = malloc(sizeof(*v));
    if (v) {
        judge(s.value, s.len, v);
        if (v->rc == -EINVAL && v->problems.total == v->problems.n_unknown) {
            print_verdict_lines(v, "warning: ");
            fprintf(stderr, "lbctl policy: warning: lbd ignores the unknown fields above and "
                            "applies the rest\n");
        } else if (v->rc == -EINVAL) {
            print_verdict_lines(v, "warning: ");
            fprintf(stderr,
                    "lbctl policy: warning: lbd refuses this policy and keeps the last good one "
                    "it read (or its defaults)\n");
        } else if (v->rc == 0 && v->notes.n) {
            print_verdict_lines(v, "warning: ");
        }
    }
    free(v);
    stored_free(&s);
    return EXIT_OK;
}

/* Prints what the write did: the changes, or that there were none. */
static void print_set_result(const struct policy_run *r, bool written, int64_t revision,
                             json_object *changes, bool old_present, bool old_valid)
{
    size_t n = json_object_array_length(changes);

    if (r->json) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "pool", json_object_new_string(r->pool));
        json_object_object_add(o, "key", json_object_new_string(r->key));
        json_object_object_add(o, "written", json_object_new_boolean(written));
        json_object_object_add(o, "revision", json_object_new_int64(revision));
        json_object_object_add(o, "changes", json_object_get(changes));
        print_json(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED);
        return;
    }
    if (!written) {
        printf("policy %s: unchanged (%s already holds it)\n", r->pool, r->key);
        return;
    }
    if (!old_present)
        printf("policy %s: written to %s (revision %lld); before: none, lbd's defaults\n", r->pool,
               r->key, (long long)revision);
    else if (!old_valid)
        printf("policy %s: written to %s (revision %lld); before: a policy lbd refused (it kept "
               "the last good one), so the fields below are against lbd's defaults\n",
               r->pool, r->key, (long long)revision);
    else
        printf("policy %s: written to %s (revision %lld)\n", r->pool, r->key, (long long)revision);
    if (n == 0) {
        printf(old_valid ? "  no field changes what lbd runs (only the text differs)\n"
                         : "  every field at its default\n");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_array_get_idx(changes, i), *f, *o, *nv;

        json_object_object_get_ex(c, "field", &f);
        json_object_object_get_ex(c, "old", &o);
        json_object_object_get_ex(c, "new", &nv);
        printf("  %-16s %s -> %s\n", json_object_get_string(f), json_object_get_string(o),
               json_object_get_string(nv));
    }
}

static int cmd_set(struct policy_run *r, const struct policy_opts *o, const char *text, size_t len)
{
    struct verdict *now = NULL, *before = NULL;
    struct lb_pool_policy old_policy;
    json_object *parsed = NULL, *changes = NULL;
    struct stored s = {0};
    char *value = NULL, *err = NULL, where[300];
    bool written = false, old_present = false, old_valid = false;
    int64_t revision = 0;
    int rc = EXIT_RUNTIME;

    now = malloc(sizeof(*now));
    before = malloc(sizeof(*before));
    if (!now || !before) {
        fprintf(stderr, "lbctl policy: out of memory\n");
        goto out;
    }
    judge(text, len, now);
    if (!verdict_is_clean(now)) {
        snprintf(where, sizeof(where), "%s: ", source_name(r));
        print_verdict_lines(now, where);
        if (now->rc != -ENOMEM)
            fprintf(stderr, "lbctl policy: %s: %zu problem%s, nothing written to %s\n",
                    source_name(r), verdict_count(now), verdict_count(now) == 1 ? "" : "s", r->key);
        goto out;
    }
    print_inert_fields(r, now);
    /* What is stored: the input without its whitespace, fields as written. */
    if (lb_etcd_json_parse(text, len, &parsed, NULL) != 0 ||
        lb_etcd_json_finish(parsed, &value) != 0) {
        fprintf(stderr, "lbctl policy: out of memory\n");
        goto out;
    }
    rc = etcd_open(r, o);
    if (rc)
        goto out;
    rc = EXIT_RUNTIME;
    if (read_stored(r, &s, &err) < 0)
        goto fail;
    lb_pool_policy_defaults(&old_policy);
    old_present = s.present;
    if (s.present) {
        judge(s.value, s.len, before);
        old_valid = before->rc == 0;
        if (old_valid)
            old_policy = before->policy;
    }
    if (s.present && s.len == strlen(value) && memcmp(s.value, value, s.len) == 0) {
        changes = json_object_new_array();
        print_set_result(r, false, s.revision, changes, true, old_valid);
        rc = EXIT_OK;
        goto out;
    }
    if (write_if_unchanged(r, value, s.present ? s.mod_revision : 0, &written, &revision, &err) < 0)
        goto fail;
    if (!written) {
        /* Someone wrote the key since we read it -- or our own write went through on an
         * endpoint that failed to answer, and this is the retry: look. */
        stored_free(&s);
        if (read_stored(r, &s, &err) < 0)
            goto fail;
        if (!s.present || s.len != strlen(value) || memcmp(s.value, value, s.len) != 0) {
            fprintf(stderr,
                    "lbctl policy: %s changed while lbctl was writing it (now at revision "
                    "%lld); nothing written: look at it (lbctl policy get %s) and run set "
                    "again\n",
                    r->key, (long long)s.mod_revision, r->pool);
            goto out;
        }
        written = true;
        revision = s.mod_revision;
    }
    changes = policy_changes(&old_policy, &now->policy);
    print_set_result(r, true, revision, changes, old_present, old_valid);
    rc = EXIT_OK;
    goto out;
fail:
    fprintf(stderr, "lbctl policy: %s\n", err ? err : "etcd failed");
out:
    json_object_put(changes);
    stored_free(&s);
    free(value);
    free(err);
    free(now);
    free(before);
    return rc;
}

/* ---- main ---- */

int lbctl_policy_main(int argc, char **argv, const char *output)
{
    struct policy_opts opts;
    struct policy_run r;
    char prefix[LB_PREFIX_MAX], **pos = NULL, *err = NULL, *text = NULL;
    size_t npos = 0, len = 0;
    int rc;

    memset(&opts, 0, sizeof(opts));
    memset(&r, 0, sizeof(r));
    rc = lb_settings_parse(policy_rows, N_ROWS, &opts, argc, argv, 0, &pos, &npos, &err);
    if (rc < 0) {
        rc = usage("%s", err ? err : "cannot read flags");
        goto out;
    }
    if (opts.help || (npos == 1 && strcmp(pos[0], "help") == 0)) {
        print_help();
        rc = EXIT_OK;
        goto out;
    }
    if (npos == 0) {
        rc = usage("expected get, validate or set, then POOL");
        goto out;
    }
    r.verb = pos[0];
    if (strcmp(r.verb, "get") != 0 && strcmp(r.verb, "validate") != 0 &&
        strcmp(r.verb, "set") != 0) {
        static const char *const verbs[] = {"get", "validate", "set"};
        const char *near = lb_settings_nearest(r.verb, verbs, 3);

        if (near)
            rc = usage("unknown command \"%s\" (did you mean %s?)", r.verb, near);
        else
            rc = usage("unknown command \"%s\": expected get, validate or set", r.verb);
        goto out;
    }
    if (npos < 2) {
        rc = usage("%s: expected POOL", r.verb);
        goto out;
    }
    if (npos > (strcmp(r.verb, "get") == 0 ? 2u : 3u)) {
        rc = usage("%s: unexpected argument \"%s\"", r.verb, pos[strcmp(r.verb, "get") ? 3 : 2]);
        goto out;
    }
    r.pool = pos[1];
    r.source = npos > 2 ? pos[2] : "-";
    r.json = strcmp(opts.output ? opts.output : output ? output : "table", "json") == 0;
    r.timeout_ms = (long)opts.timeout_ms;
    if (!lb_key_name_is_valid(r.pool)) {
        rc = usage("pool \"%s\": use 1..%d characters of [A-Za-z0-9._:-]", r.pool, LB_NAME_MAX - 1);
        goto out;
    }
    if (lb_key_prefix_normalize(opts.prefix, prefix, &err) < 0) {
        rc = usage("--prefix: %s", err ? err : "invalid");
        goto out;
    }
    if (lb_key_format(prefix, LB_KEY_CONFIG, r.pool, NULL, r.key, sizeof(r.key)) < 0) {
        rc = usage("--prefix and the pool make a key that is too long");
        goto out;
    }
    if (strcmp(r.verb, "get") != 0) {
        rc = read_source(r.source, &text, &len, &err);
        if (rc < 0) {
            fprintf(stderr, "lbctl policy: %s\n", err ? err : "cannot read the policy");
            rc = EXIT_RUNTIME;
            goto out;
        }
    }
    if (strcmp(r.verb, "validate") == 0) {
        rc = cmd_validate(&r, text, len);
        goto out;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "lbctl policy: cannot initialise libcurl\n");
        rc = EXIT_RUNTIME;
        goto out;
    }
    if (strcmp(r.verb, "get") == 0) {
        rc = etcd_open(&r, &opts);
        if (rc == 0)
            rc = cmd_get(&r);
    } else {
        rc = cmd_set(&r, &opts, text, len);
    }
    lb_etcd_http_free(r.http);
    curl_global_cleanup();
out:
    lb_etcd_endpoints_free(&r.etcd);
    free(text);
    free(err);
    free(pos);
    lb_settings_free(policy_rows, N_ROWS, &opts);
    return rc;
}
