/*
 * Watch stream decoding.  The splitter hands out lines straight from the
 * caller's slice when a whole line is in it, and copies only the pieces of
 * lines that straddle two slices, so a stream costs one copy of its partial
 * line at most.  The decoder keeps one message; fragments append their
 * events to it until the closing line arrives.
 *
 * Events are read leniently (lb_etcd_json_read_kv()): values are decoded
 * only up to LB_VALUE_MAX, the largest value lbd parses, and an event with
 * a key too long, a value too large or anything malformed stays in the
 * message, flagged, for the mirror to skip and count.  A line fails as a
 * whole only when it is not a watch message at all.
 */
#include "lb_watch_decode.h"
#include "lb_error.h"
#include "lb_value.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void lb_watch_lines_init(struct lb_watch_lines *s, size_t max_line)
{
    lb_buf_init(&s->partial, max_line);
    s->skipping = false;
}

void lb_watch_lines_reset(struct lb_watch_lines *s)
{
    lb_buf_reset(&s->partial);
    s->skipping = false;
}

void lb_watch_lines_free(struct lb_watch_lines *s)
{
    lb_buf_free(&s->partial);
    s->skipping = false;
}

static int emit_line(const char *line, size_t len, lb_watch_line_cb cb, void *ud)
{
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len == 0)
        return 0; /* blank lines carry nothing */
    return cb(ud, line, len, 0);
}

int lb_watch_lines_feed(struct lb_watch_lines *s, const char *data, size_t len, lb_watch_line_cb cb,
                        void *ud)
{
    const char *p = data, *end = data + len;
    int rc;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t seg = nl ? (size_t)(nl - p) : (size_t)(end - p);

        if (s->skipping) {
            if (nl)
                s->skipping = false;
            p += seg + (nl ? 1 : 0);
            continue;
        }
        rc = 0;
        if (!nl || s->partial.len > 0) {
            rc = lb_buf_append(&s->partial, p, seg);
            if (rc < 0) {
                /* too long (or no memory for it): drop the line, resync at '\n' */
                lb_buf_reset(&s->partial);
                s->skipping = nl == NULL;
                p += seg + (nl ? 1 : 0);
                rc = cb(ud, NULL, 0, rc == -ENOMEM ? -ENOMEM : -E2BIG);
                if (rc)
                    return rc;
                continue;
            }
            if (nl) {
                rc = emit_line(s->partial.data, s->partial.len, cb, ud);
                lb_buf_reset(&s->partial);
            }
        } else if (seg > s->partial.max) {
            rc = cb(ud, NULL, 0, -E2BIG);
        } else {
            rc = emit_line(p, seg, cb, ud);
        }
        p += seg + (nl ? 1 : 0);
        if (rc)
            return rc;
    }
    return 0;
}

void lb_watch_decoder_init(struct lb_watch_decoder *d)
{
    memset(d, 0, sizeof(*d));
}

static void clear_msg(struct lb_watch_decoder *d)
{
    struct lb_watch_event *events = d->msg.events;

    for (size_t i = 0; i < d->msg.n_events; i++)
        lb_etcd_kv_free(&events[i].kv);
    memset(&d->msg, 0, sizeof(d->msg));
    d->msg.events = events; /* keep the array for the next message */
    d->msg_bytes = 0;
}

void lb_watch_decoder_reset(struct lb_watch_decoder *d)
{
    clear_msg(d);
    d->merging = false;
}

void lb_watch_decoder_free(struct lb_watch_decoder *d)
{
    clear_msg(d);
    free(d->msg.events);
    memset(d, 0, sizeof(*d));
}

static int get_flag(json_object *obj, const char *name, bool *out, char **err)
{
    json_object *v = NULL;

    *out = false;
    if (!json_object_object_get_ex(obj, name, &v) || !v)
        return 0;
    if (!json_object_is_type(v, json_type_boolean))
        return lb_error_set(err, -EINVAL, "watch message field \"%s\" is not a boolean", name);
    *out = json_object_get_boolean(v);
    return 0;
}

static int reserve_events(struct lb_watch_decoder *d, size_t more, char **err)
{
    size_t need = d->msg.n_events + more, cap = d->events_cap ? d->events_cap : 8;
    struct lb_watch_event *events;

    if (need > LB_WATCH_EVENTS_MAX)
        return lb_error_set(err, -E2BIG, "watch response holds more than %d events",
                            LB_WATCH_EVENTS_MAX);
    if (need <= d->events_cap)
        return 0;
    while (cap < need)
        cap *= 2;
    events = realloc(d->msg.events, cap * sizeof(*events));
    if (!events)
        return lb_error_set(err, -ENOMEM, "out of memory holding watch events");
    d->msg.events = events;
    d->events_cap = cap;
    return 0;
}

/* Marks an event's kv flawed (keeping its first flaw); a flawed kv holds no value. */
static void event_flaw(struct lb_watch_event *ev, const char *why)
{
    if (ev->kv.flaw == LB_ETCD_FLAW_NONE) {
        ev->kv.flaw = LB_ETCD_FLAW_MALFORMED;
        ev->kv.flaw_why = why;
    }
    if (ev->kv.value_len > 0) {
        ev->kv.value_size = ev->kv.value_len;
        ev->kv.value_len = 0;
        ev->kv.value[0] = '\0';
    }
}

/*
 * Decodes one event leniently: an event that cannot be used is kept with
 * its kv flagged (lb_etcd_json_read_kv()), so the other events of the
 * response still apply.  Returns 0, or -ENOMEM with *err.
 */
static int decode_event(json_object *e, struct lb_watch_event *out, char **err)
{
    json_object *type = NULL, *kv = NULL, *prev = NULL;
    const char *bad_type = NULL, *bad_prev = NULL;

    memset(out, 0, sizeof(*out));
    if (!json_object_is_type(e, json_type_object)) {
        if (lb_etcd_json_read_kv(NULL, LB_VALUE_MAX, &out->kv) < 0)
            return lb_error_set(err, -ENOMEM, "out of memory decoding a watch event");
        event_flaw(out, "a watch event is not an object");
        return 0;
    }
    if (json_object_object_get_ex(e, "type", &type) && type) {
        const char *t =
            json_object_is_type(type, json_type_string) ? json_object_get_string(type) : "";

        if (strcmp(t, "DELETE") == 0)
            out->deleted = true;
        else if (strcmp(t, "PUT") != 0)
            bad_type = "a watch event has an unknown type";
    }
    if (json_object_object_get_ex(e, "prev_kv", &prev) && prev) {
        if (!json_object_is_type(prev, json_type_object) ||
            lb_etcd_json_get_int64(prev, "lease", &out->prev_lease) < 0)
            bad_prev = "a watch event has a bad prev_kv";
    }
    json_object_object_get_ex(e, "kv", &kv);
    if (lb_etcd_json_read_kv(kv, LB_VALUE_MAX, &out->kv) < 0)
        return lb_error_set(err, -ENOMEM, "out of memory decoding a watch event");
    if (!kv)
        event_flaw(out, "a watch event has no kv");
    if (bad_type)
        event_flaw(out, bad_type);
    if (bad_prev)
        event_flaw(out, bad_prev);
    if (out->deleted && out->kv.flaw == LB_ETCD_FLAW_NONE && out->kv.value_len > 0)
        event_flaw(out, "a DELETE event carries a value");
    return 0;
}

static int decode_result(struct lb_watch_decoder *d, json_object *result, bool *fragment,
                         char **err)
{
    struct lb_watch_msg *m = &d->msg;
    json_object *header = NULL, *events = NULL, *reason = NULL;
    size_t n;
    int rc;

    if (!json_object_is_type(result, json_type_object))
        return lb_error_set(err, -EINVAL, "watch message \"result\" is not an object");
    json_object_object_get_ex(result, "header", &header);
    rc = lb_etcd_json_parse_header(header, &m->header, err);
    if (!rc)
        rc = get_flag(result, "created", &m->created, err);
    if (!rc)
        rc = get_flag(result, "canceled", &m->canceled, err);
    if (!rc)
        rc = get_flag(result, "fragment", fragment, err);
    if (rc)
        return rc;
    if (lb_etcd_json_get_int64(result, "watch_id", &m->watch_id) < 0 ||
        lb_etcd_json_get_int64(result, "compact_revision", &m->compact_revision) < 0)
        return lb_error_set(err, -EINVAL,
                            "watch message has a watch_id or compact_revision "
                            "that is not a number");
    if (json_object_object_get_ex(result, "cancel_reason", &reason) && reason) {
        if (!json_object_is_type(reason, json_type_string))
            return lb_error_set(err, -EINVAL, "watch message cancel_reason is not a string");
        snprintf(m->cancel_reason, sizeof(m->cancel_reason), "%s", json_object_get_string(reason));
    }
    if (!json_object_object_get_ex(result, "events", &events) || !events)
        return 0;
    if (!json_object_is_type(events, json_type_array))
        return lb_error_set(err, -EINVAL, "watch message \"events\" is not an array");
    n = json_object_array_length(events);
    rc = reserve_events(d, n, err);
    for (size_t i = 0; i < n && !rc; i++) {
        struct lb_watch_event *e = &m->events[m->n_events];

        rc = decode_event(json_object_array_get_idx(events, i), e, err);
        if (rc)
            break;
        m->n_events++;
        d->msg_bytes += e->kv.key_len + e->kv.value_len;
        if (d->msg_bytes > LB_WATCH_MSG_BYTES_MAX)
            rc = lb_error_set(err, -E2BIG, "watch response larger than %zu bytes",
                              LB_WATCH_MSG_BYTES_MAX);
    }
    return rc;
}

int lb_watch_decoder_line(struct lb_watch_decoder *d, const char *line, size_t len,
                          const struct lb_watch_msg **out, char **err)
{
    json_object *root = NULL, *result = NULL, *error = NULL;
    bool fragment = false;
    int rc;

    *out = NULL;
    if (!d->merging)
        clear_msg(d);
    rc = lb_etcd_json_parse(line, len, &root, err);
    if (rc)
        goto out;
    if (!json_object_is_type(root, json_type_object)) {
        rc = lb_error_set(err, -EINVAL, "watch message is not a JSON object");
        goto out;
    }
    if (json_object_object_get_ex(root, "error", &error) && error) {
        int code;
        char *message = NULL;

        if (lb_etcd_json_parse_error(line, len, &code, &message) == 0) {
            rc = lb_error_set(err, -EPROTO, "etcd ended the watch: %s (code %d)", message, code);
            free(message);
        } else {
            rc = lb_error_set(err, -EPROTO, "etcd ended the watch with an unreadable error");
        }
        goto out;
    }
    if (!json_object_object_get_ex(root, "result", &result) || !result) {
        rc = lb_error_set(err, -EINVAL, "watch message has no \"result\"");
        goto out;
    }
    rc = decode_result(d, result, &fragment, err);
    if (rc)
        goto out;
    if (fragment) {
        d->merging = true;
        goto out; /* 0: wait for the rest */
    }
    d->merging = false;
    d->msg.progress = !d->msg.created && !d->msg.canceled && d->msg.n_events == 0;
    *out = &d->msg;
    rc = 1;
out:
    json_object_put(root);
    if (rc < 0) {
        clear_msg(d);
        d->merging = false;
    }
    return rc;
}

int64_t lb_watch_msg_resume_revision(const struct lb_watch_msg *msg)
{
    int64_t high = 0;

    if (msg->canceled || msg->created)
        return 0;
    if (msg->progress)
        return msg->header.revision;
    for (size_t i = 0; i < msg->n_events; i++)
        if (msg->events[i].kv.mod_revision > high)
            high = msg->events[i].kv.mod_revision;
    return high;
}
