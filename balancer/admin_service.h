/*
 * The admin API's method table: lb.v1.Admin and grpc.health.v1.Health/Check,
 * each row a request type and a handler that turns protobuf into calls on
 * balancer/control.h and back.  The transport (admin_server.c) looks a
 * method up by its :path, decodes the request with
 * lb_admin_service_decode() and hands it to the handler.
 */
#ifndef LB_ADMIN_SERVICE_H
#define LB_ADMIN_SERVICE_H

#include <protobuf-c/protobuf-c.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lb_admin_call;
struct lb_registry;

struct lb_admin_method {
    const char *service; /* "lb.v1.Admin" */
    const char *name;    /* "ListPools" */
    const ProtobufCMessageDescriptor *request;
    bool server_streaming;
    /*
     * Checks required fields and ranges.  Returns 0, or a gRPC status with
     * a sentence in err[size].  NULL: every decodable request is valid.
     */
    int (*validate)(const ProtobufCMessage *request, char *err, size_t size);
    /*
     * Runs on the loop with a decoded, validated request that is freed when
     * it returns (copy what an asynchronous answer needs).  Must eventually
     * finish the call, unless it is cancelled first.
     */
    void (*handle)(struct lb_admin_call *call, const ProtobufCMessage *request);
    /* Callable without the admin token (health probes carry none). */
    bool open;
};

/* NULL when the service or the method is unknown. */
const struct lb_admin_method *lb_admin_service_find(const char *service, const char *method);

/*
 * Unpacks and validates one request message.  Returns 0 with *out set (free
 * with protobuf_c_message_free_unpacked(*out, NULL)), or a gRPC status
 * (INVALID_ARGUMENT) with a sentence in err[size].
 */
int lb_admin_service_decode(const struct lb_admin_method *m, const uint8_t *data, size_t len,
                            ProtobufCMessage **out, char *err, size_t size);

#endif
