/*
 * Secrets kept in files (the admin API's bearer token, etcd's
 * "user:password"): lbd and lbctl open them the same way, so a file that
 * works for one works for the other.
 *
 * A credentials file must be a regular file.  It is opened without
 * blocking, so a FIFO, a terminal or a device named by mistake is one
 * clear error instead of a start-up that hangs in open() or read().  A file
 * everyone may access (not only its owner and group) still works, but the
 * caller is told so that it can warn: group access is how Kubernetes
 * secrets reach a non-root user (fsGroup), access for everyone is a leak.
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
 * Opens the credentials file at `path` for reading: a regular file (else
 * -EINVAL), opened with O_NONBLOCK so that
 * nothing but a regular file can make it wait.  Returns the descriptor
 * (the caller closes it), with *shared set when everyone may read, write
 * or run the file; or a negative errno with *err a malloc'd sentence
 * starting with `what` and `path` ("admin token file /etc/lbd/token: is a
 * FIFO, not a regular file").
 */
int lb_secret_open(const char *path, const char *what, bool *shared, char **err);

/*
 * Reads the token from `path` (lb_secret_open() first).  Returns 0 with
 * *out a malloc'd string (wipe it with lb_secret_free()) and, when `shared`
 * is not NULL, *shared as lb_secret_open() sets it; or a negative errno
 * with *err a malloc'd sentence starting with `what`, which never quotes
 * the file's content.
 */
int lb_secret_read(const char *path, const char *what, char **out, bool *shared, char **err);

/* lb_secret_read() without the `shared` answer. */
int lb_secret_read_file(const char *path, const char *what, char **out, char **err);

/* Overwrites and frees a secret; NULL is a no-op. */
void lb_secret_free(char *secret);

#endif
