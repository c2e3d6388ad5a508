/*
 * Prometheus text exposition helpers shared by lbd's modules (contract in
 * lb_metrics_text.h): families, label escaping, printf into an lb_buf.
 */
#include "lb_metrics_text.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

int lb_metrics_printf(struct lb_buf *out, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line))
        return -E2BIG;
    return lb_buf_append(out, line, (size_t)n);
}

int lb_metrics_family(struct lb_buf *out, const char *name, const char *type, const char *help)
{
    return lb_metrics_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

const char *lb_metrics_escape(const char *value, char *buf, size_t size)
{
    size_t o = 0;

    for (const char *p = value; *p && o + 3 < size; p++) {
        if (*p == '\\' || *p == '"') {
            buf[o++] = '\\';
            buf[o++] = *p;
        } else if (*p == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else {
            buf[o++] = *p;
        }
    }
    buf[o] = '\0';
    return buf;
}
