#include "http_endpoint.h"
#include "lb_addr.h"
#include "lb_error.h"
#include "lb_log.h"
#include "lb_util.h"

#include <errno.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METRICS_MAX (64u << 20) /* 64 MiB: room for 10,000s of backends */

struct lb_http {
    struct ev_loop *loop;
    struct MHD_Daemon *daemon;
    struct lb_http_config cfg;
    ev_io io;       /* MHD's epoll fd */
    ev_timer timer; /* MHD's own timeouts */
};

static void http_schedule(struct lb_http *h)
{
    MHD_UNSIGNED_LONG_LONG ms;

    ev_timer_stop(h->loop, &h->timer);
    if (MHD_get_timeout(h->daemon, &ms) == MHD_YES) {
        ev_timer_set(&h->timer, (double)ms / 1000., 0.);
        ev_timer_start(h->loop, &h->timer);
    }
}

static void http_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_http *h = lb_container_of(w, struct lb_http, io);

    MHD_run(h->daemon);
    http_schedule(h);
}

static void http_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_http *h = lb_container_of(w, struct lb_http, timer);

    MHD_run(h->daemon);
    http_schedule(h);
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result rc;

    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    return reply(c, status, "text/plain; charset=utf-8", text, strlen(text));
}

static enum MHD_Result http_handler(void *cls, struct MHD_Connection *c, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_data_size,
                                    void **con_cls)
{
    struct lb_http *h = cls;

    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD are served here\n");
    if (*upload_data_size) {
        *upload_data_size = 0; /* a GET with a body: ignore the body */
        return MHD_YES;
    }
    if (strcmp(url, "/healthz") == 0)
        return reply_text(c, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0) {
        const char *why = "";
        char body[256];

        if (h->cfg.is_ready(h->cfg.ud, &why))
            return reply_text(c, MHD_HTTP_OK, "ready\n");
        snprintf(body, sizeof(body), "not ready: %s\n", why);
        return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, body);
    }
    if (strcmp(url, "/metrics") == 0) {
        struct lb_buf out;
        enum MHD_Result rc;

        lb_buf_init(&out, METRICS_MAX);
        if (h->cfg.render_metrics(h->cfg.ud, &out) < 0) {
            lb_buf_free(&out);
            LB_ERROR("http", "msg=\"metrics too large or out of memory\"");
            return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render metrics\n");
        }
        {
            /* Hand the buffer to MHD instead of copying megabytes of text. */
            struct MHD_Response *r = MHD_create_response_from_buffer(
                out.len, out.data ? out.data : "", out.data ? MHD_RESPMEM_MUST_FREE
                                                            : MHD_RESPMEM_PERSISTENT);

            if (!r) {
                lb_buf_free(&out);
                return MHD_NO;
            }
            MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
            MHD_add_response_header(r, "Cache-Control", "no-store");
            rc = MHD_queue_response(c, MHD_HTTP_OK, r);
            MHD_destroy_response(r);
            return rc;
        }
    }
    return reply_text(c, MHD_HTTP_NOT_FOUND, "not found: try /healthz, /readyz or /metrics\n");
}

int lb_http_start(struct ev_loop *loop, const struct lb_http_config *cfg, struct lb_http **out,
                  char **err)
{
    struct lb_hostport hp;
    struct sockaddr_storage ss;
    socklen_t len;
    const char *why;
    const union MHD_DaemonInfo *info;
    struct lb_http *h;
    unsigned flags = MHD_USE_EPOLL;

    if (lb_addr_parse(cfg->listen, true, &hp, &why) < 0) {
        lb_error_set(err, 0, "--http %s: %s", cfg->listen, why);
        return -EINVAL;
    }
    if (lb_addr_to_sockaddr(&hp, &ss, &len) < 0) {
        lb_error_set(err, 0, "--http %s: must be an IP address and port", cfg->listen);
        return -EINVAL;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        lb_error_set(err, 0, "out of memory");
        return -ENOMEM;
    }
    h->loop = loop;
    h->cfg = *cfg;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, http_handler, h,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)32,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768,
                                 MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)128,
                                 MHD_OPTION_END);
    if (!h->daemon) {
        lb_error_set(err, 0, "--http %s: cannot listen (address in use or not local?)",
                            cfg->listen);
        free(h);
        return -EADDRINUSE;
    }
    info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    ev_io_init(&h->io, http_io_cb, info->epoll_fd, EV_READ);
    ev_io_start(loop, &h->io);
    ev_init(&h->timer, http_timer_cb);
    http_schedule(h);
    LB_INFO("http", "msg=\"serving /healthz /readyz /metrics\" addr=%s", cfg->listen);
    *out = h;
    return 0;
}

void lb_http_stop(struct lb_http *h)
{
    if (!h)
        return;
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timer);
    MHD_stop_daemon(h->daemon);
    free(h);
}
