/*
 * Hitless upgrades (--upgrade-socket PATH): the running lbd hands its
 * listening sockets, then its established sessions, to the next lbd over a
 * unix SOCK_SEQPACKET socket at PATH (common/lb_handover.h is the wire).
 *
 *   new process                               old process
 *   -----------                               -----------
 *   connect(PATH), HELLO ------------------->
 *                        <------------------- HELLO, LISTENER x n (1 fd each),
 *                                             BACKEND x b, VIEW, KEY x k,
 *                                             LISTENERS_DONE
 *   binds nothing it was given; takes the
 *   view of etcd (or lists etcd without one)
 *   READY ---------------------------------->  stops accepting (its copies of the
 *                                             sockets close; the sockets live on)
 *                        <------------------- SESSION (2 fds) for each session
 *   ACK / NAK ------------------------------>  ends it here / keeps it
 *                        <------------------- DONE
 *   serves PATH for the next upgrade          exits once it holds no session
 *
 * A connection to a pool's port is never refused: the listening sockets are
 * the same objects in both processes, and the old one accepts until the new
 * one accepts too.  A session moves only when both speak the same session
 * version (HELLO); otherwise listeners move and sessions finish in the old
 * process.  If the new process goes away before READY, the old one goes on
 * as if nothing happened; after READY, sessions not yet taken stay.
 *
 * Everything here runs on the control loop, except lb_upgrade_takeover(),
 * which runs at start-up before anything is bound.
 */
#ifndef LB_UPGRADE_H
#define LB_UPGRADE_H

#include "lb_handover.h"
#include "lb_update.h"

#include <ev.h>
#include <stdbool.h>
#include <sys/types.h>

struct lb_proxy;
struct lb_registry;
struct lb_upgrade;

/* What the previous process handed over at start-up (lb_upgrade_takeover). */
struct lb_takeover {
    int fd;                /* the link to the previous process; -1: none */
    int upgrade_listen_fd; /* its socket at PATH, now ours too; -1: none */
    struct lb_handover_hello peer;
    unsigned n_listeners; /* listening sockets received (given to lb_listen_inherit) */
    /* What the previous process knew of its backends (BACKEND records), for
     * lb_upgrade_adopt(); malloc'd, lb_upgrade_start() takes it over. */
    struct lb_handover_backend *backends;
    size_t n_backends;
    /* Its view of etcd (VIEW and KEY records), for lb_watcher_seed(); the
     * caller frees it with lb_takeover_free_view(). */
    bool have_view;
    struct lb_saved_view view;
};

/* Frees the view of etcd a takeover received (a no-op when none). */
void lb_takeover_free_view(struct lb_takeover *t);

/* Sends a listening socket of this process to the next one. */
typedef void (*lb_upgrade_send_fn)(void *ctx, enum lb_handover_listener_kind kind, const char *name,
                                   const char *addr, int fd);

struct lb_upgrade_config {
    const char *path;
    struct lb_proxy *proxy;
    struct lb_registry *registry;
    /* Old process: fills *view and calls fn for each key of its view of etcd,
     * or returns false before the first listing (lb_watcher_export()). */
    bool (*export_view)(void *ud, struct lb_watcher_view *view,
                        void (*fn)(void *ctx, const struct lb_watcher_kv *kv), void *ctx);
    unsigned workers;
    void *ud;
    /* Lists every listening socket (pools, admin, HTTP) through send(). */
    void (*each_listener)(void *ud, lb_upgrade_send_fn send, void *ctx);
    /* Old process: the next one is ready; stop accepting, finish or hand over sessions. */
    void (*stop_accepting)(void *ud);
    /* Old process: an upgrade failed before the new process was ready; this one goes on. */
    void (*failed)(void *ud, const char *why);
};

/*
 * At start-up, before any socket is bound: when an lbd serves `path`, takes
 * its listening sockets (lb_listen_inherit() gets the TCP ones) and returns
 * 1 with *out filled; returns 0 when none does (a stale socket file is
 * removed); a negative errno with *err a sentence when the path is unusable
 * or the running lbd did not answer as it should (nothing then is kept).
 * `addrs` are the addresses this process listens on (pools, --http,
 * --admin): when the running lbd dies in the middle of the hand-over, this
 * returns 0 once they are free (its exit closed them), or after 2 s.
 */
int lb_upgrade_takeover(const char *path, unsigned workers, const char *const *addrs,
                        size_t n_addrs, struct lb_takeover *out, char **err);

/*
 * Serves the upgrade socket (the one taken over, or a new one bound at
 * cfg->path, mode 0600) and, after a takeover, the link to the previous
 * process (`t`, whose descriptors it takes).  Returns 0 or a negative
 * errno with *err set.
 */
int lb_upgrade_start(struct ev_loop *loop, const struct lb_upgrade_config *cfg,
                     struct lb_takeover *t, struct lb_upgrade **out, char **err);

/*
 * New process, after its first etcd listing and before it accepts: applies
 * what the previous process knew of each backend that etcd does not hold
 * (local overrides, health as checked, passive ejection) to the backend of
 * the same pool, id and address, then publishes.  Once; a no-op otherwise.
 */
void lb_upgrade_adopt(struct lb_upgrade *u);

/* New process: synced and accepting; the previous process may stop (READY). */
void lb_upgrade_ready(struct lb_upgrade *u);

/* True while this process took over and has not told the previous one it is ready. */
bool lb_upgrade_is_taking_over(const struct lb_upgrade *u);

/*
 * SIGUSR2: starts the binary this process runs (as it is on disk now) with
 * `argv`, which takes over through the upgrade socket.  Returns the child's
 * pid, or a negative errno (-EBUSY: an upgrade is in progress).
 */
pid_t lb_upgrade_spawn(struct lb_upgrade *u, char *const argv[]);

/* SIGTERM: no upgrade from now on (the listeners close); one not yet ready is turned away. */
void lb_upgrade_shutdown(struct lb_upgrade *u);

/* Old process, shutdown grace over: sessions offered and not answered stay here. */
void lb_upgrade_abandon(struct lb_upgrade *u);

/*
 * Before lb_proxy_destroy(): every offer held, and every one still to
 * come, is answered "not taken", so destroy finds each session in a worker
 * (their sockets close there; the next process's copies stay open).
 */
void lb_upgrade_close(struct lb_upgrade *u);

/* Old process exiting: logs what moved. */
void lb_upgrade_summary(struct lb_upgrade *u);

/* After lb_proxy_destroy(). */
void lb_upgrade_free(struct lb_upgrade *u);

#endif
