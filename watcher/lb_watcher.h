/*
 * The watcher: keeps lbd's view of `<prefix>pools/` in step with etcd and
 * hands every change to an lb_update_sink as typed updates (lb_update.h).
 *
 * List, then watch.  The watcher range-reads the prefix in pages at one
 * revision R, delivers the listing as one batch, then watches from R+1 and
 * delivers each watch response as one batch.  When the stream ends or
 * fails, it backs off (capped exponential, with jitter), moves to the next
 * endpoint and resumes the watch from the last revision it saw + 1, so no
 * event is skipped or repeated.  It re-lists (and delivers only the
 * difference against what it delivered before) when etcd has compacted
 * that revision away, when a watch line could not be decoded (it may have
 * held events), and when etcd's revision went backwards or its cluster id
 * changed (the data behind the endpoint was replaced).  While etcd is out
 * of reach nothing is delivered: the sink keeps the last known pools.
 *
 * An outage is logged as it begins, then at most once per 30 s with the
 * number of failed attempts and the next delay, and once when it ends
 * ("etcd reachable again after 31.2s, resumed at revision N"); every
 * attempt is logged at debug level.  The staleness gauge tells how long
 * the pools may have been behind etcd.
 *
 * TLS and etcd users are the client's business (lb_etcd_http.h).  A watch
 * etcd cancels for its token (expired, or revoked) logs in again
 * and is made again at once.
 *
 * Values are parsed here (lb_value.h).  One that does not parse is logged
 * once with its key and skipped; if the key held a good value before, the
 * sink keeps that one until the key is fixed or deleted (lb_mirror.h).
 * Numbers and durations out of range are clamped and logged.  No key can
 * stop discovery: keys under the prefix that are too long, not of the
 * schema or malformed, and values too large to read, are skipped and
 * counted by reason (lbd_etcd_skipped_keys_total) with a rate-limited log
 * line each, and the rest of the listing or watch response is applied
 * (lb_skip.h, lb_listing.h).
 *
 * Everything runs on the loop given to lb_watcher_new(), through libcurl's
 * multi interface; no call blocks.  The caller runs curl_global_init()
 * once before creating a watcher.  Sink callbacks run on the loop; they
 * must not call lb_watcher_free().
 */
#ifndef LB_WATCHER_H
#define LB_WATCHER_H

#include "lb_skip.h"
#include "lb_update.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * How long a watch may stay silent before it is torn down and made again.
 * etcd sends a progress notification on a quiet watch every
 * --experimental-watch-progress-notify-interval (default 10m), but skips
 * the tick after any event, so a healthy stream can be silent for almost
 * twice the interval: hence 25 minutes.  With a known interval I, set
 * stall_timeout_ms to about 2*I plus a margin.  A dead peer is found much
 * sooner by TCP keepalive (30s idle, 10s probes) whatever this says.
 */
#define LB_WATCHER_STALL_TIMEOUT_MS (25LL * 60 * 1000)

struct lb_etcd_opts;

struct lb_watcher_config {
    const struct lb_etcd_opts *etcd; /* endpoints, TLS files, user (lb_etcd_opts.h) */
    const char *prefix;              /* "/lb/"; a missing trailing '/' is added */
    int64_t backoff_initial_ms;      /* 0 = 100ms */
    int64_t backoff_max_ms;          /* 0 = 1s */
    int64_t stall_timeout_ms;        /* 0 = LB_WATCHER_STALL_TIMEOUT_MS */
    int64_t request_timeout_ms;      /* range pages, override writes, watch set-up; 0 = 10s */
    int64_t page_size;               /* keys per range page; 0 = 500 */
};

enum lb_watcher_state {
    LB_WATCHER_IDLE,       /* not started */
    LB_WATCHER_LISTING,    /* range-reading the prefix */
    LB_WATCHER_CONNECTING, /* watch requested, not yet confirmed by etcd */
    LB_WATCHER_WATCHING,   /* watch stream established */
    LB_WATCHER_BACKOFF,    /* waiting before the next attempt */
};

struct lb_watcher_stats {
    enum lb_watcher_state state;
    bool synced;                       /* the first full listing was delivered */
    int64_t revision;                  /* last etcd revision applied */
    uint64_t reconnects;               /* failed or ended listings and watches */
    uint64_t relists;                  /* listings after the first */
    uint64_t events_received;          /* watch events read */
    uint64_t updates_applied;          /* updates delivered to the sink */
    uint64_t decode_errors;            /* responses or watch lines that did not decode */
    uint64_t bad_values;               /* values of schema keys that did not parse */
    size_t bad_keys_last_good;         /* keys whose value is bad now, the last good one served */
    size_t bad_keys_never_good;        /* keys whose value is bad now, with no good one yet */
    uint64_t skipped[LB_SKIP_REASONS]; /* keys skipped, by reason (lb_skip.h) */
    uint64_t clamped;                  /* value fields clamped into their range */
    uint64_t unknown_fields;           /* policy fields not known, ignored */
    size_t keys;                       /* schema keys known */
    int64_t ms_since_contact;          /* since the last bytes from etcd; -1 = never */
    /* since the watcher last had a confirmed watch or a complete listing; 0 while watching */
    int64_t staleness_ms;
    int64_t last_list_ms; /* how long the last complete listing took; -1 = none yet */
    /* update lag: a watch response's arrival to the end of its commit to the sink */
    uint64_t lag_count;
    double lag_sum_s, lag_last_s, lag_max_s;
    const uint64_t *lag_buckets; /* lag_count per LB_WATCHER_LAG_BUCKETS bound, cumulative */
    uint64_t logins;             /* etcd logins (tokens obtained) */
    uint64_t login_failures;
    const char *endpoint; /* endpoint in use; valid until the watcher is freed */
};

/* Upper bounds (seconds) of the update lag histogram's buckets, +Inf not included. */
#define LB_WATCHER_LAG_BOUNDS                                                                      \
    {                                                                                              \
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0           \
    }
#define LB_WATCHER_LAG_BUCKETS 12

struct lb_watcher;
struct lb_etcd_http;

/*
 * Creates a watcher; nothing is sent before lb_watcher_start().  The sink is
 * copied.  The TLS files are checked and the credentials file is read here.
 * Returns 0, or a negative errno with *err (malloc'd) saying which setting
 * is wrong (an unreadable file, a malformed credentials file, ...).
 */
int lb_watcher_new(struct ev_loop *loop, const struct lb_watcher_config *cfg,
                   const struct lb_update_sink *sink, struct lb_watcher **out, char **err);

/* Begins list-then-watch.  Never blocks; returns 0 or -EALREADY. */
int lb_watcher_start(struct lb_watcher *w);

/* True once the first full listing has been delivered (and committed). */
bool lb_watcher_has_synced(const struct lb_watcher *w);

/*
 * The old process: false until the first listing; otherwise fills *view and
 * calls fn for each key it holds.
 */
bool lb_watcher_export(const struct lb_watcher *w, struct lb_watcher_view *view,
                       void (*fn)(void *ctx, const struct lb_watcher_kv *kv), void *ctx);

/*
 * The new process, before lb_watcher_start(): takes the previous process's
 * view as if it had listed it itself, delivers it to the sink in one batch
 * and commits (so lb_watcher_has_synced() is true in the commit), without
 * asking etcd.  lb_watcher_start() then lists etcd and delivers only the
 * difference, as after a reconnect; while etcd is out of reach the view
 * serves, and its staleness counts from when the previous process lost
 * touch.  Returns the keys taken, or -EALREADY (started or synced), -EXDEV
 * (the view is of another key prefix: nothing taken, nothing committed) or
 * -ENOMEM (what was delivered is committed; the listing completes it).
 */
int lb_watcher_seed(struct lb_watcher *w, const struct lb_watcher_view *view,
                    const struct lb_watcher_kv *kvs, size_t n);

/* The etcd client the watcher uses (for SIGHUP's lb_etcd_opts_reload()). */
struct lb_etcd_http *lb_watcher_http(struct lb_watcher *w);

void lb_watcher_get_stats(const struct lb_watcher *w, struct lb_watcher_stats *out);

/* "idle", "listing", "connecting", "watching", "backoff". */
const char *lb_watcher_state_name(enum lb_watcher_state state);

struct lb_buf;

/*
 * Appends the watcher's families in Prometheus text format (lbd_etcd_*:
 * state, synced, revision, reconnects, re-lists, events, updates, decode
 * errors, bad values, skipped keys by reason, clamped fields, keys,
 * seconds since the last contact, staleness,
 * update lag, last listing time, logins, endpoint).  Returns 0, or
 * -E2BIG / -ENOMEM from the buffer.
 */
int lb_watcher_render_metrics(const struct lb_watcher *w, struct lb_buf *out);

/* Cluster-scope override writes through this watcher's etcd endpoints. */
struct lb_store lb_watcher_store(struct lb_watcher *w);

/*
 * Cancels every transfer and frees everything.  Pending override writes
 * are cancelled: their done callbacks run, from inside this call, with
 * -ECANCELED.  Not from inside a sink or store callback.
 */
void lb_watcher_free(struct lb_watcher *w);

#endif
