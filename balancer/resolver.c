/*
 * The getaddrinfo thread (design in resolver.h): a request queue under a
 * mutex, one worker, answers handed back to the loop through an ev_async;
 * a cancelled request is dropped by the loop, never touched by the worker.
 */
#include "resolver.h"
#include "lb_util.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct lb_resolve_req {
    struct lb_resolve_req *next;
    struct lb_resolver *resolver;
    char host[256];
    uint16_t port;
    lb_resolve_cb cb;
    void *ud;
    bool canceled; /* loop side only */
    int status;
    const char *message;
    struct sockaddr_storage sa;
    socklen_t sa_len;
};

struct lb_resolver {
    struct ev_loop *loop;
    ev_async wake;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stopping;
    struct lb_resolve_req *todo, *todo_tail; /* loop -> worker */
    struct lb_resolve_req *done;             /* worker -> loop */
};

static void resolve_one(struct lb_resolve_req *q)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res = NULL, *pick = NULL;
    int rc = getaddrinfo(q->host, NULL, &hints, &res);

    if (rc != 0) {
        q->status = rc == EAI_AGAIN ? -EAGAIN : -ENOENT;
        q->message = gai_strerror(rc);
        return;
    }
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
        if (a->ai_family == AF_INET6 && !pick)
            pick = a;
    }
    if (!pick || pick->ai_addrlen > sizeof(q->sa)) {
        q->status = -ENOENT;
        q->message = "the name has no IPv4 or IPv6 address";
    } else {
        memcpy(&q->sa, pick->ai_addr, pick->ai_addrlen);
        q->sa_len = pick->ai_addrlen;
        if (q->sa.ss_family == AF_INET)
            ((struct sockaddr_in *)&q->sa)->sin_port = htons(q->port);
        else
            ((struct sockaddr_in6 *)&q->sa)->sin6_port = htons(q->port);
        q->status = 0;
        q->message = "";
    }
    freeaddrinfo(res);
}

static void *resolver_thread(void *arg)
{
    struct lb_resolver *r = arg;

    pthread_mutex_lock(&r->lock);
    for (;;) {
        struct lb_resolve_req *q;

        while (!r->todo && !r->stopping)
            pthread_cond_wait(&r->cond, &r->lock);
        if (r->stopping)
            break;
        q = r->todo;
        r->todo = q->next;
        if (!r->todo)
            r->todo_tail = NULL;
        pthread_mutex_unlock(&r->lock);
        resolve_one(q);
        pthread_mutex_lock(&r->lock);
        q->next = r->done;
        r->done = q;
        ev_async_send(r->loop, &r->wake);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static void resolver_wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    struct lb_resolver *r = lb_container_of(w, struct lb_resolver, wake);
    struct lb_resolve_req *done;

    pthread_mutex_lock(&r->lock);
    done = r->done;
    r->done = NULL;
    pthread_mutex_unlock(&r->lock);
    while (done) {
        struct lb_resolve_req *q = done;

        done = q->next;
        if (!q->canceled)
            q->cb(q->ud, q->status, q->status == 0 ? (struct sockaddr *)&q->sa : NULL, q->sa_len,
                  q->message);
        free(q);
    }
}

int lb_resolver_new(struct ev_loop *loop, struct lb_resolver **out)
{
    struct lb_resolver *r = calloc(1, sizeof(*r));

    if (!r)
        return -ENOMEM;
    r->loop = loop;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    ev_async_init(&r->wake, resolver_wake_cb);
    ev_async_start(loop, &r->wake);
    /* The loop must not be kept alive by the async watcher alone. */
    ev_unref(loop);
    if (pthread_create(&r->thread, NULL, resolver_thread, r) != 0) {
        ev_ref(loop);
        ev_async_stop(loop, &r->wake);
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->lock);
        free(r);
        return -EAGAIN;
    }
    *out = r;
    return 0;
}

static void free_list(struct lb_resolve_req *q)
{
    while (q) {
        struct lb_resolve_req *next = q->next;

        free(q);
        q = next;
    }
}

void lb_resolver_free(struct lb_resolver *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    r->stopping = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    /* A getaddrinfo() in progress finishes first (bounded by resolv.conf timeouts). */
    pthread_join(r->thread, NULL);
    ev_ref(r->loop);
    ev_async_stop(r->loop, &r->wake);
    free_list(r->todo);
    free_list(r->done);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

int lb_resolve(struct lb_resolver *r, const char *host, uint16_t port, lb_resolve_cb cb, void *ud,
               struct lb_resolve_req **out)
{
    struct lb_resolve_req *q;

    if (!host[0] || strlen(host) >= sizeof(q->host))
        return -EINVAL;
    q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->resolver = r;
    strcpy(q->host, host);
    q->port = port;
    q->cb = cb;
    q->ud = ud;
    pthread_mutex_lock(&r->lock);
    if (r->todo_tail)
        r->todo_tail->next = q;
    else
        r->todo = q;
    r->todo_tail = q;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    *out = q;
    return 0;
}

void lb_resolve_cancel(struct lb_resolve_req *req)
{
    /* Only the loop reads `canceled`, and only the loop calls this. */
    req->canceled = true;
}
