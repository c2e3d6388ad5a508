/*
 * The status page's data (see status_page.h): the embedded assets, the
 * /status.json document and the /events streams.
 *
 * JSON is written by hand into bounded buffers: the balancer links no JSON
 * library, and every string is escaped the same way (quotes, backslashes,
 * control characters, and <, > and & as \u escapes so that no value can
 * read as markup to anything that sniffs; bytes that are not UTF-8 become
 * U+FFFD).  Backend ids and zones come from etcd: anyone who may register
 * writes them.
 *
 * Events: while at least one stream is open the module holds one
 * subscription (lb_control_subscribe) and formats each event once, then
 * appends it to every stream's queue.  A queue has a maximum; a client that
 * falls that far behind is ended (its EventSource reconnects and the page
 * reloads /status.json), so a stalled reader costs at most STREAM_QUEUE_MAX
 * bytes.  A heartbeat comment every HEARTBEAT_S keeps proxies from timing
 * the stream out and tells a client it is still live.
 */
#include "status_page.h"
#include "control.h"
#include "lb_list.h"
#include "lb_util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STREAM_QUEUE_MAX (256u << 10) /* bytes a stream may have waiting */
#define EVENT_JSON_MAX   (16u << 10)  /* one event, its backend included */
#define HEARTBEAT_S      15.0

/* Generated from status_page.{html,js,css} by balancer/CMakeLists.txt. */
extern const unsigned char lb_status_page_html[], lb_status_page_js[], lb_status_page_css[];
extern const size_t lb_status_page_html_len, lb_status_page_js_len, lb_status_page_css_len;

/* ---- assets ---- */

const struct lb_status_asset *lb_status_asset_find(const char *path)
{
    static struct lb_status_asset html, js, css;

    if (!html.data) {
        html = (struct lb_status_asset){"text/html; charset=utf-8", lb_status_page_html,
                                        lb_status_page_html_len};
        js = (struct lb_status_asset){"text/javascript; charset=utf-8", lb_status_page_js,
                                      lb_status_page_js_len};
        css = (struct lb_status_asset){"text/css; charset=utf-8", lb_status_page_css,
                                       lb_status_page_css_len};
    }
    if (strcmp(path, "/") == 0 || strcmp(path, "/status") == 0)
        return &html;
    if (strcmp(path, "/status.js") == 0)
        return &js;
    if (strcmp(path, "/status.css") == 0)
        return &css;
    return NULL;
}

/* ---- JSON ---- */

static int json_raw(struct lb_buf *out, const char *s)
{
    return lb_buf_append(out, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (at most `left` bytes), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s, size_t left)
{
    size_t n;
    uint32_t cp;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        n = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n > left)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* Appends s as a JSON string (NULL: null). */
static int json_str(struct lb_buf *out, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t left;
    int rc;

    if (!s)
        return json_raw(out, "null");
    left = strlen(s);
    rc = json_raw(out, "\"");
    while (!rc && left) {
        size_t run = 0, n;

        /* Copy the longest run that needs no escape at once. */
        while (run < left && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\' &&
               p[run] != '<' && p[run] != '>' && p[run] != '&')
            run++;
        if (run) {
            rc = lb_buf_append(out, p, run);
            p += run;
            left -= run;
            continue;
        }
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};

            rc = lb_buf_append(out, esc, 2);
            n = 1;
        } else if (*p < 0x80) {
            rc = lb_buf_printf(out, "\\u%04x", *p); /* control characters, <, >, & */
            n = 1;
        } else if ((n = utf8_len(p, left)) != 0) {
            rc = lb_buf_append(out, p, n);
        } else {
            rc = json_raw(out, "\\ufffd");
            n = 1;
        }
        p += n;
        left -= n;
    }
    if (!rc)
        rc = json_raw(out, "\"");
    return rc;
}

static int json_key(struct lb_buf *out, bool first, const char *key)
{
    return lb_buf_printf(out, "%s\"%s\":", first ? "" : ",", key);
}

static int json_key_str(struct lb_buf *out, bool first, const char *key, const char *value)
{
    int rc = json_key(out, first, key);

    return rc ? rc : json_str(out, value);
}

static int json_key_u64(struct lb_buf *out, const char *key, uint64_t value)
{
    return lb_buf_printf(out, ",\"%s\":%" PRIu64, key, value);
}

static int json_key_bool(struct lb_buf *out, const char *key, bool value)
{
    return lb_buf_printf(out, ",\"%s\":%s", key, value ? "true" : "false");
}

static const char *health_name(enum lb_health_state h)
{
    return h == LB_HEALTH_UP ? "up" : h == LB_HEALTH_DOWN ? "down" : "unknown";
}

static const char *override_name(enum lb_health_override o)
{
    return o == LB_HEALTH_FORCE_UP ? "up" : o == LB_HEALTH_FORCE_DOWN ? "down" : "auto";
}

/* The admin API's BackendState, as lbctl spells it. */
static const char *state_name(enum lb_backend_state st)
{
    switch (st) {
    case LB_BACKEND_UP:
        return "up";
    case LB_BACKEND_SLOW_START:
        return "slow_start";
    case LB_BACKEND_DOWN:
        return "down";
    case LB_BACKEND_EJECTED:
        return "ejected";
    case LB_BACKEND_DRAINING:
        return "draining";
    case LB_BACKEND_DRAINED:
        return "drained";
    case LB_BACKEND_REMOVED:
        return "removed";
    case LB_BACKEND_UNRESOLVED:
        return "unresolved";
    case LB_BACKEND_REFUSED:
        return "refused";
    default: /* a state newer than this page */
        break;
    }
    return "unknown";
}

/* A backend object: the fields of `lbctl -o json backends`, same names, and its state. */
static int json_backend(struct lb_buf *out, const struct lb_backend_info *b)
{
    int rc = json_raw(out, "{");

    if (!rc)
        rc = json_key_str(out, true, "pool", b->pool);
    if (!rc)
        rc = json_key_str(out, false, "id", b->id);
    if (!rc)
        rc = json_key_str(out, false, "addr", b->addr);
    if (!rc)
        rc = json_key_str(out, false, "zone", b->zone ? b->zone : "");
    if (!rc)
        rc = json_key_u64(out, "weight", b->weight);
    if (!rc)
        rc = b->has_weight_override ? json_key_u64(out, "weight_override", b->weight_override)
                                    : json_raw(out, ",\"weight_override\":null");
    if (!rc)
        rc = json_key_u64(out, "effective_weight", b->effective_weight);
    if (!rc)
        rc = json_key_bool(out, "drain", b->drain);
    if (!rc)
        rc = json_key_bool(out, "drained", b->drained);
    if (!rc)
        rc = json_key_str(out, false, "state", state_name(b->state));
    if (!rc)
        rc = json_key_str(out, false, "health", health_name(b->health));
    if (!rc)
        rc = json_key_str(out, false, "health_override", override_name(b->health_override));
    if (!rc)
        rc = json_key_u64(out, "active_connections", b->active);
    if (!rc)
        rc = json_key_u64(out, "total_connections", b->total);
    if (!rc)
        rc = json_key_u64(out, "connect_failures", b->connect_failures);
    if (!rc)
        rc = json_key_u64(out, "retries", b->retries);
    if (!rc)
        rc = json_key_u64(out, "bytes_in", b->bytes_in);
    if (!rc)
        rc = json_key_u64(out, "bytes_out", b->bytes_out);
    if (!rc)
        rc = json_raw(out, "}");
    return rc;
}

struct render {
    struct lb_registry *registry;
    struct lb_buf *out;
    bool first;
    int rc; /* the first error */
};

static void render_pool(void *ud, const struct lb_pool_info *p)
{
    struct render *rd = ud;
    struct lb_buf *out = rd->out;
    int rc = rd->rc;

    if (!rc)
        rc = json_raw(out, rd->first ? "{" : ",{");
    if (!rc)
        rc = json_key_str(out, true, "name", p->name);
    if (!rc)
        rc = json_key_str(out, false, "listen", p->listen);
    if (!rc)
        rc = json_key_str(out, false, "algorithm", p->algorithm);
    if (!rc)
        rc = json_key_u64(out, "backends", p->backends);
    if (!rc)
        rc = json_key_u64(out, "eligible", p->eligible);
    if (!rc)
        rc = json_key_u64(out, "active_connections", p->active);
    if (!rc)
        rc = json_key_u64(out, "total_connections", p->total);
    if (!rc)
        rc = json_key_u64(out, "queued", p->queued);
    if (!rc)
        rc = json_key_bool(out, "panic", lb_control_pool_in_panic(rd->registry, p->name));
    if (!rc) {
        /* null: zone affinity off; true: local zone only; false: spilling over */
        int zl = lb_control_pool_zone_local(rd->registry, p->name);

        rc = lb_buf_printf(out, ",\"zone_local\":%s", zl < 0 ? "null" : zl ? "true" : "false");
    }
    if (!rc)
        rc = json_raw(out, "}");
    rd->first = false;
    rd->rc = rc;
}

static void render_backend(void *ud, const struct lb_backend_info *b)
{
    struct render *rd = ud;

    if (!rd->rc && !rd->first)
        rd->rc = json_raw(rd->out, ",");
    if (!rd->rc)
        rd->rc = json_backend(rd->out, b);
    rd->first = false;
}

static int64_t now_unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int lb_status_render_json(struct lb_registry *r, struct lb_buf *out)
{
    struct render rd = {.registry = r, .out = out, .first = true};

    rd.rc = lb_buf_printf(out, "{\"lbd\":{\"version\":\"%s\",\"ready\":%s,\"unix_ms\":%" PRId64 "}",
                          LB_VERSION, lb_control_is_ready(r) ? "true" : "false", now_unix_ms());
    if (!rd.rc)
        rd.rc = json_raw(out, ",\"pools\":[");
    if (!rd.rc)
        lb_control_list_pools(r, render_pool, &rd);
    if (!rd.rc)
        rd.rc = json_raw(out, "],\"backends\":[");
    rd.first = true;
    if (!rd.rc)
        lb_control_list_backends(r, NULL, render_backend, &rd);
    if (!rd.rc)
        rd.rc = json_raw(out, "]}\n");
    return rd.rc;
}

/* ---- event streams ---- */

struct lb_status {
    struct ev_loop *loop;
    struct lb_registry *registry;
    struct lb_subscription *sub; /* while streams is not empty */
    struct lb_list streams;
    unsigned n_streams;
    ev_timer heartbeat;
    struct lb_buf event; /* one event formatted, appended to every stream */
};

struct lb_status_stream {
    struct lb_list link; /* st->streams */
    struct lb_status *st;
    struct lb_buf queue;
    bool ended;
    bool waiting; /* a read returned 0: wake when there is something */
    void (*wake)(void *ud);
    void *ud;
};

static const char *event_type_name(enum lb_event_type t)
{
    switch (t) {
    case LB_EVENT_BACKEND_ADDED:
        return "backend_added";
    case LB_EVENT_BACKEND_CHANGED:
        return "backend_changed";
    case LB_EVENT_BACKEND_REMOVED:
        return "backend_removed";
    case LB_EVENT_POLICY_CHANGED:
        return "policy_changed";
    case LB_EVENT_HEALTH_CHANGED:
        return "health_changed";
    case LB_EVENT_DRAINED:
        return "drained";
    default: /* a type newer than this page */
        break;
    }
    return "unknown";
}

static void stream_wake(struct lb_status_stream *s)
{
    if (s->waiting) {
        s->waiting = false;
        s->wake(s->ud);
    }
}

/* Queues bytes for s; a queue that would pass its maximum ends the stream instead. */
static void stream_push(struct lb_status_stream *s, const char *data, size_t len)
{
    if (s->ended)
        return;
    if (lb_buf_append(&s->queue, data, len) < 0) {
        /* Too far behind: the owner is told at once, waiting for a read or not. */
        s->ended = true;
        s->waiting = false;
        lb_buf_free(&s->queue);
        s->wake(s->ud);
        return;
    }
    stream_wake(s);
}

static void stream_push_all(struct lb_status *st, const char *data, size_t len)
{
    struct lb_list *pos;

    lb_list_for_each(pos, &st->streams)
    {
        stream_push(lb_list_entry(pos, struct lb_status_stream, link), data, len);
    }
}

/* One SSE message: `data: {...}` and a blank line. */
/* One SSE message: `data: {...}` and a blank line; `backend` is the state after the event. */
static int format_event(const struct lb_event *ev, struct lb_buf *out)
{
    int rc = json_raw(out, "data: {");

    if (!rc)
        rc = json_key_str(out, true, "type", event_type_name(ev->type));
    if (!rc)
        rc = json_key_str(out, false, "pool", ev->pool);
    if (!rc)
        rc = json_key_str(out, false, "id", ev->id);
    if (!rc)
        rc = json_key_str(out, false, "state", ev->backend ? state_name(ev->backend->state) : NULL);
    if (!rc)
        rc = json_key_str(out, false, "detail", ev->detail ? ev->detail : "");
    if (!rc)
        rc = lb_buf_printf(out, ",\"unix_ms\":%" PRId64 ",\"backend\":", ev->unix_ms);
    if (!rc)
        rc = ev->backend ? json_backend(out, ev->backend) : json_raw(out, "null");
    if (!rc)
        rc = json_raw(out, "}\n\n");
    return rc;
}

static void status_event_cb(void *ud, const struct lb_event *ev)
{
    struct lb_status *st = ud;

    lb_buf_reset(&st->event);
    if (format_event(ev, &st->event) < 0)
        return; /* cannot happen within EVENT_JSON_MAX: ids and addresses are bounded */
    stream_push_all(st, st->event.data, st->event.len);
}

static void status_heartbeat_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_status *st = lb_container_of(w, struct lb_status, heartbeat);
    static const char beat[] = ": heartbeat\n\n";

    stream_push_all(st, beat, sizeof(beat) - 1);
}

int lb_status_new(struct ev_loop *loop, struct lb_registry *r, struct lb_status **out)
{
    struct lb_status *st = calloc(1, sizeof(*st));

    if (!st)
        return -ENOMEM;
    st->loop = loop;
    st->registry = r;
    lb_list_init(&st->streams);
    lb_buf_init(&st->event, EVENT_JSON_MAX);
    ev_timer_init(&st->heartbeat, status_heartbeat_cb, HEARTBEAT_S, HEARTBEAT_S);
    *out = st;
    return 0;
}

void lb_status_free(struct lb_status *st)
{
    if (!st)
        return;
    ev_timer_stop(st->loop, &st->heartbeat);
    if (st->sub)
        lb_control_unsubscribe(st->registry, st->sub);
    lb_buf_free(&st->event);
    free(st);
}

unsigned lb_status_stream_count(const struct lb_status *st)
{
    return st->n_streams;
}

struct lb_status_stream *lb_status_stream_open(struct lb_status *st, void (*wake)(void *ud),
                                               void *ud)
{
    static const char hello[] = "retry: 2000\n: lbd events\n\n";
    struct lb_status_stream *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    if (!st->sub) {
        st->sub = lb_control_subscribe(st->registry, status_event_cb, st);
        if (!st->sub) {
            free(s);
            return NULL;
        }
    }
    s->st = st;
    s->wake = wake;
    s->ud = ud;
    lb_buf_init(&s->queue, STREAM_QUEUE_MAX);
    lb_list_insert_tail(&st->streams, &s->link);
    st->n_streams++;
    if (!ev_is_active(&st->heartbeat))
        ev_timer_start(st->loop, &st->heartbeat);
    /* The client's EventSource hears "open" at once, and retries every 2 s once cut. */
    stream_push(s, hello, sizeof(hello) - 1);
    return s;
}

ssize_t lb_status_stream_read(struct lb_status_stream *s, char *buf, size_t max)
{
    size_t n;

    if (s->ended)
        return -1;
    if (!s->queue.len) {
        s->waiting = true;
        return 0;
    }
    n = s->queue.len < max ? s->queue.len : max;
    memcpy(buf, s->queue.data, n);
    lb_buf_consume(&s->queue, n);
    return (ssize_t)n;
}

bool lb_status_stream_has_ended(const struct lb_status_stream *s)
{
    return s->ended;
}

void lb_status_stream_end(struct lb_status_stream *s)
{
    s->ended = true;
    s->waiting = false;
    lb_buf_free(&s->queue);
}

void lb_status_stream_close(struct lb_status_stream *s)
{
    struct lb_status *st;

    if (!s)
        return;
    st = s->st;
    lb_list_remove(&s->link);
    st->n_streams--;
    lb_buf_free(&s->queue);
    free(s);
    if (!st->n_streams) {
        ev_timer_stop(st->loop, &st->heartbeat);
        lb_control_unsubscribe(st->registry, st->sub);
        st->sub = NULL;
    }
}
