/*
 * The component tests' raw HTTP/2 client (see h2_client.h): nghttp2's
 * client session over a blocking socket, or OpenSSL over it.  Reads poll
 * the socket for 20 ms at a time so that a deadline is always honoured.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "h2_client.h"
#include "lb_grpc_frame.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

double h2_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int h2_tcp_connect(const char *from, int port, int rcvbuf)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    if (from) {
        struct sockaddr_in src = {.sin_family = AF_INET};

        assert_int_equal(inet_pton(AF_INET, from, &src.sin_addr), 1);
        assert_int_equal(bind(fd, (struct sockaddr *)&src, sizeof(src)), 0);
    }
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

double h2_closed_after(int fd, double limit)
{
    double start = h2_now(), end = start + limit;

    do {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        uint8_t buf[4096];

        if (poll(&pfd, 1, 10) > 0 && recv(fd, buf, sizeof(buf), 0) <= 0)
            return h2_now() - start;
    } while (h2_now() < end);
    return -1;
}

/* ---- nghttp2 callbacks ---- */

static ssize_t send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    struct h2 *c = ud;
    ssize_t n;

    if (c->ssl) {
        int w = SSL_write(c->ssl, data, (int)len);

        return w > 0 ? w : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    n = send(c->fd, data, len, MSG_NOSIGNAL);
    return n < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : n;
}

static int header_cb(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    struct h2 *c = ud;

    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        c->http_status = atoi((const char *)value);
    } else if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0) {
        c->grpc_status = atoi((const char *)value);
        if (valuelen == 1 && value[0] == '0')
            c->ok++;
    } else if (namelen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        lb_grpc_percent_decode((const char *)value, valuelen, c->grpc_message,
                               sizeof(c->grpc_message));
    }
    return 0;
}

static int data_cb(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    ((struct h2 *)ud)->data_bytes += len;
    return 0;
}

static int close_cb(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct h2 *c = ud;

    c->open--;
    if (id == c->stream) {
        c->closed = true;
        c->close_code = code;
    }
    return 0;
}

static ssize_t body_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
    struct h2_body *b = src->ptr;
    size_t n = b->len - b->off;

    if (n > len)
        n = len;
    if (n == 0 && b->stall)
        return NGHTTP2_ERR_DEFERRED;
    memcpy(buf, b->data + b->off, n);
    b->off += n;
    if (b->off == b->len && !b->stall)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* ---- connections ---- */

static void h2_init(struct h2 *c, int fd)
{
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->grpc_status = -1;
}

void h2_start(struct h2 *c, uint32_t window)
{
    nghttp2_session_callbacks *cb;
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window}};

    assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_send_callback(cb, send_cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, header_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, data_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, close_cb);
    assert_int_equal(nghttp2_session_client_new(&c->session, cb, c), 0);
    nghttp2_session_callbacks_del(cb);
    assert_int_equal(nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 1), 0);
    if (window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
        nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, (int32_t)window);
}

void h2_open(struct h2 *c, int port, uint32_t window)
{
    h2_init(c, h2_tcp_connect(NULL, port, 0));
    h2_start(c, window);
}

bool h2_open_tls(struct h2 *c, int port, const char *ca, const char *alpn, size_t alpn_len,
                 int rcvbuf)
{
    h2_init(c, h2_tcp_connect(NULL, port, rcvbuf));
    c->ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(c->ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(c->ctx, ca, NULL), 1);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    assert_int_equal(
        SSL_CTX_set_alpn_protos(c->ctx, (const unsigned char *)alpn, (unsigned)alpn_len), 0);
    c->ssl = SSL_new(c->ctx);
    assert_non_null(c->ssl);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set1_host(c->ssl, "127.0.0.1");
    if (SSL_connect(c->ssl) != 1) {
        ERR_clear_error();
        return false;
    }
    return true;
}

void h2_close(struct h2 *c)
{
    if (c->session)
        nghttp2_session_del(c->session);
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    close(c->fd);
    ERR_clear_error();
    c->session = NULL;
    c->ssl = NULL;
    c->ctx = NULL;
    c->fd = -1;
}

/* ---- requests ---- */

void h2_request(struct h2 *c, const char *path, const char *content_type, const char *bearer,
                const void *body, size_t len)
{
    const char *scheme = c->ssl ? "https" : "http";
    nghttp2_nv nva[] = {
        {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
        {(uint8_t *)":scheme", (uint8_t *)scheme, 7, strlen(scheme), 0},
        {(uint8_t *)":authority", (uint8_t *)"lbd", 10, 3, 0},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
        {(uint8_t *)"content-type", (uint8_t *)content_type, 12, strlen(content_type), 0},
        {(uint8_t *)"te", (uint8_t *)"trailers", 2, 8, 0},
        {(uint8_t *)"authorization", (uint8_t *)bearer, 13, bearer ? strlen(bearer) : 0, 0},
    };
    nghttp2_data_provider dp = {.read_callback = body_cb};
    struct h2_body *b;

    assert_true(c->n_requests < H2_MAX_STREAMS);
    b = &c->bodies[c->n_requests++];
    *b = (struct h2_body){.data = body, .len = len, .stall = c->stall};
    dp.source.ptr = b;
    c->closed = false;
    c->close_code = 0;
    c->grpc_status = -1;
    c->grpc_message[0] = '\0';
    c->http_status = 0;
    c->stream =
        nghttp2_submit_request(c->session, NULL, nva, bearer ? 7 : 6, body ? &dp : NULL, NULL);
    assert_true(c->stream > 0);
    c->open++;
    assert_int_equal(nghttp2_session_send(c->session), 0);
}

/* Reads what arrives within 20 ms and feeds it to nghttp2; false when the connection ended. */
static bool h2_read(struct h2 *c)
{
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    uint8_t buf[16384];
    ssize_t n;

    if (nghttp2_session_send(c->session) != 0)
        return false;
    if (!(c->ssl && SSL_pending(c->ssl) > 0) && poll(&pfd, 1, 20) <= 0)
        return true;
    if (c->ssl) {
        int r = SSL_read(c->ssl, buf, sizeof(buf));

        n = r > 0 ? r : 0;
    } else {
        n = recv(c->fd, buf, sizeof(buf), 0);
    }
    if (n <= 0)
        return false;
    assert_true(nghttp2_session_mem_recv(c->session, buf, (size_t)n) >= 0);
    return true;
}

void h2_pump_once(struct h2 *c)
{
    h2_read(c);
    nghttp2_session_send(c->session);
}

bool h2_pump_until(struct h2 *c, bool (*done)(struct h2 *c, void *arg), void *arg, double seconds)
{
    double end = h2_now() + seconds;
    bool ok;

    while (!(ok = done(c, arg)) && h2_now() < end && h2_read(c))
        ;
    nghttp2_session_send(c->session);
    return ok || done(c, arg);
}

static bool all_closed(struct h2 *c, void *arg)
{
    return c->open == 0;
}

void h2_pump(struct h2 *c, double seconds)
{
    h2_pump_until(c, all_closed, NULL, seconds);
}
