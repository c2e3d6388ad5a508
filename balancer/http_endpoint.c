/*
 * The probe port: libmicrohttpd on the lbd loop, serving /healthz, /readyz
 * and /metrics.
 *
 * A probe must be answered within a second however many clients misbehave
 * (a kubelet that waits longer restarts lbd), and a slowloris, which
 * trickles header lines forever from as many loopback addresses as it
 * likes, must not be able to hold every slot.  MHD accepts; lbd decides:
 *
 *  - MHD's accept policy callback runs conn_guard (conn_guard.h): caps in
 *    all and per peer address, and when one is reached a connection still
 *    waiting for its request is shed (its socket shut down) to make room,
 *    the one waiting longest of the address holding the most, instead of
 *    the newcomer being refused.  Each MHD_run() is a batch: what it
 *    accepts is read in the same run, before anything can shed it.  A connection is
 *    only safe from shedding while its request is with the handler or its
 *    answer is going out (a big /metrics body to a slow Prometheus).
 *  - MHD_OPTION_NOTIFY_CONNECTION and _COMPLETED tell when a connection
 *    starts and when each request ends; the handler tells when a request's
 *    headers are complete.  A sweep shuts down any connection that has
 *    waited HEADER_DEADLINE_S for a complete request header (MHD's own
 *    timeout only counts silence, which a trickle never allows).
 *
 * MHD's own connection cap sits above lbd's, so that sockets shed but not
 * yet closed by MHD never stop it accepting.  What lbd refuses, sheds or
 * times out is logged at most once a second per kind, with a count, and
 * counted in /metrics.
 */
#include "http_endpoint.h"
#include "lb_listen.h"
#include "conn_guard.h"
#include "lb_addr.h"
#include "lb_error.h"
#include "lb_log.h"
#include "lb_metrics_text.h"
#include "lb_util.h"

#include <errno.h>
#include <microhttpd.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define METRICS_MAX       (64u << 20) /* 64 MiB: room for 10,000s of backends */
#define MAX_CONNECTIONS   64          /* lbd's cap; MHD's is MHD_CONNECTIONS */
#define MAX_PER_PEER      16
#define MHD_CONNECTIONS   (MAX_CONNECTIONS + MAX_CONNECTIONS / 2)
#define HEADER_DEADLINE_S 5.0 /* from connect (or the last answer) to a complete request */
#define SWEEP_INTERVAL_S  0.5
#define NOTE_INTERVAL_S   1.0
#define IDLE_TIMEOUT_S    10 /* MHD: silence on a connection */
/*
 * Connections the kernel queues for accept: a flood fills a short queue and
 * a probe's SYN is dropped (and resent a second later); lbd accepts and
 * sheds faster than a long queue fills.
 */
#define LISTEN_BACKLOG 1024

enum http_note { NOTE_REFUSED, NOTE_SHED, NOTE_HEADER_TIMEOUT, NOTE_MAX };

/* One per MHD connection, its socket context. */
struct http_conn {
    struct lb_conn_guard_entry guard; /* proven while a request is with us */
    int fd;
    double waiting_since; /* connect, or the end of the last request */
    bool shut;            /* shut down by lbd; MHD closes it next */
};

struct lb_http {
    struct ev_loop *loop;
    struct MHD_Daemon *daemon;
    struct lb_http_config cfg;
    ev_io io;       /* MHD's epoll fd */
    ev_timer timer; /* MHD's own timeouts */
    ev_timer sweep; /* the header deadline */
    ev_timer note_timer;
    struct lb_conn_guard guard;
    struct lb_rate_log notes[NOTE_MAX];
    uint64_t refused, shed, header_timeouts;
    int port;      /* as bound */
    int listen_fd; /* MHD's until lb_http_stop_listening(); -1 then */
};

/* ---- pressure: one line per second per kind, with a count ---- */

static void http_note_log(enum http_note what, unsigned long count)
{
    switch (what) {
    case NOTE_REFUSED:
        LB_WARN("http",
                "msg=\"probe connections refused: no slot could be freed\" "
                "count=%lu max_connections=%u max_per_peer=%u",
                count, MAX_CONNECTIONS, MAX_PER_PEER);
        break;
    case NOTE_SHED:
        LB_WARN("http",
                "msg=\"probe connections closed to make room for new ones (longest "
                "waiting for a request first)\" count=%lu max_connections=%u "
                "max_per_peer=%u",
                count, MAX_CONNECTIONS, MAX_PER_PEER);
        break;
    case NOTE_HEADER_TIMEOUT:
        LB_WARN("http",
                "msg=\"probe connections closed: no complete request within %.0fs\" "
                "count=%lu",
                HEADER_DEADLINE_S, count);
        break;
    case NOTE_MAX:
        break;
    }
}

static void http_note_arm(struct lb_http *h)
{
    double next = 0;
    bool any = false;

    for (int i = 0; i < NOTE_MAX; i++) {
        if (h->notes[i].held && (!any || lb_rate_log_next(&h->notes[i]) < next)) {
            next = lb_rate_log_next(&h->notes[i]);
            any = true;
        }
    }
    ev_timer_stop(h->loop, &h->note_timer);
    if (any) {
        double after = next - ev_now(h->loop);

        ev_timer_set(&h->note_timer, after > 0.001 ? after : 0.001, 0.);
        ev_timer_start(h->loop, &h->note_timer);
    }
}

static void http_note(struct lb_http *h, enum http_note what)
{
    unsigned long n = lb_rate_log_hit(&h->notes[what], ev_now(h->loop));

    if (n)
        http_note_log(what, n);
    else if (!ev_is_active(&h->note_timer))
        http_note_arm(h);
}

static void http_note_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_http *h = lb_container_of(w, struct lb_http, note_timer);

    for (int i = 0; i < NOTE_MAX; i++) {
        unsigned long n = lb_rate_log_flush(&h->notes[i], ev_now(loop));

        if (n)
            http_note_log((enum http_note)i, n);
    }
    http_note_arm(h);
}

/* ---- admission, the header deadline ---- */

/* Ends a connection MHD owns: the socket reads EOF and MHD closes it on its next run. */
static void http_conn_shut(struct http_conn *hc)
{
    if (hc->shut)
        return;
    hc->shut = true;
    shutdown(hc->fd, SHUT_RDWR);
}

/* MHD's accept policy: room for the newcomer, by shedding if need be. */
static enum MHD_Result http_accept_cb(void *cls, const struct sockaddr *addr, socklen_t len)
{
    struct lb_http *h = cls;
    struct lb_conn_peer peer;
    struct lb_conn_guard_entry *victim;

    lb_conn_peer_from_sockaddr(&peer, addr);
    switch (lb_conn_guard_admit(&h->guard, &peer, &victim)) {
    case LB_CONN_ADMIT:
        return MHD_YES;
    case LB_CONN_SHED:
        http_conn_shut(lb_container_of(victim, struct http_conn, guard));
        h->shed++;
        http_note(h, NOTE_SHED);
        return MHD_YES;
    case LB_CONN_REFUSE_PEER:
    case LB_CONN_REFUSE_TOTAL:
        break;
    }
    h->refused++;
    http_note(h, NOTE_REFUSED);
    return MHD_NO;
}

static void http_connection_cb(void *cls, struct MHD_Connection *c, void **socket_context,
                               enum MHD_ConnectionNotificationCode code)
{
    struct lb_http *h = cls;
    struct http_conn *hc = *socket_context;

    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *fd =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *addr =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        struct lb_conn_peer peer;

        hc = calloc(1, sizeof(*hc));
        if (!hc) {
            *socket_context = NULL;
            return; /* not tracked: MHD's own cap and timeout still hold it */
        }
        hc->fd = fd ? fd->connect_fd : -1;
        hc->waiting_since = ev_now(h->loop);
        lb_conn_peer_from_sockaddr(&peer, addr ? addr->client_addr : NULL);
        lb_conn_guard_add(&h->guard, &hc->guard, &peer);
        *socket_context = hc;
        return;
    }
    if (hc) {
        lb_conn_guard_remove(&h->guard, &hc->guard);
        free(hc);
        *socket_context = NULL;
    }
}

static struct http_conn *http_conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

    return info ? info->socket_context : NULL;
}

/* A request is over: the connection waits for its next one, and may be shed again. */
static void http_completed_cb(void *cls, struct MHD_Connection *c, void **con_cls,
                              enum MHD_RequestTerminationCode toe)
{
    struct lb_http *h = cls;
    struct http_conn *hc = http_conn_of(c);

    if (!hc)
        return;
    hc->waiting_since = ev_now(h->loop);
    lb_conn_guard_set_proven(&h->guard, &hc->guard, false);
}

static void http_sweep_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_http *h = lb_container_of(w, struct lb_http, sweep);
    double now = ev_now(loop);

    struct lb_list *pos, *tmp;

    lb_list_for_each_safe(pos, tmp, &h->guard.entries)
    {
        struct lb_conn_guard_entry *e = lb_list_entry(pos, struct lb_conn_guard_entry, link);
        struct http_conn *hc = lb_container_of(e, struct http_conn, guard);

        if (e->proven || hc->shut || now - hc->waiting_since < HEADER_DEADLINE_S)
            continue;
        http_conn_shut(hc);
        h->header_timeouts++;
        http_note(h, NOTE_HEADER_TIMEOUT);
    }
}

static int http_render_own_metrics(struct lb_http *h, struct lb_buf *out)
{
    int rc = lb_metrics_family(out, "lbd_http_connections", "gauge",
                               "Connections open on the probe port (/healthz, /readyz, /metrics).");

    if (!rc)
        rc = lb_metrics_printf(out, "lbd_http_connections %u\n", h->guard.count);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_http_connections_closed_total", "counter",
                               "Probe port connections refused at accept (refused), closed to "
                               "make room for a newcomer (shed), or closed without a complete "
                               "request in time (header_timeout).");
    if (!rc)
        rc = lb_metrics_printf(out,
                               "lbd_http_connections_closed_total{reason=\"refused\"} %llu\n"
                               "lbd_http_connections_closed_total{reason=\"shed\"} %llu\n"
                               "lbd_http_connections_closed_total{reason=\"header_timeout\"} "
                               "%llu\n",
                               (unsigned long long)h->refused, (unsigned long long)h->shed,
                               (unsigned long long)h->header_timeouts);
    return rc;
}

static void http_schedule(struct lb_http *h)
{
    MHD_UNSIGNED_LONG_LONG ms;

    ev_timer_stop(h->loop, &h->timer);
    if (MHD_get_timeout(h->daemon, &ms) == MHD_YES) {
        ev_timer_set(&h->timer, (double)ms / 1000., 0.);
        ev_timer_start(h->loop, &h->timer);
    }
}

static void http_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_http *h = lb_container_of(w, struct lb_http, io);

    lb_conn_guard_next_batch(&h->guard);
    MHD_run(h->daemon);
    http_schedule(h);
}

static void http_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_http *h = lb_container_of(w, struct lb_http, timer);

    lb_conn_guard_next_batch(&h->guard);
    MHD_run(h->daemon);
    http_schedule(h);
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result rc;

    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    return reply(c, status, "text/plain; charset=utf-8", text, strlen(text));
}

static enum MHD_Result http_handler(void *cls, struct MHD_Connection *c, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_data_size,
                                    void **con_cls)
{
    struct lb_http *h = cls;
    struct http_conn *hc = http_conn_of(c);

    /* The headers are complete: this connection is busy with us until the answer is out. */
    if (hc)
        lb_conn_guard_set_proven(&h->guard, &hc->guard, true);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD are served here\n");
    if (*upload_data_size) {
        *upload_data_size = 0; /* a GET with a body: ignore the body */
        return MHD_YES;
    }
    if (strcmp(url, "/healthz") == 0)
        return reply_text(c, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0) {
        const char *why = "";
        char body[256];

        if (h->cfg.is_ready(h->cfg.ud, &why))
            return reply_text(c, MHD_HTTP_OK, "ready\n");
        snprintf(body, sizeof(body), "not ready: %s\n", why);
        return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, body);
    }
    if (strcmp(url, "/metrics") == 0) {
        struct lb_buf out;
        enum MHD_Result rc;

        lb_buf_init(&out, METRICS_MAX);
        if (h->cfg.render_metrics(h->cfg.ud, &out) < 0 || http_render_own_metrics(h, &out) < 0) {
            lb_buf_free(&out);
            LB_ERROR("http", "msg=\"metrics too large or out of memory\"");
            return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render metrics\n");
        }
        {
            /* Hand the buffer to MHD instead of copying megabytes of text. */
            struct MHD_Response *r = MHD_create_response_from_buffer(
                out.len, out.data ? out.data : "",
                out.data ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);

            if (!r) {
                lb_buf_free(&out);
                return MHD_NO;
            }
            MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
            MHD_add_response_header(r, "Cache-Control", "no-store");
            rc = MHD_queue_response(c, MHD_HTTP_OK, r);
            MHD_destroy_response(r);
            return rc;
        }
    }
    return reply_text(c, MHD_HTTP_NOT_FOUND, "not found: try /healthz, /readyz or /metrics\n");
}

int lb_http_start(struct ev_loop *loop, const struct lb_http_config *cfg, struct lb_http **out,
                  char **err)
{
    char what[320];
    struct lb_listen_options lo = {
        .what = what, .backlog = LISTEN_BACKLOG, .allow_port_zero = true};
    struct lb_listen_socket ls;
    const union MHD_DaemonInfo *info;
    struct lb_http *h;
    unsigned flags = MHD_USE_EPOLL;
    int rc;

    snprintf(what, sizeof(what), "--http %s", cfg->listen);
    rc = lb_listen_open(cfg->listen, &lo, &ls, err);
    if (rc < 0)
        return rc;
    h = calloc(1, sizeof(*h));
    if (!h) {
        lb_listen_close(&ls);
        return lb_error_set(err, -ENOMEM, "out of memory");
    }
    h->port = lb_listen_port(&ls);
    h->listen_fd = ls.fd;
    h->loop = loop;
    h->cfg = *cfg;
    lb_conn_guard_init(&h->guard, MAX_CONNECTIONS, MAX_PER_PEER);
    for (int i = 0; i < NOTE_MAX; i++)
        lb_rate_log_init(&h->notes[i], NOTE_INTERVAL_S);
    if (ls.addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* lbd binds (lb_listen: one way for every listener); MHD serves the socket and closes it. */
    h->daemon = MHD_start_daemon(
        flags, 0, http_accept_cb, h, http_handler, h, MHD_OPTION_LISTEN_SOCKET, ls.fd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)MHD_CONNECTIONS, MHD_OPTION_NOTIFY_CONNECTION,
        http_connection_cb, h, MHD_OPTION_NOTIFY_COMPLETED, http_completed_cb, h,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)32768, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)LISTEN_BACKLOG, MHD_OPTION_END);
    if (!h->daemon) {
        lb_listen_close(&ls);
        free(h);
        return lb_error_set(err, -ENOMEM, "--http %s: cannot start the HTTP server", cfg->listen);
    }
    info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    ev_io_init(&h->io, http_io_cb, info->epoll_fd, EV_READ);
    ev_io_start(loop, &h->io);
    ev_init(&h->timer, http_timer_cb);
    ev_timer_init(&h->sweep, http_sweep_cb, SWEEP_INTERVAL_S, SWEEP_INTERVAL_S);
    ev_timer_start(loop, &h->sweep);
    ev_init(&h->note_timer, http_note_timer_cb);
    http_schedule(h);
    LB_INFO("http", "msg=\"serving /healthz /readyz /metrics\" addr=%s", cfg->listen);
    *out = h;
    return 0;
}

int lb_http_port(const struct lb_http *h)
{
    return h->port;
}

int lb_http_listen_fd(const struct lb_http *h)
{
    return h->listen_fd;
}

void lb_http_stop_listening(struct lb_http *h)
{
    MHD_socket fd;

    if (h->listen_fd < 0)
        return;
    fd = MHD_quiesce_daemon(h->daemon); /* MHD lets go of the socket: ours to close */
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    h->listen_fd = -1;
}

void lb_http_stop(struct lb_http *h)
{
    if (!h)
        return;
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timer);
    ev_timer_stop(h->loop, &h->sweep);
    ev_timer_stop(h->loop, &h->note_timer);
    MHD_stop_daemon(h->daemon); /* notifies every connection's close: frees their state */
    free(h);
}
