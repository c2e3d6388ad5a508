/*
 * Prometheus text exposition (format 0.0.4) of the data plane: per backend,
 * per pool and process-wide families.  Samples of one family are written
 * together, as the format requires.  Discovery adds its own families through
 * an extra renderer (see lb_http_config).
 */
#ifndef LB_METRICS_H
#define LB_METRICS_H

#include "lb_buf.h"
#include "lb_metrics_text.h"
#include "proxy.h"
#include "registry.h"

/*
 * Appends the data-plane families to out: per backend, per pool (counters
 * and the connect and session-duration histograms), process-wide, and
 * Prometheus' process_* families read from /proc/self.  On the control
 * loop.  Returns 0 or -E2BIG/-ENOMEM.
 */
int lb_metrics_render(struct lb_buf *out, struct lb_registry *registry, struct lb_proxy *proxy);

/* What process_* metrics take from /proc/<pid>/stat. */
struct lb_proc_stat {
    unsigned long long utime, stime; /* clock ticks */
    unsigned long long starttime;    /* clock ticks after boot */
    unsigned long long vsize;        /* bytes */
    unsigned long long rss;          /* pages */
};

/* Parses the text of /proc/<pid>/stat.  Returns 0 or -EINVAL. */
int lb_proc_stat_parse(const char *text, struct lb_proc_stat *out);

#endif
