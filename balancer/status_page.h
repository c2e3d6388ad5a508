/*
 * The status page of the probe port (--http): what an operator used to
 * HAProxy's stats page or Traefik's dashboard expects to find, read-only.
 *
 *   GET /, /status   the page (status_page.html, with status_page.js and
 *                    status_page.css embedded at build time)
 *   GET /status.json pools and backends with their counters, as the admin
 *                    API sees them (control.h); the page polls it
 *   GET /events      server-sent events: one `data:` JSON line per pool
 *                    event, as WatchEvents streams them
 *
 * This module knows nothing of HTTP: http_endpoint.c routes, answers and
 * streams.  Here are the assets, the JSON, and the event streams: each
 * stream is a bounded byte queue fed by one subscription to the registry's
 * events (taken while at least one stream is open), with a heartbeat
 * comment every 15 s.  A stream whose queue would pass its bound (a client
 * that does not read) is ended, not grown.
 *
 * Everything runs on the lbd control loop.
 */
#ifndef LB_STATUS_PAGE_H
#define LB_STATUS_PAGE_H

#include "lb_buf.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct lb_registry;

/* An embedded file of the page. */
struct lb_status_asset {
    const char *content_type;
    const unsigned char *data;
    size_t len;
};

/* The asset served at `path` ("/", "/status", "/status.js", "/status.css"), or NULL. */
const struct lb_status_asset *lb_status_asset_find(const char *path);

/*
 * Appends the /status.json document (pools, then every backend with the
 * fields of `lbctl -o json backends` and its state).  Returns 0, or
 * -E2BIG/-ENOMEM with `out` partly written.
 */
int lb_status_render_json(struct lb_registry *r, struct lb_buf *out);

struct lb_status;        /* the event streams of one endpoint */
struct lb_status_stream; /* one client's */

/* Returns 0 or -ENOMEM. */
int lb_status_new(struct ev_loop *loop, struct lb_registry *r, struct lb_status **out);
/* Every stream must have been closed first. */
void lb_status_free(struct lb_status *st);

/* Streams open now. */
unsigned lb_status_stream_count(const struct lb_status *st);

/*
 * Opens a stream: from now on every event is queued for it.  `wake` is
 * called (from the loop, never from inside a call into this module by the
 * stream's owner) once data is there after a read returned 0, and at once
 * when the stream ends on its own (its queue overflowed: the client is not
 * reading), whether a read is waiting or not.  Returns NULL when out of
 * memory.
 */
struct lb_status_stream *lb_status_stream_open(struct lb_status *st, void (*wake)(void *ud),
                                               void *ud);

/*
 * Copies queued bytes into buf: returns how many (> 0), 0 when nothing is
 * queued (wake follows when something is), or -1 once the stream has
 * ended (lb_status_stream_end(), or its queue overflowed).
 */
ssize_t lb_status_stream_read(struct lb_status_stream *s, char *buf, size_t max);

/* True once reads return -1. */
bool lb_status_stream_has_ended(const struct lb_status_stream *s);

/* Ends the stream: reads return -1 from now on.  wake is not called: the caller knows. */
void lb_status_stream_end(struct lb_status_stream *s);

/* Frees the stream; its wake is not called again. */
void lb_status_stream_close(struct lb_status_stream *s);

#endif
