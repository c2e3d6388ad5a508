/*
 * Key schema parsing.  Parsing works on bytes with a length because etcd
 * keys are arbitrary bytes; a NUL inside a key simply fails the charset
 * check.
 */
#include "lb_key.h"
#include "lb_error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

bool lb_key_name_is_valid(const char *name)
{
    return name && lb_name_is_valid(name, strlen(name));
}

int lb_key_prefix_normalize(const char *prefix, char out[LB_PREFIX_MAX], char **err)
{
    size_t len = prefix ? strlen(prefix) : 0;

    if (len == 0 || prefix[0] != '/')
        return lb_error_set(err, -EINVAL, "key prefix must start with '/' (e.g. /lb/)");
    if (len + 2 > LB_PREFIX_MAX)
        return lb_error_set(err, -EINVAL, "key prefix longer than %d bytes", LB_PREFIX_MAX - 2);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)prefix[i] < 0x20 || prefix[i] == 0x7f)
            return lb_error_set(err, -EINVAL, "key prefix holds a control character");
    memcpy(out, prefix, len + 1);
    if (out[len - 1] != '/') {
        out[len] = '/';
        out[len + 1] = '\0';
    }
    return 0;
}

/* Copies a name of len bytes into dst (LB_NAME_MAX) if it is valid. */
static int take_name(const char *what, const char *name, size_t len, char *dst, char **err)
{
    if (!lb_name_is_valid(name, len))
        return lb_error_set(err, -EINVAL,
                            "%s name is empty, longer than %d bytes or not made of "
                            "[A-Za-z0-9._:-]",
                            what, LB_NAME_MAX - 1);
    memcpy(dst, name, len);
    dst[len] = '\0';
    return 0;
}

int lb_key_parse(const char *prefix, const char *key, size_t key_len, struct lb_key *out,
                 char **err)
{
    static const char pools[] = "pools/";
    size_t plen = strlen(prefix);
    const char *p, *end = key + key_len, *slash, *rest;
    size_t rest_len;
    int rc;

    memset(out, 0, sizeof(*out));
    if (key_len < plen + sizeof(pools) - 1 || memcmp(key, prefix, plen) != 0 ||
        memcmp(key + plen, pools, sizeof(pools) - 1) != 0)
        return -ENOENT;
    p = key + plen + sizeof(pools) - 1;
    slash = memchr(p, '/', (size_t)(end - p));
    if (!slash)
        return -ENOENT;
    rest = slash + 1;
    rest_len = (size_t)(end - rest);
    if (rest_len == 6 && memcmp(rest, "config", 6) == 0) {
        out->kind = LB_KEY_CONFIG;
        return take_name("pool", p, (size_t)(slash - p), out->pool, err);
    }
    if (rest_len > 9 && memcmp(rest, "backends/", 9) == 0) {
        out->kind = LB_KEY_BACKEND;
        rest += 9;
    } else if (rest_len > 10 && memcmp(rest, "overrides/", 10) == 0) {
        out->kind = LB_KEY_OVERRIDE;
        rest += 10;
    } else {
        return -ENOENT;
    }
    if (memchr(rest, '/', (size_t)(end - rest)))
        return -ENOENT; /* deeper keys are not ours */
    rc = take_name("pool", p, (size_t)(slash - p), out->pool, err);
    if (!rc)
        rc = take_name(out->kind == LB_KEY_BACKEND ? "backend id" : "override id", rest,
                       (size_t)(end - rest), out->id, err);
    return rc;
}

int lb_key_format(const char *prefix, enum lb_key_kind kind, const char *pool, const char *id,
                  char *buf, size_t size)
{
    int n;

    if (!lb_key_name_is_valid(pool) || (kind != LB_KEY_CONFIG && !lb_key_name_is_valid(id)))
        return -EINVAL;
    switch (kind) {
    case LB_KEY_BACKEND:
        n = snprintf(buf, size, "%spools/%s/backends/%s", prefix, pool, id);
        break;
    case LB_KEY_OVERRIDE:
        n = snprintf(buf, size, "%spools/%s/overrides/%s", prefix, pool, id);
        break;
    case LB_KEY_CONFIG:
        n = snprintf(buf, size, "%spools/%s/config", prefix, pool);
        break;
    default:
        return -EINVAL;
    }
    if (n < 0 || (size_t)n >= size)
        return -ENOSPC;
    return n;
}
