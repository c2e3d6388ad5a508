/*
 * The data plane: one listener per pool and the sessions it accepts, all on
 * one libev loop.
 *
 * lb_proxy owns the process-wide connection accounting: a global cap
 * (--max-conns) at which accepting pauses instead of failing, a pause after
 * EMFILE, the list of live sessions (for shutdown), and the graveyard of
 * sessions that finished during this loop iteration and are freed from an
 * ev_check watcher once no callback can still be on the stack.
 */
#ifndef LB_PROXY_H
#define LB_PROXY_H

#include "lb_listen.h"
#include "pool.h"
#include "registry.h"
#include "lb_list.h"
#include "lb_reaper.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lb_session;

struct lb_listener {
    ev_io io;
    int fd;
    struct lb_pool *pool;
    struct lb_proxy *proxy;
};

struct lb_proxy {
    struct ev_loop *loop;
    struct lb_registry *registry;
    struct lb_listener *listeners; /* one per pool, same order */
    size_t n_listeners;
    bool listening;      /* listeners bound (for /readyz) */
    bool accept_enabled; /* after the first etcd sync */
    bool accept_paused;  /* not accepting: before sync, at the cap, after EMFILE */
    bool shutting_down;
    uint64_t max_conns;
    uint64_t active;            /* client connections open now */
    uint64_t accepted;          /* since start */
    uint64_t accept_errors;     /* EMFILE and friends */
    uint64_t cap_pauses;        /* times the cap paused accepting */
    uint64_t cap_pauses_logged; /* cap_pauses at the last log line */
    ev_tstamp cap_logged_at;
    struct lb_list live;     /* every open session, newest first */
    struct lb_reaper reaper; /* frees finished sessions after the current callbacks */
    struct lb_accept_backoff accept_backoff; /* resumes accepting after EMFILE */
    void (*on_idle)(struct lb_proxy *proxy); /* shutting down and no session left */
    char scratch[16384];                     /* read buffer shared by all sessions */
};

/*
 * Binds one listener per pool of the registry (pool->listen), without
 * accepting yet (see lb_proxy_enable_accept()).  Returns 0,
 * or a negative errno with *err set to a malloc'd message naming the pool
 * and the address.  Nothing is bound when it fails.
 */
int lb_proxy_init(struct lb_proxy *proxy, struct ev_loop *loop, struct lb_registry *registry,
                  uint64_t max_conns, char **err);

/*
 * Starts accepting on the bound listeners.  Until then, clients wait in the
 * kernel's accept queue instead of being turned away for lack of backends:
 * lbd calls this once the first etcd listing is applied.
 */
void lb_proxy_enable_accept(struct lb_proxy *proxy);

/* Stops accepting, closes the listeners; sessions go on. */
void lb_proxy_stop_listening(struct lb_proxy *proxy);

/*
 * Enters shutdown: stops listening; calls on_idle once no session is left
 * (at once if none is open).
 */
void lb_proxy_shutdown(struct lb_proxy *proxy, void (*on_idle)(struct lb_proxy *proxy));

/* Closes every open session now (end of the shutdown grace period). */
void lb_proxy_close_all(struct lb_proxy *proxy);

/* Frees everything; sessions must be closed first. */
void lb_proxy_destroy(struct lb_proxy *proxy);

/* Called by a session after it left the live list (accounting, resume, idle). */
void lb_proxy_session_finished(struct lb_proxy *proxy);

#endif
