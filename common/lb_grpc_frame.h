/*
 * gRPC wire helpers shared by lbd's admin server and lbctl (grpc's
 * PROTOCOL-HTTP2): the 5-byte length-prefixed message framing, an
 * incremental decoder that reassembles messages from whatever slices HTTP/2
 * DATA frames or libcurl hand over, the percent-encoding of grpc-message,
 * and the grpc-timeout header.
 *
 * The decoder never trusts a declared length: it refuses anything above its
 * maximum before allocating, and grows its buffer only as bytes arrive, so
 * a peer announcing 4 GiB costs nothing.  Nothing here does I/O.
 */
#ifndef LB_GRPC_FRAME_H
#define LB_GRPC_FRAME_H

#include "lb_buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LB_GRPC_FRAME_HEADER_LEN    5
#define LB_GRPC_MAX_MESSAGE_DEFAULT (4u * 1024 * 1024) /* grpc's default: 4 MiB */
#define LB_GRPC_MESSAGE_TEXT_MAX    1024               /* grpc-message after decoding */

enum lb_grpc_status {
    LB_GRPC_OK = 0,
    LB_GRPC_CANCELLED = 1,
    LB_GRPC_UNKNOWN = 2,
    LB_GRPC_INVALID_ARGUMENT = 3,
    LB_GRPC_DEADLINE_EXCEEDED = 4,
    LB_GRPC_NOT_FOUND = 5,
    LB_GRPC_ALREADY_EXISTS = 6,
    LB_GRPC_PERMISSION_DENIED = 7,
    LB_GRPC_RESOURCE_EXHAUSTED = 8,
    LB_GRPC_FAILED_PRECONDITION = 9,
    LB_GRPC_ABORTED = 10,
    LB_GRPC_OUT_OF_RANGE = 11,
    LB_GRPC_UNIMPLEMENTED = 12,
    LB_GRPC_INTERNAL = 13,
    LB_GRPC_UNAVAILABLE = 14,
    LB_GRPC_DATA_LOSS = 15,
    LB_GRPC_UNAUTHENTICATED = 16,
};

/* "NOT_FOUND" for 5; "UNKNOWN_STATUS" outside 0..16. */
const char *lb_grpc_status_name(int status);

/* Writes the prefix of an uncompressed message of `len` bytes. */
void lb_grpc_frame_header(uint8_t out[LB_GRPC_FRAME_HEADER_LEN], uint32_t len);

/*
 * Appends prefix + message to `out`.  Returns 0, -EMSGSIZE when len does not
 * fit the 32-bit length, or lb_buf_append()'s -E2BIG / -ENOMEM (out unchanged).
 */
int lb_grpc_frame_encode(struct lb_buf *out, const void *msg, size_t len);

/*
 * Incremental decoder.  Feed it bytes in any slicing; every complete message
 * is handed to the callback.  Errors are sticky: after a failure every later
 * feed returns the same error.
 */
struct lb_grpc_decoder {
    size_t max_message;    /* declared lengths above this fail with -EMSGSIZE */
    bool allow_compressed; /* true only when grpc-encoding was negotiated */
    uint8_t header[LB_GRPC_FRAME_HEADER_LEN];
    size_t header_len; /* bytes of the current prefix seen so far */
    bool compressed;   /* flag of the current message */
    uint32_t want;     /* declared length of the current message */
    struct lb_buf msg; /* its bytes so far */
    int error;
    uint64_t messages; /* complete messages delivered */
};

/*
 * Called once per message.  `data` is valid during the call only.  Return 0
 * to go on, or a negative errno to stop: lb_grpc_decoder_feed() then returns
 * it and the decoder stays failed.
 */
typedef int (*lb_grpc_message_cb)(void *ud, const uint8_t *data, size_t len, bool compressed);

/* max_message 0 means LB_GRPC_MAX_MESSAGE_DEFAULT. */
void lb_grpc_decoder_init(struct lb_grpc_decoder *d, size_t max_message, bool allow_compressed);

/*
 * Consumes `len` bytes.  Returns 0; -EMSGSIZE (a declared length above the
 * maximum: RESOURCE_EXHAUSTED for the caller); -EPROTO (compressed flag
 * without a negotiated encoding, or a flag other than 0/1: INTERNAL per
 * grpc, INVALID_ARGUMENT for a request); -ENOMEM; or the callback's error.
 */
int lb_grpc_decoder_feed(struct lb_grpc_decoder *d, const void *data, size_t len,
                         lb_grpc_message_cb cb, void *ud);

/* True when the decoder sits between messages (end of stream is clean). */
bool lb_grpc_decoder_is_idle(const struct lb_grpc_decoder *d);

/*
 * To call at end of stream.  Returns the sticky error if any, -EBADMSG when
 * a message was cut short (truncated frame), else 0.
 */
int lb_grpc_decoder_finish(const struct lb_grpc_decoder *d);

void lb_grpc_decoder_free(struct lb_grpc_decoder *d);

/*
 * grpc-message encoding: bytes outside 0x20..0x7e and '%' become %XX.
 * Writes a NUL-terminated string into out[size] and returns its length.
 * Input that does not fit is cut at a character boundary (an escape is never
 * split).  size must be at least 1.
 */
size_t lb_grpc_percent_encode(const char *in, size_t in_len, char *out, size_t size);

/*
 * Inverse of lb_grpc_percent_encode().  A '%' not followed by two hex digits
 * is kept literally (grpc says a decoder must not fail).  NUL bytes decoded
 * from %00 are dropped so the result stays a C string.  Output is cut to
 * size-1 bytes; returns the length written.
 */
size_t lb_grpc_percent_decode(const char *in, size_t in_len, char *out, size_t size);

/*
 * grpc-timeout: 1 to 8 ASCII digits then one unit of H M S m u n.  Stores the
 * timeout in milliseconds, rounded up so that "1n" is 1 ms and not "no
 * deadline".  Returns 0 or -EINVAL.  `value` need not be NUL-terminated.
 */
int lb_grpc_timeout_parse(const char *value, size_t len, int64_t *out_ms);

/* Formats a timeout (ms > 0) for the grpc-timeout header, at most 8 digits. */
const char *lb_grpc_timeout_format(int64_t ms, char *buf, size_t size);

/*
 * True for "application/grpc" optionally followed by "+proto", "+json", ...
 * or ";params" (grpc's content-type rule).  `value` need not be
 * NUL-terminated.
 */
bool lb_grpc_content_type_is_grpc(const char *value, size_t len);

#endif
