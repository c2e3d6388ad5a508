/*
 * Lease requests and responses, and blocking calls built from them and
 * lb_etcd_http_post_sync() (which logs in and speaks TLS as its client is
 * set up to).  Every blocking call turns the reply into one sentence the
 * caller can print as is.
 */
#include "lb_lease.h"
#include "lb_error.h"
#include "lb_etcd_http.h"
#include "lb_etcd_json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LEASE_RESPONSE_MAX (64 * 1024)

static int one_int64_request(const char *name, int64_t v, char **out)
{
    json_object *req = json_object_new_object();
    json_object *s;
    char text[24];

    *out = NULL;
    if (!req)
        return -ENOMEM;
    snprintf(text, sizeof(text), "%lld", (long long)v);
    s = json_object_new_string(text);
    if (!s || json_object_object_add(req, name, s) < 0) {
        json_object_put(s);
        json_object_put(req);
        return -ENOMEM;
    }
    return lb_etcd_json_finish(req, out);
}

int lb_lease_grant_request(int64_t ttl_s, char **out)
{
    return one_int64_request("TTL", ttl_s, out);
}

int lb_lease_id_request(int64_t id, char **out)
{
    return one_int64_request("ID", id, out);
}

int lb_lease_parse_grant(const char *body, size_t len, int64_t *id, int64_t *ttl_s, char **err)
{
    json_object *root = NULL;
    int rc;

    *id = 0;
    *ttl_s = 0;
    rc = lb_etcd_json_parse(body, len, &root, err);
    if (rc)
        return rc;
    if (!json_object_is_type(root, json_type_object) ||
        lb_etcd_json_get_int64(root, "ID", id) < 0 ||
        lb_etcd_json_get_int64(root, "TTL", ttl_s) < 0)
        rc = lb_error_set(err, -EINVAL, "lease grant response is not what etcd sends");
    else if (*id == 0 || *ttl_s <= 0)
        rc = lb_error_set(err, -EINVAL, "lease grant response has no lease ID or TTL");
    json_object_put(root);
    return rc;
}

int lb_lease_parse_keepalive(const char *body, size_t len, int64_t *ttl_s, char **err)
{
    json_object *root = NULL, *result = NULL;
    int rc;

    *ttl_s = 0;
    rc = lb_etcd_json_parse(body, len, &root, err);
    if (rc)
        return rc;
    if (!json_object_is_type(root, json_type_object) ||
        !json_object_object_get_ex(root, "result", &result) || !result ||
        !json_object_is_type(result, json_type_object) ||
        lb_etcd_json_get_int64(result, "TTL", ttl_s) < 0)
        rc = lb_error_set(err, -EINVAL, "lease keepalive response is not what etcd sends");
    else if (*ttl_s <= 0)
        rc = -ENOENT; /* etcd leaves TTL out for a lease it no longer has */
    json_object_put(root);
    return rc;
}

enum lb_lease_key_state lb_lease_classify_key(const struct lb_etcd_range *r, const char *value,
                                              int64_t id, int64_t *holder)
{
    size_t len = strlen(value);

    *holder = 0;
    if (r->n_kvs == 0)
        return LB_LEASE_KEY_MISSING;
    *holder = r->kvs[0].lease;
    if (r->kvs[0].lease != id || r->kvs[0].value_len != len ||
        memcmp(r->kvs[0].value, value, len) != 0)
        return LB_LEASE_KEY_CHANGED;
    return LB_LEASE_KEY_OURS;
}

/* POSTs body to endpoint+path; on failure fills *err with "<what>: <message>". */
static int post(struct lb_etcd_http *h, const char *endpoint, const char *path, const char *body,
                long timeout_ms, const char *what, struct lb_etcd_reply *reply, char **err)
{
    struct lb_etcd_request req = {
        .endpoint = endpoint,
        .path = path,
        .body = body,
        .timeout_ms = timeout_ms,
        .max_response = LEASE_RESPONSE_MAX,
    };
    int rc = lb_etcd_http_post_sync(h, &req, reply);

    if (rc == 0 && !reply->body)
        rc = reply->status = -ENOMEM;
    if (rc)
        lb_error_set(err, rc, "%s at %s: %s", what, endpoint, reply->message);
    return rc;
}

int lb_lease_grant(struct lb_etcd_http *h, const char *endpoint, int64_t ttl_s, long timeout_ms,
                   int64_t *id, int64_t *granted_ttl_s, char **err)
{
    struct lb_etcd_reply reply = {0};
    char *body = NULL, *why = NULL;
    int rc;

    rc = lb_lease_grant_request(ttl_s, &body);
    if (rc) {
        lb_error_set(err, rc, "out of memory");
        goto out;
    }
    rc = post(h, endpoint, LB_LEASE_PATH_GRANT, body, timeout_ms, "lease grant", &reply, err);
    if (rc)
        goto out;
    rc = lb_lease_parse_grant(reply.body, reply.body_len, id, granted_ttl_s, &why);
    if (rc)
        lb_error_set(err, rc, "lease grant at %s: %s", endpoint, why ? why : "bad response");
out:
    free(why);
    free(body);
    lb_etcd_reply_free(&reply);
    return rc;
}

int lb_lease_keepalive(struct lb_etcd_http *h, const char *endpoint, int64_t id, long timeout_ms,
                       int64_t *ttl_s, char **err)
{
    struct lb_etcd_reply reply = {0};
    char *body = NULL, *why = NULL;
    int rc;

    rc = lb_lease_id_request(id, &body);
    if (rc) {
        lb_error_set(err, rc, "out of memory");
        goto out;
    }
    rc = post(h, endpoint, LB_LEASE_PATH_KEEPALIVE, body, timeout_ms, "lease keepalive", &reply,
              err);
    if (rc)
        goto out;
    rc = lb_lease_parse_keepalive(reply.body, reply.body_len, ttl_s, &why);
    if (rc == -ENOENT)
        lb_error_set(err, rc, "lease %lld is gone (expired or revoked)", (long long)id);
    else if (rc)
        lb_error_set(err, rc, "lease keepalive at %s: %s", endpoint, why ? why : "bad response");
out:
    free(why);
    free(body);
    lb_etcd_reply_free(&reply);
    return rc;
}

int lb_lease_revoke(struct lb_etcd_http *h, const char *endpoint, int64_t id, long timeout_ms,
                    char **err)
{
    struct lb_etcd_reply reply = {0};
    char *body = NULL;
    int rc;

    rc = lb_lease_id_request(id, &body);
    if (rc) {
        lb_error_set(err, rc, "out of memory");
        goto out;
    }
    rc = post(h, endpoint, LB_LEASE_PATH_REVOKE, body, timeout_ms, "lease revoke", &reply, err);
out:
    free(body);
    lb_etcd_reply_free(&reply);
    return rc;
}

int lb_lease_put(struct lb_etcd_http *h, const char *endpoint, const char *key, const char *value,
                 int64_t id, long timeout_ms, char **err)
{
    struct lb_etcd_reply reply = {0};
    char *body = NULL;
    int rc;

    rc = lb_etcd_json_put_request(key, strlen(key), value, strlen(value), id, &body);
    if (rc) {
        lb_error_set(err, rc, "out of memory");
        goto out;
    }
    rc = post(h, endpoint, "/v3/kv/put", body, timeout_ms, "put", &reply, err);
out:
    free(body);
    lb_etcd_reply_free(&reply);
    return rc;
}

int lb_lease_check_key(struct lb_etcd_http *h, const char *endpoint, const char *key,
                       const char *value, int64_t id, long timeout_ms,
                       enum lb_lease_key_state *state, int64_t *holder, char **err)
{
    struct lb_etcd_reply reply = {0};
    struct lb_etcd_range range;
    char *body = NULL, *why = NULL;
    int rc;

    *state = LB_LEASE_KEY_OURS;
    *holder = id;
    rc = lb_etcd_json_range_request(key, strlen(key), NULL, 0, 0, 0, &body);
    if (rc) {
        lb_error_set(err, rc, "out of memory");
        goto out;
    }
    rc =
        post(h, endpoint, "/v3/kv/range", body, timeout_ms, "reading the backend key", &reply, err);
    if (rc)
        goto out;
    rc = lb_etcd_json_parse_range(reply.body, reply.body_len, &range, &why);
    if (rc) {
        lb_error_set(err, rc, "reading the backend key at %s: %s", endpoint,
                     why ? why : "bad response");
        goto out;
    }
    *state = lb_lease_classify_key(&range, value, id, holder);
    lb_etcd_range_free(&range);
out:
    free(why);
    free(body);
    lb_etcd_reply_free(&reply);
    return rc;
}
