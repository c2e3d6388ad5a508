/*
 * Proxied connections (state machine in session.h): connect with retries,
 * relay through the proxy's scratch buffer, back-pressure by pausing the
 * read side, RST passed on as RST, one finalize, frees deferred to the
 * proxy's reaper.
 */
#include "session.h"
#include "backend.h"
#include "health.h"
#include "proxy_protocol.h"
#include "lb_addr.h"
#include "lb_log.h"
#include "lb_util.h"
#include "pool.h"
#include "proxy.h"
#include "registry.h"

#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_ATTEMPTS 8     /* first try + retries, whatever the policy says */
#define PENDING_MAX  16384 /* == scratch size: at most one read is ever pending */
#define PROBE_S      1.0   /* how often a peer we stopped reading is looked at */
#define FIN_STALL_S  10.0  /* client gone and backend not reading for this long: end */

enum session_state { SESSION_CONNECTING, SESSION_PROXYING, SESSION_CLOSED };

/* One direction: bytes read from `from` and written to `to`. */
struct half {
    ev_io from_r;  /* read watcher on the source socket */
    ev_io to_w;    /* write watcher on the destination socket */
    char *pending; /* bytes `to` could not take yet (PENDING_MAX), lazily allocated */
    size_t off, len;
    bool eof;              /* read 0 from `from` */
    bool shut;             /* forwarded as shutdown(to, SHUT_WR) */
    ev_tstamp progress_at; /* `to` last took bytes, or pending began */
};

struct lb_session {
    struct lb_proxy *proxy;
    struct lb_pool *pool;
    struct lb_backend *backend; /* referenced while connecting and proxying */
    enum session_state state;
    bool reset; /* end with RST on both sockets, not FIN */
    int client_fd;
    int server_fd;
    ev_io connect_w; /* server socket writable = connect finished */
    ev_timer timer;  /* connect timeout, then idle timeout and peer probes */
    ev_tstamp last_activity;
    ev_tstamp idle_timeout; /* seconds, 0 = none */
    struct half up;         /* client -> backend */
    struct half down;       /* backend -> client */
    /* backends tried: compared by address only, never dereferenced */
    struct lb_backend *tried[MAX_ATTEMPTS];
    size_t n_tried;
    struct lb_list b_link; /* backend->sessions, newest first */
    struct sockaddr_storage client_addr;
    struct lb_list link; /* proxy->live */
    struct lb_reap reap; /* freed by the proxy's reaper */
};

static void session_connect_next(struct lb_session *s);
static void session_connect_failed(struct lb_session *s, const char *why);
static void session_finalize(struct lb_session *s, const char *why);
static void session_free(struct lb_reap *r);
static void session_abort_reset(struct lb_session *s, const char *why);
static void session_arm_timer(struct lb_session *s);

struct lb_session *lb_session_of_link(struct lb_list *l)
{
    return lb_list_entry(l, struct lb_session, link);
}

static void set_nodelay(int fd)
{
    int one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ------------------------------------------------------------- relay -- */

/* Flushes pending bytes of h to `to`.  Returns 0 when all written, 1 when some
 * remain (write watcher started), -1 on a write error. */
static int half_flush(struct lb_session *s, struct half *h, int to)
{
    while (h->len) {
        ssize_t w = send(to, h->pending + h->off, h->len, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ev_io_start(s->proxy->loop, &h->to_w);
                return 1;
            }
            return -1;
        }
        h->off += (size_t)w;
        h->len -= (size_t)w;
        h->progress_at = ev_now(s->proxy->loop);
        if (h == &s->up)
            s->backend->bytes_in += (uint64_t)w;
        else
            s->backend->bytes_out += (uint64_t)w;
    }
    h->off = 0;
    ev_io_stop(s->proxy->loop, &h->to_w);
    return 0;
}

static bool session_is_done(const struct lb_session *s)
{
    return s->up.shut && s->down.shut;
}

/*
 * Forwards EOF once nothing is pending.  When the other direction is
 * already finished, the session ends right after and close() sends the
 * FIN: no shutdown() needed.
 */
static void half_forward_eof(struct lb_session *s, struct half *h, int to)
{
    const struct half *other = h == &s->up ? &s->down : &s->up;

    if (h->eof && !h->len && !h->shut) {
        if (!other->shut)
            shutdown(to, SHUT_WR);
        h->shut = true;
    }
}

static void half_read(struct lb_session *s, struct half *h, int from, int to)
{
    char *buf = s->proxy->scratch;
    ssize_t n;

    for (int round = 0; round < 4; round++) {
        ssize_t w = 0;

        n = recv(from, buf, sizeof(s->proxy->scratch), 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            session_abort_reset(s, h == &s->up ? "client reset the connection"
                                               : "backend reset the connection");
            return;
        }
        if (n == 0) {
            h->eof = true;
            ev_io_stop(s->proxy->loop, &h->from_r);
            half_forward_eof(s, h, to);
            if (session_is_done(s))
                session_finalize(s, "closed by both sides");
            return;
        }
        s->last_activity = ev_now(s->proxy->loop);
        while (w < n) {
            ssize_t k = send(to, buf + w, (size_t)(n - w), MSG_NOSIGNAL);

            if (k < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                session_abort_reset(s, h == &s->up ? "backend reset the connection"
                                                   : "client reset the connection");
                return;
            }
            w += k;
        }
        if (h == &s->up)
            s->backend->bytes_in += (uint64_t)w;
        else
            s->backend->bytes_out += (uint64_t)w;
        if (w < n) {
            /* The other side is full: keep the rest, stop reading until it drains. */
            if (!h->pending && !(h->pending = malloc(PENDING_MAX))) {
                session_finalize(s, "out of memory");
                return;
            }
            memcpy(h->pending, buf + w, (size_t)(n - w));
            h->off = 0;
            h->len = (size_t)(n - w);
            h->progress_at = ev_now(s->proxy->loop);
            ev_io_stop(s->proxy->loop, &h->from_r);
            ev_io_start(s->proxy->loop, &h->to_w);
            session_arm_timer(s); /* watch the peer we stopped reading */
            return;
        }
        if ((size_t)n < sizeof(s->proxy->scratch))
            return;
    }
}

static void session_client_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, up.from_r);

    half_read(s, &s->up, s->client_fd, s->server_fd);
}

static void session_server_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, down.from_r);

    half_read(s, &s->down, s->server_fd, s->client_fd);
}

static void half_writable(struct lb_session *s, struct half *h, int to)
{
    int rc = half_flush(s, h, to);

    if (rc < 0) {
        session_abort_reset(s, h == &s->up ? "backend reset the connection"
                                           : "client reset the connection");
        return;
    }
    if (rc > 0)
        return;
    s->last_activity = ev_now(s->proxy->loop);
    if (h->eof) {
        half_forward_eof(s, h, to);
        if (session_is_done(s))
            session_finalize(s, "closed by both sides");
        return;
    }
    ev_io_start(s->proxy->loop, &h->from_r);
}

static void session_server_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, up.to_w);

    half_writable(s, &s->up, s->server_fd);
}

static void session_client_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, down.to_w);

    half_writable(s, &s->down, s->client_fd);
}

/* ------------------------------------------------------------ timers -- */

/* True when h stopped reading its source because its destination is full. */
static bool half_is_paused(const struct half *h)
{
    return h->len > 0 && !h->eof;
}

/*
 * While proxying, one timer serves the idle timeout and, while a direction
 * is paused, a probe of the peer lbd stopped reading: nothing else would
 * notice that peer going away.
 */
static void session_arm_timer(struct lb_session *s)
{
    struct ev_loop *loop = s->proxy->loop;
    ev_tstamp after = -1.;

    if (s->state != SESSION_PROXYING)
        return;
    if (s->idle_timeout > 0)
        after = s->last_activity + s->idle_timeout - ev_now(loop);
    if ((half_is_paused(&s->up) || half_is_paused(&s->down)) && (after < 0 || after > PROBE_S))
        after = PROBE_S;
    if (after < 0 && s->idle_timeout <= 0) {
        ev_timer_stop(loop, &s->timer);
        return;
    }
    if (after < 0.001)
        after = 0.001;
    ev_timer_stop(loop, &s->timer);
    ev_timer_set(&s->timer, after, 0.);
    ev_timer_start(loop, &s->timer);
}

enum peer_state { PEER_THERE, PEER_FINISHED, PEER_RESET };

/* What the kernel knows of the peer of fd, without reading from it. */
static enum peer_state peer_state(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    int err = 0;
    socklen_t elen = sizeof(err);

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err)
        return PEER_RESET;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return PEER_THERE;
    if (ti.tcpi_state == TCP_CLOSE)
        return PEER_RESET;
    if (ti.tcpi_state == TCP_CLOSE_WAIT || ti.tcpi_state == TCP_LAST_ACK)
        return PEER_FINISHED;
    return PEER_THERE;
}

/*
 * A direction is paused: its source is not read until its destination
 * takes the pending bytes.  A source that reset is gone for good: end the
 * session (RST both ways) rather than hold it until the idle timeout.  A
 * client that finished sending while the backend has taken nothing for
 * FIN_STALL_S is gone too: its bytes can only reach a backend that stopped
 * reading.  A backend that finished while a slow client reads is normal.
 * Returns true when the session ended.
 */
static bool session_probe_paused(struct lb_session *s, ev_tstamp now)
{
    if (half_is_paused(&s->up)) {
        enum peer_state st = peer_state(s->client_fd);

        if (st == PEER_RESET) {
            session_abort_reset(s, "client reset while the backend was not reading");
            return true;
        }
        if (st == PEER_FINISHED && now - s->up.progress_at >= FIN_STALL_S) {
            session_abort_reset(s, "client closed and the backend stopped reading");
            return true;
        }
    }
    if (half_is_paused(&s->down) && peer_state(s->server_fd) == PEER_RESET) {
        session_abort_reset(s, "backend reset while the client was not reading");
        return true;
    }
    return false;
}

static void session_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, timer);
    ev_tstamp now = ev_now(loop);

    if (s->state == SESSION_CONNECTING) {
        session_connect_failed(s, "connect timed out");
        return;
    }
    if (session_probe_paused(s, now))
        return;
    if (s->idle_timeout > 0 && s->last_activity + s->idle_timeout - now <= 0.001) {
        session_finalize(s, "idle timeout");
        return;
    }
    session_arm_timer(s);
}

/* ----------------------------------------------------------- connect -- */

static void session_release_backend(struct lb_session *s)
{
    struct lb_backend *b = s->backend;

    if (!b)
        return;
    lb_list_remove(&s->b_link);
    s->backend = NULL;
    b->active--;
    lb_registry_connection_closed(s->proxy->registry, b);
    lb_backend_unref(b);
}

/*
 * Queues the PROXY protocol header as the first bytes towards the backend;
 * client bytes are read only once it is written.  Returns 0, or -1 after
 * finalizing the session.
 */
static int session_send_proxy_header(struct lb_session *s)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    int n;

    if (getsockname(s->client_fd, (struct sockaddr *)&local, &len) < 0) {
        session_finalize(s, "getsockname failed");
        return -1;
    }
    s->up.pending = malloc(PENDING_MAX);
    if (!s->up.pending) {
        session_finalize(s, "out of memory");
        return -1;
    }
    n = lb_proxy_protocol_build(s->pool->policy.proxy_protocol, (struct sockaddr *)&s->client_addr,
                                (struct sockaddr *)&local, s->up.pending, PENDING_MAX);
    if (n < 0) {
        session_finalize(s, "cannot build PROXY header");
        return -1;
    }
    s->up.off = 0;
    s->up.len = (size_t)n;
    if (half_flush(s, &s->up, s->server_fd) < 0) {
        session_finalize(s, "write error");
        return -1;
    }
    return 0;
}

static void session_connected(struct lb_session *s)
{
    struct ev_loop *loop = s->proxy->loop;

    ev_io_stop(loop, &s->connect_w);
    ev_timer_stop(loop, &s->timer);
    s->state = SESSION_PROXYING;
    s->backend->total++;
    lb_health_connect_result(s->backend, true);
    set_nodelay(s->server_fd);
    ev_io_init(&s->up.from_r, session_client_read_cb, s->client_fd, EV_READ);
    ev_io_init(&s->up.to_w, session_server_write_cb, s->server_fd, EV_WRITE);
    ev_io_init(&s->down.from_r, session_server_read_cb, s->server_fd, EV_READ);
    ev_io_init(&s->down.to_w, session_client_write_cb, s->client_fd, EV_WRITE);
    ev_io_start(loop, &s->down.from_r);
    if (s->pool->policy.proxy_protocol != LB_PROXY_NONE && session_send_proxy_header(s) < 0)
        return;
    if (!s->up.len)
        ev_io_start(loop, &s->up.from_r);
    s->last_activity = ev_now(loop);
    session_arm_timer(s);
}

static void session_connect_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, connect_w);
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(s->server_fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == 0) {
        session_connected(s);
        return;
    }
    session_connect_failed(s, strerror(err));
}

/*
 * A connect attempt to s->backend failed: count it, tell passive health,
 * and log (at most once a second per backend, with the number of failures
 * not logged, so a dead backend under load does not flood the log).
 */
static void session_connect_failed(struct lb_session *s, const char *why)
{
    struct lb_backend *b = s->backend;
    ev_tstamp now = ev_now(s->proxy->loop);

    b->connect_failures++;
    if (now - b->fail_logged_at >= 1.0) {
        LB_WARN("proxy",
                "msg=\"connect to backend failed\" pool=%s backend=%s addr=%s "
                "error=\"%s\" unlogged_failures=%llu",
                s->pool->name, b->id, b->spec.addr, why, (unsigned long long)b->fail_unlogged);
        b->fail_logged_at = now;
        b->fail_unlogged = 0;
    } else {
        b->fail_unlogged++;
    }
    lb_health_connect_result(b, false);
    if (s->n_tried <= (size_t)s->pool->policy.retries) {
        s->pool->retries++;
        b->retries++;
    }
    session_connect_next(s);
}

/*
 * Picks a backend not tried yet and below the pool's max_conns, and starts
 * connecting; when none is left, or the policy's retries are used up, the
 * client is closed.
 */
static void session_connect_next(struct lb_session *s)
{
    struct ev_loop *loop = s->proxy->loop;
    struct lb_pool *pool = s->pool;
    struct lb_pick pick = {
        .client = (struct sockaddr *)&s->client_addr,
        .tried = s->tried,
        .n_tried = s->n_tried,
        .max_conns = pool->policy.max_conns > 0 ? (uint64_t)pool->policy.max_conns : 0,
    };
    size_t max_attempts = (size_t)pool->policy.retries + 1;
    struct lb_backend *b;
    int fd;

    if (max_attempts > MAX_ATTEMPTS)
        max_attempts = MAX_ATTEMPTS;
    ev_io_stop(loop, &s->connect_w);
    ev_timer_stop(loop, &s->timer);
    if (s->server_fd >= 0) {
        close(s->server_fd);
        s->server_fd = -1;
    }
    session_release_backend(s);
    if (s->n_tried >= max_attempts) {
        session_finalize(s, "connect failed on every attempt");
        return;
    }
    b = lb_pool_pick(pool, &pick);
    if (!b) {
        pool->no_backend++;
        session_finalize(s, s->n_tried ? "no backend left to retry"
                                       : "no backend available (none up, or all at max_conns)");
        return;
    }
    s->tried[s->n_tried++] = b;
    lb_backend_ref(b);
    b->active++;
    s->backend = b;
    lb_list_insert_head(&b->sessions, &s->b_link);
    fd = socket(b->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        LB_WARN("proxy", "msg=\"cannot create backend socket\" pool=%s error=\"%s\"", pool->name,
                strerror(errno));
        session_finalize(s, "no socket");
        return;
    }
    s->server_fd = fd;
    if (connect(fd, (struct sockaddr *)&b->sa, b->sa_len) == 0) {
        session_connected(s);
        return;
    }
    if (errno != EINPROGRESS) {
        /* Retries through session_connect_next(): at most MAX_ATTEMPTS deep. */
        session_connect_failed(s, strerror(errno));
        return;
    }
    ev_io_init(&s->connect_w, session_connect_cb, fd, EV_WRITE);
    ev_io_start(loop, &s->connect_w);
    if (pool->policy.connect_timeout_ms > 0) {
        ev_timer_set(&s->timer, (double)pool->policy.connect_timeout_ms / 1000., 0.);
        ev_timer_start(loop, &s->timer);
    }
}

/* --------------------------------------------------------- lifecycle -- */

int lb_session_start(struct lb_proxy *proxy, struct lb_pool *pool, int client_fd,
                     const struct sockaddr *client, socklen_t client_len)
{
    struct lb_session *s = calloc(1, sizeof(*s));

    if (!s) {
        close(client_fd);
        return -ENOMEM;
    }
    s->proxy = proxy;
    s->pool = pool;
    s->state = SESSION_CONNECTING;
    s->client_fd = client_fd;
    s->server_fd = -1;
    s->idle_timeout = (double)pool->policy.idle_timeout_ms / 1000.;
    if (client_len <= sizeof(s->client_addr))
        memcpy(&s->client_addr, client, client_len);
    ev_init(&s->connect_w, session_connect_cb);
    ev_init(&s->timer, session_timer_cb);
    ev_init(&s->up.from_r, session_client_read_cb);
    ev_init(&s->up.to_w, session_server_write_cb);
    ev_init(&s->down.from_r, session_server_read_cb);
    ev_init(&s->down.to_w, session_client_write_cb);

    lb_list_init(&s->b_link);
    lb_list_insert_head(&proxy->live, &s->link);
    proxy->active++;
    proxy->accepted++;
    pool->active++;
    pool->total++;
    session_connect_next(s);
    return 0;
}

static void session_finalize(struct lb_session *s, const char *why)
{
    struct lb_proxy *proxy = s->proxy;
    struct ev_loop *loop = proxy->loop;

    if (s->state == SESSION_CLOSED)
        return;
    if (lb_log_enabled(LB_LOG_DEBUG)) {
        char client[64];

        lb_addr_format((struct sockaddr *)&s->client_addr, client, sizeof(client));
        LB_DEBUG("proxy", "msg=\"session closed\" pool=%s backend=%s client=%s reason=\"%s\"",
                 s->pool->name, s->backend ? s->backend->id : "-", client, why);
    }
    s->state = SESSION_CLOSED;
    ev_io_stop(loop, &s->connect_w);
    ev_timer_stop(loop, &s->timer);
    ev_io_stop(loop, &s->up.from_r);
    ev_io_stop(loop, &s->up.to_w);
    ev_io_stop(loop, &s->down.from_r);
    ev_io_stop(loop, &s->down.to_w);
    if (s->reset) {
        /* An L4 proxy passes an abort on as an abort: the other side must
         * not mistake a truncated stream for a complete one. */
        struct linger abort_now = {.l_onoff = 1, .l_linger = 0};

        setsockopt(s->client_fd, SOL_SOCKET, SO_LINGER, &abort_now, sizeof(abort_now));
        if (s->server_fd >= 0)
            setsockopt(s->server_fd, SOL_SOCKET, SO_LINGER, &abort_now, sizeof(abort_now));
    }
    close(s->client_fd);
    if (s->server_fd >= 0)
        close(s->server_fd);
    s->client_fd = s->server_fd = -1;
    session_release_backend(s);
    s->pool->active--;

    /* off the live list; freed by the proxy's reaper after the current callbacks */
    lb_list_remove(&s->link);
    lb_reaper_defer(&proxy->reaper, &s->reap, session_free);
    lb_proxy_session_finished(proxy);
}

/* Ends the session with an RST to both peers (one of them already reset). */
static void session_abort_reset(struct lb_session *s, const char *why)
{
    s->reset = true;
    session_finalize(s, why);
}

void lb_session_abort(struct lb_session *s)
{
    session_finalize(s, "shutdown grace period over");
}

void lb_session_abort_drained(struct lb_session *s)
{
    session_finalize(s, "drain timeout");
}

struct lb_session *lb_session_oldest_of(struct lb_backend *b)
{
    struct lb_list *last = lb_list_last(&b->sessions);

    return last ? lb_list_entry(last, struct lb_session, b_link) : NULL;
}

static void session_free(struct lb_reap *r)
{
    struct lb_session *s = lb_container_of(r, struct lb_session, reap);

    free(s->up.pending);
    free(s->down.pending);
    free(s);
}
