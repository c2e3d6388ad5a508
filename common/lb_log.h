/*
 * One log line per event, as key=value pairs on stderr:
 *
 *   ts=2026-11-27T09:03:08.123Z level=info sub=watcher msg="pool synced" pool=web backends=3
 *
 * The caller formats everything after "sub=...": a short `msg` in quotes and
 * the pairs an operator needs to act.  Values that come from outside (etcd
 * keys, addresses typed by a user) go through lb_log_quote() so that a space
 * or a quote in them cannot break the line apart.  Lines below the level set
 * with lb_log_set_level() are dropped before any formatting happens.
 */
#ifndef LB_LOG_H
#define LB_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum lb_log_level { LB_LOG_DEBUG, LB_LOG_INFO, LB_LOG_WARN, LB_LOG_ERROR };

/* Parses "debug", "info", "warn" or "error"; returns 0 or -EINVAL. */
int lb_log_level_parse(const char *name, enum lb_log_level *out);
void lb_log_set_level(enum lb_log_level level);
bool lb_log_enabled(enum lb_log_level level);

void lb_log(enum lb_log_level level, const char *sub, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Writes `s` into buf as a log value: unchanged when it holds only safe
 * characters, otherwise in double quotes with \" \\ and \xNN escapes.  Never
 * overflows: a long value is cut and ends in "...".  Returns buf.
 */
const char *lb_log_quote(char *buf, size_t size, const char *s);

#define LB_DEBUG(sub, ...)                                                                         \
    do {                                                                                           \
        if (lb_log_enabled(LB_LOG_DEBUG))                                                          \
            lb_log(LB_LOG_DEBUG, sub, __VA_ARGS__);                                                \
    } while (0)
#define LB_INFO(sub, ...)  lb_log(LB_LOG_INFO, sub, __VA_ARGS__)
#define LB_WARN(sub, ...)  lb_log(LB_LOG_WARN, sub, __VA_ARGS__)
#define LB_ERROR(sub, ...) lb_log(LB_LOG_ERROR, sub, __VA_ARGS__)

#endif
