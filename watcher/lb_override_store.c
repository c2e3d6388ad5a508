/*
 * One pending write per put_override() call, kept in a list so the store
 * can cancel them all when the watcher goes away.  A write that failed to
 * reach etcd (connect refused, timeout, 5xx) moves to the next endpoint;
 * an answer from etcd (even an error) is final.
 */
#include "lb_override_store.h"
#include "lb_list.h"
#include "lb_etcd_json.h"
#include "lb_key.h"
#include "lb_value.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STORE_RESPONSE_MAX (64 * 1024)

struct lb_override_store {
    struct lb_override_store_config cfg;
    char prefix[LB_PREFIX_MAX];
    struct lb_list writes; /* in flight */
};

struct store_write {
    struct lb_list link; /* store->writes */
    struct lb_override_store *store;
    struct lb_etcd_call *call;
    const char *path; /* "/v3/kv/put" or "/v3/kv/deleterange" */
    char *body;
    char key[LB_PREFIX_MAX + 2 * LB_NAME_MAX + 32];
    size_t endpoint; /* index tried now */
    size_t attempts; /* endpoints tried so far */
    lb_store_done_cb done;
    void *ud;
};

static void write_free(struct store_write *w)
{
    lb_list_remove(&w->link);
    free(w->body);
    free(w);
}

static int write_send(struct store_write *w);

static bool is_unreachable(int status)
{
    return status == -ECONNREFUSED || status == -EHOSTUNREACH || status == -ETIMEDOUT ||
           status == -EAGAIN || status == -EIO;
}

static void write_done_cb(void *ud, const struct lb_etcd_reply *reply)
{
    struct store_write *w = ud;
    lb_store_done_cb done = w->done;
    void *done_ud = w->ud;
    char message[LB_PREFIX_MAX + 2 * LB_NAME_MAX + 32 + sizeof(reply->message) + 64];
    int status = reply->status;

    w->call = NULL;
    if (status && is_unreachable(status) && w->attempts < w->store->cfg.n_endpoints) {
        w->endpoint = (w->endpoint + 1) % w->store->cfg.n_endpoints;
        if (write_send(w) == 0)
            return;
    }
    /* the caller reports the failure; this layer only words it */
    if (status)
        snprintf(message, sizeof(message), "etcd write of %s failed: %s", w->key, reply->message);
    else
        snprintf(message, sizeof(message), "ok");
    write_free(w);
    done(done_ud, status, message);
}

static int write_send(struct store_write *w)
{
    struct lb_override_store *s = w->store;
    struct lb_etcd_request req = {
        .endpoint = s->cfg.endpoints[w->endpoint],
        .path = w->path,
        .body = w->body,
        .timeout_ms = s->cfg.timeout_ms,
        .max_response = STORE_RESPONSE_MAX,
        .on_done = write_done_cb,
        .ud = w,
    };

    w->attempts++;
    return lb_etcd_http_start(s->cfg.http, &req, &w->call);
}

static int store_put_override(void *ctx, const char *pool, const char *id,
                              const struct lb_override *ov, lb_store_done_cb done, void *ud)
{
    struct lb_override_store *s = ctx;
    struct store_write *w;
    char *value = NULL;
    int rc, len;

    if (!done || s->cfg.n_endpoints == 0)
        return -EINVAL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    lb_list_init(&w->link);
    len = lb_key_format(s->prefix, LB_KEY_OVERRIDE, pool, id, w->key, sizeof(w->key));
    if (len < 0) {
        rc = -EINVAL;
        goto out;
    }
    if (!ov || lb_value_override_is_default(ov)) {
        w->path = "/v3/kv/deleterange";
        rc = lb_etcd_json_delete_request(w->key, (size_t)len, &w->body);
    } else {
        w->path = "/v3/kv/put";
        rc = lb_value_encode_override(ov, &value);
        if (!rc)
            rc = lb_etcd_json_put_request(w->key, (size_t)len, value, strlen(value), 0, &w->body);
    }
    if (rc)
        goto out;
    w->store = s;
    w->done = done;
    w->ud = ud;
    w->endpoint = *s->cfg.current_endpoint % s->cfg.n_endpoints;
    lb_list_insert_head(&s->writes, &w->link);
    rc = write_send(w);
    if (rc)
        write_free(w); /* unlinks and frees; done is not called */
    w = NULL;
out:
    if (w) {
        free(w->body);
        free(w);
    }
    free(value);
    return rc;
}

int lb_override_store_new(const struct lb_override_store_config *cfg,
                          struct lb_override_store **out)
{
    struct lb_override_store *s;

    *out = NULL;
    if (strlen(cfg->prefix) >= LB_PREFIX_MAX)
        return -EINVAL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    lb_list_init(&s->writes);
    s->cfg = *cfg;
    strcpy(s->prefix, cfg->prefix);
    s->cfg.prefix = s->prefix;
    *out = s;
    return 0;
}

void lb_override_store_free(struct lb_override_store *s)
{
    struct lb_list *pos;

    if (!s)
        return;
    while ((pos = lb_list_first(&s->writes))) {
        struct store_write *w = lb_list_entry(pos, struct store_write, link);
        lb_store_done_cb done = w->done;
        void *ud = w->ud;

        lb_etcd_http_cancel(w->call);
        write_free(w);
        /* The caller holds state for this write (an admin call waiting on
         * it): tell it, or that state would never be released. */
        done(ud, -ECANCELED, "lbd is shutting down");
    }
    free(s);
}

struct lb_store lb_override_store_iface(struct lb_override_store *s)
{
    struct lb_store store = {.put_override = store_put_override, .ctx = s};

    return store;
}
