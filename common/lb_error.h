/*
 * The one error convention (STYLE.md habit 4): a function that can fail
 * returns 0 (or a value) or a negative errno and, through `char **err`, a
 * malloc'd sentence a user can act on.  lb_error_set() does both in one
 * statement: `return lb_error_set(err, -EINVAL, "weight %d is above %d", w, max);`
 * The admin API's validators use it the same way with a gRPC status as the
 * code.  Nobody writes into caller-sized buffers or calls asprintf into err.
 *
 * The single exception: the small parsers of fixed grammars that run on
 * hot or allocation-free paths, lb_addr_parse() and lb_duration_parse(),
 * hand back a static sentence (`const char **why`) that the caller wraps
 * with the value and the flag it came from.
 */
#ifndef LB_ERROR_H
#define LB_ERROR_H

/*
 * Replaces *err (freeing what it held) with the formatted sentence and
 * returns `code`.  err may be NULL (nothing is formatted).  When memory runs
 * out *err is left NULL and `code` is still returned.
 */
int lb_error_set(char **err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
