/*
 * Prometheus text exposition helpers shared by lbd's modules (contract in
 * lb_metrics_text.h): families and label escaping; samples are lb_buf_printf().
 */
#include "lb_metrics_text.h"

#include <stdio.h>

int lb_metrics_family(struct lb_buf *out, const char *name, const char *type, const char *help)
{
    return lb_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
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
