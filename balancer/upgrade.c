/*
 * Hitless upgrades (design and message flow in upgrade.h).
 *
 * Old side: one link at a time.  Its states: HELLO (waiting for the new
 * process to say who it is), WAIT_READY (listeners sent), OFFERING (workers
 * park sessions and post them as offers; each is sent, then waits for ACK
 * or NAK), DONE.  An offer is always answered exactly once: by the new
 * process, or, when the link fails, as "not taken" so the session goes on
 * here.  New side: the link from the previous process, read once READY is
 * sent; each SESSION is matched to a pool and a backend of this process
 * and given to a worker (ACK), or refused (NAK) with its sockets closed
 * untouched.
 */
#include "upgrade.h"
#include "backend.h"
#include "drain.h"
#include "health.h"
#include "lb_error.h"
#include "lb_listen.h"
#include "lb_log.h"
#include "lb_util.h"
#include "pool.h"
#include "proxy.h"
#include "registry.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define LOG_SUB               "upgrade"
#define TAKEOVER_WAIT_S       10         /* the running lbd answers HELLO and sends its listeners */
#define PREVIOUS_EXIT_WAIT_MS 1000       /* its link closed: how long its exit may take */
#define PORTS_FREE_WAIT_MS    2000       /* it died: its other files close as its exit ends */
#define HELLO_WAIT_S          5.0        /* a peer of the upgrade socket says HELLO within this */
#define BACKENDS_MAX          (1u << 18) /* BACKEND records taken from the previous process */
#define VIEW_BYTES_MAX        ((size_t)512 << 20) /* key and value bytes of a view (as a listing) */

enum link_state { LINK_NONE, LINK_HELLO, LINK_WAIT_READY, LINK_OFFERING, LINK_DONE };

struct lb_upgrade {
    struct ev_loop *loop;
    struct lb_upgrade_config cfg;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char exe[4096];
    uint8_t *rbuf; /* one record (LB_HANDOVER_MSG_MAX) */

    int listen_fd; /* the socket at PATH */
    ev_io accept_io;

    /* old side: the link to the next process */
    enum link_state state;
    int peer_fd;
    ev_io peer_r, peer_w;
    ev_timer hello_timer;
    bool sessions_move;     /* same session version */
    bool offers_done;       /* no worker has anything left to offer */
    bool link_failed;       /* answer every offer "not taken" from now on */
    struct lb_list sendq;   /* offers to send */
    struct lb_list waiting; /* offers sent, unanswered */
    bool handed_over;       /* READY came: this process is on its way out */
    unsigned n_sent;        /* listeners sent */
    bool finished_logged;
    bool shutting_down;            /* SIGTERM: no more upgrades */
    bool failure_told;             /* the spawned child's failure was reported by its link */
    uint64_t n_taken, n_not_taken; /* offers answered */

    /* new side: the link from the previous process */
    int prev_fd;
    ev_io prev_r;
    bool taking_over; /* READY not sent yet */
    bool prev_sessions_move;
    uint64_t taken, refused;
    struct lb_handover_backend *backends; /* BACKEND records, until lb_upgrade_adopt() */
    size_t n_backends;

    /* SIGUSR2 */
    pid_t child;
    ev_child child_w;
};

/* The session version this binary announces (a test may pretend another). */
static uint32_t session_version(void)
{
    const char *v = getenv("LBD_TEST_HANDOVER_VERSION");

    return v && *v ? (uint32_t)strtoul(v, NULL, 10) : LB_HANDOVER_SESSION_VERSION;
}

static void hello_of(struct lb_handover_msg *m, unsigned workers)
{
    memset(m, 0, sizeof(*m));
    m->type = LB_HANDOVER_HELLO;
    m->u.hello.session_version = session_version();
    m->u.hello.pid = (uint32_t)getpid();
    m->u.hello.workers = workers;
    snprintf(m->u.hello.version, sizeof(m->u.hello.version), "%s", LB_VERSION);
}

/* Encodes m and sends it with fds; 0 or a negative errno (-EAGAIN: full). */
static int send_msg(int fd, const struct lb_handover_msg *m, const int *fds, int n_fds)
{
    struct lb_buf b;
    int rc;

    lb_buf_init(&b, LB_HANDOVER_MSG_MAX);
    rc = lb_handover_encode(m, &b);
    if (rc == 0)
        rc = lb_handover_send(fd, b.data, b.len, fds, n_fds);
    lb_buf_free(&b);
    return rc;
}

static int unix_address(const char *path, struct sockaddr_un *sa, char **err)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (!path || !*path || strlen(path) >= sizeof(sa->sun_path))
        return lb_error_set(err, -ENAMETOOLONG,
                            "--upgrade-socket %s: a unix socket path must be 1 to %zu bytes",
                            path ? path : "", sizeof(sa->sun_path) - 1);
    memcpy(sa->sun_path, path, strlen(path));
    return 0;
}

/*
 * Reads and decodes one record of a link.  Returns 1 with *m (and the
 * descriptors that came with it, the caller's); 0 at the end of the link;
 * -EAGAIN; -ECONNRESET when the link broke; -EPROTONOSUPPORT (a SESSION of
 * another session version: m's type and id are set) or -EPROTO (*why set),
 * with the descriptors already closed.
 */
static int link_recv(int fd, uint8_t *buf, struct lb_handover_msg *m, int *fds, int *n_fds,
                     char **why)
{
    ssize_t n = lb_handover_recv(fd, buf, LB_HANDOVER_MSG_MAX, fds, LB_HANDOVER_FDS_MAX, n_fds);
    int rc;

    if (n == 0 || n == -EAGAIN)
        return (int)n;
    if (n < 0)
        return n == -EMSGSIZE ? lb_error_set(why, -EPROTO, "a record too big") : -ECONNRESET;
    rc = lb_handover_decode(buf, (size_t)n, *n_fds, m, why);
    if (rc < 0) {
        for (int i = 0; i < *n_fds; i++)
            close(fds[i]);
        *n_fds = 0;
        return rc;
    }
    return 1;
}

/* ------------------------------------------------------ new process -- */

/* Receives one record, waiting up to the socket's SO_RCVTIMEO. */
static int takeover_recv(int fd, uint8_t *buf, struct lb_handover_msg *m, int *fds, int *n_fds,
                         char **err)
{
    char *why = NULL;
    int rc = link_recv(fd, buf, m, fds, n_fds, &why);

    if (rc == 0)
        return lb_error_set(err, -ECONNRESET,
                            "the running lbd closed the upgrade socket (another upgrade in "
                            "progress, or it is shutting down)");
    if (rc == -EAGAIN)
        return lb_error_set(err, rc,
                            "no answer from the running lbd on the upgrade socket within %d s; "
                            "it keeps serving, and this lbd exits (is it stopped or overloaded?)",
                            TAKEOVER_WAIT_S);
    if (rc == -ECONNRESET)
        return lb_error_set(err, rc,
                            "no answer from the running lbd on the upgrade socket: the link broke");
    if (rc < 0) {
        lb_error_set(err, -EPROTO, "the running lbd sent a bad hand-over record: %s",
                     why ? why : "another session version");
        free(why);
        return -EPROTO;
    }
    return 0;
}

static int takeover_keep_backend(struct lb_takeover *out, const struct lb_handover_backend *b,
                                 char **err)
{
    struct lb_handover_backend *grown;
    size_t n = out->n_backends;

    if (n >= BACKENDS_MAX)
        return lb_error_set(err, -EPROTO, "the running lbd sent more than %u BACKEND records",
                            BACKENDS_MAX);
    if (n == 0 || (n >= 16 && (n & (n - 1)) == 0)) { /* full: 16, then twice as many */
        grown = realloc(out->backends, (n ? 2 * n : 16) * sizeof(*grown));
        if (!grown)
            return lb_error_set(err, -ENOMEM, "out of memory");
        out->backends = grown;
    }
    out->backends[out->n_backends++] = *b;
    return 0;
}

void lb_takeover_free_view(struct lb_takeover *t)
{
    lb_saved_view_free(&t->view);
    t->have_view = false;
}

/* What a takeover reads of a VIEW and its KEYs. */
struct view_rx {
    bool announced;  /* a VIEW came */
    uint32_t expect; /* KEYs it announced */
    uint32_t seen;   /* KEYs read */
    size_t bytes;    /* kept */
    bool dropped;    /* too large, or out of memory: not kept, the listing does */
};

static int takeover_view(struct lb_takeover *out, struct view_rx *rx,
                         const struct lb_handover_view *v, char **err)
{
    if (rx->announced)
        return lb_error_set(err, -EPROTO, "the running lbd sent a second VIEW");
    rx->announced = true;
    rx->expect = v->keys;
    out->view.view.revision = v->revision;
    out->view.view.cluster_id = v->cluster_id;
    out->view.view.stale_ms = v->stale_ms;
    snprintf(out->view.prefix, sizeof(out->view.prefix), "%s", v->prefix);
    out->view.view.prefix = out->view.prefix;
    out->view.keys = calloc(v->keys ? v->keys : 1, sizeof(*out->view.keys));
    if (!out->view.keys)
        rx->dropped = true;
    return 0;
}

static int takeover_key(struct lb_takeover *out, struct view_rx *rx,
                        const struct lb_handover_key *k, char **err)
{
    struct lb_watcher_kv kv = {(const char *)k->key, k->key_len, (const char *)k->value,
                               k->value_len, k->mod_revision};

    if (!rx->announced || rx->seen == rx->expect)
        return lb_error_set(err, -EPROTO, "the running lbd sent a KEY %s",
                            rx->announced ? "beyond those its VIEW announced" : "before its VIEW");
    rx->seen++;
    if (rx->dropped)
        return 0;
    rx->bytes += k->key_len + k->value_len;
    if (rx->bytes > VIEW_BYTES_MAX || lb_saved_view_add(&out->view, rx->expect, &kv) < 0) {
        rx->dropped = true;
        lb_takeover_free_view(out);
    }
    return 0;
}

/* At LISTENERS_DONE: keep the view only when it came whole. */
static void takeover_view_done(struct lb_takeover *out, const struct view_rx *rx)
{
    if (!rx->announced)
        return;
    if (rx->dropped || rx->seen != rx->expect) {
        LB_WARN(LOG_SUB,
                "msg=\"upgrade: the running lbd's view of etcd %s; this process lists etcd "
                "before it accepts\" keys=%u announced=%u",
                rx->dropped ? "is too large to keep" : "came incomplete", rx->seen, rx->expect);
        lb_takeover_free_view(out);
        return;
    }
    out->have_view = true;
}

/* True once pid has exited (gone, or a zombie: its sockets are closed). */
static bool process_exited(pid_t pid)
{
    char path[64], buf[512], *paren;
    ssize_t n;
    int fd;

    if (kill(pid, 0) < 0 && errno == ESRCH)
        return true;
    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    paren = strrchr(buf, ')');
    return paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
}

/* Nobody listens at the upgrade socket any more (the file may be gone too). */
static bool nobody_listens(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    bool gone;

    if (fd < 0)
        return false;
    gone = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 &&
           (errno == ECONNREFUSED || errno == ENOENT);
    close(fd); /* when it is there, it sees a peer that leaves without HELLO */
    return gone;
}

/*
 * The dead lbd's exit closes its files one by one, its upgrade socket
 * perhaps before its listeners: waits until nobody listens on this
 * process's addresses (each would be "Address already in use"), at most
 * PORTS_FREE_WAIT_MS.
 */
static void wait_ports_free(const char *const *addrs, size_t n_addrs)
{
    for (int ms = 0; ms < PORTS_FREE_WAIT_MS; ms += 10) {
        size_t busy = 0;

        for (size_t i = 0; i < n_addrs; i++)
            busy += lb_listen_addr_busy(addrs[i]);
        if (!busy)
            return;
        usleep(10 * 1000);
    }
}

/*
 * The link to the running lbd failed: did that process die (killed, or
 * crashed) rather than turn this one away?  It did when the pid that
 * answered HELLO has exited (a zombie holds no file), or when nobody
 * listens at the socket any more (before HELLO: the listening socket may
 * have been handed over, so its creator says nothing of who holds it now);
 * then this also waits for the ports it held.  Its socket closes while it
 * exits, so this waits for the exit a little.
 */
static bool previous_died(pid_t hello_pid, const struct sockaddr_un *sa, int rc,
                          const char *const *addrs, size_t n_addrs)
{
    if (rc != -ECONNRESET && rc != -EAGAIN && rc != -EPIPE)
        return false;
    for (int ms = 0; ms <= PREVIOUS_EXIT_WAIT_MS; ms += 10) {
        if (hello_pid > 0 && process_exited(hello_pid))
            return true;
        /* A few probes only: a live lbd logs each as a peer it turned away. */
        if ((ms == 0 || ms == 100 || ms == 500 || ms == PREVIOUS_EXIT_WAIT_MS) &&
            nobody_listens(sa)) {
            wait_ports_free(addrs, n_addrs);
            return true;
        }
        usleep(10 * 1000);
    }
    return false;
}

/* Removes the socket file a dead lbd left at path, if nobody listens there. */
static void remove_stale_socket(const char *path, const struct sockaddr_un *sa)
{
    struct stat st;

    if (nobody_listens(sa) && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
}

int lb_upgrade_takeover(const char *path, unsigned workers, const char *const *addrs,
                        size_t n_addrs, struct lb_takeover *out, char **err)
{
    struct view_rx rx = {0};
    struct sockaddr_un sa;
    struct timeval tv = {.tv_sec = TAKEOVER_WAIT_S};
    struct lb_handover_msg m;
    uint8_t *buf = NULL;
    int fd, rc, fds[LB_HANDOVER_FDS_MAX], n_fds = 0;

    memset(out, 0, sizeof(*out));
    out->fd = out->upgrade_listen_fd = -1;
    rc = unix_address(path, &sa, err);
    if (rc < 0)
        return rc;
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return lb_error_set(err, -errno, "--upgrade-socket %s: socket: %s", path, strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        struct stat st;

        close(fd);
        if (e == ENOENT)
            return 0;
        if (e == ECONNREFUSED && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            /* Left by an lbd that is gone (killed): nobody listens there. */
            unlink(path);
            return 0;
        }
        if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
            return lb_error_set(err, -EEXIST,
                                "--upgrade-socket %s: the path exists and is not a socket; lbd "
                                "does not replace a file it did not make: give another path",
                                path);
        return lb_error_set(err, -e, "--upgrade-socket %s: cannot connect: %s", path, strerror(e));
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    LB_INFO(LOG_SUB,
            "msg=\"upgrade: an lbd serves the upgrade socket, taking over from it\" path=%s", path);
    buf = malloc(LB_HANDOVER_MSG_MAX);
    if (!buf) {
        rc = lb_error_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    hello_of(&m, workers);
    rc = send_msg(fd, &m, NULL, 0);
    if (rc < 0) {
        lb_error_set(err, rc, "--upgrade-socket %s: cannot greet the running lbd: %s", path,
                     strerror(-rc));
        goto fail;
    }
    rc = takeover_recv(fd, buf, &m, fds, &n_fds, err);
    if (rc < 0)
        goto fail;
    if (m.type != LB_HANDOVER_HELLO) {
        rc = lb_error_set(err, -EPROTO, "the running lbd answered %s instead of HELLO",
                          lb_handover_type_name(m.type));
        goto fail;
    }
    out->peer = m.u.hello;
    for (;;) {
        rc = takeover_recv(fd, buf, &m, fds, &n_fds, err);
        if (rc < 0)
            goto fail;
        if (m.type == LB_HANDOVER_LISTENERS_DONE) {
            takeover_view_done(out, &rx);
            break;
        }
        if (m.type == LB_HANDOVER_VIEW || m.type == LB_HANDOVER_KEY) {
            rc = m.type == LB_HANDOVER_VIEW ? takeover_view(out, &rx, &m.u.view, err)
                                            : takeover_key(out, &rx, &m.u.key, err);
            if (rc < 0)
                goto fail;
            continue;
        }
        if (m.type == LB_HANDOVER_BACKEND) {
            rc = takeover_keep_backend(out, &m.u.backend, err);
            if (rc < 0)
                goto fail;
            continue;
        }
        if (m.type != LB_HANDOVER_LISTENER) {
            rc = lb_error_set(err, -EPROTO, "the running lbd sent %s among its listeners",
                              lb_handover_type_name(m.type));
            goto fail;
        }
        if (m.u.listener.kind == LB_HANDOVER_LISTENER_UPGRADE && out->upgrade_listen_fd < 0) {
            out->upgrade_listen_fd = fds[0];
        } else if (m.u.listener.kind == LB_HANDOVER_LISTENER_UPGRADE) {
            close(fds[0]);
        } else if (lb_listen_inherit(fds[0]) < 0) {
            LB_WARN(LOG_SUB,
                    "msg=\"a socket handed over is not a usable listener, skipped\" "
                    "addr=%s",
                    m.u.listener.addr);
        } else {
            out->n_listeners++;
        }
        n_fds = 0;
    }
    /* The link is read from the loop from now on. */
    tv.tv_sec = 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    out->fd = fd;
    free(buf);
    LB_INFO(LOG_SUB,
            "msg=\"upgrade: took over the listeners of the running lbd\" path=%s old_pid=%u "
            "old_version=%s listeners=%u sessions_move=%s",
            path, out->peer.pid, out->peer.version, out->n_listeners,
            out->peer.session_version == session_version() ? "yes" : "no");
    return 1;
fail:
    free(buf);
    free(out->backends);
    out->backends = NULL;
    out->n_backends = 0;
    lb_takeover_free_view(out);
    close(fd);
    lb_listen_close_inherited();
    if (out->upgrade_listen_fd >= 0)
        close(out->upgrade_listen_fd);
    out->upgrade_listen_fd = -1;
    out->n_listeners = 0;
    if (previous_died((pid_t)out->peer.pid, &sa, rc, addrs, n_addrs)) {
        /* Its ports are free again: this process starts as if it were the first. */
        LB_WARN(LOG_SUB,
                "msg=\"upgrade: the running lbd exited during the hand-over; starting on its "
                "own (its open connections were lost with it)\" path=%s error=\"%s\"",
                path, *err ? *err : "");
        free(*err);
        *err = NULL;
        remove_stale_socket(path, &sa);
        memset(&out->peer, 0, sizeof(out->peer));
        return 0;
    }
    return rc;
}

/* A SESSION from the previous process: adopt it, or refuse it untouched. */
static void prev_session(struct lb_upgrade *u, const struct lb_handover_session *hs, int fds[2])
{
    struct lb_pool *pool = lb_registry_find_pool(u->cfg.registry, hs->pool);
    struct lb_member *mb = pool ? lb_pool_find(pool, hs->backend_id) : NULL;
    struct lb_backend *b = mb ? mb->backend : NULL;
    struct lb_handover_msg ans;
    const char *why = NULL;

    memset(&ans, 0, sizeof(ans));
    if (!pool)
        why = "no such pool here";
    else if (!b || b->removed || strcmp(b->spec.addr, hs->backend_addr) != 0)
        why = "no such backend here";
    if (!why) {
        struct lb_session_move m = {
            .client_fd = fds[0],
            .server_fd = fds[1],
            .client = hs->client,
            .client_len = hs->client_len,
            .bytes_up = hs->bytes_up,
            .bytes_down = hs->bytes_down,
            .age_s = hs->age_ms / 1000.,
            .idle_s = hs->idle_ms / 1000.,
            .up_eof = hs->flags & LB_HANDOVER_UP_EOF,
            .up_shut = hs->flags & LB_HANDOVER_UP_SHUT,
            .down_eof = hs->flags & LB_HANDOVER_DOWN_EOF,
            .down_shut = hs->flags & LB_HANDOVER_DOWN_SHUT,
            .up_pending = (const char *)hs->up_pending,
            .up_len = hs->up_pending_len,
            .down_pending = (const char *)hs->down_pending,
            .down_len = hs->down_pending_len,
        };

        lb_backend_ref(b);
        if (lb_proxy_adopt(u->cfg.proxy, (size_t)(pool - u->cfg.registry->pools), b, &m) < 0) {
            lb_backend_unref(b);
            why = "out of memory";
        }
    }
    if (why) {
        close(fds[0]);
        close(fds[1]);
        ans.type = LB_HANDOVER_SESSION_NAK;
        ans.u.nak.id = hs->id;
        snprintf(ans.u.nak.reason, sizeof(ans.u.nak.reason), "%s", why);
        u->refused++;
        LB_INFO(LOG_SUB,
                "msg=\"upgrade: a session stays with the previous process\" pool=%s "
                "backend=%s reason=\"%s\"",
                hs->pool, hs->backend_id, why);
    } else {
        ans.type = LB_HANDOVER_SESSION_ACK;
        ans.u.ack_id = hs->id;
        u->taken++;
    }
    /* The old process waits for this answer; a blocking send is bounded by
     * how fast it reads, which it does on every loop iteration. */
    {
        int fl = fcntl(u->prev_fd, F_GETFL);

        fcntl(u->prev_fd, F_SETFL, fl & ~O_NONBLOCK);
        if (send_msg(u->prev_fd, &ans, NULL, 0) < 0)
            LB_WARN(LOG_SUB, "msg=\"upgrade: cannot answer the previous process\" error=\"%s\"",
                    strerror(errno));
        fcntl(u->prev_fd, F_SETFL, fl);
    }
}

static void accept_start(struct lb_upgrade *u);

/* The previous process is done with us (DONE, or it went away). */
static void prev_close(struct lb_upgrade *u, const char *why)
{
    if (u->prev_fd < 0)
        return;
    ev_io_stop(u->loop, &u->prev_r);
    close(u->prev_fd);
    u->prev_fd = -1;
    LB_INFO(LOG_SUB, "msg=\"upgrade: sessions taken over\" count=%llu refused=%llu previous=\"%s\"",
            (unsigned long long)u->taken, (unsigned long long)u->refused, why);
    accept_start(u);
}

static void prev_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_upgrade *u = w->data;

    for (int round = 0; round < 64 && u->prev_fd >= 0; round++) {
        struct lb_handover_msg m;
        int fds[LB_HANDOVER_FDS_MAX], n_fds = 0;
        char *why = NULL;
        int rc = link_recv(u->prev_fd, u->rbuf, &m, fds, &n_fds, &why);

        if (rc == -EAGAIN)
            return;
        if (rc == 0 || rc == -ECONNRESET) {
            prev_close(u, rc == 0 ? "closed the link" : "link error");
            return;
        }
        if (rc == -EPROTONOSUPPORT || (rc > 0 && m.type == LB_HANDOVER_SESSION &&
                                       m.u.session.session_version != session_version())) {
            struct lb_handover_msg nak = {.type = LB_HANDOVER_SESSION_NAK};

            for (int i = 0; i < n_fds; i++)
                close(fds[i]);
            nak.u.nak.id = m.u.session.id;
            snprintf(nak.u.nak.reason, sizeof(nak.u.nak.reason), "another session version");
            send_msg(u->prev_fd, &nak, NULL, 0);
            u->refused++;
            free(why);
            continue;
        }
        if (rc < 0) {
            LB_ERROR(LOG_SUB, "msg=\"upgrade: bad record from the previous process\" error=\"%s\"",
                     why ? why : "unreadable");
            free(why);
            prev_close(u, "sent a bad record");
            return;
        }
        switch (m.type) {
        case LB_HANDOVER_SESSION:
            prev_session(u, &m.u.session, fds);
            break;
        case LB_HANDOVER_DONE:
            prev_close(u, "done");
            return;
        default:
            for (int i = 0; i < n_fds; i++)
                close(fds[i]);
            LB_WARN(LOG_SUB,
                    "msg=\"upgrade: unexpected record from the previous process\" "
                    "type=%s",
                    lb_handover_type_name(m.type));
            break;
        }
    }
}

/* The backend of hb's pool, id and address here, or NULL. */
static struct lb_backend *adopted_backend(struct lb_registry *r,
                                          const struct lb_handover_backend *hb)
{
    struct lb_pool *pool = lb_registry_find_pool(r, hb->pool);
    struct lb_member *m = pool ? lb_pool_find(pool, hb->id) : NULL;
    struct lb_backend *b = m ? m->backend : NULL;

    return b && !b->removed && strcmp(b->spec.addr, hb->addr) == 0 ? b : NULL;
}

/*
 * Applies one BACKEND record: the local overrides to the member of that id
 * (made if need be: the previous process kept them for an id whose backend
 * was gone too), the health to the backend of that id and address (its
 * drain deadline comes after the publish).  False when nothing of it
 * applies here.
 */
static bool adopt_backend(struct lb_registry *r, const struct lb_handover_backend *hb,
                          size_t *n_local)
{
    struct lb_pool *pool = lb_registry_find_pool(r, hb->pool);
    struct lb_member *m = !pool       ? NULL
                          : hb->local ? lb_pool_get_member(pool, hb->id)
                                      : lb_pool_find(pool, hb->id);
    struct lb_backend *b;
    struct lb_local_override *l;

    if (!m)
        return false;
    if (hb->local) {
        l = &m->local;
        l->has_drain = hb->local & LB_HANDOVER_LOCAL_DRAIN;
        l->drain = hb->local_drain;
        l->has_weight = hb->local & LB_HANDOVER_LOCAL_WEIGHT;
        l->clear_weight = hb->local & LB_HANDOVER_LOCAL_CLEAR_WEIGHT;
        l->weight = hb->local_weight;
        l->has_health = hb->local & LB_HANDOVER_LOCAL_HEALTH;
        l->health = (enum lb_health_override)hb->local_health;
        lb_registry_member_changed(r, pool, m, "local override, carried over by the upgrade");
        (*n_local)++;
    }
    b = adopted_backend(r, hb);
    if (!b)
        return hb->local != 0;
    lb_health_adopt(b, hb->health, hb->ejections, hb->ejected_ms);
    return true;
}

void lb_upgrade_adopt(struct lb_upgrade *u)
{
    size_t n_local = 0, unknown = 0;

    if (!u || !u->backends)
        return;
    for (size_t i = 0; i < u->n_backends; i++)
        if (!adopt_backend(u->cfg.registry, &u->backends[i], &n_local))
            unknown++;
    lb_registry_publish(u->cfg.registry);
    /* Published: a drained backend's deadline runs (lb_drain_update()); as it did there. */
    for (size_t i = 0; i < u->n_backends; i++) {
        struct lb_backend *b = adopted_backend(u->cfg.registry, &u->backends[i]);

        if (b)
            lb_drain_adopt(b, u->backends[i].drain_left_ms);
    }
    LB_INFO(LOG_SUB,
            "msg=\"upgrade: took over what the previous process knew of its backends\" "
            "backends=%zu local_overrides=%zu not_here=%zu",
            u->n_backends - unknown, n_local, unknown);
    free(u->backends);
    u->backends = NULL;
    u->n_backends = 0;
}

void lb_upgrade_ready(struct lb_upgrade *u)
{
    struct lb_handover_msg m = {.type = LB_HANDOVER_READY};
    int rc;

    if (!u || !u->taking_over)
        return;
    u->taking_over = false;
    rc = send_msg(u->prev_fd, &m, NULL, 0);
    if (rc < 0) {
        LB_WARN(LOG_SUB,
                "msg=\"upgrade: cannot tell the previous process we are ready\" "
                "error=\"%s\"",
                strerror(-rc));
        prev_close(u, "gone before ready");
        return;
    }
    LB_INFO(LOG_SUB, "msg=\"upgrade: ready, the previous process stops accepting\" sessions=%s",
            u->prev_sessions_move ? "move here" : "stay there (another session version)");
    ev_io_start(u->loop, &u->prev_r);
}

bool lb_upgrade_is_taking_over(const struct lb_upgrade *u)
{
    return u && u->taking_over;
}

/* ------------------------------------------------------ old process -- */

static void link_send_pending(struct lb_upgrade *u);

static void link_close(struct lb_upgrade *u)
{
    ev_timer_stop(u->loop, &u->hello_timer);
    if (u->peer_fd < 0)
        return;
    ev_io_stop(u->loop, &u->peer_r);
    ev_io_stop(u->loop, &u->peer_w);
    close(u->peer_fd);
    u->peer_fd = -1;
}

/*
 * The link is over before the hand-over finished.  `resume`: the new
 * process is gone (its copies of the sockets closed with it), so every
 * offer queued or sent is answered "not taken" and those sessions go on
 * here.  Otherwise (shutdown grace over, exiting) the new process may be
 * running some of them: this process only closes its copies, which ends
 * the connections it alone held, as the end of the grace period would.
 */
static void link_fail(struct lb_upgrade *u, const char *why, bool resume)
{
    struct lb_list *first;
    size_t n = 0;

    if (u->state == LINK_HELLO || u->state == LINK_WAIT_READY) {
        /* Not ready yet: nothing changed here, keep serving. */
        LB_WARN(LOG_SUB,
                "msg=\"upgrade: the new process went away before it was ready, still "
                "serving\" reason=\"%s\"",
                why);
        link_close(u);
        u->state = LINK_NONE;
        accept_start(u);
        u->cfg.failed(u->cfg.ud, "the new lbd went away before it was ready");
        u->failure_told = u->child > 0;
        return;
    }
    u->link_failed = true;
    while ((first = lb_list_first(&u->waiting)) || (first = lb_list_first(&u->sendq))) {
        lb_list_remove(first);
        lb_proxy_offer_answer(u->cfg.proxy, lb_container_of(first, struct lb_offer, link), !resume);
        n++;
    }
    u->n_not_taken += n; /* they end here, one way or the other */
    if (u->state == LINK_OFFERING)
        LB_WARN(LOG_SUB,
                "msg=\"upgrade: link to the new process lost, connections not moved "
                "yet finish here\" reason=\"%s\" kept_back=%zu",
                why, n);
    link_close(u);
    u->state = LINK_DONE;
}

/* Once: what moved, and how many sessions stay to finish here. */
static void log_finished(struct lb_upgrade *u)
{
    uint64_t moved, ended;

    if (u->finished_logged)
        return;
    u->finished_logged = true;
    lb_proxy_offer_totals(u->cfg.proxy, &moved, &ended);
    /* Answers reach the workers later: count them here, where they are given. */
    LB_INFO(LOG_SUB, "msg=\"upgrade: hand-over finished\" moved=%llu kept=%llu",
            (unsigned long long)u->n_taken,
            (unsigned long long)(u->n_not_taken + lb_proxy_offers_given_up(u->cfg.proxy)));
}

/* Every offer answered and nothing more to offer: DONE. */
static void link_maybe_done(struct lb_upgrade *u)
{
    struct lb_handover_msg m = {.type = LB_HANDOVER_DONE};

    if (u->state != LINK_OFFERING || !u->offers_done || !lb_list_is_empty(&u->sendq) ||
        !lb_list_is_empty(&u->waiting))
        return;
    send_msg(u->peer_fd, &m, NULL, 0);
    link_close(u);
    u->state = LINK_DONE;
    log_finished(u);
}

/* Offer hooks (proxy.h). */
static int offer_encode(void *ctx, size_t pool, uint64_t id, const struct lb_session_move *sm,
                        struct lb_buf *out)
{
    struct lb_upgrade *u = ctx;
    struct lb_handover_msg *m = calloc(1, sizeof(*m));
    struct lb_handover_session *hs;
    int rc;

    if (!m)
        return -ENOMEM;
    m->type = LB_HANDOVER_SESSION;
    hs = &m->u.session;
    hs->id = id;
    snprintf(hs->pool, sizeof(hs->pool), "%s", u->cfg.registry->pools[pool].name);
    snprintf(hs->backend_id, sizeof(hs->backend_id), "%s", sm->backend_id);
    snprintf(hs->backend_addr, sizeof(hs->backend_addr), "%s", sm->backend_addr);
    hs->client = sm->client;
    hs->client_len = sm->client_len;
    hs->bytes_up = sm->bytes_up;
    hs->bytes_down = sm->bytes_down;
    hs->age_ms = sm->age_s * 1000. > 4e9 ? 4000000000u : (uint32_t)(sm->age_s * 1000.);
    hs->idle_ms = sm->idle_s * 1000. > 4e9 ? 4000000000u : (uint32_t)(sm->idle_s * 1000.);
    hs->flags = (sm->up_eof ? LB_HANDOVER_UP_EOF : 0) | (sm->up_shut ? LB_HANDOVER_UP_SHUT : 0) |
                (sm->down_eof ? LB_HANDOVER_DOWN_EOF : 0) |
                (sm->down_shut ? LB_HANDOVER_DOWN_SHUT : 0);
    hs->up_pending = (const uint8_t *)sm->up_pending;
    hs->up_pending_len = (uint32_t)sm->up_len;
    hs->down_pending = (const uint8_t *)sm->down_pending;
    hs->down_pending_len = (uint32_t)sm->down_len;
    out->max = LB_HANDOVER_MSG_MAX;
    rc = lb_handover_encode(m, out);
    free(m);
    return rc;
}

static void offer_arrived(void *ctx, struct lb_offer *o)
{
    struct lb_upgrade *u = ctx;

    if (u->link_failed || u->state != LINK_OFFERING) {
        /* After a failed link: the new process never saw this one. */
        u->n_not_taken++;
        lb_proxy_offer_answer(u->cfg.proxy, o, false);
        return;
    }
    lb_list_insert_tail(&u->sendq, &o->link);
    link_send_pending(u);
}

static void offers_done(void *ctx)
{
    struct lb_upgrade *u = ctx;

    u->offers_done = true;
    link_maybe_done(u);
}

static const struct lb_offer_ops offer_ops = {
    .encode = offer_encode,
    .offer = offer_arrived,
    .done = offers_done,
};

static void link_send_pending(struct lb_upgrade *u)
{
    struct lb_list *first;

    while (u->peer_fd >= 0 && (first = lb_list_first(&u->sendq))) {
        struct lb_offer *o = lb_container_of(first, struct lb_offer, link);
        int rc = lb_handover_send(u->peer_fd, o->rec.data, o->rec.len, o->fds, 2);

        if (rc == -EAGAIN) {
            ev_io_start(u->loop, &u->peer_w);
            return;
        }
        lb_list_remove(&o->link);
        if (rc < 0) {
            /* Too big for the socket, say: this one stays here. */
            u->n_not_taken++;
            lb_proxy_offer_answer(u->cfg.proxy, o, false);
            if (rc != -EMSGSIZE) {
                link_fail(u, strerror(-rc), true);
                return;
            }
            continue;
        }
        lb_list_insert_tail(&u->waiting, &o->link);
    }
    ev_io_stop(u->loop, &u->peer_w);
}

static void peer_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    link_send_pending(w->data);
}

/* Sends one listening socket to the next process (lb_upgrade_send_fn). */
static void send_listener(void *ctx, enum lb_handover_listener_kind kind, const char *name,
                          const char *addr, int fd)
{
    struct lb_upgrade *u = ctx;
    struct lb_handover_msg m = {.type = LB_HANDOVER_LISTENER};
    int rc;

    if (u->peer_fd < 0 || fd < 0)
        return;
    m.u.listener.kind = (uint8_t)kind;
    snprintf(m.u.listener.name, sizeof(m.u.listener.name), "%s", name ? name : "");
    snprintf(m.u.listener.addr, sizeof(m.u.listener.addr), "%s", addr ? addr : "");
    rc = send_msg(u->peer_fd, &m, &fd, 1);
    if (rc < 0)
        LB_WARN(LOG_SUB, "msg=\"upgrade: cannot send a listener\" addr=%s error=\"%s\"",
                m.u.listener.addr, strerror(-rc));
    else
        u->n_sent++;
}

static void pool_listener(void *ctx, size_t pool, int fd)
{
    struct lb_upgrade *u = ctx;

    send_listener(u, LB_HANDOVER_LISTENER_POOL, u->cfg.registry->pools[pool].name,
                  u->cfg.registry->pools[pool].listen, fd);
}

/*
 * Sends a BACKEND record for each backend whose state etcd does not hold
 * and routing rests on (local overrides, down as checked, ejected): the
 * next process applies them before it accepts.  Blocking sends, as the
 * listeners'.
 */
static void send_backends(struct lb_upgrade *u)
{
    struct lb_registry *r = u->cfg.registry;
    struct lb_handover_msg m;
    size_t sent = 0;

    for (size_t p = 0; p < r->n_pools; p++) {
        const struct lb_pool *pool = &r->pools[p];

        for (size_t i = 0; i < pool->n_members; i++) {
            const struct lb_member *mb = pool->members[i];
            const struct lb_backend *b = mb->backend && !mb->backend->removed ? mb->backend : NULL;
            struct lb_handover_backend *hb = &m.u.backend;
            int rc;

            memset(&m, 0, sizeof(m));
            m.type = LB_HANDOVER_BACKEND;
            if (b) {
                lb_health_export(b, &hb->health, &hb->ejections, &hb->ejected_ms);
                hb->drain_left_ms = lb_drain_left_ms(b);
            }
            hb->local = (mb->local.has_drain ? LB_HANDOVER_LOCAL_DRAIN : 0) |
                        (mb->local.has_weight ? LB_HANDOVER_LOCAL_WEIGHT : 0) |
                        (mb->local.clear_weight ? LB_HANDOVER_LOCAL_CLEAR_WEIGHT : 0) |
                        (mb->local.has_health ? LB_HANDOVER_LOCAL_HEALTH : 0);
            /* Up, or not checked yet, the next process takes it as it would: eligible.
             * So a record only where a decision rests on it: the few down, ejected,
             * locally overridden or draining to a deadline (these sends block, the
             * loop waits). */
            if (!hb->local && hb->health != LB_HEALTH_DOWN && !hb->ejected_ms && !hb->drain_left_ms)
                continue;
            hb->local_drain = mb->local.has_drain && mb->local.drain;
            hb->local_weight = mb->local.has_weight ? (uint16_t)mb->local.weight : 0;
            hb->local_health = mb->local.has_health ? (uint8_t)mb->local.health : 0;
            snprintf(hb->pool, sizeof(hb->pool), "%s", pool->name);
            snprintf(hb->id, sizeof(hb->id), "%s", mb->id);
            snprintf(hb->addr, sizeof(hb->addr), "%s", b ? b->spec.addr : "");
            if (sent == BACKENDS_MAX) {
                LB_WARN(LOG_SUB,
                        "msg=\"upgrade: more backends to carry over than the next process "
                        "takes; the others start from etcd alone there\" sent=%zu",
                        sent);
                return;
            }
            rc = send_msg(u->peer_fd, &m, NULL, 0);
            if (rc < 0) {
                LB_WARN(LOG_SUB,
                        "msg=\"upgrade: cannot send what this process knows of its backends\" "
                        "sent=%zu error=\"%s\"",
                        sent, strerror(-rc));
                return;
            }
            sent++;
        }
    }
}

/* A key the next process's decoder takes (lbd's own bounds make every one fit). */
static bool key_fits(const struct lb_watcher_kv *kv)
{
    return kv->key_len > 0 && kv->key_len <= LB_HANDOVER_KEY_MAX &&
           !memchr(kv->key, '\0', kv->key_len) && kv->value_len <= LB_HANDOVER_VALUE_MAX &&
           kv->mod_revision > 0;
}

static void count_key(void *ctx, const struct lb_watcher_kv *kv)
{
    *(size_t *)ctx += key_fits(kv);
}

struct key_tx {
    struct lb_upgrade *u;
    size_t sent, limit;
    int rc;
};

static void send_key(void *ctx, const struct lb_watcher_kv *kv)
{
    struct key_tx *tx = ctx;
    struct lb_handover_msg m = {.type = LB_HANDOVER_KEY};

    if (tx->rc < 0 || !key_fits(kv) || tx->sent == tx->limit)
        return;
    m.u.key.key = (const uint8_t *)kv->key;
    m.u.key.key_len = (uint32_t)kv->key_len;
    m.u.key.value = kv->value_len ? (const uint8_t *)kv->value : NULL;
    m.u.key.value_len = (uint32_t)kv->value_len;
    m.u.key.mod_revision = kv->mod_revision;
    tx->rc = send_msg(tx->u->peer_fd, &m, NULL, 0);
    tx->sent += tx->rc == 0;
}

/*
 * Sends this process's view of etcd (VIEW, then a KEY for each key), so the
 * next process starts from it without waiting for etcd, which may be out of
 * reach.  None before the first listing.  Blocking sends, as the listeners'.
 */
static void send_view(struct lb_upgrade *u)
{
    struct lb_watcher_view view;
    struct lb_handover_msg m = {.type = LB_HANDOVER_VIEW};
    struct key_tx tx = {.u = u};
    size_t n = 0;

    if (!u->cfg.export_view || !u->cfg.export_view(u->cfg.ud, &view, count_key, &n))
        return;
    if (n > LB_HANDOVER_VIEW_KEYS_MAX) {
        LB_WARN(LOG_SUB,
                "msg=\"upgrade: more etcd keys than the next process takes over; it lists etcd "
                "itself\" keys=%zu",
                n);
        return;
    }
    m.u.view.revision = view.revision;
    m.u.view.cluster_id = view.cluster_id;
    m.u.view.stale_ms = view.stale_ms > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)view.stale_ms;
    m.u.view.keys = (uint32_t)n;
    if (snprintf(m.u.view.prefix, sizeof(m.u.view.prefix), "%s", view.prefix) >=
        (int)sizeof(m.u.view.prefix))
        return; /* cannot be: lbd's prefixes are shorter */
    tx.limit = n;
    tx.rc = send_msg(u->peer_fd, &m, NULL, 0);
    if (tx.rc == 0)
        u->cfg.export_view(u->cfg.ud, &view, send_key, &tx);
    if (tx.rc < 0)
        LB_WARN(LOG_SUB,
                "msg=\"upgrade: cannot send this process's view of etcd\" sent=%zu keys=%zu "
                "error=\"%s\"",
                tx.sent, n, strerror(-tx.rc));
}

/* HELLO from the next process: answer, send every listener. */
static void link_hello(struct lb_upgrade *u, const struct lb_handover_hello *h)
{
    struct lb_handover_msg m;
    int fl = fcntl(u->peer_fd, F_GETFL);

    ev_timer_stop(u->loop, &u->hello_timer);
    u->sessions_move = h->session_version == session_version();
    LB_INFO(LOG_SUB,
            "msg=\"upgrade: a new lbd is taking over\" new_pid=%u new_version=%s "
            "new_workers=%u sessions_move=%s",
            h->pid, h->version, h->workers, u->sessions_move ? "yes" : "no");
    /* A few small records: blocking sends, bounded by SO_SNDTIMEO. */
    fcntl(u->peer_fd, F_SETFL, fl & ~O_NONBLOCK);
    hello_of(&m, u->cfg.workers);
    u->n_sent = 0;
    if (send_msg(u->peer_fd, &m, NULL, 0) < 0) {
        fcntl(u->peer_fd, F_SETFL, fl);
        link_fail(u, "cannot answer HELLO", true);
        return;
    }
    lb_proxy_each_listener(u->cfg.proxy, pool_listener, u);
    u->cfg.each_listener(u->cfg.ud, send_listener, u);
    send_listener(u, LB_HANDOVER_LISTENER_UPGRADE, "", u->path, u->listen_fd);
    if (u->sessions_move) { /* a peer of another session version may not know these */
        send_backends(u);
        send_view(u);
    }
    memset(&m, 0, sizeof(m));
    m.type = LB_HANDOVER_LISTENERS_DONE;
    m.u.listeners_done_count = u->n_sent;
    if (send_msg(u->peer_fd, &m, NULL, 0) < 0) {
        fcntl(u->peer_fd, F_SETFL, fl);
        link_fail(u, "cannot send the listeners", true);
        return;
    }
    fcntl(u->peer_fd, F_SETFL, fl);
    u->state = LINK_WAIT_READY;
}

/* READY: stop accepting; offer the sessions, or keep them (other session version). */
static void link_ready(struct lb_upgrade *u)
{
    struct lb_handover_msg m = {.type = LB_HANDOVER_DONE};

    u->handed_over = true;
    LB_INFO(LOG_SUB,
            "msg=\"upgrade: the new process is ready, no longer accepting\" "
            "active=%llu",
            (unsigned long long)lb_proxy_active(u->cfg.proxy));
    ev_io_stop(u->loop, &u->accept_io);
    if (u->listen_fd >= 0)
        close(u->listen_fd); /* the new process has it; the path stays */
    u->listen_fd = -1;
    u->cfg.stop_accepting(u->cfg.ud);
    if (!u->sessions_move) {
        LB_WARN(LOG_SUB,
                "msg=\"upgrade: the new lbd speaks another session hand-over version: "
                "listeners only, open connections finish here\" moved=0 kept=%llu",
                (unsigned long long)lb_proxy_active(u->cfg.proxy));
        send_msg(u->peer_fd, &m, NULL, 0);
        link_close(u);
        u->state = LINK_DONE;
        return;
    }
    u->state = LINK_OFFERING;
    lb_proxy_offer_sessions(u->cfg.proxy, LB_HANDOVER_PENDING_MAX, &offer_ops, u);
}

/* ACK or NAK of offer `id`. */
static int link_answer(struct lb_upgrade *u, uint64_t id, bool taken, const char *reason)
{
    struct lb_list *pos;

    lb_list_for_each(pos, &u->waiting)
    {
        struct lb_offer *o = lb_container_of(pos, struct lb_offer, link);

        if (o->id != id)
            continue;
        lb_list_remove(&o->link);
        if (!taken)
            LB_INFO(LOG_SUB,
                    "msg=\"upgrade: the new process refused a session, it finishes "
                    "here\" reason=\"%s\"",
                    reason);
        if (taken)
            u->n_taken++;
        else
            u->n_not_taken++;
        lb_proxy_offer_answer(u->cfg.proxy, o, taken);
        return 0;
    }
    return -ENOENT;
}

static void peer_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_upgrade *u = w->data;

    for (int round = 0; round < 256 && u->peer_fd >= 0; round++) {
        struct lb_handover_msg m;
        int fds[LB_HANDOVER_FDS_MAX], n_fds = 0;
        char *why = NULL;
        int rc = link_recv(u->peer_fd, u->rbuf, &m, fds, &n_fds, &why);

        if (rc == -EAGAIN)
            break;
        if (rc == 0 || rc == -ECONNRESET) {
            link_fail(u, rc == 0 ? "closed the link" : "link error", true);
            return;
        }
        for (int i = 0; i < n_fds; i++)
            close(fds[i]); /* nothing sent this way carries a socket */
        if (rc < 0) {
            LB_ERROR(LOG_SUB, "msg=\"upgrade: bad record from the new process\" error=\"%s\"",
                     why ? why : "unreadable");
            free(why);
            link_fail(u, "bad record", true);
            return;
        }
        if (m.type == LB_HANDOVER_HELLO && u->state == LINK_HELLO) {
            link_hello(u, &m.u.hello);
        } else if (m.type == LB_HANDOVER_READY && u->state == LINK_WAIT_READY) {
            link_ready(u);
        } else if ((m.type == LB_HANDOVER_SESSION_ACK || m.type == LB_HANDOVER_SESSION_NAK) &&
                   u->state == LINK_OFFERING) {
            bool ack = m.type == LB_HANDOVER_SESSION_ACK;

            if (link_answer(u, ack ? m.u.ack_id : m.u.nak.id, ack, ack ? "" : m.u.nak.reason) < 0) {
                link_fail(u, "answer to a session never offered", true);
                return;
            }
        } else {
            LB_ERROR(LOG_SUB, "msg=\"upgrade: unexpected record from the new process\" type=%s",
                     lb_handover_type_name(m.type));
            link_fail(u, "unexpected record", true);
            return;
        }
    }
    link_maybe_done(u);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lb_upgrade *u = w->data;
    int fd = accept4(u->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    struct timeval tv = {.tv_sec = 5};

    if (fd < 0)
        return;
    if (u->state != LINK_NONE || u->prev_fd >= 0 || u->taking_over) {
        LB_WARN(LOG_SUB, "msg=\"upgrade: another lbd connected while an upgrade is in progress, "
                         "turned away\"");
        close(fd);
        return;
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    lb_handover_socket_setup(fd);
    u->peer_fd = fd;
    u->state = LINK_HELLO;
    ev_io_init(&u->peer_r, peer_read_cb, fd, EV_READ);
    u->peer_r.data = u;
    ev_io_init(&u->peer_w, peer_write_cb, fd, EV_WRITE);
    u->peer_w.data = u;
    ev_io_start(loop, &u->peer_r);
    /* Set again: a stopped libev timer keeps what was left of its last run. */
    ev_timer_set(&u->hello_timer, HELLO_WAIT_S, 0.);
    ev_timer_start(loop, &u->hello_timer);
}

static void hello_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_upgrade *u = w->data;

    link_fail(u, "no HELLO within 5 s", true);
}

/* Listens for the next upgrade (not while one runs, nor while taking over). */
static void accept_start(struct lb_upgrade *u)
{
    if (u->listen_fd >= 0 && !u->handed_over && !u->shutting_down && u->prev_fd < 0 &&
        !u->taking_over)
        ev_io_start(u->loop, &u->accept_io);
}

/* Binds the upgrade socket at path, mode 0600. */
static int listen_path(struct lb_upgrade *u, char **err)
{
    struct sockaddr_un sa;
    mode_t old;
    int fd, rc;

    rc = unix_address(u->path, &sa, err);
    if (rc < 0)
        return rc;
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return lb_error_set(err, -errno, "--upgrade-socket %s: socket: %s", u->path,
                            strerror(errno));
    old = umask(0177);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc < 0 || listen(fd, 4) < 0) {
        int e = errno;

        close(fd);
        return lb_error_set(err, -e, "--upgrade-socket %s: cannot listen: %s%s", u->path,
                            strerror(e),
                            e == EADDRINUSE ? " (a file is in the way: remove it)"
                            : e == ENOENT   ? " (its directory does not exist)"
                                            : "");
    }
    u->listen_fd = fd;
    return 0;
}

static void child_cb(struct ev_loop *loop, ev_child *w, int revents)
{
    struct lb_upgrade *u = w->data;

    ev_child_stop(loop, w);
    u->child = 0;
    if (u->handed_over)
        return;
    LB_WARN(LOG_SUB,
            "msg=\"upgrade: the new lbd exited before it took over, still "
            "serving\" new_pid=%d status=%d",
            (int)w->rpid, WIFEXITED(w->rstatus) ? WEXITSTATUS(w->rstatus) : -1);
    /* Said once: a link that failed first has told already. */
    if (u->state == LINK_NONE && !u->failure_told)
        u->cfg.failed(u->cfg.ud, "the new lbd exited before it took over");
    u->failure_told = false;
}

pid_t lb_upgrade_spawn(struct lb_upgrade *u, char *const argv[])
{
    pid_t pid;

    if (u->child > 0 || u->state != LINK_NONE || u->handed_over || u->shutting_down ||
        u->taking_over || u->prev_fd >= 0)
        return -EBUSY;
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        /* Only async-signal-safe calls between fork and exec. */
        sigset_t none;

        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        close_range(3, ~0u, 0);
        execv(u->exe, argv);
        _exit(127);
    }
    u->child = pid;
    ev_child_init(&u->child_w, child_cb, pid, 0);
    u->child_w.data = u;
    ev_child_start(u->loop, &u->child_w);
    LB_INFO(LOG_SUB, "msg=\"upgrade: started the new binary\" new_pid=%d exe=%s", (int)pid, u->exe);
    return pid;
}

/* ----------------------------------------------------------- common -- */

int lb_upgrade_start(struct ev_loop *loop, const struct lb_upgrade_config *cfg,
                     struct lb_takeover *t, struct lb_upgrade **out, char **err)
{
    struct lb_upgrade *u = calloc(1, sizeof(*u));
    ssize_t n;
    int rc;

    if (!u || !(u->rbuf = malloc(LB_HANDOVER_MSG_MAX))) {
        free(u);
        return lb_error_set(err, -ENOMEM, "out of memory");
    }
    u->loop = loop;
    u->cfg = *cfg;
    u->listen_fd = u->peer_fd = u->prev_fd = -1;
    lb_list_init(&u->sendq);
    lb_list_init(&u->waiting);
    snprintf(u->path, sizeof(u->path), "%s", cfg->path);
    /* The binary as it is on disk when the upgrade starts: a package
     * upgrade replaces the file, and that is what must run next. */
    n = readlink("/proc/self/exe", u->exe, sizeof(u->exe) - 1);
    if (n > 0) {
        const char *gone = " (deleted)";
        size_t gl = strlen(gone);

        u->exe[n] = '\0';
        if ((size_t)n > gl && strcmp(u->exe + n - gl, gone) == 0)
            u->exe[n - gl] = '\0';
    }
    if (t && t->upgrade_listen_fd >= 0) {
        u->listen_fd = t->upgrade_listen_fd;
        t->upgrade_listen_fd = -1;
    } else {
        rc = listen_path(u, err);
        if (rc < 0) {
            free(u->rbuf);
            free(u);
            return rc;
        }
    }
    ev_io_init(&u->accept_io, accept_cb, u->listen_fd, EV_READ);
    u->accept_io.data = u;
    ev_timer_init(&u->hello_timer, hello_timer_cb, HELLO_WAIT_S, 0.);
    u->hello_timer.data = u;
    if (t && t->fd >= 0) {
        u->prev_fd = t->fd;
        t->fd = -1;
        u->taking_over = true;
        u->prev_sessions_move = t->peer.session_version == session_version();
        u->backends = t->backends;
        u->n_backends = t->n_backends;
        t->backends = NULL;
        t->n_backends = 0;
        ev_io_init(&u->prev_r, prev_read_cb, u->prev_fd, EV_READ);
        u->prev_r.data = u;
    }
    accept_start(u);
    LB_INFO(LOG_SUB, "msg=\"upgrade socket listening\" path=%s", u->path);
    *out = u;
    return 0;
}

void lb_upgrade_shutdown(struct lb_upgrade *u)
{
    if (!u || u->handed_over)
        return;
    u->shutting_down = true; /* no upgrade from now on: this process closes its listeners */
    ev_io_stop(u->loop, &u->accept_io);
    if (u->state == LINK_HELLO || u->state == LINK_WAIT_READY) {
        LB_WARN(LOG_SUB, "msg=\"upgrade: shutting down, the new lbd connected meanwhile is turned "
                         "away\"");
        link_close(u);
        u->state = LINK_NONE;
    }
}

void lb_upgrade_abandon(struct lb_upgrade *u)
{
    if (u && u->state == LINK_OFFERING)
        link_fail(u, "shutdown grace period over", false);
}

void lb_upgrade_close(struct lb_upgrade *u)
{
    if (!u)
        return;
    if (u->state == LINK_OFFERING && lb_list_is_empty(&u->sendq) && lb_list_is_empty(&u->waiting)) {
        /* Nothing in flight: the hand-over is simply over. */
        struct lb_handover_msg m = {.type = LB_HANDOVER_DONE};

        send_msg(u->peer_fd, &m, NULL, 0);
        link_close(u);
        u->state = LINK_DONE;
    } else if (u->state == LINK_OFFERING) {
        link_fail(u, "exiting", false);
    }
    u->link_failed = true;
}

void lb_upgrade_summary(struct lb_upgrade *u)
{
    uint64_t moved, kept;

    if (!u || !u->handed_over || !u->sessions_move)
        return;
    log_finished(u);
    lb_proxy_offer_totals(u->cfg.proxy, &moved, &kept);
    LB_INFO(LOG_SUB, "msg=\"upgrade: exiting\" moved=%llu finished_here=%llu",
            (unsigned long long)moved, (unsigned long long)kept);
}

void lb_upgrade_free(struct lb_upgrade *u)
{
    if (!u)
        return;
    link_close(u);
    if (u->prev_fd >= 0) {
        ev_io_stop(u->loop, &u->prev_r);
        close(u->prev_fd);
    }
    ev_io_stop(u->loop, &u->accept_io);
    if (u->listen_fd >= 0)
        close(u->listen_fd);
    if (u->child > 0)
        ev_child_stop(u->loop, &u->child_w);
    free(u->backends);
    free(u->rbuf);
    free(u);
}
