/*
 * Bearer token checks for the admin API (see admin_auth.h).
 */
#include "admin_auth.h"
#include "lb_error.h"
#include "lb_secret.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool digest(const void *data, size_t len, uint8_t out[LB_ADMIN_AUTH_DIGEST_LEN])
{
    unsigned int n = LB_ADMIN_AUTH_DIGEST_LEN;

    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == LB_ADMIN_AUTH_DIGEST_LEN;
}

int lb_admin_auth_set(struct lb_admin_auth *a, const char *token)
{
    memset(a, 0, sizeof(*a));
    if (!token || !token[0])
        return -EINVAL;
    if (!digest(token, strlen(token), a->digest))
        return -ENOMEM;
    a->required = true;
    return 0;
}

int lb_admin_auth_load(struct lb_admin_auth *a, const char *path, char **err)
{
    char *token = NULL;
    bool shared = false;
    int rc;

    memset(a, 0, sizeof(*a));
    rc = lb_secret_read(path, "admin token file", &token, &shared, err);
    if (rc < 0)
        return rc;
    rc = lb_admin_auth_set(a, token);
    lb_secret_free(token);
    a->file_shared = rc == 0 && shared;
    if (rc < 0)
        return lb_error_set(err, rc, "admin token file %s: cannot hash the token: %s", path,
                            strerror(-rc));
    return 0;
}

bool lb_admin_auth_accepts(const struct lb_admin_auth *a, const char *value, size_t len)
{
    static const char scheme[] = "bearer";
    uint8_t got[LB_ADMIN_AUTH_DIGEST_LEN];
    size_t i = sizeof(scheme) - 1, end = len;

    if (!a->required)
        return true;
    if (len <= i || strncasecmp(value, scheme, i) != 0 || (value[i] != ' ' && value[i] != '\t'))
        return false;
    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    while (end > i && (value[end - 1] == ' ' || value[end - 1] == '\t'))
        end--;
    if (end == i)
        return false;
    if (!digest(value + i, end - i, got))
        return false;
    return CRYPTO_memcmp(got, a->digest, sizeof(got)) == 0;
}
