/*
 * The mirror: what the watcher last saw of every schema key, and whether
 * the sink currently holds a value for it.  All typed updates reach the
 * sink through here, and every key lbd cannot use is judged here, which
 * gives these guarantees:
 *
 *  - a key whose value did not change produces no update, so a re-list
 *    after a reconnect or a compaction delivers only the difference (keys
 *    added, changed, and deleted meanwhile);
 *  - a value that does not parse, or that is too large or malformed to be
 *    read at all, is logged (once per distinct value) with its key and
 *    skipped.  If the key held a good value before, the sink keeps that
 *    last good value: a typo in an operator's edit must not take a pool's
 *    policy or a live backend away.  Deleting the key still removes it;
 *  - a key that cannot be of the schema (too long, malformed, too deep, a
 *    bad name) is skipped and counted, and never takes a place in the
 *    table: junk under the prefix cannot crowd out real keys;
 *  - numbers and durations out of range are clamped (lb_value.h) and each
 *    clamp is logged with its key and field;
 *  - a DELETE reaches the sink only for keys the sink was told about.
 *
 * Skips are counted by reason (lb_skip.h) and their log lines are rate
 * limited; lb_mirror_flush_log() writes the counts of the lines left out.
 *
 * The mirror never commits: callers group updates into batches and call
 * the sink's commit() themselves.  Runs on the watcher's loop; not shared.
 */
#ifndef LB_MIRROR_H
#define LB_MIRROR_H

#include "lb_etcd_json.h"
#include "lb_skip.h"
#include "lb_update.h"
#include "lb_watch_decode.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most keys the mirror tracks; more are skipped (too_many_keys) rather than grown into. */
#define LB_MIRROR_MAX_KEYS (1024 * 1024)

struct lb_mirror;

struct lb_mirror_stats {
    size_t keys;                       /* schema keys tracked, good or bad */
    uint64_t updates;                  /* updates delivered to the sink */
    uint64_t bad_values;               /* values of schema keys that did not parse */
    size_t bad_keys_last_good;         /* keys whose value is bad now, the last good one served */
    size_t bad_keys_never_good;        /* keys whose value is bad now, with no good one yet */
    uint64_t skipped[LB_SKIP_REASONS]; /* keys skipped, by reason */
    uint64_t clamped;                  /* fields clamped into their range */
    uint64_t unknown_fields;           /* policy fields not known, ignored */
};

/* `prefix` is normalised (lb_key_prefix_normalize()); the sink is copied. */
int lb_mirror_new(const char *prefix, const struct lb_update_sink *sink, struct lb_mirror **out);
void lb_mirror_free(struct lb_mirror *m);

/*
 * A key now holds `value` (at mod_revision).  Returns the number of updates
 * delivered (0 or 1), or -ENOMEM (then the sink was not called).  A key
 * that is not of the schema, a value that does not parse, a mirror that is
 * full: counted, logged, 0.
 */
int lb_mirror_put(struct lb_mirror *m, const char *key, size_t key_len, const char *value,
                  size_t value_len, int64_t mod_revision);

/*
 * The same for a kv read by lb_etcd_json_read_kv(), which may be flawed: a
 * schema key whose value could not be read (too large, malformed) is
 * treated as a bad value; a key that could not be read is skipped.
 */
int lb_mirror_put_kv(struct lb_mirror *m, const struct lb_etcd_kv *kv);

/* A key was deleted (or its lease expired).  Returns 0 or 1 updates delivered. */
int lb_mirror_delete(struct lb_mirror *m, const char *key, size_t key_len);

/*
 * Applies the events of one watch message: flawed events are skipped and
 * counted, the others applied.  Returns updates delivered or -ENOMEM.
 */
int lb_mirror_apply_events(struct lb_mirror *m, const struct lb_watch_msg *msg);

/*
 * For a listing being staged: true when lb_mirror_put_kv() could use `kv`
 * (a schema key, its value good or not); otherwise the key is skipped and
 * counted here, and the caller drops it.
 */
bool lb_mirror_screen(struct lb_mirror *m, const struct lb_etcd_kv *kv);

/* Counts and logs a key skipped before it could reach the mirror. */
void lb_mirror_skip(struct lb_mirror *m, enum lb_skip_reason reason, const char *key,
                    size_t key_len, size_t key_size, const char *why);

/*
 * A re-list: after lb_mirror_relist_begin(), put every key of the listing;
 * lb_mirror_relist_end() then deletes every key that was not put, and
 * returns the number of updates that delivered.
 */
void lb_mirror_relist_begin(struct lb_mirror *m);
int lb_mirror_relist_end(struct lb_mirror *m);

/*
 * Writes the log lines that rate limiting held back (their count, per
 * kind).  Returns the seconds until it should be called again, or -1 when
 * nothing is held back.
 */
double lb_mirror_flush_log(struct lb_mirror *m);

/* The clock of the log limits (monotonic seconds); for tests. */
void lb_mirror_set_clock(struct lb_mirror *m, double (*clock)(void));

void lb_mirror_get_stats(const struct lb_mirror *m, struct lb_mirror_stats *out);

/*
 * Calls fn for every key with a value, as etcd stored it (and its
 * mod_revision): the one the sink holds, the last good one also when a bad
 * or unreadable value came after it; else the bad one last seen.  What
 * another mirror needs to serve the same view through lb_mirror_put().  In
 * no particular order.
 */
void lb_mirror_each(const struct lb_mirror *m,
                    void (*fn)(void *ctx, const struct lb_watcher_kv *kv), void *ctx);

#endif
