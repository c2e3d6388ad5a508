/*
 * Proxied connections (state machine in session.h): connect with retries,
 * relay through the worker's scratch buffer (or, for a direction that
 * proved bulk, through a pipe with splice(2)), back-pressure by pausing the
 * read side, RST passed on as RST, one finalize, frees deferred to the
 * worker's reaper.  A session lives on one worker from accept to free;
 * what it shares with other workers is atomic (the backend's open count,
 * reserved at pick so max_conns holds across workers).
 */
#include "session.h"
#include "backend.h"
#include "conn_queue.h"
#include "health.h"
#include "pipe_pool.h"
#include "proxy_protocol.h"
#include "lb_addr.h"
#include "lb_handover.h"
#include "lb_log.h"
#include "lb_util.h"
#include "pool.h"
#include "proxy.h"
#include "registry.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_ATTEMPTS 8     /* first try + retries, whatever the policy says */
#define READ_SLOW    16384 /* read size towards a peer that could not keep up */
#define SLOW_READS   8     /* reads sent whole before a slow direction reads big again */
/* Pending bytes a worker may hold before every read is a small one: bounds
 * what peers that do not read can make lbd keep (16 KiB each beyond it). */
#define PENDING_BUDGET (32u << 20)
#define PROBE_S        1.0  /* how often a peer we stopped reading is looked at */
#define FIN_STALL_S    10.0 /* client gone and backend not reading for this long: end */
#define HEADER_WAIT_S  5.0  /* accept-proxy: the PROXY header arrives within this */
/* A direction that read this many bytes in reads of at least READ_SLOW
 * relays the rest of that run with splice(2); SMALL_READS_END smaller reads
 * in a row end the run (one alone is a message's header, or a stream's
 * tail).  Small messages cost less through the scratch buffer
 * (docs/performance.md, "Bulk relay: splice").  A build may override the
 * threshold to measure another. */
#ifndef SPLICE_AFTER
#define SPLICE_AFTER (64u << 10)
#endif
#define SMALL_READS_END 3
#define SPLICE_FLAGS    (SPLICE_F_MOVE | SPLICE_F_NONBLOCK)

/* Slots of the per-pool statistics: lbd's own bounds (--workers, --pool);
 * a worker or pool beyond them (tests) goes uncounted. */
#define STATS_WORKERS 256
#define STATS_POOLS   64

enum session_state {
    SESSION_HEADER, /* accept-proxy: reading the client's PROXY header */
    SESSION_QUEUED, /* every eligible backend at max_conns: waiting for a slot */
    SESSION_CONNECTING,
    SESSION_PROXYING,
    SESSION_PARKED,
    SESSION_CLOSED
};

/* One direction: bytes read from `from` and written to `to`. */
struct half {
    ev_io from_r;        /* read watcher on the source socket */
    ev_io to_w;          /* write watcher on the destination socket */
    char *pending;       /* bytes `to` could not take yet: allocated then, freed once sent */
    size_t pending_size; /* its size, counted in the worker's pending_bytes */
    size_t off, len;
    struct lb_pipe pipe;   /* the worker's, held only while bytes for `to` are in it */
    size_t piped;          /* bytes in the pipe, counted in the worker's pending_bytes */
    size_t run;            /* bytes of this run's big reads (up to SPLICE_AFTER) */
    unsigned small_reads;  /* reads under READ_SLOW in a row */
    unsigned slow;         /* `to` filled up lately: read READ_SLOW at a time for this many reads */
    bool eof;              /* read 0 from `from` */
    bool shut;             /* forwarded as shutdown(to, SHUT_WR) */
    ev_tstamp progress_at; /* `to` last took bytes, or pending began */
};

struct lb_session {
    struct lb_worker *worker;
    struct lb_wpool *pool;
    struct lb_backend *backend; /* referenced while connecting and proxying */
    enum session_state state;
    bool reset;             /* end with RST on both sockets, not FIN */
    bool refused;           /* offered to the next process at an upgrade, refused: stays here */
    bool connect_timed_out; /* the last failed connect attempt ran out of time */
    bool client_spoke;      /* queued: the client sent bytes (left in the kernel until connected) */
    uint8_t closed_first;   /* CLOSED_BY_*: whose EOF came first */
    uint16_t header_len;    /* lbd's PROXY header, counted in bytes_up */
    int client_fd;
    int server_fd;
    ev_timer timer; /* connect timeout, then idle timeout and peer probes */
    ev_tstamp started_at;
    ev_tstamp last_activity;
    double connect_at, connected_at;     /* monotonic: connect() of the last attempt, confirmed */
    ev_tstamp queued_at, queue_deadline; /* first queued (0: never), and when it gives up */
    ev_tstamp queue_wait;                /* seconds spent queued, all told */
    struct lb_queued queue;              /* its place in the pool's queue (conn_queue.h) */
    uint64_t bytes_up, bytes_down;       /* relayed so far, each way */
    ev_tstamp idle_timeout;              /* seconds, 0 = none */
    struct half up;                      /* client -> backend */
    struct half down;                    /* backend -> client */
    /* backends tried: compared by address only, never dereferenced */
    struct lb_backend *tried[MAX_ATTEMPTS];
    size_t n_tried;
    struct lb_list b_link; /* backend->ws[worker].list, newest first */
    struct sockaddr_storage client_addr;
    struct lb_list link; /* worker->live, or worker->parked */
    struct inbound *in;  /* accept-proxy: the header read so far; NULL once read */
    struct lb_reap reap; /* freed by the worker's reaper */
};

/* The PROXY header of an accept-proxy client, while it is read. */
struct inbound {
    size_t len;
    uint8_t buf[LB_PROXY_HEADER_MAX];
};

enum { CLOSED_BY_NONE, CLOSED_BY_CLIENT, CLOSED_BY_BACKEND };

static void session_connect_next(struct lb_session *s);
static void session_confirm(struct lb_session *s);
static void session_confirm_at(struct lb_session *s, double connected_at);
static void session_connect_failed(struct lb_session *s, int err, const char *why);
static void session_finalize(struct lb_session *s, enum lb_session_end end, const char *why);
static void session_read_header(struct lb_session *s);
static void session_bad_header(struct lb_session *s, const char *why);
static void session_free(struct lb_reap *r);
static void session_abort_reset(struct lb_session *s, enum lb_session_end end, const char *why);
static void session_abort_write_failed(struct lb_session *s, const struct half *h);
static void session_arm_timer(struct lb_session *s);
static void session_queued_client_readable(struct lb_session *s);
static void session_queue_timed_out(struct lb_session *s);
static void session_unqueue(struct lb_session *s);

struct lb_session *lb_session_of_link(struct lb_list *l)
{
    return lb_list_entry(l, struct lb_session, link);
}

struct lb_wpool *lb_session_pool(const struct lb_session *s)
{
    return s->pool;
}

static void set_nodelay(int fd)
{
    int one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ------------------------------------------- access log, histograms -- */

static const char *const end_names[LB_END_COUNT] = {
    [LB_END_CLIENT_CLOSED] = "client_closed",
    [LB_END_BACKEND_CLOSED] = "backend_closed",
    [LB_END_CLIENT_RESET] = "client_reset",
    [LB_END_BACKEND_RESET] = "backend_reset",
    [LB_END_CONNECT_TIMEOUT] = "connect_timeout",
    [LB_END_CONNECT_REFUSED] = "connect_refused",
    [LB_END_NO_BACKEND] = "no_backend",
    [LB_END_IDLE_TIMEOUT] = "idle_timeout",
    [LB_END_DRAINED_PAST_DEADLINE] = "drained_past_deadline",
    [LB_END_SHUTDOWN] = "shutdown",
    [LB_END_MOVED] = "moved",
    [LB_END_KILLED] = "killed",
    [LB_END_BAD_PROXY_HEADER] = "bad_proxy_header",
    [LB_END_OUT_OF_MEMORY] = "out_of_memory",
    [LB_END_QUEUE_TIMEOUT] = "queue_timeout",
};

const char *lb_session_end_name(enum lb_session_end end)
{
    return (unsigned)end < LB_END_COUNT ? end_names[end] : "unknown";
}

bool lb_session_end_is_error(enum lb_session_end end)
{
    return end != LB_END_CLIENT_CLOSED && end != LB_END_BACKEND_CLOSED && end != LB_END_MOVED;
}

/* Set once before the workers start (lbd's --access-log, --access-log-sample). */
static bool access_log_on = true;
static uint64_t access_log_sample = 1;

void lb_session_set_access_log(bool on, uint64_t sample)
{
    access_log_on = on;
    access_log_sample = sample ? sample : 1;
}

static const double connect_bounds[LB_CONNECT_BUCKETS] = LB_CONNECT_BOUNDS;
static const double duration_bounds[LB_DURATION_BUCKETS] = LB_DURATION_BOUNDS;

/*
 * What one worker saw of one pool: written by that worker only (relaxed
 * load and store, lb_counter_add), summed on read.  A static table: the
 * pages of slots no worker uses are never touched, so cost no memory.
 */
struct pool_wstats {
    _Atomic uint64_t connect[LB_CONNECT_BUCKETS + 1];
    _Atomic uint64_t connect_ns;
    _Atomic uint64_t duration[LB_DURATION_BUCKETS + 1];
    _Atomic uint64_t duration_us;
    uint64_t normal_ends; /* the worker's own: for --access-log-sample */
} __attribute__((aligned(64)));

static struct pool_wstats pool_wstats[STATS_WORKERS][STATS_POOLS];

size_t lb_histogram_bucket(const double *bounds, size_t n, double v)
{
    size_t i = 0;

    while (i < n && v > bounds[i])
        i++;
    return i;
}

/* s's slot, or NULL beyond the table. */
static struct pool_wstats *session_wstats(const struct lb_session *s)
{
    size_t pool = (size_t)(s->pool - s->worker->pools);

    if (s->worker->index >= STATS_WORKERS || pool >= STATS_POOLS)
        return NULL;
    return &pool_wstats[s->worker->index][pool];
}

void lb_session_histograms(size_t pool, unsigned n_workers, struct lb_session_histograms *out)
{
    uint64_t connect_ns = 0, duration_us = 0;

    memset(out, 0, sizeof(*out));
    if (pool >= STATS_POOLS)
        return;
    for (unsigned w = 0; w < n_workers && w < STATS_WORKERS; w++) {
        const struct pool_wstats *st = &pool_wstats[w][pool];

        for (size_t i = 0; i <= LB_CONNECT_BUCKETS; i++)
            out->connect[i] += lb_counter_get(&st->connect[i]);
        for (size_t i = 0; i <= LB_DURATION_BUCKETS; i++)
            out->duration[i] += lb_counter_get(&st->duration[i]);
        connect_ns += lb_counter_get(&st->connect_ns);
        duration_us += lb_counter_get(&st->duration_us);
    }
    out->connect_sum = (double)connect_ns / 1e9;
    out->duration_sum = (double)duration_us / 1e6;
}

/* Seconds on the monotonic clock (the vDSO: no system call). */
static double mono_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void observe_connect(struct lb_session *s, double seconds)
{
    struct pool_wstats *st = session_wstats(s);

    if (!st)
        return;
    if (seconds < 0)
        seconds = 0;
    lb_counter_add(&st->connect[lb_histogram_bucket(connect_bounds, LB_CONNECT_BUCKETS, seconds)],
                   1);
    lb_counter_add(&st->connect_ns, (uint64_t)(seconds * 1e9));
}

static void observe_duration(struct lb_session *s, double seconds)
{
    struct pool_wstats *st = session_wstats(s);

    if (!st)
        return;
    if (seconds < 0)
        seconds = 0;
    lb_counter_add(
        &st->duration[lb_histogram_bucket(duration_bounds, LB_DURATION_BUCKETS, seconds)], 1);
    lb_counter_add(&st->duration_us, (uint64_t)(seconds * 1e6));
}

/* True when this session's access line is written (formatting comes after). */
static bool access_log_wanted(struct lb_session *s, enum lb_session_end end)
{
    struct pool_wstats *st;

    if (!access_log_on || !lb_log_enabled(LB_LOG_INFO))
        return false;
    if (access_log_sample <= 1 || lb_session_end_is_error(end) || !(st = session_wstats(s)))
        return true;
    return st->normal_ends++ % access_log_sample == 0;
}

/* The access line of s, ending now after `duration` seconds (backend still held). */
static void session_log_access(struct lb_session *s, enum lb_session_end end, double duration)
{
    char client[64], backend[LB_NAME_MAX + 16] = "", connect[40] = "", queue[40] = "";
    uint64_t in = s->bytes_up;

    if (!access_log_wanted(s, end))
        return;
    lb_addr_format((struct sockaddr *)&s->client_addr, client, sizeof(client));
    if (s->backend)
        snprintf(backend, sizeof(backend), " backend=%s", s->backend->id);
    if (s->connected_at > 0)
        snprintf(connect, sizeof(connect), " connect_ms=%.3f",
                 (s->connected_at - s->connect_at) * 1e3);
    if (s->queued_at > 0)
        snprintf(queue, sizeof(queue), " queue_ms=%.1f", s->queue_wait * 1e3);
    in -= in < s->header_len ? in : s->header_len;
    LB_INFO("access",
            "pool=%s%s client=%s%s%s duration_ms=%.1f bytes_in=%llu bytes_out=%llu retries=%zu "
            "end=%s",
            s->pool->pool->name, backend, client, queue, connect, duration * 1e3,
            (unsigned long long)in, (unsigned long long)s->bytes_down,
            s->n_tried ? s->n_tried - 1 : 0, lb_session_end_name(end));
}

/* How a session that both sides closed ended: whoever closed first. */
static enum lb_session_end session_closed_end(const struct lb_session *s)
{
    return s->closed_first == CLOSED_BY_BACKEND ? LB_END_BACKEND_CLOSED : LB_END_CLIENT_CLOSED;
}

/* ------------------------------------------------------------- relay -- */

/* This worker's counters of s's backend. */
static struct lb_backend_wstats *session_stats(const struct lb_session *s)
{
    return &s->backend->ws[s->worker->index];
}

static void session_count_bytes(struct lb_session *s, const struct half *h, uint64_t n)
{
    struct lb_backend_wstats *st = session_stats(s);

    lb_counter_add(h == &s->up ? &st->bytes_in : &st->bytes_out, n);
    if (h == &s->up)
        s->bytes_up += n;
    else
        s->bytes_down += n;
}

/* Bytes h holds for its destination: in its buffer, or in its pipe. */
static size_t half_pending(const struct half *h)
{
    return h->len + h->piped;
}

/* Gives h's pending buffer back (it is empty, or the session ends). */
static void half_release(struct lb_session *s, struct half *h)
{
    s->worker->pending_bytes -= h->pending_size;
    h->pending_size = 0;
    free(h->pending);
    h->pending = NULL;
}

/* Gives h's pipe back to the worker: kept for another session when empty,
 * closed with its bytes when the session ends holding some. */
static void half_release_pipe(struct lb_session *s, struct half *h)
{
    s->worker->pending_bytes -= h->piped;
    if (h->piped)
        lb_pipe_pool_drop(&s->worker->pipes, &h->pipe);
    else
        lb_pipe_pool_put(&s->worker->pipes, &h->pipe);
    h->piped = 0;
}

/*
 * Moves the bytes in h's pipe to the end of its pending buffer (after the
 * bytes already there) and gives the pipe back, so that every byte h holds
 * for its destination is in user space.  Used when a session must be
 * serialised with its in-flight bytes (hot-upgrade hand-over); the write
 * watcher, if running, then flushes the buffer as usual.  Returns 0 or
 * -ENOMEM (nothing moved); -EIO if the pipe held fewer bytes than counted
 * (cannot happen: what was read is kept, the rest stays in the pipe).
 */
static int half_unsplice(struct lb_session *s, struct half *h)
{
    size_t keep = h->len, got = 0;
    char *buf;

    if (!h->piped) {
        half_release_pipe(s, h);
        return 0;
    }
    if (!(buf = malloc(keep + h->piped)))
        return -ENOMEM;
    if (keep)
        memcpy(buf, h->pending + h->off, keep);
    while (got < h->piped) {
        ssize_t r = read(h->pipe.rd, buf + keep + got, h->piped - got);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    half_release(s, h);
    h->pending = buf;
    h->pending_size = keep + h->piped; /* allocated size, whatever was read */
    s->worker->pending_bytes += h->pending_size;
    h->off = 0;
    h->len = keep + got;
    h->piped -= got;
    s->worker->pending_bytes -= got;
    if (h->piped)
        return -EIO;
    half_release_pipe(s, h);
    return 0;
}

int lb_session_unsplice_all(struct lb_session *s)
{
    int rc = half_unsplice(s, &s->up);

    return rc < 0 ? rc : half_unsplice(s, &s->down);
}

/* Flushes pending bytes of h to `to`, the buffer's then the pipe's.  Returns
 * 0 when all written, 1 when some remain (write watcher started), -1 on a
 * write error (errno set). */
static int half_flush(struct lb_session *s, struct half *h, int to)
{
    while (h->len) {
        ssize_t w = send(to, h->pending + h->off, h->len, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ev_io_start(s->worker->loop, &h->to_w);
                return 1;
            }
            return -1;
        }
        h->off += (size_t)w;
        h->len -= (size_t)w;
        h->progress_at = ev_now(s->worker->loop);
        session_count_bytes(s, h, (uint64_t)w);
        if (s->state == SESSION_CONNECTING)
            session_confirm(s); /* the backend took bytes: the connect is done */
    }
    /* Borrowed while bytes were in flight: an idle session holds no buffer. */
    half_release(s, h);
    h->off = 0;
    while (h->piped) {
        ssize_t w = splice(h->pipe.rd, NULL, to, NULL, h->piped, SPLICE_FLAGS);

        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                ev_io_start(s->worker->loop, &h->to_w);
                return 1;
            }
            if (w == 0)
                errno = EPIPE; /* the pipe lost bytes it was counted to hold: cannot happen */
            return -1;
        }
        h->piped -= (size_t)w;
        s->worker->pending_bytes -= (size_t)w;
        h->progress_at = ev_now(s->worker->loop);
        session_count_bytes(s, h, (uint64_t)w);
    }
    /* Likewise the pipe: back to the worker the moment it is empty. */
    lb_pipe_pool_put(&s->worker->pipes, &h->pipe);
    ev_io_stop(s->worker->loop, &h->to_w);
    return 0;
}

static bool session_is_done(const struct lb_session *s)
{
    return s->up.shut && s->down.shut;
}

/*
 * Forwards EOF once nothing is pending.  When the other direction is
 * already finished, the session ends right after and close() sends the
 * FIN: no shutdown() needed.
 */
static void half_forward_eof(struct lb_session *s, struct half *h, int to)
{
    const struct half *other = h == &s->up ? &s->down : &s->up;

    if (h == &s->up && s->state == SESSION_CONNECTING)
        return; /* shutdown() would abort the connect: forwarded once confirmed */
    if (h->eof && !half_pending(h) && !h->shut) {
        if (!other->shut)
            shutdown(to, SHUT_WR);
        h->shut = true;
    }
}

/*
 * Keeps `len` bytes the destination of h could not take (after those h
 * holds already) and stops reading h's source until they are sent.
 * Returns 0, or -1 after finalizing the session (out of memory).
 */
static int half_keep(struct lb_session *s, struct half *h, const char *bytes, size_t len)
{
    size_t have = h->len;
    char *p = malloc(have + len);

    if (!p) {
        session_finalize(s, LB_END_OUT_OF_MEMORY, "out of memory");
        return -1;
    }
    if (have)
        memcpy(p, h->pending + h->off, have);
    memcpy(p + have, bytes, len);
    half_release(s, h);
    h->pending = p;
    h->pending_size = have + len;
    s->worker->pending_bytes += have + len;
    h->off = 0;
    h->len = have + len;
    h->progress_at = ev_now(s->worker->loop);
    ev_io_stop(s->worker->loop, &h->from_r);
    return 0;
}

/* h read n bytes: a big read makes its run grow, small ones end it. */
static void half_note_run(struct half *h, size_t n)
{
    if (n < READ_SLOW) {
        if (++h->small_reads >= SMALL_READS_END)
            h->run = 0;
        return;
    }
    h->small_reads = 0;
    if (h->run < SPLICE_AFTER)
        h->run += n;
}

/*
 * True when h's next read goes through a pipe, taken here from the worker:
 * h proved bulk (SPLICE_AFTER bytes in big reads in a row: a stream, not
 * messages) and the connect is done
 * (while it runs, the client's bytes must stay in user space, to be sent
 * again to another backend; the PROXY header is sent before any read).
 * When the worker has no pipe to spare, h reads into the buffer.
 */
static bool half_take_pipe(struct lb_session *s, struct half *h)
{
    if (h->pipe.rd >= 0)
        return true;
    if (s->state != SESSION_PROXYING || h->run < SPLICE_AFTER)
        return false;
    return lb_pipe_pool_get(&s->worker->pipes, &h->pipe) == 0;
}

/*
 * Forwards what h's source has, up to 4 reads.  A read goes to the scratch
 * buffer and is sent at once, or, once h proved bulk, is spliced into h's
 * pipe and from there to `to`.  What `to` cannot take stays pending (kept
 * in a buffer of its size, or left in the pipe) and h stops reading until
 * half_writable() flushed it.  Nothing is pending when this runs.
 */
static void half_read(struct lb_session *s, struct half *h, int from, int to)
{
    char *buf = s->worker->scratch;
    ssize_t n;

    for (int round = 0; round < 4; round++) {
        bool spliced = half_take_pipe(s, h);
        size_t cap = sizeof(s->worker->scratch);
        ssize_t w = 0;

        /* Big reads halve the system calls of a bulk transfer per halving of
         * their count; towards a peer that could not take the last one, small
         * reads bound what must be kept when it cannot take this one either.
         * A pipe takes what it can hold: the worker's pipes bound that. */
        if (spliced)
            cap = h->pipe.size;
        else if (h->slow || s->state == SESSION_CONNECTING ||
                 s->worker->pending_bytes > PENDING_BUDGET)
            cap = READ_SLOW;

        n = spliced ? splice(from, NULL, h->pipe.wr, NULL, cap, SPLICE_FLAGS)
                    : recv(from, buf, cap, 0);
        if (spliced && n <= 0) {
            int err = errno;

            lb_pipe_pool_put(&s->worker->pipes, &h->pipe); /* still empty */
            errno = err;
            if (n < 0 && (errno == EINVAL || errno == ENOSYS)) {
                /* This kernel cannot splice these: buffers from now on. */
                s->worker->pipes.disabled = true;
                continue;
            }
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (h == &s->down && s->state == SESSION_CONNECTING) {
                session_connect_failed(s, errno, strerror(errno)); /* refused, unreachable */
                return;
            }
            if (h == &s->up)
                session_abort_reset(s, LB_END_CLIENT_RESET, "client reset the connection");
            else
                session_abort_reset(s, LB_END_BACKEND_RESET, "backend reset the connection");
            return;
        }
        if (h == &s->down && s->state == SESSION_CONNECTING)
            session_confirm(s); /* the backend spoke (or closed): the connect is done */
        if (n == 0) {
            h->eof = true;
            if (s->closed_first == CLOSED_BY_NONE)
                s->closed_first = h == &s->up ? CLOSED_BY_CLIENT : CLOSED_BY_BACKEND;
            ev_io_stop(s->worker->loop, &h->from_r);
            if (h == &s->up && s->state == SESSION_CONNECTING && !h->len) {
                /* Nothing to send to learn that the connect is done: writability tells. */
                ev_io_start(s->worker->loop, &h->to_w);
                return;
            }
            half_forward_eof(s, h, to);
            if (session_is_done(s))
                session_finalize(s, session_closed_end(s), "closed by both sides");
            return;
        }
        s->last_activity = ev_now(s->worker->loop);
        half_note_run(h, (size_t)n);
        if (spliced) {
            int rc;

            h->piped = (size_t)n;
            s->worker->pending_bytes += (size_t)n;
            rc = half_flush(s, h, to);
            if (rc < 0) {
                session_abort_write_failed(s, h);
                return;
            }
            if (rc > 0) {
                /* Left in the pipe: stop reading until it drains, as below. */
                h->slow = SLOW_READS;
                h->progress_at = ev_now(s->worker->loop);
                ev_io_stop(s->worker->loop, &h->from_r);
                session_arm_timer(s);
                return;
            }
            if (h->slow)
                h->slow--;
            if ((size_t)n < cap)
                return;
            continue;
        }
        while (w < n) {
            ssize_t k = send(to, buf + w, (size_t)(n - w), MSG_NOSIGNAL);

            if (k < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                if (h == &s->up && s->state == SESSION_CONNECTING) {
                    /* Refused: the client's bytes go to the next backend. */
                    int err = errno;

                    if (half_keep(s, h, buf + w, (size_t)(n - w)) == 0)
                        session_connect_failed(s, err, strerror(err));
                    return;
                }
                session_abort_write_failed(s, h);
                return;
            }
            w += k;
            if (h == &s->up && s->state == SESSION_CONNECTING)
                session_confirm(s);
        }
        session_count_bytes(s, h, (uint64_t)w);
        if (w < n) {
            /* The other side is full (or still connecting): keep the rest,
             * stop reading until it drains. */
            h->slow = SLOW_READS;
            if (half_keep(s, h, buf + w, (size_t)(n - w)) < 0)
                return;
            ev_io_start(s->worker->loop, &h->to_w);
            session_arm_timer(s); /* watch the peer we stopped reading */
            return;
        }
        if (h->slow)
            h->slow--;
        if ((size_t)n < cap)
            return;
    }
}

static void session_client_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, up.from_r);

    if (s->state == SESSION_HEADER)
        session_read_header(s);
    else if (s->state == SESSION_QUEUED)
        session_queued_client_readable(s);
    else
        half_read(s, &s->up, s->client_fd, s->server_fd);
}

static void session_server_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, down.from_r);

    half_read(s, &s->down, s->server_fd, s->client_fd);
}

/* The pending socket error of fd (0: none). */
static int socket_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

static void half_writable(struct lb_session *s, struct half *h, int to)
{
    int rc;

    if (h == &s->up && s->state == SESSION_CONNECTING && !h->len) {
        /* Watched only to learn that the connect finished (the client
         * closed without sending anything). */
        int err = socket_error(s->server_fd);

        ev_io_stop(s->worker->loop, &h->to_w);
        if (err)
            session_connect_failed(s, err, strerror(err));
        else
            session_confirm(s);
        return;
    }
    rc = half_flush(s, h, to);
    if (rc < 0) {
        if (h == &s->up && s->state == SESSION_CONNECTING) {
            int err = errno;

            session_connect_failed(s, err, strerror(err)); /* the bytes stay for the next one */
            return;
        }
        session_abort_write_failed(s, h);
        return;
    }
    if (rc > 0)
        return;
    s->last_activity = ev_now(s->worker->loop);
    if (h->eof) {
        half_forward_eof(s, h, to);
        if (session_is_done(s))
            session_finalize(s, session_closed_end(s), "closed by both sides");
        return;
    }
    ev_io_start(s->worker->loop, &h->from_r);
}

static void session_server_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, up.to_w);

    half_writable(s, &s->up, s->server_fd);
}

static void session_client_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, down.to_w);

    half_writable(s, &s->down, s->client_fd);
}

/* ------------------------------------------------------------ timers -- */

/* True when h stopped reading its source because its destination is full. */
static bool half_is_paused(const struct half *h)
{
    return half_pending(h) > 0 && !h->eof;
}

/*
 * While proxying, one timer serves the idle timeout and, while a direction
 * is paused, a probe of the peer lbd stopped reading: nothing else would
 * notice that peer going away.
 */
static void session_arm_timer(struct lb_session *s)
{
    struct ev_loop *loop = s->worker->loop;
    ev_tstamp after = -1.;

    if (s->state != SESSION_PROXYING)
        return;
    if (s->idle_timeout > 0)
        after = s->last_activity + s->idle_timeout - ev_now(loop);
    if ((half_is_paused(&s->up) || half_is_paused(&s->down)) && (after < 0 || after > PROBE_S))
        after = PROBE_S;
    if (after < 0 && s->idle_timeout <= 0) {
        ev_timer_stop(loop, &s->timer);
        return;
    }
    if (after < 0.001)
        after = 0.001;
    ev_timer_stop(loop, &s->timer);
    ev_timer_set(&s->timer, after, 0.);
    ev_timer_start(loop, &s->timer);
}

enum peer_state { PEER_THERE, PEER_FINISHED, PEER_RESET };

/* What the kernel knows of the peer of fd, without reading from it. */
static enum peer_state peer_state(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    int err = 0;
    socklen_t elen = sizeof(err);

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err)
        return PEER_RESET;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return PEER_THERE;
    if (ti.tcpi_state == TCP_CLOSE)
        return PEER_RESET;
    if (ti.tcpi_state == TCP_CLOSE_WAIT || ti.tcpi_state == TCP_LAST_ACK)
        return PEER_FINISHED;
    return PEER_THERE;
}

/*
 * A direction is paused: its source is not read until its destination
 * takes the pending bytes.  A source that reset is gone for good: end the
 * session (RST both ways) rather than hold it until the idle timeout.  A
 * client that finished sending while the backend has taken nothing for
 * FIN_STALL_S is gone too: its bytes can only reach a backend that stopped
 * reading.  A backend that finished while a slow client reads is normal.
 * Returns true when the session ended.
 */
static bool session_probe_paused(struct lb_session *s, ev_tstamp now)
{
    if (half_is_paused(&s->up)) {
        enum peer_state st = peer_state(s->client_fd);

        if (st == PEER_RESET) {
            session_abort_reset(s, LB_END_CLIENT_RESET,
                                "client reset while the backend was not reading");
            return true;
        }
        if (st == PEER_FINISHED && now - s->up.progress_at >= FIN_STALL_S) {
            /* A stall: the backend took nothing for FIN_STALL_S. */
            session_abort_reset(s, LB_END_IDLE_TIMEOUT,
                                "client closed and the backend stopped reading");
            return true;
        }
    }
    if (half_is_paused(&s->down) && peer_state(s->server_fd) == PEER_RESET) {
        session_abort_reset(s, LB_END_BACKEND_RESET,
                            "backend reset while the client was not reading");
        return true;
    }
    return false;
}

/*
 * True when the kernel holds fd's connect as established; *rtt_s is then
 * its smoothed round-trip time, which before any data is the handshake's.
 */
static bool socket_is_established(int fd, double *rtt_s)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);

    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || ti.tcpi_state != TCP_ESTABLISHED)
        return false;
    *rtt_s = (double)ti.tcpi_rtt / 1e6;
    return true;
}

bool lb_session_settle(struct lb_session *s)
{
    double rtt;

    if (s->state != SESSION_CONNECTING || half_pending(&s->up) || s->server_fd < 0 ||
        !socket_is_established(s->server_fd, &rtt))
        return false;
    session_confirm_at(s, s->connect_at + rtt);
    return true;
}

static void session_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_session *s = lb_container_of(w, struct lb_session, timer);
    ev_tstamp now = ev_now(loop);

    if (s->state == SESSION_HEADER) {
        session_bad_header(s, "no PROXY header within 5 s");
        return;
    }
    if (s->state == SESSION_QUEUED) {
        session_queue_timed_out(s);
        return;
    }
    if (s->state == SESSION_CONNECTING) {
        /* Neither side spoke: ask the kernel whether the connect finished
         * (and when, about: a timer is no measure of the handshake). */
        if (lb_session_settle(s))
            return;
        if (s->pool->policy.connect_timeout_ms > 0) {
            session_connect_failed(s, 0, "connect timed out");
        } else {
            ev_timer_set(&s->timer, PROBE_S, 0.); /* no timeout of lbd's own: wait on */
            ev_timer_start(loop, &s->timer);
        }
        return;
    }
    if (session_probe_paused(s, now))
        return;
    if (s->idle_timeout > 0 && s->last_activity + s->idle_timeout - now <= 0.001) {
        session_finalize(s, LB_END_IDLE_TIMEOUT, "idle timeout");
        return;
    }
    session_arm_timer(s);
}

/* ----------------------------------------------------------- connect -- */

static void session_release_backend(struct lb_session *s)
{
    struct lb_backend *b = s->backend;

    if (!b)
        return;
    lb_list_remove(&s->b_link);
    lb_counter_add(&session_stats(s)->sessions, (uint64_t)-1);
    s->backend = NULL;
    /* The last connection of a drained or retired backend: the control
     * loop reports it (it set notify_zero before it last read `active`). */
    if (atomic_fetch_sub(&b->active, 1) == 1 && atomic_load(&b->notify_zero))
        lb_worker_tell_zero(s->worker, b);
    lb_backend_unref(b);
    /* A slot came free: the next client waiting for one, if any, tries it. */
    if (lb_conn_queue_length(s->pool->queue))
        lb_conn_queue_grant(s->pool->queue);
}

/*
 * Queues the PROXY protocol header as the first bytes towards the backend;
 * client bytes are read only once it is written.  On a retry the header,
 * still unsent, goes to the next backend.  Returns 0, or -1 after
 * finalizing the session.
 */
static int session_queue_proxy_header(struct lb_session *s, const struct sockaddr_storage *to)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    char header[256]; /* v1 is at most 107 bytes, v2 with addresses 52 */
    int n;

    if (to && to->ss_family != AF_UNSPEC) {
        local = *to; /* the address the client reached, per the balancer in front */
    } else if (getsockname(s->client_fd, (struct sockaddr *)&local, &len) < 0) {
        session_finalize(s, LB_END_OUT_OF_MEMORY, "getsockname failed");
        return -1;
    }
    n = lb_proxy_protocol_build(s->pool->policy.proxy_protocol, (struct sockaddr *)&s->client_addr,
                                (struct sockaddr *)&local, header, sizeof(header));
    if (n < 0) {
        session_finalize(s, LB_END_OUT_OF_MEMORY, "cannot build PROXY header");
        return -1;
    }
    s->header_len = (uint16_t)n;
    return half_keep(s, &s->up, header, (size_t)n);
}

/*
 * The connect to s->backend is done: the backend took bytes, sent some or
 * closed, or the kernel says so (then at about `connected_at`, monotonic).
 * Counted as a connection, a connect time and a passive health success;
 * an EOF of the client held back meanwhile goes on.
 */
static void session_confirm_at(struct lb_session *s, double connected_at)
{
    if (s->state != SESSION_CONNECTING)
        return;
    ev_timer_stop(s->worker->loop, &s->timer);
    s->state = SESSION_PROXYING;
    s->connected_at = connected_at;
    observe_connect(s, connected_at - s->connect_at);
    lb_counter_add(&session_stats(s)->total, 1);
    lb_health_connect_result(s->backend, true, s->pool->policy.health.fall);
    s->last_activity = ev_now(s->worker->loop);
    half_forward_eof(s, &s->up, s->server_fd);
    session_arm_timer(s);
}

static void session_confirm(struct lb_session *s)
{
    if (s->state == SESSION_CONNECTING)
        session_confirm_at(s, mono_now());
}

/*
 * Connects without waiting to be told the connect finished (that costs an
 * epoll round and two epoll_ctl per connection): the backend's socket is
 * watched for reading (its first bytes, or the error of a refused
 * connect), the client's bytes are forwarded as they come (a send during
 * the handshake would block: they wait in the pending buffer, which is
 * written once the socket turns writable), and the first success on
 * either confirms the connect.  When neither comes, the connect timeout
 * asks the kernel.
 */
static void session_watch_connect(struct lb_session *s)
{
    struct ev_loop *loop = s->worker->loop;

    ev_io_set(&s->up.to_w, s->server_fd, EV_WRITE);
    ev_io_set(&s->down.from_r, s->server_fd, EV_READ);
    ev_io_start(loop, &s->down.from_r);
    if (s->up.len || s->up.eof)
        ev_io_start(loop, &s->up.to_w);
    else
        ev_io_start(loop, &s->up.from_r);
    /* Without a connect timeout of lbd's own, the kernel is still asked
     * now and then: a connect nobody speaks through must reach PROXYING,
     * where the idle timeout applies. */
    ev_timer_set(&s->timer,
                 s->pool->policy.connect_timeout_ms > 0
                     ? (double)s->pool->policy.connect_timeout_ms / 1000.
                     : PROBE_S,
                 0.);
    ev_timer_start(loop, &s->timer);
}

/*
 * A connect attempt to s->backend failed (err: its errno, 0 for the
 * connect timeout): count it, tell passive health, and log (at most once a
 * second per backend, with the number of failures not logged, so a dead
 * backend under load does not flood the log).
 */
static void session_connect_failed(struct lb_session *s, int err, const char *why)
{
    struct lb_backend *b = s->backend;
    struct lb_backend_wstats *st = session_stats(s);
    ev_tstamp now = ev_now(s->worker->loop);

    lb_counter_add(&st->connect_failures, 1);
    s->connect_timed_out = err == 0 || err == ETIMEDOUT;
    if (now - st->fail_logged_at >= 1.0) {
        LB_WARN("proxy",
                "msg=\"connect to backend failed\" pool=%s backend=%s addr=%s "
                "error=\"%s\" unlogged_failures=%llu",
                s->pool->pool->name, b->id, b->spec.addr, why,
                (unsigned long long)st->fail_unlogged);
        st->fail_logged_at = now;
        st->fail_unlogged = 0;
    } else {
        st->fail_unlogged++;
    }
    if (lb_health_connect_result(b, false, s->pool->policy.health.fall))
        lb_worker_ask_eject(s->worker, b);
    if (s->n_tried <= (size_t)s->pool->policy.retries) {
        lb_counter_add(&s->pool->retries, 1);
        lb_counter_add(&st->retries, 1);
    }
    session_connect_next(s);
}

/* One connection more on b, unless it has max_conns (0: no cap) already. */
static bool backend_reserve(struct lb_backend *b, uint64_t max_conns)
{
    uint64_t n;

    if (!max_conns) {
        atomic_fetch_add(&b->active, 1);
        return true;
    }
    n = atomic_load(&b->active);
    while (n < max_conns)
        if (atomic_compare_exchange_weak(&b->active, &n, n + 1))
            return true;
    return false;
}

/*
 * Picks from this worker's copy of the pool and reserves a connection on
 * the backend (its `active`, shared by every worker).  A backend another
 * worker filled to max_conns between the pick and the reservation is
 * passed over and the pick tried again: max_conns is never exceeded, and
 * the count never reads above it either.
 */
static struct lb_backend *session_pick(struct lb_session *s, struct lb_pick *pick)
{
    for (int round = 0; round < 16; round++) {
        struct lb_backend *b = s->pool->snap->algo->pick(s->pool->snap, pick);

        if (!b)
            return NULL;
        if (backend_reserve(b, pick->max_conns))
            return b;
    }
    return NULL;
}

/* The per-backend cap of wp's policy, as struct lb_pick takes it (0: none). */
static uint64_t pool_max_conns(const struct lb_wpool *wp)
{
    return wp->policy.max_conns > 0 ? (uint64_t)wp->policy.max_conns : 0;
}

/* True when a backend of wp's copy would take a new client now (nothing reserved). */
static bool pool_has_room(struct lb_wpool *wp)
{
    struct lb_pick pick = {.max_conns = pool_max_conns(wp)};

    return wp->snap->algo->pick(wp->snap, &pick) != NULL;
}

/* ------------------------------------------------------------- queue -- */

/*
 * Whether a client that found no backend waits for a slot: it has tried
 * none yet (a retry that finds the rest full fails as before), and either
 * it waits already -- it keeps its place until its deadline, whatever
 * befell the backends meanwhile (drained, down, weight 0, removed) -- or
 * the pool queues and backends are there, only full.
 */
static bool session_should_wait(struct lb_session *s, const struct lb_pick *pick)
{
    struct lb_pick any = *pick;

    if (s->n_tried)
        return false;
    if (s->queued_at > 0)
        return true;
    if (!pick->max_conns || s->pool->policy.queue_timeout_ms <= 0)
        return false;
    any.max_conns = 0;
    return s->pool->snap->algo->pick(s->pool->snap, &any) != NULL;
}

/* Whether a new client queues behind the clients already waiting (first come, first served). */
static bool session_must_queue_behind(const struct lb_session *s)
{
    return !s->n_tried && !s->queue.granted && s->pool->policy.queue_timeout_ms > 0 &&
           lb_conn_queue_length(s->pool->queue);
}

/*
 * Puts s in its pool's queue until a slot frees or its deadline (queue_timeout
 * after it first queued) passes.  Meanwhile its client is watched only for
 * leaving: bytes it sends wait in the kernel.  When this worker sees room
 * already (a slot freed between the pick and now), the oldest waiter is
 * told at once: nobody waits while a backend would take them.
 */
static void session_wait(struct lb_session *s)
{
    struct lb_worker *w = s->worker;
    struct lb_wpool *wp = s->pool;
    ev_tstamp now = ev_now(w->loop);

    if (s->queued_at <= 0) {
        s->queued_at = now;
        s->queue_deadline = now + (double)wp->policy.queue_timeout_ms / 1000.;
        lb_counter_add(&wp->queued, 1);
    }
    s->queue_wait = now - s->queued_at;
    if (s->queue_deadline - now <= 0) {
        session_queue_timed_out(s);
        return;
    }
    s->state = SESSION_QUEUED;
    lb_conn_queue_add(wp->queue, &s->queue, w->loop, &w->dequeue);
    ev_timer_set(&s->timer, s->queue_deadline - now, 0.);
    ev_timer_start(w->loop, &s->timer);
    if (!s->client_spoke)
        ev_io_start(w->loop, &s->up.from_r);
    if (pool_has_room(wp))
        lb_conn_queue_grant(wp->queue);
}

/* s stops waiting: its deadline and its client's watcher stop. */
static void session_stop_waiting(struct lb_session *s)
{
    struct ev_loop *loop = s->worker->loop;

    ev_timer_stop(loop, &s->timer);
    ev_io_stop(loop, &s->up.from_r);
    s->queue_wait = ev_now(loop) - s->queued_at;
}

/* Takes s out of the queue for good; an unused grant goes to the next waiter. */
static void session_unqueue(struct lb_session *s)
{
    session_stop_waiting(s);
    if (lb_conn_queue_remove(s->pool->queue, &s->queue))
        lb_conn_queue_grant(s->pool->queue);
}

/*
 * A queued client's socket is readable: it left (EOF or error), or it
 * sent its first bytes, which stay in the kernel until a backend is
 * connected; from then on it is not watched (a client that closes after
 * speaking is seen once connected).
 */
static void session_queued_client_readable(struct lb_session *s)
{
    char c;
    ssize_t n = recv(s->client_fd, &c, 1, MSG_PEEK);

    if (n > 0) {
        s->client_spoke = true;
        ev_io_stop(s->worker->loop, &s->up.from_r);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    session_finalize(s, n == 0 ? LB_END_CLIENT_CLOSED : LB_END_CLIENT_RESET,
                     "client left while queued for a backend slot");
}

/*
 * No slot within queue_timeout.  What the client sent while it waited is
 * read and dropped first: a socket closed with unread bytes sends an RST,
 * and the client is owed a plain close (FIN), as for no_backend.
 */
static void session_queue_timed_out(struct lb_session *s)
{
    char *scratch = s->worker->scratch;

    for (int i = 0; i < 16; i++)
        if (recv(s->client_fd, scratch, sizeof(s->worker->scratch), MSG_DONTWAIT) <= 0)
            break;
    lb_counter_add(&s->pool->queue_timeouts, 1);
    session_finalize(s, LB_END_QUEUE_TIMEOUT,
                     "queue timeout: every backend stayed at max_conns for queue_timeout");
}

/* s's entry was granted and taken off the queue: it tries for a slot now. */
static void session_granted(struct lb_session *s)
{
    if (s->state != SESSION_QUEUED)
        return;
    session_stop_waiting(s); /* off the queue already, still granted: no queueing behind */
    s->state = SESSION_CONNECTING;
    session_connect_next(s);
}

void lb_session_serve_granted(struct lb_wpool *wp)
{
    struct lb_list granted;
    size_t n;

    if (!lb_conn_queue_length(wp->queue))
        return;
    lb_list_init(&granted);
    n = lb_conn_queue_take_granted(wp->queue, wp->worker->loop, &granted);
    while (!lb_list_is_empty(&granted)) {
        struct lb_list *l = granted.next;

        lb_list_remove(l);
        session_granted(lb_container_of(l, struct lb_session, queue.link));
        lb_conn_queue_settle(wp->queue); /* it has a slot, or is back in line */
    }
    /* More room (a backend added, max_conns raised, slots freed meanwhile):
     * the next one tries too. */
    if (n && lb_conn_queue_length(wp->queue) && pool_has_room(wp))
        lb_conn_queue_grant(wp->queue);
}

/*
 * The pool's queue_timeout changed: this worker's waiting clients take the
 * new one, counted from when each first queued.  Turned off, or already
 * past, the wait ends now: the client takes a slot if one is free (the same
 * change may have raised max_conns), else it is closed (end=queue_timeout).
 * Oldest first: the live list has the newest at its head.
 */
static void session_requeue_deadlines(struct lb_wpool *wp)
{
    struct lb_worker *w = wp->worker;
    ev_tstamp now = ev_now(w->loop);
    struct lb_list *l, *prev;

    for (l = w->live.prev; l != &w->live; l = prev) {
        struct lb_session *s = lb_session_of_link(l);

        prev = l->prev;
        if (s->pool != wp || s->state != SESSION_QUEUED)
            continue;
        s->queue_deadline = s->queued_at + (double)wp->policy.queue_timeout_ms / 1000.;
        ev_timer_stop(w->loop, &s->timer);
        if (wp->policy.queue_timeout_ms <= 0 || s->queue_deadline - now <= 0) {
            session_unqueue(s);
            s->state = SESSION_CONNECTING;
            session_connect_next(s); /* a last try: queues no more, its deadline is past */
            continue;
        }
        ev_timer_set(&s->timer, s->queue_deadline - now, 0.);
        ev_timer_start(w->loop, &s->timer);
    }
}

void lb_session_policy_changed(struct lb_wpool *wp, const struct lb_pool_policy *was)
{
    if (was->queue_timeout_ms != wp->policy.queue_timeout_ms && lb_conn_queue_length(wp->queue))
        session_requeue_deadlines(wp);
    lb_session_pool_changed(wp);
}

void lb_session_pool_changed(struct lb_wpool *wp)
{
    if (lb_conn_queue_length(wp->queue) && pool_has_room(wp))
        lb_conn_queue_grant(wp->queue);
}

/* How a session ends whose every connect attempt failed: as the last one did. */
static enum lb_session_end session_connect_end(const struct lb_session *s)
{
    return s->connect_timed_out ? LB_END_CONNECT_TIMEOUT : LB_END_CONNECT_REFUSED;
}

/*
 * Picks a backend not tried yet and below the pool's max_conns, and starts
 * connecting; when none is left, or the policy's retries are used up, the
 * client is closed.
 */
static void session_connect_next(struct lb_session *s)
{
    struct ev_loop *loop = s->worker->loop;
    struct lb_wpool *pool = s->pool;
    struct lb_pick pick = {
        .client = (struct sockaddr *)&s->client_addr,
        .tried = s->tried,
        .n_tried = s->n_tried,
        .max_conns = pool_max_conns(pool),
    };
    size_t max_attempts = (size_t)pool->policy.retries + 1;
    struct lb_backend *b;
    int fd;

    if (max_attempts > MAX_ATTEMPTS)
        max_attempts = MAX_ATTEMPTS;
    ev_io_stop(loop, &s->up.to_w);
    ev_io_stop(loop, &s->down.from_r);
    ev_timer_stop(loop, &s->timer);
    if (s->server_fd >= 0) {
        close(s->server_fd);
        s->server_fd = -1;
    }
    session_release_backend(s);
    if (s->n_tried >= max_attempts) {
        session_finalize(s, session_connect_end(s), "connect failed on every attempt");
        return;
    }
    if (session_must_queue_behind(s)) {
        session_wait(s);
        return;
    }
    b = session_pick(s, &pick);
    if (!b && session_should_wait(s, &pick)) {
        session_wait(s);
        return;
    }
    if (!b) {
        lb_counter_add(&pool->no_backend, 1);
        if (s->n_tried)
            session_finalize(s, session_connect_end(s), "no backend left to retry");
        else
            session_finalize(s, LB_END_NO_BACKEND,
                             "no backend available (none up, or all at max_conns)");
        return;
    }
    s->tried[s->n_tried++] = b;
    lb_backend_ref(b);
    s->backend = b;
    lb_counter_add(&session_stats(s)->sessions, 1);
    lb_list_insert_head(&session_stats(s)->list, &s->b_link);
    fd = socket(b->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        LB_WARN("proxy", "msg=\"cannot create backend socket\" pool=%s error=\"%s\"",
                pool->pool->name, strerror(errno));
        session_finalize(s, LB_END_OUT_OF_MEMORY, "no socket");
        return;
    }
    s->server_fd = fd;
    set_nodelay(fd); /* before connect(): the connection inherits it */
    s->connect_at = mono_now();
    if (connect(fd, (struct sockaddr *)&b->sa, b->sa_len) < 0 && errno != EINPROGRESS) {
        int err = errno;

        /* Retries through session_connect_next(): at most MAX_ATTEMPTS deep. */
        session_connect_failed(s, err, strerror(err));
        return;
    }
    session_watch_connect(s);
}

/* --------------------------------------------------------- lifecycle -- */

/*
 * A session of w on `pool` for client_fd (and server_fd, -1 until the
 * connect), on the live list and counted in the pool; NULL when out of
 * memory (nothing changed then).
 */
static struct lb_session *session_new(struct lb_worker *w, struct lb_wpool *pool,
                                      enum session_state state, int client_fd, int server_fd,
                                      const struct sockaddr *client, socklen_t client_len)
{
    struct lb_session *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->worker = w;
    s->pool = pool;
    s->state = state;
    s->client_fd = client_fd;
    s->server_fd = server_fd;
    s->idle_timeout = (double)pool->policy.idle_timeout_ms / 1000.;
    s->started_at = s->last_activity = ev_now(w->loop);
    if (client_len <= sizeof(s->client_addr))
        memcpy(&s->client_addr, client, client_len);
    lb_pipe_reset(&s->up.pipe);
    lb_pipe_reset(&s->down.pipe);
    ev_init(&s->timer, session_timer_cb);
    ev_io_init(&s->up.from_r, session_client_read_cb, client_fd, EV_READ);
    ev_init(&s->up.to_w, session_server_write_cb); /* on each backend socket */
    ev_init(&s->down.from_r, session_server_read_cb);
    ev_io_init(&s->down.to_w, session_client_write_cb, client_fd, EV_WRITE);
    if (server_fd >= 0) {
        ev_io_set(&s->up.to_w, server_fd, EV_WRITE);
        ev_io_set(&s->down.from_r, server_fd, EV_READ);
    }
    lb_list_init(&s->b_link);
    lb_queued_init(&s->queue);
    lb_list_insert_head(&w->live, &s->link);
    lb_counter_add(&pool->active, 1);
    return s;
}

/* The access line of a client turned away before it had a session (out of memory). */
static void log_access_no_session(struct lb_wpool *pool, const struct sockaddr *client,
                                  socklen_t client_len)
{
    struct sockaddr_storage ss = {0};
    char text[64];

    if (!access_log_on || !lb_log_enabled(LB_LOG_INFO))
        return;
    if (client_len <= sizeof(ss))
        memcpy(&ss, client, client_len);
    lb_addr_format((struct sockaddr *)&ss, text, sizeof(text));
    LB_INFO("access", "pool=%s client=%s duration_ms=0.0 bytes_in=0 bytes_out=0 retries=0 end=%s",
            pool->pool->name, text, lb_session_end_name(LB_END_OUT_OF_MEMORY));
}

int lb_session_start(struct lb_worker *w, struct lb_wpool *pool, int client_fd,
                     const struct sockaddr *client, socklen_t client_len)
{
    struct lb_session *s =
        session_new(w, pool, SESSION_CONNECTING, client_fd, -1, client, client_len);

    if (!s) {
        close(client_fd);
        lb_worker_session_finished(w);
        log_access_no_session(pool, client, client_len);
        return -ENOMEM;
    }
    lb_counter_add(&pool->total, 1);
    if (pool->pool->accept_proxy) {
        /* The header first; the connect waits for the client's address. */
        if (!(s->in = calloc(1, sizeof(*s->in)))) {
            session_finalize(s, LB_END_OUT_OF_MEMORY, "out of memory");
            return 0;
        }
        s->state = SESSION_HEADER;
        ev_io_start(w->loop, &s->up.from_r);
        ev_timer_set(&s->timer, HEADER_WAIT_S, 0.);
        ev_timer_start(w->loop, &s->timer);
        return 0;
    }
    if (pool->policy.proxy_protocol != LB_PROXY_NONE && session_queue_proxy_header(s, NULL) < 0)
        return 0;
    session_connect_next(s);
    return 0;
}

/* A client of an accept-proxy pool sent no valid header: counted, logged once a second. */
static void session_bad_header(struct lb_session *s, const char *why)
{
    struct lb_wpool *wp = s->pool;
    ev_tstamp now = ev_now(s->worker->loop);

    lb_counter_add(&wp->bad_proxy_headers, 1);
    if (now - wp->bad_header_logged_at >= 1.0) {
        char client[64];

        lb_addr_format((struct sockaddr *)&s->client_addr, client, sizeof(client));
        LB_WARN("proxy",
                "msg=\"client closed: %s (this pool has accept-proxy: the load balancer in "
                "front must send a PROXY v1 or v2 header)\" pool=%s client=%s unlogged=%llu",
                why, wp->pool->name, client, (unsigned long long)wp->bad_header_unlogged);
        wp->bad_header_logged_at = now;
        wp->bad_header_unlogged = 0;
    } else {
        wp->bad_header_unlogged++;
    }
    session_finalize(s, LB_END_BAD_PROXY_HEADER, why);
}

/*
 * Reads the PROXY header of an accept-proxy client: its addresses replace
 * the connection's, the bytes after it are the client's first, and the
 * connect starts.
 */
static void session_read_header(struct lb_session *s)
{
    struct inbound *in = s->in;
    struct sockaddr_storage src, dst;
    ssize_t n = recv(s->client_fd, in->buf + in->len, sizeof(in->buf) - in->len, 0);
    int hl;

    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            session_finalize(s, LB_END_CLIENT_RESET, "client reset before its PROXY header");
        return;
    }
    if (n == 0) {
        session_bad_header(s, "client closed before a complete PROXY header");
        return;
    }
    in->len += (size_t)n;
    hl = lb_proxy_protocol_parse(in->buf, in->len, &src, &dst);
    if (hl == 0 && in->len < sizeof(in->buf))
        return; /* more to come */
    if (hl <= 0) {
        session_bad_header(s, "not a valid PROXY header");
        return;
    }
    ev_timer_stop(s->worker->loop, &s->timer);
    ev_io_stop(s->worker->loop, &s->up.from_r);
    s->state = SESSION_CONNECTING;
    if (src.ss_family != AF_UNSPEC)
        s->client_addr = src;
    if (s->pool->policy.proxy_protocol != LB_PROXY_NONE && session_queue_proxy_header(s, &dst) < 0)
        return;
    /* What came after the header is the client's first bytes. */
    if (in->len > (size_t)hl &&
        half_keep(s, &s->up, (const char *)in->buf + hl, in->len - (size_t)hl) < 0)
        return;
    free(s->in);
    s->in = NULL;
    session_connect_next(s);
}

/*
 * The one exit: `end` is what the access log and operators see, `why` the
 * detail (debug log).
 */
static void session_finalize(struct lb_session *s, enum lb_session_end end, const char *why)
{
    struct lb_worker *w = s->worker;
    struct ev_loop *loop = w->loop;
    double duration = ev_now(loop) - s->started_at;

    if (s->state == SESSION_CLOSED)
        return;
    if (s->state == SESSION_QUEUED)
        session_unqueue(s);
    if (lb_log_enabled(LB_LOG_DEBUG)) {
        char client[64];

        lb_addr_format((struct sockaddr *)&s->client_addr, client, sizeof(client));
        LB_DEBUG("proxy",
                 "msg=\"session closed\" pool=%s backend=%s client=%s end=%s reason=\"%s\"",
                 s->pool->pool->name, s->backend ? s->backend->id : "-", client,
                 lb_session_end_name(end), why);
    }
    session_log_access(s, end, duration);
    if (end != LB_END_MOVED) /* a moved session goes on, and ends, in the next lbd */
        observe_duration(s, duration);
    s->state = SESSION_CLOSED;
    ev_timer_stop(loop, &s->timer);
    ev_io_stop(loop, &s->up.from_r);
    ev_io_stop(loop, &s->up.to_w);
    ev_io_stop(loop, &s->down.from_r);
    ev_io_stop(loop, &s->down.to_w);
    half_release_pipe(s, &s->up); /* their bytes are lost with the sockets */
    half_release_pipe(s, &s->down);
    if (s->reset) {
        /* An L4 proxy passes an abort on as an abort: the other side must
         * not mistake a truncated stream for a complete one. */
        struct linger abort_now = {.l_onoff = 1, .l_linger = 0};

        setsockopt(s->client_fd, SOL_SOCKET, SO_LINGER, &abort_now, sizeof(abort_now));
        if (s->server_fd >= 0)
            setsockopt(s->server_fd, SOL_SOCKET, SO_LINGER, &abort_now, sizeof(abort_now));
    }
    close(s->client_fd);
    if (s->server_fd >= 0)
        close(s->server_fd);
    s->client_fd = s->server_fd = -1;
    session_release_backend(s);
    lb_counter_add(&s->pool->active, (uint64_t)-1);

    /* off the live list; freed by the worker's reaper after the current callbacks */
    lb_list_remove(&s->link);
    lb_reaper_defer(&w->reaper, &s->reap, session_free);
    lb_worker_session_finished(w);
}

/* Ends the session with an RST to both peers (one of them already reset). */
static void session_abort_reset(struct lb_session *s, enum lb_session_end end, const char *why)
{
    s->reset = true;
    session_finalize(s, end, why);
}

/* Writing h's bytes to its destination failed: that peer reset (or its socket broke). */
static void session_abort_write_failed(struct lb_session *s, const struct half *h)
{
    if (h == &s->up)
        session_abort_reset(s, LB_END_BACKEND_RESET, "backend reset the connection");
    else
        session_abort_reset(s, LB_END_CLIENT_RESET, "client reset the connection");
}

void lb_session_abort(struct lb_session *s)
{
    if (s->state != SESSION_PARKED)
        session_finalize(s, LB_END_SHUTDOWN, "shutdown grace period over");
}

void lb_session_abort_drained(struct lb_session *s)
{
    if (s->state != SESSION_PARKED)
        session_finalize(s, LB_END_DRAINED_PAST_DEADLINE, "drain timeout");
}

void lb_session_kill(struct lb_session *s)
{
    if (s->state != SESSION_PARKED)
        session_finalize(s, LB_END_KILLED, "killed by an operator");
}

const struct lb_backend *lb_session_backend(const struct lb_session *s)
{
    return s->backend;
}

void lb_session_view(const struct lb_session *s, struct lb_session_view *v)
{
    ev_tstamp now = ev_now(s->worker->loop);
    uint64_t in = s->bytes_up;

    memset(v, 0, sizeof(*v));
    memcpy(&v->client, &s->client_addr, sizeof(v->client));
    if (s->backend)
        snprintf(v->backend, sizeof(v->backend), "%s", s->backend->id);
    v->worker = s->worker->index;
    switch (s->state) {
    case SESSION_HEADER:
        v->state = LB_SESSION_VIEW_HEADER;
        break;
    case SESSION_CONNECTING:
        v->state = LB_SESSION_VIEW_CONNECTING;
        break;
    case SESSION_PARKED:
        v->state = LB_SESSION_VIEW_PARKED;
        break;
    case SESSION_QUEUED:
        v->state = LB_SESSION_VIEW_QUEUED;
        break;
    default:
        v->state = LB_SESSION_VIEW_PROXYING;
        break;
    }
    v->age_s = now - s->started_at;
    v->idle_s = now - s->last_activity;
    if (v->age_s < 0)
        v->age_s = 0;
    if (v->idle_s < 0)
        v->idle_s = 0;
    in -= in < s->header_len ? in : s->header_len;
    v->bytes_in = in;
    v->bytes_out = s->bytes_down;
}

struct lb_session *lb_session_oldest_of(struct lb_backend *b, unsigned worker)
{
    struct lb_list *last = worker < b->n_ws ? lb_list_last(&b->ws[worker].list) : NULL;

    return last ? lb_list_entry(last, struct lb_session, b_link) : NULL;
}

static void session_free(struct lb_reap *r)
{
    struct lb_session *s = lb_container_of(r, struct lb_session, reap);

    half_release(s, &s->up);
    half_release(s, &s->down);
    free(s->in);
    free(s);
}

/* ----------------------------------------------------------- upgrade -- */

/* A half holds at most one read or one pipe unsent, and a move carries that
 * much per direction: every session proxying can move at once, however
 * slowly its peers read. */
_Static_assert(sizeof(((struct lb_worker *)0)->scratch) <= LB_HANDOVER_PENDING_MAX &&
                   LB_PIPE_SIZE <= LB_HANDOVER_PENDING_MAX,
               "a session's unsent bytes must fit in a hand-over record");

/*
 * Starts what s waits for after a pause in its callbacks (adoption, or a
 * move that did not happen): a direction with pending bytes flushes them
 * (and reads again once they are out), an open one reads, a finished one
 * forwards its EOF.
 */
static void session_resume_io(struct lb_session *s)
{
    struct ev_loop *loop = s->worker->loop;
    struct half *halves[2] = {&s->up, &s->down};
    int to[2] = {s->server_fd, s->client_fd};

    for (int i = 0; i < 2; i++) {
        struct half *h = halves[i];

        if (half_pending(h))
            ev_io_start(loop, &h->to_w);
        else if (!h->eof)
            ev_io_start(loop, &h->from_r);
        else
            half_forward_eof(s, h, to[i]);
    }
    if (session_is_done(s)) {
        session_finalize(s, session_closed_end(s), "closed by both sides");
        return;
    }
    session_arm_timer(s);
}

int lb_session_park(struct lb_session *s, size_t pending_max, struct lb_session_move *m)
{
    struct ev_loop *loop = s->worker->loop;
    ev_tstamp now = ev_now(loop);

    if (s->refused)
        return -EPERM;
    lb_session_settle(s);
    if (s->state != SESSION_PROXYING || half_pending(&s->up) > pending_max ||
        half_pending(&s->down) > pending_max)
        return -EAGAIN;
    /* Bytes in a pipe cannot move: into the pending buffers with them. */
    if (lb_session_unsplice_all(s) < 0)
        return -EAGAIN;
    ev_timer_stop(loop, &s->timer);
    ev_io_stop(loop, &s->up.from_r);
    ev_io_stop(loop, &s->up.to_w);
    ev_io_stop(loop, &s->down.from_r);
    ev_io_stop(loop, &s->down.to_w);
    s->state = SESSION_PARKED;
    lb_list_remove(&s->link);
    lb_list_insert_tail(&s->worker->parked, &s->link);

    memset(m, 0, sizeof(*m));
    m->client_fd = s->client_fd;
    m->server_fd = s->server_fd;
    m->client = s->client_addr;
    m->client_len = s->client_addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                         : sizeof(struct sockaddr_in);
    m->backend_id = s->backend->id;
    m->backend_addr = s->backend->spec.addr;
    m->bytes_up = s->bytes_up;
    m->bytes_down = s->bytes_down;
    m->age_s = now - s->started_at;
    m->idle_s = now - s->last_activity;
    m->up_eof = s->up.eof;
    m->up_shut = s->up.shut;
    m->down_eof = s->down.eof;
    m->down_shut = s->down.shut;
    m->up_pending = s->up.len ? s->up.pending + s->up.off : NULL;
    m->up_len = s->up.len;
    m->down_pending = s->down.len ? s->down.pending + s->down.off : NULL;
    m->down_len = s->down.len;
    return 0;
}

void lb_session_stay(struct lb_session *s)
{
    s->refused = true;
}

void lb_session_moved(struct lb_session *s)
{
    if (s->state != SESSION_PARKED)
        return;
    /* Plain close(): the next process holds the same connections. */
    s->reset = false;
    session_finalize(s, LB_END_MOVED, "moved to the next process");
}

void lb_session_unpark(struct lb_session *s)
{
    if (s->state != SESSION_PARKED)
        return;
    s->refused = true;
    s->state = SESSION_PROXYING;
    lb_list_remove(&s->link);
    lb_list_insert_head(&s->worker->live, &s->link);
    session_resume_io(s);
}

/* Copies `len` pending bytes into h (adoption). */
static int half_adopt(struct lb_session *s, struct half *h, const char *bytes, size_t len, bool eof,
                      bool shut)
{
    h->eof = eof;
    h->shut = shut;
    h->progress_at = ev_now(s->worker->loop);
    if (!len)
        return 0;
    if (!(h->pending = malloc(len)))
        return -ENOMEM;
    memcpy(h->pending, bytes, len);
    h->pending_size = h->len = len;
    s->worker->pending_bytes += len;
    return 0;
}

int lb_session_adopt(struct lb_worker *w, struct lb_wpool *pool, struct lb_backend *b,
                     const struct lb_session_move *m)
{
    struct lb_session *s = session_new(w, pool, SESSION_PROXYING, m->client_fd, m->server_fd,
                                       (const struct sockaddr *)&m->client, m->client_len);
    ev_tstamp now = ev_now(w->loop);

    lb_worker_session_adopted(w);
    atomic_fetch_add(&b->active, 1);
    if (!s) {
        close(m->client_fd);
        close(m->server_fd);
        if (atomic_fetch_sub(&b->active, 1) == 1 && atomic_load(&b->notify_zero))
            lb_worker_tell_zero(w, b);
        lb_backend_unref(b);
        lb_worker_session_finished(w);
        return -ENOMEM;
    }
    s->started_at = now - m->age_s;
    s->last_activity = now - m->idle_s;
    s->bytes_up = m->bytes_up;
    s->bytes_down = m->bytes_down;
    if (m->down_eof && !m->up_eof)
        s->closed_first = CLOSED_BY_BACKEND;
    else if (m->up_eof)
        s->closed_first = CLOSED_BY_CLIENT;
    s->backend = b;
    s->tried[s->n_tried++] = b;
    lb_counter_add(&session_stats(s)->sessions, 1);
    lb_list_insert_head(&session_stats(s)->list, &s->b_link);

    if (half_adopt(s, &s->up, m->up_pending, m->up_len, m->up_eof, m->up_shut) < 0 ||
        half_adopt(s, &s->down, m->down_pending, m->down_len, m->down_eof, m->down_shut) < 0) {
        session_finalize(s, LB_END_OUT_OF_MEMORY, "out of memory taking the session over");
        return -ENOMEM;
    }
    session_resume_io(s);
    return 0;
}
