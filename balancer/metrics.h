/*
 * Prometheus text exposition (format 0.0.4) of the data plane: per backend,
 * per pool and process-wide families.  Samples of one family are written
 * together, as the format requires.  Discovery adds its own families through
 * an extra renderer (see lb_http_config).
 */
#ifndef LB_METRICS_H
#define LB_METRICS_H

#include "lb_buf.h"
#include "lb_metrics_text.h"
#include "proxy.h"
#include "registry.h"

/* Appends the data-plane families to out.  Returns 0 or -E2BIG/-ENOMEM. */
int lb_metrics_render(struct lb_buf *out, struct lb_registry *registry, struct lb_proxy *proxy);

#endif
