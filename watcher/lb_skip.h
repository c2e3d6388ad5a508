/*
 * Keys lbd skips, and how it says so.  Anyone who can write under the
 * prefix (every self-registering backend) can write keys and values lbd
 * cannot use: a key too long to be of the schema, a value larger than any
 * value lbd reads, an entry that does not decode, a name that breaks the
 * schema.  None of them may stop discovery: each is skipped, counted by
 * reason (lbd_etcd_skipped_keys_total{reason=...}) and logged with its key,
 * quoted and cut short, while the rest of the listing or watch response is
 * applied.
 *
 * A flood of them must not flood the log either.  Each kind of line has
 * its own token bucket: LB_SKIP_LOG_BURST lines at once, then one per
 * LB_SKIP_LOG_INTERVAL_S; lines left out are counted and the count rides
 * on the next line of that kind ("suppressed=N"), or on a summary line
 * written by lb_skip_log_flush() once the interval has passed, so that a
 * flood that stops is still reported.  Kinds are separate so that a flood
 * of junk keys cannot hide the one line about a typo in a pool's policy.
 *
 * Pure: time comes in as seconds on a monotonic clock; nothing here knows
 * the loop.
 */
#ifndef LB_SKIP_H
#define LB_SKIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Why a key was skipped (the reason label of lbd_etcd_skipped_keys_total). */
enum lb_skip_reason {
    LB_SKIP_KEY_TOO_LONG,    /* longer than LB_ETCD_KEY_MAX: cannot be a schema key */
    LB_SKIP_VALUE_TOO_LARGE, /* value above LB_VALUE_MAX (no value lbd reads is that
                              * large), or past the bytes one listing may hold */
    LB_SKIP_MALFORMED,       /* an entry or event that does not decode */
    LB_SKIP_BAD_KEY,         /* under <prefix>pools/ but not of the schema, or a bad name */
    LB_SKIP_BAD_VALUE,       /* a schema key whose value does not parse */
    LB_SKIP_TOO_MANY_KEYS,   /* past LB_MIRROR_MAX_KEYS schema keys */
    LB_SKIP_REASONS
};

/* "key_too_long", "value_too_large", ... */
const char *lb_skip_reason_name(enum lb_skip_reason reason);

/* Kinds of log lines that are limited: one per skip reason, plus clamped values. */
#define LB_SKIP_LOG_CLAMPED LB_SKIP_REASONS
#define LB_SKIP_LOG_KINDS   (LB_SKIP_REASONS + 1)

#define LB_SKIP_LOG_BURST      5
#define LB_SKIP_LOG_INTERVAL_S 1.0

/* A token bucket for one kind of line. */
struct lb_log_limit {
    double tokens;       /* lines that may be written now */
    double refilled;     /* when tokens was last brought up to date */
    bool started;        /* refilled is valid */
    uint64_t suppressed; /* lines left out since the last one written */
};

/*
 * A line of this kind is due at `now`: returns true when it may be
 * written, with *suppressed set to the lines left out before it (then
 * reset); false when it is left out (and counted).
 */
bool lb_log_limit_take(struct lb_log_limit *l, double now, uint64_t *suppressed);

/*
 * Lines were left out and a line may be written now: returns true with
 * their count in *suppressed (then reset), for a summary line.  Otherwise
 * false, with *due_s set to the seconds until one may be written (or -1
 * when nothing was left out).
 */
bool lb_log_limit_flush(struct lb_log_limit *l, double now, uint64_t *suppressed, double *due_s);

/* Counters and limiters of the watcher's skipped keys and clamped values. */
struct lb_skip_log {
    uint64_t skipped[LB_SKIP_REASONS];
    uint64_t clamped;        /* fields of values clamped into their range */
    uint64_t unknown_fields; /* policy fields not known, ignored */
    struct lb_log_limit limits[LB_SKIP_LOG_KINDS];
    char last_key[LB_SKIP_LOG_KINDS][96]; /* quoted, of the last line left out */
    double (*clock)(void);                /* monotonic seconds; tests replace it */
};

void lb_skip_log_init(struct lb_skip_log *s);

/*
 * Counts one skipped key and, if the limiter allows, writes one warning:
 *
 *   msg="<msg>" reason=<reason> key="<first bytes>..." key_bytes=N error="<why>" [suppressed=N]
 *
 * `key` is key_len bytes (any bytes; quoted and cut to fit), key_size its
 * size in etcd when only a part of it is at hand (0: key_len).  `why` may
 * be NULL.
 */
void lb_skip_note(struct lb_skip_log *s, enum lb_skip_reason reason, const char *msg,
                  const char *key, size_t key_len, size_t key_size, const char *why);

/*
 * Counts one clamped field and logs it under the same limits:
 *
 *   msg="value out of range, clamped" key=... field=health.interval value=1ms used=100ms why=...
 */
void lb_skip_note_clamped(struct lb_skip_log *s, const char *key, size_t key_len, const char *field,
                          const char *given, const char *used, const char *why);

/*
 * Counts one unknown field of a policy, ignored, and logs it under the
 * clamped fields' limits (`text` says which, with the nearest known name;
 * NULL: counted only):
 *
 *   msg="unknown field ignored" reason=unknown_field key=... error="unknown field ..."
 */
void lb_skip_note_unknown(struct lb_skip_log *s, const char *key, size_t key_len, const char *text);

/*
 * Writes the summary lines that are due ("... log lines suppressed",
 * reason, count, last key).  Returns the seconds until the next one is
 * due, or -1 when no line is waiting.
 */
double lb_skip_log_flush(struct lb_skip_log *s);

/*
 * Quotes the first bytes of `key` for a log line: always in double quotes,
 * \" \\ and \xNN escaped, cut with "..." when it does not fit in `size`
 * or when key_size says the key is longer than what is at hand.
 */
const char *lb_skip_quote_key(char *buf, size_t size, const char *key, size_t key_len,
                              size_t key_size);

#endif
