/*
 * The watcher's statistics as Prometheus text (exposition format 0.0.4),
 * for lbd's /metrics.  Names start with lbd_etcd_; counters end in _total.
 * The state is one gauge per state name with value 0 or 1, so a dashboard
 * can graph time spent in each.
 *
 * Two families answer "how far behind etcd can the pools be":
 * lbd_etcd_staleness_seconds (0 while a confirmed watch is up; otherwise
 * the time since there last was one, or a complete listing: alert on it)
 * and lbd_etcd_update_lag_seconds (a histogram of the time from a watch
 * response's arrival to the end of its pool commit, plus the last and the
 * largest value as gauges).
 */
#include "lb_buf.h"
#include "lb_metrics_text.h"
#include "lb_watcher.h"

#include <stdio.h>

/* The update lag histogram and its last/max gauges. */
static int render_lag(struct lb_buf *out, const struct lb_watcher_stats *st)
{
    static const double bounds[LB_WATCHER_LAG_BUCKETS] = LB_WATCHER_LAG_BOUNDS;
    int rc =
        lb_metrics_family(out, "lbd_etcd_update_lag_seconds", "histogram",
                          "Time from a watch response's arrival to the end of its pool commit.");

    for (size_t i = 0; !rc && i < LB_WATCHER_LAG_BUCKETS; i++)
        rc = lb_buf_printf(out, "lbd_etcd_update_lag_seconds_bucket{le=\"%g\"} %llu\n", bounds[i],
                           (unsigned long long)st->lag_buckets[i]);
    if (!rc)
        rc = lb_buf_printf(out, "lbd_etcd_update_lag_seconds_bucket{le=\"+Inf\"} %llu\n",
                           (unsigned long long)st->lag_count);
    if (!rc)
        rc = lb_buf_printf(out, "lbd_etcd_update_lag_seconds_sum %.6f\n", st->lag_sum_s);
    if (!rc)
        rc = lb_buf_printf(out, "lbd_etcd_update_lag_seconds_count %llu\n",
                           (unsigned long long)st->lag_count);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_etcd_update_lag_last_seconds", "gauge",
                               "Update lag of the last watch response committed.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_etcd_update_lag_last_seconds %.6f\n", st->lag_last_s);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_etcd_update_lag_max_seconds", "gauge",
                               "Largest update lag since lbd started.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_etcd_update_lag_max_seconds %.6f\n", st->lag_max_s);
    return rc;
}

struct counter {
    const char *name, *type, *help;
    unsigned long long value;
};

int lb_watcher_render_metrics(const struct lb_watcher *w, struct lb_buf *out)
{
    static const enum lb_watcher_state states[] = {
        LB_WATCHER_IDLE,     LB_WATCHER_LISTING, LB_WATCHER_CONNECTING,
        LB_WATCHER_WATCHING, LB_WATCHER_BACKOFF,
    };
    struct lb_watcher_stats st;
    char endpoint[600];
    int rc;

    lb_watcher_get_stats(w, &st);
    const struct counter counters[] = {
        {"lbd_etcd_synced", "gauge", "1 once the first full listing of etcd was applied.",
         st.synced},
        {"lbd_etcd_revision", "gauge", "Last etcd revision applied.",
         (unsigned long long)st.revision},
        {"lbd_etcd_reconnects_total", "counter",
         "etcd listings or watches that failed or ended and were retried.", st.reconnects},
        {"lbd_etcd_relists_total", "counter",
         "Full listings after the first (compaction, lost stream data, changed cluster).",
         st.relists},
        {"lbd_etcd_events_total", "counter", "Watch events received from etcd.",
         st.events_received},
        {"lbd_etcd_updates_total", "counter", "Pool updates applied from etcd.",
         st.updates_applied},
        {"lbd_etcd_decode_errors_total", "counter",
         "etcd responses or watch lines that could not be decoded.", st.decode_errors},
        {"lbd_etcd_bad_values_total", "counter",
         "etcd values of schema keys that did not parse (logged with their key; also in "
         "lbd_etcd_skipped_keys_total{reason=\"bad_value\"}).",
         st.bad_values},
        {"lbd_etcd_clamped_fields_total", "counter",
         "Fields of etcd values out of their range, clamped to it (logged with key and field).",
         st.clamped},
        {"lbd_etcd_unknown_fields_total", "counter",
         "Unknown fields of pool policies, ignored (logged with key, field and the nearest "
         "known name).",
         st.unknown_fields},
        {"lbd_etcd_keys", "gauge", "Keys of the lbd schema known from etcd.",
         (unsigned long long)st.keys},
    };

    rc = lb_metrics_family(out, "lbd_etcd_watch_state", "gauge",
                           "1 for the state the etcd watcher is in, 0 for the others.");
    for (size_t i = 0; !rc && i < sizeof(states) / sizeof(states[0]); i++)
        rc = lb_buf_printf(out, "lbd_etcd_watch_state{state=\"%s\"} %d\n",
                           lb_watcher_state_name(states[i]), st.state == states[i]);
    for (size_t i = 0; !rc && i < sizeof(counters) / sizeof(counters[0]); i++) {
        rc = lb_metrics_family(out, counters[i].name, counters[i].type, counters[i].help);
        if (!rc)
            rc = lb_buf_printf(out, "%s %llu\n", counters[i].name, counters[i].value);
    }
    if (!rc)
        rc = lb_metrics_family(out, "lbd_etcd_skipped_keys_total", "counter",
                               "etcd keys (listing entries or watch events) lbd skipped, by "
                               "reason; each is logged, rate limited.");
    for (int r = 0; !rc && r < LB_SKIP_REASONS; r++)
        rc = lb_buf_printf(out, "lbd_etcd_skipped_keys_total{reason=\"%s\"} %llu\n",
                           lb_skip_reason_name(r), (unsigned long long)st.skipped[r]);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_etcd_bad_keys", "gauge",
                               "Keys of the lbd schema whose value in etcd cannot be used now "
                               "(invalid, or unreadable), by what lbd serves for them: the last "
                               "good value, or nothing.  Alert on any.");
    if (!rc)
        rc = lb_buf_printf(out,
                           "lbd_etcd_bad_keys{serving=\"last_good\"} %zu\n"
                           "lbd_etcd_bad_keys{serving=\"nothing\"} %zu\n",
                           st.bad_keys_last_good, st.bad_keys_never_good);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_etcd_last_contact_seconds", "gauge",
                               "Seconds since bytes last arrived from etcd (no sample until "
                               "they first do).");
    if (!rc && st.ms_since_contact >= 0)
        rc = lb_buf_printf(out, "lbd_etcd_last_contact_seconds %.3f\n",
                           (double)st.ms_since_contact / 1000.0);
    if (!rc)
        rc = lb_metrics_family(
            out, "lbd_etcd_staleness_seconds", "gauge",
            "Seconds since the watcher last had a confirmed watch or a complete listing "
            "of etcd; 0 while watching.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_etcd_staleness_seconds %.3f\n",
                           (double)st.staleness_ms / 1000.0);
    if (!rc)
        rc = render_lag(out, &st);
    if (!rc)
        rc = lb_metrics_family(
            out, "lbd_etcd_last_list_seconds", "gauge",
            "How long the last complete listing of etcd took, to its commit (no sample "
            "until the first one).");
    if (!rc && st.last_list_ms >= 0)
        rc = lb_buf_printf(out, "lbd_etcd_last_list_seconds %.3f\n",
                           (double)st.last_list_ms / 1000.0);
    if (!rc)
        rc = lb_metrics_family(
            out, "lbd_etcd_logins_total", "counter",
            "Logins to etcd (--etcd-user-file): the first, then one per expired token.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_etcd_logins_total %llu\n", (unsigned long long)st.logins);
    if (!rc)
        rc = lb_metrics_family(
            out, "lbd_etcd_login_failures_total", "counter",
            "Logins to etcd that failed (refused credentials, etcd unreachable).");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_etcd_login_failures_total %llu\n",
                           (unsigned long long)st.login_failures);
    if (!rc)
        rc =
            lb_metrics_family(out, "lbd_etcd_endpoint_info", "gauge",
                              "The etcd endpoint in use (while backing off: the next one to try).");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_etcd_endpoint_info{endpoint=\"%s\"} 1\n",
                           lb_metrics_escape(st.endpoint, endpoint, sizeof(endpoint)));
    return rc;
}
