/*
 * etcd leases, as registration uses them: grant a lease, put a key attached
 * to it, keep it alive, revoke it.  The request bodies and response readers
 * are pure; the blocking calls on top of them are meant for a process with
 * no event loop to protect (`lbctl register`), each bounded by timeout_ms.
 *
 * Gateway facts these encode (etcd 3.4): IDs exceed 2^53 and travel as
 * strings; keepalive is a streaming RPC that answers one {"result":{...}}
 * and closes; a keepalive of an expired or unknown lease still answers
 * HTTP 200, only without "TTL" -- that, and not an error, is how a lost
 * lease shows.
 */
#ifndef LB_LEASE_H
#define LB_LEASE_H

#include "lb_etcd_json.h"

#include <stddef.h>
#include <stdint.h>

struct lb_etcd_http;

#define LB_LEASE_PATH_GRANT     "/v3/lease/grant"
#define LB_LEASE_PATH_KEEPALIVE "/v3/lease/keepalive"
#define LB_LEASE_PATH_REVOKE    "/v3/lease/revoke"

/* {"TTL":"<ttl_s>"}; 0 or -ENOMEM. */
int lb_lease_grant_request(int64_t ttl_s, char **out);
/* {"ID":"<id>"}, the body of keepalive and revoke; 0 or -ENOMEM. */
int lb_lease_id_request(int64_t id, char **out);

/* Reads a grant response: 0 with *id and *ttl_s, or -EINVAL with *err. */
int lb_lease_parse_grant(const char *body, size_t len, int64_t *id, int64_t *ttl_s, char **err);
/*
 * Reads a keepalive response: 0 with the remaining *ttl_s, -ENOENT when the
 * lease is gone (no TTL), or -EINVAL with *err.
 */
int lb_lease_parse_keepalive(const char *body, size_t len, int64_t *ttl_s, char **err);

/* What became of a registered key (lb_lease_check_key()). */
enum lb_lease_key_state {
    LB_LEASE_KEY_OURS,    /* holds our value, attached to our lease */
    LB_LEASE_KEY_MISSING, /* deleted while the lease lived */
    LB_LEASE_KEY_CHANGED, /* another value or another lease (someone wrote over it) */
};

/*
 * Classifies a range answer for one key against the value and lease we
 * put; *holder gets the lease the key is attached to now (0: none).
 */
enum lb_lease_key_state lb_lease_classify_key(const struct lb_etcd_range *r, const char *value,
                                              int64_t id, int64_t *holder);

/*
 * Blocking calls against one endpoint, through the client `h` (TLS, login:
 * lb_etcd_http.h).  Each returns 0, or a negative errno with *err set to
 * one line saying what failed (see lb_etcd_http.h for the errno meanings);
 * -ENOENT always means "no such lease".
 */
int lb_lease_grant(struct lb_etcd_http *h, const char *endpoint, int64_t ttl_s, long timeout_ms,
                   int64_t *id, int64_t *granted_ttl_s, char **err);
int lb_lease_keepalive(struct lb_etcd_http *h, const char *endpoint, int64_t id, long timeout_ms,
                       int64_t *ttl_s, char **err);
int lb_lease_revoke(struct lb_etcd_http *h, const char *endpoint, int64_t id, long timeout_ms,
                    char **err);
/* Puts key=value attached to lease `id` (0 = no lease). */
int lb_lease_put(struct lb_etcd_http *h, const char *endpoint, const char *key, const char *value,
                 int64_t id, long timeout_ms, char **err);
/* Reads `key` and says whether it still holds `value` under lease `id`. */
int lb_lease_check_key(struct lb_etcd_http *h, const char *endpoint, const char *key,
                       const char *value, int64_t id, long timeout_ms,
                       enum lb_lease_key_state *state, int64_t *holder, char **err);

#endif
