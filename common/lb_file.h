/*
 * The one way lbd and lbctl open a file an operator names (credentials,
 * certificates, keys, CA bundles): a regular file, opened without blocking,
 * so a FIFO, a terminal or a device named by mistake is one clear error
 * instead of a start-up that hangs in open() or read(); and the caller is
 * told whether everyone may access it, so that it can warn about secrets
 * (group access is how Kubernetes secrets reach a non-root user, access
 * for everyone is a leak).
 */
#ifndef LB_FILE_H
#define LB_FILE_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Opens `path` for reading.  Returns the descriptor (the caller closes it),
 * with *shared (when not NULL) set when everyone may read, write or run
 * the file; or a negative errno (-EINVAL for anything but a regular file)
 * with *err a malloc'd sentence starting with `what` and `path` ("admin
 * TLS key /etc/lbd/key.pem: is a FIFO, not a regular file").
 */
int lb_file_open(const char *path, const char *what, bool *shared, char **err);

/* lb_file_open() and close: the file is there, regular and readable.  0 or -errno. */
int lb_file_check_readable(const char *path, const char *what, char **err);

/*
 * Reads the whole of an opened regular file (lb_file_open()) of at most max
 * bytes into a malloc'd, NUL-terminated *out of *len bytes.  Returns 0,
 * -E2BIG when it is larger, -ENOMEM, or -errno of a failed read.
 */
int lb_file_read_all(int fd, size_t max, char **out, size_t *len);

/*
 * Splits a path for the files lbd makes beside it: *dir gets its directory
 * ("." for a bare name, "/" for "/x"; cut to size), and the name after the
 * last '/' is returned (a pointer into path).
 */
const char *lb_file_dir(const char *path, char *dir, size_t size);

#endif
