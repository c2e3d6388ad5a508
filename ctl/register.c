/*
 * `lbctl register`, a small loop in its own process:
 *
 *   no lease   -> grant (ttl), then put the backend key with the lease
 *   registered -> sleep ttl/3, keepalive, then read the key back:
 *                   lease gone    -> register again at once (new lease)
 *                   key deleted   -> put it back under the same lease
 *                   key rewritten -> put ours back (and say who held it)
 *   failure    -> next endpoint, short back-off (never longer than ttl/3,
 *                 so a flapping etcd still sees keepalives in time)
 *   SIGTERM/SIGINT -> revoke, exit
 *
 * So within one TTL of etcd answering again, the key is back: a lease that
 * expired while etcd was out of reach (or that etcd lost with its data) is
 * replaced, and a key someone deleted is put back.
 *
 * With --check (register_check.h) the key follows the backend's readiness:
 * nothing is granted or put until the check has passed `rise` times in a
 * row; after `fall` failures in a row the key is deleted while the lease
 * is kept alive, and put again (under the same lease) once it rises.  All
 * of the above -- putting the key back, registering again after a lost
 * lease -- happens only while the check passes.  A transition asks etcd at
 * once instead of at the next keepalive.
 *
 * etcd requests block, each bounded by a timeout (which bounds how long a
 * signal or a check can wait).  Between them the loop sleeps in one place,
 * wait_ms(): on the signal fd alone, or inside lbctl_check_wait(), which
 * runs the check without blocking while it waits.  The signals are blocked
 * for the whole run and read from a signalfd, so a signal never interrupts
 * a request half way and is never lost.  The etcd client (TLS, login,
 * token renewal), the JSON, the key schema and the reader of backend values
 * are the watcher's own (lb_etcd_http.h, lb_lease.h, lb_key.h, lb_value.h):
 * the value is built here ("meta" is lbctl's alone) and read back with the
 * reader lbd uses before it is ever put.
 *
 * An etcd outage is logged like lbd logs it (lb_outage.h): its first
 * failure, then one line per 30 s with the count and how long the lease
 * has left, and one line when etcd answers again.
 */
#include "register.h"
#include "lb_duration.h"
#include "lb_error.h"
#include "lb_etcd_auth.h"
#include "lb_etcd_http.h"
#include "lb_etcd_json.h"
#include "lb_etcd_opts.h"
#include "lb_key.h"
#include "lb_lease.h"
#include "lb_log.h"
#include "lb_outage.h"
#include "lb_settings.h"
#include "lb_value.h"
#include "register_check.h"

#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#define EXIT_OK      0
#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

#define REQUEST_TIMEOUT_MS   5000
#define REVOKE_TIMEOUT_MS    2000
#define DELETE_RESPONSE_MAX  (64 * 1024)
#define CHECK_TIMEOUT_MAX_MS 2000 /* the default check timeout: the interval, at most this */
#define PROGRESS_FIRST_S     10.0 /* "waiting for the check" lines: every 10 s for a minute, */
#define PROGRESS_LATER_S     60.0 /* then every minute */

struct register_opts {
    struct lb_etcd_opts etcd;
    char *prefix;
    char *pool;
    char *id;
    char *addr;
    int64_t weight;
    char *zone;
    struct lb_strlist meta;
    int64_t ttl_ms;
    char *check;
    int64_t check_interval_ms;
    int64_t check_timeout_ms;
    int64_t rise;
    int64_t fall;
    bool help;
};

#define O(f) offsetof(struct register_opts, f)
static const struct lb_setting register_rows[] = {
    LB_ETCD_SETTINGS("LBCTL_", struct register_opts, etcd),
    {"prefix", 0, "LBCTL_PREFIX", LB_SETTING_STRING, O(prefix), 0, LB_PREFIX_MAX - 2, "/lb/", NULL,
     "PREFIX", "key prefix"},
    {"pool", 0, "LBCTL_POOL", LB_SETTING_STRING, O(pool), 0, LB_NAME_MAX - 1, NULL, NULL, "POOL",
     "pool to join (required)"},
    {"id", 0, "LBCTL_ID", LB_SETTING_STRING, O(id), 0, LB_NAME_MAX - 1, NULL, NULL, "ID",
     "backend id, unique in the pool (required)"},
    {"addr", 0, "LBCTL_ADDR", LB_SETTING_STRING, O(addr), 0, LB_ADDR_MAX - 1, NULL, NULL,
     "HOST:PORT", "address lbd connects to (required)"},
    {"weight", 0, "LBCTL_WEIGHT", LB_SETTING_INT, O(weight), 0, LB_WEIGHT_MAX, "100", NULL, "N",
     "share of new connections, 0..1000 (0 = none)"},
    {"zone", 0, "LBCTL_ZONE", LB_SETTING_STRING, O(zone), 0, LB_ZONE_MAX - 1, NULL, NULL, "ZONE",
     "the backend's zone, as lbd --zone names it (up to 63 of [A-Za-z0-9._:-]): with the "
     "pool's zone_affinity, an lbd in the same zone keeps new connections there"},
    {"meta", 0, "LBCTL_META", LB_SETTING_LIST, O(meta), 0, 0, NULL, NULL, "KEY=VALUE",
     "a string for other readers of etcd, in the value's \"meta\" object (lbd ignores it); "
     "the env form is comma-separated"},
    {"ttl", 0, "LBCTL_TTL", LB_SETTING_DURATION, O(ttl_ms), 2000, 3600 * 1000, "10s", NULL,
     "DURATION", "lease time to live; the key dies this long after us"},
    {"check", 0, "LBCTL_CHECK", LB_SETTING_STRING, O(check), 0, 512, NULL, NULL, "CHECK",
     "register only while this passes: tcp (connect to --addr), tcp://HOST:PORT, or "
     "http://HOST:PORT/PATH (a 2xx or 3xx status passes); default: always registered"},
    {"check-interval", 0, "LBCTL_CHECK_INTERVAL", LB_SETTING_DURATION, O(check_interval_ms), 100,
     3600 * 1000, "2s", NULL, "DURATION", "time between the end of a check and the next"},
    {"check-timeout", 0, "LBCTL_CHECK_TIMEOUT", LB_SETTING_DURATION, O(check_timeout_ms), 10,
     60 * 1000, NULL, NULL, "DURATION",
     "a check that has not passed by then fails (default: the interval, at most 2s)"},
    {"rise", 0, "LBCTL_RISE", LB_SETTING_INT, O(rise), 1, 100, "2", NULL, "N",
     "passes in a row before the key is put"},
    {"fall", 0, "LBCTL_FALL", LB_SETTING_INT, O(fall), 1, 100, "3", NULL, "N",
     "failures in a row before the key is deleted"},
    {"help", 'h', NULL, LB_SETTING_BOOL, O(help), 0, 0, NULL, NULL, NULL, "show this help"},
};
#undef O
#define N_ROWS (sizeof(register_rows) / sizeof(register_rows[0]))

const struct lb_setting *lbctl_register_settings(size_t *n)
{
    *n = N_ROWS;
    return register_rows;
}

/* What the loop needs, checked and derived from the flags. */
struct registration {
    struct lb_etcd_endpoints etcd;
    size_t endpoint;
    char key[LB_PREFIX_MAX + 2 * LB_NAME_MAX + 32];
    char *value;
    const char *pool, *id, *addr;
    char zone_kv[LB_ZONE_MAX + 8]; /* " zone=a" for the log lines, or "" */
    int64_t ttl_s;
    long timeout_ms;
    int64_t lease;
    struct lb_etcd_http *http;
    struct lb_outage outage;
    double lease_ok_at; /* when etcd last confirmed the lease (monotonic s) */
    sigset_t signals;
    int sigfd;
    struct lbctl_check *check; /* NULL without --check: always ready */
    bool in_etcd;              /* our key is put, as far as etcd last told us */
    bool rose;                 /* the check rose since the key was last put: say why */
    double waiting_since;      /* when the check was last seen down (progress lines) */
    double progress_at;        /* the next "waiting for the check" line */
};

static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    lb_settings_usage_line("lbctl register", "lbctl register", fmt, ap);
    va_end(ap);
    return EXIT_USAGE;
}

static void print_help(void)
{
    printf("usage: lbctl register --etcd URL[,URL...] [--prefix /lb/] --pool POOL --id ID\n"
           "                      --addr HOST:PORT [--weight N] [--ttl 10s]\n"
           "                      [--zone ZONE] [--meta KEY=VALUE ...]\n"
           "                      [--check tcp|tcp://HOST:PORT|http://HOST:PORT/PATH]\n"
           "                      [--check-interval 2s] [--check-timeout 2s] [--rise 2] "
           "[--fall 3]\n"
           "                      [--etcd-ca FILE] [--etcd-cert FILE --etcd-key FILE]\n"
           "                      [--etcd-user-file FILE]\n\n"
           "Registers this backend in etcd under a lease and keeps it registered until\n"
           "SIGTERM or SIGINT, which revoke the lease so it leaves the pool at once.\n"
           "If the lease is lost or the key deleted, it registers again within one TTL.\n"
           "With --check, the key exists only while the backend's check passes: it is put\n"
           "after --rise passes in a row and deleted after --fall failures in a row.\n"
           "The key's value is {\"addr\":...,\"weight\":...} with \"zone\" (--zone) and\n"
           "\"meta\" (--meta) when given; an lbd started with --zone keeps traffic in its\n"
           "zone when the pool's policy sets zone_affinity.\n\n"
           "Exit codes: 0 deregistered, 1 the lease could not be revoked, 2 usage error.\n\n");
    lb_settings_print_help(stdout, register_rows, N_ROWS);
}

static double monotonic_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int add_member(json_object *obj, const char *name, json_object *v)
{
    if (!v || json_object_object_add(obj, name, v) < 0) {
        json_object_put(v);
        return -ENOMEM;
    }
    return 0;
}

/*
 * The --meta items as a JSON object of strings.  Returns 0 with *meta, or
 * EXIT_USAGE (message printed) or -ENOMEM with *meta NULL.
 */
static int meta_object(const struct lb_strlist *items, json_object **meta)
{
    int rc = 0;

    *meta = json_object_new_object();
    if (!*meta)
        return -ENOMEM;
    for (size_t i = 0; i < items->n && !rc; i++) {
        const char *item = items->v[i], *eq = strchr(item, '=');
        char *key;

        if (!eq || eq == item) {
            rc = usage("--meta \"%s\": want KEY=VALUE, with a KEY", item);
            break;
        }
        key = strndup(item, (size_t)(eq - item));
        if (!key)
            rc = -ENOMEM;
        else if (json_object_object_get_ex(*meta, key, NULL))
            rc = usage("--meta: key \"%s\" given twice", key);
        else
            rc = add_member(*meta, key, json_object_new_string(eq + 1));
        free(key);
    }
    if (rc) {
        json_object_put(*meta);
        *meta = NULL;
    }
    return rc;
}

/*
 * r->value: {"addr":...,"weight":...}, with "zone" and "meta" when given,
 * written by lbd's own encoder and read back by its reader, so lbctl refuses
 * exactly the zones lbd would skip the value for, and never writes a value
 * larger than lbd reads (LB_VALUE_MAX).  lbd ignores "meta"; it is there for
 * other readers of etcd.  Returns 0 or EXIT_USAGE (message printed).
 */
static int make_value(struct registration *r, const struct register_opts *o)
{
    struct lb_backend_spec spec = {.weight = (int)o->weight}, back;
    json_object *meta = NULL;
    char *err = NULL;
    int rc;

    snprintf(spec.addr, sizeof(spec.addr), "%s", o->addr);
    snprintf(spec.zone, sizeof(spec.zone), "%s", o->zone ? o->zone : "");
    if (lb_value_check_zone(spec.zone, &err) < 0) {
        rc = usage("--zone \"%s\": %s", spec.zone, err ? err : "invalid");
        free(err);
        return rc;
    }
    if (o->meta.n) {
        rc = meta_object(&o->meta, &meta);
        if (rc)
            return rc < 0 ? usage("out of memory") : rc;
    }
    free(r->value);
    if (lb_value_encode_backend_meta(&spec, meta, &r->value) < 0)
        return usage("out of memory"); /* addr, weight and zone were checked */
    if (lb_value_parse_backend(r->value, strlen(r->value), &back, &err) < 0) {
        rc = usage("--meta: %s", err ? err : "invalid");
        free(err);
        return rc;
    }
    if (spec.zone[0])
        snprintf(r->zone_kv, sizeof(r->zone_kv), " zone=%s", spec.zone);
    return 0;
}

/* Checks the flags and fills r.  Returns 0 or EXIT_USAGE (message printed). */
static int prepare(struct registration *r, const struct register_opts *o)
{
    char prefix[LB_PREFIX_MAX], *err = NULL;
    int rc;

    if (!o->pool || !o->id || !o->addr)
        return usage("missing%s%s%s (--pool, --id and --addr are required)",
                     o->pool ? "" : " --pool", o->id ? "" : " --id", o->addr ? "" : " --addr");
    if (!lb_key_name_is_valid(o->pool))
        return usage("--pool \"%s\": use 1..%d characters of [A-Za-z0-9._:-]", o->pool,
                     LB_NAME_MAX - 1);
    if (!lb_key_name_is_valid(o->id))
        return usage("--id \"%s\": use 1..%d characters of [A-Za-z0-9._:-]", o->id,
                     LB_NAME_MAX - 1);
    if (lb_value_check_addr(o->addr, &err) < 0) {
        rc = usage("--addr \"%s\": %s", o->addr, err ? err : "not host:port");
        free(err);
        return rc;
    }
    if (lb_key_prefix_normalize(o->prefix, prefix, &err) < 0) {
        rc = usage("--prefix: %s", err ? err : "invalid");
        free(err);
        return rc;
    }
    if (lb_etcd_opts_endpoints(&o->etcd, &r->etcd, &err) < 0) {
        rc = usage("%s", err);
        free(err);
        return rc;
    }
    if (lb_key_format(prefix, LB_KEY_BACKEND, o->pool, o->id, r->key, sizeof(r->key)) < 0)
        return usage("--prefix, --pool and --id make a key that is too long");
    rc = make_value(r, o);
    if (rc)
        return rc;
    r->pool = o->pool;
    r->id = o->id;
    r->addr = o->addr;
    r->ttl_s = (o->ttl_ms + 999) / 1000;
    /* a request may not eat the margin a keepalive has before the lease ends */
    r->timeout_ms = (long)(o->ttl_ms / 3 < REQUEST_TIMEOUT_MS ? o->ttl_ms / 3 : REQUEST_TIMEOUT_MS);
    if (o->check) {
        struct lbctl_check_spec check;

        if (lbctl_check_parse(o->check, o->addr, &check, &err) < 0) {
            rc = usage("%s", err ? err : "--check: invalid");
            free(err);
            return rc;
        }
        check.interval_ms = o->check_interval_ms;
        check.timeout_ms = o->check_timeout_ms;
        if (!check.timeout_ms)
            check.timeout_ms = o->check_interval_ms < CHECK_TIMEOUT_MAX_MS ? o->check_interval_ms
                                                                           : CHECK_TIMEOUT_MAX_MS;
        check.rise = (int)o->rise;
        check.fall = (int)o->fall;
        if (lbctl_check_new(&check, &r->check, &err) < 0) {
            fprintf(stderr, "lbctl register: %s\n", err ? err : "cannot set up the check");
            free(err);
            return EXIT_RUNTIME;
        }
    }
    if (lb_etcd_opts_client(&o->etcd, &r->etcd, NULL, "register", &r->http, &err) < 0) {
        rc = usage("%s", err ? err : "cannot set up the etcd client");
        free(err);
        return rc;
    }
    return 0;
}

static int ms_until(double when)
{
    double ms = (when - monotonic_s()) * 1000.;

    if (ms <= 0)
        return 0;
    return ms > 3600e3 ? 3600 * 1000 : (int)ms + 1;
}

/* A signal waiting on the signal fd, or 0. */
static int take_signal(struct registration *r)
{
    struct signalfd_siginfo si;

    if (read(r->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
        return (int)si.ssi_signo;
    return 0;
}

/*
 * Sleeps up to ms, running the check meanwhile.  Returns the signal that
 * ended the wait, or 0 when the time ran out or the check changed state
 * (then *changed is true).
 */
static int wait_ms(struct registration *r, int64_t ms, bool *changed)
{
    double end = monotonic_s() + (double)ms / 1000.;

    *changed = false;
    for (;;) {
        int left = ms_until(end), rc = 0, sig;
        bool ready = false;

        if (r->check) {
            rc = lbctl_check_wait(r->check, r->sigfd, left, &ready);
            if (rc > 0)
                *changed = true;
            else if (rc < 0)
                left = left < 100 ? left : 100; /* cannot poll the check: do not spin */
        }
        if (!r->check || rc < 0) {
            struct pollfd p = {.fd = r->sigfd, .events = POLLIN};

            ready = poll(&p, 1, left) > 0 && (p.revents & POLLIN);
        }
        if (ready && (sig = take_signal(r)) > 0)
            return sig;
        if (*changed || monotonic_s() >= end)
            return 0;
    }
}

/* Back-off after the n-th failure in a row: 200ms doubling, capped at ttl/3, with jitter. */
static int64_t retry_delay_ms(const struct registration *r, unsigned failures)
{
    int64_t cap = r->ttl_s * 1000 / 3, delay = 200;

    for (unsigned i = 0; i < failures && delay < cap; i++)
        delay *= 2;
    if (delay > cap)
        delay = cap;
    return delay / 2 + (int64_t)(random() % (delay / 2 + 1));
}

/* What the lease has left, as etcd last confirmed it, for the outage lines. */
static const char *lease_left(const struct registration *r, char *buf, size_t size)
{
    double left = (double)r->ttl_s - (monotonic_s() - r->lease_ok_at);

    if (!r->lease)
        return "none";
    if (left <= 0)
        return "expired";
    return lb_duration_format((int64_t)(left * 1000.0), buf, size);
}

/*
 * A step failed: always a debug line; a warning when the outage limiter
 * says so (the first failure, then every 30 s).
 */
static void note_failure(struct registration *r, const char *step, const char *err,
                         int64_t retry_ms)
{
    char qerr[512], delay[32], left[32], down[32];
    const char *endpoint = r->etcd.v[r->endpoint];

    lb_log_quote(qerr, sizeof(qerr), err ? err : "unknown");
    lb_duration_format(retry_ms, delay, sizeof(delay));
    LB_DEBUG("register",
             "msg=\"etcd %s failed, retrying\" pool=%s id=%s endpoint=%s error=%s "
             "retry_in=%s",
             step, r->pool, r->id, endpoint, qerr, delay);
    switch (lb_outage_failed(&r->outage, monotonic_s())) {
    case LB_OUTAGE_FIRST:
        LB_WARN("register",
                "msg=\"etcd %s failed, retrying\" pool=%s id=%s endpoint=%s error=%s "
                "retry_in=%s lease_left=%s",
                step, r->pool, r->id, endpoint, qerr, delay, lease_left(r, left, sizeof(left)));
        break;
    case LB_OUTAGE_STILL:
        LB_WARN(
            "register",
            "msg=\"etcd still failing\" for=%s failures=%llu step=%s pool=%s "
            "id=%s endpoint=%s error=%s retry_in=%s lease_left=%s",
            lb_duration_format((int64_t)(lb_outage_duration(&r->outage, monotonic_s()) * 1000.0),
                               down, sizeof(down)),
            (unsigned long long)r->outage.failures, step, r->pool, r->id, endpoint, qerr, delay,
            lease_left(r, left, sizeof(left)));
        break;
    case LB_OUTAGE_QUIET:
        break;
    }
}

/* etcd answered and the key is in place: close an announced outage with one line. */
static void note_success(struct registration *r, const char *what)
{
    uint64_t failures;
    double down_s;

    r->lease_ok_at = monotonic_s();
    if (lb_outage_ended(&r->outage, r->lease_ok_at, &down_s, &failures))
        LB_INFO("register",
                "msg=\"etcd reachable again after %.1fs, %s\" pool=%s id=%s "
                "lease=%lld endpoint=%s failures=%llu",
                down_s, what, r->pool, r->id, (long long)r->lease, r->etcd.v[r->endpoint],
                (unsigned long long)failures);
}

/* Grants a lease (unless we hold one) and puts the key with it.  0 or a negative errno. */
static int register_once(struct registration *r, const char **step, char **err)
{
    const char *endpoint = r->etcd.v[r->endpoint];
    char ttl_text[32], reason[LBCTL_CHECK_URL_MAX + 300];
    int64_t granted = 0;
    int rc;

    if (!r->lease) {
        *step = "lease grant";
        rc = lb_lease_grant(r->http, endpoint, r->ttl_s, r->timeout_ms, &r->lease, &granted, err);
        if (rc)
            return rc;
    }
    *step = "put";
    rc = lb_lease_put(r->http, endpoint, r->key, r->value, r->lease, r->timeout_ms, err);
    if (rc) {
        if (rc == -ENOENT)
            r->lease = 0; /* lease vanished between grant and put */
        return rc;
    }
    if (r->check && r->rose)
        LB_INFO("register",
                "msg=\"registered\" pool=%s id=%s addr=%s%s key=%s lease=%lld ttl=%s "
                "endpoint=%s reason=%s",
                r->pool, r->id, r->addr, r->zone_kv, r->key, (long long)r->lease,
                lb_duration_format(r->ttl_s * 1000, ttl_text, sizeof(ttl_text)), endpoint,
                lb_log_quote(reason, sizeof(reason), lbctl_check_reason(r->check)));
    else
        LB_INFO("register",
                "msg=\"registered\" pool=%s id=%s addr=%s%s key=%s lease=%lld ttl=%s "
                "endpoint=%s",
                r->pool, r->id, r->addr, r->zone_kv, r->key, (long long)r->lease,
                lb_duration_format(r->ttl_s * 1000, ttl_text, sizeof(ttl_text)), endpoint);
    r->rose = false;
    return 0;
}

/*
 * The check fell: deletes the key and keeps the lease (the keepalives go
 * on), so that the key can be put again as soon as the check rises.
 * Returns 0 or a negative errno with *step and *err.
 */
static int unregister_key(struct registration *r, const char **step, char **err)
{
    const char *endpoint = r->etcd.v[r->endpoint];
    struct lb_etcd_reply reply = {0};
    struct lb_etcd_request req = {
        .endpoint = endpoint,
        .path = "/v3/kv/deleterange",
        .timeout_ms = r->timeout_ms,
        .max_response = DELETE_RESPONSE_MAX,
    };
    char *body = NULL, why[LBCTL_CHECK_URL_MAX + 300], reason[sizeof(why) + 32];
    int rc;

    *step = "delete";
    rc = lb_etcd_json_delete_request(r->key, strlen(r->key), &body);
    if (rc) {
        lb_error_set(err, rc, "out of memory");
        goto out;
    }
    req.body = body;
    rc = lb_etcd_http_post_sync(r->http, &req, &reply);
    if (rc) {
        lb_error_set(err, rc, "delete at %s: %s", endpoint, reply.message);
        goto out;
    }
    snprintf(why, sizeof(why), "%s, key deleted", lbctl_check_reason(r->check));
    LB_INFO("register", "msg=\"unregistered\" pool=%s id=%s addr=%s key=%s lease=%lld reason=%s",
            r->pool, r->id, r->addr, r->key, (long long)r->lease,
            lb_log_quote(reason, sizeof(reason), why));
out:
    free(body);
    lb_etcd_reply_free(&reply);
    return rc;
}

/*
 * One keepalive round: renew the lease, then (when the key should be
 * there) make sure the key is still ours.  Returns 0, -ENOENT when the
 * lease is gone, or another negative errno (with *step and *err) when etcd
 * could not be asked.
 */
static int keep_registered(struct registration *r, bool want_key, const char **step, char **err)
{
    const char *endpoint = r->etcd.v[r->endpoint];
    enum lb_lease_key_state state;
    int64_t ttl = 0, holder = 0;
    int rc;

    *step = "lease keepalive";
    rc = lb_lease_keepalive(r->http, endpoint, r->lease, r->timeout_ms, &ttl, err);
    if (rc || !want_key)
        return rc;
    *step = "key check";
    rc = lb_lease_check_key(r->http, endpoint, r->key, r->value, r->lease, r->timeout_ms, &state,
                            &holder, err);
    if (rc)
        return rc;
    if (state == LB_LEASE_KEY_OURS)
        return 0;
    if (state == LB_LEASE_KEY_MISSING)
        LB_WARN("register",
                "msg=\"backend key deleted while its lease lives, putting it back\" "
                "pool=%s id=%s key=%s lease=%lld",
                r->pool, r->id, r->key, (long long)r->lease);
    else
        LB_WARN("register",
                "msg=\"backend key was overwritten, putting ours back (is another "
                "registrar using the same --pool and --id?)\" pool=%s id=%s key=%s lease=%lld "
                "holder_lease=%lld",
                r->pool, r->id, r->key, (long long)r->lease, (long long)holder);
    *step = "put";
    return lb_lease_put(r->http, endpoint, r->key, r->value, r->lease, r->timeout_ms, err);
}

/* Revokes the lease, trying each endpoint once.  Returns the exit code. */
static int deregister(struct registration *r, int sig)
{
    const char *signame = sig == SIGTERM ? "SIGTERM" : "SIGINT";
    char *err = NULL, qerr[512];
    int rc = -EIO;

    if (!r->lease) {
        LB_INFO("register", "msg=\"stopping, was not registered\" pool=%s id=%s signal=%s", r->pool,
                r->id, signame);
        return EXIT_OK;
    }
    for (size_t i = 0; i < r->etcd.n; i++) {
        free(err);
        err = NULL;
        rc = lb_lease_revoke(r->http, r->etcd.v[r->endpoint], r->lease, REVOKE_TIMEOUT_MS, &err);
        if (rc == 0 || rc == -ENOENT)
            break; /* -ENOENT: the lease is already gone, and the key with it */
        LB_WARN("register", "msg=\"cannot revoke the lease\" pool=%s id=%s endpoint=%s error=%s",
                r->pool, r->id, r->etcd.v[r->endpoint],
                lb_log_quote(qerr, sizeof(qerr), err ? err : "unknown"));
        r->endpoint = (r->endpoint + 1) % r->etcd.n;
    }
    if (rc == 0 || rc == -ENOENT) {
        LB_INFO("register", "msg=\"deregistered\" pool=%s id=%s lease=%lld signal=%s", r->pool,
                r->id, (long long)r->lease, signame);
        free(err);
        return EXIT_OK;
    }
    fprintf(stderr,
            "lbctl register: could not revoke lease %lld, the key expires within its TTL (%llds): "
            "%s\n",
            (long long)r->lease, (long long)r->ttl_s, err ? err : "etcd unreachable");
    free(err);
    return EXIT_RUNTIME;
}

/* The lease is gone (keepalive or put said so): forget it and say what comes next. */
static void lease_lost(struct registration *r, bool want_key)
{
    if (want_key)
        LB_WARN("register",
                "msg=\"lease lost (it expired while etcd was out of reach, "
                "or etcd lost its data), registering again\" pool=%s id=%s lease=%lld",
                r->pool, r->id, (long long)r->lease);
    else
        LB_WARN("register",
                "msg=\"lease lost while the backend is not ready; a new one is granted when its "
                "check passes\" pool=%s id=%s lease=%lld",
                r->pool, r->id, (long long)r->lease);
    r->lease = 0;
    r->in_etcd = false;
}

/* The check changed state: note what etcd will not be asked about. */
static void check_changed(struct registration *r, bool up)
{
    char reason[LBCTL_CHECK_URL_MAX + 300];
    double now = monotonic_s();

    lb_log_quote(reason, sizeof(reason), lbctl_check_reason(r->check));
    if (up) {
        r->rose = !r->in_etcd;
        if (r->in_etcd) /* the delete has not got through: nothing to undo */
            LB_INFO("register",
                    "msg=\"backend ready again before its key could be deleted\" pool=%s id=%s "
                    "reason=%s",
                    r->pool, r->id, reason);
        return;
    }
    r->waiting_since = now;
    r->progress_at = now + PROGRESS_FIRST_S;
    if (!r->in_etcd) /* never got in (etcd refused the put, or the lease was lost) */
        LB_INFO("register",
                "msg=\"backend not ready, its key was not registered\" pool=%s id=%s "
                "reason=%s",
                r->pool, r->id, reason);
}

/* While the check is down: a line now and then, so a silent registrar is not a mystery. */
static void note_waiting(struct registration *r)
{
    const struct lbctl_check_spec *spec = lbctl_check_spec(r->check);
    const struct lbctl_check_state *st = lbctl_check_state(r->check);
    double now = monotonic_s(), waited = now - r->waiting_since;
    char last[LBCTL_CHECK_URL_MAX + 200], for_text[32], target[LBCTL_CHECK_URL_MAX + 16];

    if (now < r->progress_at)
        return;
    LB_INFO("register",
            "msg=\"waiting for the backend's check to pass\" pool=%s id=%s check=%s for=%s "
            "passes=%d rise=%d last=%s",
            r->pool, r->id, lb_log_quote(target, sizeof(target), spec->target),
            lb_duration_format((int64_t)waited * 1000, for_text, sizeof(for_text)), st->passes,
            spec->rise,
            lb_log_quote(last, sizeof(last),
                         *lbctl_check_last(r->check) ? lbctl_check_last(r->check) : "none yet"));
    r->progress_at = now + (waited < 60.0 ? PROGRESS_FIRST_S : PROGRESS_LATER_S);
}

/*
 * One round with etcd towards what the check says: put the key, delete it,
 * or keep the lease (and the key) alive.  Returns 0, a negative errno with
 * *step and *err, or 1 when the lease was lost and the round should run
 * again at once.
 */
static int sync_etcd(struct registration *r, bool want_key, const char **step, char **err)
{
    int rc;

    if (want_key && !r->in_etcd) {
        rc = register_once(r, step, err);
        if (rc == 0) {
            r->in_etcd = true;
            note_success(r, "registered");
        }
        return rc;
    }
    if (!want_key && r->in_etcd) {
        rc = unregister_key(r, step, err);
        if (rc == 0) {
            r->in_etcd = false;
            note_success(r, "key deleted");
        }
        return rc;
    }
    if (!r->lease)
        return 0; /* not ready, nothing granted: nothing to keep */
    rc = keep_registered(r, want_key, step, err);
    if (rc == -ENOENT) { /* from the keepalive, or the put that follows it */
        lease_lost(r, want_key);
        return 1;
    }
    if (rc == 0)
        note_success(r, "lease kept");
    return rc;
}

static int run(struct registration *r)
{
    unsigned failures = 0;
    double etcd_at = 0; /* when etcd is asked next */
    int sig = 0;

    lb_outage_init(&r->outage, LB_OUTAGE_INTERVAL_S);
    r->waiting_since = monotonic_s();
    r->progress_at = r->waiting_since + PROGRESS_FIRST_S;
    while (!sig) {
        bool want_key = !r->check || lbctl_check_is_up(r->check), changed;
        double wake;

        if (monotonic_s() >= etcd_at) {
            const char *step = "register";
            char *err = NULL;
            int64_t delay;
            int rc = sync_etcd(r, want_key, &step, &err);

            if (rc == 1) {
                free(err);
                continue; /* at once: the backend is out of every pool until then */
            }
            if (rc == 0) {
                failures = 0;
                delay = r->ttl_s * 1000 / 3;
            } else {
                delay = retry_delay_ms(r, failures++);
                note_failure(r, step, err, delay);
                r->endpoint = (r->endpoint + 1) % r->etcd.n;
            }
            free(err);
            etcd_at = monotonic_s() + (double)delay / 1000.;
        }
        wake = etcd_at;
        if (!want_key) {
            note_waiting(r);
            wake = r->progress_at < wake ? r->progress_at : wake;
        }
        sig = wait_ms(r, ms_until(wake), &changed);
        if (changed) {
            check_changed(r, lbctl_check_is_up(r->check));
            etcd_at = 0; /* tell etcd now, not at the next keepalive */
        }
    }
    return deregister(r, sig);
}

int lbctl_register_main(int argc, char **argv)
{
    struct register_opts opts;
    struct registration r;
    sigset_t old;
    char **pos = NULL, *err = NULL;
    size_t npos = 0;
    int rc;

    memset(&opts, 0, sizeof(opts));
    memset(&r, 0, sizeof(r));
    rc = lb_settings_parse(register_rows, N_ROWS, &opts, argc, argv, 0, &pos, &npos, &err);
    if (rc < 0) {
        rc = usage("%s", err ? err : "cannot read flags");
        goto out;
    }
    if (opts.help) {
        print_help();
        rc = EXIT_OK;
        goto out;
    }
    if (npos > 0) {
        rc = usage("unexpected argument \"%s\"", pos[0]);
        goto out;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "lbctl register: cannot initialise libcurl\n");
        rc = EXIT_RUNTIME;
        goto out;
    }
    rc = prepare(&r, &opts);
    if (rc == 0) {
        /* Blocked before anything starts a thread (curl's resolver, on the
         * first request), so that every thread leaves them to the signal fd. */
        sigemptyset(&r.signals);
        sigaddset(&r.signals, SIGTERM);
        sigaddset(&r.signals, SIGINT);
        sigprocmask(SIG_BLOCK, &r.signals, &old);
        r.sigfd = signalfd(-1, &r.signals, SFD_CLOEXEC | SFD_NONBLOCK);
        if (r.sigfd < 0) {
            fprintf(stderr, "lbctl register: cannot create a signal fd: %s\n", strerror(errno));
            rc = EXIT_RUNTIME;
        } else {
            srandom((unsigned)time(NULL) ^ (unsigned)getpid());
            rc = run(&r);
            close(r.sigfd);
        }
        sigprocmask(SIG_SETMASK, &old, NULL);
    }
    lbctl_check_free(r.check);
    lb_etcd_http_free(r.http);
    curl_global_cleanup();
out:
    lb_etcd_endpoints_free(&r.etcd);
    free(r.value);
    free(err);
    free(pos);
    lb_settings_free(register_rows, N_ROWS, &opts);
    return rc;
}
