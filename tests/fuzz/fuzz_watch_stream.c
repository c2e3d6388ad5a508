/*
 * Fuzzes the watch stream path as the watcher runs it: line splitter (with
 * a line maximum of 256 KiB, so oversized lines happen, while keys over
 * LB_ETCD_KEY_MAX and values over LB_VALUE_MAX still fit in a line),
 * message decoder with fragment merging, and the mirror behind it,
 * skipping bad events and writing its rate-limited log lines.  The first
 * byte picks the slice size the input is fed in.  Anything may be refused;
 * nothing may crash, leak or trip a sanitizer, and a flawed event never
 * reaches the sink.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "lb_log.h"
#include "lb_mirror.h"
#include "lb_value.h"
#include "lb_watch_decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct state {
    struct lb_watch_decoder dec;
    struct lb_mirror *mirror;
    unsigned long applies;
};

static void apply(void *ctx, const struct lb_update *u)
{
    struct state *s = ctx;

    /* what reaches the sink is always in range */
    if ((u->kind == LB_UPDATE_BACKEND_PUT &&
         (u->u.backend.weight < 0 || u->u.backend.weight > LB_WEIGHT_MAX)) ||
        (u->kind == LB_UPDATE_POLICY_PUT &&
         (u->u.policy.health.timeout_ms > u->u.policy.health.interval_ms ||
          u->u.policy.health.interval_ms < LB_POLICY_INTERVAL_MIN_MS)))
        abort();
    s->applies += (unsigned long)u->kind + (u->pool[0] != '\0');
}

static void commit(void *ctx)
{
}

static int on_line(void *ud, const char *line, size_t len, int status)
{
    struct state *s = ud;
    const struct lb_watch_msg *msg;
    char *err = NULL;

    if (status < 0)
        return 0;
    if (lb_watch_decoder_line(&s->dec, line, len, &msg, &err) == 1) {
        (void)lb_watch_msg_resume_revision(msg);
        for (size_t i = 0; i < msg->n_events; i++) {
            const struct lb_etcd_kv *kv = &msg->events[i].kv;

            /* a kv the decoder kept is always printable and bounded */
            if (!kv->key || !kv->value || kv->key_len > LB_ETCD_KEY_MAX ||
                kv->value_len > LB_VALUE_MAX || (kv->flaw && kv->value_len != 0))
                abort();
        }
        lb_mirror_apply_events(s->mirror, msg);
        lb_mirror_flush_log(s->mirror);
    }
    free(err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lb_update_sink sink = {apply, commit, NULL};
    struct lb_watch_lines lines;
    struct state s;
    size_t slice;

    if (size < 1)
        return 0;
    lb_log_set_level(LB_LOG_ERROR);
    slice = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    s.applies = 0;
    sink.ctx = &s;
    if (lb_mirror_new("/lb/", &sink, &s.mirror) < 0)
        return 0;
    lb_watch_decoder_init(&s.dec);
    lb_watch_lines_init(&lines, 256 * 1024);
    for (size_t off = 0; off < size; off += slice)
        lb_watch_lines_feed(&lines, (const char *)data + off,
                            size - off < slice ? size - off : slice, on_line, &s);
    lb_watch_lines_free(&lines);
    lb_watch_decoder_free(&s.dec);
    lb_mirror_free(s.mirror);
    return 0;
}
