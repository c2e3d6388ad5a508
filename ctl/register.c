/*
 * `lbctl register`, a small blocking loop in its own process:
 *
 *   no lease   -> grant (ttl), then put the backend key with the lease
 *   registered -> sleep ttl/3, keepalive; "lease gone" -> register again
 *   failure    -> next endpoint, short back-off (never longer than ttl/3,
 *                 so a flapping etcd still sees keepalives in time)
 *   SIGTERM/SIGINT -> revoke, exit
 *
 * The signals are blocked for the whole run and taken with sigtimedwait()
 * while sleeping, so a signal never interrupts a request half way and is
 * never lost.  Each request is bounded by a timeout, which bounds how long
 * a signal can wait.  The etcd JSON, the key schema and the value encoding
 * are the watcher's own (lb_lease.h, lb_key.h, lb_value.h).
 */
#include "register.h"
#include "lb_duration.h"
#include "lb_key.h"
#include "lb_lease.h"
#include "lb_log.h"
#include "lb_settings.h"
#include "lb_value.h"

#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXIT_OK      0
#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

#define MAX_ENDPOINTS      16
#define REQUEST_TIMEOUT_MS 5000
#define REVOKE_TIMEOUT_MS  2000

struct register_opts {
    struct lb_strlist etcd;
    char *prefix;
    char *pool;
    char *id;
    char *addr;
    int64_t weight;
    int64_t ttl_ms;
    bool help;
};

static const struct lb_setting register_rows[] = {
    {"etcd", 0, "LBCTL_ETCD", LB_SETTING_LIST, offsetof(struct register_opts, etcd), 0, 0,
     "http://127.0.0.1:2379", NULL, "URL[,URL...]", "etcd endpoints (tried in turn)"},
    {"prefix", 0, "LBCTL_PREFIX", LB_SETTING_STRING, offsetof(struct register_opts, prefix), 0,
     LB_PREFIX_MAX - 2, "/lb/", NULL, "PREFIX", "key prefix"},
    {"pool", 0, "LBCTL_POOL", LB_SETTING_STRING, offsetof(struct register_opts, pool), 0,
     LB_NAME_MAX - 1, NULL, NULL, "POOL", "pool to join (required)"},
    {"id", 0, "LBCTL_ID", LB_SETTING_STRING, offsetof(struct register_opts, id), 0, LB_NAME_MAX - 1,
     NULL, NULL, "ID", "backend id, unique in the pool (required)"},
    {"addr", 0, "LBCTL_ADDR", LB_SETTING_STRING, offsetof(struct register_opts, addr), 0,
     LB_ADDR_MAX - 1, NULL, NULL, "HOST:PORT", "address lbd connects to (required)"},
    {"weight", 0, "LBCTL_WEIGHT", LB_SETTING_INT, offsetof(struct register_opts, weight), 0,
     LB_WEIGHT_MAX, "100", NULL, "N", "share of new connections, 0..1000 (0 = none)"},
    {"ttl", 0, "LBCTL_TTL", LB_SETTING_DURATION, offsetof(struct register_opts, ttl_ms), 2000,
     3600 * 1000, "10s", NULL, "DURATION", "lease time to live; the key dies this long after us"},
    {"help", 'h', NULL, LB_SETTING_BOOL, offsetof(struct register_opts, help), 0, 0, NULL, NULL,
     NULL, "show this help"},
};
#define N_ROWS (sizeof(register_rows) / sizeof(register_rows[0]))

/* What the loop needs, checked and derived from the flags. */
struct registration {
    char *endpoints[MAX_ENDPOINTS];
    size_t n_endpoints;
    size_t endpoint;
    char key[LB_PREFIX_MAX + 2 * LB_NAME_MAX + 32];
    char *value;
    const char *pool, *id, *addr;
    int64_t ttl_s;
    long timeout_ms;
    int64_t lease;
    sigset_t signals;
};

static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "lbctl register: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see lbctl register --help)\n");
    return EXIT_USAGE;
}

static void print_help(void)
{
    printf("usage: lbctl register --etcd URL[,URL...] [--prefix /lb/] --pool POOL --id ID\n"
           "                      --addr HOST:PORT [--weight N] [--ttl 10s]\n\n"
           "Registers this backend in etcd under a lease and keeps it registered until\n"
           "SIGTERM or SIGINT, which revoke the lease so it leaves the pool at once.\n\n");
    lb_settings_print_help(stdout, register_rows, N_ROWS);
}

/* Splits every --etcd value on ',' and checks each URL. */
static int take_endpoints(struct registration *r, const struct lb_strlist *list)
{
    for (size_t i = 0; i < list->n; i++) {
        char *copy = strdup(list->v[i]), *save = NULL;

        if (!copy)
            return usage("out of memory");
        for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            size_t len = strlen(tok);

            if (strncmp(tok, "http://", 7) != 0 && strncmp(tok, "https://", 8) != 0) {
                int rc = usage("--etcd: \"%s\" is not an http:// or https:// URL", tok);

                free(copy);
                return rc;
            }
            if (r->n_endpoints == MAX_ENDPOINTS) {
                free(copy);
                return usage("--etcd: at most %d endpoints", MAX_ENDPOINTS);
            }
            while (len > 0 && tok[len - 1] == '/')
                tok[--len] = '\0';
            r->endpoints[r->n_endpoints] = strdup(tok);
            if (!r->endpoints[r->n_endpoints]) {
                free(copy);
                return usage("out of memory");
            }
            r->n_endpoints++;
        }
        free(copy);
    }
    if (r->n_endpoints == 0)
        return usage("--etcd: give at least one URL, e.g. http://127.0.0.1:2379");
    return 0;
}

/* Checks the flags and fills r.  Returns 0 or EXIT_USAGE (message printed). */
static int prepare(struct registration *r, const struct register_opts *o)
{
    struct lb_backend_spec spec;
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
    rc = take_endpoints(r, &o->etcd);
    if (rc)
        return rc;
    if (lb_key_format(prefix, LB_KEY_BACKEND, o->pool, o->id, r->key, sizeof(r->key)) < 0)
        return usage("--prefix, --pool and --id make a key that is too long");
    memset(&spec, 0, sizeof(spec));
    snprintf(spec.addr, sizeof(spec.addr), "%s", o->addr);
    spec.weight = (int)o->weight;
    if (lb_value_encode_backend(&spec, &r->value) < 0)
        return usage("out of memory");
    r->pool = o->pool;
    r->id = o->id;
    r->addr = o->addr;
    r->ttl_s = (o->ttl_ms + 999) / 1000;
    /* a request may not eat the margin a keepalive has before the lease ends */
    r->timeout_ms = (long)(o->ttl_ms / 3 < REQUEST_TIMEOUT_MS ? o->ttl_ms / 3 : REQUEST_TIMEOUT_MS);
    return 0;
}

/*
 * Sleeps up to ms.  Returns the signal that ended the wait, or 0 when the
 * time ran out.
 */
static int wait_ms(struct registration *r, int64_t ms)
{
    struct timespec deadline, now, left;

    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    for (;;) {
        int sig;

        clock_gettime(CLOCK_MONOTONIC, &now);
        left.tv_sec = deadline.tv_sec - now.tv_sec;
        left.tv_nsec = deadline.tv_nsec - now.tv_nsec;
        if (left.tv_nsec < 0) {
            left.tv_sec--;
            left.tv_nsec += 1000000000;
        }
        if (left.tv_sec < 0)
            left.tv_sec = left.tv_nsec = 0;
        sig = sigtimedwait(&r->signals, NULL, &left);
        if (sig > 0)
            return sig;
        if (errno == EAGAIN)
            return 0;
        /* EINTR: another signal; keep waiting */
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

static void log_failure(const struct registration *r, const char *msg, const char *err)
{
    char qerr[512];

    LB_WARN("register", "msg=\"%s\" pool=%s id=%s endpoint=%s error=%s", msg, r->pool, r->id,
            r->endpoints[r->endpoint], lb_log_quote(qerr, sizeof(qerr), err ? err : "unknown"));
}

/* Grants a lease and puts the key with it.  0, or a negative errno (logged). */
static int register_once(struct registration *r)
{
    const char *endpoint = r->endpoints[r->endpoint];
    char ttl_text[32], *err = NULL;
    int64_t granted = 0;
    int rc;

    if (!r->lease) {
        rc = lb_lease_grant(endpoint, r->ttl_s, r->timeout_ms, &r->lease, &granted, &err);
        if (rc) {
            log_failure(r, "cannot register, retrying", err);
            goto out;
        }
    }
    rc = lb_lease_put(endpoint, r->key, r->value, r->lease, r->timeout_ms, &err);
    if (rc) {
        if (rc == -ENOENT)
            r->lease = 0; /* lease vanished between grant and put */
        log_failure(r, "cannot register, retrying", err);
        goto out;
    }
    LB_INFO("register", "msg=\"registered\" pool=%s id=%s addr=%s lease=%lld ttl=%s endpoint=%s",
            r->pool, r->id, r->addr, (long long)r->lease,
            lb_duration_format(r->ttl_s * 1000, ttl_text, sizeof(ttl_text)), endpoint);
out:
    free(err);
    return rc;
}

/* Revokes the lease, trying each endpoint once.  Returns the exit code. */
static int deregister(struct registration *r, int sig)
{
    char *err = NULL;
    int rc = -EIO;

    if (!r->lease) {
        LB_INFO("register", "msg=\"stopping, was not registered\" signal=%s",
                sig == SIGTERM ? "SIGTERM" : "SIGINT");
        return EXIT_OK;
    }
    for (size_t i = 0; i < r->n_endpoints; i++) {
        rc = lb_lease_revoke(r->endpoints[r->endpoint], r->lease, REVOKE_TIMEOUT_MS, &err);
        if (rc == 0 || rc == -ENOENT)
            break; /* -ENOENT: the lease is already gone, and the key with it */
        log_failure(r, "cannot revoke the lease", err);
        r->endpoint = (r->endpoint + 1) % r->n_endpoints;
    }
    if (rc == 0 || rc == -ENOENT) {
        LB_INFO("register", "msg=\"deregistered\" pool=%s id=%s lease=%lld signal=%s", r->pool,
                r->id, (long long)r->lease, sig == SIGTERM ? "SIGTERM" : "SIGINT");
        free(err);
        return EXIT_OK;
    }
    fprintf(stderr,
            "lbctl register: could not revoke lease %lld, the key expires within its TTL: "
            "%s\n",
            (long long)r->lease, err ? err : "etcd unreachable");
    free(err);
    return EXIT_RUNTIME;
}

static int run(struct registration *r)
{
    unsigned failures = 0;
    bool registered = false;
    char *err = NULL;
    int sig = 0;

    while (!sig) {
        int64_t ttl = 0;
        int rc;

        if (!registered) {
            if (register_once(r) == 0) {
                registered = true;
                failures = 0;
                sig = wait_ms(r, r->ttl_s * 1000 / 3);
            } else {
                r->endpoint = (r->endpoint + 1) % r->n_endpoints;
                sig = wait_ms(r, retry_delay_ms(r, failures++));
            }
            continue;
        }
        rc = lb_lease_keepalive(r->endpoints[r->endpoint], r->lease, r->timeout_ms, &ttl, &err);
        if (rc == 0) {
            failures = 0;
            sig = wait_ms(r, r->ttl_s * 1000 / 3);
        } else if (rc == -ENOENT) {
            log_failure(r, "lease lost, registering again", err);
            r->lease = 0;
            registered = false;
        } else {
            log_failure(r, "keepalive failed, retrying", err);
            r->endpoint = (r->endpoint + 1) % r->n_endpoints;
            sig = wait_ms(r, retry_delay_ms(r, failures++));
        }
        free(err);
        err = NULL;
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
        static const char hint[] = " (see --help)";
        size_t len = err ? strlen(err) : 0;

        if (len > sizeof(hint) - 1 && strcmp(err + len - (sizeof(hint) - 1), hint) == 0)
            err[len - (sizeof(hint) - 1)] = '\0'; /* usage() adds its own hint */
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
    rc = prepare(&r, &opts);
    if (rc)
        goto out;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "lbctl register: cannot initialise libcurl\n");
        rc = EXIT_RUNTIME;
        goto out;
    }
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    sigemptyset(&r.signals);
    sigaddset(&r.signals, SIGTERM);
    sigaddset(&r.signals, SIGINT);
    sigprocmask(SIG_BLOCK, &r.signals, &old);
    rc = run(&r);
    sigprocmask(SIG_SETMASK, &old, NULL);
    curl_global_cleanup();
out:
    for (size_t i = 0; i < r.n_endpoints; i++)
        free(r.endpoints[i]);
    free(r.value);
    free(err);
    free(pos);
    lb_settings_free(register_rows, N_ROWS, &opts);
    return rc;
}
