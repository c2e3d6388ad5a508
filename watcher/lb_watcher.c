/*
 * The list-then-watch state machine.
 *
 *   IDLE ─start─▶ LISTING ─pages─▶ deliver diff ─▶ CONNECTING ─created─▶ WATCHING
 *                  ▲    │                              │                   │    │
 *                  │    └─error─▶ BACKOFF ◀─error──────┘◀─end, error, stall┘    │
 *                  │                 │                                          │
 *                  │                 └─timer─▶ CONNECTING (resume at revision+1),
 *                  │                           or LISTING when a re-list is due │
 *                  └──────────────────────── compacted ─────────────────────────┘
 *
 * One transfer is in flight at a time (`call`): a range page or the watch.
 * Decisions taken while reading the stream (compaction, a bad line) are
 * noted in `after_stream` and acted on in the stream's done callback, once
 * curl is off the stack.
 *
 * Revisions: `revision` only moves to a revision whose events have all been
 * delivered (lb_watch_msg_resume_revision()).  A watch resumes AT that
 * revision, not after it: the events of that one revision come again and
 * the mirror drops them (their values are the ones it holds), and in
 * exchange a compaction at exactly the next revision is answered
 * "compacted" and makes lbd re-list.  etcd before 3.4.33 / 3.5.15 drops the
 * tombstone of a delete at the compaction revision (etcd-io/etcd#18089): a
 * watch resumed after it would never see that key go.
 *
 * A listing is staged in memory (lb_listing.h) and applied to the mirror
 * only when its last page has arrived, so the sink sees one consistent
 * batch per listing and a listing that fails half way changes nothing.
 * An answer larger than LB_LISTING_RESPONSE_MAX is not a failure: the
 * listing asks for the same page again, smaller (lb_listing_too_large()),
 * at once and without counting a reconnect.
 *
 * No single key stops discovery: keys and values that cannot be used are
 * skipped and counted by the mirror, in listings and watch events alike,
 * and the rest is applied.  Their log lines are rate limited; `log_timer`
 * writes the count of the lines held back once the limit allows.
 */
#include "lb_watcher.h"
#include "lb_duration.h"
#include "lb_error.h"
#include "lb_etcd_auth.h"
#include "lb_etcd_http.h"
#include "lb_etcd_opts.h"
#include "lb_etcd_json.h"
#include "lb_key.h"
#include "lb_listing.h"
#include "lb_log.h"
#include "lb_mirror.h"
#include "lb_outage.h"
#include "lb_override_store.h"
#include "lb_watch_decode.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_BACKOFF_INITIAL_MS 100
#define DEFAULT_BACKOFF_MAX_MS     1000
#define DEFAULT_REQUEST_TIMEOUT_MS 10000
#define DEFAULT_PAGE_SIZE          500
#define MAX_PAGE_SIZE              100000
#define HEALTHY_WATCH_S            30.0 /* a watch up this long resets the back-off */

/* What the end of the current watch stream leads to. */
enum after_stream {
    AFTER_RETRY,        /* back off, resume the watch */
    AFTER_RELIST,       /* re-list now (compaction) */
    AFTER_RETRY_RELIST, /* back off, then re-list (lost line, changed cluster) */
    AFTER_LOGIN,        /* etcd refused the token: log in and watch again at once */
};

struct lb_watcher {
    struct ev_loop *loop;
    struct lb_etcd_http *http;
    struct lb_mirror *mirror;
    struct lb_override_store *store;
    struct lb_update_sink sink;

    char **endpoints;
    size_t n_endpoints;
    size_t endpoint; /* index in use */
    char prefix[LB_PREFIX_MAX];
    char range_key[LB_PREFIX_MAX + 8]; /* <prefix>pools/ */
    size_t range_key_len;
    char range_end[LB_PREFIX_MAX + 8];
    size_t range_end_len;

    int64_t backoff_initial_ms;
    int64_t backoff_max_ms;
    int64_t stall_timeout_ms;
    int64_t request_timeout_ms;
    int64_t page_size;

    enum lb_watcher_state state;
    bool started;
    bool synced;
    bool need_relist;
    int64_t revision;    /* every event up to here was delivered */
    uint64_t cluster_id; /* 0 until known */

    struct lb_etcd_call *call; /* range page or watch in flight */

    /* listing */
    struct lb_listing listing;

    /* watch */
    struct lb_watch_lines lines;
    struct lb_watch_decoder decoder;
    enum after_stream after;
    char after_reason[512];
    ev_tstamp stream_activity; /* start of the watch, then its last bytes */
    ev_tstamp watching_since;  /* when etcd confirmed the watch */
    ev_tstamp data_arrived;    /* ev_time() when the bytes being decoded arrived */
    bool login_retried;        /* AFTER_LOGIN used since the last confirmed watch */

    ev_timer retry_timer;
    ev_timer stall_timer;
    ev_timer log_timer; /* writes the counts of skip lines held back */
    unsigned attempt;   /* failures since the last watch that held */
    uint64_t rng;
    ev_tstamp last_contact; /* 0 = never */
    ev_tstamp started_at;
    ev_tstamp fresh_at; /* last moment with a confirmed watch or a complete listing; 0 = never */
    ev_tstamp list_started; /* ev_time() */
    int64_t last_list_ms;
    struct lb_outage outage;
    bool outage_from_start; /* the outage began before the first listing: never reached yet */

    uint64_t lag_count;
    double lag_sum, lag_last, lag_max;
    uint64_t lag_buckets[LB_WATCHER_LAG_BUCKETS];

    uint64_t reconnects;
    uint64_t relists;
    uint64_t events_received;
    uint64_t decode_errors;
};

static void list_begin(struct lb_watcher *w);
static void watch_begin(struct lb_watcher *w);

const char *lb_watcher_state_name(enum lb_watcher_state state)
{
    switch (state) {
    case LB_WATCHER_IDLE:
        return "idle";
    case LB_WATCHER_LISTING:
        return "listing";
    case LB_WATCHER_CONNECTING:
        return "connecting";
    case LB_WATCHER_WATCHING:
        return "watching";
    case LB_WATCHER_BACKOFF:
        return "backoff";
    }
    return "unknown";
}

/* --- back-off -------------------------------------------------------------------------- */

static uint64_t next_random(struct lb_watcher *w)
{
    uint64_t x = w->rng; /* xorshift64* */

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 2685821657736338717ULL;
}

/* Capped exponential delay with "equal jitter": half fixed, half random. */
static int64_t backoff_ms(struct lb_watcher *w)
{
    int64_t base = w->backoff_initial_ms;
    unsigned n = w->attempt < 40 ? w->attempt : 40;

    for (unsigned i = 0; i < n && base < w->backoff_max_ms; i++)
        base *= 2;
    if (base > w->backoff_max_ms)
        base = w->backoff_max_ms;
    return base / 2 + (int64_t)(next_random(w) % (uint64_t)(base / 2 + 1));
}

/* The watcher stops being live (a confirmed watch ends): staleness counts from now. */
static void mark_fresh_if_watching(struct lb_watcher *w)
{
    if (w->state == LB_WATCHER_WATCHING)
        w->fresh_at = ev_now(w->loop);
}

/*
 * Something failed: count it, move to the next endpoint and try again after
 * the back-off.  `what` names the step, `why` is the message to log.  The
 * outage limiter decides whether this failure makes a warning line; every
 * one makes a debug line.
 */
static void schedule_retry(struct lb_watcher *w, const char *what, const char *why)
{
    char qwhy[480], delay_text[32], down_text[32];
    const char *endpoint = w->endpoints[w->endpoint];
    int64_t delay;

    if (w->call) {
        lb_etcd_http_cancel(w->call);
        w->call = NULL;
    }
    ev_timer_stop(w->loop, &w->stall_timer);
    mark_fresh_if_watching(w);
    /* a watch that held for a while starts the back-off afresh; one that
     * keeps breaking right after it was made does not */
    if (w->state == LB_WATCHER_WATCHING && ev_now(w->loop) - w->watching_since >= HEALTHY_WATCH_S)
        w->attempt = 0;
    delay = backoff_ms(w);
    w->attempt++;
    w->reconnects++;
    lb_log_quote(qwhy, sizeof(qwhy), why);
    lb_duration_format(delay, delay_text, sizeof(delay_text));
    LB_DEBUG("watcher", "msg=\"etcd %s failed, retrying\" endpoint=%s error=%s retry_in=%s", what,
             endpoint, qwhy, delay_text);
    switch (lb_outage_failed(&w->outage, ev_now(w->loop))) {
    case LB_OUTAGE_FIRST:
        w->outage_from_start = !w->synced;
        LB_WARN("watcher", "msg=\"etcd %s failed, retrying%s\" endpoint=%s error=%s retry_in=%s",
                what, w->synced ? "; serving the last known pools" : "", endpoint, qwhy,
                delay_text);
        break;
    case LB_OUTAGE_STILL:
        LB_WARN(
            "watcher",
            "msg=\"etcd still failing%s\" for=%s failures=%llu step=%s endpoint=%s "
            "error=%s retry_in=%s",
            w->synced ? "; serving the last known pools" : "",
            lb_duration_format((int64_t)(lb_outage_duration(&w->outage, ev_now(w->loop)) * 1000.0),
                               down_text, sizeof(down_text)),
            (unsigned long long)w->outage.failures, what, endpoint, qwhy, delay_text);
        break;
    case LB_OUTAGE_QUIET:
        break;
    }
    w->endpoint = (w->endpoint + 1) % w->n_endpoints;
    w->state = LB_WATCHER_BACKOFF;
    ev_timer_set(&w->retry_timer, (double)delay / 1000.0, 0.);
    ev_timer_start(w->loop, &w->retry_timer);
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct lb_watcher *w = t->data;

    if (!w->synced || w->need_relist)
        list_begin(w);
    else
        watch_begin(w);
}

/* --- listing --------------------------------------------------------------------------- */

/* Skip lines held back by the rate limit: write their counts when it allows. */
static void log_flush_arm(struct lb_watcher *w)
{
    double due = lb_mirror_flush_log(w->mirror);

    if (due < 0 || ev_is_active(&w->log_timer))
        return;
    ev_timer_set(&w->log_timer, due + 0.01, 0.);
    ev_timer_start(w->loop, &w->log_timer);
}

static void log_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    log_flush_arm(t->data);
}

static void list_page_done_cb(void *ud, const struct lb_etcd_reply *reply);

static void list_request(struct lb_watcher *w)
{
    struct lb_etcd_request req = {
        .endpoint = w->endpoints[w->endpoint],
        .path = "/v3/kv/range",
        .timeout_ms = w->request_timeout_ms,
        .max_response = LB_LISTING_RESPONSE_MAX,
        .on_done = list_page_done_cb,
        .ud = w,
    };
    char *body = NULL;
    int rc;

    rc = lb_listing_request(&w->listing, &body);
    if (!rc) {
        req.body = body;
        rc = lb_etcd_http_start(w->http, &req, &w->call);
    }
    free(body);
    if (rc)
        schedule_retry(w, "range", strerror(-rc));
}

/* The last page is in: deliver the difference as one batch, then watch. */
static void list_finish(struct lb_watcher *w)
{
    struct lb_mirror_stats ms;
    int64_t list_revision = w->listing.revision;
    int updates;
    bool first;

    updates = lb_listing_apply(&w->listing);
    first = !w->synced;
    if (updates >= 0) {
        /* Synced before the commit, so the sink sees lb_watcher_has_synced(). */
        if (w->synced)
            w->relists++;
        w->synced = true;
    }
    if (updates > 0 || first)
        w->sink.commit(w->sink.ctx);
    log_flush_arm(w);
    if (updates < 0) {
        /* out of memory half way: what was delivered is true; try the rest again */
        w->need_relist = true;
        schedule_retry(w, "listing", strerror(-updates));
        return;
    }
    w->fresh_at = ev_now(w->loop);
    w->last_list_ms = (int64_t)((ev_time() - w->list_started) * 1000.0);
    w->need_relist = false;
    w->revision = list_revision;
    lb_mirror_get_stats(w->mirror, &ms);
    LB_INFO("watcher",
            "msg=\"%s\" endpoint=%s revision=%lld keys=%zu updates=%d duration_ms=%lld pages=%zu",
            first ? "synced" : "re-listed", w->endpoints[w->endpoint], (long long)w->revision,
            ms.keys, updates, (long long)w->last_list_ms, w->listing.pages);
    watch_begin(w);
}

static void list_page_done_cb(void *ud, const struct lb_etcd_reply *reply)
{
    struct lb_watcher *w = ud;
    char *err = NULL;
    int rc;

    w->call = NULL;
    if (reply->status == -E2BIG && lb_listing_too_large(&w->listing) == 0) {
        /* a few huge values: the same page again, smaller, at once (lb_listing.h) */
        w->last_contact = ev_now(w->loop);
        LB_DEBUG("watcher",
                 "msg=\"range page larger than its bound, asking for fewer keys\" endpoint=%s "
                 "limit=%lld keys_only=%d",
                 w->endpoints[w->endpoint], (long long)w->listing.limit, w->listing.keys_only);
        list_request(w);
        return;
    }
    if (reply->status) {
        schedule_retry(w, "range", reply->message);
        return;
    }
    w->last_contact = ev_now(w->loop);
    rc = reply->body ? lb_listing_page(&w->listing, reply->body, reply->body_len, &err) : -ENOMEM;
    if (rc < 0) {
        w->decode_errors++;
        schedule_retry(w, "range", err ? err : strerror(-rc));
        free(err);
        return;
    }
    if (w->listing.pages == 1) {
        if (w->cluster_id && w->listing.cluster_id && w->listing.cluster_id != w->cluster_id)
            LB_WARN("watcher", "msg=\"etcd cluster id changed\" endpoint=%s",
                    w->endpoints[w->endpoint]);
        if (w->listing.cluster_id)
            w->cluster_id = w->listing.cluster_id;
    }
    LB_DEBUG("watcher", "msg=\"range page\" endpoint=%s revision=%lld staged=%zu more=%d",
             w->endpoints[w->endpoint], (long long)w->listing.revision, w->listing.n_staged,
             rc == 1);
    if (rc == 1)
        list_request(w);
    else
        list_finish(w);
}

static void list_begin(struct lb_watcher *w)
{
    int rc;

    ev_timer_stop(w->loop, &w->retry_timer);
    w->need_relist = true; /* until a listing completes, retries list again */
    w->state = LB_WATCHER_LISTING;
    w->list_started = ev_time();
    rc = lb_listing_begin(&w->listing, w->range_key, w->range_key_len, w->range_end,
                          w->range_end_len);
    if (rc) {
        schedule_retry(w, "range", strerror(-rc));
        return;
    }
    list_request(w);
}

/* --- watching -------------------------------------------------------------------------- */

/* Stops reading the stream; the done callback then does what `after` says. */
static int stream_stop(struct lb_watcher *w, enum after_stream after, const char *why)
{
    w->after = after;
    snprintf(w->after_reason, sizeof(w->after_reason), "%s", why);
    return -ECANCELED;
}

/* The update lag of one committed watch response, into the histogram. */
static void record_lag(struct lb_watcher *w, double lag)
{
    static const double bounds[LB_WATCHER_LAG_BUCKETS] = LB_WATCHER_LAG_BOUNDS;

    if (lag < 0)
        lag = 0;
    w->lag_count++;
    w->lag_sum += lag;
    w->lag_last = lag;
    if (lag > w->lag_max)
        w->lag_max = lag;
    for (size_t i = 0; i < LB_WATCHER_LAG_BUCKETS; i++)
        if (lag <= bounds[i])
            w->lag_buckets[i]++;
}

/* Where a watch resumes: the last revision fully delivered (see the file comment). */
static int64_t watch_start(const struct lb_watcher *w)
{
    return w->revision > 0 ? w->revision : 1;
}

/* A watch was confirmed: if an outage was announced, say that it is over. */
static void report_recovery(struct lb_watcher *w)
{
    uint64_t failures;
    double down_s;

    if (!lb_outage_ended(&w->outage, ev_now(w->loop), &down_s, &failures))
        return;
    LB_INFO("watcher",
            "msg=\"etcd reachable %safter %.1fs, %s at revision %lld\" endpoint=%s "
            "failures=%llu",
            w->outage_from_start ? "" : "again ", down_s,
            w->outage_from_start ? "watching" : "resumed", (long long)watch_start(w),
            w->endpoints[w->endpoint], (unsigned long long)failures);
}

static int handle_msg(struct lb_watcher *w, const struct lb_watch_msg *msg)
{
    char text[sizeof(((struct lb_watch_msg *)0)->cancel_reason) + 128];
    int64_t high;
    int n;

    if (msg->canceled) {
        if (msg->compact_revision > 0) {
            LB_WARN("watcher",
                    "msg=\"watch revision compacted, re-listing\" revision=%lld compacted=%lld",
                    (long long)watch_start(w), (long long)msg->compact_revision);
            return stream_stop(w, AFTER_RELIST, "compacted");
        }
        if (lb_etcd_auth_is_token_error(msg->cancel_reason) && lb_etcd_http_has_login(w->http)) {
            /* the token expired, or was revoked (a password change) */
            lb_etcd_http_token_refused(w->http);
            snprintf(text, sizeof(text), "etcd refused the token: %s", msg->cancel_reason);
            return stream_stop(w, AFTER_LOGIN, text);
        }
        snprintf(text, sizeof(text), "etcd canceled the watch: %s%s",
                 msg->cancel_reason[0] ? msg->cancel_reason : "no reason given",
                 lb_etcd_auth_is_token_error(msg->cancel_reason)
                     ? " (etcd requires a user: give --etcd-user-file)"
                     : "");
        return stream_stop(w, AFTER_RETRY, text);
    }
    if (msg->created) {
        if (w->cluster_id && msg->header.cluster_id && msg->header.cluster_id != w->cluster_id)
            return stream_stop(w, AFTER_RETRY_RELIST, "etcd cluster id changed");
        if (msg->header.revision && msg->header.revision < w->revision)
            return stream_stop(w, AFTER_RETRY_RELIST, "etcd revision went backwards");
        w->state = LB_WATCHER_WATCHING;
        w->watching_since = ev_now(w->loop);
        /* from now on the stall timeout applies, not the set-up one */
        ev_timer_stop(w->loop, &w->stall_timer);
        ev_timer_set(&w->stall_timer, (double)w->stall_timeout_ms / 1000.0, 0.);
        ev_timer_start(w->loop, &w->stall_timer);
        w->fresh_at = w->watching_since;
        w->login_retried = false;
        LB_INFO("watcher", "msg=\"watching\" endpoint=%s from_revision=%lld",
                w->endpoints[w->endpoint], (long long)watch_start(w));
        report_recovery(w);
    }
    if (msg->n_events > 0) {
        w->events_received += msg->n_events;
        n = lb_mirror_apply_events(w->mirror, msg);
        if (n < 0)
            return stream_stop(w, AFTER_RETRY_RELIST, strerror(-n));
        if (n > 0) {
            w->sink.commit(w->sink.ctx);
            record_lag(w, ev_time() - w->data_arrived);
        }
        log_flush_arm(w);
    }
    high = lb_watch_msg_resume_revision(msg);
    if (high > w->revision)
        w->revision = high;
    return 0;
}

static int watch_line_cb(void *ud, const char *line, size_t len, int status)
{
    struct lb_watcher *w = ud;
    const struct lb_watch_msg *msg;
    char *err = NULL;
    int rc;

    if (status < 0) {
        w->decode_errors++;
        return stream_stop(w, AFTER_RETRY_RELIST, "watch line longer than the maximum");
    }
    rc = lb_watch_decoder_line(&w->decoder, line, len, &msg, &err);
    if (rc < 0) {
        /* an error etcd wrote into the stream lost nothing; an unreadable line may have */
        if (rc == -EPROTO) {
            rc = stream_stop(w, AFTER_RETRY, err ? err : "etcd ended the watch");
        } else {
            w->decode_errors++;
            rc = stream_stop(w, AFTER_RETRY_RELIST, err ? err : "unreadable watch line");
        }
        free(err);
        return rc;
    }
    return rc == 0 ? 0 : handle_msg(w, msg);
}

static int watch_data_cb(void *ud, const char *data, size_t len)
{
    struct lb_watcher *w = ud;

    w->last_contact = w->stream_activity = ev_now(w->loop);
    w->data_arrived = ev_time();
    return lb_watch_lines_feed(&w->lines, data, len, watch_line_cb, w);
}

static void watch_done_cb(void *ud, const struct lb_etcd_reply *reply)
{
    struct lb_watcher *w = ud;

    w->call = NULL;
    ev_timer_stop(w->loop, &w->stall_timer);
    if (reply->status == -ECANCELED) {
        switch (w->after) {
        case AFTER_RELIST:
            mark_fresh_if_watching(w);
            list_begin(w);
            return;
        case AFTER_LOGIN:
            if (!w->login_retried) {
                w->login_retried = true;
                LB_INFO("watcher",
                        "msg=\"etcd refused the watch's token, logging in again\" "
                        "endpoint=%s",
                        w->endpoints[w->endpoint]);
                mark_fresh_if_watching(w);
                watch_begin(w);
                return;
            }
            schedule_retry(w, "watch", w->after_reason);
            return;
        case AFTER_RETRY_RELIST:
            w->need_relist = true;
            /* fall through */
        case AFTER_RETRY:
            schedule_retry(w, "watch", w->after_reason);
            return;
        }
    }
    schedule_retry(w, "watch", reply->status ? reply->message : "stream ended");
}

static void stall_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct lb_watcher *w = t->data;
    int64_t limit_ms =
        w->state == LB_WATCHER_CONNECTING ? w->request_timeout_ms : w->stall_timeout_ms;
    ev_tstamp deadline = w->stream_activity + (double)limit_ms / 1000.0;
    ev_tstamp now = ev_now(loop);

    if (now < deadline) {
        ev_timer_set(t, deadline - now, 0.);
        ev_timer_start(loop, t);
        return;
    }
    schedule_retry(w, "watch",
                   w->state == LB_WATCHER_CONNECTING ? "no answer to the watch request"
                                                     : "watch silent for longer than the "
                                                       "stall timeout");
}

static void watch_begin(struct lb_watcher *w)
{
    struct lb_etcd_request req = {
        .endpoint = w->endpoints[w->endpoint],
        .path = "/v3/watch",
        .timeout_ms = 0, /* an idle stream is normal; stall_cb watches it */
        .on_data = watch_data_cb,
        .on_done = watch_done_cb,
        .ud = w,
    };
    char *body = NULL;
    int rc;

    ev_timer_stop(w->loop, &w->retry_timer);
    w->state = LB_WATCHER_CONNECTING;
    w->after = AFTER_RETRY;
    w->after_reason[0] = '\0';
    lb_watch_lines_reset(&w->lines);
    lb_watch_decoder_reset(&w->decoder);
    rc = lb_etcd_json_watch_request(w->range_key, w->range_key_len, w->range_end, w->range_end_len,
                                    watch_start(w), &body);
    if (!rc) {
        req.body = body;
        rc = lb_etcd_http_start(w->http, &req, &w->call);
    }
    free(body);
    if (rc) {
        schedule_retry(w, "watch", strerror(-rc));
        return;
    }
    w->stream_activity = ev_now(w->loop);
    ev_timer_set(&w->stall_timer, (double)w->request_timeout_ms / 1000.0, 0.);
    ev_timer_start(w->loop, &w->stall_timer);
}

/* --- public ---------------------------------------------------------------------------- */

/* The endpoints of cfg->etcd, checked once (lb_etcd_opts.h), copied into w. */
static int copy_endpoints(struct lb_watcher *w, const struct lb_watcher_config *cfg, char **err)
{
    struct lb_etcd_endpoints e;
    int rc;

    if (!cfg->etcd)
        return lb_error_set(err, -EINVAL, "no etcd endpoint given");
    rc = lb_etcd_opts_endpoints(cfg->etcd, &e, err);
    if (rc)
        return rc;
    w->endpoints = calloc(e.n, sizeof(*w->endpoints));
    if (!w->endpoints) {
        lb_etcd_endpoints_free(&e);
        return lb_error_set(err, -ENOMEM, "out of memory");
    }
    memcpy(w->endpoints, e.v, e.n * sizeof(*e.v)); /* ownership moves to w */
    w->n_endpoints = e.n;
    return 0;
}

static int check_positive(int64_t *v, int64_t def, int64_t max, const char *name, char **err)
{
    if (*v == 0)
        *v = def;
    if (*v < 0 || *v > max)
        return lb_error_set(err, -EINVAL, "%s is out of range", name);
    return 0;
}

int lb_watcher_new(struct ev_loop *loop, const struct lb_watcher_config *cfg,
                   const struct lb_update_sink *sink, struct lb_watcher **out, char **err)
{
    struct lb_override_store_config store_cfg;
    struct lb_watcher *w;
    int rc;

    *out = NULL;
    if (!sink || !sink->apply || !sink->commit)
        return lb_error_set(err, -EINVAL, "the watcher needs a sink with apply and commit");
    w = calloc(1, sizeof(*w));
    if (!w)
        return lb_error_set(err, -ENOMEM, "out of memory");
    w->loop = loop;
    w->sink = *sink;
    w->backoff_initial_ms = cfg->backoff_initial_ms;
    w->backoff_max_ms = cfg->backoff_max_ms;
    w->stall_timeout_ms = cfg->stall_timeout_ms;
    w->request_timeout_ms = cfg->request_timeout_ms;
    w->page_size = cfg->page_size;
    lb_watch_lines_init(&w->lines, LB_WATCH_LINE_MAX);
    lb_watch_decoder_init(&w->decoder);
    ev_timer_init(&w->retry_timer, retry_cb, 0., 0.);
    w->retry_timer.data = w;
    ev_timer_init(&w->stall_timer, stall_cb, 0., 0.);
    w->stall_timer.data = w;
    ev_timer_init(&w->log_timer, log_timer_cb, 0., 0.);
    w->log_timer.data = w;
    w->last_list_ms = -1;
    lb_outage_init(&w->outage, LB_OUTAGE_INTERVAL_S);
    w->rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)w;
    if (!w->rng)
        w->rng = 1;

    rc = copy_endpoints(w, cfg, err);
    if (!rc)
        rc = lb_key_prefix_normalize(cfg->prefix, w->prefix, err);
    if (!rc)
        rc = check_positive(&w->backoff_initial_ms, DEFAULT_BACKOFF_INITIAL_MS, 3600 * 1000,
                            "backoff_initial_ms", err);
    if (!rc)
        rc = check_positive(&w->backoff_max_ms, DEFAULT_BACKOFF_MAX_MS, 3600 * 1000,
                            "backoff_max_ms", err);
    if (!rc && w->backoff_max_ms < w->backoff_initial_ms)
        rc = lb_error_set(err, -EINVAL, "backoff_max_ms is below backoff_initial_ms");
    if (!rc)
        rc = check_positive(&w->stall_timeout_ms, LB_WATCHER_STALL_TIMEOUT_MS, 24LL * 3600 * 1000,
                            "stall_timeout_ms", err);
    if (!rc)
        rc = check_positive(&w->request_timeout_ms, DEFAULT_REQUEST_TIMEOUT_MS, 3600 * 1000,
                            "request_timeout_ms", err);
    if (!rc)
        rc = check_positive(&w->page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, "page_size", err);
    if (rc)
        goto out;

    w->range_key_len = (size_t)snprintf(w->range_key, sizeof(w->range_key), "%spools/", w->prefix);
    w->range_end_len = lb_etcd_prefix_end(w->range_key, w->range_key_len, w->range_end);
    {
        struct lb_etcd_endpoints e = {.n = w->n_endpoints};

        memcpy(e.v, w->endpoints, w->n_endpoints * sizeof(*e.v));
        rc = lb_etcd_opts_client(cfg->etcd, &e, w->loop, "watcher", &w->http, err);
    }
    if (rc)
        goto out;
    rc = lb_mirror_new(w->prefix, sink, &w->mirror);
    if (!rc)
        lb_listing_init(&w->listing, w->mirror, w->page_size);
    if (!rc) {
        store_cfg = (struct lb_override_store_config){
            .http = w->http,
            .prefix = w->prefix,
            .endpoints = w->endpoints,
            .n_endpoints = w->n_endpoints,
            .current_endpoint = &w->endpoint,
            .timeout_ms = w->request_timeout_ms,
        };
        rc = lb_override_store_new(&store_cfg, &w->store);
    }
    if (rc)
        lb_error_set(err, rc, "out of memory");
out:
    if (rc) {
        lb_watcher_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

int lb_watcher_start(struct lb_watcher *w)
{
    if (w->started)
        return -EALREADY;
    w->started = true;
    w->started_at = ev_now(w->loop);
    list_begin(w);
    return 0;
}

bool lb_watcher_export(const struct lb_watcher *w, struct lb_watcher_view *view,
                       void (*fn)(void *ctx, const struct lb_watcher_kv *kv), void *ctx)
{
    struct lb_watcher_stats st;

    if (!w->synced || w->revision <= 0)
        return false;
    lb_watcher_get_stats(w, &st);
    view->revision = w->revision;
    view->cluster_id = w->cluster_id;
    view->stale_ms = st.staleness_ms;
    view->prefix = w->prefix;
    lb_mirror_each(w->mirror, fn, ctx);
    return true;
}

int lb_watcher_seed(struct lb_watcher *w, const struct lb_watcher_view *view,
                    const struct lb_watcher_kv *kvs, size_t n)
{
    int rc = 0;

    if (w->started || w->synced)
        return -EALREADY;
    if (!view->prefix || strcmp(view->prefix, w->prefix) != 0)
        return -EXDEV; /* keys of another prefix: nothing of it is ours */
    for (size_t i = 0; i < n && rc >= 0; i++)
        rc = lb_mirror_put(w->mirror, kvs[i].key, kvs[i].key_len, kvs[i].value, kvs[i].value_len,
                           kvs[i].mod_revision);
    /* Synced before the commit, so the sink sees lb_watcher_has_synced(). */
    w->synced = true;
    w->need_relist = true; /* the first contact with etcd lists and applies the difference */
    w->revision = view->revision;
    w->cluster_id = view->cluster_id;
    w->fresh_at = ev_now(w->loop) - (double)(view->stale_ms > 0 ? view->stale_ms : 0) / 1000.0;
    w->sink.commit(w->sink.ctx);
    log_flush_arm(w);
    return rc < 0 ? rc : (int)n;
}

bool lb_watcher_has_synced(const struct lb_watcher *w)
{
    return w->synced;
}

void lb_watcher_get_stats(const struct lb_watcher *w, struct lb_watcher_stats *out)
{
    struct lb_etcd_http_stats hs;
    struct lb_mirror_stats ms;

    memset(out, 0, sizeof(*out));
    lb_mirror_get_stats(w->mirror, &ms);
    out->state = w->state;
    out->synced = w->synced;
    out->revision = w->revision;
    out->reconnects = w->reconnects;
    out->relists = w->relists;
    out->events_received = w->events_received;
    out->updates_applied = ms.updates;
    out->decode_errors = w->decode_errors;
    out->bad_values = ms.bad_values;
    out->bad_keys_last_good = ms.bad_keys_last_good;
    out->bad_keys_never_good = ms.bad_keys_never_good;
    memcpy(out->skipped, ms.skipped, sizeof(out->skipped));
    out->clamped = ms.clamped;
    out->unknown_fields = ms.unknown_fields;
    out->keys = ms.keys;
    out->ms_since_contact =
        w->last_contact > 0 ? (int64_t)((ev_time() - w->last_contact) * 1000.0) : -1;
    if (out->ms_since_contact < -1)
        out->ms_since_contact = 0;
    if (w->state == LB_WATCHER_WATCHING || !w->started)
        out->staleness_ms = 0;
    else
        out->staleness_ms =
            (int64_t)((ev_time() - (w->fresh_at > 0 ? w->fresh_at : w->started_at)) * 1000.0);
    if (out->staleness_ms < 0)
        out->staleness_ms = 0;
    out->last_list_ms = w->last_list_ms;
    out->lag_count = w->lag_count;
    out->lag_sum_s = w->lag_sum;
    out->lag_last_s = w->lag_last;
    out->lag_max_s = w->lag_max;
    out->lag_buckets = w->lag_buckets;
    lb_etcd_http_get_stats(w->http, &hs);
    out->logins = hs.logins;
    out->login_failures = hs.login_failures;
    out->endpoint = w->endpoints[w->endpoint];
}

struct lb_store lb_watcher_store(struct lb_watcher *w)
{
    return lb_override_store_iface(w->store);
}

void lb_watcher_free(struct lb_watcher *w)
{
    if (!w)
        return;
    if (w->loop) {
        ev_timer_stop(w->loop, &w->retry_timer);
        ev_timer_stop(w->loop, &w->stall_timer);
        ev_timer_stop(w->loop, &w->log_timer);
    }
    lb_override_store_free(w->store); /* before the http object its writes live in */
    if (w->call)
        lb_etcd_http_cancel(w->call);
    lb_etcd_http_free(w->http);
    lb_listing_clear(&w->listing);
    lb_mirror_free(w->mirror);
    lb_watch_lines_free(&w->lines);
    lb_watch_decoder_free(&w->decoder);
    for (size_t i = 0; i < w->n_endpoints; i++)
        free(w->endpoints[i]);
    free(w->endpoints);
    free(w);
}

struct lb_etcd_http *lb_watcher_http(struct lb_watcher *w)
{
    return w->http;
}
