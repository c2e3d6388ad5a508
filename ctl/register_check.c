/*
 * The readiness check of `lbctl register --check` (design in
 * register_check.h).
 *
 * One check at a time, one easy handle per check on a multi handle of our
 * own.  A TCP check is a CONNECT_ONLY transfer; an HTTP check is a GET
 * whose header callback stops the transfer at the end of the final
 * response's headers: the status is all we judge, as lbd does, so a body
 * that never ends costs nothing.  Connections are never reused (each check
 * is a fresh connect, like lbd's and kubelet's), proxies from the
 * environment are ignored, and only http:// is spoken.
 *
 * The timeout is ours, not curl's: the deadline moves on by the time the
 * caller spent away from lbctl_check_wait() (blocked on etcd), which
 * curl's own timer could not know.
 */
#include "register_check.h"
#include "lb_addr.h"
#include "lb_duration.h"
#include "lb_error.h"
#include "lb_log.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK_PATH_MAX 256
#define USER_AGENT     "lbctl-register-check"

/* The last check's outcome: "tcp connect to TARGET failed: CURL ERROR" at the longest. */
#define CHECK_LAST_MAX (LBCTL_CHECK_URL_MAX + CURL_ERROR_SIZE + 40)

struct lbctl_check {
    struct lbctl_check_spec spec;
    CURLM *multi;
    CURL *easy;     /* the running check, NULL between checks */
    long status;    /* final HTTP status seen by the header callback, 0 before */
    double started; /* monotonic s */
    double deadline;
    double next_start;
    double left_at; /* when lbctl_check_wait() last returned; 0 before the first call */
    struct lbctl_check_state state;
    char errbuf[CURL_ERROR_SIZE];
    char last[CHECK_LAST_MAX];
    char reason[CHECK_LAST_MAX + 80]; /* "backend ready: LAST (N checks in a row)" */
};

static double monotonic_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool path_is_valid(const char *path)
{
    if (path[0] != '/' || strlen(path) >= CHECK_PATH_MAX)
        return false;
    for (const char *p = path; *p; p++)
        if (*p <= ' ' || *p >= 0x7f || *p == '#')
            return false;
    return true;
}

/* "HOST:PORT" or "[V6]:PORT" checked by lb_addr_parse(); 0 or -EINVAL with *err. */
static int check_hostport(const char *text, const char *flag_value, char **err)
{
    struct lb_hostport hp;
    const char *why = NULL;

    if (lb_addr_parse(text, false, &hp, &why) < 0)
        return lb_error_set(err, -EINVAL, "--check \"%s\": %s", flag_value, why);
    return 0;
}

int lbctl_check_parse(const char *text, const char *addr, struct lbctl_check_spec *out, char **err)
{
    static const char forms[] = "use tcp, tcp://HOST:PORT or http://HOST:PORT/PATH";
    char authority[LB_HOST_MAX + 16];
    const char *rest, *slash;
    size_t alen;
    int rc;

    memset(out, 0, sizeof(*out));
    if (strcmp(text, "tcp") == 0 || strncmp(text, "tcp://", 6) == 0) {
        const char *target = text[3] ? text + 6 : addr;

        if (strlen(target) >= sizeof(authority))
            return lb_error_set(err, -EINVAL, "--check \"%s\": address too long", text);
        rc = check_hostport(target, text, err);
        if (rc)
            return rc;
        out->kind = LBCTL_CHECK_TCP;
        snprintf(out->url, sizeof(out->url), "http://%s/", target);
        snprintf(out->target, sizeof(out->target), "%s", target);
        return 0;
    }
    if (strncmp(text, "http://", 7) != 0)
        return lb_error_set(err, -EINVAL, "--check \"%s\": %s", text, forms);
    rest = text + 7;
    slash = strchr(rest, '/');
    alen = slash ? (size_t)(slash - rest) : strlen(rest);
    if (alen == 0)
        return lb_error_set(err, -EINVAL, "--check \"%s\": no host (%s)", text, forms);
    if (alen + 4 >= sizeof(authority))
        return lb_error_set(err, -EINVAL, "--check \"%s\": host too long", text);
    if (memchr(rest, '@', alen) || memchr(rest, '?', alen) || memchr(rest, '#', alen))
        return lb_error_set(err, -EINVAL, "--check \"%s\": %s", text, forms);
    memcpy(authority, rest, alen);
    authority[alen] = '\0';
    /* no port: 80, as in any http:// URL ("[::1]" has colons, but no port) */
    if (authority[alen - 1] == ']' || !strchr(authority, ':'))
        memcpy(authority + alen, ":80", 4);
    rc = check_hostport(authority, text, err);
    if (rc)
        return rc;
    if (slash && !path_is_valid(slash))
        return lb_error_set(err, -EINVAL,
                            "--check \"%s\": the path must be printable, without spaces or '#', "
                            "and shorter than %d characters",
                            text, CHECK_PATH_MAX);
    out->kind = LBCTL_CHECK_HTTP;
    snprintf(out->url, sizeof(out->url), "http://%s%s", authority, slash ? slash : "/");
    snprintf(out->target, sizeof(out->target), "%s", out->url);
    return 0;
}

enum lbctl_check_change lbctl_check_count(struct lbctl_check_state *s, bool ok, int rise, int fall)
{
    if (ok) {
        s->failures = 0;
        if (s->passes < INT_MAX)
            s->passes++;
        if (!s->up && s->passes >= rise) {
            s->up = true;
            return LBCTL_CHECK_ROSE;
        }
    } else {
        s->passes = 0;
        if (s->failures < INT_MAX)
            s->failures++;
        if (s->up && s->failures >= fall) {
            s->up = false;
            return LBCTL_CHECK_FELL;
        }
    }
    return LBCTL_CHECK_SAME;
}

/*
 * Header callback of an HTTP check: at the blank line that ends the final
 * response's headers (not a 1xx), keep the status and stop the transfer.
 */
static size_t header_cb(char *data, size_t size, size_t n, void *ud)
{
    struct lbctl_check *c = ud;
    size_t len = size * n;
    long code = 0;

    if ((len == 2 && data[0] == '\r' && data[1] == '\n') || (len == 1 && data[0] == '\n')) {
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200) {
            c->status = code;
            return 0; /* enough: the body is not ours to read */
        }
    }
    return len;
}

/* An HTTP check that somehow reached the body: drop it. */
static size_t body_cb(char *data, size_t size, size_t n, void *ud)
{
    (void)data;
    (void)ud;
    return size * n;
}

static void check_close(struct lbctl_check *c)
{
    if (!c->easy)
        return;
    curl_multi_remove_handle(c->multi, c->easy);
    curl_easy_cleanup(c->easy);
    c->easy = NULL;
}

/* Starts a check.  0, or -ENOMEM when curl could not set one up (tried again later). */
static int check_start(struct lbctl_check *c, double now)
{
    const struct lbctl_check_spec *s = &c->spec;
    CURL *e = curl_easy_init();

    if (!e)
        return -ENOMEM;
    c->easy = e;
    c->status = 0;
    c->errbuf[0] = '\0';
    curl_easy_setopt(e, CURLOPT_URL, s->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* never through http_proxy & co */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    if (s->kind == LBCTL_CHECK_TCP) {
        curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(e, CURLOPT_USERAGENT, USER_AGENT);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, body_cb);
    }
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        c->easy = NULL;
        return -ENOMEM;
    }
    c->started = now;
    c->deadline = now + (double)s->timeout_ms / 1000.;
    return 0;
}

/* Counts a result, closes the check and schedules the next one; returns the change. */
static enum lbctl_check_change check_done(struct lbctl_check *c, bool ok, double now)
{
    const struct lbctl_check_spec *s = &c->spec;
    enum lbctl_check_change change;
    char quoted[sizeof(c->last) + 8];

    check_close(c);
    change = lbctl_check_count(&c->state, ok, s->rise, s->fall);
    LB_DEBUG("register", "msg=\"check %s\" check=%s result=%s passes=%d failures=%d",
             ok ? "passed" : "failed", s->target, lb_log_quote(quoted, sizeof(quoted), c->last),
             c->state.passes, c->state.failures);
    if (change == LBCTL_CHECK_ROSE)
        snprintf(c->reason, sizeof(c->reason), "backend ready: %s (%d %s in a row)", c->last,
                 c->state.passes, c->state.passes == 1 ? "pass" : "passes");
    else if (change == LBCTL_CHECK_FELL)
        snprintf(c->reason, sizeof(c->reason), "backend not ready: %s (%d %s in a row)", c->last,
                 c->state.failures, c->state.failures == 1 ? "failure" : "failures");
    c->next_start = now + (double)s->interval_ms / 1000.;
    return change;
}

/* What went wrong with a transfer, in words: the OS error when there is one. */
static const char *transfer_error(struct lbctl_check *c, CURLcode result)
{
    long os_errno = 0;

    curl_easy_getinfo(c->easy, CURLINFO_OS_ERRNO, &os_errno);
    if (os_errno > 0 && result != CURLE_OPERATION_TIMEDOUT)
        return strerror((int)os_errno);
    if (result == CURLE_COULDNT_RESOLVE_HOST && c->errbuf[0])
        return c->errbuf;
    return c->errbuf[0] ? c->errbuf : curl_easy_strerror(result);
}

/* A transfer ended: judge it. */
static enum lbctl_check_change check_finished(struct lbctl_check *c, CURLcode result, double now)
{
    const struct lbctl_check_spec *s = &c->spec;
    bool ok;

    if (s->kind == LBCTL_CHECK_TCP) {
        ok = result == CURLE_OK;
        if (ok)
            snprintf(c->last, sizeof(c->last), "tcp connect to %s succeeded", s->target);
        else
            snprintf(c->last, sizeof(c->last), "tcp connect to %s failed: %s", s->target,
                     transfer_error(c, result));
        return check_done(c, ok, now);
    }
    if (!c->status && result == CURLE_OK) /* a response with no headers to stop at */
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    if (c->status) {
        ok = c->status >= 200 && c->status < 400;
        snprintf(c->last, sizeof(c->last), "http %ld from %s", c->status, s->target);
        return check_done(c, ok, now);
    }
    snprintf(c->last, sizeof(c->last), "GET %s failed: %s", s->target, transfer_error(c, result));
    return check_done(c, false, now);
}

static enum lbctl_check_change check_timed_out(struct lbctl_check *c, double now)
{
    const struct lbctl_check_spec *s = &c->spec;
    char t[32];

    lb_duration_format(s->timeout_ms, t, sizeof(t));
    if (s->kind == LBCTL_CHECK_TCP)
        snprintf(c->last, sizeof(c->last), "tcp connect to %s failed: no answer within %s",
                 s->target, t);
    else
        snprintf(c->last, sizeof(c->last), "GET %s failed: no %s within %s", s->target,
                 c->status ? "end of headers" : "answer", t);
    return check_done(c, false, now);
}

int lbctl_check_new(const struct lbctl_check_spec *spec, struct lbctl_check **out, char **err)
{
    struct lbctl_check *c = calloc(1, sizeof(*c));

    *out = NULL;
    if (!c)
        return lb_error_set(err, -ENOMEM, "out of memory");
    c->spec = *spec;
    c->multi = curl_multi_init();
    if (!c->multi) {
        free(c);
        return lb_error_set(err, -ENOMEM, "cannot create the check's curl handle");
    }
    *out = c;
    return 0;
}

void lbctl_check_free(struct lbctl_check *c)
{
    if (!c)
        return;
    check_close(c);
    curl_multi_cleanup(c->multi);
    free(c);
}

static int ms_until(double when, double now)
{
    double ms = (when - now) * 1000.;

    if (ms <= 0)
        return 0;
    return ms > 3600e3 ? 3600 * 1000 : (int)ms + 1; /* rounded up: never wake just before */
}

int lbctl_check_wait(struct lbctl_check *c, int fd, int64_t timeout_ms, bool *fd_ready)
{
    double now = monotonic_s(), end = now + (double)timeout_ms / 1000.;
    enum lbctl_check_change change = LBCTL_CHECK_SAME;
    int rc = 0;

    *fd_ready = false;
    /* Away (blocked on etcd) is not the backend's time to answer. */
    if (c->easy && c->left_at > 0 && now > c->left_at)
        c->deadline += now - c->left_at;
    for (;;) {
        struct curl_waitfd wfd = {.fd = fd, .events = CURL_WAIT_POLLIN};
        struct CURLMsg *msg;
        int running, left, wait;

        if (!c->easy && now >= c->next_start && check_start(c, now) < 0) {
            LB_WARN("register", "msg=\"cannot start the check, trying again\" check=%s",
                    c->spec.target);
            c->next_start = now + (double)c->spec.interval_ms / 1000.;
        }
        wait = ms_until(end, now);
        if (c->easy) {
            int d = ms_until(c->deadline, now);

            wait = d < wait ? d : wait;
        } else {
            int d = ms_until(c->next_start, now);

            wait = d < wait ? d : wait;
        }
        if (curl_multi_poll(c->multi, &wfd, 1, wait, NULL) != CURLM_OK) {
            rc = -EIO;
            break;
        }
        if (wfd.revents & CURL_WAIT_POLLIN)
            *fd_ready = true;
        /* what arrived is read before a deadline is judged */
        curl_multi_perform(c->multi, &running);
        now = monotonic_s();
        while (!change && (msg = curl_multi_info_read(c->multi, &left)))
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == c->easy)
                change = check_finished(c, msg->data.result, now);
        if (!change && c->easy && now >= c->deadline)
            change = check_timed_out(c, now);
        if (change || *fd_ready || now >= end)
            break;
    }
    c->left_at = monotonic_s();
    return rc ? rc : (int)change;
}

bool lbctl_check_is_up(const struct lbctl_check *c)
{
    return c->state.up;
}

const struct lbctl_check_spec *lbctl_check_spec(const struct lbctl_check *c)
{
    return &c->spec;
}

const char *lbctl_check_reason(const struct lbctl_check *c)
{
    return c->reason;
}

const char *lbctl_check_last(const struct lbctl_check *c)
{
    return c->last;
}

const struct lbctl_check_state *lbctl_check_state(const struct lbctl_check *c)
{
    return &c->state;
}
