/*
 * A growable byte buffer with a hard maximum (after curl's dynbuf): every
 * buffer fed by a peer gets one, so a peer that sends without end costs one
 * failed append, never the process's memory.
 */
#ifndef LB_BUF_H
#define LB_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct lb_buf {
    char *data; /* NUL-terminated after every append (not counted in len) */
    size_t len;
    size_t cap;
    size_t max; /* appends that would pass this fail with -E2BIG */
};

void lb_buf_init(struct lb_buf *b, size_t max);
/* Returns 0, -E2BIG past the maximum (buffer unchanged) or -ENOMEM. */
int lb_buf_append(struct lb_buf *b, const void *data, size_t len);
/*
 * Appends printf-style text of at most LB_BUF_PRINTF_MAX bytes (lines of
 * /metrics, pieces of a JSON document).  Returns 0, -E2BIG when the text
 * is longer or past the maximum (buffer unchanged), or -ENOMEM.
 */
#define LB_BUF_PRINTF_MAX 1023
int lb_buf_printf(struct lb_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int lb_buf_vprintf(struct lb_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Drops the first n bytes (n <= len). */
void lb_buf_consume(struct lb_buf *b, size_t n);
void lb_buf_reset(struct lb_buf *b);
void lb_buf_free(struct lb_buf *b);

#endif
