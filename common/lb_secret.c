/*
 * Reading a secret file: a regular file opened without blocking, one
 * bounded read, the first line trimmed, a character check, and no copy
 * left behind in memory we free.  lb_secret_open() is the one check of
 * what a credentials file may be, for the admin token and etcd's user.
 */
#include "lb_secret.h"

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
    if (asprintf(err, "%s %s: %s", what, path, why) < 0)
        *err = NULL;
    return rc;
}

static const char *file_kind(mode_t mode)
{
    if (S_ISDIR(mode))
        return "is a directory, not a regular file";
    if (S_ISFIFO(mode))
        return "is a FIFO, not a regular file";
    if (S_ISSOCK(mode))
        return "is a socket, not a regular file";
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return "is a device, not a regular file";
    return "is not a regular file";
}

int lb_secret_open(const char *path, const char *what, bool *shared, char **err)
{
    struct stat st;
    int fd, rc;

    *shared = false;
    /* O_NONBLOCK: opening a FIFO for reading would wait for a writer. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        rc = -errno;
        if (asprintf(err, "%s %s: cannot read: %s", what, path, strerror(-rc)) < 0)
            *err = NULL;
        return rc;
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        close(fd);
        if (asprintf(err, "%s %s: cannot read: %s", what, path, strerror(-rc)) < 0)
            *err = NULL;
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, -EINVAL, what, path, file_kind(st.st_mode));
    }
    *shared = (st.st_mode & S_IRWXO) != 0;
    return fd;
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
    fd = lb_secret_open(path, what, &everyone, err);
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
            if (asprintf(err, "%s %s: cannot read: %s", what, path, strerror(-rc)) < 0)
                *err = NULL;
            return rc;
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
