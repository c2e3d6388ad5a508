/*
 * The mirror: what the watcher last saw of every schema key, and whether
 * the sink currently holds a value for it.  All typed updates reach the
 * sink through here, which gives three guarantees:
 *
 *  - a key whose value did not change produces no update, so a re-list
 *    after a reconnect or a compaction delivers only the difference (keys
 *    added, changed, and deleted meanwhile);
 *  - a value that does not parse is logged once (per distinct bad value)
 *    with its key and skipped.  If the key held a good value before, the
 *    sink keeps that last good value: a typo in an operator's edit must
 *    not take a pool's policy or a live backend away.  Deleting the key
 *    still removes it;
 *  - a DELETE reaches the sink only for keys the sink was told about.
 *
 * The mirror never commits: callers group updates into batches and call
 * the sink's commit() themselves.  Runs on the watcher's loop; not shared.
 */
#ifndef LB_MIRROR_H
#define LB_MIRROR_H

#include "lb_update.h"
#include "lb_watch_decode.h"

#include <stddef.h>
#include <stdint.h>

/* Most keys the mirror tracks; more are refused (and logged) rather than grown into. */
#define LB_MIRROR_MAX_KEYS (1024 * 1024)

struct lb_mirror;

struct lb_mirror_stats {
    size_t keys;         /* schema keys tracked, good or bad */
    uint64_t updates;    /* updates delivered to the sink */
    uint64_t bad_values; /* values (or key names) refused */
};

/* `prefix` is normalised (lb_key_prefix_normalize()); the sink is copied. */
int lb_mirror_new(const char *prefix, const struct lb_update_sink *sink, struct lb_mirror **out);
void lb_mirror_free(struct lb_mirror *m);

/*
 * A key now holds `value` (at mod_revision).  Returns the number of updates
 * delivered (0 or 1), -E2BIG when the mirror is full, or -ENOMEM; on a
 * negative return the sink was not called.
 */
int lb_mirror_put(struct lb_mirror *m, const char *key, size_t key_len, const char *value,
                  size_t value_len, int64_t mod_revision);

/* A key was deleted (or its lease expired).  Returns 0 or 1 updates delivered. */
int lb_mirror_delete(struct lb_mirror *m, const char *key, size_t key_len);

/* Applies the events of one watch message; returns updates delivered or a negative errno. */
int lb_mirror_apply_events(struct lb_mirror *m, const struct lb_watch_msg *msg);

/*
 * A re-list: after lb_mirror_relist_begin(), put every key of the listing;
 * lb_mirror_relist_end() then deletes every key that was not put, and
 * returns the number of updates that delivered.
 */
void lb_mirror_relist_begin(struct lb_mirror *m);
int lb_mirror_relist_end(struct lb_mirror *m);

void lb_mirror_get_stats(const struct lb_mirror *m, struct lb_mirror_stats *out);

#endif
