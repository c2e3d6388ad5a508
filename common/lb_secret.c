/*
 * Reading a secret file: opened as every operator-named file is
 * (lb_file.h), one bounded read, the first line trimmed, a character
 * check, and no copy left behind in memory we free.
 */
#include "lb_secret.h"
#include "lb_error.h"
#include "lb_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static int fail(char **err, int rc, const char *what, const char *path, const char *why)
{
    return lb_error_set(err, rc, "%s %s: %s", what, path, why);
}

int lb_secret_read_file(const char *path, const char *what, char **out, char **err)
{
    return lb_secret_read(path, what, out, NULL, err);
}

int lb_secret_read(const char *path, const char *what, char **out, bool *shared, char **err)
{
    char buf[LB_SECRET_MAX + 2]; /* the line, its newline, and one byte to see it is longer */
    size_t len = 0, start = 0, end;
    bool everyone;
    int fd, rc = 0;

    *out = NULL;
    *err = NULL;
    if (shared)
        *shared = false;
    fd = lb_file_open(path, what, &everyone, err);
    if (fd < 0)
        return fd;
    if (shared)
        *shared = everyone;
    while (len < sizeof(buf)) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            close(fd);
            explicit_bzero(buf, sizeof(buf));
            return lb_error_set(err, rc, "%s %s: cannot read: %s", what, path, strerror(-rc));
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (memchr(buf + len - (size_t)n, '\n', (size_t)n))
            break;
    }
    close(fd);

    end = 0;
    while (end < len && buf[end] != '\n')
        end++;
    while (start < end && is_space(buf[start]))
        start++;
    while (end > start && is_space(buf[end - 1]))
        end--;
    if (end == start) {
        rc = fail(err, -EINVAL, what, path, "is empty (its first line is read)");
    } else if (end - start > LB_SECRET_MAX) {
        char why[96];

        snprintf(why, sizeof(why), "the first line is longer than %d bytes", LB_SECRET_MAX);
        rc = fail(err, -EINVAL, what, path, why);
    } else {
        for (size_t i = start; i < end && rc == 0; i++)
            if (buf[i] < 0x21 || buf[i] > 0x7e)
                rc = fail(err, -EINVAL, what, path,
                          "the first line must be printable ASCII without spaces");
    }
    if (rc == 0) {
        *out = strndup(buf + start, end - start);
        if (!*out)
            rc = -ENOMEM;
    }
    explicit_bzero(buf, sizeof(buf));
    return rc;
}

void lb_secret_free(char *secret)
{
    if (!secret)
        return;
    explicit_bzero(secret, strlen(secret));
    free(secret);
}
