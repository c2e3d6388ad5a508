/*
 * The worker's pipe pool (pipe_pool.h): a small stack of empty pipes and a
 * count of the open ones.  Nothing here splices; session.c does.
 */
#include "pipe_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

void lb_pipe_pool_init(struct lb_pipe_pool *pp, unsigned max_open)
{
    pp->n_kept = 0;
    pp->n_open = 0;
    pp->max_open = max_open;
    pp->disabled = false;
}

int lb_pipe_pool_get(struct lb_pipe_pool *pp, struct lb_pipe *out)
{
    int fds[2];
    int size;

    if (pp->n_kept) {
        *out = pp->kept[--pp->n_kept];
        return 0;
    }
    if (pp->disabled || pp->n_open >= pp->max_open)
        return -EAGAIN;
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    /* Bigger than the default 64 KiB so one splice moves one bulk read; an
     * unprivileged user over /proc/sys/fs/pipe-user-pages-soft is refused
     * (EPERM) and keeps the default, which still works. */
    size = fcntl(fds[1], F_SETPIPE_SZ, (int)LB_PIPE_SIZE);
    if (size < 0)
        size = fcntl(fds[1], F_GETPIPE_SZ);
    out->rd = fds[0];
    out->wr = fds[1];
    out->size = size > 0 ? (size_t)size : 65536;
    pp->n_open++;
    return 0;
}

void lb_pipe_pool_drop(struct lb_pipe_pool *pp, struct lb_pipe *p)
{
    if (p->rd < 0)
        return;
    close(p->rd);
    close(p->wr);
    pp->n_open--;
    lb_pipe_reset(p);
}

void lb_pipe_pool_put(struct lb_pipe_pool *pp, struct lb_pipe *p)
{
    if (p->rd < 0)
        return;
    if (pp->n_kept < LB_PIPES_KEPT && !pp->disabled) {
        pp->kept[pp->n_kept++] = *p;
        lb_pipe_reset(p);
        return;
    }
    lb_pipe_pool_drop(pp, p);
}

void lb_pipe_pool_destroy(struct lb_pipe_pool *pp)
{
    while (pp->n_kept)
        lb_pipe_pool_drop(pp, &pp->kept[--pp->n_kept]);
}
