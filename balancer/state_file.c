/*
 * lbd's state file (state_file.h): when to write it, how to write it so
 * that a reader never sees half of one, and reading it back.
 */
#include "state_file.h"
#include "lb_error.h"
#include "lb_file.h"
#include "lb_log.h"
#include "lb_metrics_text.h"
#include "lb_view_file.h"
#include "lb_watcher.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOG_SUB "state"

#define WRITE_DELAY_S  1.0   /* after a change: the changes of one second in one write */
#define REFRESH_S      300.0 /* while nothing changes: the file's age stays close */
#define ERROR_REPEAT_S 60.0  /* the same write error is logged again after this long */

_Static_assert(LB_VIEW_FILE_MAX == (size_t)256 << 20, "write_failed() says 256 MiB");

struct lb_state_file {
    struct ev_loop *loop;
    struct lb_watcher *watcher;
    char *path;
    char *tmp_path;
    ev_timer write_timer;   /* a change waits for it */
    ev_timer refresh_timer; /* nothing changed for REFRESH_S */
    uint64_t writes;
    uint64_t errors;
    double last_write; /* wall clock, s; 0: never */
    int last_errno;    /* of the last failed write; 0 after a success */
    ev_tstamp error_logged_at;
};

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void add_key(void *ctx, const struct lb_watcher_kv *kv)
{
    lb_view_file_add(ctx, kv);
}

/* Writes all of buf to fd: 0 or -errno. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The file at tmp_path, flushed to disk, then renamed over path: 0 or -errno. */
static int replace_file(struct lb_state_file *s, const struct lb_buf *b, const char **step)
{
    int fd, rc;

    *step = "create";
    fd = open(s->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    *step = "write";
    rc = write_all(fd, b->data, b->len);
    if (rc == 0) {
        *step = "fsync";
        rc = fsync(fd) < 0 ? -errno : 0;
    }
    if (close(fd) < 0 && rc == 0) {
        *step = "close";
        rc = -errno;
    }
    if (rc == 0) {
        *step = "rename";
        rc = rename(s->tmp_path, s->path) < 0 ? -errno : 0;
    }
    if (rc < 0)
        unlink(s->tmp_path);
    return rc;
}

static void write_failed(struct lb_state_file *s, int rc, const char *step)
{
    ev_tstamp now = ev_now(s->loop);
    char qpath[1024];

    s->errors++;
    if (-rc != s->last_errno || now - s->error_logged_at >= ERROR_REPEAT_S) {
        LB_WARN(LOG_SUB,
                "msg=\"cannot write the state file; lbd serves on, and a restart while etcd is "
                "out of reach would start with no pools\" path=%s step=%s error=\"%s\" "
                "failures=%llu",
                lb_log_quote(qpath, sizeof(qpath), s->path), step,
                rc == -E2BIG ? "the view is larger than the 256 MiB a state file holds"
                             : strerror(-rc),
                (unsigned long long)s->errors);
        s->error_logged_at = now;
    }
    s->last_errno = -rc;
}

static void write_now(struct lb_state_file *s)
{
    struct lb_view_file_writer w;
    struct lb_watcher_view view;
    struct lb_buf b;
    const char *step = "encode";
    double t0 = ev_time();
    char qpath[1024];
    size_t bytes;
    int rc;

    ev_timer_stop(s->loop, &s->write_timer);
    lb_buf_init(&b, LB_VIEW_FILE_MAX);
    lb_view_file_begin(&w, &b);
    if (!lb_watcher_export(s->watcher, &view, add_key, &w)) {
        lb_buf_free(&b); /* no view yet: the file stays as it is */
        return;
    }
    rc = lb_view_file_end(&w, &view, wall_ms());
    bytes = b.len;
    if (rc == 0)
        rc = replace_file(s, &b, &step);
    lb_buf_free(&b);
    ev_timer_again(s->loop, &s->refresh_timer);
    if (rc < 0) {
        write_failed(s, rc, step);
        return;
    }
    lb_log_quote(qpath, sizeof(qpath), s->path);
    if (s->last_errno)
        LB_INFO(LOG_SUB, "msg=\"state file written again\" path=%s keys=%zu", qpath, w.n);
    else if (s->writes == 0)
        LB_INFO(LOG_SUB,
                "msg=\"state file written\" path=%s keys=%zu revision=%lld bytes=%zu took_ms=%.1f",
                qpath, w.n, (long long)view.revision, bytes, (ev_time() - t0) * 1000.0);
    s->last_errno = 0;
    s->writes++;
    s->last_write = (double)wall_ms() / 1000.0;
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    write_now(t->data);
}

/*
 * Removes PATH.tmp.PID files left by an lbd that died in the middle of a
 * write (PATH itself is whole then): those of a process that is gone, and
 * this pid's own (a container's lbd is often pid 1 each time).  A live
 * process's file may be a write in progress (two lbds sharing a
 * directory): kept.
 */
static void remove_leftovers(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[PATH_MAX], prefix[NAME_MAX + 8];
    struct dirent *e;
    DIR *d;

    if (slash == path) {
        strcpy(dir, "/");
    } else if (slash) {
        if ((size_t)(slash - path) >= sizeof(dir))
            return;
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    } else {
        strcpy(dir, ".");
    }
    if (snprintf(prefix, sizeof(prefix), "%s.tmp.", slash ? slash + 1 : path) >=
            (int)sizeof(prefix) ||
        !(d = opendir(dir)))
        return;
    while ((e = readdir(d))) {
        char *end, full[PATH_MAX + NAME_MAX + 2], qpath[1024];
        const char *digits;
        long pid;

        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        digits = e->d_name + strlen(prefix);
        errno = 0;
        pid = strtol(digits, &end, 10);
        if (*digits < '0' || *digits > '9' || *end || errno || pid <= 0 || pid > INT_MAX)
            continue;
        if (pid != (long)getpid() && (kill((pid_t)pid, 0) == 0 || errno != ESRCH))
            continue;
        snprintf(full, sizeof(full), "%s/%s", dir, e->d_name);
        if (unlinkat(dirfd(d), e->d_name, 0) == 0)
            LB_INFO(LOG_SUB,
                    "msg=\"removed a state file left half-written by an lbd that is gone\" "
                    "path=%s",
                    lb_log_quote(qpath, sizeof(qpath), full));
    }
    closedir(d);
}

int lb_state_file_new(struct ev_loop *loop, const char *path, struct lb_watcher *w,
                      struct lb_state_file **out)
{
    struct lb_state_file *s = calloc(1, sizeof(*s));
    size_t n = strlen(path) + 32;

    if (!s)
        return -ENOMEM;
    s->path = strdup(path);
    s->tmp_path = malloc(n);
    if (!s->path || !s->tmp_path) {
        lb_state_file_free(s);
        return -ENOMEM;
    }
    snprintf(s->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    remove_leftovers(path);
    s->loop = loop;
    s->watcher = w;
    ev_timer_init(&s->write_timer, timer_cb, WRITE_DELAY_S, 0.);
    s->write_timer.data = s;
    ev_timer_init(&s->refresh_timer, timer_cb, 0., REFRESH_S);
    s->refresh_timer.data = s;
    ev_timer_again(loop, &s->refresh_timer);
    *out = s;
    return 0;
}

void lb_state_file_changed(struct lb_state_file *s)
{
    if (s && !ev_is_active(&s->write_timer))
        ev_timer_start(s->loop, &s->write_timer);
}

void lb_state_file_flush(struct lb_state_file *s)
{
    if (s)
        write_now(s);
}

void lb_state_file_free(struct lb_state_file *s)
{
    if (!s)
        return;
    if (s->loop) {
        ev_timer_stop(s->loop, &s->write_timer);
        ev_timer_stop(s->loop, &s->refresh_timer);
    }
    free(s->path);
    free(s->tmp_path);
    free(s);
}

int lb_state_file_render_metrics(const struct lb_state_file *s, struct lb_buf *out)
{
    int rc;

    if (!s)
        return 0;
    rc = lb_metrics_family(out, "lbd_state_file_writes_total", "counter",
                           "Times the state file (--state-file) was written whole.");
    if (!rc)
        rc =
            lb_buf_printf(out, "lbd_state_file_writes_total %llu\n", (unsigned long long)s->writes);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_state_file_write_errors_total", "counter",
                               "Writes of the state file that failed (the previous file stays).");
    if (!rc)
        rc = lb_buf_printf(out, "lbd_state_file_write_errors_total %llu\n",
                           (unsigned long long)s->errors);
    if (!rc)
        rc = lb_metrics_family(out, "lbd_state_file_last_write_timestamp_seconds", "gauge",
                               "When the state file was last written (0: not yet).");
    if (!rc)
        rc =
            lb_buf_printf(out, "lbd_state_file_last_write_timestamp_seconds %.3f\n", s->last_write);
    return rc;
}

int lb_state_file_load(const char *path, struct lb_saved_view *out, char **err)
{
    struct stat st;
    char *text = NULL, *why = NULL;
    size_t len = 0;
    int fd, rc;

    memset(out, 0, sizeof(*out));
    if (stat(path, &st) < 0 && errno == ENOENT)
        return -ENOENT;
    fd = lb_file_open(path, "state file", NULL, err);
    if (fd < 0)
        return fd;
    rc = lb_file_read_all(fd, LB_VIEW_FILE_MAX, &text, &len);
    close(fd);
    if (rc == -E2BIG)
        return lb_error_set(err, rc, "state file %s: larger than %zu MiB", path,
                            LB_VIEW_FILE_MAX >> 20);
    if (rc < 0)
        return lb_error_set(err, rc, "state file %s: cannot read: %s", path, strerror(-rc));
    rc = lb_view_file_decode(text, len, out, &why);
    if (rc < 0)
        lb_error_set(err, rc, "state file %s: %s", path, why ? why : strerror(-rc));
    free(why);
    free(text);
    return rc;
}
