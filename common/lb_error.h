/*
 * Error sentences for parsers (STYLE.md habit 4): a function that can fail
 * on outside input returns a negative errno and, through `char **err`,
 * a malloc'd sentence a user can act on.  lb_error_set() does both in one
 * statement: `return lb_error_set(err, -EINVAL, "weight %d is above %d", w, max);`
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
