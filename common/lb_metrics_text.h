/*
 * Writing Prometheus text exposition (format 0.0.4) into a bounded buffer:
 * family headers and label values escaped (samples: lb_buf_printf()).  Shared by
 * lbd's data-plane metrics and the watcher's etcd metrics.
 */
#ifndef LB_METRICS_TEXT_H
#define LB_METRICS_TEXT_H

#include "lb_buf.h"

#include <stddef.h>

/* Appends "# HELP" and "# TYPE" lines.  Returns 0 or -E2BIG/-ENOMEM. */
int lb_metrics_family(struct lb_buf *out, const char *name, const char *type, const char *help);

/* Writes `value` with \, " and newlines escaped into buf (cut to fit).  Returns buf. */
const char *lb_metrics_escape(const char *value, char *buf, size_t size);

#endif
