/*
 * Fuzzes the admin API's authorization header check, the one new piece of
 * the request path that reads outside bytes before any method runs.
 *
 * Input: the header value as it arrives (not NUL-terminated).  The answer
 * is checked against a second, independent reading of the rule: "Bearer"
 * in any case, at least one space or tab, the token, optional trailing
 * spaces or tabs.  A required token must never let anything else in.
 */
#include "admin_auth.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char token[] = "s3cret-Token_0123.~+/=";

static bool expected(const uint8_t *p, size_t n)
{
    static const char scheme[] = "bearer";
    size_t i, end = n;

    if (n < 7)
        return false;
    for (i = 0; i < 6; i++)
        if ((p[i] | 0x20) != scheme[i])
            return false;
    if (p[6] != ' ' && p[6] != '\t')
        return false;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    while (end > i && (p[end - 1] == ' ' || p[end - 1] == '\t'))
        end--;
    return end - i == sizeof(token) - 1 && memcmp(p + i, token, end - i) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct lb_admin_auth open_auth, auth;
    static bool ready;
    /* A copy without slack, so that reading past the value is caught. */
    char *value = malloc(size ? size : 1);

    if (!value)
        return 0;
    if (!ready) {
        if (lb_admin_auth_set(&auth, token) != 0)
            abort();
        ready = true;
    }
    memcpy(value, data, size);
    if (lb_admin_auth_accepts(&auth, value, size) != expected(data, size))
        abort();
    if (!lb_admin_auth_accepts(&open_auth, value, size)) /* no token configured */
        abort();
    free(value);
    return 0;
}
