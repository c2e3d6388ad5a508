/*
 * The operator's HTTP/1.1 port (--http): /healthz, /readyz and /metrics for
 * kubelet and Prometheus.  libmicrohttpd runs without threads of its own:
 * its epoll fd is watched by the lbd loop and MHD_run() is called when it is
 * readable or when MHD's timeout expires.
 *
 * The endpoint knows nothing of pools: readiness and metrics come from the
 * callbacks in lb_http_config.  Given the registry, it also serves the
 * read-only status page (status_page.h): GET / and /status, /status.json,
 * and /events as server-sent events.
 */
#ifndef LB_HTTP_ENDPOINT_H
#define LB_HTTP_ENDPOINT_H

#include "lb_buf.h"

#include <ev.h>
#include <stdbool.h>

struct lb_registry;

struct lb_http_config {
    const char *listen; /* "127.0.0.1:9100" or "[::1]:9100" */
    /* True when /readyz should answer 200; otherwise *why says what is missing. */
    bool (*is_ready)(void *ud, const char **why);
    /* Appends the metrics text; returns 0 or a negative errno. */
    int (*render_metrics)(void *ud, struct lb_buf *out);
    void *ud;
    /* The status page's data, read through control.h; NULL: no status page (404). */
    struct lb_registry *registry;
};

struct lb_http;

/* Returns 0, or a negative errno with *err set to a malloc'd message. */
int lb_http_start(struct ev_loop *loop, const struct lb_http_config *cfg, struct lb_http **out,
                  char **err);
/* The bound port (useful after asking for port 0). */
int lb_http_port(const struct lb_http *h);
void lb_http_stop(struct lb_http *h);

/* The listening socket (handed to the next process at an upgrade), -1 once closed. */
int lb_http_listen_fd(const struct lb_http *h);

/* Stops accepting and closes the listener; requests in progress finish (upgrade). */
void lb_http_stop_listening(struct lb_http *h);

#endif
