/*
 * One admin API connection: a socket, or TLS over it, carrying one nghttp2
 * server session (admin_h2.c), all on the server's loop.
 *
 * Reading: conn_read() feeds socket bytes to nghttp2_session_mem_recv(),
 * whose callbacks run the HTTP/2 layer; then admin_conn_flush() moves
 * nghttp2's output to the socket, gathered into writes of up to 32 KiB
 * (one TLS record or two) in a bounded buffer.  nghttp2 must not be
 * re-entered from its own callbacks, so code that queues output while one
 * is running only marks the connection (admin_conn_kick()), and the flush
 * after mem_recv() sends it.
 *
 * TLS: with a certificate, each connection first runs a non-blocking
 * OpenSSL handshake (ALPN h2) on the same watchers, bounded by the
 * handshake timeout; nghttp2's output (our SETTINGS) waits for it.  Then
 * conn_recv()/conn_send() go through SSL_read()/SSL_write(), whose
 * WANT_READ/WANT_WRITE turn into the watcher the operation waits for.  A
 * first byte that cannot start a TLS handshake (plain HTTP/2, HTTP/1,
 * noise) is recognised before OpenSSL sees it: one log line, then close.
 *
 * Timers: one per connection.  Until a first request header block, it is
 * the first-request deadline counted from accept (the TLS handshake's own,
 * shorter one included); then the idle timeout, which open calls (a long
 * watch, a drain wait) keep from running out.
 *
 * Lifetime: a closing connection leaves the server's open list at once
 * and is freed by the server's reaper, after the loop's callbacks have
 * returned; its calls are detached (and their cancel hooks run) from
 * there too, never from inside a send on the same call.
 */
#include "admin_conn.h"
#include "admin_call_int.h"
#include "admin_h2.h"
#include "admin_server_int.h"
#include "lb_log.h"

#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LOG_SUB        ADMIN_LOG_SUB
#define CONN_WRITE_MAX (1024 * 1024) /* nghttp2 output waiting for the socket */
#define READ_CHUNK     16384
#define WRITE_GATHER   32768 /* nghttp2 output gathered into one write (one TLS record or two) */

/* ---- closing ---- */

void admin_conn_close(struct admin_conn *conn, const char *reason)
{
    struct ev_loop *loop = conn->server->loop;

    if (conn->dead)
        return;
    conn->dead = true;
    if (reason) {
        char detail[200];

        LB_WARN(
            LOG_SUB, "msg=\"admin connection closed: %s\" peer=%s detail=%s", reason, conn->peer,
            lb_log_quote(detail, sizeof(detail), conn->proto_error[0] ? conn->proto_error : "-"));
    } else {
        LB_DEBUG(LOG_SUB, "msg=\"admin connection closed\" peer=%s", conn->peer);
    }
    ev_io_stop(loop, &conn->read_watcher);
    ev_io_stop(loop, &conn->write_watcher);
    ev_timer_stop(loop, &conn->idle_timer);
    admin_server_conn_closed(conn->server, conn);
}

void admin_conn_destroy(struct admin_conn *conn)
{
    struct lb_list *first;

    while ((first = lb_list_first(&conn->calls)))
        admin_call_detach(lb_list_entry(first, struct lb_admin_call, conn_link));
    ev_io_stop(conn->server->loop, &conn->read_watcher);
    ev_io_stop(conn->server->loop, &conn->write_watcher);
    ev_timer_stop(conn->server->loop, &conn->idle_timer);
    nghttp2_session_del(conn->session);
    if (conn->ssl) {
        /* close_notify, best effort: the socket is non-blocking. */
        ERR_clear_error();
        if (!conn->handshaking && !conn->tls_failed)
            SSL_shutdown(conn->ssl);
        SSL_free(conn->ssl);
        ERR_clear_error();
    }
    if (conn->fd >= 0)
        close(conn->fd);
    lb_buf_free(&conn->wbuf);
    free(conn);
}

/* Flushes unless an nghttp2 callback is running; conn_read() flushes after mem_recv. */
void admin_conn_kick(struct admin_conn *conn)
{
    if (conn && !conn->dead && conn->in_nghttp2 == 0)
        admin_conn_flush(conn);
}

void admin_conn_goaway(struct admin_conn *conn)
{
    if (conn->dead)
        return;
    nghttp2_session_terminate_session(conn->session, NGHTTP2_NO_ERROR);
    admin_conn_flush(conn);
}

void admin_conn_goaway_graceful(struct admin_conn *conn)
{
    if (conn->dead)
        return;
    nghttp2_submit_goaway(conn->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(conn->session), NGHTTP2_NO_ERROR,
                          NULL, 0);
    admin_conn_flush(conn);
}

void admin_conn_request_started(struct admin_conn *conn)
{
    struct ev_loop *loop = conn->server->loop;

    if (conn->got_request)
        return;
    /* The first-request deadline is met: from now on the idle timeout applies. */
    conn->got_request = true;
    conn->last_activity = ev_now(loop);
    conn->idle_timer.repeat = (ev_tstamp)conn->server->limits.idle_timeout_ms / 1000.0;
    ev_timer_again(loop, &conn->idle_timer);
}

/* ---- transport: the socket, or TLS over it ---- */

/* Keeps OpenSSL's first complaint for the close log line; empties its error queue. */
static void conn_tls_error(struct admin_conn *conn)
{
    unsigned long e = ERR_get_error();

    conn->tls_failed = true;
    if (conn->alpn_refused && !conn->proto_error[0])
        snprintf(conn->proto_error, sizeof(conn->proto_error),
                 "the client does not offer ALPN h2 (gRPC needs HTTP/2)");
    if (e && !conn->proto_error[0]) {
        const char *reason = ERR_reason_error_string(e);

        if (reason)
            snprintf(conn->proto_error, sizeof(conn->proto_error), "%s", reason);
        else
            ERR_error_string_n(e, conn->proto_error, sizeof(conn->proto_error));
    }
    ERR_clear_error();
}

/*
 * Reads what the peer sent.  Returns the byte count, 0 at the end of the
 * stream, -EAGAIN when there is nothing now (TLS may have armed the write
 * watcher it needs first), or another negative errno (-EPROTO: TLS error,
 * described in conn->proto_error).
 */
static ssize_t conn_recv(struct admin_conn *conn, uint8_t *buf, size_t len)
{
    struct ev_loop *loop = conn->server->loop;
    int n, saved;

    if (!conn->ssl) {
        ssize_t r = recv(conn->fd, buf, len, 0);

        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return -EAGAIN;
        return r < 0 ? -errno : r;
    }
    ERR_clear_error();
    n = SSL_read(conn->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    saved = errno;
    if (n > 0)
        return n;
    switch (SSL_get_error(conn->ssl, n)) {
    case SSL_ERROR_WANT_READ:
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        /* A TLS message of ours must go out first (a key update). */
        conn->read_wants_write = true;
        ev_io_stop(loop, &conn->read_watcher);
        ev_io_start(loop, &conn->write_watcher);
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        conn->tls_failed = true;
        ERR_clear_error();
        return saved ? -saved : 0;
    default:
        conn_tls_error(conn);
        return -EPROTO;
    }
}

/*
 * Writes up to `len` (> 0) bytes.  Returns the count written, -EAGAIN with
 * the watcher the write waits for armed, -EINTR (try again), or another
 * negative errno (-EPROTO: TLS error, described in conn->proto_error).
 */
static ssize_t conn_send(struct admin_conn *conn, const uint8_t *buf, size_t len)
{
    struct ev_loop *loop = conn->server->loop;
    int n, saved;

    if (!conn->ssl) {
        ssize_t r = send(conn->fd, buf, len, MSG_NOSIGNAL);

        if (r >= 0)
            return r;
        if (errno == EINTR)
            return -EINTR;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            ev_io_start(loop, &conn->write_watcher);
            return -EAGAIN;
        }
        return -errno;
    }
    /* SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER: wbuf may move between retries. */
    ERR_clear_error();
    n = SSL_write(conn->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    saved = errno;
    if (n > 0)
        return n;
    switch (SSL_get_error(conn->ssl, n)) {
    case SSL_ERROR_WANT_WRITE:
        ev_io_start(loop, &conn->write_watcher);
        return -EAGAIN;
    case SSL_ERROR_WANT_READ:
        /* The read watcher is always on, and conn_read() flushes. */
        if (!conn->read_wants_write)
            ev_io_stop(loop, &conn->write_watcher);
        return -EAGAIN;
    case SSL_ERROR_SYSCALL:
        conn->tls_failed = true;
        ERR_clear_error();
        return saved ? -saved : -EPIPE;
    default:
        conn_tls_error(conn);
        return -EPROTO;
    }
}

/*
 * Moves nghttp2's output to the socket.  Frames are gathered first (up to
 * WRITE_GATHER bytes), so a DATA frame's 9-byte header does not go out as
 * a segment (or a TLS record) of its own.  Nothing is appended while a
 * write is pending, so a retried SSL_write() sees the same bytes.
 */
void admin_conn_flush(struct admin_conn *conn)
{
    struct ev_loop *loop = conn->server->loop;

    while (!conn->dead && !conn->handshaking) {
        ssize_t n;

        if (conn->woff == conn->wbuf.len) {
            lb_buf_reset(&conn->wbuf);
            conn->woff = 0;
            while (conn->wbuf.len < WRITE_GATHER) {
                const uint8_t *data;

                conn->in_nghttp2++;
                n = nghttp2_session_mem_send(conn->session, &data);
                conn->in_nghttp2--;
                if (n < 0) {
                    admin_conn_close(conn, nghttp2_strerror((int)n));
                    return;
                }
                if (n == 0)
                    break;
                /* data is valid until the next mem_send: copy it now */
                if (lb_buf_append(&conn->wbuf, data, (size_t)n) < 0) {
                    admin_conn_close(conn, "output buffer limit reached");
                    return;
                }
            }
            if (conn->wbuf.len == 0)
                break;
        }
        n = conn_send(conn, (const uint8_t *)conn->wbuf.data + conn->woff,
                      conn->wbuf.len - conn->woff);
        if (n == -EINTR)
            continue;
        if (n == -EAGAIN)
            return;
        if (n < 0) {
            if (n == -EPIPE || n == -ECONNRESET)
                admin_conn_close(conn, NULL);
            else
                admin_conn_close(conn, n == -EPROTO ? "TLS error" : strerror((int)-n));
            return;
        }
        conn->woff += (size_t)n;
    }
    if (conn->dead || conn->handshaking)
        return;
    if (!conn->read_wants_write)
        ev_io_stop(loop, &conn->write_watcher);
    if (!nghttp2_session_want_read(conn->session) && !nghttp2_session_want_write(conn->session))
        admin_conn_close(conn, conn->proto_error[0] ? "HTTP/2 protocol error" : NULL);
}

/* Feeds what the peer sent to nghttp2, then flushes what it answers. */
static void conn_read(struct admin_conn *conn)
{
    uint8_t buf[READ_CHUNK];

    do {
        ssize_t n = conn_recv(conn, buf, sizeof(buf)), rv;

        if (n == -EAGAIN)
            break;
        if (n <= 0) {
            admin_conn_close(conn, n == -EPROTO                ? "TLS error"
                                   : n < 0 && n != -ECONNRESET ? strerror((int)-n)
                                                               : NULL);
            return;
        }
        conn->last_activity = ev_now(conn->server->loop);
        conn->in_nghttp2++;
        rv = nghttp2_session_mem_recv(conn->session, buf, (size_t)n);
        conn->in_nghttp2--;
        if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
            admin_conn_close(conn, conn->ssl
                                       ? "not an HTTP/2 client (expected gRPC)"
                                       : "not an HTTP/2 client (expected h2c prior knowledge, "
                                         "gRPC)");
            return;
        }
        if (rv < 0) {
            if (!conn->proto_error[0])
                snprintf(conn->proto_error, sizeof(conn->proto_error), "%s",
                         nghttp2_strerror((int)rv));
            admin_conn_close(conn, "HTTP/2 protocol error");
            return;
        }
        /* TLS may hold bytes (processed or not) that no socket event will announce. */
    } while (conn->ssl && !conn->dead && SSL_has_pending(conn->ssl));
    admin_conn_flush(conn);
}

/*
 * Says what a first byte that cannot start a TLS handshake most likely is:
 * the usual case is a cleartext client pointed at the TLS port.
 */
static const char *describe_not_tls(const uint8_t *p, size_t n)
{
    static const char preface[] = "PRI * HTTP/2.0";
    size_t i = 0;

    if (n >= 3 && memcmp(p, preface, n < sizeof(preface) - 1 ? n : sizeof(preface) - 1) == 0)
        return "cleartext HTTP/2 (h2c) client on the TLS admin port (lbctl: pass --admin-ca)";
    while (i < n && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    if (i >= 3 && i < n && p[i] == ' ')
        return "cleartext HTTP/1 request on the TLS admin port";
    return "the first bytes are not a TLS handshake";
}

/* Runs the TLS handshake as far as the socket allows. */
static void conn_handshake(struct admin_conn *conn)
{
    struct ev_loop *loop = conn->server->loop;
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    int rc;

    if (!conn->hello_checked) {
        uint8_t first[16];
        ssize_t n = recv(conn->fd, first, sizeof(first), MSG_PEEK);

        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            conn->tls_failed = true; /* connected and left: a port probe */
            admin_conn_close(conn, NULL);
            return;
        }
        if (first[0] != 0x16) { /* TLS record type "handshake" */
            conn->tls_failed = true;
            snprintf(conn->proto_error, sizeof(conn->proto_error), "%s",
                     describe_not_tls(first, (size_t)n));
            admin_conn_close(conn, "not a TLS client");
            return;
        }
        conn->hello_checked = true;
    }
    ERR_clear_error();
    rc = SSL_do_handshake(conn->ssl);
    if (rc != 1) {
        switch (SSL_get_error(conn->ssl, rc)) {
        case SSL_ERROR_WANT_READ:
            ev_io_stop(loop, &conn->write_watcher);
            return;
        case SSL_ERROR_WANT_WRITE:
            ev_io_start(loop, &conn->write_watcher);
            return;
        case SSL_ERROR_SYSCALL:
        case SSL_ERROR_ZERO_RETURN:
            if (ERR_peek_error() == 0) {
                conn->tls_failed = true;
                admin_conn_close(conn, NULL); /* the client went away */
                return;
            }
            /* fall through */
        default:
            conn_tls_error(conn);
            admin_conn_close(conn, "TLS handshake failed");
            return;
        }
    }
    SSL_get0_alpn_selected(conn->ssl, &alpn, &alpn_len);
    LB_DEBUG(LOG_SUB, "msg=\"admin TLS handshake done\" peer=%s version=%s alpn=%.*s", conn->peer,
             SSL_get_version(conn->ssl), alpn_len ? (int)alpn_len : 1,
             alpn_len ? (const char *)alpn : "-");
    conn->handshaking = false;
    ev_io_stop(loop, &conn->write_watcher);
    conn->last_activity = ev_now(loop);
    /* The first-request deadline, counted from accept, still runs. */
    conn_read(conn); /* the client's first bytes may be here already; sends our SETTINGS */
}

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct admin_conn *conn = w->data;

    if (conn->handshaking)
        conn_handshake(conn);
    else
        conn_read(conn);
}

static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct admin_conn *conn = w->data;

    if (conn->handshaking) {
        conn_handshake(conn);
        return;
    }
    if (conn->read_wants_write) {
        conn->read_wants_write = false;
        ev_io_start(loop, &conn->read_watcher);
        conn_read(conn); /* flushes too */
        return;
    }
    admin_conn_flush(conn);
}

/* When a connection without a first request must be closed. */
static ev_tstamp conn_first_deadline(const struct admin_conn *conn)
{
    const struct lb_admin_limits *l = &conn->server->limits;
    ev_tstamp at = conn->accepted + (ev_tstamp)l->first_request_timeout_ms / 1000.0;

    if (conn->handshaking && l->handshake_timeout_ms < l->first_request_timeout_ms)
        at = conn->accepted + (ev_tstamp)l->handshake_timeout_ms / 1000.0;
    return at;
}

static void conn_idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct admin_conn *conn = w->data;
    struct lb_admin_server *s = conn->server;
    ev_tstamp idle = (ev_tstamp)s->limits.idle_timeout_ms / 1000.0;
    ev_tstamp now = ev_now(loop);

    if (!conn->got_request) {
        ev_tstamp at = conn_first_deadline(conn);

        if (now < at) {
            w->repeat = at - now;
            ev_timer_again(loop, w);
            return;
        }
        /* Silent, slow, or stuck in the TLS handshake: one summary line per second. */
        LB_DEBUG(LOG_SUB, "msg=\"admin connection closed: no request in time\" peer=%s tls=%s",
                 conn->peer,
                 conn->handshaking ? "handshaking"
                 : conn->ssl       ? "yes"
                                   : "no");
        if (conn->handshaking)
            conn->tls_failed = true; /* no close_notify: there is no session */
        s->conns_no_request++;
        admin_server_note(s, ADMIN_NOTE_NO_REQUEST);
        admin_conn_close(conn, NULL);
        return;
    }
    if (conn->n_calls > 0)
        conn->last_activity = now; /* a long watch or drain wait is not idleness */
    if (now - conn->last_activity < idle) {
        w->repeat = conn->last_activity + idle - now;
        ev_timer_again(loop, w);
        return;
    }
    LB_DEBUG(LOG_SUB, "msg=\"closing idle admin connection\" peer=%s", conn->peer);
    admin_conn_goaway(conn);
    if (!conn->dead)
        admin_conn_close(conn, NULL);
}

int admin_conn_new(struct lb_admin_server *s, int fd, const char *peer,
                   const struct lb_conn_peer *addr)
{
    struct admin_conn *conn;
    int rc;

    conn = calloc(1, sizeof(*conn));
    if (!conn)
        return -ENOMEM;
    conn->server = s;
    lb_list_init(&conn->calls);
    lb_list_init(&conn->link);
    conn->fd = fd;
    snprintf(conn->peer, sizeof(conn->peer), "%s", peer);
    lb_buf_init(&conn->wbuf, CONN_WRITE_MAX);
    rc = admin_h2_session_new(conn, &conn->session);
    if (rc < 0)
        goto out;
    if (s->tls) {
        conn->ssl = SSL_new(s->tls);
        if (!conn->ssl || SSL_set_fd(conn->ssl, fd) != 1) {
            ERR_clear_error();
            rc = -ENOMEM;
            goto out;
        }
        SSL_set_app_data(conn->ssl, conn);
        SSL_set_accept_state(conn->ssl);
        conn->handshaking = true;
    }
    /* TCP_NODELAY comes from the listener. */
    ev_io_init(&conn->read_watcher, conn_read_cb, fd, EV_READ);
    ev_io_init(&conn->write_watcher, conn_write_cb, fd, EV_WRITE);
    conn->read_watcher.data = conn->write_watcher.data = conn;
    ev_init(&conn->idle_timer, conn_idle_cb);
    conn->accepted = conn->last_activity = ev_now(s->loop);
    conn->idle_timer.repeat = conn_first_deadline(conn) - conn->accepted;
    conn->idle_timer.data = conn;
    ev_io_start(s->loop, &conn->read_watcher);
    ev_timer_again(s->loop, &conn->idle_timer);
    admin_server_conn_opened(s, conn, addr);
    LB_DEBUG(LOG_SUB, "msg=\"admin connection\" peer=%s tls=%s", conn->peer,
             conn->ssl ? "yes" : "no");
    admin_conn_flush(conn); /* our SETTINGS go first (after the TLS handshake) */
    return 0;
out:
    if (conn->ssl)
        SSL_free(conn->ssl);
    if (conn->session)
        nghttp2_session_del(conn->session);
    lb_buf_free(&conn->wbuf);
    free(conn);
    return rc;
}
