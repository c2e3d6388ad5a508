/*
 * Skip counters and their rate-limited log lines.  The limiter is a token
 * bucket per kind of line (burst LB_SKIP_LOG_BURST, one token per
 * LB_SKIP_LOG_INTERVAL_S); the counters are plain totals read by the
 * metrics.  A key is quoted from its bytes, not as a C string: etcd keys
 * may hold NULs, and the interesting part of a 5,000-byte key is its
 * beginning.
 */
#include "lb_skip.h"
#include "lb_log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *const reason_names[LB_SKIP_REASONS] = {
    [LB_SKIP_KEY_TOO_LONG] = "key_too_long", [LB_SKIP_VALUE_TOO_LARGE] = "value_too_large",
    [LB_SKIP_MALFORMED] = "malformed",       [LB_SKIP_BAD_KEY] = "bad_key",
    [LB_SKIP_BAD_VALUE] = "bad_value",       [LB_SKIP_TOO_MANY_KEYS] = "too_many_keys",
};

const char *lb_skip_reason_name(enum lb_skip_reason reason)
{
    return (unsigned)reason < LB_SKIP_REASONS ? reason_names[reason] : "unknown";
}

static const char *kind_name(int kind)
{
    return kind == LB_SKIP_LOG_CLAMPED ? "clamped" : lb_skip_reason_name(kind);
}

/* --- token bucket ---------------------------------------------------------------------- */

static void refill(struct lb_log_limit *l, double now)
{
    if (!l->started) {
        l->started = true;
        l->tokens = LB_SKIP_LOG_BURST;
        l->refilled = now;
        return;
    }
    if (now > l->refilled) {
        l->tokens += (now - l->refilled) / LB_SKIP_LOG_INTERVAL_S;
        if (l->tokens > LB_SKIP_LOG_BURST)
            l->tokens = LB_SKIP_LOG_BURST;
    }
    l->refilled = now;
}

bool lb_log_limit_take(struct lb_log_limit *l, double now, uint64_t *suppressed)
{
    refill(l, now);
    *suppressed = 0;
    if (l->tokens < 1.0) {
        l->suppressed++;
        return false;
    }
    l->tokens -= 1.0;
    *suppressed = l->suppressed;
    l->suppressed = 0;
    return true;
}

bool lb_log_limit_flush(struct lb_log_limit *l, double now, uint64_t *suppressed, double *due_s)
{
    *suppressed = 0;
    *due_s = -1;
    if (l->suppressed == 0)
        return false;
    refill(l, now);
    if (l->tokens < 1.0) {
        *due_s = (1.0 - l->tokens) * LB_SKIP_LOG_INTERVAL_S;
        return false;
    }
    l->tokens -= 1.0;
    *suppressed = l->suppressed;
    l->suppressed = 0;
    return true;
}

/* --- lines ----------------------------------------------------------------------------- */

static double monotonic_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void lb_skip_log_init(struct lb_skip_log *s)
{
    memset(s, 0, sizeof(*s));
    s->clock = monotonic_now;
}

const char *lb_skip_quote_key(char *buf, size_t size, const char *key, size_t key_len,
                              size_t key_size)
{
    size_t o = 0;
    bool cut = key_size > key_len;

    if (size < 8) {
        if (size)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (size_t i = 0; i < key_len; i++) {
        unsigned char c = (unsigned char)key[i];
        char esc[5];
        size_t elen;

        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            snprintf(esc, sizeof(esc), "\\x%02x", c);
            elen = 4;
        } else {
            esc[0] = (char)c;
            elen = 1;
        }
        if (o + elen + 5 > size) { /* room for ...", NUL */
            cut = true;
            break;
        }
        memcpy(buf + o, esc, elen);
        o += elen;
    }
    if (cut) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/*
 * Whether the line of limiter `slot` may be written now: if so, `tail`
 * gets " suppressed=N" for the lines left out since the last; if not,
 * qkey (as quoted for last_key) is kept as the last key left out.
 */
static bool skip_log_take(struct lb_skip_log *s, size_t slot, const char *qkey, char *tail,
                          size_t tail_size)
{
    uint64_t suppressed;

    if (!lb_log_limit_take(&s->limits[slot], s->clock(), &suppressed)) {
        memcpy(s->last_key[slot], qkey, sizeof(s->last_key[slot]));
        return false;
    }
    if (suppressed)
        snprintf(tail, tail_size, " suppressed=%llu", (unsigned long long)suppressed);
    return true;
}

void lb_skip_note(struct lb_skip_log *s, enum lb_skip_reason reason, const char *msg,
                  const char *key, size_t key_len, size_t key_size, const char *why)
{
    char qkey[96], qwhy[256], tail[48] = "";

    if ((unsigned)reason >= LB_SKIP_REASONS)
        return;
    s->skipped[reason]++;
    if (key_size < key_len)
        key_size = key_len;
    lb_skip_quote_key(qkey, sizeof(qkey), key, key_len, key_size);
    if (!skip_log_take(s, reason, qkey, tail, sizeof(tail)))
        return;
    LB_WARN("watcher", "msg=\"%s\" reason=%s key=%s key_bytes=%zu error=%s%s", msg,
            reason_names[reason], qkey, key_size,
            lb_log_quote(qwhy, sizeof(qwhy), why && why[0] ? why : "-"), tail);
}

void lb_skip_note_clamped(struct lb_skip_log *s, const char *key, size_t key_len, const char *field,
                          const char *given, const char *used, const char *why)
{
    char qkey[96], qfield[64], qgiven[64], qused[64], qwhy[128], tail[48] = "";

    s->clamped++;
    lb_skip_quote_key(qkey, sizeof(qkey), key, key_len, key_len);
    if (!skip_log_take(s, LB_SKIP_LOG_CLAMPED, qkey, tail, sizeof(tail)))
        return;
    LB_WARN("watcher",
            "msg=\"value out of range, clamped\" reason=clamped key=%s field=%s value=%s used=%s "
            "why=%s%s",
            qkey, lb_log_quote(qfield, sizeof(qfield), field),
            lb_log_quote(qgiven, sizeof(qgiven), given), lb_log_quote(qused, sizeof(qused), used),
            lb_log_quote(qwhy, sizeof(qwhy), why), tail);
}

void lb_skip_note_unknown(struct lb_skip_log *s, const char *key, size_t key_len, const char *text)
{
    char qkey[96], qtext[300], tail[48] = "";

    s->unknown_fields++;
    if (!text)
        return;
    lb_skip_quote_key(qkey, sizeof(qkey), key, key_len, key_len);
    if (!skip_log_take(s, LB_SKIP_LOG_CLAMPED, qkey, tail, sizeof(tail)))
        return;
    LB_WARN("watcher",
            "msg=\"unknown field ignored, the rest of the policy applies\" reason=unknown_field "
            "key=%s error=%s%s",
            qkey, lb_log_quote(qtext, sizeof(qtext), text), tail);
}

double lb_skip_log_flush(struct lb_skip_log *s)
{
    double now = s->clock(), next = -1, due;
    uint64_t suppressed;

    for (int kind = 0; kind < LB_SKIP_LOG_KINDS; kind++) {
        if (lb_log_limit_flush(&s->limits[kind], now, &suppressed, &due)) {
            LB_WARN("watcher",
                    "msg=\"etcd keys skipped, log lines suppressed\" reason=%s suppressed=%llu "
                    "last_key=%s",
                    kind_name(kind), (unsigned long long)suppressed, s->last_key[kind]);
            continue;
        }
        if (due >= 0 && (next < 0 || due < next))
            next = due;
    }
    return next;
}
