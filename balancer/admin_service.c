/*
 * lb.v1.Admin and grpc.health.v1.Health/Check: protobuf in, balancer/control.h
 * calls, protobuf out.
 *
 * Reads answer at once.  Mutations (SetDrain, SetWeight, SetHealth) go
 * through lb_control_change(): LOCAL applies before it returns, CLUSTER
 * writes etcd and completes later, so the handler keeps a reference on the
 * call until the write's callback arrives, even if the client has gone by
 * then.  SetDrain with `wait` then subscribes to registry events and answers
 * when the backend has drained, was removed or undrained, or at its wait
 * timeout.  WatchEvents subscribes for as long as the client stays (with
 * initial_state it first sends every backend as it is, then SYNCED, in the
 * same loop iteration as the subscription, so nothing falls between); the
 * call's bounded queue turns a client that cannot keep up into
 * RESOURCE_EXHAUSTED instead of memory.  ListSessions and KillSessions ask
 * every worker (lb_control_sessions) and answer once all have, holding a
 * reference on the call meanwhile; a call cancelled first cancels the
 * query, which finishes on its own when the last worker answers.
 *
 * Per-call handler state is attached to the call (lb_admin_call_set_data)
 * and freed with it, so no callback ever frees the object it runs for.
 *
 * The transport sees none of this: it is handed the table at the end of
 * this file, with the registry as the calls' context.
 */
#include "admin_service.h"
#include "control.h"
#include "lb_addr.h"
#include "lb_error.h"
#include "lb_duration.h"
#include "lb_grpc_frame.h"
#include "lb_log.h"

#include "grpc/health/v1/health.pb-c.h"
#include "lb/v1/admin.pb-c.h"

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOG_SUB               "admin"
#define DRAIN_WAIT_DEFAULT_MS 30000
#define DRAIN_WAIT_MAX_MS     (24LL * 3600 * 1000)

/* The registry lbd gave the server as the calls' context. */
static struct lb_registry *registry_of(const struct lb_admin_call *call)
{
    return lb_admin_call_context(call);
}

/* ---- validation ---- */

/* `required` false: "" is fine (every pool). */
static int check_name(const char *what, const char *value, bool required, char **err)
{
    if (!value[0]) {
        if (!required)
            return LB_GRPC_OK;
        return lb_error_set(err, LB_GRPC_INVALID_ARGUMENT, "%s is required", what);
    }
    if (!lb_name_is_valid(value, strlen(value)))
        return lb_error_set(err, LB_GRPC_INVALID_ARGUMENT,
                            "%s \"%.*s\" is not a valid name (1 to %d characters of "
                            "A-Z a-z 0-9 . _ : -)",
                            what, 64, value, LB_NAME_MAX - 1);
    return LB_GRPC_OK;
}

static int check_pool_id(const char *pool, const char *id, char **err)
{
    int status = check_name("pool", pool, true, err);

    return status ? status : check_name("id", id, true, err);
}

static int check_scope(int scope, char **err)
{
    if (scope != LB__V1__SCOPE__SCOPE_CLUSTER && scope != LB__V1__SCOPE__SCOPE_LOCAL)
        return lb_error_set(err, LB_GRPC_INVALID_ARGUMENT,
                            "scope %d is not CLUSTER (0) or LOCAL (1)", scope);
    return LB_GRPC_OK;
}

static int validate_list_backends(const ProtobufCMessage *m, char **err)
{
    return check_name("pool", ((const Lb__V1__ListBackendsRequest *)m)->pool, false, err);
}

static int validate_watch(const ProtobufCMessage *m, char **err)
{
    return check_name("pool", ((const Lb__V1__WatchEventsRequest *)m)->pool, false, err);
}

static int validate_get_backend(const ProtobufCMessage *m, char **err)
{
    const Lb__V1__GetBackendRequest *r = (const void *)m;

    return check_pool_id(r->pool, r->id, err);
}

static int validate_set_drain(const ProtobufCMessage *m, char **err)
{
    const Lb__V1__SetDrainRequest *r = (const void *)m;
    int status = check_pool_id(r->pool, r->id, err);

    if (!status)
        status = check_scope(r->scope, err);
    if (!status && r->wait_timeout_ms > DRAIN_WAIT_MAX_MS)
        status = lb_error_set(err, LB_GRPC_INVALID_ARGUMENT,
                              "wait_timeout_ms %u is above the maximum of 24h", r->wait_timeout_ms);
    return status;
}

static int validate_set_weight(const ProtobufCMessage *m, char **err)
{
    const Lb__V1__SetWeightRequest *r = (const void *)m;
    bool has_weight = r->weight_opt_case == LB__V1__SET_WEIGHT_REQUEST__WEIGHT_OPT_WEIGHT;
    int status = check_pool_id(r->pool, r->id, err);

    if (!status)
        status = check_scope(r->scope, err);
    if (status)
        return status;
    if (has_weight && r->clear)
        return lb_error_set(err, LB_GRPC_INVALID_ARGUMENT, "give either weight or clear, not both");
    if (!has_weight && !r->clear)
        return lb_error_set(err, LB_GRPC_INVALID_ARGUMENT, "weight or clear is required");
    if (has_weight && r->weight > LB_WEIGHT_MAX)
        return lb_error_set(err, LB_GRPC_INVALID_ARGUMENT, "weight %u is out of range (0..%d)",
                            r->weight, LB_WEIGHT_MAX);
    return LB_GRPC_OK;
}

static int validate_set_health(const ProtobufCMessage *m, char **err)
{
    const Lb__V1__SetHealthRequest *r = (const void *)m;
    int status = check_pool_id(r->pool, r->id, err);

    if (!status)
        status = check_scope(r->scope, err);
    if (!status && (r->health < LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_AUTO ||
                    r->health > LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_FORCE_DOWN))
        status = lb_error_set(err, LB_GRPC_INVALID_ARGUMENT,
                              "health %d is not AUTO (0), FORCE_UP (1) or FORCE_DOWN (2)",
                              (int)r->health);
    return status;
}

/* ---- conversions and shared answers ---- */

static void backend_to_proto(const struct lb_backend_info *in, Lb__V1__Backend *out)
{
    lb__v1__backend__init(out);
    /* protobuf-c wants char *; these are only read while packing, before we return. */
    out->pool = (char *)in->pool;
    out->id = (char *)in->id;
    out->addr = (char *)(in->addr ? in->addr : "");
    out->zone = (char *)(in->zone ? in->zone : "");
    out->weight = in->weight;
    out->effective_weight = in->effective_weight;
    out->drain = in->drain;
    out->drained = in->drained;
    out->state = (Lb__V1__BackendState)in->state;
    out->health = (Lb__V1__HealthState)in->health;
    out->health_override = (Lb__V1__HealthOverride)in->health_override;
    if (in->has_weight_override) {
        out->weight_override_opt_case = LB__V1__BACKEND__WEIGHT_OVERRIDE_OPT_WEIGHT_OVERRIDE;
        out->weight_override = in->weight_override;
    }
    out->active_connections = in->active;
    out->total_connections = in->total;
    out->connect_failures = in->connect_failures;
    out->bytes_in = in->bytes_in;
    out->bytes_out = in->bytes_out;
}

static void ignore_backend(void *ud, const struct lb_backend_info *info)
{
}

static bool pool_exists(struct lb_registry *r, const char *pool)
{
    return lb_control_list_backends(r, pool, ignore_backend, NULL) != -ENOENT;
}

/* Ends the call for a negative errno from control.h. */
static void finish_errno(struct lb_admin_call *call, int rc, const char *pool, const char *id)
{
    struct lb_registry *r = registry_of(call);

    switch (rc) {
    case -ENOENT:
        if (!id || !pool_exists(r, pool))
            lb_admin_call_finish(call, LB_GRPC_NOT_FOUND, "pool %s not found", pool);
        else
            lb_admin_call_finish(call, LB_GRPC_NOT_FOUND, "backend %s/%s not found", pool, id);
        break;
    case -EINVAL:
        lb_admin_call_finish(call, LB_GRPC_INVALID_ARGUMENT, "invalid value for backend %s/%s",
                             pool, id ? id : "");
        break;
    case -ENOTCONN:
        lb_admin_call_finish(call, LB_GRPC_UNAVAILABLE,
                             "cluster scope needs etcd, which this lbd is not connected to; "
                             "use LOCAL scope (lbctl --local) to change this lbd only");
        break;
    case -ENOMEM:
        lb_admin_call_finish(call, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        break;
    default:
        lb_admin_call_finish(call, LB_GRPC_INTERNAL, "%s", strerror(-rc));
        break;
    }
}

/* Sends a message and finishes OK, or finishes with why it could not be sent. */
static void reply(struct lb_admin_call *call, const ProtobufCMessage *msg)
{
    int rc = lb_admin_call_send(call, msg);

    if (rc == 0)
        lb_admin_call_finish(call, LB_GRPC_OK, "%s", "");
    else if (rc == -EMSGSIZE || rc == -ENOBUFS)
        lb_admin_call_finish(call, LB_GRPC_RESOURCE_EXHAUSTED,
                             "response is larger than the maximum message size; ask for less "
                             "(one pool)");
    else if (rc != -ECANCELED)
        lb_admin_call_finish(call, LB_GRPC_INTERNAL, "cannot queue the response: %s",
                             strerror(-rc));
}

/* GetBackendResponse, SetDrainResponse, ... all are { Backend backend = 1; }. */
struct backend_reply {
    ProtobufCMessage base;
    Lb__V1__Backend *backend;
};

_Static_assert(sizeof(struct backend_reply) == sizeof(Lb__V1__GetBackendResponse) &&
                   sizeof(struct backend_reply) == sizeof(Lb__V1__SetDrainResponse) &&
                   sizeof(struct backend_reply) == sizeof(Lb__V1__SetWeightResponse) &&
                   sizeof(struct backend_reply) == sizeof(Lb__V1__SetHealthResponse),
               "backend replies share one layout");

struct backend_reply_ctx {
    struct lb_admin_call *call;
    const ProtobufCMessageDescriptor *desc;
};

static void send_backend_reply(void *ud, const struct lb_backend_info *info)
{
    struct backend_reply_ctx *ctx = ud;
    struct backend_reply msg;
    Lb__V1__Backend backend;

    protobuf_c_message_init(ctx->desc, &msg);
    backend_to_proto(info, &backend);
    msg.backend = &backend;
    reply(ctx->call, &msg.base);
}

static void note_backend(void *ud, const struct lb_backend_info *info)
{
    *(bool *)ud = true;
}

static bool backend_exists(struct lb_registry *r, const char *pool, const char *id)
{
    bool found = false;

    return lb_control_get_backend(r, pool, id, note_backend, &found) == 0 && found;
}

/* Answers with the current state of pool/id as message type `desc`. */
static void reply_backend(struct lb_admin_call *call, const ProtobufCMessageDescriptor *desc,
                          const char *pool, const char *id)
{
    struct backend_reply_ctx ctx = {call, desc};
    int rc = lb_control_get_backend(registry_of(call), pool, id, send_backend_reply, &ctx);

    if (rc < 0)
        finish_errno(call, rc, pool, id);
}

/* ---- reads ---- */

struct pool_list {
    Lb__V1__Pool *items;
    size_t n, cap;
    bool oom;
};

static void collect_pool(void *ud, const struct lb_pool_info *info)
{
    struct pool_list *l = ud;
    Lb__V1__Pool *p;

    if (l->oom)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        Lb__V1__Pool *items = realloc(l->items, cap * sizeof(*items));

        if (!items) {
            l->oom = true;
            return;
        }
        l->items = items;
        l->cap = cap;
    }
    p = &l->items[l->n++];
    lb__v1__pool__init(p);
    p->name = (char *)info->name;
    p->listen = (char *)(info->listen ? info->listen : "");
    p->algorithm = (char *)(info->algorithm ? info->algorithm : "");
    p->backends = info->backends;
    p->eligible = info->eligible;
    p->active_connections = info->active;
    p->total_connections = info->total;
    p->queued = info->queued;
}

/*
 * The repeated field of a list reply points at each of n items of `size`
 * bytes: a malloc'd array of those pointers, or NULL when out of memory.
 */
static void **item_pointers(void *items, size_t n, size_t size)
{
    void **ptrs = calloc(n ? n : 1, sizeof(*ptrs));

    for (size_t i = 0; ptrs && i < n; i++)
        ptrs[i] = (char *)items + i * size;
    return ptrs;
}

static void handle_list_pools(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    Lb__V1__ListPoolsResponse resp = LB__V1__LIST_POOLS_RESPONSE__INIT;
    struct pool_list l = {0};
    Lb__V1__Pool **ptrs = NULL;

    lb_control_list_pools(registry_of(call), collect_pool, &l);
    if (l.oom || !(ptrs = (Lb__V1__Pool **)item_pointers(l.items, l.n, sizeof(*l.items)))) {
        lb_admin_call_finish(call, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    resp.n_pools = l.n;
    resp.pools = ptrs;
    reply(call, &resp.base);
out:
    free(ptrs);
    free(l.items);
}

struct backend_list {
    Lb__V1__Backend *items;
    size_t n, cap;
    bool oom;
};

static void collect_backend(void *ud, const struct lb_backend_info *info)
{
    struct backend_list *l = ud;

    if (l->oom)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        Lb__V1__Backend *items = realloc(l->items, cap * sizeof(*items));

        if (!items) {
            l->oom = true;
            return;
        }
        l->items = items;
        l->cap = cap;
    }
    backend_to_proto(info, &l->items[l->n++]);
}

static void handle_list_backends(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    const Lb__V1__ListBackendsRequest *req = (const void *)request;
    Lb__V1__ListBackendsResponse resp = LB__V1__LIST_BACKENDS_RESPONSE__INIT;
    struct backend_list l = {0};
    Lb__V1__Backend **ptrs = NULL;
    int rc;

    rc = lb_control_list_backends(registry_of(call), req->pool, collect_backend, &l);
    if (rc < 0) {
        finish_errno(call, rc, req->pool, NULL);
        goto out;
    }
    if (l.oom || !(ptrs = (Lb__V1__Backend **)item_pointers(l.items, l.n, sizeof(*l.items)))) {
        lb_admin_call_finish(call, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    resp.n_backends = l.n;
    resp.backends = ptrs;
    reply(call, &resp.base);
out:
    free(ptrs);
    free(l.items);
}

static void handle_get_backend(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    const Lb__V1__GetBackendRequest *req = (const void *)request;

    reply_backend(call, &lb__v1__get_backend_response__descriptor, req->pool, req->id);
}

/* ---- mutations ---- */

struct mutation {
    struct lb_admin_call *call;
    char pool[LB_NAME_MAX];
    char id[LB_NAME_MAX];
    const ProtobufCMessageDescriptor *reply;
    char what[48]; /* "drain", "weight=50", ... for the log */
    enum lb_scope scope;
    bool drain_wait; /* SetDrain with drain and wait */
    int64_t wait_ms;
    struct lb_subscription *sub;
    ev_timer wait_timer;
    bool waiting; /* holds a call reference */
};

static void mutation_release(void *data)
{
    free(data);
}

/* Stops a drain wait (idempotent) and drops its reference: call it last. */
static void mutation_wait_end(struct mutation *m)
{
    if (!m->waiting)
        return;
    m->waiting = false;
    if (m->sub) {
        lb_control_unsubscribe(registry_of(m->call), m->sub);
        m->sub = NULL;
    }
    ev_timer_stop(lb_admin_call_loop(m->call), &m->wait_timer);
    lb_admin_call_unref(m->call);
}

static void mutation_cancel(void *ud)
{
    mutation_wait_end(ud);
}

struct drain_state {
    bool drain, drained;
    uint64_t active;
};

static void read_drain_state(void *ud, const struct lb_backend_info *info)
{
    struct drain_state *st = ud;

    st->drain = info->drain;
    st->drained = info->drained;
    st->active = info->active;
}

/* Answers the waiting call if the backend's drain has come to an end. */
static void mutation_check_drained(struct mutation *m)
{
    struct drain_state st = {0};
    int rc = lb_control_get_backend(registry_of(m->call), m->pool, m->id, read_drain_state, &st);

    if (rc == -ENOENT)
        lb_admin_call_finish(m->call, LB_GRPC_NOT_FOUND,
                             "backend %s/%s was removed while waiting for it to drain", m->pool,
                             m->id);
    else if (rc < 0)
        finish_errno(m->call, rc, m->pool, m->id);
    else if (!st.drain)
        lb_admin_call_finish(m->call, LB_GRPC_ABORTED,
                             "backend %s/%s was undrained while waiting for it to drain", m->pool,
                             m->id);
    else if (st.drained)
        reply_backend(m->call, m->reply, m->pool, m->id);
    else
        return;
    mutation_wait_end(m);
}

static void mutation_on_event(void *ud, const struct lb_event *ev)
{
    struct mutation *m = ud;

    if (!ev->id || strcmp(ev->pool, m->pool) != 0 || strcmp(ev->id, m->id) != 0)
        return;
    mutation_check_drained(m);
}

static void mutation_wait_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct mutation *m = w->data;
    struct drain_state st = {0};
    char text[32];

    lb_control_get_backend(registry_of(m->call), m->pool, m->id, read_drain_state, &st);
    lb_admin_call_finish(m->call, LB_GRPC_DEADLINE_EXCEEDED,
                         "backend %s/%s still has %llu active connection%s after %s", m->pool,
                         m->id, (unsigned long long)st.active, st.active == 1 ? "" : "s",
                         lb_duration_format(m->wait_ms, text, sizeof(text)));
    mutation_wait_end(m);
}

/* The change is in effect locally: answer, or start waiting for the drain. */
static void mutation_applied(struct mutation *m)
{
    struct lb_admin_call *call = m->call;

    LB_INFO(LOG_SUB, "msg=\"operator change applied\" pool=%s id=%s change=%s scope=%s", m->pool,
            m->id, m->what, m->scope == LB_SCOPE_LOCAL ? "local" : "cluster");
    if (m->scope == LB_SCOPE_CLUSTER && !backend_exists(registry_of(call), m->pool, m->id)) {
        /* Gone while etcd took the write (its lease lapsed, say): the override is
         * stored all the same and applies when it registers again.  Say so, as a
         * success without a backend, rather than NOT_FOUND for a change that was
         * made. */
        struct backend_reply msg;

        LB_INFO(LOG_SUB,
                "msg=\"operator change stored in etcd; the backend left meanwhile, the change "
                "applies when it registers again\" pool=%s id=%s change=%s",
                m->pool, m->id, m->what);
        protobuf_c_message_init(m->reply, &msg);
        msg.backend = NULL;
        reply(call, &msg.base);
        return;
    }
    if (!m->drain_wait) {
        reply_backend(call, m->reply, m->pool, m->id);
        return;
    }
    m->sub = lb_control_subscribe(registry_of(call), mutation_on_event, m);
    if (!m->sub) {
        lb_admin_call_finish(call, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    lb_admin_call_ref(call);
    m->waiting = true;
    lb_admin_call_on_cancel(call, mutation_cancel, m);
    ev_timer_init(&m->wait_timer, mutation_wait_timeout_cb, (ev_tstamp)m->wait_ms / 1000.0, 0.);
    m->wait_timer.data = m;
    ev_timer_start(lb_admin_call_loop(call), &m->wait_timer);
    mutation_check_drained(m); /* perhaps it had no connections */
}

/* The etcd write of a CLUSTER change finished. */
static void mutation_store_done(void *ud, int status, const char *message)
{
    struct mutation *m = ud;
    struct lb_admin_call *call = m->call;

    if (!lb_admin_call_is_done(call)) {
        if (status < 0)
            lb_admin_call_finish(call, LB_GRPC_UNAVAILABLE,
                                 "writing the override of %s/%s to etcd failed: %s", m->pool, m->id,
                                 message && message[0] ? message : strerror(-status));
        else
            mutation_applied(m);
    } else if (status == 0) {
        LB_INFO(LOG_SUB,
                "msg=\"operator change applied after its client left\" pool=%s id=%s "
                "change=%s",
                m->pool, m->id, m->what);
    }
    lb_admin_call_unref(call); /* the write's reference; may free m later */
}

static void mutation_start(struct lb_admin_call *call, struct mutation *m,
                           const struct lb_change *change)
{
    int rc;

    m->call = call;
    lb_admin_call_set_data(call, m, mutation_release);
    rc = lb_control_change(registry_of(call), m->pool, m->id, change, m->scope, mutation_store_done,
                           m);
    if (rc == LB_CONTROL_PENDING) {
        lb_admin_call_ref(call);
        return;
    }
    if (rc < 0) {
        finish_errno(call, rc, m->pool, m->id);
        return;
    }
    mutation_applied(m);
}

static struct mutation *mutation_new(struct lb_admin_call *call, const char *pool, const char *id,
                                     int scope, const ProtobufCMessageDescriptor *reply_desc)
{
    struct mutation *m = calloc(1, sizeof(*m));

    if (!m) {
        lb_admin_call_finish(call, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    snprintf(m->pool, sizeof(m->pool), "%s", pool);
    snprintf(m->id, sizeof(m->id), "%s", id);
    m->scope = scope == LB__V1__SCOPE__SCOPE_LOCAL ? LB_SCOPE_LOCAL : LB_SCOPE_CLUSTER;
    m->reply = reply_desc;
    return m;
}

static void handle_set_drain(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    const Lb__V1__SetDrainRequest *req = (const void *)request;
    struct lb_change change = {.kind = LB_CHANGE_DRAIN, .value.drain = req->drain};
    struct mutation *m =
        mutation_new(call, req->pool, req->id, req->scope, &lb__v1__set_drain_response__descriptor);

    if (!m)
        return;
    snprintf(m->what, sizeof(m->what), "%s", req->drain ? "drain" : "undrain");
    m->drain_wait = req->drain && req->wait;
    m->wait_ms = req->wait_timeout_ms ? req->wait_timeout_ms : DRAIN_WAIT_DEFAULT_MS;
    mutation_start(call, m, &change);
}

static void handle_set_weight(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    const Lb__V1__SetWeightRequest *req = (const void *)request;
    struct lb_change change;
    struct mutation *m = mutation_new(call, req->pool, req->id, req->scope,
                                      &lb__v1__set_weight_response__descriptor);

    if (!m)
        return;
    if (req->clear) {
        change.kind = LB_CHANGE_CLEAR_WEIGHT;
        snprintf(m->what, sizeof(m->what), "clear-weight");
    } else {
        change.kind = LB_CHANGE_WEIGHT;
        change.value.weight = (int)req->weight;
        snprintf(m->what, sizeof(m->what), "weight=%u", req->weight);
    }
    mutation_start(call, m, &change);
}

static void handle_set_health(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    static const char *const names[] = {"auto", "up", "down"};
    const Lb__V1__SetHealthRequest *req = (const void *)request;
    struct lb_change change = {.kind = LB_CHANGE_HEALTH,
                               .value.health = (enum lb_health_override)req->health};
    struct mutation *m = mutation_new(call, req->pool, req->id, req->scope,
                                      &lb__v1__set_health_response__descriptor);

    if (!m)
        return;
    snprintf(m->what, sizeof(m->what), "health=%s", names[req->health]);
    mutation_start(call, m, &change);
}

/* ---- WatchEvents ---- */

struct watch {
    struct lb_admin_call *call;
    char pool[LB_NAME_MAX]; /* "" = every pool */
    struct lb_subscription *sub;
    bool sending_initial; /* the current state is being queued */
};

static void watch_release(void *data)
{
    free(data);
}

/* Unsubscribes (idempotent) and drops the stream's handler reference: call it last. */
static void watch_stop(struct watch *w)
{
    if (!w->sub)
        return;
    lb_control_unsubscribe(registry_of(w->call), w->sub);
    w->sub = NULL;
    lb_admin_call_unref(w->call);
}

static void watch_cancel(void *ud)
{
    watch_stop(ud);
}

/* Queues one event on the watch; on failure finishes the call and stops the watch. */
static int watch_send(struct watch *w, Lb__V1__Event *msg)
{
    int rc = lb_admin_call_send(w->call, &msg->base);

    if (rc == 0)
        return 0;
    if (rc == -ENOBUFS && w->sending_initial) {
        LB_WARN(LOG_SUB, "msg=\"current state larger than an event stream may queue\" pool=%s",
                w->pool[0] ? w->pool : "*");
        lb_admin_call_finish(w->call, LB_GRPC_RESOURCE_EXHAUSTED,
                             "the current state of %s is more than an event stream may queue; "
                             "watch one pool, or ask for changes only (no initial_state)",
                             w->pool[0] ? w->pool : "every pool");
    } else if (rc == -ENOBUFS) {
        LB_WARN(LOG_SUB, "msg=\"event watcher fell behind; ending its stream\"");
        lb_admin_call_finish(w->call, LB_GRPC_RESOURCE_EXHAUSTED,
                             "event stream fell too far behind (client reads too slowly); "
                             "reconnect and list again");
    } else if (rc != -ECANCELED) {
        lb_admin_call_finish(w->call, LB_GRPC_INTERNAL, "cannot queue an event: %s", strerror(-rc));
    }
    watch_stop(w);
    return rc;
}

static Lb__V1__Event__Type event_type_to_proto(enum lb_event_type t)
{
    switch (t) {
    case LB_EVENT_BACKEND_ADDED:
        return LB__V1__EVENT__TYPE__TYPE_BACKEND_ADDED;
    case LB_EVENT_BACKEND_CHANGED:
        return LB__V1__EVENT__TYPE__TYPE_BACKEND_CHANGED;
    case LB_EVENT_BACKEND_REMOVED:
        return LB__V1__EVENT__TYPE__TYPE_BACKEND_REMOVED;
    case LB_EVENT_POLICY_CHANGED:
        return LB__V1__EVENT__TYPE__TYPE_POLICY_CHANGED;
    case LB_EVENT_HEALTH_CHANGED:
        return LB__V1__EVENT__TYPE__TYPE_HEALTH_CHANGED;
    case LB_EVENT_DRAINED:
        return LB__V1__EVENT__TYPE__TYPE_DRAINED;
    }
    return LB__V1__EVENT__TYPE__TYPE_UNSPECIFIED;
}

static void watch_on_event(void *ud, const struct lb_event *ev)
{
    struct watch *w = ud;
    Lb__V1__Event msg = LB__V1__EVENT__INIT;
    Lb__V1__Backend backend;

    if (w->pool[0] && strcmp(w->pool, ev->pool) != 0)
        return;
    msg.type = event_type_to_proto(ev->type);
    msg.pool = (char *)ev->pool;
    msg.id = (char *)(ev->id ? ev->id : "");
    if (ev->backend) {
        backend_to_proto(ev->backend, &backend);
        msg.backend = &backend;
    }
    msg.unix_ms = ev->unix_ms;
    msg.detail = (char *)(ev->detail ? ev->detail : "");
    watch_send(w, &msg);
}

struct watch_initial {
    struct watch *w;
    int64_t unix_ms;
    bool failed;
};

static void send_current(void *ud, const struct lb_backend_info *info)
{
    struct watch_initial *wi = ud;
    Lb__V1__Event msg = LB__V1__EVENT__INIT;
    Lb__V1__Backend backend;

    if (wi->failed)
        return;
    backend_to_proto(info, &backend);
    msg.type = LB__V1__EVENT__TYPE__TYPE_CURRENT;
    msg.pool = (char *)info->pool;
    msg.id = (char *)info->id;
    msg.backend = &backend;
    msg.unix_ms = wi->unix_ms;
    msg.detail = (char *)"";
    wi->failed = watch_send(wi->w, &msg) < 0;
}

/*
 * initial_state: every backend as it is now, then SYNCED.  Runs on the loop
 * right after subscribing, so the next event delivered is a change after
 * this state.
 */
static void watch_send_initial(struct watch *w)
{
    struct watch_initial wi = {.w = w};
    Lb__V1__Event synced = LB__V1__EVENT__INIT;
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    wi.unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    w->sending_initial = true;
    lb_control_list_backends(registry_of(w->call), w->pool, send_current, &wi);
    w->sending_initial = false;
    if (wi.failed)
        return;
    synced.type = LB__V1__EVENT__TYPE__TYPE_SYNCED;
    synced.pool = w->pool;
    synced.id = (char *)"";
    synced.unix_ms = wi.unix_ms;
    synced.detail = (char *)"";
    watch_send(w, &synced);
}

static void handle_watch_events(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    const Lb__V1__WatchEventsRequest *req = (const void *)request;
    struct lb_registry *r = registry_of(call);
    struct watch *w;

    if (req->pool[0] && !pool_exists(r, req->pool)) {
        lb_admin_call_finish(call, LB_GRPC_NOT_FOUND, "pool %s not found", req->pool);
        return;
    }
    w = calloc(1, sizeof(*w));
    if (!w) {
        lb_admin_call_finish(call, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    w->call = call;
    snprintf(w->pool, sizeof(w->pool), "%s", req->pool);
    lb_admin_call_set_data(call, w, watch_release);
    w->sub = lb_control_subscribe(r, watch_on_event, w);
    if (!w->sub) {
        lb_admin_call_finish(call, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    lb_admin_call_ref(call);
    lb_admin_call_on_cancel(call, watch_cancel, w);
    lb_admin_call_begin(call);
    if (req->initial_state)
        watch_send_initial(w);
}

/* ---- grpc.health.v1.Health/Check ---- */

static void handle_health_check(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    const Grpc__Health__V1__HealthCheckRequest *req = (const void *)request;
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;

    bool ready = lb_control_is_ready(registry_of(call));

    /* "" and lb.v1.Admin follow /readyz (a readiness probe: NOT_SERVING from
     * SIGTERM on, and until the first etcd sync); "liveness" is SERVING as
     * long as lbd answers (a liveness probe must not restart lbd for an etcd
     * outage at start-up). */
    if (strcmp(req->service, "liveness") == 0)
        ready = true;
    else if (req->service[0] && strcmp(req->service, "lb.v1.Admin") != 0) {
        lb_admin_call_finish(call, LB_GRPC_NOT_FOUND, "unknown service %s", req->service);
        return;
    }
    resp.status = ready ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                        : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    reply(call, &resp.base);
}

/* ---- ListSessions, KillSessions ---- */

#define SESSIONS_MAX 10000 /* rows one ListSessions answers with, at most */

static int validate_list_sessions(const ProtobufCMessage *m, char **err)
{
    const Lb__V1__ListSessionsRequest *r = (const void *)m;
    int status = check_name("pool", r->pool, true, err);

    return status ? status : check_name("backend", r->backend, false, err);
}

static int validate_kill_sessions(const ProtobufCMessage *m, char **err)
{
    const Lb__V1__KillSessionsRequest *r = (const void *)m;
    int status = check_name("pool", r->pool, true, err);

    return status ? status : check_name("backend", r->backend, true, err);
}

/* A call waiting for every worker's part; attached to the call. */
struct sessions_wait {
    struct lb_admin_call *call;
    struct lb_session_query *query; /* while waiting: holds a call reference */
    char pool[LB_NAME_MAX];
    char backend[LB_NAME_MAX];
    bool kill;
};

static void sessions_release(void *data)
{
    free(data);
}

static void sessions_cancel(void *ud)
{
    struct sessions_wait *sw = ud;

    if (!sw->query)
        return;
    lb_control_sessions_cancel(sw->query);
    sw->query = NULL;
    lb_admin_call_unref(sw->call);
}

static void sessions_reply_list(struct sessions_wait *sw, const struct lb_session_view *views,
                                size_t n, uint64_t total)
{
    Lb__V1__ListSessionsResponse resp = LB__V1__LIST_SESSIONS_RESPONSE__INIT;
    Lb__V1__Session *rows = calloc(n ? n : 1, sizeof(*rows));
    Lb__V1__Session **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    char(*clients)[64] = calloc(n ? n : 1, sizeof(*clients));

    if (!rows || !ptrs || !clients) {
        lb_admin_call_finish(sw->call, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const struct lb_session_view *v = &views[i];

        lb__v1__session__init(&rows[i]);
        lb_addr_format((const struct sockaddr *)&v->client, clients[i], sizeof(clients[i]));
        rows[i].client = clients[i];
        rows[i].backend = (char *)v->backend;
        rows[i].worker = v->worker;
        rows[i].state = (Lb__V1__Session__State)v->state;
        rows[i].age_s = v->age_s;
        rows[i].idle_s = v->idle_s;
        rows[i].bytes_in = v->bytes_in;
        rows[i].bytes_out = v->bytes_out;
        ptrs[i] = &rows[i];
    }
    resp.n_sessions = n;
    resp.sessions = ptrs;
    resp.total = total;
    reply(sw->call, &resp.base);
out:
    free(clients);
    free(ptrs);
    free(rows);
}

/* Every worker answered: on the loop. */
static void sessions_done(void *ud, const struct lb_session_view *views, size_t n, uint64_t total)
{
    struct sessions_wait *sw = ud;

    sw->query = NULL;
    if (sw->kill) {
        Lb__V1__KillSessionsResponse resp = LB__V1__KILL_SESSIONS_RESPONSE__INIT;

        LB_INFO(LOG_SUB, "msg=\"sessions killed by operator\" pool=%s backend=%s killed=%llu",
                sw->pool, sw->backend, (unsigned long long)total);
        resp.killed = total;
        reply(sw->call, &resp.base);
    } else {
        sessions_reply_list(sw, views, n, total);
    }
    lb_admin_call_unref(sw->call);
}

static void sessions_start(struct lb_admin_call *call, const char *pool, const char *backend,
                           bool kill, size_t max)
{
    struct sessions_wait *sw = calloc(1, sizeof(*sw));
    int rc;

    if (!sw) {
        lb_admin_call_finish(call, LB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    sw->call = call;
    sw->kill = kill;
    snprintf(sw->pool, sizeof(sw->pool), "%s", pool);
    snprintf(sw->backend, sizeof(sw->backend), "%s", backend);
    lb_admin_call_set_data(call, sw, sessions_release);
    rc = lb_control_sessions(registry_of(call), pool, backend, kill, max, sessions_done, sw,
                             &sw->query);
    if (rc == -EAGAIN) {
        lb_admin_call_finish(call, LB_GRPC_UNAVAILABLE, "this lbd has no worker to ask");
        return;
    }
    if (rc < 0) {
        finish_errno(call, rc, pool, backend[0] ? backend : NULL);
        return;
    }
    lb_admin_call_ref(call);
    lb_admin_call_on_cancel(call, sessions_cancel, sw);
}

static void handle_list_sessions(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    const Lb__V1__ListSessionsRequest *req = (const void *)request;
    size_t max = req->limit && req->limit < SESSIONS_MAX ? req->limit : SESSIONS_MAX;

    sessions_start(call, req->pool, req->backend, false, max);
}

static void handle_kill_sessions(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    const Lb__V1__KillSessionsRequest *req = (const void *)request;

    sessions_start(call, req->pool, req->backend, true, 1);
}

static void handle_upgrade(struct lb_admin_call *call, const ProtobufCMessage *request)
{
    Lb__V1__UpgradeResponse resp = LB__V1__UPGRADE_RESPONSE__INIT;
    const char *why = "this lbd cannot upgrade";
    int pid = lb_control_upgrade(registry_of(call), &why);

    if (pid < 0) {
        lb_admin_call_finish(call,
                             pid == -ENOTSUP ? LB_GRPC_FAILED_PRECONDITION
                             : pid == -EBUSY ? LB_GRPC_UNAVAILABLE
                                             : LB_GRPC_INTERNAL,
                             "%s", why);
        return;
    }
    resp.new_pid = pid;
    reply(call, &resp.base);
}

/* ---- the table ---- */

#define STREAMING LB_ADMIN_METHOD_STREAMING
#define NO_AUTH   LB_ADMIN_METHOD_NO_AUTH

static const struct lb_admin_method methods[] = {
    {"lb.v1.Admin", "ListPools", &lb__v1__list_pools_request__descriptor, NULL, handle_list_pools,
     0},
    {"lb.v1.Admin", "ListBackends", &lb__v1__list_backends_request__descriptor,
     validate_list_backends, handle_list_backends, 0},
    {"lb.v1.Admin", "GetBackend", &lb__v1__get_backend_request__descriptor, validate_get_backend,
     handle_get_backend, 0},
    {"lb.v1.Admin", "SetDrain", &lb__v1__set_drain_request__descriptor, validate_set_drain,
     handle_set_drain, 0},
    {"lb.v1.Admin", "SetWeight", &lb__v1__set_weight_request__descriptor, validate_set_weight,
     handle_set_weight, 0},
    {"lb.v1.Admin", "SetHealth", &lb__v1__set_health_request__descriptor, validate_set_health,
     handle_set_health, 0},
    {"lb.v1.Admin", "WatchEvents", &lb__v1__watch_events_request__descriptor, validate_watch,
     handle_watch_events, STREAMING},
    {"lb.v1.Admin", "Upgrade", &lb__v1__upgrade_request__descriptor, NULL, handle_upgrade, 0},
    {"lb.v1.Admin", "ListSessions", &lb__v1__list_sessions_request__descriptor,
     validate_list_sessions, handle_list_sessions, 0},
    {"lb.v1.Admin", "KillSessions", &lb__v1__kill_sessions_request__descriptor,
     validate_kill_sessions, handle_kill_sessions, 0},
    {"grpc.health.v1.Health", "Check", &grpc__health__v1__health_check_request__descriptor, NULL,
     handle_health_check, NO_AUTH},
};

const struct lb_admin_method *lb_admin_service_methods(size_t *n)
{
    *n = sizeof(methods) / sizeof(methods[0]);
    return methods;
}
