/*
 * Fuzzes the gRPC frame decoder with outside bytes in outside slicing.
 *
 * Input: byte 0 picks the options (bit 0: compression negotiated; bits 1-3:
 * maximum message size 2^(4+n)), byte 1 seeds the slice sizes; the rest is
 * the stream.  Checks that every delivered message respects the maximum,
 * that re-encoding the delivered messages gives back exactly the bytes the
 * decoder consumed, and that nothing leaks.
 */
#include "lb_grpc_frame.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct check {
    struct lb_buf reencoded;
    size_t max;
};

static int on_message(void *ud, const uint8_t *msg, size_t len, bool compressed)
{
    struct check *c = ud;
    uint8_t hdr[LB_GRPC_FRAME_HEADER_LEN];

    if (len > c->max)
        abort();
    lb_grpc_frame_header(hdr, (uint32_t)len);
    hdr[0] = compressed ? 1 : 0;
    if (lb_buf_append(&c->reencoded, hdr, sizeof(hdr)) < 0 ||
        lb_buf_append(&c->reencoded, msg, len) < 0)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lb_grpc_decoder d;
    struct check c;
    size_t off = 2, fed = 0;
    unsigned seed;
    int rc = 0;

    if (size < 2)
        return 0;
    c.max = (size_t)1 << (4 + ((data[0] >> 1) & 7));
    lb_buf_init(&c.reencoded, 1 << 20);
    lb_grpc_decoder_init(&d, c.max, data[0] & 1);
    seed = data[1];
    while (off < size && rc == 0) {
        size_t n = 1 + (seed % 17);

        seed = seed * 1103515245u + 12345u;
        if (n > size - off)
            n = size - off;
        rc = lb_grpc_decoder_feed(&d, data + off, n, on_message, &c);
        off += n;
        if (rc == 0)
            fed = off - 2;
    }
    if (rc == 0) {
        /* what was delivered is a prefix of the input, byte for byte */
        size_t pending = d.header_len + d.msg.len;

        if (c.reencoded.len + pending != fed)
            abort();
        if (c.reencoded.len && memcmp(c.reencoded.data, data + 2, c.reencoded.len) != 0)
            abort();
        if ((lb_grpc_decoder_finish(&d) == 0) != (pending == 0))
            abort();
    } else if (lb_grpc_decoder_finish(&d) != rc) {
        abort();
    }
    lb_grpc_decoder_free(&d);
    lb_buf_free(&c.reencoded);
    return 0;
}
