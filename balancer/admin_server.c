/*
 * The admin API server: the listening socket, admission of connections,
 * TLS context and token set-up, pressure notes, the reaper and metrics.
 * Connections (admin_conn.c), HTTP/2 (admin_h2.c) and calls (admin_call.c)
 * are the layers below; what the methods do is the method table's.
 *
 * Admission (conn_guard.h): connections at once, in all and per peer
 * address.  When a cap is reached the oldest connection that never made
 * an authorized call is shed to make room, and a newcomer is refused only
 * when connections with such calls hold every slot.  Accepting uses
 * common/lb_listen.c, as the pools' listeners do, with its back-off after
 * EMFILE and the like.
 *
 * Bounds, and where they are kept: a first-request deadline from accept,
 * TLS handshake included, and an idle timeout (admin_conn.c); max
 * concurrent streams, header bytes per stream, and request bytes held per
 * connection and in all, charged by declared length before they arrive
 * (admin_h2.c); a deadline for a request to arrive whole, request and
 * unary response size, a per-call queue for streaming responses, and a
 * linger timer that resets a finished stream whose client stopped reading
 * (admin_call.c); a bounded socket write buffer (admin_conn.c).  Pressure
 * from clients (refusals, shedding, silent connections, stalled requests)
 * is logged here at most once a second per kind, with a count, and
 * counted for /metrics.
 *
 * Lifetimes: connections and calls are never freed where they fail.  A
 * closing connection goes on a list and a call whose last reference is
 * dropped is queued too; the server's reaper (lb_reaper.h) frees both
 * after the loop's callbacks have returned.
 */
#include "admin_server.h"
#include "admin_call_int.h"
#include "admin_conn.h"
#include "admin_server_int.h"
#include "lb_addr.h"
#include "lb_buf.h"
#include "lb_error.h"
#include "lb_file.h"
#include "lb_grpc_frame.h"
#include "lb_log.h"
#include "lb_metrics_text.h"
#include "lb_util.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOG_SUB          ADMIN_LOG_SUB
#define ACCEPT_BACKOFF_S 1.0 /* after EMFILE and friends */
#define NOTE_INTERVAL_S  1.0 /* at most one line per second per kind of pressure */
/*
 * Four times the connection cap: a burst queued while lbd was busy goes
 * through admission (which sheds silent connections for the operator's)
 * instead of having its SYNs dropped, the operator's among them, to be
 * retried a second later.
 */
#define LISTEN_BACKLOG 256

void lb_admin_limits_defaults(struct lb_admin_limits *l)
{
    l->max_connections = 64;
    l->max_per_peer = 16;
    l->max_streams = 32;
    l->idle_timeout_ms = 5 * 60 * 1000;
    l->max_message = LB_GRPC_MAX_MESSAGE_DEFAULT;
    l->stream_queue_max = 1024 * 1024;
    l->max_header_bytes = 16 * 1024;
    l->handshake_timeout_ms = 5 * 1000;
    l->first_request_timeout_ms = 5 * 1000;
    l->request_timeout_ms = 10 * 1000;
    l->conn_request_budget = LB_GRPC_MAX_MESSAGE_DEFAULT;
    l->server_request_budget = 4 * (size_t)LB_GRPC_MAX_MESSAGE_DEFAULT;
    l->conn_request_reserve = 64 * 1024;
}

/* ---- pressure: one line per second per kind, with a count ---- */

static void server_note_log(const struct lb_admin_server *s, enum admin_note what,
                            unsigned long count)
{
    const struct lb_admin_limits *l = &s->limits;

    switch (what) {
    case ADMIN_NOTE_REFUSED:
        LB_WARN(LOG_SUB,
                "msg=\"admin connections refused: connections with authorized calls hold "
                "every slot\" count=%lu max_connections=%u max_per_peer=%u",
                count, l->max_connections, l->max_per_peer);
        break;
    case ADMIN_NOTE_SHED:
        LB_WARN(LOG_SUB,
                "msg=\"admin connections closed to make room for new ones (without an "
                "authorized call, from the address holding the most first)\" count=%lu "
                "max_connections=%u "
                "max_per_peer=%u",
                count, l->max_connections, l->max_per_peer);
        break;
    case ADMIN_NOTE_NO_REQUEST:
        LB_WARN(LOG_SUB,
                "msg=\"admin connections closed: no request within the first-request "
                "deadline\" count=%lu deadline_ms=%lld",
                count, (long long)l->first_request_timeout_ms);
        break;
    case ADMIN_NOTE_REQUEST_TIMEOUT:
        LB_WARN(LOG_SUB,
                "msg=\"admin calls reset: request not received in time\" count=%lu "
                "deadline_ms=%lld",
                count, (long long)l->request_timeout_ms);
        break;
    case ADMIN_NOTE_MAX:
        break;
    }
}

static void server_note_arm(struct lb_admin_server *s)
{
    double next = 0;
    bool any = false;

    for (int i = 0; i < ADMIN_NOTE_MAX; i++) {
        if (s->notes[i].held && (!any || lb_rate_log_next(&s->notes[i]) < next)) {
            next = lb_rate_log_next(&s->notes[i]);
            any = true;
        }
    }
    ev_timer_stop(s->loop, &s->note_timer);
    if (any) {
        double after = next - ev_now(s->loop);

        ev_timer_set(&s->note_timer, after > 0.001 ? after : 0.001, 0.);
        ev_timer_start(s->loop, &s->note_timer);
    }
}

void admin_server_note(struct lb_admin_server *s, enum admin_note what)
{
    unsigned long n = lb_rate_log_hit(&s->notes[what], ev_now(s->loop));

    if (n)
        server_note_log(s, what, n);
    else if (!ev_is_active(&s->note_timer))
        server_note_arm(s);
}

static void server_note_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_admin_server *s = w->data;

    for (int i = 0; i < ADMIN_NOTE_MAX; i++) {
        unsigned long n = lb_rate_log_flush(&s->notes[i], ev_now(loop));

        if (n)
            server_note_log(s, (enum admin_note)i, n);
    }
    server_note_arm(s);
}

/* ---- connections' and calls' lifetimes ---- */

static void server_conn_reap(struct lb_reap *r)
{
    admin_conn_destroy(lb_container_of(r, struct admin_conn, reap));
}

void admin_server_conn_opened(struct lb_admin_server *s, struct admin_conn *conn,
                              const struct lb_conn_peer *addr)
{
    lb_list_insert_head(&s->conns, &conn->link);
    s->n_conns++;
    lb_conn_guard_add(&s->guard, &conn->guard, addr);
}

void admin_server_conn_closed(struct lb_admin_server *s, struct admin_conn *conn)
{
    lb_conn_guard_remove(&s->guard, &conn->guard);
    lb_list_remove(&conn->link);
    s->n_conns--;
    lb_reaper_defer(&s->reaper, &conn->reap, server_conn_reap);
}

/* ---- listener ---- */

static void server_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_admin_server *s = w->data;

    lb_conn_guard_next_batch(&s->guard);
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len;
        struct lb_conn_peer addr;
        struct lb_conn_guard_entry *victim;
        char peer[64];
        int fd = lb_listen_accept(s->listener.fd, &ss, &len);

        switch (lb_accept_backoff_check(&s->accept_backoff, fd)) {
        case LB_ACCEPT_GO:
            if (fd == -EAGAIN)
                return;
            break;
        case LB_ACCEPT_PAUSED_NEW:
            LB_WARN(LOG_SUB, "msg=\"admin accept failed; pausing\" error=\"%s\" pause_s=%.0f",
                    strerror(-fd), ACCEPT_BACKOFF_S);
            return;
        case LB_ACCEPT_PAUSED:
            return;
        case LB_ACCEPT_FAILED:
            LB_WARN(LOG_SUB, "msg=\"admin accept failed\" error=\"%s\"", strerror(-fd));
            return;
        }
        lb_addr_format((const struct sockaddr *)&ss, peer, sizeof(peer));
        lb_conn_peer_from_sockaddr(&addr, (const struct sockaddr *)&ss);
        switch (lb_conn_guard_admit(&s->guard, &addr, &victim)) {
        case LB_CONN_ADMIT:
            break;
        case LB_CONN_SHED: {
            struct admin_conn *old = lb_container_of(victim, struct admin_conn, guard);

            LB_DEBUG(LOG_SUB, "msg=\"admin connection closed to make room\" peer=%s for=%s",
                     old->peer, peer);
            s->conns_shed++;
            admin_server_note(s, ADMIN_NOTE_SHED);
            if (old->handshaking)
                old->tls_failed = true;
            admin_conn_close(old, NULL);
            break;
        }
        case LB_CONN_REFUSE_PEER:
        case LB_CONN_REFUSE_TOTAL:
            LB_DEBUG(LOG_SUB, "msg=\"admin connection refused\" peer=%s", peer);
            s->conns_refused++;
            admin_server_note(s, ADMIN_NOTE_REFUSED);
            close(fd);
            continue;
        }
        if (admin_conn_new(s, fd, peer, &addr) < 0) {
            LB_WARN(LOG_SUB, "msg=\"admin connection dropped: out of memory\" peer=%s", peer);
            close(fd);
        }
    }
}

/* Back-off hooks (lb_listen.h). */
static void server_accept_pause(void *ctx)
{
    struct lb_admin_server *s = ctx;

    ev_io_stop(s->loop, &s->accept_watcher);
}

static void server_accept_resume(void *ctx)
{
    struct lb_admin_server *s = ctx;

    ev_io_start(s->loop, &s->accept_watcher);
}

static const struct lb_accept_backoff_ops server_backoff_ops = {
    .pause = server_accept_pause,
    .resume = server_accept_resume,
};

/* ---- TLS and token set-up ---- */

static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char h2[] = "\x02h2";
    struct admin_conn *conn = SSL_get_app_data(ssl);

    if (SSL_select_next_proto((unsigned char **)out, outlen, h2, sizeof(h2) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        if (conn)
            conn->alpn_refused = true;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* Encrypted keys would make OpenSSL ask on the terminal: refuse them instead. */
static int no_password_cb(char *buf, int size, int rwflag, void *ud)
{
    return 0;
}

/* OpenSSL's last complaint, for an error sentence; empties its error queue. */
static const char *tls_reason(char *buf, size_t size)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;

    snprintf(buf, size, "%s", reason ? reason : "unknown error");
    ERR_clear_error();
    return buf;
}

/* Loads the certificate and key into a context that only speaks h2 over TLS 1.2+. */
/* A TLS context from o's files into *out (NULL when TLS is off).  Returns 0 or -errno. */
static int tls_context_new(const struct lb_admin_options *o, SSL_CTX **out, char **err)
{
    /* HTTP/2 forbids TLS 1.2 ciphers without forward secrecy or AEAD (RFC 7540, 9.2.2). */
    static const char ciphers12[] = "ECDHE+AESGCM:ECDHE+CHACHA20";
    char why[160];
    SSL_CTX *ctx;
    X509 *cert;
    bool mismatch = false;
    int rc = -EINVAL;

    if (!o->tls_cert_file && !o->tls_key_file)
        return 0;
    if (!o->tls_cert_file || !o->tls_key_file) {
        lb_error_set(err, -EINVAL,
                     "--admin-tls-cert and --admin-tls-key go together: give both to serve "
                     "the admin API over TLS");
        return -EINVAL;
    }
    if (lb_file_check_readable(o->tls_cert_file, "admin TLS certificate", err) < 0 ||
        lb_file_check_readable(o->tls_key_file, "admin TLS key", err) < 0)
        return -EINVAL;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ERR_clear_error();
        return -ENOMEM;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_num_tickets(ctx, 0); /* every lbctl call is a new connection anyway */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ctx, no_password_cb);
    if (SSL_CTX_set_cipher_list(ctx, ciphers12) != 1) {
        lb_error_set(err, -EINVAL, "admin TLS: cannot set the cipher list: %s",
                     tls_reason(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, o->tls_cert_file) != 1) {
        lb_error_set(err, -EINVAL,
                     "admin TLS certificate %s: not a usable PEM certificate chain (%s)",
                     o->tls_cert_file, tls_reason(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, o->tls_key_file, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();

        /* OpenSSL checks the key against the certificate already. */
        mismatch =
            ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
        if (!mismatch) {
            lb_error_set(err, -EINVAL,
                         "admin TLS key %s: not a usable unencrypted PEM private key (%s)",
                         o->tls_key_file, tls_reason(why, sizeof(why)));
            goto fail;
        }
    }
    if (mismatch || SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        lb_error_set(err, -EINVAL, "admin TLS key %s does not belong to the certificate %s",
                     o->tls_key_file, o->tls_cert_file);
        goto fail;
    }
    cert = SSL_CTX_get0_certificate(ctx);
    if (cert && X509_cmp_current_time(X509_get0_notAfter(cert)) < 0)
        LB_WARN(LOG_SUB,
                "msg=\"admin TLS certificate has expired; clients will refuse it\" "
                "file=%s",
                o->tls_cert_file);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
    *out = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

static int server_tls_init(struct lb_admin_server *s, const struct lb_admin_options *o, char **err)
{
    return tls_context_new(o, &s->tls, err);
}

int lb_admin_server_reload_token(struct lb_admin_server *s, const char *token_file, char **err)
{
    struct lb_admin_auth auth;
    int rc;

    if (!token_file)
        return 0;
    memset(&auth, 0, sizeof(auth));
    rc = lb_admin_auth_load(&auth, token_file, err);
    if (rc == 0) {
        s->auth = auth; /* calls from now on; connections keep nothing of the old one */
        if (auth.file_shared)
            LB_WARN(LOG_SUB,
                    "msg=\"the admin token file is readable by every user; chmod o-rwx it\" "
                    "file=%s",
                    token_file);
    }
    OPENSSL_cleanse(&auth, sizeof(auth));
    return rc;
}

int lb_admin_server_reload_tls(struct lb_admin_server *s, const struct lb_admin_options *o,
                               char **err)
{
    SSL_CTX *ctx = NULL;
    int rc;

    if (!s->tls)
        return 0;
    rc = tls_context_new(o, &ctx, err);
    if (rc < 0)
        return rc;
    /* Open connections hold a reference to the old context: they go on with it. */
    SSL_CTX_free(s->tls);
    s->tls = ctx;
    return 0;
}

/* Binds the listener; its errors name the setting and the address. */
static int server_listen(struct lb_admin_server *s, const struct lb_admin_options *o, char **err)
{
    char what[400];
    const struct lb_listen_options lo = {
        .what = what,
        .backlog = LISTEN_BACKLOG,
        .allow_port_zero = true,
        .nodelay = true, /* every frame we send is a whole answer or part of one */
    };

    snprintf(what, sizeof(what), "%s %s", o->listen_flag ? o->listen_flag : "admin address",
             o->listen);
    return lb_listen_open(o->listen, &lo, &s->listener, err);
}

int lb_admin_server_new(struct ev_loop *loop, const struct lb_admin_options *opts,
                        struct lb_admin_server **out, char **err)
{
    struct lb_admin_server *s;
    int rc;

    *out = NULL;
    *err = NULL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    lb_reaper_init(&s->reaper, loop);
    lb_list_init(&s->conns);
    lb_list_init(&s->calls);
    s->methods = opts->methods;
    s->n_methods = opts->n_methods;
    s->context = opts->context;
    s->listener.fd = -1;
    lb_admin_limits_defaults(&s->limits);
    lb_conn_guard_init(&s->guard, s->limits.max_connections, s->limits.max_per_peer);
    for (int i = 0; i < ADMIN_NOTE_MAX; i++)
        lb_rate_log_init(&s->notes[i], NOTE_INTERVAL_S);
    rc = opts->token_file ? lb_admin_auth_load(&s->auth, opts->token_file, err) : 0;
    if (rc == 0 && s->auth.file_shared)
        LB_WARN(LOG_SUB,
                "msg=\"the admin token file is readable by every user; chmod o-rwx it\" "
                "file=%s",
                opts->token_file);
    if (rc == 0)
        rc = server_tls_init(s, opts, err);
    if (rc == 0)
        rc = server_listen(s, opts, err);
    if (rc < 0) {
        SSL_CTX_free(s->tls);
        OPENSSL_cleanse(&s->auth, sizeof(s->auth));
        free(s);
        return rc;
    }
    snprintf(s->addr, sizeof(s->addr), "%s", opts->listen);
    ev_io_init(&s->accept_watcher, server_accept_cb, s->listener.fd, EV_READ);
    s->accept_watcher.data = s;
    lb_accept_backoff_init(&s->accept_backoff, loop, ACCEPT_BACKOFF_S, &server_backoff_ops, s);
    ev_init(&s->note_timer, server_note_timer_cb);
    s->note_timer.data = s;
    ev_io_start(loop, &s->accept_watcher);
    LB_INFO(LOG_SUB, "msg=\"admin API listening\" addr=%s tls=%s token=%s", s->addr,
            s->tls ? "on" : "off", s->auth.required ? "required" : "none");
    if (!lb_listen_is_loopback(&s->listener) && !s->auth.required)
        LB_WARN(LOG_SUB,
                "msg=\"admin API reachable beyond loopback without a token: anyone who "
                "reaches it can drain backends; see --admin-token-file\" addr=%s",
                s->addr);
    else if (!lb_listen_is_loopback(&s->listener) && !s->tls)
        LB_WARN(LOG_SUB,
                "msg=\"admin token travels in cleartext beyond loopback; serve the "
                "admin API over TLS (--admin-tls-cert, --admin-tls-key)\" addr=%s",
                s->addr);
    *out = s;
    return 0;
}

void lb_admin_server_set_limits(struct lb_admin_server *s, const struct lb_admin_limits *l)
{
    s->limits = *l;
    s->guard.max_total = l->max_connections;
    s->guard.max_per_peer = l->max_per_peer;
}

int lb_admin_server_render_metrics(const struct lb_admin_server *s, struct lb_buf *out)
{
    int rc =
        lb_metrics_family(out, "lbd_admin_connections", "gauge", "Admin API connections open now.");

    if (!rc)
        rc = lb_buf_printf(out, "lbd_admin_connections %u\n", s->n_conns);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_admin_connections_closed_total", "counter",
                               "Admin API connections refused at accept (refused), closed to "
                               "make room for a newcomer (shed) or closed without a request in "
                               "time (no_request).");
    if (!rc)
        rc = lb_buf_printf(out,
                           "lbd_admin_connections_closed_total{reason=\"refused\"} %llu\n"
                           "lbd_admin_connections_closed_total{reason=\"shed\"} %llu\n"
                           "lbd_admin_connections_closed_total{reason=\"no_request\"} %llu\n",
                           (unsigned long long)s->conns_refused, (unsigned long long)s->conns_shed,
                           (unsigned long long)s->conns_no_request);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_admin_calls_refused_total", "counter",
                               "Admin API calls ended before their handler: request not "
                               "received in time (request_timeout) or over the request memory "
                               "budget (request_budget).");
    if (!rc)
        rc = lb_buf_printf(out,
                           "lbd_admin_calls_refused_total{reason=\"request_timeout\"} %llu\n"
                           "lbd_admin_calls_refused_total{reason=\"request_budget\"} %llu\n",
                           (unsigned long long)s->calls_request_timeout,
                           (unsigned long long)s->calls_request_budget);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_admin_request_bytes", "gauge",
                               "Bytes held for admin API requests not yet complete.");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_admin_request_bytes %zu\n", s->request_bytes);
    return rc;
}

int lb_admin_server_port(const struct lb_admin_server *s)
{
    return lb_listen_port(&s->listener);
}

int lb_admin_server_listen_fd(const struct lb_admin_server *s)
{
    return s->listener.fd;
}

void lb_admin_server_stop_listening(struct lb_admin_server *s)
{
    ev_io_stop(s->loop, &s->accept_watcher);
    lb_accept_backoff_stop(&s->accept_backoff);
    lb_listen_close(&s->listener);
}

void lb_admin_server_hand_over(struct lb_admin_server *s)
{
    struct lb_list *pos, *tmp;

    lb_admin_server_stop_listening(s);
    lb_list_for_each_safe(pos, tmp, &s->conns)
    {
        struct admin_conn *conn = lb_list_entry(pos, struct admin_conn, link);
        struct lb_list *cpos, *ctmp;

        lb_list_for_each_safe(cpos, ctmp, &conn->calls)
        {
            struct lb_admin_call *c = lb_list_entry(cpos, struct lb_admin_call, conn_link);

            if (c->method && (c->method->flags & LB_ADMIN_METHOD_STREAMING) && !c->finished)
                admin_call_abort(c, LB_GRPC_UNAVAILABLE,
                                 "lbd handed this address over to a new process (upgrade): "
                                 "call again, the new one answers");
        }
        admin_conn_goaway_graceful(conn); /* may close it already */
    }
}

void lb_admin_server_free(struct lb_admin_server *s)
{
    struct lb_admin_call *call;
    struct lb_list *pos;

    if (!s)
        return;
    ev_io_stop(s->loop, &s->accept_watcher);
    lb_accept_backoff_stop(&s->accept_backoff);
    lb_listen_close(&s->listener);
    /*
     * Calls in flight get a status rather than a torn connection, then
     * GOAWAY; both best effort (a full socket buffer is not waited for).
     */
    lb_list_for_each(pos, &s->conns)
    {
        struct admin_conn *conn = lb_list_entry(pos, struct admin_conn, link);
        struct lb_list *cpos, *tmp;

        lb_list_for_each_safe(cpos, tmp, &conn->calls)
            admin_call_abort(lb_list_entry(cpos, struct lb_admin_call, conn_link),
                             LB_GRPC_UNAVAILABLE, "lbd is shutting down");
    }
    while ((pos = lb_list_first(&s->conns))) {
        struct admin_conn *conn = lb_list_entry(pos, struct admin_conn, link);

        admin_conn_flush(conn);
        admin_conn_goaway(conn); /* may close it already */
        admin_conn_close(conn, NULL);
    }
    lb_reaper_destroy(&s->reaper);
    /* Calls a handler still holds (an etcd write in flight) outlive us. */
    while ((pos = lb_list_first(&s->calls))) {
        call = lb_list_entry(pos, struct lb_admin_call, all_link);
        lb_list_remove(pos);
        call->server = NULL;
    }
    ev_timer_stop(s->loop, &s->note_timer);
    SSL_CTX_free(s->tls);
    OPENSSL_cleanse(&s->auth, sizeof(s->auth));
    free(s);
}
