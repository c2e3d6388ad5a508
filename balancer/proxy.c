/*
 * Workers and the messages between them and the control loop (design in
 * proxy.h).  Binding, accept4() and the back-off after EMFILE are
 * common/lb_listen.c's, shared with the admin API; the global cap is this
 * file's: at --max-conns a worker pauses accepting, clients wait in the
 * kernel's queues, and the worker whose session frees a slot wakes every
 * worker paused at the cap.
 */
#include "proxy.h"
#include "health.h"
#include "lb_addr.h"
#include "lb_error.h"
#include "lb_listen.h"
#include "lb_log.h"
#include "lb_util.h"
#include "session.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * One accept per readiness of a listener, as nginx without multi_accept:
 * accepting until EAGAIN costs a failed accept4() per connection when
 * clients arrive one at a time, and epoll reports the listener again at
 * once while more are queued.  Shutdown takes in the whole queue.
 */
#define ACCEPTS_PER_WAKEUP  1
#define ACCEPTS_AT_SHUTDOWN 64
#define EMFILE_PAUSE_S      0.1
#define OFFER_AGAIN_S       0.02 /* upgrade: look again at sessions that could not move yet */
#define OFFER_WAIT_MAX_S    5.0  /* and give up on them after this long */
#define LISTEN_BACKLOG      4096

/* ---------------------------------------------------------- accepting -- */

static void worker_pause_accept(struct lb_worker *w)
{
    if (w->accept_paused)
        return;
    w->accept_paused = true;
    for (size_t i = 0; i < w->proxy->registry->n_pools; i++)
        for (size_t k = 0; k < w->pools[i].n_ls; k++)
            ev_io_stop(w->loop, &w->pools[i].ls[k].io);
}

static void worker_resume_accept(struct lb_worker *w)
{
    if (!w->accept_paused || !w->accepting || w->shutting_down)
        return;
    w->accept_paused = false;
    for (size_t i = 0; i < w->proxy->registry->n_pools; i++)
        for (size_t k = 0; k < w->pools[i].n_ls; k++)
            if (w->pools[i].ls[k].fd >= 0)
                ev_io_start(w->loop, &w->pools[i].ls[k].io);
}

/* Leaves the cap pause when there is room (and no EMFILE back-off runs). */
static void worker_leave_cap(struct lb_worker *w)
{
    struct lb_proxy *proxy = w->proxy;

    if (!w->at_cap || atomic_load(&proxy->active) >= proxy->max_conns)
        return;
    w->at_cap = false;
    atomic_fetch_sub(&proxy->n_at_cap, 1);
    if (!lb_accept_backoff_is_pending(&w->accept_backoff))
        worker_resume_accept(w);
}

/* Clients of this worker waiting for a backend slot were granted one. */
static void worker_dequeue_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    struct lb_worker *w = lb_container_of(a, struct lb_worker, dequeue);

    (void)loop;
    (void)revents;
    for (size_t i = 0; i < w->proxy->registry->n_pools; i++)
        lb_session_serve_granted(&w->pools[i]);
}

static void worker_resume_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    worker_leave_cap(lb_container_of(a, struct lb_worker, resume));
}

/* Back-off hooks (lb_listen.h): all of a worker's listeners pause and resume together. */
static void worker_backoff_pause(void *ctx)
{
    worker_pause_accept(ctx);
}

static void worker_backoff_resume(void *ctx)
{
    struct lb_worker *w = ctx;

    if (!w->at_cap)
        worker_resume_accept(w);
}

static const struct lb_accept_backoff_ops worker_backoff_ops = {
    .pause = worker_backoff_pause,
    .resume = worker_backoff_resume,
};

/* Gives a slot of the global cap back and wakes the workers paused at the cap. */
static void worker_release_slot(struct lb_worker *w)
{
    struct lb_proxy *proxy = w->proxy;

    atomic_fetch_sub(&proxy->active, 1);
    if (atomic_load(&proxy->n_at_cap)) {
        for (unsigned i = 0; i < proxy->n_workers; i++)
            if (&proxy->workers[i] != w)
                ev_async_send(proxy->workers[i].loop, &proxy->workers[i].resume);
        worker_leave_cap(w);
    }
}

/*
 * Takes one slot of the global cap, or pauses this worker at the cap.  The
 * count never passes the cap, not even for a moment (it is what
 * lbd_connections_active reads).  The pause is announced (n_at_cap) before
 * the cap is looked at again, and a finishing session frees its slot
 * before it looks for paused workers: one of the two always sees the
 * other, so no worker stays paused while there is room.
 */
static bool worker_reserve_slot(struct lb_worker *w)
{
    struct lb_proxy *proxy = w->proxy;
    uint64_t n = atomic_load(&proxy->active);

    while (n < proxy->max_conns)
        if (atomic_compare_exchange_weak(&proxy->active, &n, n + 1))
            return true;
    if (!w->at_cap) {
        uint64_t now_ms = (uint64_t)(ev_now(w->loop) * 1000.);
        uint64_t last = atomic_load(&proxy->cap_logged_ms);

        lb_counter_add(&w->cap_pauses, 1);
        /* Under steady load this pauses at every close: one line a second
         * for the whole process, whichever worker gets to say it. */
        if (now_ms - last >= 1000 &&
            atomic_compare_exchange_strong(&proxy->cap_logged_ms, &last, now_ms)) {
            uint64_t accepted, errors, pauses;

            lb_proxy_totals(proxy, &accepted, &errors, &pauses);
            LB_WARN(
                "proxy",
                "msg=\"connection cap reached, accepting paused\" max_conns=%llu "
                "pauses_since_last_line=%llu",
                (unsigned long long)proxy->max_conns,
                (unsigned long long)(pauses - atomic_exchange(&proxy->cap_pauses_logged, pauses)));
        }
        w->at_cap = true;
        atomic_fetch_add(&proxy->n_at_cap, 1);
    }
    worker_pause_accept(w);
    worker_leave_cap(w);
    return false;
}

/* Accepts up to `max` clients on listener l; returns how many. */
static int worker_accept(struct lb_wlistener *l, int max)
{
    struct lb_wpool *wp = l->wp;
    struct lb_worker *w = wp->worker;
    int n = 0;

    for (; n < max; n++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd;

        if (!worker_reserve_slot(w))
            return n;
        fd = lb_listen_accept(l->fd, &ss, &len);
        if (fd < 0)
            worker_release_slot(w);
        switch (lb_accept_backoff_check(&w->accept_backoff, fd)) {
        case LB_ACCEPT_GO:
            if (fd == -EAGAIN)
                return n;
            break;
        case LB_ACCEPT_PAUSED_NEW:
            LB_ERROR("proxy",
                     "msg=\"cannot accept, pausing 100ms (raise the open-files "
                     "limit or lower --max-conns)\" pool=%s error=\"%s\"",
                     wp->pool->name, strerror(-fd));
            /* fall through */
        case LB_ACCEPT_PAUSED:
            lb_counter_add(&w->accept_errors, 1);
            return n;
        case LB_ACCEPT_FAILED:
            lb_counter_add(&w->accept_errors, 1);
            LB_ERROR("proxy", "msg=\"accept failed\" pool=%s error=\"%s\"", wp->pool->name,
                     strerror(-fd));
            return n;
        }
        w->active++;
        lb_counter_add(&w->accepted, 1);
        lb_session_start(w, wp, fd, (struct sockaddr *)&ss, len);
    }
    return n;
}

static void listener_accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    worker_accept(lb_container_of(io, struct lb_wlistener, io), ACCEPTS_PER_WAKEUP);
}

/* Takes in what is queued on every listener of w, then closes them. */
static void worker_stop_listening(struct lb_worker *w)
{
    for (size_t i = 0; i < w->proxy->registry->n_pools; i++) {
        for (size_t k = 0; k < w->pools[i].n_ls; k++) {
            struct lb_wlistener *l = &w->pools[i].ls[k];

            if (l->fd < 0)
                continue;
            /* Clients already in the kernel's accept queue completed their
             * handshake: closing the listener now would reset them.  (At an
             * upgrade the next process holds the socket too: closing this
             * copy resets nothing, and what is taken here moves with the
             * other sessions.) */
            if (w->accepting && !w->accept_paused)
                while (worker_accept(l, ACCEPTS_AT_SHUTDOWN) == ACCEPTS_AT_SHUTDOWN)
                    ;
            ev_io_stop(w->loop, &l->io);
            close(l->fd);
            l->fd = -1;
        }
    }
    lb_accept_backoff_stop(&w->accept_backoff);
}

/* ----------------------------------------------------------- messages -- */

/* The control loop's word to a worker. */
enum worker_order { ORDER_ACCEPT, ORDER_SHUTDOWN, ORDER_CLOSE_ALL, ORDER_STOP, ORDER_OFFER };

struct order_msg {
    struct lb_msg msg;
    enum worker_order order;
};

/* A pool change for every worker: shared, freed by the last worker done with it. */
struct pool_change {
    _Atomic unsigned refs;
    size_t pool;
    bool rebuild;
    struct lb_pool_policy policy;   /* rebuild */
    const struct lb_algo_ops *algo; /* rebuild */
    struct lb_snap_entry *entries;  /* rebuild: backends referenced */
    size_t n_entries;
    struct {
        uint32_t index, weight;
    } * weights; /* in place */
    size_t n_weights;
};

struct change_msg {
    struct lb_msg msg;
    struct pool_change *change;
};

/* A backend named in a message (referenced). */
struct backend_msg {
    struct lb_msg msg;
    struct lb_backend *b;
    unsigned worker;
};

static void pool_change_release(struct pool_change *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < c->n_entries; i++)
        lb_backend_unref(c->entries[i].backend);
    free(c->entries);
    free(c->weights);
    free(c);
}

static void worker_apply_change(struct lb_msg *m, void *ctx)
{
    struct change_msg *cm = lb_container_of(m, struct change_msg, msg);
    struct pool_change *c = cm->change;
    struct lb_worker *w = ctx;
    struct lb_wpool *wp = &w->pools[c->pool];
    struct lb_pool_policy was = wp->policy;

    if (c->rebuild) {
        struct lb_snapshot *next = lb_snapshot_copy(c->entries, c->n_entries, c->algo, wp->snap);

        if (next) {
            lb_snapshot_free(wp->snap);
            wp->snap = next;
            wp->policy = c->policy;
        } else {
            LB_ERROR("proxy",
                     "msg=\"out of memory copying a pool, worker keeps the previous "
                     "one\" pool=%s worker=%u",
                     wp->pool->name, w->index);
        }
    } else {
        for (size_t i = 0; i < c->n_weights; i++)
            if (c->weights[i].index < wp->snap->n_entries)
                lb_snapshot_set_weight(wp->snap, c->weights[i].index, c->weights[i].weight);
        if (wp->snap->algo_stale)
            lb_snapshot_refresh_algo(wp->snap);
    }
    pool_change_release(c);
    free(cm);
    lb_session_policy_changed(wp, &was);
}

static void worker_report_idle(struct lb_worker *w);
static void worker_offer_pass(struct lb_worker *w);

static void worker_apply_order(struct lb_msg *m, void *ctx)
{
    struct order_msg *om = lb_container_of(m, struct order_msg, msg);
    struct lb_worker *w = ctx;
    enum worker_order order = om->order;

    free(om);
    switch (order) {
    case ORDER_ACCEPT:
        if (w->shutting_down)
            break;
        w->accepting = true;
        if (!w->at_cap)
            worker_resume_accept(w);
        break;
    case ORDER_SHUTDOWN:
        worker_stop_listening(w);
        atomic_fetch_add(&w->proxy->n_closed_listeners, 1);
        w->shutting_down = true;
        w->accepting = false;
        if (w->active == 0)
            worker_report_idle(w);
        break;
    case ORDER_CLOSE_ALL: {
        struct lb_list *first;

        w->closed_all = true;
        while ((first = lb_list_first(&w->live)))
            lb_session_abort(lb_session_of_link(first));
        break;
    }
    case ORDER_STOP:
        ev_break(w->loop, EVBREAK_ALL);
        break;
    case ORDER_OFFER:
        if (w->offering)
            break;
        w->offering = true;
        w->offering_since = ev_now(w->loop);
        worker_offer_pass(w);
        break;
    }
}

static void worker_close_oldest(struct lb_msg *m, void *ctx)
{
    struct backend_msg *bm = lb_container_of(m, struct backend_msg, msg);
    struct lb_worker *w = ctx;
    struct lb_session *s = lb_session_oldest_of(bm->b, w->index);

    if (s)
        lb_session_abort_drained(s);
    lb_backend_unref(bm->b);
    free(bm);
}

static int worker_order(struct lb_worker *w, enum worker_order order)
{
    struct order_msg *om = calloc(1, sizeof(*om));

    if (!om)
        return -ENOMEM;
    om->order = order;
    lb_mailbox_post(&w->inbox, &om->msg, worker_apply_order);
    return 0;
}

/* Posts `order` to every worker; out of memory, runs it on the spot for none. */
static void proxy_order_all(struct lb_proxy *proxy, enum worker_order order)
{
    for (unsigned i = 0; i < proxy->n_workers; i++)
        if (worker_order(&proxy->workers[i], order) < 0)
            LB_ERROR("proxy", "msg=\"out of memory telling a worker\" worker=%u", i);
}

/* -- worker -> control */

static void control_eject(struct lb_msg *m, void *ctx)
{
    struct backend_msg *bm = lb_container_of(m, struct backend_msg, msg);

    lb_health_eject(bm->b);
    lb_backend_unref(bm->b);
    free(bm);
}

static void control_zero(struct lb_msg *m, void *ctx)
{
    struct backend_msg *bm = lb_container_of(m, struct backend_msg, msg);
    struct lb_proxy *proxy = ctx;

    lb_registry_connection_closed(proxy->registry, bm->b);
    lb_backend_unref(bm->b);
    free(bm);
}

static void control_worker_idle(struct lb_msg *m, void *ctx)
{
    struct lb_proxy *proxy = ctx;

    free(lb_container_of(m, struct backend_msg, msg));
    if (++proxy->n_idle == proxy->n_workers && proxy->on_idle) {
        void (*cb)(struct lb_proxy *) = proxy->on_idle;

        proxy->on_idle = NULL;
        cb(proxy);
    }
}

static void post_backend(struct lb_mailbox *mb, struct lb_backend *b, unsigned worker,
                         lb_msg_fn run)
{
    struct backend_msg *bm = calloc(1, sizeof(*bm));

    if (!bm) {
        LB_ERROR("proxy", "msg=\"out of memory passing a message between threads\"");
        return;
    }
    if (b)
        lb_backend_ref(b);
    bm->b = b;
    bm->worker = worker;
    lb_mailbox_post(mb, &bm->msg, run);
}

void lb_worker_ask_eject(struct lb_worker *w, struct lb_backend *b)
{
    post_backend(&w->proxy->inbox, b, w->index, control_eject);
}

void lb_worker_tell_zero(struct lb_worker *w, struct lb_backend *b)
{
    post_backend(&w->proxy->inbox, b, w->index, control_zero);
}

static void worker_report_idle(struct lb_worker *w)
{
    if (w->idle_reported)
        return;
    w->idle_reported = true;
    post_backend(&w->proxy->inbox, NULL, w->index, control_worker_idle);
}

void lb_worker_session_finished(struct lb_worker *w)
{
    if (w->offering)
        lb_counter_add(&w->ended_offering, 1);
    w->active--;
    worker_release_slot(w);
    if (w->shutting_down && w->active == 0)
        worker_report_idle(w);
}

void lb_worker_session_adopted(struct lb_worker *w)
{
    w->active++;
    atomic_fetch_add(&w->proxy->active, 1);
    lb_counter_add(&w->adopted, 1);
}

/* ------------------------------------------------------------ upgrade -- */

static void control_offer(struct lb_msg *m, void *ctx)
{
    struct lb_offer *o = lb_container_of(m, struct lb_offer, msg);
    struct lb_proxy *proxy = ctx;

    proxy->offer_ops->offer(proxy->offer_ctx, o);
}

static void control_offers_done(struct lb_msg *m, void *ctx)
{
    struct lb_proxy *proxy = ctx;

    free(lb_container_of(m, struct backend_msg, msg));
    if (++proxy->n_offers_done == proxy->n_workers)
        proxy->offer_ops->done(proxy->offer_ctx);
}

/*
 * Offers every session of w that can move now; arms the tick while some
 * cannot yet, and tells the control loop once none is left to offer.
 */
static void worker_offer_pass(struct lb_worker *w)
{
    struct lb_proxy *proxy = w->proxy;
    struct lb_list *pos, *tmp;
    bool later = false;

    lb_list_for_each_safe(pos, tmp, &w->live)
    {
        struct lb_session *s = lb_session_of_link(pos);
        struct lb_session_move m;
        struct lb_offer *o;
        int rc = lb_session_park(s, proxy->offer_pending_max, &m);

        if (rc == -EAGAIN && ev_now(w->loop) - w->offering_since > OFFER_WAIT_MAX_S) {
            /* Still connecting, or its peer reads nothing: it finishes here. */
            lb_session_stay(s);
            lb_counter_add(&w->given_up, 1);
            continue;
        }
        if (rc == -EAGAIN)
            later = true;
        if (rc < 0)
            continue;
        o = calloc(1, sizeof(*o));
        if (o) {
            o->worker = w;
            o->session = s;
            o->id = ((uint64_t)w->index << 48) | ++w->offer_seq;
            o->fds[0] = m.client_fd;
            o->fds[1] = m.server_fd;
            lb_buf_init(&o->rec, 0);
        }
        if (!o ||
            proxy->offer_ops->encode(proxy->offer_ctx, (size_t)(lb_session_pool(s) - w->pools),
                                     o->id, &m, &o->rec) < 0) {
            /* Cannot be offered: it stays here. */
            if (o)
                lb_buf_free(&o->rec);
            free(o);
            lb_session_unpark(s);
            continue;
        }
        lb_mailbox_post(&proxy->inbox, &o->msg, control_offer);
    }
    if (later) {
        if (!ev_is_active(&w->offer_tick))
            ev_timer_start(w->loop, &w->offer_tick);
        return;
    }
    ev_timer_stop(w->loop, &w->offer_tick);
    post_backend(&proxy->inbox, NULL, w->index, control_offers_done);
}

static void worker_offer_tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    worker_offer_pass(lb_container_of(t, struct lb_worker, offer_tick));
}

static void worker_offer_answered(struct lb_msg *m, void *ctx)
{
    struct lb_offer *o = lb_container_of(m, struct lb_offer, msg);

    if (o->taken) {
        lb_counter_add(&o->worker->moved, 1);
        lb_session_moved(o->session);
    } else {
        lb_session_unpark(o->session);
        if (o->worker->closed_all) /* the grace period ended while it was offered */
            lb_session_abort(o->session);
    }
    lb_buf_free(&o->rec);
    free(o);
}

void lb_proxy_offer_sessions(struct lb_proxy *proxy, size_t pending_max,
                             const struct lb_offer_ops *ops, void *ctx)
{
    proxy->offer_pending_max = pending_max;
    proxy->offer_ops = ops;
    proxy->offer_ctx = ctx;
    proxy->n_offers_done = 0;
    proxy_order_all(proxy, ORDER_OFFER);
}

void lb_proxy_offer_answer(struct lb_proxy *proxy, struct lb_offer *o, bool taken)
{
    o->taken = taken;
    lb_buf_free(&o->rec); /* sent or not, the record is done with */
    lb_mailbox_post(&o->worker->inbox, &o->msg, worker_offer_answered);
}

void lb_proxy_offer_totals(const struct lb_proxy *proxy, uint64_t *moved, uint64_t *kept)
{
    *moved = *kept = 0;
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        uint64_t mv = lb_counter_get(&proxy->workers[i].moved);
        uint64_t ended = lb_counter_get(&proxy->workers[i].ended_offering);

        *moved += mv;
        *kept += ended - mv;
    }
}

/* A session of the previous process for one worker. */
struct adopt_msg {
    struct lb_msg msg;
    size_t pool;
    struct lb_backend *b;
    struct lb_session_move m; /* pending bytes point into `bytes` */
    char *bytes;
};

static void worker_adopt(struct lb_msg *msg, void *ctx)
{
    struct adopt_msg *am = lb_container_of(msg, struct adopt_msg, msg);
    struct lb_worker *w = ctx;

    if (lb_session_adopt(w, &w->pools[am->pool], am->b, &am->m) < 0)
        LB_ERROR("proxy", "msg=\"out of memory taking over a session, closed\" pool=%s",
                 w->pools[am->pool].pool->name);
    free(am->bytes);
    free(am);
}

int lb_proxy_adopt(struct lb_proxy *proxy, size_t pool, struct lb_backend *b,
                   const struct lb_session_move *m)
{
    struct adopt_msg *am = calloc(1, sizeof(*am));
    struct lb_worker *w;

    if (!am || !(am->bytes = malloc(m->up_len + m->down_len + 1))) {
        free(am);
        return -ENOMEM;
    }
    memcpy(am->bytes, m->up_pending ? m->up_pending : "", m->up_len);
    memcpy(am->bytes + m->up_len, m->down_pending ? m->down_pending : "", m->down_len);
    am->pool = pool;
    am->b = b;
    am->m = *m;
    am->m.up_pending = am->bytes;
    am->m.down_pending = am->bytes + m->up_len;
    am->m.backend_id = am->m.backend_addr = NULL; /* the caller's; not needed past here */
    w = &proxy->workers[proxy->next_adopter++ % proxy->n_workers];
    lb_mailbox_post(&w->inbox, &am->msg, worker_adopt);
    return 0;
}

uint64_t lb_proxy_offers_given_up(const struct lb_proxy *proxy)
{
    uint64_t n = 0;

    for (unsigned i = 0; i < proxy->n_workers; i++)
        n += lb_counter_get(&proxy->workers[i].given_up);
    return n;
}

uint64_t lb_proxy_adopted(const struct lb_proxy *proxy)
{
    uint64_t n = 0;

    for (unsigned i = 0; i < proxy->n_workers; i++)
        n += lb_counter_get(&proxy->workers[i].adopted);
    return n;
}

void lb_proxy_each_listener(const struct lb_proxy *proxy,
                            void (*fn)(void *ctx, size_t pool, int fd), void *ctx)
{
    for (unsigned i = 0; i < proxy->n_workers; i++)
        for (size_t p = 0; p < proxy->registry->n_pools; p++)
            for (size_t k = 0; k < proxy->workers[i].pools[p].n_ls; k++)
                if (proxy->workers[i].pools[p].ls[k].fd >= 0)
                    fn(ctx, p, proxy->workers[i].pools[p].ls[k].fd);
}

/* ------------------------------------------------------ control side -- */

void lb_proxy_pool_published(struct lb_proxy *proxy, struct lb_pool *pool, bool rebuilt)
{
    const struct lb_snapshot *s = pool->snap;
    struct pool_change *c = calloc(1, sizeof(*c));

    if (!c)
        goto oom;
    c->pool = (size_t)(pool - proxy->registry->pools);
    c->rebuild = rebuilt;
    if (rebuilt) {
        c->policy = pool->policy;
        c->algo = s->algo;
        c->entries = malloc((s->n_entries ? s->n_entries : 1) * sizeof(*c->entries));
        if (!c->entries)
            goto oom;
        memcpy(c->entries, s->entries, s->n_entries * sizeof(*c->entries));
        for (size_t i = 0; i < s->n_entries; i++)
            lb_backend_ref(c->entries[i].backend);
        c->n_entries = s->n_entries;
    } else {
        c->weights = malloc((pool->n_changed ? pool->n_changed : 1) * sizeof(*c->weights));
        if (!c->weights)
            goto oom;
        /* An entry may have changed twice: each pair carries the latest weight. */
        for (size_t i = 0; i < pool->n_changed; i++) {
            c->weights[i].index = pool->changed[i];
            c->weights[i].weight = s->entries[pool->changed[i]].weight;
        }
        c->n_weights = pool->n_changed;
    }
    atomic_init(&c->refs, proxy->n_workers);
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        struct change_msg *cm = calloc(1, sizeof(*cm));

        if (!cm) {
            /* This worker misses the change: its copy stays as it was. */
            LB_ERROR("proxy", "msg=\"out of memory posting a pool change\" pool=%s worker=%u",
                     pool->name, i);
            pool_change_release(c);
            continue;
        }
        cm->change = c;
        lb_mailbox_post(&proxy->workers[i].inbox, &cm->msg, worker_apply_change);
    }
    return;
oom:
    if (c) {
        free(c->entries);
        free(c->weights);
        free(c);
    }
    LB_ERROR("proxy", "msg=\"out of memory posting a pool change to the workers\" pool=%s",
             pool->name);
}

/* ------------------------------------------------- session queries -- */

struct lb_session_query {
    /* set before posting, then read-only: read by the workers */
    size_t pool;
    char backend[LB_NAME_MAX];
    bool kill;
    size_t max;
    /* the control loop's */
    unsigned pending; /* workers that have not answered yet */
    lb_session_query_done done;
    void *ctx;
    struct lb_session_view *views;
    size_t n;
    uint64_t total;
};

/* One worker's part: the question on the way there, the answer on the way back. */
struct query_msg {
    struct lb_msg msg;
    struct lb_session_query *q;
    struct lb_session_view *views; /* malloc'd, at most q->max */
    size_t n, cap;
    uint64_t total;
};

static bool query_matches(const struct lb_session_query *q, struct lb_worker *w,
                          const struct lb_session *s)
{
    const struct lb_backend *b;

    if ((size_t)(lb_session_pool(s) - w->pools) != q->pool)
        return false;
    if (!q->backend[0])
        return true;
    b = lb_session_backend(s);
    return b && strcmp(b->id, q->backend) == 0;
}

/* Copies s into the part, if there is room (bounded by q->max). */
static void query_add_view(struct query_msg *qm, const struct lb_session *s)
{
    size_t max = qm->q->max;

    qm->total++;
    if (qm->n >= max)
        return;
    if (qm->n == qm->cap) {
        size_t cap = qm->cap ? qm->cap * 2 : 16;
        struct lb_session_view *v;

        if (cap > max)
            cap = max;
        v = realloc(qm->views, cap * sizeof(*v));
        if (!v)
            return; /* counted, not listed */
        qm->views = v;
        qm->cap = cap;
    }
    lb_session_view(s, &qm->views[qm->n++]);
}

static void control_query_part(struct lb_msg *m, void *ctx);

static void worker_session_query(struct lb_msg *m, void *ctx)
{
    struct query_msg *qm = lb_container_of(m, struct query_msg, msg);
    const struct lb_session_query *q = qm->q;
    struct lb_worker *w = ctx;
    struct lb_list *pos, *prev;

    /* live is newest first: walk it from the oldest */
    for (pos = lb_list_last(&w->live); pos; pos = prev) {
        struct lb_session *s = lb_session_of_link(pos);

        prev = lb_list_prev(&w->live, pos);
        if (!query_matches(q, w, s))
            continue;
        if (q->kill) {
            lb_session_kill(s);
            qm->total++;
        } else {
            lb_session_settle(s); /* a silent connect that is done shows as proxying */
            query_add_view(qm, s);
        }
    }
    if (!q->kill)
        lb_list_for_each(pos, &w->parked)
        {
            struct lb_session *s = lb_session_of_link(pos);

            if (query_matches(q, w, s))
                query_add_view(qm, s);
        }
    lb_mailbox_post(&w->proxy->inbox, &qm->msg, control_query_part);
}

static int view_older_first(const void *a, const void *b)
{
    const struct lb_session_view *x = a, *y = b;

    return x->age_s > y->age_s ? -1 : x->age_s < y->age_s ? 1 : 0;
}

static void query_free(struct lb_session_query *q)
{
    free(q->views);
    free(q);
}

static void control_query_part(struct lb_msg *m, void *ctx)
{
    struct query_msg *qm = lb_container_of(m, struct query_msg, msg);
    struct lb_session_query *q = qm->q;

    q->total += qm->total;
    if (qm->n && q->done) {
        struct lb_session_view *v = realloc(q->views, (q->n + qm->n) * sizeof(*v));

        if (v) {
            memcpy(v + q->n, qm->views, qm->n * sizeof(*v));
            q->views = v;
            q->n += qm->n;
        }
    }
    free(qm->views);
    free(qm);
    if (--q->pending)
        return;
    if (q->done) {
        if (q->n)
            qsort(q->views, q->n, sizeof(*q->views), view_older_first);
        q->done(q->ctx, q->views, q->n < q->max ? q->n : q->max, q->total);
    }
    query_free(q);
}

int lb_proxy_session_query(struct lb_proxy *proxy, size_t pool, const char *backend, bool kill,
                           size_t max, lb_session_query_done done, void *ctx,
                           struct lb_session_query **out)
{
    struct lb_session_query *q;
    struct query_msg **msgs;
    unsigned n = 0;

    for (unsigned i = 0; i < proxy->n_workers; i++)
        if (proxy->workers[i].loop && !proxy->workers[i].abandoned)
            n++;
    if (n == 0)
        return -EAGAIN;
    q = calloc(1, sizeof(*q));
    msgs = calloc(n, sizeof(*msgs));
    if (!q || !msgs)
        goto out_of_memory;
    for (unsigned i = 0; i < n; i++)
        if (!(msgs[i] = calloc(1, sizeof(**msgs))))
            goto out_of_memory;
    q->pool = pool;
    snprintf(q->backend, sizeof(q->backend), "%s", backend ? backend : "");
    q->kill = kill;
    q->max = max ? max : 1;
    q->pending = n;
    q->done = done;
    q->ctx = ctx;
    /* every message is allocated before the first is posted: all or none */
    for (unsigned i = 0, k = 0; i < proxy->n_workers; i++) {
        struct lb_worker *w = &proxy->workers[i];

        if (!w->loop || w->abandoned)
            continue;
        msgs[k]->q = q;
        lb_mailbox_post(&w->inbox, &msgs[k++]->msg, worker_session_query);
    }
    free(msgs);
    *out = q;
    return 0;

out_of_memory:
    for (unsigned i = 0; msgs && i < n; i++)
        free(msgs[i]);
    free(msgs);
    free(q);
    return -ENOMEM;
}

void lb_proxy_session_query_cancel(struct lb_session_query *q)
{
    q->done = NULL;
    q->ctx = NULL;
}

void lb_proxy_close_oldest(struct lb_proxy *proxy, struct lb_backend *b)
{
    unsigned best = 0;
    uint64_t most = 0;

    for (unsigned i = 0; i < b->n_ws && i < proxy->n_workers; i++) {
        uint64_t n = lb_counter_get(&b->ws[i].sessions);

        if (n > most) {
            most = n;
            best = i;
        }
    }
    if (most)
        post_backend(&proxy->workers[best].inbox, b, best, worker_close_oldest);
}

uint64_t lb_proxy_active(const struct lb_proxy *proxy)
{
    return atomic_load(&proxy->active);
}

void lb_proxy_totals(const struct lb_proxy *proxy, uint64_t *accepted, uint64_t *accept_errors,
                     uint64_t *cap_pauses)
{
    *accepted = *accept_errors = *cap_pauses = 0;
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        *accepted += lb_counter_get(&proxy->workers[i].accepted);
        *accept_errors += lb_counter_get(&proxy->workers[i].accept_errors);
        *cap_pauses += lb_counter_get(&proxy->workers[i].cap_pauses);
    }
}

void lb_proxy_pool_counters(const struct lb_proxy *proxy, size_t i, struct lb_pool_counters *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned k = 0; proxy && k < proxy->n_workers; k++) {
        const struct lb_wpool *wp = &proxy->workers[k].pools[i];

        out->active += lb_counter_get(&wp->active);
        out->total += lb_counter_get(&wp->total);
        out->no_backend += lb_counter_get(&wp->no_backend);
        out->retries += lb_counter_get(&wp->retries);
        out->bad_proxy_headers += lb_counter_get(&wp->bad_proxy_headers);
        out->queued += lb_counter_get(&wp->queued);
        out->queue_timeouts += lb_counter_get(&wp->queue_timeouts);
    }
    if (proxy && proxy->queues)
        out->queue_length = lb_conn_queue_length(&proxy->queues[i]);
}

/* ----------------------------------------------------------- lifetime -- */

/* Adds fd (bound and listening) to wp's listeners. */
static int listener_add(struct lb_wpool *wp, int fd)
{
    struct lb_wlistener *ls = realloc(wp->ls, (wp->n_ls + 1) * sizeof(*ls));

    if (!ls)
        return -ENOMEM;
    wp->ls = ls;
    /* The watchers moved with the array: set them again (none is started yet). */
    for (size_t k = 0; k < wp->n_ls; k++)
        ev_io_init(&ls[k].io, listener_accept_cb, ls[k].fd, EV_READ);
    ls[wp->n_ls] = (struct lb_wlistener){.fd = fd, .wp = wp};
    ev_io_init(&ls[wp->n_ls].io, listener_accept_cb, fd, EV_READ);
    wp->n_ls++;
    return 0;
}

/*
 * Opens wp's listener; `first` for the pool's first (the others join its
 * port).  `bind_only` while taking over from a running lbd: a socket of this
 * process alone listens once it accepts, so that no client waits in its
 * queue meanwhile (the previous process's sockets, which both hold, take
 * them all until then).
 */
static int listener_open(struct lb_wpool *wp, const char *text, bool first, bool bind_only,
                         struct lb_listen_socket *sock, char **err)
{
    char what[LB_NAME_MAX + 320];
    const struct lb_listen_options o = {
        .what = what,
        .backlog = LISTEN_BACKLOG,
        .reuse_port = true,
        .exclusive = first,
        /* Accepted sockets inherit TCP_NODELAY from the listener: one system
         * call per listener instead of one per client. */
        .nodelay = true,
        .bind_only = bind_only,
    };
    int rc;

    snprintf(what, sizeof(what), "--pool %s=%s", wp->pool->name, wp->pool->listen);
    rc = lb_listen_open(text, &o, sock, err);
    if (rc < 0)
        return rc;
    if (listener_add(wp, sock->fd) < 0) {
        lb_listen_close(sock);
        return -ENOMEM;
    }
    wp->ls[wp->n_ls - 1].bound_only = bind_only && !sock->inherited;
    return 0;
}

/* Frees w once its thread is gone and its sessions are ended. */
static void worker_free(struct lb_worker *w)
{
    if (!w->loop)
        return;
    for (size_t i = 0; w->pools && i < w->proxy->registry->n_pools; i++) {
        struct lb_wpool *wp = &w->pools[i];

        for (size_t k = 0; k < wp->n_ls; k++) {
            if (wp->ls[k].fd < 0)
                continue;
            ev_io_stop(w->loop, &wp->ls[k].io);
            close(wp->ls[k].fd);
        }
        free(wp->ls);
        lb_snapshot_free(wp->snap);
    }
    lb_accept_backoff_stop(&w->accept_backoff);
    ev_timer_stop(w->loop, &w->offer_tick);
    lb_reaper_destroy(&w->reaper);
    lb_pipe_pool_destroy(&w->pipes);
    lb_mailbox_destroy(&w->inbox);
    ev_async_stop(w->loop, &w->resume);
    ev_async_stop(w->loop, &w->dequeue);
    free(w->pools);
    ev_loop_destroy(w->loop);
    w->loop = NULL;
}

/* The pools' queues, empty once every session ended. */
static void proxy_free_queues(struct lb_proxy *proxy)
{
    for (size_t p = 0; proxy->queues && p < proxy->registry->n_pools; p++)
        lb_conn_queue_destroy(&proxy->queues[p]);
    free(proxy->queues);
    proxy->queues = NULL;
}

static int worker_init(struct lb_proxy *proxy, struct lb_worker *w, unsigned index)
{
    struct lb_registry *r = proxy->registry;

    w->index = index;
    w->proxy = proxy;
    w->accept_paused = true;
    lb_list_init(&w->live);
    lb_list_init(&w->parked);
    lb_pipe_pool_init(&w->pipes, LB_PIPES_PER_WORKER);
    w->pools = calloc(r->n_pools ? r->n_pools : 1, sizeof(*w->pools));
    w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOSIGMASK);
    if (!w->pools || !w->loop) {
        if (w->loop)
            ev_loop_destroy(w->loop);
        w->loop = NULL;
        free(w->pools);
        w->pools = NULL;
        return -ENOMEM;
    }
    lb_mailbox_init(&w->inbox, w->loop, w);
    ev_async_init(&w->resume, worker_resume_cb);
    ev_async_start(w->loop, &w->resume);
    ev_async_init(&w->dequeue, worker_dequeue_cb);
    ev_async_start(w->loop, &w->dequeue);
    lb_reaper_init(&w->reaper, w->loop);
    ev_timer_init(&w->offer_tick, worker_offer_tick_cb, OFFER_AGAIN_S, OFFER_AGAIN_S);
    lb_accept_backoff_init(&w->accept_backoff, w->loop, EMFILE_PAUSE_S, &worker_backoff_ops, w);
    for (size_t i = 0; i < r->n_pools; i++) {
        struct lb_wpool *wp = &w->pools[i];
        const struct lb_snapshot *s = r->pools[i].snap;

        wp->pool = &r->pools[i];
        wp->worker = w;
        wp->queue = &proxy->queues[i];
        wp->policy = r->pools[i].policy;
        wp->snap = lb_snapshot_copy(s->entries, s->n_entries, s->algo, NULL);
        if (!wp->snap)
            return -ENOMEM;
    }
    return 0;
}

int lb_proxy_init(struct lb_proxy *proxy, struct ev_loop *loop, struct lb_registry *registry,
                  uint64_t max_conns, unsigned n_workers, char **err)
{
    int rc = 0;

    memset(proxy, 0, sizeof(*proxy));
    proxy->loop = loop;
    proxy->registry = registry;
    proxy->max_conns = max_conns;
    proxy->n_workers = n_workers ? n_workers : 1;
    lb_mailbox_init(&proxy->inbox, loop, proxy);
    proxy->queues = calloc(registry->n_pools ? registry->n_pools : 1, sizeof(*proxy->queues));
    proxy->workers = calloc(proxy->n_workers, sizeof(*proxy->workers));
    if (!proxy->workers || !proxy->queues) {
        free(proxy->queues);
        proxy->queues = NULL;
        rc = -ENOMEM;
        goto fail;
    }
    for (size_t p = 0; p < registry->n_pools; p++) {
        if (lb_conn_queue_init(&proxy->queues[p]) < 0) {
            for (size_t k = 0; k < p; k++)
                lb_conn_queue_destroy(&proxy->queues[k]);
            free(proxy->queues);
            proxy->queues = NULL;
            rc = -ENOMEM;
            goto fail;
        }
    }
    for (unsigned i = 0; i < proxy->n_workers && rc == 0; i++)
        rc = worker_init(proxy, &proxy->workers[i], i);
    if (rc < 0)
        goto fail;
    for (size_t p = 0; p < registry->n_pools; p++) {
        char bound[LB_ADDR_MAX + 8];
        const char *addr = registry->pools[p].listen;
        struct lb_listen_socket first = {.fd = -1};
        int fd;

        for (unsigned i = 0; i < proxy->n_workers; i++) {
            struct lb_wpool *wp = &proxy->workers[i].pools[p];
            struct lb_listen_socket sock;

            /* More workers than the previous process had sockets: see listener_open(). */
            rc = listener_open(wp, addr, i == 0, i > 0 && first.inherited, &sock, err);
            if (rc < 0)
                goto fail;
            /* Port 0: the other workers join the port the kernel picked. */
            if (i == 0) {
                addr = lb_addr_format((struct sockaddr *)&sock.addr, bound, sizeof(bound));
                first = sock;
            }
        }
        /* The previous process had more workers: its other sockets keep
         * their queues, so they are served too, spread over the workers. */
        for (unsigned i = 0;
             (fd = lb_listen_take_inherited((struct sockaddr *)&first.addr, first.addr_len)) >= 0;
             i++) {
            if (listener_add(&proxy->workers[i % proxy->n_workers].pools[p], fd) < 0) {
                close(fd);
                rc = -ENOMEM;
                goto fail;
            }
        }
        LB_INFO("proxy", "msg=\"listening\" pool=%s addr=%s workers=%u", registry->pools[p].name,
                registry->pools[p].listen, proxy->n_workers);
    }
    registry->proxy = proxy;
    proxy->listening = true;
    return 0;
fail:
    if (rc == -ENOMEM)
        lb_error_set(err, 0, "out of memory");
    for (unsigned i = 0; proxy->workers && i < proxy->n_workers; i++)
        worker_free(&proxy->workers[i]);
    free(proxy->workers);
    proxy->workers = NULL;
    proxy_free_queues(proxy);
    lb_mailbox_destroy(&proxy->inbox);
    proxy->loop = NULL;
    return rc;
}

static void *worker_main(void *arg)
{
    struct lb_worker *w = arg;
    sigset_t all;

    /* Signals are the control loop's. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    ev_run(w->loop, 0);
    return NULL;
}

int lb_proxy_start(struct lb_proxy *proxy, char **err)
{
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        struct lb_worker *w = &proxy->workers[i];
        int rc = pthread_create(&w->thread, NULL, worker_main, w);

        if (rc)
            return lb_error_set(err, -rc, "cannot start worker thread %u: %s", i, strerror(rc));
        w->running = true;
    }
    return 0;
}

/* The sockets bound while taking over listen now (before any worker accepts). */
static void proxy_listen_bound(struct lb_proxy *proxy)
{
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        for (size_t p = 0; p < proxy->registry->n_pools; p++) {
            struct lb_wpool *wp = &proxy->workers[i].pools[p];

            for (size_t k = 0; k < wp->n_ls; k++) {
                struct lb_wlistener *l = &wp->ls[k];
                int rc;

                if (!l->bound_only || l->fd < 0)
                    continue;
                l->bound_only = false;
                rc = lb_listen_start(l->fd, LISTEN_BACKLOG);
                if (rc == 0)
                    continue;
                /* The pool's other sockets take its share of the clients. */
                LB_WARN("proxy",
                        "msg=\"cannot listen on a worker's socket; the pool's other sockets "
                        "take its clients\" pool=%s worker=%u error=\"%s\"",
                        wp->pool->name, i, strerror(-rc));
                close(l->fd);
                l->fd = -1;
            }
        }
    }
}

void lb_proxy_enable_accept(struct lb_proxy *proxy)
{
    if (proxy->accept_enabled)
        return;
    proxy->accept_enabled = true;
    proxy_listen_bound(proxy);
    proxy_order_all(proxy, ORDER_ACCEPT);
}

void lb_proxy_shutdown(struct lb_proxy *proxy, void (*on_idle)(struct lb_proxy *proxy))
{
    const struct timespec tick = {.tv_sec = 0, .tv_nsec = 1000 * 1000};
    unsigned running = 0;

    proxy->shutting_down = true;
    proxy->listening = false;
    proxy->on_idle = on_idle;
    proxy_order_all(proxy, ORDER_SHUTDOWN);
    for (unsigned i = 0; i < proxy->n_workers; i++)
        running += proxy->workers[i].running && !proxy->workers[i].abandoned;
    /* The control loop (and with it /readyz) waits for the workers: they
     * take in their accept queues and close their listeners without it. */
    for (int i = 0; i < 1000 && atomic_load(&proxy->n_closed_listeners) < running; i++)
        nanosleep(&tick, NULL);
}

void lb_proxy_close_all(struct lb_proxy *proxy)
{
    proxy_order_all(proxy, ORDER_CLOSE_ALL);
}

void lb_proxy_destroy(struct lb_proxy *proxy)
{
    bool abandoned;

    if (!proxy->loop)
        return;
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        struct lb_worker *w = &proxy->workers[i];

        if (!w->running)
            continue;
        if (worker_order(w, ORDER_STOP) < 0) {
            /* Out of memory even for this: a wake-up with nothing queued
             * cannot stop the loop, so the thread is left to exit with us. */
            pthread_detach(w->thread);
            w->running = false;
            w->abandoned = true;
            continue;
        }
        pthread_join(w->thread, NULL);
        w->running = false;
    }
    /* The threads are gone: their loops are this thread's.  What the workers
     * posted runs first (an upgrade's offers, answered at once), then what
     * that posted back to them, so every session is found where it is. */
    lb_mailbox_run(&proxy->inbox);
    for (unsigned i = 0; i < proxy->n_workers; i++)
        if (proxy->workers[i].loop && !proxy->workers[i].abandoned)
            lb_mailbox_run(&proxy->workers[i].inbox);
    /* Every session ends before any loop goes (an ending session may wake
     * another worker). */
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        struct lb_list *first;

        while (proxy->workers[i].loop && !proxy->workers[i].abandoned &&
               (first = lb_list_first(&proxy->workers[i].live)))
            lb_session_abort(lb_session_of_link(first));
        /* Offered and not answered: this process's copies close, the
         * connections stay with the next process if it took them. */
        while (proxy->workers[i].loop && !proxy->workers[i].abandoned &&
               (first = lb_list_first(&proxy->workers[i].parked)))
            lb_session_moved(lb_session_of_link(first));
    }
    abandoned = false;
    for (unsigned i = 0; i < proxy->n_workers; i++) {
        if (!proxy->workers[i].abandoned)
            worker_free(&proxy->workers[i]);
        abandoned |= proxy->workers[i].abandoned;
    }
    /* A worker left running may still queue: its pool queues stay with it. */
    if (!abandoned)
        proxy_free_queues(proxy);
    lb_mailbox_destroy(&proxy->inbox);
    free(proxy->workers);
    proxy->workers = NULL;
    proxy->registry->proxy = NULL;
    proxy->loop = NULL;
}
