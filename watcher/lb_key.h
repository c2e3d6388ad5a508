/*
 * The etcd key schema (DESIGN.md), one place for both directions:
 *
 *   <prefix>pools/<pool>/backends/<id>
 *   <prefix>pools/<pool>/config
 *   <prefix>pools/<pool>/overrides/<id>
 *
 * Pool names and ids are 1..LB_NAME_MAX-1 bytes of [A-Za-z0-9._:-] (and
 * never "." or ".."), so they are safe in log lines, metrics labels and
 * file names.  A key of one of these shapes whose names break that rule is
 * "in the schema but invalid"; any other key under the prefix is not ours
 * and is ignored.
 */
#ifndef LB_KEY_H
#define LB_KEY_H

#include "lb_update.h"

#include <stdbool.h>
#include <stddef.h>

#define LB_PREFIX_MAX 512 /* with the NUL */

enum lb_key_kind {
    LB_KEY_BACKEND,
    LB_KEY_CONFIG,
    LB_KEY_OVERRIDE,
};

struct lb_key {
    enum lb_key_kind kind;
    char pool[LB_NAME_MAX];
    char id[LB_NAME_MAX]; /* "" for LB_KEY_CONFIG */
};

/* True when `name` is a valid pool name or backend id. */
bool lb_key_name_is_valid(const char *name);

/*
 * Normalises a key prefix as users write it: it must start with '/', may
 * not hold control characters, and gets a trailing '/' when it lacks one
 * ("/lb" and "/lb/" are the same prefix).  Writes into out (LB_PREFIX_MAX).
 * Returns 0 or -EINVAL with *err.
 */
int lb_key_prefix_normalize(const char *prefix, char out[LB_PREFIX_MAX], char **err);

/*
 * Splits `key` (key_len bytes, not necessarily NUL-terminated) under the
 * normalised `prefix`.  Returns 0 with *out filled; -ENOENT when the key is
 * not of a schema shape (ignore it); -EINVAL with *err when it has a schema
 * shape but a bad pool name or id.
 */
int lb_key_parse(const char *prefix, const char *key, size_t key_len, struct lb_key *out,
                 char **err);

/*
 * Writes the key of kind/pool/id under `prefix` into buf.  Returns its
 * length, -EINVAL for a bad name, or -ENOSPC when buf is too small.
 */
int lb_key_format(const char *prefix, enum lb_key_kind kind, const char *pool, const char *id,
                  char *buf, size_t size);

#endif
