/*
 * What a gRPC method handler of the admin API sees: a method table row, and
 * the call it is handed.  This is the whole surface between lbd's services
 * (admin_service.c) and the transport (admin_server.c and its layers):
 * the transport knows no service, a service no socket.
 *
 * A call is reference counted.  The open stream holds one reference; a
 * handler that answers later (an etcd write, a drain wait, an event stream)
 * takes its own.  When the client resets the stream, the deadline passes or
 * the connection goes away, the call is marked done and its cancel hook
 * runs, but its memory (and the handler state attached to it) is freed only
 * once the last reference is dropped, at the end of a loop iteration.  So a
 * completion that arrives after a cancel finds a valid, done call and simply
 * lets go of it.  Everything here runs on the server's loop.
 */
#ifndef LB_ADMIN_CALL_H
#define LB_ADMIN_CALL_H

#include <protobuf-c/protobuf-c.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ev_loop;
struct lb_admin_call;

/* Method flags. */
#define LB_ADMIN_METHOD_STREAMING 0x1u /* server streaming: a larger response queue */
#define LB_ADMIN_METHOD_NO_AUTH   0x2u /* callable without the admin token (health probes) */

/* One row of a method table: the call to POST /<service>/<name>. */
struct lb_admin_method {
    const char *service; /* "lb.v1.Admin" */
    const char *name;    /* "ListPools" */
    const ProtobufCMessageDescriptor *request;
    /*
     * Checks required fields and ranges.  Returns 0, or a gRPC status with
     * *err a malloc'd sentence (lb_error_set).  NULL: every decodable
     * request is valid.
     */
    int (*validate)(const ProtobufCMessage *request, char **err);
    /*
     * Runs on the loop with a decoded, validated request that is freed when
     * it returns (copy what an asynchronous answer needs).  Must eventually
     * finish the call, unless it is cancelled first.
     */
    void (*handle)(struct lb_admin_call *call, const ProtobufCMessage *request);
    unsigned flags; /* LB_ADMIN_METHOD_* */
};

/* The row for service/name in methods[n], or NULL. */
const struct lb_admin_method *lb_admin_method_find(const struct lb_admin_method *methods, size_t n,
                                                   const char *service, const char *name);

/*
 * Unpacks and validates one request message for method m, as the server
 * does before calling m->handle.  Returns 0 with *out set (free with
 * protobuf_c_message_free_unpacked(*out, NULL)), or a gRPC status
 * (INVALID_ARGUMENT, or validate's) with *err a malloc'd sentence.
 */
int lb_admin_method_decode(const struct lb_admin_method *m, const uint8_t *data, size_t len,
                           ProtobufCMessage **out, char **err);

/* ---- the call ---- */

struct ev_loop *lb_admin_call_loop(const struct lb_admin_call *c);
/* The context the server was given with its method table. */
void *lb_admin_call_context(const struct lb_admin_call *c);

void lb_admin_call_ref(struct lb_admin_call *c);
/* Drops a reference; the call is freed later, never inside this function's caller's stack. */
void lb_admin_call_unref(struct lb_admin_call *c);

/* True once the call is finished or cancelled: nothing more can be sent. */
bool lb_admin_call_is_done(const struct lb_admin_call *c);

/*
 * Hook run at most once when the call ends without the handler finishing it:
 * client RST_STREAM, deadline, connection closed, server freed.  It should
 * stop what feeds the call (unsubscribe, stop timers) and drop the
 * handler's reference; it must not free anything attached with
 * lb_admin_call_set_data() (the call does that).
 */
void lb_admin_call_on_cancel(struct lb_admin_call *c, void (*cb)(void *ud), void *ud);

/* Attaches handler state, released with `release` when the call is freed. */
void lb_admin_call_set_data(struct lb_admin_call *c, void *data, void (*release)(void *data));

/* Sends response headers now (streaming calls do, so the client sees the call start). */
void lb_admin_call_begin(struct lb_admin_call *c);

/*
 * Queues one response message.  Returns 0; -ECANCELED when the call is done;
 * -EMSGSIZE when the message is over the maximum; -ENOBUFS when the call's
 * queue is full (a slow client: finish with RESOURCE_EXHAUSTED); -ENOMEM.
 */
int lb_admin_call_send(struct lb_admin_call *c, const ProtobufCMessage *msg);

/*
 * Ends the call with a gRPC status and a readable message (printf format;
 * percent-encoded on the wire).  Queued messages still go out before the
 * trailers.  A no-op on a done call.
 */
void lb_admin_call_finish(struct lb_admin_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
