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
 *
 * The status page (status_page.h) adds /, /status.json and /events.  An
 * event stream is a response that never ends, read from a callback: when
 * its queue is empty the callback suspends the connection
 * (MHD_suspend_connection, MHD_ALLOW_SUSPEND_RESUME) and returns 0; when an
 * event or a heartbeat is queued the stream's wake resumes it and runs MHD
 * at once (a zero timer), and MHD calls the callback again.  A suspended
 * connection is out of MHD's sight, so lbd watches its socket meanwhile: a
 * client that closes it (or sends anything) ends the stream.  A stream is
 * inside its request, so it is proven: never shed and exempt from the
 * header deadline, while it still counts against both caps; streams have
 * caps of their own (MAX_EVENT_STREAMS, and MAX_EVENT_STREAMS_PER_PEER so
 * that one address keeps slots for its probes).  The stream, and the
 * subscription behind it, is freed when MHD frees the response: when the
 * connection closes.
 */
#include "http_endpoint.h"
#include "lb_listen.h"
#include "conn_guard.h"
#include "status_page.h"
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

/* The status page: /status.json's bound, /events' caps (within the connection caps). */
#define STATUS_JSON_MAX            (64u << 20)
#define MAX_EVENT_STREAMS          16 /* /events clients at once */
#define MAX_EVENT_STREAMS_PER_PEER 8  /* half of MAX_PER_PEER: room left for probes */
#define EVENT_BLOCK                4096
/*
 * A stream's socket send buffer, fixed (no autotuning): with the stream's own
 * queue, what a client that stopped reading costs before it is dropped.
 */
#define EVENT_SNDBUF (64 << 10)
/*
 * Every answer: no MIME sniffing, no framing, no referrer, and a policy that
 * lets the page run only its own script and style (no inline code, no
 * other origin) and talk only to this port.
 */
#define CSP                                                                                        \
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "                \
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
/*
 * Connections the kernel queues for accept: a flood fills a short queue and
 * a probe's SYN is dropped (and resent a second later); lbd accepts and
 * sheds faster than a long queue fills.
 */
#define LISTEN_BACKLOG 1024

enum http_note { NOTE_REFUSED, NOTE_SHED, NOTE_HEADER_TIMEOUT, NOTE_STREAM_REFUSED, NOTE_MAX };

/* One per MHD connection, its socket context. */
struct http_conn {
    struct lb_conn_guard_entry guard; /* proven while a request is with us */
    int fd;
    double waiting_since; /* connect, or the end of the last request */
    bool shut;            /* shut down by lbd; MHD closes it next */
};

/* One /events client: its connection, its stream, and its socket while suspended. */
struct http_stream {
    struct lb_list link; /* h->streams */
    struct lb_http *h;
    struct MHD_Connection *conn;
    struct lb_status_stream *stream;
    struct lb_conn_peer peer;
    ev_io peer_watch; /* the socket while MHD does not look: the client leaving */
    bool suspended;
};

struct lb_http {
    struct ev_loop *loop;
    struct MHD_Daemon *daemon;
    struct lb_http_config cfg;
    struct lb_status *status; /* NULL without a registry */
    struct lb_list streams;   /* struct http_stream */
    ev_io io;                 /* MHD's epoll fd */
    ev_timer timer;           /* MHD's own timeouts; 0 to run MHD after a resume */
    ev_timer sweep;           /* the header deadline */
    ev_timer note_timer;
    struct lb_conn_guard guard;
    struct lb_rate_log notes[NOTE_MAX];
    uint64_t refused, shed, header_timeouts, streams_refused;
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
    case NOTE_STREAM_REFUSED:
        LB_WARN("http",
                "msg=\"event streams refused: too many open\" count=%lu max_streams=%u "
                "max_streams_per_peer=%u",
                count, MAX_EVENT_STREAMS, MAX_EVENT_STREAMS_PER_PEER);
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
        rc = lb_buf_printf(out, "lbd_http_connections %u\n", h->guard.count);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_http_connections_closed_total", "counter",
                               "Probe port connections refused at accept (refused), closed to "
                               "make room for a newcomer (shed), or closed without a complete "
                               "request in time (header_timeout).");
    if (!rc)
        rc = lb_buf_printf(out,
                           "lbd_http_connections_closed_total{reason=\"refused\"} %llu\n"
                           "lbd_http_connections_closed_total{reason=\"shed\"} %llu\n"
                           "lbd_http_connections_closed_total{reason=\"header_timeout\"} "
                           "%llu\n",
                           (unsigned long long)h->refused, (unsigned long long)h->shed,
                           (unsigned long long)h->header_timeouts);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_http_event_streams", "gauge",
                               "Status page event streams (/events) open.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_http_event_streams %u\n",
                           h->status ? lb_status_stream_count(h->status) : 0);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_http_event_streams_refused_total", "counter",
                               "Event streams refused: too many open, in all or from one address.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_http_event_streams_refused_total %llu\n",
                           (unsigned long long)h->streams_refused);
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

/* Runs MHD as soon as the loop is back: a resumed connection waits for MHD_run(). */
static void http_kick(struct lb_http *h)
{
    ev_timer_stop(h->loop, &h->timer);
    ev_timer_set(&h->timer, 0., 0.);
    ev_timer_start(h->loop, &h->timer);
}

static void add_common_headers(struct MHD_Response *r, const char *type, const char *cache)
{
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", cache);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Content-Security-Policy", CSP);
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result rc;

    if (!r)
        return MHD_NO;
    add_common_headers(r, type, "no-store");
    rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    return reply(c, status, "text/plain; charset=utf-8", text, strlen(text));
}

/* Hands a rendered buffer to MHD instead of copying megabytes of text. */
static enum MHD_Result reply_buf(struct MHD_Connection *c, const char *type, struct lb_buf *out)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(out->len, out->data ? out->data : "",
                                        out->data ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    enum MHD_Result rc;

    if (!r) {
        lb_buf_free(out);
        return MHD_NO;
    }
    add_common_headers(r, type, "no-store");
    rc = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

/* The page's files never change while lbd runs; "no-cache" lets an upgraded lbd serve its own. */
static enum MHD_Result reply_asset(struct MHD_Connection *c, const struct lb_status_asset *a)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result rc;

    if (!r)
        return MHD_NO;
    add_common_headers(r, a->content_type, "no-cache");
    rc = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

/* ---- /events: server-sent events ---- */

static void http_stream_watch_stop(struct http_stream *st)
{
    ev_io_stop(st->h->loop, &st->peer_watch);
}

/* Lets MHD look at the connection again and run it at once. */
static void http_stream_resume(struct http_stream *st)
{
    if (!st->suspended)
        return;
    st->suspended = false;
    http_stream_watch_stop(st);
    MHD_resume_connection(st->conn);
    http_kick(st->h);
}

/*
 * The stream has something after a read found nothing, or it has ended: a
 * client that stopped reading overflowed its queue.  MHD may then be stuck
 * writing to it, not asking the stream for more: shut the socket down so
 * that MHD's next write fails and it closes the connection.
 */
static void http_stream_wake(void *ud)
{
    struct http_stream *st = ud;

    if (st->suspended)
        http_stream_resume(st);
    else if (lb_status_stream_has_ended(st->stream) && st->peer_watch.fd >= 0)
        shutdown(st->peer_watch.fd, SHUT_RDWR);
}

/* The client closed (or sent something) while suspended: end the stream, MHD closes it. */
static void http_stream_peer_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct http_stream *st = lb_container_of(w, struct http_stream, peer_watch);

    lb_status_stream_end(st->stream);
    http_stream_resume(st);
}

/* MHD wants body bytes: what is queued, or a suspension until there is some. */
static ssize_t http_stream_read_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct http_stream *st = cls;
    ssize_t n = lb_status_stream_read(st->stream, buf, max);

    if (n > 0)
        return n;
    if (n < 0)
        return MHD_CONTENT_READER_END_WITH_ERROR; /* ended: the client reconnects */
    MHD_suspend_connection(st->conn);
    st->suspended = true;
    if (st->peer_watch.fd >= 0)
        ev_io_start(st->h->loop, &st->peer_watch);
    return 0;
}

/* MHD frees the response: the connection is closing (or lbd is stopping). */
static void http_stream_free_cb(void *cls)
{
    struct http_stream *st = cls;

    http_stream_watch_stop(st);
    lb_status_stream_close(st->stream);
    lb_list_remove(&st->link);
    free(st);
}

static unsigned http_streams_from(const struct lb_http *h, const struct lb_conn_peer *peer)
{
    const struct lb_list *pos;
    unsigned n = 0;

    lb_list_for_each(pos, &h->streams)
    {
        const struct http_stream *st = lb_list_entry(pos, struct http_stream, link);

        n += st->peer.family == peer->family && memcmp(st->peer.addr, peer->addr, 16) == 0;
    }
    return n;
}

static enum MHD_Result http_events(struct lb_http *h, struct MHD_Connection *c, const char *method)
{
    const union MHD_ConnectionInfo *addr =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const union MHD_ConnectionInfo *fd =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct lb_conn_peer peer;
    struct http_stream *st;
    struct MHD_Response *r;
    enum MHD_Result rc;

    if (strcmp(method, "HEAD") == 0) {
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (!r)
            return MHD_NO;
        add_common_headers(r, "text/event-stream; charset=utf-8", "no-store");
        rc = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return rc;
    }
    lb_conn_peer_from_sockaddr(&peer, addr ? addr->client_addr : NULL);
    if (lb_status_stream_count(h->status) >= MAX_EVENT_STREAMS ||
        http_streams_from(h, &peer) >= MAX_EVENT_STREAMS_PER_PEER) {
        h->streams_refused++;
        http_note(h, NOTE_STREAM_REFUSED);
        return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                          "too many event streams open; the page polls /status.json meanwhile\n");
    }
    st = calloc(1, sizeof(*st));
    if (!st)
        return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n");
    st->h = h;
    st->conn = c;
    st->peer = peer;
    ev_io_init(&st->peer_watch, http_stream_peer_cb, fd ? fd->connect_fd : -1, EV_READ);
    if (fd) {
        int sndbuf = EVENT_SNDBUF;

        setsockopt(fd->connect_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    }
    st->stream = lb_status_stream_open(h->status, http_stream_wake, st);
    if (!st->stream) {
        free(st);
        return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory\n");
    }
    lb_list_insert_tail(&h->streams, &st->link);
    r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, EVENT_BLOCK, http_stream_read_cb, st,
                                          http_stream_free_cb);
    if (!r) {
        http_stream_free_cb(st);
        return MHD_NO;
    }
    add_common_headers(r, "text/event-stream; charset=utf-8", "no-store");
    MHD_add_response_header(r, "X-Accel-Buffering", "no"); /* a proxy in front: do not buffer */
    rc = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r); /* the connection holds it; http_stream_free_cb follows its end */
    return rc;
}

/* Ends every stream (lbd stops, or hands the port over): their clients reconnect. */
static void http_streams_end(struct lb_http *h)
{
    struct lb_list *pos;

    lb_list_for_each(pos, &h->streams)
    {
        struct http_stream *st = lb_list_entry(pos, struct http_stream, link);

        lb_status_stream_end(st->stream);
        http_stream_resume(st);
    }
}

/* ---- routing ---- */

static enum MHD_Result http_status_route(struct lb_http *h, struct MHD_Connection *c,
                                         const char *url, const char *method, bool *routed)
{
    const struct lb_status_asset *a = lb_status_asset_find(url);

    *routed = true;
    if (a)
        return reply_asset(c, a);
    if (strcmp(url, "/status.json") == 0) {
        struct lb_buf out;

        lb_buf_init(&out, STATUS_JSON_MAX);
        if (lb_status_render_json(h->cfg.registry, &out) < 0) {
            lb_buf_free(&out);
            LB_ERROR("http", "msg=\"status too large or out of memory\"");
            return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render the status\n");
        }
        return reply_buf(c, "application/json", &out);
    }
    if (strcmp(url, "/events") == 0)
        return http_events(h, c, method);
    *routed = false;
    return MHD_NO;
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

        lb_buf_init(&out, METRICS_MAX);
        if (h->cfg.render_metrics(h->cfg.ud, &out) < 0 || http_render_own_metrics(h, &out) < 0) {
            lb_buf_free(&out);
            LB_ERROR("http", "msg=\"metrics too large or out of memory\"");
            return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render metrics\n");
        }
        return reply_buf(c, "text/plain; version=0.0.4; charset=utf-8", &out);
    }
    if (h->status) {
        bool routed;
        enum MHD_Result rc = http_status_route(h, c, url, method, &routed);

        if (routed)
            return rc;
    }
    return reply_text(c, MHD_HTTP_NOT_FOUND,
                      h->status ? "not found: try /, /status.json, /events, /healthz, /readyz or "
                                  "/metrics\n"
                                : "not found: try /healthz, /readyz or /metrics\n");
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
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
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
    lb_list_init(&h->streams);
    if (cfg->registry && lb_status_new(loop, cfg->registry, &h->status) < 0) {
        lb_listen_close(&ls);
        free(h);
        return lb_error_set(err, -ENOMEM, "out of memory");
    }
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
        lb_status_free(h->status);
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
    LB_INFO("http", "msg=\"serving /healthz /readyz /metrics%s\" addr=%s",
            h->status ? " and the status page (/, /status.json, /events)" : "", cfg->listen);
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
    http_streams_end(h);                /* their clients reconnect, to the next lbd */
    fd = MHD_quiesce_daemon(h->daemon); /* MHD lets go of the socket: ours to close */
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    h->listen_fd = -1;
}

void lb_http_stop(struct lb_http *h)
{
    if (!h)
        return;
    http_streams_end(h); /* MHD must not be stopped with a connection suspended */
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timer);
    ev_timer_stop(h->loop, &h->sweep);
    ev_timer_stop(h->loop, &h->note_timer);
    MHD_stop_daemon(h->daemon); /* notifies every connection's close: frees their state */
    lb_status_free(h->status);
    free(h);
}
