/*
 * key=value logging.  Each line is formatted into one stack buffer and
 * written with a single write(2), so lines from lbd never interleave even
 * when stderr is a pipe shared with other processes: a line is at most
 * 2 KiB, under PIPE_BUF (4 KiB), which POSIX makes atomic on a pipe, and a
 * file opened O_APPEND takes each write whole.  Worker threads log
 * concurrently (the access log): nothing here is shared but the level, an
 * atomic, and the functions used are thread-safe (gmtime_r, vsnprintf).
 */
#include "lb_log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = LB_LOG_INFO; /* set at start-up, read by every thread */

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int lb_log_level_parse(const char *name, enum lb_log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum lb_log_level)i;
            return 0;
        }
    }
    if (strcmp(name, "warning") == 0) {
        *out = LB_LOG_WARN;
        return 0;
    }
    return -EINVAL;
}

void lb_log_set_level(enum lb_log_level level)
{
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

bool lb_log_enabled(enum lb_log_level level)
{
    return (int)level >= atomic_load_explicit(&log_level, memory_order_relaxed);
}

void lb_log(enum lb_log_level level, const char *sub, const char *fmt, ...)
{
    char line[2048];
    struct timespec now;
    struct tm tm;
    size_t len;
    int n;
    va_list ap;

    if (!lb_log_enabled(level))
        return;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    len = strftime(line, sizeof(line), "ts=%Y-%m-%dT%H:%M:%S", &tm);
    n = snprintf(line + len, sizeof(line) - len, ".%03ldZ level=%s sub=%s ", now.tv_nsec / 1000000,
                 level_names[level], sub);
    len += (size_t)n;
    va_start(ap, fmt);
    n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    len += (size_t)n;
    if (len > sizeof(line) - 2) {
        /* Cut lines keep their end-of-line so the next one starts clean. */
        len = sizeof(line) - 5;
        memcpy(line + len, "...", 3);
        len += 3;
    }
    line[len++] = '\n';
    while (write(STDERR_FILENO, line, len) < 0 && errno == EINTR)
        ;
}

static bool is_safe_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '=';
}

const char *lb_log_quote(char *buf, size_t size, const char *s)
{
    size_t o = 0;
    bool plain = s[0] != '\0';

    if (size < 8) {
        if (size)
            buf[0] = '\0';
        return buf;
    }
    for (const char *p = s; *p && plain; p++)
        plain = is_safe_char((unsigned char)*p);
    if (plain && strlen(s) < size) {
        memcpy(buf, s, strlen(s) + 1);
        return buf;
    }
    buf[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[5];
        size_t elen;

        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            elen = 2;
        } else if (*p < 0x20 || *p >= 0x7f) {
            snprintf(esc, sizeof(esc), "\\x%02x", *p);
            elen = 4;
        } else {
            esc[0] = (char)*p;
            elen = 1;
        }
        if (o + elen + 5 > size) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(buf + o, esc, elen);
        o += elen;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
