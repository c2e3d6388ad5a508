/*
 * lbd: wires the pieces onto one libev loop and runs it.
 *
 *   watcher (etcd) --typed updates--> registry (pools, snapshots) <-- admin API
 *                                        |
 *                  listeners + sessions (proxy) ----> /metrics, /readyz (http)
 *
 * Start-up order matters for readiness: listeners are bound before anything
 * else so a port clash fails fast; /readyz turns 200 only when listeners
 * are bound and the first etcd listing has been applied.  SIGTERM/SIGINT
 * turn /readyz to 503 at once, close the listeners, and let open
 * connections finish for --shutdown-grace before closing them; lbd then
 * exits 0.  A second SIGTERM/SIGINT closes them at once.
 */
#include "addr_policy.h"
#include "admin_auth.h"
#include "admin_server.h"
#include "admin_service.h"
#include "http_endpoint.h"
#include "lb_addr.h"
#include "lb_etcd_http.h"
#include "lb_etcd_opts.h"
#include "lb_file.h"
#include "lb_key.h"
#include "lb_log.h"
#include "lb_settings.h"
#include "lb_util.h"
#include "lb_view_file.h"
#include "lb_watcher.h"
#include "metrics.h"
#include "lb_cpus.h"
#include "proxy.h"
#include "registry.h"
#include "resolver.h"
#include "sd_notify.h"
#include "state_file.h"
#include "upgrade.h"
#include "lb_listen.h"

#include <curl/curl.h>
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define FDS_RESERVED 256 /* etcd, admin (64), http (96 at most), checks, logs, slack */

struct lbd_settings {
    struct lb_etcd_opts etcd;
    char *prefix;
    struct lb_strlist pools;
    char *admin;
    char *admin_token_file;
    char *admin_tls_cert;
    char *admin_tls_key;
    char *http;
    int64_t shutdown_grace_ms;
    int64_t shutdown_delay_ms;
    char *log_level;
    char *access_log;
    int64_t access_log_sample;
    int64_t max_conns;
    int64_t workers;
    char *config;
    char *backend_networks;
    char *zone;
    char *upgrade_socket;
    char *state_file;
    int64_t etcd_backoff_initial_ms;
    int64_t etcd_backoff_max_ms;
    int64_t etcd_stall_timeout_ms;
    bool help;
    bool version;
    bool check;
};

#define S(f) offsetof(struct lbd_settings, f)
static const struct lb_setting lbd_table[] = {
    LB_ETCD_SETTINGS("LBD_", struct lbd_settings, etcd),
    {"prefix", 0, "LBD_PREFIX", LB_SETTING_STRING, S(prefix), 0, 512, "/lb/", NULL, "PREFIX",
     "etcd key prefix of the pools"},
    {"etcd-backoff-initial", 0, "LBD_ETCD_BACKOFF_INITIAL", LB_SETTING_DURATION,
     S(etcd_backoff_initial_ms), 10, 60 * 1000, "100ms", NULL, "DURATION",
     "first delay before retrying etcd; it doubles per failure, with jitter"},
    {"etcd-backoff-max", 0, "LBD_ETCD_BACKOFF_MAX", LB_SETTING_DURATION, S(etcd_backoff_max_ms), 10,
     3600 * 1000, "1s", NULL, "DURATION",
     "longest delay between etcd retries: after an outage, lbd catches up within about this "
     "long of etcd's return (each lbd costs etcd one request per delay while it is down)"},
    {"etcd-stall-timeout", 0, "LBD_ETCD_STALL_TIMEOUT", LB_SETTING_DURATION,
     S(etcd_stall_timeout_ms), 1000, 24LL * 3600 * 1000, "25m", NULL, "DURATION",
     "a watch silent this long is made again (about twice etcd's progress-notify interval)"},
    {"backend-networks", 0, "LBD_BACKEND_NETWORKS", LB_SETTING_STRING, S(backend_networks), 0, 0,
     "any", NULL, "CIDR[,CIDR...]",
     "networks registered backends may point into (e.g. 10.0.0.0/8,fd00::/8); others are "
     "refused and logged. lbd never routes to its own listeners, whatever this says"},
    {"zone", 0, "LBD_ZONE", LB_SETTING_STRING, S(zone), 0, LB_ZONE_MAX - 1, NULL, NULL, "ZONE",
     "the zone this lbd runs in: pools whose policy sets zone_affinity keep new connections on "
     "backends registered in it while enough of them are eligible"},
    {"pool", 0, "LBD_POOL", LB_SETTING_LIST, S(pools), 0, 0, NULL, NULL,
     "NAME=ADDR:PORT[,accept-proxy]",
     "serve pool NAME on a listener at ADDR:PORT; accept-proxy: each client starts with a PROXY "
     "protocol v1 or v2 header (from a load balancer in front), whose client address lbd uses"},
    {"admin", 0, "LBD_ADMIN", LB_SETTING_STRING, S(admin), 0, 300, "127.0.0.1:9000", NULL,
     "ADDR:PORT", "gRPC admin API (lbctl); keep it on loopback or a private network"},
    {"admin-token-file", 0, "LBD_ADMIN_TOKEN_FILE", LB_SETTING_STRING, S(admin_token_file), 0, 0,
     NULL, NULL, "FILE",
     "require \"authorization: Bearer TOKEN\" on admin calls (health checks excepted); TOKEN is "
     "the file's first line"},
    {"admin-tls-cert", 0, "LBD_ADMIN_TLS_CERT", LB_SETTING_STRING, S(admin_tls_cert), 0, 0, NULL,
     NULL, "FILE", "serve the admin API over TLS with this PEM certificate chain"},
    {"admin-tls-key", 0, "LBD_ADMIN_TLS_KEY", LB_SETTING_STRING, S(admin_tls_key), 0, 0, NULL, NULL,
     "FILE", "PEM private key of --admin-tls-cert"},
    {"http", 0, "LBD_HTTP", LB_SETTING_STRING, S(http), 0, 300, "127.0.0.1:9100", NULL, "ADDR:PORT",
     "HTTP port for /healthz, /readyz and /metrics"},
    {"shutdown-delay", 0, "LBD_SHUTDOWN_DELAY", LB_SETTING_DURATION, S(shutdown_delay_ms), 0,
     3600 * 1000, "0s", NULL, "DURATION",
     "on SIGTERM, how long to keep accepting after readiness turns off (/readyz 503, gRPC "
     "health NOT_SERVING), while load balancers and Kubernetes endpoints stop sending; then "
     "the listeners close and --shutdown-grace begins"},
    {"shutdown-grace", 0, "LBD_SHUTDOWN_GRACE", LB_SETTING_DURATION, S(shutdown_grace_ms), 0,
     24LL * 3600 * 1000, "30s", NULL, "DURATION",
     "on SIGTERM, how long open connections may finish"},
    {"upgrade-socket", 0, "LBD_UPGRADE_SOCKET", LB_SETTING_STRING, S(upgrade_socket), 0, 107, NULL,
     NULL, "PATH",
     "unix socket (mode 0600) for hitless upgrades: a new lbd started with the same flags takes "
     "over the listeners and open connections of the one serving PATH; SIGUSR2 starts it"},
    {"state-file", 0, "LBD_STATE_FILE", LB_SETTING_STRING, S(state_file), 0, 4000, NULL, NULL,
     "FILE",
     "keep lbd's last view of etcd (backends, policies, overrides) in FILE, rewritten whole "
     "within a second of each change: an lbd that starts while etcd is out of reach serves the "
     "pools it last knew from it, then lists etcd and applies what changed"},
    {"workers", 0, "LBD_WORKERS", LB_SETTING_INT, S(workers), 0, 256, "0", NULL, "N",
     "worker threads, each with its own listener per pool and its own connections (0: the "
     "CPUs this process may use: affinity mask and cgroup CPU quota)"},
    {"max-conns", 0, "LBD_MAX_CONNS", LB_SETTING_INT, S(max_conns), 0, 10000000, "0", NULL, "N",
     "cap on open client connections; accepting pauses at the cap (0: from the open-files "
     "limit)"},
    {"log-level", 0, "LBD_LOG_LEVEL", LB_SETTING_STRING, S(log_level), 0, 0, "info",
     "debug|info|warn|error", "LEVEL", "lowest level logged"},
    {"access-log", 0, "LBD_ACCESS_LOG", LB_SETTING_STRING, S(access_log), 0, 0, "on", "on|off",
     "on|off",
     "one line per finished connection (sub=access, at info level): pool, backend, client, "
     "connect and total time, bytes each way, retries, and why it ended (end=)"},
    {"access-log-sample", 0, "LBD_ACCESS_LOG_SAMPLE", LB_SETTING_INT, S(access_log_sample), 1,
     1000000, "1", NULL, "N",
     "log 1 in N connections that end normally (closed by a peer, moved at an upgrade); every "
     "error is logged"},
    {"config", 0, "LBD_CONFIG", LB_SETTING_CONFIG, S(config), 0, 0, NULL, NULL, "FILE",
     "JSON file with any of these settings (flags and env override it)"},
    {"help", 'h', NULL, LB_SETTING_BOOL, S(help), 0, 0, NULL, NULL, NULL, "show this help"},
    {"check", 0, NULL, LB_SETTING_BOOL, S(check), 0, 0, NULL, NULL, NULL,
     "check the flags, environment and config file (pools, addresses, networks, etcd "
     "endpoints, credential and TLS files), print a summary and exit: 0 when lbd would start, "
     "2 with one line per problem; binds nothing, connects to nothing"},
    {"version", 0, NULL, LB_SETTING_BOOL, S(version), 0, 0, NULL, NULL, NULL, "show the version"},
};
#undef S

struct lbd {
    struct ev_loop *loop;
    struct lbd_settings settings;
    struct lb_registry registry;
    struct lb_proxy proxy;
    struct lb_watcher *watcher;
    struct lb_admin_server *admin;
    struct lb_http *http;
    struct lb_resolver *resolver;
    struct lb_addr_policy addr_policy;
    struct lb_update_sink registry_sink;
    ev_signal sigterm, sigint, sighup, sigusr2;
    ev_signal ignored[5]; /* signals whose default would kill lbd: logged, nothing else */
    ev_timer grace;
    ev_timer delay;      /* --shutdown-delay: still accepting, not ready */
    ev_timer first_sync; /* a progress line while the first etcd listing is awaited */
    ev_tstamp started_at;
    bool stopping;
    struct lb_upgrade *upgrade;
    struct lb_takeover takeover; /* from the previous lbd, at start-up */
    struct lb_state_file *state; /* --state-file */
    char **argv;                 /* as started: what SIGUSR2 runs again */
    uint64_t config_digest;      /* of the --config file as read at start-up */
    bool seeding;                /* applying a view of etcd: handed over, or the state file */
    bool config_digest_ok;
    char *pool_names[64];
    char *pool_listens[64];
    bool pool_accept_proxy[64];
    size_t n_pools;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: lbd --etcd URL[,URL...] --pool NAME=ADDR:PORT [--pool ...] [options]\n"
               "\n"
               "TCP load balancer: serves each pool on its listener and spreads new connections\n"
               "over the backends registered in etcd under <prefix>pools/NAME/backends/.\n"
               "\n"
               "options:\n");
    lb_settings_print_help(f, lbd_table, LB_ARRAY_SIZE(lbd_table));
    fprintf(f, "\nexample:\n"
               "  lbd --etcd http://127.0.0.1:2379 --pool web=0.0.0.0:8080 \\\n"
               "      --admin 127.0.0.1:9000 --http 127.0.0.1:9100\n");
}

/* Splits each --pool NAME=ADDR:PORT.  Returns 0 or -EINVAL after printing why. */
static int parse_pools(struct lbd *d)
{
    const struct lb_strlist *l = &d->settings.pools;

    if (l->n == 0) {
        fprintf(stderr, "lbd: no pool to serve: give at least one --pool NAME=ADDR:PORT "
                        "(or LBD_POOL)\n");
        return -EINVAL;
    }
    if (l->n > LB_ARRAY_SIZE(d->pool_names)) {
        fprintf(stderr, "lbd: too many pools (%zu, at most %zu)\n", l->n,
                LB_ARRAY_SIZE(d->pool_names));
        return -EINVAL;
    }
    for (size_t i = 0; i < l->n; i++) {
        const char *eq = strchr(l->v[i], '=');
        struct lb_hostport hp;
        const char *why = NULL;

        if (!eq || !lb_name_is_valid(l->v[i], (size_t)(eq - l->v[i])) || !eq[1]) {
            fprintf(stderr,
                    "lbd: --pool %s: expected NAME=ADDR:PORT with NAME of 1 to %d letters, "
                    "digits and . _ - : (e.g. --pool web=0.0.0.0:8080)\n",
                    l->v[i], LB_NAME_MAX - 1);
            return -EINVAL;
        }
        const char *comma = strchr(eq + 1, ',');
        char *addr = strndup(eq + 1, comma ? (size_t)(comma - eq - 1) : strlen(eq + 1));

        if (!addr)
            return -ENOMEM;
        if (strpbrk(addr, " \t\n")) {
            fprintf(stderr,
                    "lbd: --pool %s: a space in the address (one pool per --pool; LBD_POOL "
                    "separates pools with commas)\n",
                    l->v[i]);
            free(addr);
            return -EINVAL;
        }
        if (lb_addr_parse(addr, false, &hp, &why) < 0 || !lb_addr_is_numeric(&hp)) {
            fprintf(stderr, "lbd: --pool %s: %s\n", l->v[i],
                    why ? why : "listen address must be an IP address and port");
            free(addr);
            return -EINVAL;
        }
        /* Options after the address: a property of the listener and of what
         * stands in front of it, so a flag, not a policy anyone who writes
         * to etcd could turn on (it lets clients choose their address). */
        for (const char *opt = comma; opt; opt = strchr(opt + 1, ',')) {
            const char *end = strchr(opt + 1, ',');
            size_t n = end ? (size_t)(end - opt - 1) : strlen(opt + 1);

            if (n == strlen("accept-proxy") && strncmp(opt + 1, "accept-proxy", n) == 0) {
                d->pool_accept_proxy[i] = true;
                continue;
            }
            fprintf(stderr,
                    "lbd: --pool %s: unknown option \"%.*s\" (known: accept-proxy, to read a "
                    "PROXY protocol header from each client)\n",
                    l->v[i], (int)n, opt + 1);
            free(addr);
            return -EINVAL;
        }
        d->pool_names[i] = strndup(l->v[i], (size_t)(eq - l->v[i]));
        d->pool_listens[i] = addr;
        if (!d->pool_names[i] || !d->pool_listens[i])
            return -ENOMEM;
        d->n_pools++;
    }
    return 0;
}

/*
 * Makes sure the open-files limit covers max_conns (two sockets each) and
 * `reserved` more (etcd, admin, HTTP, checks, the workers' listeners) and
 * derives max_conns from it when not given.  Returns 0 or -EMFILE after
 * printing what to do.
 */
static int check_fd_limit(int64_t *max_conns, rlim_t reserved)
{
    struct rlimit rl;
    rlim_t need;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    if (*max_conns == 0) {
        rlim_t limit = rl.rlim_max == RLIM_INFINITY ? 1048576 : rl.rlim_max;

        if (limit < reserved + 2) {
            fprintf(stderr,
                    "lbd: the open-files hard limit (%llu) is too low to serve anything; "
                    "raise it (ulimit -Hn, LimitNOFILE=)\n",
                    (unsigned long long)limit);
            return -EMFILE;
        }
        *max_conns = (int64_t)((limit - reserved) / 2);
        if (*max_conns > 1000000)
            *max_conns = 1000000;
    }
    need = (rlim_t)*max_conns * 2 + reserved;
    if (rl.rlim_max != RLIM_INFINITY && need > rl.rlim_max) {
        fprintf(stderr,
                "lbd: --max-conns %lld needs %llu open files but the hard limit is %llu; raise "
                "the limit (ulimit -Hn, systemd LimitNOFILE=) or lower --max-conns to %llu\n",
                (long long)*max_conns, (unsigned long long)need, (unsigned long long)rl.rlim_max,
                (unsigned long long)((rl.rlim_max - reserved) / 2));
        return -EMFILE;
    }
    if (rl.rlim_cur < need) {
        rl.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
            fprintf(stderr, "lbd: cannot raise the open-files limit to %llu: %s\n",
                    (unsigned long long)need, strerror(errno));
            return -EMFILE;
        }
    }
    return 0;
}

/* ------------------------------------------------------ readiness etc -- */

static bool lbd_is_ready(void *ud, const char **why)
{
    struct lbd *d = ud;

    if (d->stopping) {
        *why = "shutting down";
        return false;
    }
    if (!d->proxy.listening) {
        *why = "listeners not bound";
        return false;
    }
    if (!lb_watcher_has_synced(d->watcher)) {
        *why = "waiting for the first etcd sync";
        return false;
    }
    return true;
}

static bool lbd_ready(void *ud)
{
    const char *why;

    return lbd_is_ready(ud, &why);
}

static int lbd_render_metrics(void *ud, struct lb_buf *out)
{
    struct lbd *d = ud;
    const char *why;
    int rc = lb_metrics_render(out, &d->registry, &d->proxy);

    if (!rc)
        rc = lb_watcher_render_metrics(d->watcher, out);
    if (!rc)
        rc = lb_state_file_render_metrics(d->state, out);
    if (!rc && d->admin)
        rc = lb_admin_server_render_metrics(d->admin, out);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_ready", "gauge", "1 when /readyz answers 200.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_ready %d\n", lbd_is_ready(d, &why) ? 1 : 0);
    return rc;
}

/*
 * The watcher feeds the registry through this sink, so that lbd starts
 * accepting right after the first listing is applied.  From then on a
 * watch response only schedules the publish, which runs once per loop
 * iteration (before the loop waits again) for all the responses read in
 * it: a key flapping as fast as etcd takes writes costs one pool rebuild
 * per read, not one per event, so the control loop keeps up (and keeps
 * answering /healthz) even for a maglev pool of thousands.
 */
static void lbd_sink_apply(void *ctx, const struct lb_update *u)
{
    struct lbd *d = ctx;

    d->registry_sink.apply(d->registry_sink.ctx, u);
}

static void lbd_sink_commit(void *ctx)
{
    struct lbd *d = ctx;

    lb_state_file_changed(d->state);
    if (d->proxy.accept_enabled) {
        lb_registry_schedule_publish(&d->registry);
        return;
    }
    d->registry_sink.commit(d->registry_sink.ctx); /* the workers have it before they accept */
    if (!d->proxy.accept_enabled && !d->stopping && lb_watcher_has_synced(d->watcher)) {
        bool took_over = lb_upgrade_is_taking_over(d->upgrade);

        ev_timer_stop(d->loop, &d->first_sync);
        lb_upgrade_adopt(d->upgrade); /* before the first accept: the previous process's view */
        if (d->seeding)
            LB_INFO("lbd",
                    "msg=\"view of etcd taken over from %s, accepting connections; etcd "
                    "is listed to catch up\"",
                    d->takeover.have_view ? "the previous process" : "the state file");
        else
            LB_INFO("lbd", "msg=\"first etcd listing applied, accepting connections\"");
        lb_proxy_enable_accept(&d->proxy);
        /* Under systemd the new process of an upgrade becomes the service's
         * main process, before the old one may exit (READY below). */
        if (took_over)
            lb_sd_notify_mainpid(getpid());
        lb_sd_notify_ready();
        lb_upgrade_ready(d->upgrade);
    }
}

/*
 * Every 5 s until the first etcd listing is applied (lbd does not accept
 * before it), while etcd has neither answered nor failed: a stuck request.
 */
static void lbd_first_sync_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lbd *d = lb_container_of(w, struct lbd, first_sync);
    double waited = ev_now(loop) - d->started_at;
    struct lb_watcher_stats st;

    if (d->proxy.accept_enabled || d->stopping) {
        ev_timer_stop(loop, w);
        return;
    }
    lb_watcher_get_stats(d->watcher, &st);
    if (st.reconnects)
        return; /* the watcher's own lines say what fails, once */
    if (lb_upgrade_is_taking_over(d->upgrade))
        LB_INFO("lbd",
                "msg=\"still waiting for the first etcd listing; the running lbd serves meanwhile "
                "and hands over once it is read\" waited_s=%.0f etcd=%s",
                waited, d->settings.etcd.etcd.v[0]);
    else
        LB_WARN("lbd",
                "msg=\"still waiting for the first etcd listing; not accepting connections "
                "before it (/readyz 503)\" waited_s=%.0f etcd=%s",
                waited, d->settings.etcd.etcd.v[0]);
}

/* ------------------------------------------------------------ signals -- */

static void lbd_proxy_idle(struct lb_proxy *proxy)
{
    struct lbd *d = lb_container_of(proxy, struct lbd, proxy);

    LB_INFO("lbd", "msg=\"all connections finished, exiting\"");
    lb_upgrade_summary(d->upgrade);
    ev_break(d->loop, EVBREAK_ALL);
}

static void lbd_grace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lbd *d = lb_container_of(w, struct lbd, grace);

    LB_WARN("lbd", "msg=\"shutdown grace period over, closing remaining connections\" active=%llu",
            (unsigned long long)lb_proxy_active(&d->proxy));
    lb_upgrade_abandon(d->upgrade);
    lb_proxy_close_all(&d->proxy);
}

/* Stops accepting, lets open connections finish within the grace period, then exits. */
static void lbd_begin_shutdown(struct lbd *d)
{
    d->stopping = true;
    ev_timer_init(&d->grace, lbd_grace_cb, (double)d->settings.shutdown_grace_ms / 1000., 0.);
    ev_timer_start(d->loop, &d->grace);
    lb_proxy_shutdown(&d->proxy, lbd_proxy_idle);
}

static void lbd_delay_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lbd *d = lb_container_of(w, struct lbd, delay);

    LB_INFO("lbd",
            "msg=\"shutdown delay over, no longer accepting; open connections may finish\" "
            "active=%llu grace_ms=%lld",
            (unsigned long long)lb_proxy_active(&d->proxy),
            (long long)d->settings.shutdown_grace_ms);
    lbd_begin_shutdown(d);
}

static void lbd_stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct lbd *d = w->signum == SIGTERM ? lb_container_of(w, struct lbd, sigterm)
                                         : lb_container_of(w, struct lbd, sigint);

    if (d->stopping) {
        /* timeout(1) and a terminal's Ctrl-C signal the whole process group: often a
         * second signal finds nothing left to close, and is not worth a warning */
        if (lb_proxy_active(&d->proxy) == 0 && !ev_is_active(&d->delay))
            LB_DEBUG("lbd", "msg=\"second stop signal, nothing left to close\"");
        else
            LB_WARN("lbd",
                    "msg=\"second stop signal, closing remaining connections now\" "
                    "active=%llu",
                    (unsigned long long)lb_proxy_active(&d->proxy));
        if (ev_is_active(&d->delay)) {
            ev_timer_stop(loop, &d->delay);
            lbd_begin_shutdown(d);
        }
        lb_proxy_close_all(&d->proxy);
        return;
    }
    d->stopping = true; /* /readyz and the gRPC health check say so from now on */
    lb_sd_notify_stopping();
    lb_upgrade_shutdown(d->upgrade);
    if (d->settings.shutdown_delay_ms > 0) {
        LB_INFO("lbd",
                "msg=\"stop signal, not ready any more; still accepting for the shutdown delay, "
                "while load balancers stop sending\" signal=%s delay_ms=%lld grace_ms=%lld",
                w->signum == SIGTERM ? "SIGTERM" : "SIGINT",
                (long long)d->settings.shutdown_delay_ms, (long long)d->settings.shutdown_grace_ms);
        ev_timer_init(&d->delay, lbd_delay_cb, (double)d->settings.shutdown_delay_ms / 1000., 0.);
        ev_timer_start(loop, &d->delay);
        return;
    }
    LB_INFO("lbd",
            "msg=\"stop signal, no longer accepting; open connections may finish\" "
            "signal=%s active=%llu grace_ms=%lld",
            w->signum == SIGTERM ? "SIGTERM" : "SIGINT",
            (unsigned long long)lb_proxy_active(&d->proxy),
            (long long)d->settings.shutdown_grace_ms);
    lbd_begin_shutdown(d);
}

/* The next lbd is ready (upgrade): it accepts on the same sockets from now on. */
static void lbd_upgrade_stop_accepting(void *ud)
{
    struct lbd *d = ud;

    if (d->stopping)
        return;
    if (d->admin)
        lb_admin_server_hand_over(d->admin);
    if (d->http)
        lb_http_stop_listening(d->http);
    /* The state file is the next lbd's from now on: this one, which may
     * linger for its sessions, writes nothing more (not even at exit). */
    lb_state_file_free(d->state);
    d->state = NULL;
    lbd_begin_shutdown(d);
}

/* Lists the admin and HTTP listeners for the next lbd (the pools' are the proxy's). */
static void lbd_upgrade_each_listener(void *ud, lb_upgrade_send_fn send, void *ctx)
{
    struct lbd *d = ud;

    if (d->admin)
        send(ctx, LB_HANDOVER_LISTENER_ADMIN, "", d->settings.admin,
             lb_admin_server_listen_fd(d->admin));
    if (d->http)
        send(ctx, LB_HANDOVER_LISTENER_HTTP, "", d->settings.http, lb_http_listen_fd(d->http));
}

/* An upgrade started here failed before the new lbd was ready: this one goes on. */
static void lbd_upgrade_failed(void *ud, const char *why)
{
    lb_sd_notify_status("upgrade failed: %s; still serving", why);
    lb_sd_notify_ready(); /* ends systemd's "reloading" */
}

/*
 * Starts an upgrade (SIGUSR2, lbctl upgrade): the new pid, or a negative
 * errno with *why a sentence for the operator.
 */
static int lbd_upgrade(void *ud, const char **why)
{
    struct lbd *d = ud;
    pid_t pid;

    if (!d->upgrade) {
        *why = "an upgrade needs lbd started with --upgrade-socket PATH";
        return -ENOTSUP;
    }
    if (d->stopping) {
        *why = "lbd is shutting down";
        return -EBUSY;
    }
    lb_sd_notify_reloading();
    pid = lb_upgrade_spawn(d->upgrade, d->argv);
    if (pid < 0) {
        *why = pid == -EBUSY ? "an upgrade is already in progress"
                             : "cannot start the new lbd (fork failed)";
        lb_sd_notify_ready(); /* the reload is over: this process goes on */
        return pid;
    }
    return pid;
}

static void lbd_usr2_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct lbd *d = lb_container_of(w, struct lbd, sigusr2);
    const char *why;

    if (lbd_upgrade(d, &why) < 0)
        LB_WARN("lbd", "msg=\"SIGUSR2: no upgrade\" reason=\"%s\"", why);
}

/*
 * Signals that mean something to other daemons (nginx reopens its logs on
 * SIGUSR1, HAProxy stops softly) but nothing to lbd.  Their default action
 * would end lbd and every connection through it; they get one line that
 * says which signals lbd does use.
 */
static const struct {
    int signum;
    const char *name;
} ignored_signals[] = {
    {SIGUSR1, "SIGUSR1"}, {SIGALRM, "SIGALRM"}, {SIGVTALRM, "SIGVTALRM"},
    {SIGIO, "SIGIO"},     {SIGPWR, "SIGPWR"},
};
#define N_IGNORED_SIGNALS (sizeof(ignored_signals) / sizeof(ignored_signals[0]))
_Static_assert(N_IGNORED_SIGNALS == sizeof(((struct lbd *)0)->ignored) / sizeof(ev_signal),
               "one watcher per ignored signal");

static void lbd_ignored_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    const char *name = "?";

    for (size_t i = 0; i < N_IGNORED_SIGNALS; i++)
        if (ignored_signals[i].signum == w->signum)
            name = ignored_signals[i].name;
    LB_WARN("lbd",
            "msg=\"%s ignored: lbd stops gracefully on SIGTERM, hands over to a new lbd on "
            "SIGUSR2 and re-reads credential files on SIGHUP\" signal=%s",
            name, name);
}

/* Logs the outcome of re-reading one file at SIGHUP. */
static int lbd_reloaded(const char *what, const char *file, int rc, char *err)
{
    if (!file)
        return 0;
    if (rc < 0)
        LB_ERROR("lbd",
                 "msg=\"SIGHUP: cannot use the new %s, keeping the one in use\" file=%s "
                 "error=\"%s\"",
                 what, file, err ? err : strerror(-rc));
    else
        LB_INFO("lbd", "msg=\"SIGHUP: %s reloaded\" file=%s", what, file);
    free(err);
    return rc < 0;
}

/*
 * A digest of the --config file's bytes (FNV-1a over at most 16 MiB, far
 * above what the settings reader takes): false when it cannot be read.
 */
static bool config_file_digest(const char *path, uint64_t *out)
{
    unsigned char buf[8192];
    uint64_t h = 14695981039346656037ull;
    size_t n, total = 0;
    FILE *f = fopen(path, "rb");

    if (!f)
        return false;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0 && total < (16u << 20)) {
        for (size_t i = 0; i < n; i++)
            h = (h ^ buf[i]) * 1099511628211ull;
        total += n;
    }
    fclose(f);
    *out = h ^ total;
    return true;
}

/*
 * An nginx operator edits the config file and sends SIGHUP.  lbd takes its
 * pools, listeners and flags at start-up only, so when the file differs from
 * the one read then, it says what would apply it instead of staying silent.
 */
static void lbd_hup_config(struct lbd *d)
{
    uint64_t now;

    if (!d->settings.config || !d->config_digest_ok ||
        (config_file_digest(d->settings.config, &now) && now == d->config_digest))
        return;
    if (d->upgrade)
        LB_WARN("lbd",
                "msg=\"SIGHUP: the config file changed since start-up; SIGHUP re-reads "
                "credentials and certificates only. To apply the rest, send SIGUSR2 or run lbctl "
                "upgrade (systemctl reload lbd): a new lbd reads it and takes over without "
                "dropping a connection\" file=%s",
                d->settings.config);
    else
        LB_WARN("lbd",
                "msg=\"SIGHUP: the config file changed since start-up; SIGHUP re-reads "
                "credentials and certificates only. To apply the rest, restart lbd (or start it "
                "with --upgrade-socket PATH, then SIGUSR2 applies it without dropping a "
                "connection)\" file=%s",
                d->settings.config);
}

/*
 * SIGHUP re-reads credentials and certificates: the admin token, the admin
 * TLS certificate and key, the etcd user file and etcd TLS files.  A file
 * that cannot be used keeps the old one in use.  Pools and policies follow
 * etcd live and need nothing.
 */
static void lbd_hup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    struct lbd *d = lb_container_of(w, struct lbd, sighup);
    const struct lb_admin_options tls = {
        .tls_cert_file = d->settings.admin_tls_cert,
        .tls_key_file = d->settings.admin_tls_key,
    };
    char *err = NULL;
    int rc, failed = 0;

    if (d->admin) {
        rc = lb_admin_server_reload_token(d->admin, d->settings.admin_token_file, &err);
        failed += lbd_reloaded("admin token", d->settings.admin_token_file, rc, err);
        err = NULL;
        rc = lb_admin_server_reload_tls(d->admin, &tls, &err);
        failed +=
            lbd_reloaded("admin TLS certificate and key", d->settings.admin_tls_cert, rc, err);
        err = NULL;
    }
    if (d->watcher) {
        rc = lb_etcd_opts_reload(&d->settings.etcd, lb_watcher_http(d->watcher), "lbd", &err);
        failed += lbd_reloaded("etcd credentials", d->settings.etcd.user_file, rc, err);
        if (!rc && (d->settings.etcd.ca_file || d->settings.etcd.cert_file))
            LB_INFO("lbd", "msg=\"SIGHUP: etcd TLS files are read again for the next "
                           "connection\"");
    }
    lbd_hup_config(d);
    LB_INFO("lbd", "msg=\"SIGHUP handled\" failed=%d", failed);
}

/* -------------------------------------------------------------- main -- */

static int lbd_admin_start(struct lbd *d, char **err)
{
    struct lb_admin_options opts = {
        .listen = d->settings.admin,
        .listen_flag = "--admin",
        .context = &d->registry,
        .token_file = d->settings.admin_token_file,
        .tls_cert_file = d->settings.admin_tls_cert,
        .tls_key_file = d->settings.admin_tls_key,
    };

    opts.methods = lb_admin_service_methods(&opts.n_methods);
    return lb_admin_server_new(d->loop, &opts, &d->admin, err);
}

/*
 * Adds the listener at `text` ("ADDR:PORT"; `port` overrides a port 0) to
 * the addresses backends may not point at.
 */
static void lbd_refuse_own(struct lbd *d, const char *text, int port)
{
    struct lb_hostport hp;
    struct sockaddr_storage ss;
    socklen_t len;
    const char *why;

    if (!text || lb_addr_parse(text, true, &hp, &why) < 0 || !lb_addr_is_numeric(&hp))
        return;
    if (port > 0)
        hp.port = (uint16_t)port;
    if (hp.port == 0 || lb_addr_to_sockaddr(&hp, &ss, &len) < 0)
        return;
    if (lb_addr_policy_add_own(&d->addr_policy, (struct sockaddr *)&ss) < 0)
        LB_WARN("lbd",
                "msg=\"too many listeners to guard against backends pointing at them\" "
                "addr=%s",
                text);
}

static bool lbd_export_view(void *ud, struct lb_watcher_view *view,
                            void (*fn)(void *ctx, const struct lb_watcher_kv *kv), void *ctx)
{
    struct lbd *d = ud;

    return lb_watcher_export(d->watcher, view, fn, ctx);
}

/*
 * The new process of an upgrade starts from the previous one's view of
 * etcd: it accepts at once, whether etcd answers or not, and its first
 * listing then applies only what changed meanwhile.
 */
static void lbd_seed(struct lbd *d)
{
    struct lb_takeover *t = &d->takeover;
    int rc;

    d->seeding = true;
    rc = lb_watcher_seed(d->watcher, &t->view.view, t->view.keys, t->view.n_keys);
    d->seeding = false;
    if (rc >= 0)
        LB_INFO("upgrade",
                "msg=\"upgrade: took over the previous process's view of etcd\" keys=%zu "
                "revision=%lld stale_s=%.1f",
                t->view.n_keys, (long long)t->view.view.revision,
                (double)t->view.view.stale_ms / 1000.0);
    else if (rc == -EXDEV)
        LB_INFO("upgrade",
                "msg=\"upgrade: the previous process watched another etcd prefix; this one lists "
                "etcd before it accepts\" previous=%s",
                t->view.prefix);
    else if (rc < 0)
        LB_WARN("upgrade",
                "msg=\"upgrade: cannot take the previous process's view of etcd whole; the "
                "first listing completes it\" error=\"%s\"",
                strerror(-rc));
    lb_takeover_free_view(t);
}

/*
 * Without a previous process, the state file stands in for it: lbd serves
 * the pools it knew when it last ran, whether etcd answers or not, and its
 * first listing applies what changed since.
 */
static void lbd_seed_from_file(struct lbd *d)
{
    char path[1024], qerr[1024], qprefix[1024];
    struct lb_saved_view v;
    char *err = NULL;
    int64_t age_ms;
    int rc;

    lb_log_quote(path, sizeof(path), d->settings.state_file);
    rc = lb_state_file_load(d->settings.state_file, &v, &err);
    if (rc == -ENOENT) {
        LB_INFO("state", "msg=\"no state file yet; lbd lists etcd before it accepts\" path=%s",
                path);
        return;
    }
    if (rc < 0) {
        LB_WARN("state", "msg=\"state file not used; lbd lists etcd before it accepts\" error=%s",
                lb_log_quote(qerr, sizeof(qerr), err ? err : strerror(-rc)));
        free(err);
        return;
    }
    age_ms = (int64_t)(ev_time() * 1000.0) - v.written_ms;
    v.view.stale_ms += age_ms > 0 ? age_ms : 0;
    d->seeding = true;
    rc = lb_watcher_seed(d->watcher, &v.view, v.keys, v.n_keys);
    d->seeding = false;
    if (rc >= 0)
        LB_INFO("state",
                "msg=\"started from the state file; listing etcd to catch up\" path=%s keys=%zu "
                "revision=%lld age_s=%.1f stale_s=%.1f",
                path, v.n_keys, (long long)v.view.revision, (double)age_ms / 1000.0,
                (double)v.view.stale_ms / 1000.0);
    else if (rc == -EXDEV)
        LB_WARN("state",
                "msg=\"state file not used: it holds another key prefix; lbd lists etcd before it "
                "accepts\" path=%s prefix=%s",
                path, lb_log_quote(qprefix, sizeof(qprefix), v.prefix));
    else
        LB_WARN("state",
                "msg=\"cannot take the state file whole; the first listing completes it\" "
                "path=%s error=\"%s\"",
                path, strerror(-rc));
    lb_saved_view_free(&v);
}

static int lbd_start(struct lbd *d)
{
    struct lb_watcher_config wc = {0};
    struct lb_http_config hc = {0};
    struct lb_update_sink sink;
    struct lb_store store;
    char *err = NULL;
    int rc;

    rc = lb_registry_init(&d->registry, d->loop, d->n_pools, (const char *const *)d->pool_names,
                          (const char *const *)d->pool_listens);
    if (rc < 0) {
        fprintf(stderr, "lbd: %s\n",
                rc == -EINVAL ? "the same pool name is given twice" : "out of memory");
        goto out;
    }
    for (size_t i = 0; i < d->n_pools; i++) {
        d->registry.pools[i].accept_proxy = d->pool_accept_proxy[i];
        snprintf(d->registry.pools[i].zone, sizeof(d->registry.pools[i].zone), "%s",
                 d->settings.zone ? d->settings.zone : "");
    }
    rc = lb_resolver_new(d->loop, &d->resolver);
    if (rc < 0) {
        fprintf(stderr, "lbd: cannot start the DNS resolver thread: %s\n", strerror(-rc));
        goto out;
    }
    d->registry.resolver = d->resolver;
    d->registry.n_workers = (unsigned)d->settings.workers;
    if (d->settings.upgrade_socket) {
        const char *addrs[sizeof(d->pool_listens) / sizeof(d->pool_listens[0]) + 2];
        size_t n_addrs = 0;

        for (size_t i = 0; i < d->n_pools; i++)
            addrs[n_addrs++] = d->pool_listens[i];
        addrs[n_addrs++] = d->settings.http;
        addrs[n_addrs++] = d->settings.admin;
        /* Before anything binds: the running lbd's sockets are taken, not bound again. */
        rc = lb_upgrade_takeover(d->settings.upgrade_socket, (unsigned)d->settings.workers, addrs,
                                 n_addrs, &d->takeover, &err);
        if (rc < 0)
            goto fail;
    }
    rc = lb_proxy_init(&d->proxy, d->loop, &d->registry, (uint64_t)d->settings.max_conns,
                       (unsigned)d->settings.workers, &err);
    if (rc < 0)
        goto fail;
    rc = lb_proxy_start(&d->proxy, &err);
    if (rc < 0)
        goto fail;
    for (size_t i = 0; i < d->n_pools; i++)
        lbd_refuse_own(d, d->pool_listens[i], 0);
    d->registry.addr_policy = &d->addr_policy;
    d->registry.upgrade = lbd_upgrade;
    d->registry.is_ready = lbd_ready;
    d->registry.host_ud = d;

    wc.etcd = &d->settings.etcd;
    wc.prefix = d->settings.prefix;
    wc.backoff_initial_ms = d->settings.etcd_backoff_initial_ms;
    wc.backoff_max_ms = d->settings.etcd_backoff_max_ms;
    wc.stall_timeout_ms = d->settings.etcd_stall_timeout_ms;
    d->registry_sink = lb_registry_sink(&d->registry);
    sink.apply = lbd_sink_apply;
    sink.commit = lbd_sink_commit;
    sink.ctx = d;
    rc = lb_watcher_new(d->loop, &wc, &sink, &d->watcher, &err);
    if (rc < 0)
        goto fail;
    store = lb_watcher_store(d->watcher);
    lb_registry_set_store(&d->registry, &store);

    hc.listen = d->settings.http;
    hc.is_ready = lbd_is_ready;
    hc.render_metrics = lbd_render_metrics;
    hc.ud = d;
    hc.registry = &d->registry; /* the status page (GET /) */
    rc = lb_http_start(d->loop, &hc, &d->http, &err);
    if (rc < 0)
        goto fail;
    rc = lbd_admin_start(d, &err);
    if (rc < 0)
        goto fail;
    lbd_refuse_own(d, d->settings.http, lb_http_port(d->http));
    lbd_refuse_own(d, d->settings.admin, lb_admin_server_port(d->admin));
    {
        size_t unused = lb_listen_close_inherited();

        if (unused)
            LB_WARN("upgrade",
                    "msg=\"sockets of the previous lbd that these flags do not listen on, closed "
                    "(clients queued on them when it stops are lost)\" count=%zu",
                    unused);
    }
    if (d->settings.upgrade_socket) {
        struct lb_upgrade_config uc = {
            .path = d->settings.upgrade_socket,
            .proxy = &d->proxy,
            .registry = &d->registry,
            .workers = (unsigned)d->settings.workers,
            .ud = d,
            .each_listener = lbd_upgrade_each_listener,
            .export_view = lbd_export_view,
            .stop_accepting = lbd_upgrade_stop_accepting,
            .failed = lbd_upgrade_failed,
        };

        rc = lb_upgrade_start(d->loop, &uc, &d->takeover, &d->upgrade, &err);
        if (rc < 0)
            goto fail;
    }
    if (d->takeover.have_view)
        lbd_seed(d);
    else if (d->settings.state_file)
        lbd_seed_from_file(d);
    if (d->settings.state_file &&
        lb_state_file_new(d->loop, d->settings.state_file, d->watcher, &d->state) < 0) {
        fprintf(stderr, "lbd: out of memory\n");
        rc = -ENOMEM;
        goto out;
    }
    rc = lb_watcher_start(d->watcher);
    if (rc < 0) {
        fprintf(stderr, "lbd: cannot start watching etcd: %s\n", strerror(-rc));
        goto out;
    }
    d->started_at = ev_now(d->loop);
    ev_timer_init(&d->first_sync, lbd_first_sync_cb, 5., 5.);
    if (!d->proxy.accept_enabled)
        ev_timer_start(d->loop, &d->first_sync);
    LB_INFO("lbd",
            "msg=\"started\" version=%s pools=%zu etcd=%s%s prefix=%s max_conns=%lld "
            "workers=%lld",
            LB_VERSION, d->n_pools, d->settings.etcd.etcd.v[0],
            d->settings.etcd.etcd.n > 1 ? ",..." : "", d->settings.prefix,
            (long long)d->settings.max_conns, (long long)d->settings.workers);
    goto out;
fail:
    fprintf(stderr, "lbd: %s\n", err ? err : strerror(-rc));
out:
    free(err);
    return rc;
}

static void lbd_cleanup(struct lbd *d)
{
    /* Admin calls may wait on etcd writes: stop the server, then the watcher
     * (which cancels those writes), then the data plane. */
    if (d->admin)
        lb_admin_server_free(d->admin);
    lb_state_file_flush(d->state); /* with the view as it ends: the file's age is right */
    lb_state_file_free(d->state);
    d->state = NULL;
    if (d->watcher)
        lb_watcher_free(d->watcher);
    if (d->http)
        lb_http_stop(d->http);
    lb_upgrade_close(d->upgrade);
    if (d->proxy.loop)
        lb_proxy_destroy(&d->proxy);
    lb_upgrade_free(d->upgrade);
    if (d->takeover.fd >= 0)
        close(d->takeover.fd);
    if (d->takeover.upgrade_listen_fd >= 0)
        close(d->takeover.upgrade_listen_fd);
    free(d->takeover.backends);
    lb_takeover_free_view(&d->takeover);
    lb_listen_close_inherited();
    lb_registry_destroy(&d->registry);
    lb_resolver_free(d->resolver); /* after the registry: it cancels its lookups first */
    lb_addr_policy_free(&d->addr_policy);
    for (size_t i = 0; i < d->n_pools; i++) {
        free(d->pool_names[i]);
        free(d->pool_listens[i]);
    }
    lb_settings_free(lbd_table, LB_ARRAY_SIZE(lbd_table), &d->settings);
}

/* ------------------------------------------------------------ --check -- */

/* A listen address as lb_listen_open() will read it: an IP address and a port. */
static int lbd_check_listen(const char *shown, const char *text, struct sockaddr_storage *ss,
                            socklen_t *len)
{
    struct lb_hostport hp;
    const char *why = NULL;

    if (!text)
        return -ENOENT;
    if (lb_addr_parse(text, true, &hp, &why) < 0 || lb_addr_to_sockaddr(&hp, ss, len) < 0) {
        fprintf(stderr, "lbd: %s: %s\n", shown,
                why ? why : "listen address must be an IP address, not a name");
        return -EINVAL;
    }
    return hp.port == 0 ? -ENOENT : 0; /* port 0: any free port, never a clash */
}

/*
 * Whether two listen addresses would take the same connections: the same
 * family and port, and the same address or a wildcard one (0.0.0.0 takes
 * every IPv4 address of its port; [::] every IPv6 one, IPV6_V6ONLY being
 * set).  Returns 0, 1 for the same address, 2 for a wildcard overlap.
 */
static int lbd_listen_clash(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;

        if (x->sin_port != y->sin_port)
            return 0;
        if (x->sin_addr.s_addr == y->sin_addr.s_addr)
            return 1;
        return x->sin_addr.s_addr == htonl(INADDR_ANY) || y->sin_addr.s_addr == htonl(INADDR_ANY)
                   ? 2
                   : 0;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;

        if (x->sin6_port != y->sin6_port)
            return 0;
        if (IN6_ARE_ADDR_EQUAL(&x->sin6_addr, &y->sin6_addr))
            return 1;
        return IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) || IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr) ? 2
                                                                                                : 0;
    }
    return 0;
}

/*
 * Every listener on an address of its own, and every pool named once: one
 * line per problem, and how many.  At start-up as in --check: two pools on
 * one address would both bind it (SO_REUSEPORT) and share its clients.
 */
static unsigned lbd_check_listeners(const struct lbd *d)
{
    const struct lbd_settings *s = &d->settings;
    struct sockaddr_storage addrs[LB_ARRAY_SIZE(d->pool_listens) + 2];
    socklen_t addr_lens[LB_ARRAY_SIZE(addrs)];
    char shown[LB_ARRAY_SIZE(addrs)][LB_NAME_MAX + LB_ADDR_MAX + 16];
    size_t n_addrs = 0;
    unsigned problems = 0;

    for (size_t i = 0; i < d->n_pools + 2; i++) {
        const char *text = i < d->n_pools    ? d->pool_listens[i]
                           : i == d->n_pools ? s->admin
                                             : s->http;
        int rc;

        if (i < d->n_pools)
            snprintf(shown[n_addrs], sizeof(shown[n_addrs]), "--pool %s=%s", d->pool_names[i],
                     text);
        else
            snprintf(shown[n_addrs], sizeof(shown[n_addrs]), "%s %s",
                     i == d->n_pools ? "--admin" : "--http", text ? text : "");
        rc = lbd_check_listen(shown[n_addrs], text, &addrs[n_addrs], &addr_lens[n_addrs]);
        if (rc == -EINVAL)
            problems++;
        if (rc < 0)
            continue;
        for (size_t j = 0; j < n_addrs; j++) {
            int clash = lbd_listen_clash(&addrs[j], &addrs[n_addrs]);

            if (!clash)
                continue;
            if (clash == 1)
                fprintf(stderr, "lbd: %s: the same address as %s; each listener needs its own\n",
                        shown[n_addrs], shown[j]);
            else
                fprintf(stderr,
                        "lbd: %s: overlaps %s (0.0.0.0 and [::] listen on every address of "
                        "their family at their port); each listener needs a port of its own\n",
                        shown[n_addrs], shown[j]);
            problems++;
            rc = -EEXIST;
            break;
        }
        if (rc == 0)
            n_addrs++;
    }
    for (size_t i = 0; i < d->n_pools; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(d->pool_names[i], d->pool_names[j]) == 0) {
                fprintf(stderr, "lbd: --pool %s is given twice\n", d->pool_names[i]);
                problems++;
            }
    return problems;
}

/* True when the regular file at path is empty or starts as lbd's state files do. */
static bool lbd_state_file_is_ours(const char *path)
{
    char head[sizeof(LB_VIEW_FILE_MAGIC) - 1];
    int fd = lb_file_open(path, "state file", NULL, NULL);
    ssize_t n;

    if (fd < 0)
        return false;
    n = read(fd, head, sizeof(head));
    close(fd);
    return n == 0 ||
           (n == (ssize_t)sizeof(head) && memcmp(head, LB_VIEW_FILE_MAGIC, (size_t)n) == 0);
}

/*
 * What is wrong with --state-file PATH, or NULL: its directory must exist
 * and be writable, its name leave room for NAME.tmp.PID, and PATH, when
 * there, must be a regular file (not a link) that lbd wrote (it replaces it
 * whole: a path mistyped as the config file must not cost that file).
 */
static const char *lbd_state_file_problem(const char *path, char *msg, size_t size)
{
    enum { STATE_TMP_SUFFIX_MAX = 16 }; /* ".tmp." and a pid */
    char dir[PATH_MAX];
    const char *base = lb_file_dir(path, dir, sizeof(dir));
    struct stat st;

    if (!*base)
        snprintf(msg, size, "--state-file %s: give a file's path, not a directory", path);
    else if (strlen(base) + STATE_TMP_SUFFIX_MAX > NAME_MAX || strlen(path) >= PATH_MAX - 32)
        snprintf(msg, size,
                 "--state-file %.80s...: the file name is too long (lbd writes NAME.tmp.PID "
                 "beside it: at most %d bytes of name)",
                 path, NAME_MAX - STATE_TMP_SUFFIX_MAX);
    else if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
        snprintf(msg, size, "--state-file %s: directory %s does not exist (create it)", path, dir);
    else if (access(dir, W_OK | X_OK) < 0)
        snprintf(msg, size, "--state-file %s: lbd cannot write in directory %s: %s", path, dir,
                 strerror(errno));
    else if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
        snprintf(msg, size,
                 "--state-file %s: the path is a symbolic link; give the path it points to (lbd "
                 "renames each new file over the path, which would replace the link)",
                 path);
    else if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode))
        snprintf(msg, size,
                 "--state-file %s: the path exists and is not a regular file; give another path",
                 path);
    else if (lstat(path, &st) == 0 && !lbd_state_file_is_ours(path))
        snprintf(msg, size,
                 "--state-file %s: the file exists and is not an lbd state file; lbd does not "
                 "replace a file it did not write: give another path, or remove it",
                 path);
    else
        return NULL;
    return msg;
}

/*
 * lbd --check: what start-up would refuse, found without binding a socket
 * or talking to etcd.  When it runs, the flags, the environment, the config
 * file, the pools, the etcd endpoints and --backend-networks have been read
 * (their errors exit 2 before).  This adds what lbd checks once it starts:
 * the etcd TLS files and credentials, the admin token and TLS files, the
 * listen addresses (each an IP address, no two the same), the directory of
 * --upgrade-socket and the open-files limit.  Every problem is one line on
 * stderr; returns the exit code, 0 (and a summary on stdout) or 2.
 */
static int lbd_check(struct lbd *d)
{
    const struct lbd_settings *s = &d->settings;
    struct lb_etcd_endpoints endpoints = {0};
    struct lb_etcd_http *etcd = NULL;
    int64_t max_conns = s->max_conns;
    unsigned problems = 0;
    char *err = NULL;

    if (lb_etcd_opts_endpoints(&s->etcd, &endpoints, &err) < 0 ||
        lb_etcd_opts_client(&s->etcd, &endpoints, NULL, "lbd", &etcd, &err) < 0) {
        fprintf(stderr, "lbd: %s\n", err ? err : "cannot set up the etcd client");
        problems++;
    }
    lb_etcd_http_free(etcd);
    if (s->admin_token_file) {
        struct lb_admin_auth auth;

        memset(&auth, 0, sizeof(auth));
        free(err);
        err = NULL;
        if (lb_admin_auth_load(&auth, s->admin_token_file, &err) < 0) {
            fprintf(stderr, "lbd: %s\n", err ? err : "cannot read --admin-token-file");
            problems++;
        }
        memset(&auth, 0, sizeof(auth));
    }
    if (!s->admin_tls_cert != !s->admin_tls_key) {
        fprintf(stderr, "lbd: --admin-tls-cert and --admin-tls-key go together: give both to "
                        "serve the admin API over TLS\n");
        problems++;
    }
    for (int i = 0; i < 2; i++) {
        const char *path = i ? s->admin_tls_key : s->admin_tls_cert;

        free(err);
        err = NULL;
        if (path &&
            lb_file_check_readable(path, i ? "admin TLS key" : "admin TLS certificate", &err) < 0) {
            fprintf(stderr, "lbd: %s\n", err ? err : path);
            problems++;
        }
    }
    problems += lbd_check_listeners(d);
    if (s->upgrade_socket) {
        char dir[128];
        struct stat st;

        lb_file_dir(s->upgrade_socket, dir, sizeof(dir));
        if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
            fprintf(stderr, "lbd: --upgrade-socket %s: directory %s does not exist\n",
                    s->upgrade_socket, dir);
            problems++;
        } else if (lstat(s->upgrade_socket, &st) == 0 && !S_ISSOCK(st.st_mode)) {
            fprintf(stderr,
                    "lbd: --upgrade-socket %s: the path exists and is not a socket; lbd does "
                    "not replace a file it did not make: give another path\n",
                    s->upgrade_socket);
            problems++;
        }
    }
    if (s->state_file) {
        char msg[PATH_MAX + 128];

        if (lbd_state_file_problem(s->state_file, msg, sizeof(msg))) {
            fprintf(stderr, "lbd: %s\n", msg);
            problems++;
        }
    }
    if (check_fd_limit(&max_conns,
                       (rlim_t)FDS_RESERVED +
                           (rlim_t)s->workers * (d->n_pools + 3 + 2 * LB_PIPES_PER_WORKER)) < 0)
        problems++; /* it said why */
    free(err);
    if (problems) {
        fprintf(stderr, "lbd: --check: %u problem%s\n", problems, problems == 1 ? "" : "s");
        lb_etcd_endpoints_free(&endpoints);
        return 2;
    }
    printf("configuration OK\n");
    if (s->config)
        printf("  config file       %s\n", s->config);
    for (size_t i = 0; i < d->n_pools; i++)
        printf("  pool              %s on %s%s\n", d->pool_names[i], d->pool_listens[i],
               d->pool_accept_proxy[i] ? " (accept-proxy)" : "");
    printf("  etcd              "); /* the endpoints as lbd will use them */
    for (size_t i = 0; i < endpoints.n; i++)
        printf("%s%s", i ? "," : "", endpoints.v[i]);
    printf(", prefix %s%s%s\n", s->prefix, s->etcd.user_file ? ", user file" : "",
           s->etcd.ca_file || s->etcd.cert_file ? ", TLS files" : "");
    lb_etcd_endpoints_free(&endpoints);
    printf("  admin             %s%s%s\n", s->admin, s->admin_token_file ? ", token" : "",
           s->admin_tls_cert ? ", TLS" : "");
    printf("  http              %s\n", s->http);
    printf("  workers           %lld, max-conns %lld\n", (long long)s->workers,
           (long long)max_conns);
    printf("  backend networks  %s\n", s->backend_networks);
    printf("  zone              %s\n", s->zone && s->zone[0] ? s->zone : "(none)");
    if (s->state_file)
        printf("  state file        %s\n", s->state_file);
    printf("  not checked       whether the addresses are free and etcd answers\n");
    return 0;
}

#ifdef __SANITIZE_THREAD__
/*
 * ThreadSanitizer builds only.  libev's epoll back-end leaves a stopped
 * descriptor in its kernel set until the socket is closed for the kernel.
 * A socket handed over at an upgrade never is (the next lbd holds it), so
 * the old process's loop may still be told about it after its number was
 * reused by another thread's socket; libev then calls epoll_ctl on that
 * number, gets an error, and rebuilds its kernel set (ev_epoll.c, "a child
 * has the fd but we closed it").  TSan reports that epoll_ctl as a race on
 * the descriptor: by libev's design it is not one.
 */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:epoll_ctl\n";
}
#endif

int main(int argc, char **argv)
{
    struct lbd d;
    enum lb_log_level level;
    char **positional = NULL, *err = NULL;
    size_t n_positional = 0;
    int rc, exit_code = 1;

    memset(&d, 0, sizeof(d));
    d.takeover.fd = d.takeover.upgrade_listen_fd = -1;
    d.argv = argv;
    rc = lb_settings_parse(lbd_table, LB_ARRAY_SIZE(lbd_table), &d.settings, argc, argv, 0,
                           &positional, &n_positional, &err);
    if (rc < 0) {
        fprintf(stderr, "lbd: %s\n", err ? err : "cannot read settings");
        free(err);
        exit_code = 2;
        goto out;
    }
    if (d.settings.help) {
        usage(stdout);
        exit_code = 0;
        goto out;
    }
    if (d.settings.version) {
        printf("lbd %s\n", LB_VERSION);
        exit_code = 0;
        goto out;
    }
    if (n_positional) {
        fprintf(stderr, "lbd: unexpected argument \"%s\" (see --help)\n", positional[0]);
        exit_code = 2;
        goto out;
    }
    lb_log_level_parse(d.settings.log_level, &level);
    lb_log_set_level(level);
    lb_session_set_access_log(strcmp(d.settings.access_log, "on") == 0,
                              (uint64_t)d.settings.access_log_sample);
    if (parse_pools(&d) < 0) {
        exit_code = 2;
        goto out;
    }
    {
        struct lb_etcd_endpoints e;

        if (lb_etcd_opts_endpoints(&d.settings.etcd, &e, &err) < 0) {
            fprintf(stderr, "lbd: %s\n", err);
            free(err);
            exit_code = 2;
            goto out;
        }
        lb_etcd_endpoints_free(&e);
    }
    if (d.settings.etcd_backoff_initial_ms > d.settings.etcd_backoff_max_ms) {
        fprintf(stderr,
                "lbd: --etcd-backoff-initial (%lld ms) is more than --etcd-backoff-max (%lld ms): "
                "the first retry would wait longer than any later one\n",
                (long long)d.settings.etcd_backoff_initial_ms,
                (long long)d.settings.etcd_backoff_max_ms);
        exit_code = 2;
        goto out;
    }
    {
        char prefix[LB_PREFIX_MAX];

        if (lb_key_prefix_normalize(d.settings.prefix, prefix, &err) < 0) {
            fprintf(stderr, "lbd: --prefix: %s\n", err);
            free(err);
            exit_code = 2;
            goto out;
        }
    }
    if (lb_addr_policy_set_networks(&d.addr_policy, d.settings.backend_networks, &err) < 0) {
        fprintf(stderr, "lbd: %s\n", err);
        free(err);
        exit_code = 2;
        goto out;
    }
    if (d.settings.zone && d.settings.zone[0] &&
        !lb_name_is_valid(d.settings.zone, strlen(d.settings.zone))) {
        fprintf(stderr,
                "lbd: --zone %s: a zone is made of [A-Za-z0-9._:-], as in the backends' "
                "registrations\n",
                d.settings.zone);
        exit_code = 2;
        goto out;
    }
    if (d.settings.workers == 0)
        d.settings.workers = lb_cpus_available();
    if (d.settings.state_file && !d.settings.state_file[0]) {
        free(d.settings.state_file); /* LBD_STATE_FILE= turns a unit's default off */
        d.settings.state_file = NULL;
    }
    if (d.settings.check) {
        exit_code = lbd_check(&d);
        goto out;
    }
    if (d.settings.config)
        d.config_digest_ok = config_file_digest(d.settings.config, &d.config_digest);
    if (lbd_check_listeners(&d) > 0) {
        exit_code = 2;
        goto out;
    }
    if (d.settings.state_file) {
        char msg[PATH_MAX + 128];

        if (lbd_state_file_problem(d.settings.state_file, msg, sizeof(msg))) {
            fprintf(stderr, "lbd: %s\n", msg);
            exit_code = 2;
            goto out;
        }
    }
    /* Each worker: a listener per pool, its epoll, its wake-up fds and the
     * pipes it may splice through (2 fds each). */
    if (check_fd_limit(&d.settings.max_conns,
                       (rlim_t)FDS_RESERVED + (rlim_t)d.settings.workers *
                                                  (d.n_pools + 3 + 2 * LB_PIPES_PER_WORKER)) < 0)
        goto out;

    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "lbd: cannot initialise libcurl\n");
        goto out;
    }
    d.loop = ev_default_loop(EVBACKEND_EPOLL);
    if (!d.loop) {
        fprintf(stderr, "lbd: cannot create the epoll event loop\n");
        goto out_curl;
    }
    for (size_t i = 0; i < N_IGNORED_SIGNALS; i++) { /* from the start: they would kill */
        ev_signal_init(&d.ignored[i], lbd_ignored_cb, ignored_signals[i].signum);
        ev_signal_start(d.loop, &d.ignored[i]);
    }
    if (lbd_start(&d) < 0)
        goto out_loop;
    ev_signal_init(&d.sigterm, lbd_stop_cb, SIGTERM);
    ev_signal_init(&d.sigint, lbd_stop_cb, SIGINT);
    ev_signal_init(&d.sighup, lbd_hup_cb, SIGHUP);
    ev_signal_init(&d.sigusr2, lbd_usr2_cb, SIGUSR2);
    ev_signal_start(d.loop, &d.sigusr2);
    ev_signal_start(d.loop, &d.sigterm);
    ev_signal_start(d.loop, &d.sigint);
    ev_signal_start(d.loop, &d.sighup);
    ev_run(d.loop, 0);
    exit_code = 0;
    LB_INFO("lbd", "msg=\"stopped\"");
out_loop:
    lbd_cleanup(&d);
    ev_loop_destroy(d.loop);
    d.loop = NULL;
out_curl:
    curl_global_cleanup();
    free(positional);
    return exit_code;
out:
    lbd_cleanup(&d);
    free(positional);
    return exit_code;
}
