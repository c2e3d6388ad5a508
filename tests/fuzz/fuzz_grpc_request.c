/*
 * Fuzzes the admin API's request path up to the handler: gRPC framing,
 * protobuf decoding and the per-method validation of outside bytes, through
 * the server's own lookup and decoder (admin_call.h) over lbd's table.
 *
 * Input: byte 0 picks the method, the rest is the request body as it
 * would arrive in DATA frames (5-byte prefix + message).  Every decoded
 * request is re-packed to check that protobuf-c produced a sane message.
 */
#include "admin_service.h"
#include "lb_grpc_frame.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const names[][2] = {
    {"lb.v1.Admin", "ListPools"},   {"lb.v1.Admin", "ListBackends"},
    {"lb.v1.Admin", "GetBackend"},  {"lb.v1.Admin", "SetDrain"},
    {"lb.v1.Admin", "SetWeight"},   {"lb.v1.Admin", "SetHealth"},
    {"lb.v1.Admin", "WatchEvents"}, {"grpc.health.v1.Health", "Check"},
};
#define N_NAMES (sizeof(names) / sizeof(names[0]))

struct request {
    const struct lb_admin_method *method;
    unsigned messages;
};

static int on_message(void *ud, const uint8_t *msg, size_t len, bool compressed)
{
    struct request *r = ud;
    ProtobufCMessage *decoded = NULL;
    char *err = NULL;
    int status;

    r->messages++;
    status = lb_admin_method_decode(r->method, msg, len, &decoded, &err);
    if (status == 0) {
        size_t packed_len = protobuf_c_message_get_packed_size(decoded);
        uint8_t *packed = malloc(packed_len ? packed_len : 1);

        if (!packed || protobuf_c_message_pack(decoded, packed) != packed_len)
            abort();
        free(packed);
        protobuf_c_message_free_unpacked(decoded, NULL);
    } else if (decoded || !err || err[0] == '\0') {
        abort(); /* a failure always explains itself and hands nothing back */
    }
    free(err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lb_grpc_decoder d;
    struct request r = {0};
    const struct lb_admin_method *table;
    size_t n;

    if (size < 1)
        return 0;
    table = lb_admin_service_methods(&n);
    r.method =
        lb_admin_method_find(table, n, names[data[0] % N_NAMES][0], names[data[0] % N_NAMES][1]);
    if (!r.method)
        abort();
    lb_grpc_decoder_init(&d, 64 * 1024, false);
    lb_grpc_decoder_feed(&d, data + 1, size - 1, on_message, &r);
    lb_grpc_decoder_finish(&d);
    lb_grpc_decoder_free(&d);
    return 0;
}
