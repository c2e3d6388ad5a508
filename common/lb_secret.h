/*
 * Secrets kept in files (the admin API's bearer token): lbd and lbctl read
 * them the same way, so a file that works for one works for the other.
 * The secret is the file's first line with surrounding whitespace trimmed;
 * it must be visible ASCII (it travels in an HTTP/2 header), at most
 * LB_SECRET_MAX bytes.  Callers never log what they read.
 */
#ifndef LB_SECRET_H
#define LB_SECRET_H

#include <stddef.h>

#define LB_SECRET_MAX 4096

/*
 * Reads the secret from `path`.  Returns 0 with *out a malloc'd string
 * (wipe it with lb_secret_free()), or a negative errno with *err a malloc'd
 * sentence starting with `what` ("admin token file /etc/lbd/token: ..."),
 * which never quotes the file's content.
 */
int lb_secret_read_file(const char *path, const char *what, char **out, char **err);

/* Overwrites and frees a secret; NULL is a no-op. */
void lb_secret_free(char *secret);

#endif
