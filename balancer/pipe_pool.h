/*
 * A worker's kernel pipes for splice(2) relaying (session.c), as HAProxy's
 * pipe pool: a session direction takes a pipe only while bytes are in it
 * and gives it back the moment it is empty, so an idle session holds no
 * pipe and a bulk transfer costs no pipe2()/close() per burst.  A few empty
 * pipes are kept for the next taker; beyond that they are closed.
 *
 * Each pipe is two file descriptors beside the sessions' sockets: a worker
 * keeps at most LB_PIPES_PER_WORKER open (in use or kept), which lbd
 * reserves out of the open-files limit at start-up (main.c), and a taker
 * past that cap falls back to user-space buffers.  Their kernel memory is
 * bounded too: at most LB_PIPES_PER_WORKER * LB_PIPE_SIZE per worker.
 *
 * One pool per worker, used from that worker's thread only.
 */
#ifndef LB_PIPE_POOL_H
#define LB_PIPE_POOL_H

#include <stdbool.h>
#include <stddef.h>

#define LB_PIPE_SIZE        (256u << 10) /* asked of F_SETPIPE_SZ: one bulk read */
#define LB_PIPES_PER_WORKER 64           /* open at once, in use or kept (2 fds each) */
#define LB_PIPES_KEPT       16           /* empty pipes kept for the next taker */

struct lb_pipe {
    int rd, wr;  /* -1 when none */
    size_t size; /* its capacity: LB_PIPE_SIZE, or the kernel's default if refused */
};

struct lb_pipe_pool {
    struct lb_pipe kept[LB_PIPES_KEPT];
    unsigned n_kept;
    unsigned n_open;   /* in use plus kept */
    unsigned max_open; /* LB_PIPES_PER_WORKER unless a test says otherwise */
    bool disabled;     /* splice() refused by this kernel: never handed out again */
};

/* An empty pool that may open up to max_open pipes. */
void lb_pipe_pool_init(struct lb_pipe_pool *pp, unsigned max_open);

/* A pipe that holds nothing (no -1 fds). */
static inline void lb_pipe_reset(struct lb_pipe *p)
{
    p->rd = p->wr = -1;
    p->size = 0;
}

/*
 * Hands out an empty pipe in *out: a kept one, or a new non-blocking one.
 * Returns 0; -EAGAIN when max_open pipes are open or the pool is disabled;
 * or the negative errno of pipe2() (-EMFILE...).  The caller falls back to
 * buffers on any error.
 */
int lb_pipe_pool_get(struct lb_pipe_pool *pp, struct lb_pipe *out);

/* Takes back an empty pipe (kept, or closed when enough are); resets *p. */
void lb_pipe_pool_put(struct lb_pipe_pool *pp, struct lb_pipe *p);

/* Closes a pipe that may still hold bytes (they are lost); resets *p. */
void lb_pipe_pool_drop(struct lb_pipe_pool *pp, struct lb_pipe *p);

/* Closes the kept pipes.  Every pipe handed out must be back or dropped. */
void lb_pipe_pool_destroy(struct lb_pipe_pool *pp);

#endif
