/*
 * lbctl's gRPC client for lbd's admin API: libcurl over HTTP/2, cleartext
 * (prior knowledge) or TLS (ALPN h2, lbd's certificate checked against a
 * given CA), one blocking call at a time, each carrying the bearer token
 * when one is given.  grpc-status and
 * grpc-message are read from every header line, since libcurl hands
 * trailers to the header callback too; a response without grpc-status gets
 * a status synthesized from the HTTP status, as gRPC clients do.  Transport
 * failures come back as UNAVAILABLE / DEADLINE_EXCEEDED with a sentence
 * that tells the operator what to check.
 */
#ifndef LB_ADMIN_CLIENT_H
#define LB_ADMIN_CLIENT_H

#include "lb_grpc_frame.h"

#include <protobuf-c/protobuf-c.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

struct lb_admin_client;

struct lb_admin_status {
    int code;       /* gRPC status */
    bool transport; /* lbd was not reached or did not speak gRPC: message says what to do */
    char message[LB_GRPC_MESSAGE_TEXT_MAX + 256];
};

struct lb_admin_client_options {
    const char *addr;    /* HOST:PORT ("127.0.0.1:9000", "[::1]:9000", "localhost:9000") */
    const char *token;   /* sent as "authorization: Bearer <token>"; NULL: none (copied) */
    const char *ca_file; /* PEM CA bundle: TLS, lbd's certificate must chain to it and name
                            HOST; NULL: cleartext HTTP/2 */
};

/*
 * Returns 0, -EINVAL with *err a malloc'd sentence (bad address, a token
 * that cannot be a header value), or -ENOMEM.
 */
int lb_admin_client_new(const struct lb_admin_client_options *opts, struct lb_admin_client **out,
                        char **err);
/* Wipes the token copy too.  NULL is a no-op. */
void lb_admin_client_free(struct lb_admin_client *c);

/*
 * One unary call to `path` ("/lb.v1.Admin/ListPools").  Returns the gRPC
 * status (also in st->code).  On LB_GRPC_OK *resp holds the decoded answer
 * (free with protobuf_c_message_free_unpacked(*resp, NULL)); otherwise
 * *resp is NULL and st->message says why.  timeout_ms > 0 sets the
 * deadline (sent as grpc-timeout).
 */
int lb_admin_client_call(struct lb_admin_client *c, const char *path,
                         const ProtobufCMessage *request,
                         const ProtobufCMessageDescriptor *response_type, int64_t timeout_ms,
                         ProtobufCMessage **resp, struct lb_admin_status *st);

/*
 * Called once per streamed message (valid during the call only).  Return 0
 * to go on, non-zero to end the call (then reported as CANCELLED).
 */
typedef int (*lb_admin_stream_cb)(void *ud, const ProtobufCMessage *msg);

/*
 * A server-streaming call.  Runs until the server ends the stream, `cb`
 * asks to stop, or *stop becomes non-zero (e.g. from a SIGINT handler);
 * the last two give LB_GRPC_CANCELLED.  timeout_ms 0 = no deadline.
 */
int lb_admin_client_stream(struct lb_admin_client *c, const char *path,
                           const ProtobufCMessage *request,
                           const ProtobufCMessageDescriptor *response_type, int64_t timeout_ms,
                           lb_admin_stream_cb cb, void *ud, volatile sig_atomic_t *stop,
                           struct lb_admin_status *st);

#endif
