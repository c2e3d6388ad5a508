/*
 * A raw, blocking HTTP/2 client for the admin API's component tests: what
 * lbctl's client never does (wrong content-types, truncated or stalled
 * bodies, closed flow-control windows, resets, many streams at once, ALPN
 * without h2, not reading for a while), over cleartext or TLS, plus the
 * plain socket helpers those tests share.
 *
 * One connection, any number of streams (up to H2_MAX_STREAMS requests);
 * the answer of the last request is kept (status, grpc-status and
 * -message, whether and how its stream closed), and counts over every
 * stream (streams open, grpc-status 0 seen, DATA bytes).  Test failures
 * are cmocka assertions.  Nothing here sleeps: every wait polls the
 * socket against a deadline.
 */
#ifndef LB_TEST_H2_CLIENT_H
#define LB_TEST_H2_CLIENT_H

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define H2_MAX_STREAMS 16

struct h2_body {
    const uint8_t *data;
    size_t len, off;
    bool stall; /* after the data: neither more nor END_STREAM */
};

struct h2 {
    int fd;
    SSL_CTX *ctx; /* TLS: both set; cleartext: both NULL */
    SSL *ssl;
    nghttp2_session *session;
    struct h2_body bodies[H2_MAX_STREAMS];
    unsigned n_requests;
    bool stall; /* the next requests' bodies stall after their data */

    /* the last request */
    int32_t stream;
    int http_status;
    int grpc_status; /* -1 until one arrives */
    char grpc_message[256];
    bool closed;
    uint32_t close_code;

    /* every stream */
    unsigned open; /* requests whose stream has not closed */
    unsigned ok;   /* grpc-status 0 seen */
    size_t data_bytes;
};

/* Seconds since some fixed point (CLOCK_MONOTONIC). */
double h2_now(void);

/*
 * A blocking TCP connection to 127.0.0.1:port, from the loopback address
 * `from` (NULL: any), with SO_RCVBUF shrunk to `rcvbuf` first when > 0 (so
 * that a client not reading fills the socket).
 */
int h2_tcp_connect(const char *from, int port, int rcvbuf);

/* Seconds until the peer closed fd (EOF or reset), or -1 if it did not within `limit`. */
double h2_closed_after(int fd, double limit);

/* Cleartext: connects to port and starts the session (SETTINGS with this initial window). */
void h2_open(struct h2 *c, int port, uint32_t window);

/*
 * TLS: connects to port and runs the handshake, verifying the server
 * against `ca` (PEM) for 127.0.0.1 and offering `alpn` (wire format).
 * Returns false when the handshake fails (call h2_close() all the same).
 * Then h2_start().
 */
bool h2_open_tls(struct h2 *c, int port, const char *ca, const char *alpn, size_t alpn_len,
                 int rcvbuf);

/*
 * Starts the session: SETTINGS with this initial window, and the
 * connection's window to match, so only the socket buffers hold the
 * server back.
 */
void h2_start(struct h2 *c, uint32_t window);

/*
 * Submits a gRPC-style POST and sends what is pending.  With a body, it
 * goes in DATA frames, then END_STREAM unless c->stall; without one
 * (body NULL), the HEADERS end the stream.  `bearer`: an authorization
 * header value, or NULL.  The body must outlive the request.
 */
void h2_request(struct h2 *c, const char *path, const char *content_type, const char *bearer,
                const void *body, size_t len);

/* Sends what is pending and reads what arrives, for at most `seconds`, until every stream closed.
 */
void h2_pump(struct h2 *c, double seconds);

/* The same until done(c, arg) holds (checked after each read, and first); returns it. */
bool h2_pump_until(struct h2 *c, bool (*done)(struct h2 *c, void *arg), void *arg, double seconds);

/* Pumps briefly: sends what is pending, reads what is there (no wait beyond 20 ms). */
void h2_pump_once(struct h2 *c);

void h2_close(struct h2 *c);

#endif
