/*
 * Durations as written in flags and policies ("250ms", "2s", "1h"), to
 * milliseconds and back (contract in lb_duration.h).
 */
#include "lb_duration.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int lb_duration_parse(const char *text, int64_t *out_ms, const char **err)
{
    const char *p = text;
    double total = 0;

    if (!text || !*text) {
        *err = "empty duration (write e.g. 3s, 250ms, 1m)";
        return -EINVAL;
    }
    if (strcmp(text, "0") == 0) {
        *out_ms = 0;
        return 0;
    }
    if (text[0] == '-') {
        *err = "a duration is never negative (write e.g. 3s, 250ms, 1m)";
        return -EINVAL;
    }
    while (*p) {
        double value = 0, scale = 1;
        int digits = 0;
        double unit;

        while (*p >= '0' && *p <= '9') {
            value = value * 10 + (*p++ - '0');
            digits++;
            if (value > 1e15)
                goto too_big;
        }
        if (*p == '.') {
            p++;
            while (*p >= '0' && *p <= '9') {
                scale /= 10;
                value += (*p++ - '0') * scale;
                digits++;
            }
        }
        if (!digits) {
            *err = "duration must be a number followed by a unit (ms, s, m, h), e.g. 3s";
            return -EINVAL;
        }
        if (strncmp(p, "ms", 2) == 0) {
            unit = 1;
            p += 2;
        } else if (*p == 's') {
            unit = 1000;
            p++;
        } else if (*p == 'm') {
            unit = 60000;
            p++;
        } else if (*p == 'h') {
            unit = 3600000;
            p++;
        } else {
            *err = *p ? "a unit is one of ms, s, m or h, right after the number (e.g. 3s, 1.5s; "
                        "no exponent, no space)"
                      : "duration needs a unit: ms, s, m or h (e.g. 3s)";
            return -EINVAL;
        }
        total += value * unit;
        if (total > (double)LB_DURATION_MAX_MS)
            goto too_big;
    }
    *out_ms = (int64_t)(total + 0.5);
    return 0;
too_big:
    *err = "duration too large (at most 8760h)";
    return -ERANGE;
}

const char *lb_duration_format(int64_t ms, char *buf, size_t size)
{
    if (ms == 0)
        snprintf(buf, size, "0s");
    else if (ms % 3600000 == 0)
        snprintf(buf, size, "%lldh", (long long)(ms / 3600000));
    else if (ms % 60000 == 0)
        snprintf(buf, size, "%lldm", (long long)(ms / 60000));
    else if (ms % 1000 == 0)
        snprintf(buf, size, "%llds", (long long)(ms / 1000));
    else
        snprintf(buf, size, "%lldms", (long long)ms);
    return buf;
}
