/*
 * gRPC framing, grpc-message and grpc-timeout.  The decoder is a two-state
 * machine (reading a 5-byte prefix, reading a body) that copies at most one
 * message at a time; a message that arrives whole inside one slice is
 * still copied, which keeps the code to one path and costs nothing at the
 * admin API's sizes.
 */
#include "lb_grpc_frame.h"

#include <errno.h>
#include <string.h>
#include <stdio.h>
#include <strings.h>

static const char *const status_names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *lb_grpc_status_name(int status)
{
    if (status < 0 || (size_t)status >= sizeof(status_names) / sizeof(status_names[0]))
        return "UNKNOWN_STATUS";
    return status_names[status];
}

void lb_grpc_frame_header(uint8_t out[LB_GRPC_FRAME_HEADER_LEN], uint32_t len)
{
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

int lb_grpc_frame_encode(struct lb_buf *out, const void *msg, size_t len)
{
    uint8_t hdr[LB_GRPC_FRAME_HEADER_LEN];
    size_t before = out->len;
    int rc;

    if (len > UINT32_MAX)
        return -EMSGSIZE;
    lb_grpc_frame_header(hdr, (uint32_t)len);
    rc = lb_buf_append(out, hdr, sizeof(hdr));
    if (rc == 0)
        rc = lb_buf_append(out, msg, len);
    if (rc < 0) {
        out->len = before; /* never leave half a frame behind */
        if (out->data)
            out->data[before] = '\0';
    }
    return rc;
}

void lb_grpc_decoder_init(struct lb_grpc_decoder *d, size_t max_message, bool allow_compressed)
{
    memset(d, 0, sizeof(*d));
    d->max_message = max_message ? max_message : LB_GRPC_MAX_MESSAGE_DEFAULT;
    d->allow_compressed = allow_compressed;
    lb_buf_init(&d->msg, d->max_message);
}

/* Delivers the message in d->msg and resets for the next prefix. */
static int decoder_deliver(struct lb_grpc_decoder *d, lb_grpc_message_cb cb, void *ud)
{
    int rc = cb(ud, (const uint8_t *)(d->msg.data ? d->msg.data : ""), d->msg.len, d->compressed);

    d->messages++;
    d->header_len = 0;
    d->want = 0;
    lb_buf_reset(&d->msg);
    return rc;
}

int lb_grpc_decoder_feed(struct lb_grpc_decoder *d, const void *data, size_t len,
                         lb_grpc_message_cb cb, void *ud)
{
    const uint8_t *p = data;
    int rc = 0;

    if (d->error)
        return d->error;
    while (len > 0) {
        if (d->header_len < LB_GRPC_FRAME_HEADER_LEN) {
            size_t n = LB_GRPC_FRAME_HEADER_LEN - d->header_len;

            if (n > len)
                n = len;
            memcpy(d->header + d->header_len, p, n);
            d->header_len += n;
            p += n;
            len -= n;
            if (d->header_len < LB_GRPC_FRAME_HEADER_LEN)
                break;
            if (d->header[0] > 1 || (d->header[0] == 1 && !d->allow_compressed)) {
                rc = -EPROTO;
                goto out;
            }
            d->compressed = d->header[0] == 1;
            d->want = (uint32_t)d->header[1] << 24 | (uint32_t)d->header[2] << 16 |
                      (uint32_t)d->header[3] << 8 | (uint32_t)d->header[4];
            if (d->want > d->max_message) {
                rc = -EMSGSIZE;
                goto out;
            }
            if (d->want == 0 && (rc = decoder_deliver(d, cb, ud)) < 0)
                goto out;
            continue;
        }
        {
            size_t n = d->want - d->msg.len;

            if (n > len)
                n = len;
            rc = lb_buf_append(&d->msg, p, n);
            if (rc < 0) {
                rc = rc == -E2BIG ? -EMSGSIZE : rc;
                goto out;
            }
            p += n;
            len -= n;
            if (d->msg.len == d->want && (rc = decoder_deliver(d, cb, ud)) < 0)
                goto out;
        }
    }
out:
    if (rc < 0)
        d->error = rc;
    return rc;
}

bool lb_grpc_decoder_is_idle(const struct lb_grpc_decoder *d)
{
    return d->header_len == 0;
}

int lb_grpc_decoder_finish(const struct lb_grpc_decoder *d)
{
    if (d->error)
        return d->error;
    return lb_grpc_decoder_is_idle(d) ? 0 : -EBADMSG;
}

void lb_grpc_decoder_free(struct lb_grpc_decoder *d)
{
    lb_buf_free(&d->msg);
}

static bool percent_is_plain(unsigned char c)
{
    return c >= 0x20 && c <= 0x7e && c != '%';
}

size_t lb_grpc_percent_encode(const char *in, size_t in_len, char *out, size_t size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (size_t i = 0; i < in_len; i++) {
        unsigned char c = (unsigned char)in[i];

        if (percent_is_plain(c)) {
            if (o + 1 >= size)
                break;
            out[o++] = (char)c;
        } else {
            if (o + 3 >= size)
                break;
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return o;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t lb_grpc_percent_decode(const char *in, size_t in_len, char *out, size_t size)
{
    size_t o = 0;

    for (size_t i = 0; i < in_len && o + 1 < size; i++) {
        char c = in[i];

        if (c == '%' && i + 2 < in_len && hex_value(in[i + 1]) >= 0 && hex_value(in[i + 2]) >= 0) {
            c = (char)(hex_value(in[i + 1]) << 4 | hex_value(in[i + 2]));
            i += 2;
        }
        if (c != '\0')
            out[o++] = c;
    }
    out[o] = '\0';
    return o;
}

int lb_grpc_timeout_parse(const char *value, size_t len, int64_t *out_ms)
{
    int64_t n = 0;
    size_t digits = len - 1;

    if (len < 2 || len > 9)
        return -EINVAL;
    for (size_t i = 0; i < digits; i++) {
        if (value[i] < '0' || value[i] > '9')
            return -EINVAL;
        n = n * 10 + (value[i] - '0');
    }
    switch (value[digits]) {
    case 'H':
        *out_ms = n * 3600 * 1000;
        break;
    case 'M':
        *out_ms = n * 60 * 1000;
        break;
    case 'S':
        *out_ms = n * 1000;
        break;
    case 'm':
        *out_ms = n;
        break;
    case 'u':
        *out_ms = (n + 999) / 1000;
        break;
    case 'n':
        *out_ms = (n + 999999) / 1000000;
        break;
    default:
        return -EINVAL;
    }
    return 0;
}

const char *lb_grpc_timeout_format(int64_t ms, char *buf, size_t size)
{
    if (ms <= 0)
        ms = 1;
    if (ms < 100000000)
        snprintf(buf, size, "%lldm", (long long)ms);
    else if (ms / 1000 < 100000000)
        snprintf(buf, size, "%lldS", (long long)((ms + 999) / 1000));
    else if (ms / 60000 < 100000000)
        snprintf(buf, size, "%lldM", (long long)((ms + 59999) / 60000));
    else
        snprintf(buf, size, "99999999H");
    return buf;
}

bool lb_grpc_content_type_is_grpc(const char *value, size_t len)
{
    static const char base[] = "application/grpc";
    size_t blen = sizeof(base) - 1;

    if (len < blen || strncasecmp(value, base, blen) != 0)
        return false;
    return len == blen || value[blen] == '+' || value[blen] == ';';
}
