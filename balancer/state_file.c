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
#include <pthread.h>
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
#define LEFTOVER_AGE_S 60.0  /* another pid's PATH.tmp.PID untouched this long: no write */

_Static_assert(LB_VIEW_FILE_MAX == (size_t)256 << 20, "write_failed() says 256 MiB");

/* One file to put on disk: encoded on the control loop, written by the writer. */
struct write_job {
    struct lb_buf buf;
    size_t keys;
    long long revision;
    double t0; /* when its encoding began (ev_time) */
    /* the writer's answer */
    int rc;
    const char *step;
};

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
    /* The writer thread: write, fsync and rename off the control loop, so a
     * slow disk holds no admin call, check or watch. */
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct write_job *job;  /* mu: handed to the writer, NULL when idle */
    bool job_done;          /* mu: the writer finished job */
    bool quit;              /* mu */
    ev_async done;          /* the writer finished: the loop takes the answer */
    unsigned test_delay_ms; /* LBD_TEST_STATE_FILE_DELAY_MS: a slow disk, for the tests */
    bool again;             /* changed while a write was in progress */
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

/* The file at tmp_path, flushed to disk, then renamed over path: 0 or -errno.
 * Runs on the writer thread (path and tmp_path are read-only once set). */
static int replace_file(const struct lb_state_file *s, const struct lb_buf *b, const char **step)
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
        if (s->test_delay_ms)
            usleep(s->test_delay_ms * 1000u);
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

static void job_free(struct write_job *job)
{
    if (!job)
        return;
    lb_buf_free(&job->buf);
    free(job);
}

/* The view as it is now, encoded; NULL when there is none yet (or out of memory). */
static struct write_job *encode_view(struct lb_state_file *s)
{
    struct write_job *job = calloc(1, sizeof(*job));
    struct lb_view_file_writer w;
    struct lb_watcher_view view;

    if (!job)
        return NULL;
    job->t0 = ev_time();
    job->step = "encode";
    lb_buf_init(&job->buf, LB_VIEW_FILE_MAX);
    lb_view_file_begin(&w, &job->buf);
    if (!lb_watcher_export(s->watcher, &view, add_key, &w)) {
        job_free(job); /* no view yet: the file stays as it is */
        return NULL;
    }
    job->rc = lb_view_file_end(&w, &view, wall_ms());
    job->keys = w.n;
    job->revision = (long long)view.revision;
    return job;
}

/* A job is over (on the control loop): counted and logged. */
static void job_finished(struct lb_state_file *s, struct write_job *job)
{
    char qpath[1024];

    ev_timer_again(s->loop, &s->refresh_timer);
    if (job->rc < 0) {
        write_failed(s, job->rc, job->step);
        return;
    }
    lb_log_quote(qpath, sizeof(qpath), s->path);
    if (s->last_errno)
        LB_INFO(LOG_SUB, "msg=\"state file written again\" path=%s keys=%zu", qpath, job->keys);
    else if (s->writes == 0)
        LB_INFO(LOG_SUB,
                "msg=\"state file written\" path=%s keys=%zu revision=%lld bytes=%zu took_ms=%.1f",
                qpath, job->keys, job->revision, job->buf.len, (ev_time() - job->t0) * 1000.0);
    s->last_errno = 0;
    s->writes++;
    s->last_write = (double)wall_ms() / 1000.0;
}

static void *writer_main(void *arg)
{
    struct lb_state_file *s = arg;
    sigset_t all;

    sigfillset(&all); /* signals are the control loop's */
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct write_job *job;

        while (!s->quit && (!s->job || s->job_done))
            pthread_cond_wait(&s->cond, &s->mu);
        if (s->quit)
            break;
        job = s->job;
        pthread_mutex_unlock(&s->mu);
        job->rc = replace_file(s, &job->buf, &job->step);
        pthread_mutex_lock(&s->mu);
        s->job_done = true;
        pthread_cond_broadcast(&s->cond);
        ev_async_send(s->loop, &s->done);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* The writer's job, once it is done (the loop's side); NULL while it writes or has none. */
static struct write_job *take_done_job(struct lb_state_file *s, bool wait)
{
    struct write_job *job = NULL;

    pthread_mutex_lock(&s->mu);
    while (wait && s->job && !s->job_done)
        pthread_cond_wait(&s->cond, &s->mu);
    if (s->job && s->job_done) {
        job = s->job;
        s->job = NULL;
        s->job_done = false;
    }
    pthread_mutex_unlock(&s->mu);
    return job;
}

static void done_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    struct lb_state_file *s = w->data;
    struct write_job *job = take_done_job(s, false);

    (void)loop;
    (void)revents;
    if (!job)
        return;
    job_finished(s, job);
    job_free(job);
    if (s->again) {
        s->again = false;
        lb_state_file_changed(s); /* within a second, as any change */
    }
}

/* Writes job from this thread (at exit, or without a writer thread) and ends it. */
static void write_here(struct lb_state_file *s, struct write_job *job)
{
    if (job->rc == 0)
        job->rc = replace_file(s, &job->buf, &job->step);
    job_finished(s, job);
    job_free(job);
}

static void write_now(struct lb_state_file *s)
{
    struct write_job *job;
    bool busy;

    ev_timer_stop(s->loop, &s->write_timer);
    pthread_mutex_lock(&s->mu);
    busy = s->job != NULL;
    pthread_mutex_unlock(&s->mu);
    if (busy) {
        s->again = true; /* the view changed again: written once this write is done */
        return;
    }
    job = encode_view(s);
    if (!job)
        return;
    if (job->rc < 0 || !s->thread_started) {
        write_here(s, job);
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->job = job;
    s->job_done = false;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    write_now(t->data);
}

/*
 * Removes PATH.tmp.PID files left by an lbd that died in the middle of a
 * write (PATH itself is whole then): this pid's own (a container's lbd is
 * often pid 1 each time), and those of a process that is gone, once
 * untouched for LEFTOVER_AGE_S.  A live process's file may be a write in
 * progress (two lbds sharing a directory), and so may a fresh one whose
 * pid is another PID namespace's (two containers sharing a volume): kept.
 */
static void remove_leftovers(const char *path)
{
    char dir[PATH_MAX], prefix[NAME_MAX + 8];
    const char *base = lb_file_dir(path, dir, sizeof(dir));
    struct dirent *e;
    DIR *d;

    if (snprintf(prefix, sizeof(prefix), "%s.tmp.", base) >= (int)sizeof(prefix) ||
        !(d = opendir(dir)))
        return;
    while ((e = readdir(d))) {
        char *end, full[PATH_MAX + NAME_MAX + 2], qpath[1024];
        const char *digits;
        struct stat st;
        long pid;

        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        digits = e->d_name + strlen(prefix);
        errno = 0;
        pid = strtol(digits, &end, 10);
        if (*digits < '0' || *digits > '9' || *end || errno || pid <= 0 || pid > INT_MAX)
            continue;
        if (pid != (long)getpid() && (kill((pid_t)pid, 0) == 0 || errno != ESRCH ||
                                      fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
                                      difftime(time(NULL), st.st_mtime) < LEFTOVER_AGE_S))
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
    if (getenv("LBD_TEST_STATE_FILE_DELAY_MS"))
        s->test_delay_ms = (unsigned)strtoul(getenv("LBD_TEST_STATE_FILE_DELAY_MS"), NULL, 10);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    ev_async_init(&s->done, done_cb);
    s->done.data = s;
    ev_async_start(loop, &s->done);
    ev_unref(loop); /* the writer's wake-up keeps no loop running */
    /* Without the thread (out of resources), the loop writes, as it can. */
    s->thread_started = pthread_create(&s->thread, NULL, writer_main, s) == 0;
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
    struct write_job *job;

    if (!s)
        return;
    /* A write in progress ends first; then the last view, written from here. */
    job = take_done_job(s, true);
    if (job) {
        job_finished(s, job);
        job_free(job);
    }
    s->again = false;
    job = encode_view(s);
    if (job)
        write_here(s, job);
}

void lb_state_file_free(struct lb_state_file *s)
{
    if (!s)
        return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->quit = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
        job_free(s->job); /* a write it finished that the loop did not take */
    }
    if (s->loop) {
        ev_timer_stop(s->loop, &s->write_timer);
        ev_timer_stop(s->loop, &s->refresh_timer);
        ev_ref(s->loop);
        ev_async_stop(s->loop, &s->done);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cond);
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
