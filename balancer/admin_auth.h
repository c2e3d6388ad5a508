/*
 * The admin API's bearer token.  With --admin-token-file, every call but
 * grpc.health.v1.Health/Check must carry `authorization: Bearer <token>`.
 *
 * Only a SHA-256 digest of the token is kept, and a presented token is
 * hashed and compared with CRYPTO_memcmp(), so the time a check takes says
 * nothing about how much of a guess was right.  Nothing here logs.
 */
#ifndef LB_ADMIN_AUTH_H
#define LB_ADMIN_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LB_ADMIN_AUTH_DIGEST_LEN 32

struct lb_admin_auth {
    bool required;    /* false: no token configured, every call is let in */
    bool file_shared; /* lb_admin_auth_load(): everyone may read the file (warn) */
    uint8_t digest[LB_ADMIN_AUTH_DIGEST_LEN];
};

/*
 * Reads the token from `path` (first line, trimmed; see lb_secret.h), and
 * notes in file_shared whether everyone may read the file.  Returns 0, or
 * a negative errno with *err a malloc'd sentence.
 */
int lb_admin_auth_load(struct lb_admin_auth *a, const char *path, char **err);

/* Requires `token` (NUL-terminated, non-empty).  Returns 0 or -EINVAL. */
int lb_admin_auth_set(struct lb_admin_auth *a, const char *token);

/*
 * True when `value` (an authorization header value, `len` bytes, not
 * NUL-terminated) is "Bearer <token>" with the configured token.  The
 * scheme is case-insensitive, as RFC 6750 has it.
 */
bool lb_admin_auth_accepts(const struct lb_admin_auth *a, const char *value, size_t len);

#endif
