/*
 * Secrets kept in files (the admin API's bearer token, etcd's
 * "user:password"): lbd and lbctl open them the same way, so a file that
 * works for one works for the other.
 *
 * A credentials file is opened with lb_file_open() (lb_file.h): a regular
 * file, without blocking, and the caller is told when everyone may read it.
 *
 * The admin token is the file's first line with surrounding whitespace
 * trimmed; it must be visible ASCII (it travels in an HTTP/2 header), at
 * most LB_SECRET_MAX bytes.  Callers never log what they read.
 */
#ifndef LB_SECRET_H
#define LB_SECRET_H

#include <stdbool.h>
#include <stddef.h>

#define LB_SECRET_MAX 4096

/*
 * Reads the token from `path` (lb_file_open() first).  Returns 0 with
 * *out a malloc'd string (wipe it with lb_secret_free()) and, when `shared`
 * is not NULL, *shared as lb_file_open() sets it; or a negative errno
 * with *err a malloc'd sentence starting with `what`, which never quotes
 * the file's content.
 */
int lb_secret_read(const char *path, const char *what, char **out, bool *shared, char **err);

/* lb_secret_read() without the `shared` answer. */
int lb_secret_read_file(const char *path, const char *what, char **out, char **err);

/* Overwrites and frees a secret; NULL is a no-op. */
void lb_secret_free(char *secret);

#endif
