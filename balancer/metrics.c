/*
 * /metrics in Prometheus text (contract in metrics.h): per backend from
 * lb_backend_info through one table of families, per pool and process from
 * the registry and the proxy; labels escaped once per backend per scrape.
 *
 * No sentinels: a gauge holds a quantity or 0/1, never -1 for "unknown";
 * what is not known yet is a gauge of its own (lbd_backend_health_checked).
 *
 * The connect and duration histograms are per pool, not per backend: 14
 * and 8 buckets per backend would make a 1,000-backend pool 22,000 series;
 * the per-backend counters (connections, failures, bytes) say which
 * backend to look at, the access log the rest.
 */
#include "metrics.h"
#include "lb_update.h"
#include "session.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

enum backend_field {
    F_ACTIVE,
    F_TOTAL,
    F_FAILURES,
    F_RETRIES,
    F_BYTES_IN,
    F_BYTES_OUT,
    F_WEIGHT,
    F_EFFECTIVE,
    F_DRAIN,
    F_HEALTHY,
    F_HEALTH_CHECKED,
};

static const struct {
    const char *name, *type, *help;
} backend_families[] = {
    [F_ACTIVE] = {"lbd_backend_active_connections", "gauge",
                  "Client connections open to the backend (connecting or proxying)."},
    [F_TOTAL] = {"lbd_backend_connections_total", "counter",
                 "Connections established to the backend."},
    [F_FAILURES] = {"lbd_backend_connect_failures_total", "counter",
                    "Connect attempts to the backend that failed or timed out."},
    [F_RETRIES] = {"lbd_backend_retries_total", "counter",
                   "Failed connects to the backend that were retried on another backend."},
    [F_BYTES_IN] = {"lbd_backend_bytes_in_total", "counter",
                    "Bytes sent from clients to the backend."},
    [F_BYTES_OUT] = {"lbd_backend_bytes_out_total", "counter",
                     "Bytes sent from the backend to clients."},
    [F_WEIGHT] = {"lbd_backend_weight", "gauge", "Registered weight."},
    [F_EFFECTIVE] = {"lbd_backend_effective_weight", "gauge",
                     "Weight used for new connections (0 when drained, down or removed)."},
    [F_DRAIN] = {"lbd_backend_drain", "gauge", "1 when the backend is drained by an operator."},
    [F_HEALTHY] = {"lbd_backend_healthy", "gauge",
                   "1 when the backend may get traffic as far as health goes: checks pass or have "
                   "not decided yet, not ejected, or forced up; 0 when down or forced down."},
    [F_HEALTH_CHECKED] = {"lbd_backend_health_checked", "gauge",
                          "1 once active checks (or a passive ejection) gave a verdict on the "
                          "backend; 0 before the first check, or with checks off."},
};

static uint64_t backend_value(const struct lb_backend_info *b, enum backend_field f)
{
    switch (f) {
    case F_ACTIVE:
        return b->active;
    case F_TOTAL:
        return b->total;
    case F_FAILURES:
        return b->connect_failures;
    case F_RETRIES:
        return b->retries;
    case F_BYTES_IN:
        return b->bytes_in;
    case F_BYTES_OUT:
        return b->bytes_out;
    case F_WEIGHT:
        return b->weight;
    case F_EFFECTIVE:
        return b->effective_weight;
    case F_DRAIN:
        return b->drain;
    case F_HEALTHY:
        /* lb_backend_is_healthy(): the override wins; not yet checked counts as up. */
        if (b->health_override == LB_HEALTH_FORCE_UP)
            return 1;
        if (b->health_override == LB_HEALTH_FORCE_DOWN)
            return 0;
        return b->health != LB_HEALTH_DOWN;
    case F_HEALTH_CHECKED:
        return b->health != LB_HEALTH_UNKNOWN; /* lb_backend_info folds ejection into DOWN */
    }
    return 0;
}

/*
 * One backend's labels, escaped once per scrape, and its counters.  The
 * families are written from this table, so the per-line work is a few
 * memcpy and one integer conversion: with 10,000 backends a scrape stays
 * a few milliseconds of loop time.
 */
struct backend_row {
    struct lb_backend_info info;
    size_t labels_off, labels_len; /* in the scrape's label arena */
};

struct collect_ctx {
    struct backend_row *rows;
    size_t n, cap;
    struct lb_buf labels;
    int rc;
};

static void collect_backend(void *ud, const struct lb_backend_info *b)
{
    struct collect_ctx *c = ud;
    char pool[LB_NAME_MAX * 2], id[LB_NAME_MAX * 2], addr[LB_ADDR_MAX * 2], text[1024];
    int len;

    if (c->rc)
        return;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        struct backend_row *rows = realloc(c->rows, cap * sizeof(*rows));

        if (!rows) {
            c->rc = -ENOMEM;
            return;
        }
        c->rows = rows;
        c->cap = cap;
    }
    len = snprintf(text, sizeof(text), "{pool=\"%s\",backend=\"%s\",addr=\"%s\"} ",
                   lb_metrics_escape(b->pool, pool, sizeof(pool)),
                   lb_metrics_escape(b->id, id, sizeof(id)),
                   lb_metrics_escape(b->addr, addr, sizeof(addr)));
    if (len < 0 || (size_t)len >= sizeof(text)) {
        c->rc = -E2BIG;
        return;
    }
    c->rows[c->n].info = *b;
    c->rows[c->n].labels_off = c->labels.len;
    c->rows[c->n].labels_len = (size_t)len;
    c->rc = lb_buf_append(&c->labels, text, (size_t)len);
    c->n++;
}

/* Writes v in decimal at buf; returns its length. */
static size_t format_u64(char *buf, uint64_t v)
{
    char tmp[24];
    size_t n = 0, o = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        buf[o++] = tmp[--n];
    return o;
}

static int render_backends(struct lb_buf *out, struct lb_registry *r)
{
    struct collect_ctx c = {0};
    int rc;

    lb_buf_init(&c.labels, 64u << 20);
    lb_control_list_backends(r, NULL, collect_backend, &c);
    rc = c.rc;
    for (size_t f = 0; f < sizeof(backend_families) / sizeof(backend_families[0]) && !rc; f++) {
        const char *name = backend_families[f].name;
        size_t name_len = strlen(name);

        rc = lb_metrics_family(out, name, backend_families[f].type, backend_families[f].help);
        for (size_t i = 0; i < c.n && !rc; i++) {
            const struct backend_row *row = &c.rows[i];
            char line[64 + 2 * (LB_NAME_MAX * 2 + LB_ADDR_MAX * 2)];
            uint64_t v = backend_value(&row->info, (enum backend_field)f);
            size_t o = 0;

            memcpy(line, name, name_len);
            o += name_len;
            memcpy(line + o, c.labels.data + row->labels_off, row->labels_len);
            o += row->labels_len;
            o += format_u64(line + o, v);
            line[o++] = '\n';
            rc = lb_buf_append(out, line, o);
        }
    }
    free(c.rows);
    lb_buf_free(&c.labels);
    return rc;
}

/* ------------------------------------------------------ histograms -- */

/* One histogram family, a series per pool: cumulative buckets, sum, count. */
static int render_histogram(struct lb_buf *out, struct lb_registry *r, struct lb_proxy *proxy,
                            bool connect)
{
    static const double connect_bounds[LB_CONNECT_BUCKETS] = LB_CONNECT_BOUNDS;
    static const double duration_bounds[LB_DURATION_BUCKETS] = LB_DURATION_BOUNDS;
    const char *fam = connect ? "lbd_backend_connect_seconds" : "lbd_session_duration_seconds";
    const double *bounds = connect ? connect_bounds : duration_bounds;
    size_t n = connect ? LB_CONNECT_BUCKETS : LB_DURATION_BUCKETS;
    int rc = lb_metrics_family(
        out, fam, "histogram",
        connect ? "Time from connect() to a backend until the connect was confirmed, per pool "
                  "(connects that failed are in lbd_backend_connect_failures_total)."
                : "Client sessions from accept to close, per pool (sessions handed to the next "
                  "lbd at an upgrade end there, not here).");

    for (size_t i = 0; i < r->n_pools && !rc; i++) {
        struct lb_session_histograms h;
        const uint64_t *counts;
        uint64_t cumulative = 0;
        char pn[LB_NAME_MAX * 2];

        lb_session_histograms(i, proxy->n_workers, &h);
        counts = connect ? h.connect : h.duration;
        lb_metrics_escape(r->pools[i].name, pn, sizeof(pn));
        for (size_t b = 0; b <= n && !rc; b++) {
            char le[32];

            cumulative += counts[b];
            if (b < n)
                snprintf(le, sizeof(le), "%g", bounds[b]);
            else
                snprintf(le, sizeof(le), "+Inf");
            rc = lb_buf_printf(out, "%s_bucket{pool=\"%s\",le=\"%s\"} %llu\n", fam, pn, le,
                               (unsigned long long)cumulative);
        }
        if (!rc)
            rc = lb_buf_printf(out, "%s_sum{pool=\"%s\"} %.6f\n", fam, pn,
                               connect ? h.connect_sum : h.duration_sum);
        if (!rc)
            rc = lb_buf_printf(out, "%s_count{pool=\"%s\"} %llu\n", fam, pn,
                               (unsigned long long)cumulative);
    }
    return rc;
}

/* --------------------------------------------------------- process -- */

int lb_proc_stat_parse(const char *text, struct lb_proc_stat *out)
{
    /* "pid (comm) state ppid ...": comm may hold spaces and parentheses,
     * so fields are counted from the last ')'; state is field 3. */
    const char *p = strrchr(text, ')');
    unsigned long long v[25] = {0};

    if (!p)
        return -EINVAL;
    p++;
    for (int field = 3; field <= 24; field++) {
        char *end;

        while (*p == ' ')
            p++;
        if (!*p)
            return -EINVAL;
        if (field == 3) { /* the state letter */
            p++;
            continue;
        }
        errno = 0;
        v[field] = strtoull(p, &end, 10);
        if (end == p || errno)
            return -EINVAL;
        p = end;
    }
    out->utime = v[14];
    out->stime = v[15];
    out->starttime = v[22];
    out->vsize = v[23];
    out->rss = v[24];
    return 0;
}

/* Reads a small file (/proc) whole into buf (NUL-terminated); returns 0 or a negative errno. */
static int read_small_file(const char *path, char *buf, size_t size)
{
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -errno;
    while (got < size - 1) {
        ssize_t n = read(fd, buf + got, size - 1 - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    return got ? 0 : -EIO;
}

/* The boot time (seconds since the epoch), from /proc/stat's btime; 0 if unknown.  It
 * never changes: read once (on the control loop, which renders /metrics). */
static uint64_t boot_time(void)
{
    static uint64_t btime;
    FILE *f;
    char *line = NULL;
    size_t cap = 0;

    if (btime)
        return btime;
    if (!(f = fopen("/proc/stat", "re")))
        return 0;
    while (getline(&line, &cap, f) > 0) {
        if (strncmp(line, "btime ", 6) == 0) {
            btime = strtoull(line + 6, NULL, 10);
            break;
        }
    }
    free(line);
    fclose(f);
    return btime;
}

/* File descriptors open now (the one that lists them not counted); -1 when unknown. */
static long long open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    long long n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d))
            n++;
    closedir(d);
    return n;
}

/*
 * The process_* families of Prometheus' client libraries, from /proc/self
 * at each scrape.  A family whose source cannot be read is left out, never
 * written as a made-up value.
 */
static int render_process(struct lb_buf *out)
{
    char text[1024];
    struct lb_proc_stat st;
    struct rlimit rl;
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    long long fds = open_fds();
    int rc = 0;

    if (tick <= 0)
        tick = 100;
    if (page <= 0)
        page = 4096;
    if (read_small_file("/proc/self/stat", text, sizeof(text)) == 0 &&
        lb_proc_stat_parse(text, &st) == 0) {
        uint64_t btime = boot_time();

        rc = lb_metrics_family(out, "process_cpu_seconds_total", "counter",
                               "Total user and system CPU time spent in seconds.");
        if (!rc)
            rc = lb_buf_printf(out, "process_cpu_seconds_total %.2f\n",
                               (double)(st.utime + st.stime) / (double)tick);
        if (!rc)
            rc = lb_metrics_family(out, "process_resident_memory_bytes", "gauge",
                                   "Resident memory size in bytes.");
        if (!rc)
            rc = lb_buf_printf(out, "process_resident_memory_bytes %llu\n",
                               (unsigned long long)st.rss * (unsigned long long)page);
        if (!rc)
            rc = lb_metrics_family(out, "process_virtual_memory_bytes", "gauge",
                                   "Virtual memory size in bytes.");
        if (!rc)
            rc = lb_buf_printf(out, "process_virtual_memory_bytes %llu\n",
                               (unsigned long long)st.vsize);
        if (!rc && btime)
            rc = lb_metrics_family(out, "process_start_time_seconds", "gauge",
                                   "Start time of the process since unix epoch in seconds.");
        if (!rc && btime)
            rc = lb_buf_printf(out, "process_start_time_seconds %.2f\n",
                               (double)btime + (double)st.starttime / (double)tick);
    }
    if (!rc && fds >= 0)
        rc =
            lb_metrics_family(out, "process_open_fds", "gauge", "Number of open file descriptors.");
    if (!rc && fds >= 0)
        rc = lb_buf_printf(out, "process_open_fds %lld\n", fds);
    if (!rc && getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rc = lb_metrics_family(out, "process_max_fds", "gauge",
                               "Maximum number of open file descriptors.");
        if (!rc && rl.rlim_cur == RLIM_INFINITY)
            rc = lb_buf_printf(out, "process_max_fds +Inf\n");
        else if (!rc)
            rc = lb_buf_printf(out, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
    return rc;
}

int lb_metrics_render(struct lb_buf *out, struct lb_registry *r, struct lb_proxy *proxy)
{
    int rc = render_backends(out, r);

#define POOL_FAMILY(fam, type, help, expr)                                                         \
    do {                                                                                           \
        if (!rc)                                                                                   \
            rc = lb_metrics_family(out, fam, type, help);                                          \
        for (size_t i = 0; i < r->n_pools && !rc; i++) {                                           \
            const struct lb_pool *p = &r->pools[i];                                                \
            struct lb_pool_counters c;                                                             \
            char pn[LB_NAME_MAX * 2];                                                              \
            lb_proxy_pool_counters(proxy, i, &c);                                                  \
            rc = lb_buf_printf(out, "%s{pool=\"%s\"} %llu\n", fam,                                 \
                               lb_metrics_escape(p->name, pn, sizeof(pn)),                         \
                               (unsigned long long)(expr));                                        \
        }                                                                                          \
    } while (0)

    POOL_FAMILY("lbd_pool_backends", "gauge", "Registered backends.", p->snap->n_entries);
    POOL_FAMILY("lbd_pool_eligible_backends", "gauge",
                "Backends that receive new connections (registered, undrained, not down, "
                "weight > 0).",
                p->snap->n_eligible);
    POOL_FAMILY("lbd_pool_active_connections", "gauge", "Open client connections.", c.active);
    POOL_FAMILY("lbd_pool_connections_total", "counter", "Client connections accepted.", c.total);
    POOL_FAMILY("lbd_pool_proxy_header_errors_total", "counter",
                "Clients of an accept-proxy pool closed for a missing, late or bad PROXY header.",
                c.bad_proxy_headers);
    POOL_FAMILY("lbd_pool_no_backend_total", "counter",
                "Client connections closed because no backend could take them.", c.no_backend);
    POOL_FAMILY("lbd_pool_healthy_backends", "gauge",
                "Backends that may get traffic and pass health checks (or are forced up).",
                p->snap->n_healthy);
    POOL_FAMILY("lbd_pool_panic", "gauge",
                "1 when fewer than panic_threshold% of backends are healthy and traffic is "
                "spread over all of them.",
                p->snap->panic);
    POOL_FAMILY("lbd_pool_snapshot_rebuilds_total", "counter",
                "Snapshots built because backends joined or left or the policy changed.",
                p->rebuilds);
    POOL_FAMILY("lbd_pool_snapshot_updates_total", "counter",
                "In-place publishes of health, weight and drain changes (no rebuild).", p->updates);
    POOL_FAMILY("lbd_pool_retries_total", "counter", "Failed connects retried on another backend.",
                c.retries);
    POOL_FAMILY("lbd_pool_queue_length", "gauge",
                "Clients waiting for a backend slot now (every eligible backend at max_conns).",
                c.queue_length);
    POOL_FAMILY("lbd_pool_queued_total", "counter",
                "Clients that waited for a backend slot (the pool's queue_timeout).", c.queued);
    POOL_FAMILY("lbd_pool_queue_timeouts_total", "counter",
                "Clients closed because no backend slot freed within queue_timeout.",
                c.queue_timeouts);
#undef POOL_FAMILY

    if (!rc)
        rc = lb_metrics_family(out, "lbd_event_subscribers", "gauge",
                               "Event streams open: gRPC WatchEvents (lbctl watch) and the "
                               "status page's /events.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_event_subscribers %zu\n", lb_events_subscribers(&r->events));

    /* Only pools with zone affinity on (lbd has --zone, the policy a
     * zone_affinity): absent elsewhere, so a sum over pools means something. */
    for (size_t i = 0, first = 1; i < r->n_pools && !rc; i++) {
        const struct lb_pool *p = &r->pools[i];
        char pn[LB_NAME_MAX * 2];

        if (!lb_pool_zone_aware(p))
            continue;
        if (first) {
            rc = lb_metrics_family(out, "lbd_pool_zone_local", "gauge",
                                   "1 while new connections stay in this lbd's zone (enough of "
                                   "its backends eligible), 0 while they spill over to all zones; "
                                   "only for pools with zone_affinity on.");
            first = 0;
        }
        if (!rc)
            rc = lb_buf_printf(out, "lbd_pool_zone_local{pool=\"%s\"} %d\n",
                               lb_metrics_escape(p->name, pn, sizeof(pn)),
                               lb_pool_zone_local(p) ? 1 : 0);
    }

    for (int k = 0; k < 2 && !rc; k++) {
        const char *fam = k ? "lbd_pool_snapshot_update_seconds_total"
                            : "lbd_pool_snapshot_rebuild_seconds_total";

        rc = lb_metrics_family(out, fam, "counter",
                               k ? "Loop time spent publishing health, weight and drain changes "
                                   "in place."
                                 : "Loop time spent building snapshots.");
        for (size_t i = 0; i < r->n_pools && !rc; i++) {
            const struct lb_pool *p = &r->pools[i];
            char pn[LB_NAME_MAX * 2];

            rc = lb_buf_printf(out, "%s{pool=\"%s\"} %.6f\n", fam,
                               lb_metrics_escape(p->name, pn, sizeof(pn)),
                               k ? p->update_seconds : p->rebuild_seconds);
        }
    }

    if (!rc)
        rc = lb_metrics_family(out, "lbd_worker_connections_total", "counter",
                               "Client connections accepted, per worker thread.");
    for (unsigned i = 0; i < proxy->n_workers && !rc; i++)
        rc = lb_buf_printf(out, "lbd_worker_connections_total{worker=\"%u\"} %llu\n", i,
                           (unsigned long long)atomic_load_explicit(&proxy->workers[i].accepted,
                                                                    memory_order_relaxed));
    {
        uint64_t accepted, accept_errors, cap_pauses, moved, kept;

        lb_proxy_totals(proxy, &accepted, &accept_errors, &cap_pauses);
        lb_proxy_offer_totals(proxy, &moved, &kept);
        const struct {
            const char *name, *type, *help;
            uint64_t value;
        } process[] = {
            {"lbd_connections_active", "gauge", "Open client connections, all pools.",
             lb_proxy_active(proxy)},
            {"lbd_workers", "gauge", "Worker threads serving the pools (--workers).",
             proxy->n_workers},
            {"lbd_connections_max", "gauge",
             "Connection cap (--max-conns); accepting pauses at the cap.", proxy->max_conns},
            {"lbd_accept_errors_total", "counter", "accept() failures (EMFILE and the like).",
             accept_errors},
            {"lbd_accept_paused_total", "counter", "Times the connection cap paused accepting.",
             cap_pauses},
            {"lbd_backends_refused_total", "counter",
             "Registrations whose address lbd refuses to route to (its own listeners, outside "
             "--backend-networks).",
             r->backends_refused},
            {"lbd_upgrade_sessions_adopted_total", "counter",
             "Open connections taken over from the previous lbd at an upgrade.",
             lb_proxy_adopted(proxy)},
            {"lbd_upgrade_sessions_moved_total", "counter",
             "Open connections handed over to the next lbd at an upgrade.", moved},
            {"lbd_events_dropped_total", "counter",
             "Pool events not delivered to watchers for lack of memory.", r->events.dropped},
        };

        for (size_t i = 0; i < sizeof(process) / sizeof(process[0]) && !rc; i++) {
            rc = lb_metrics_family(out, process[i].name, process[i].type, process[i].help);
            if (!rc)
                rc = lb_buf_printf(out, "%s %llu\n", process[i].name,
                                   (unsigned long long)process[i].value);
        }
    }
    if (!rc)
        rc = render_histogram(out, r, proxy, true);
    if (!rc)
        rc = render_histogram(out, r, proxy, false);
    if (!rc)
        rc = render_process(out);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_build_info", "gauge", "Version of this lbd.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_build_info{version=\"%s\"} 1\n", LB_VERSION);
    return rc;
}
