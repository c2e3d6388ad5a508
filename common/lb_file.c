/*
 * Opening operator-named files (lb_file.h).
 */
#include "lb_file.h"
#include "lb_error.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int lb_file_open(const char *path, const char *what, bool *shared, char **err)
{
    struct stat st;
    int fd, rc;

    if (shared)
        *shared = false;
    /* O_NONBLOCK: opening a FIFO for reading would wait for a writer. */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        rc = -errno;
        return lb_error_set(err, rc, "%s %s: cannot read: %s", what, path, strerror(-rc));
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        close(fd);
        return lb_error_set(err, rc, "%s %s: cannot read: %s", what, path, strerror(-rc));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lb_error_set(err, -EINVAL, "%s %s: %s", what, path, file_kind(st.st_mode));
    }
    if (shared)
        *shared = (st.st_mode & S_IRWXO) != 0;
    return fd;
}

int lb_file_check_readable(const char *path, const char *what, char **err)
{
    int fd = lb_file_open(path, what, NULL, err);

    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

int lb_file_read_all(int fd, size_t max, char **out, size_t *len)
{
    struct stat st;
    size_t got = 0;
    char *buf;

    *out = NULL;
    *len = 0;
    if (fstat(fd, &st) < 0)
        return -errno;
    if ((uint64_t)st.st_size > max)
        return -E2BIG;
    buf = malloc((size_t)st.st_size + 1);
    if (!buf)
        return -ENOMEM;
    while (got < (size_t)st.st_size) { /* a file that shrinks meanwhile ends early */
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int rc = -errno;

            free(buf);
            return rc;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return 0;
}

const char *lb_file_dir(const char *path, char *dir, size_t size)
{
    const char *slash = strrchr(path, '/');

    if (!slash)
        snprintf(dir, size, ".");
    else if (slash == path)
        snprintf(dir, size, "/");
    else
        snprintf(dir, size, "%.*s", (int)(slash - path), path);
    return slash ? slash + 1 : path;
}
