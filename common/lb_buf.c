/*
 * A growable byte buffer with a hard maximum (contract in lb_buf.h): every
 * append checks it, so a peer cannot grow one without bound.
 */
#include "lb_buf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void lb_buf_init(struct lb_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

int lb_buf_append(struct lb_buf *b, const void *data, size_t len)
{
    if (len > b->max || b->len > b->max - len)
        return -E2BIG;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;

        while (cap < b->len + len + 1)
            cap *= 2;
        if (cap > b->max + 1)
            cap = b->max + 1;
        p = realloc(b->data, cap);
        if (!p)
            return -ENOMEM;
        b->data = p;
        b->cap = cap;
    }
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

void lb_buf_consume(struct lb_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void lb_buf_reset(struct lb_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void lb_buf_free(struct lb_buf *b)
{
    free(b->data);
    lb_buf_init(b, b->max);
}

int lb_buf_vprintf(struct lb_buf *b, const char *fmt, va_list ap)
{
    char text[LB_BUF_PRINTF_MAX + 1];
    int n = vsnprintf(text, sizeof(text), fmt, ap);

    if (n < 0 || (size_t)n >= sizeof(text))
        return -E2BIG;
    return lb_buf_append(b, text, (size_t)n);
}

int lb_buf_printf(struct lb_buf *b, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = lb_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}
