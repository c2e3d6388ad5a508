/*
 * The admin tests' fixture (see admin_fixture.h): the real registry, a
 * loop thread, a store that completes on the loop, counted connections.
 * It looks inside the admin server only to tell a test that a connection
 * waits for its socket (admin_conn.h), which no client can see for sure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "admin_conn.h"
#include "admin_fixture.h"
#include "admin_server_int.h"
#include "admin_service.h"
#include "h2_client.h"
#include "lb_buf.h"
#include "lb_grpc_frame.h"
#include "lb_log.h"
#include "pool.h"

#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STEP_S    0.02
#define MAX_CONNS 64

struct fx fx;

struct store_write {
    ev_timer timer;
    bool has_ov;
    struct lb_override ov;
    char pool[LB_NAME_MAX];
    char id[LB_NAME_MAX];
    lb_store_done_cb done;
    void *ud;
    struct store_write *prev, *next;
};

struct conn {
    struct lb_backend *backend;
    bool stuck;
};

/* Loop-side state; touched only on the loop thread once it runs. */
static struct {
    pthread_t thread;
    ev_async wake;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    void (*job)(void *arg);
    void *job_arg;
    bool job_done;
    bool stop;
    bool running; /* the loop thread runs */

    struct lb_update_sink sink;
    enum fx_store store_mode;
    double store_delay_ms;
    struct store_write *writes;
    struct conn conns[MAX_CONNS];
    size_t n_conns;
    ev_timer step;
    ev_timer ticker;
} st;

/* ---- the loop thread ---- */

static void wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    pthread_mutex_lock(&st.lock);
    if (st.job) {
        st.job(st.job_arg);
        st.job = NULL;
        st.job_done = true;
        pthread_cond_broadcast(&st.cond);
    }
    if (st.stop)
        ev_break(loop, EVBREAK_ALL);
    pthread_mutex_unlock(&st.lock);
}

static void *loop_thread(void *arg)
{
    ev_run(fx.loop, 0);
    return NULL;
}

void fx_run(void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&st.lock);
    st.job = fn;
    st.job_arg = arg;
    st.job_done = false;
    ev_async_send(fx.loop, &st.wake);
    while (!st.job_done)
        pthread_cond_wait(&st.cond, &st.lock);
    pthread_mutex_unlock(&st.lock);
}

/* ---- feeding the registry as the watcher does ---- */

static void feed(const struct lb_update *u)
{
    st.sink.apply(st.sink.ctx, u);
    st.sink.commit(st.sink.ctx);
}

static void put_backend(const char *pool, const char *id, const char *addr, int weight)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = pool, .id = id};

    snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "%s", addr);
    snprintf(u.u.backend.zone, sizeof(u.u.backend.zone), "a");
    u.u.backend.weight = weight;
    feed(&u);
}

struct backend_ref {
    const char *pool, *id, *addr;
};

static struct {
    ev_timer timer;
    char pool[LB_NAME_MAX], id[LB_NAME_MAX];
    double ms;
} later;

static void delete_later_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct lb_update u = {.kind = LB_UPDATE_BACKEND_DELETE, .pool = later.pool, .id = later.id};

    feed(&u);
}

static void delete_later_job(void *arg)
{
    ev_timer_init(&later.timer, delete_later_cb, later.ms / 1000.0, 0.);
    ev_timer_start(fx.loop, &later.timer);
}

void fx_delete_backend_later(const char *pool, const char *id, double ms)
{
    snprintf(later.pool, sizeof(later.pool), "%s", pool);
    snprintf(later.id, sizeof(later.id), "%s", id);
    later.ms = ms;
    fx_run(delete_later_job, NULL);
}

static void put_backend_job(void *arg)
{
    const struct backend_ref *b = arg;

    put_backend(b->pool, b->id, b->addr, 100);
}

void fx_put_backend(const char *pool, const char *id, const char *addr)
{
    struct backend_ref b = {pool, id, addr};

    fx_run(put_backend_job, &b);
}

static void put_policy(const char *pool, enum lb_algorithm algorithm)
{
    struct lb_update u = {.kind = LB_UPDATE_POLICY_PUT, .pool = pool};

    lb_pool_policy_defaults(&u.u.policy);
    u.u.policy.algorithm = algorithm;
    u.u.policy.health.type = LB_CHECK_NONE;
    feed(&u);
}

static struct lb_backend *find_backend(const char *pool, const char *id)
{
    struct lb_pool *p = lb_registry_find_pool(&fx.registry, pool);
    struct lb_member *m = p ? lb_pool_find(p, id) : NULL;

    return m ? m->backend : NULL;
}

/* ---- connections, counted as proxy sessions count them ---- */

static void conn_open(const char *pool, const char *id, bool stuck)
{
    struct lb_backend *b = find_backend(pool, id);

    assert_non_null(b);
    if (!b)
        return; /* (cmocka's assert does not return; the compiler does not know) */
    assert_true(st.n_conns < MAX_CONNS);
    lb_backend_ref(b);
    b->active++;
    b->ws[0].total++;
    st.conns[st.n_conns++] = (struct conn){b, stuck};
}

static void conn_close(size_t i)
{
    struct lb_backend *b = st.conns[i].backend;

    st.conns[i] = st.conns[--st.n_conns];
    b->active--;
    lb_registry_connection_closed(&fx.registry, b);
    lb_backend_unref(b);
}

/* Draining backends lose one connection per step, unless stuck. */
static void step_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    for (size_t i = 0; i < st.n_conns; i++) {
        if (!st.conns[i].stuck && st.conns[i].backend->drain) {
            conn_close(i);
            return;
        }
    }
}

static void ticker_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    static bool flip;

    flip = !flip;
    put_backend("web", "b1", "10.0.0.1:8080", flip ? 99 : 100);
}

/* ---- the store: etcd's write path, completing on the loop ---- */

static void store_unlink(struct store_write *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        st.writes = w->next;
    if (w->next)
        w->next->prev = w->prev;
}

static void store_write_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct store_write *w = t->data;

    store_unlink(w);
    if (st.store_mode == FX_STORE_FAIL) {
        w->done(w->ud, -EIO, "etcd: connection refused");
    } else {
        struct lb_update u = {.pool = w->pool, .id = w->id};

        w->done(w->ud, 0, "");
        /* The watch brings the written value back a moment later. */
        u.kind = w->has_ov ? LB_UPDATE_OVERRIDE_PUT : LB_UPDATE_OVERRIDE_DELETE;
        if (w->has_ov)
            u.u.override = w->ov;
        feed(&u);
    }
    free(w);
}

static int store_put_override(void *ctx, const char *pool, const char *id,
                              const struct lb_override *ov, lb_store_done_cb done, void *ud)
{
    struct store_write *w = calloc(1, sizeof(*w));

    if (!w)
        return -ENOMEM;
    w->has_ov = ov != NULL;
    if (ov)
        w->ov = *ov;
    snprintf(w->pool, sizeof(w->pool), "%s", pool);
    snprintf(w->id, sizeof(w->id), "%s", id);
    w->done = done;
    w->ud = ud;
    w->next = st.writes;
    if (st.writes)
        st.writes->prev = w;
    st.writes = w;
    ev_timer_init(&w->timer, store_write_cb, st.store_delay_ms / 1000.0, 0.);
    w->timer.data = w;
    ev_timer_start(fx.loop, &w->timer);
    return 0;
}

static void store_apply_mode(void)
{
    struct lb_store store = {.put_override = NULL, .ctx = NULL};

    if (st.store_mode != FX_STORE_NONE)
        store.put_override = store_put_override;
    lb_registry_set_store(&fx.registry, &store);
}

/* ---- set-up ---- */

static void build_registry(void)
{
    static const char *const names[] = {"web", "db"};
    static const char *const listens[] = {"0.0.0.0:8080", "0.0.0.0:5433"};

    assert_int_equal(lb_registry_init(&fx.registry, fx.loop, 2, names, listens), 0);
    st.sink = lb_registry_sink(&fx.registry);
    put_policy("web", LB_ALGO_WRR);
    put_policy("db", LB_ALGO_LEASTCONN);
    put_backend("db", "d1", "10.0.1.1:5432", 100);
    put_backend("web", "b1", "10.0.0.1:8080", 100);
    put_backend("web", "b2", "10.0.0.2:8080", 100);
    put_backend("web", "b3", "[fd00::3]:8080", 50);
    for (int i = 0; i < 3; i++)
        conn_open("web", "b2", false);
    for (int i = 0; i < 2; i++)
        conn_open("web", "b3", true);
    st.store_mode = FX_STORE_OK;
    st.store_delay_ms = 5;
    store_apply_mode();
}

void fx_start(const struct lb_admin_options *opts, const struct lb_admin_limits *limits)
{
    char *err = NULL;

    lb_log_set_level(getenv("TEST_LOG_DEBUG") ? LB_LOG_DEBUG : LB_LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    memset(&fx, 0, sizeof(fx));
    memset(&st, 0, sizeof(st));
    fx.loop = ev_loop_new(EVBACKEND_EPOLL);
    assert_non_null(fx.loop);
    build_registry();
    if (fx_server_new(opts, limits, &fx.server, &err) != 0)
        fail_msg("admin server: %s", err ? err : "?");
    snprintf(fx.addr, sizeof(fx.addr), "127.0.0.1:%d", lb_admin_server_port(fx.server));
    ev_timer_init(&st.step, step_cb, STEP_S, STEP_S);
    ev_timer_start(fx.loop, &st.step);
    ev_init(&st.ticker, ticker_cb);
    pthread_mutex_init(&st.lock, NULL);
    pthread_cond_init(&st.cond, NULL);
    ev_async_init(&st.wake, wake_cb);
    ev_async_start(fx.loop, &st.wake);
    assert_int_equal(pthread_create(&st.thread, NULL, loop_thread, NULL), 0);
    st.running = true;
}

void fx_stop(void)
{
    pthread_mutex_lock(&st.lock);
    st.stop = true;
    pthread_mutex_unlock(&st.lock);
    ev_async_send(fx.loop, &st.wake);
    pthread_join(st.thread, NULL);

    /* lbd's order: the admin server, then the store (cancelling writes), then the registry. */
    lb_admin_server_free(fx.server);
    while (st.writes) {
        struct store_write *w = st.writes;

        store_unlink(w);
        ev_timer_stop(fx.loop, &w->timer);
        w->done(w->ud, -ECANCELED, "store closed");
        free(w);
    }
    while (st.n_conns)
        conn_close(st.n_conns - 1);
    ev_timer_stop(fx.loop, &st.step);
    ev_timer_stop(fx.loop, &st.ticker);
    lb_registry_destroy(&fx.registry);
    ev_async_stop(fx.loop, &st.wake);
    ev_loop_destroy(fx.loop);
    pthread_mutex_destroy(&st.lock);
    pthread_cond_destroy(&st.cond);
}

/* ---- helpers for tests ---- */

struct server_job {
    const struct lb_admin_options *opts;
    const struct lb_admin_limits *limits;
    struct lb_admin_server **out;
    char **err;
    int rc;
};

static void job_server_new(void *arg)
{
    struct server_job *j = arg;
    struct lb_admin_options o = *j->opts;

    o.listen = "127.0.0.1:0";
    o.methods = lb_admin_service_methods(&o.n_methods);
    o.context = &fx.registry;
    j->rc = lb_admin_server_new(fx.loop, &o, j->out, j->err);
    if (j->rc == 0 && j->limits)
        lb_admin_server_set_limits(*j->out, j->limits);
}

int fx_server_new(const struct lb_admin_options *opts, const struct lb_admin_limits *limits,
                  struct lb_admin_server **out, char **err)
{
    struct server_job j = {opts, limits, out, err, 0};

    *err = NULL;
    if (!st.running) /* from fx_start(): the loop does not run yet */
        job_server_new(&j);
    else
        fx_run(job_server_new, &j);
    return j.rc;
}

static void job_server_free(void *arg)
{
    lb_admin_server_free(arg);
}

void fx_server_free(struct lb_admin_server *s)
{
    fx_run(job_server_free, s);
}

struct store_cfg {
    enum fx_store mode;
    double delay_ms;
};

static void job_set_store(void *arg)
{
    struct store_cfg *c = arg;

    st.store_mode = c->mode;
    st.store_delay_ms = c->delay_ms;
    store_apply_mode();
}

void fx_set_store(enum fx_store mode, double delay_ms)
{
    struct store_cfg c = {mode, delay_ms};

    fx_run(job_set_store, &c);
}

static void job_ticker(void *arg)
{
    double ms = *(double *)arg;

    ev_timer_stop(fx.loop, &st.ticker);
    if (ms > 0) {
        ev_timer_set(&st.ticker, ms / 1000.0, ms / 1000.0);
        ev_timer_start(fx.loop, &st.ticker);
    } else {
        put_backend("web", "b1", "10.0.0.1:8080", 100);
    }
}

void fx_set_ticker(double interval_ms)
{
    fx_run(job_ticker, &interval_ms);
}

struct bulk {
    const char *pool;
    unsigned n;
};

static void job_add_backends(void *arg)
{
    const struct bulk *b = arg;

    /* One batch, in id order, as a listing arrives: one publish. */
    for (unsigned i = 0; i < b->n; i++) {
        struct lb_update u = {.kind = LB_UPDATE_BACKEND_PUT, .pool = b->pool};
        char id[32];

        snprintf(id, sizeof(id), "bulk-%05u", i);
        u.id = id;
        snprintf(u.u.backend.addr, sizeof(u.u.backend.addr), "10.1.%u.%u:80", i / 250, i % 250 + 1);
        u.u.backend.weight = 100;
        st.sink.apply(st.sink.ctx, &u);
    }
    st.sink.commit(st.sink.ctx);
}

void fx_add_backends(const char *pool, unsigned n)
{
    struct bulk b = {pool, n};

    fx_run(job_add_backends, &b);
}

static void job_has_subscribers(void *arg)
{
    *(bool *)arg = lb_events_wanted(&fx.registry.events);
}

bool fx_has_subscribers(void)
{
    bool yes;

    fx_run(job_has_subscribers, &yes);
    return yes;
}

void fx_expect_status(int got, const struct lb_admin_status *status, int want, const char *needle)
{
    if (got != want || (needle && !strstr(status->message, needle)))
        fail_msg("got %s \"%s\", want %s \"%s\"", lb_grpc_status_name(got), status->message,
                 lb_grpc_status_name(want), needle ? needle : "");
}

bool fx_wait_until(bool (*cond)(void *arg), void *arg, double seconds)
{
    double end = h2_now() + seconds;
    bool ok;

    while (!(ok = cond(arg)) && h2_now() < end) {
        struct timespec poll_interval = {0, 5 * 1000 * 1000};

        nanosleep(&poll_interval, NULL);
    }
    return ok;
}

static bool no_subscribers(void *arg)
{
    return !fx_has_subscribers();
}

void fx_wait_no_subscribers(void)
{
    assert_true(fx_wait_until(no_subscribers, NULL, 3));
}

static void job_store_pending(void *arg)
{
    unsigned n = 0;

    for (struct store_write *w = st.writes; w; w = w->next)
        n++;
    *(unsigned *)arg = n;
}

unsigned fx_store_pending(void)
{
    unsigned n;

    fx_run(job_store_pending, &n);
    return n;
}

static bool store_idle(void *arg)
{
    return fx_store_pending() == 0;
}

void fx_wait_store_idle(void)
{
    assert_true(fx_wait_until(store_idle, NULL, 3));
}

struct drain_query {
    const char *pool, *id;
    bool drain;
};

static void job_backend_drain(void *arg)
{
    struct drain_query *q = arg;
    struct lb_backend *b = find_backend(q->pool, q->id);

    q->drain = b && b->drain;
}

bool fx_backend_drain(const char *pool, const char *id)
{
    struct drain_query q = {pool, id, false};

    fx_run(job_backend_drain, &q);
    return q.drain;
}

struct metrics_job {
    struct lb_admin_server *s;
    char text[4096];
};

static void job_render(void *arg)
{
    struct metrics_job *j = arg;
    struct lb_buf out;

    lb_buf_init(&out, sizeof(j->text) - 1);
    assert_int_equal(lb_admin_server_render_metrics(j->s, &out), 0);
    snprintf(j->text, sizeof(j->text), "%s", out.data);
    lb_buf_free(&out);
}

long long fx_server_metric(struct lb_admin_server *s, const char *name)
{
    struct metrics_job j = {.s = s};
    char line[160];
    const char *at;

    fx_run(job_render, &j);
    snprintf(line, sizeof(line), "\n%s ", name);
    at = strstr(j.text, line);
    assert_non_null(at);
    return atoll(at + strlen(line));
}

struct metric_wait {
    struct lb_admin_server *s;
    const char *name;
    long long want;
};

static bool metric_is(void *arg)
{
    const struct metric_wait *w = arg;

    return fx_server_metric(w->s, w->name) == w->want;
}

void fx_wait_metric(struct lb_admin_server *s, const char *name, long long want)
{
    struct metric_wait w = {s, name, want};

    if (!fx_wait_until(metric_is, &w, 3))
        fail_msg("%s is %lld, not %lld", name, fx_server_metric(s, name), want);
}

struct write_wait {
    struct lb_admin_server *s;
    bool waits;
};

static void job_waits_to_write(void *arg)
{
    struct write_wait *w = arg;

    w->waits = false;
    const struct lb_list *pos;

    lb_list_for_each(pos, &w->s->conns)
    {
        const struct admin_conn *c = lb_list_entry(pos, struct admin_conn, link);

        if (ev_is_active(&c->write_watcher) && c->woff < c->wbuf.len)
            w->waits = true;
    }
}

bool fx_server_waits_to_write(struct lb_admin_server *s)
{
    struct write_wait w = {s, false};

    fx_run(job_waits_to_write, &w);
    return w.waits;
}
