/*
 * Durations as users write them: "250ms", "3s", "1m30s", "1.5h", or "0".
 * Units are ms, s, m and h; a bare number is only accepted when it is 0.
 * Values are kept in milliseconds.
 */
#ifndef LB_DURATION_H
#define LB_DURATION_H

#include <stddef.h>
#include <stdint.h>

/* Largest accepted duration: 365 days. */
#define LB_DURATION_MAX_MS (365LL * 24 * 3600 * 1000)

/*
 * Parses `text` into *out_ms.  Returns 0, or -EINVAL (-ERANGE for a well
 * formed duration above 8760h) with *err pointing to a static sentence
 * saying what is wrong (never NULL on failure).
 */
int lb_duration_parse(const char *text, int64_t *out_ms, const char **err);

/* Formats ms the way lb_duration_parse() reads it ("1m30s", "250ms", "0s"). */
const char *lb_duration_format(int64_t ms, char *buf, size_t size);

#endif
