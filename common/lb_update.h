/*
 * The one interface between discovery and the data plane (DESIGN.md, module
 * boundaries).  The watcher turns etcd keys and JSON values into typed
 * updates; the balancer applies them and publishes a new pool snapshot on
 * commit.  Neither side sees the other's internals: the balancer never
 * parses JSON, the watcher never touches a client socket.
 *
 * Key schema, for `<prefix>` = "/lb/":
 *   <prefix>pools/<pool>/backends/<id>    -> LB_UPDATE_BACKEND_*
 *   <prefix>pools/<pool>/config           -> LB_UPDATE_POLICY_*
 *   <prefix>pools/<pool>/overrides/<id>   -> LB_UPDATE_OVERRIDE_*
 * Pool names and ids are 1..LB_NAME_MAX-1 bytes of [A-Za-z0-9._:-].
 */
#ifndef LB_UPDATE_H
#define LB_UPDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LB_NAME_MAX 128 /* pool names and backend ids, with the NUL */
#define LB_ADDR_MAX 264 /* "host:port" text, with the NUL */
#define LB_ZONE_MAX 64

#define LB_WEIGHT_MAX     1000
#define LB_WEIGHT_DEFAULT 100

/* Registration value: {"addr":"10.0.0.5:8080","weight":100,"zone":"a","meta":{...}} */
struct lb_backend_spec {
    char addr[LB_ADDR_MAX]; /* host:port; host is IPv4, [IPv6] or a DNS name */
    int weight;             /* 0..LB_WEIGHT_MAX; 0 = no new connections */
    char zone[LB_ZONE_MAX]; /* "" when absent */
};

enum lb_health_override {
    LB_HEALTH_AUTO = 0,       /* checks decide */
    LB_HEALTH_FORCE_UP = 1,   /* operator says up, whatever the checks say */
    LB_HEALTH_FORCE_DOWN = 2, /* operator says down */
};

/* Override value: {"drain":true,"weight":50,"health":"down"}; every field optional. */
struct lb_override {
    bool drain;
    bool has_weight;
    int weight; /* valid when has_weight */
    enum lb_health_override health;
};

enum lb_algorithm { LB_ALGO_WRR, LB_ALGO_LEASTCONN, LB_ALGO_P2C, LB_ALGO_MAGLEV };

/* The algorithms' names in enum order: the one table policies, logs and the
 * admin API use ("wrr" is LB_ALGO_WRR, ...). */
#define LB_ALGORITHM_NAMES "wrr|leastconn|p2c|maglev"

/* The name of an algorithm as policies spell it. */
const char *lb_algorithm_name(enum lb_algorithm algorithm);

/*
 * True when name[0..len) is a valid pool name or backend id: 1 to
 * LB_NAME_MAX - 1 bytes of A-Z a-z 0-9 . _ : - and neither "." nor "..",
 * so it is safe in keys, log lines, metric labels and file names.  The one
 * grammar for --pool, etcd keys, the admin API and lbctl.
 */
bool lb_name_is_valid(const char *name, size_t len);
enum lb_health_type { LB_CHECK_TCP, LB_CHECK_HTTP, LB_CHECK_NONE };
enum lb_proxy_protocol { LB_PROXY_NONE, LB_PROXY_V1, LB_PROXY_V2 };

#define LB_HEALTH_PATH_MAX 256

/* Pool policy from <prefix>pools/<pool>/config.  Durations in ms, 0 = off. */
struct lb_pool_policy {
    enum lb_algorithm algorithm;
    struct {
        enum lb_health_type type;
        char path[LB_HEALTH_PATH_MAX];
        int64_t interval_ms;
        int64_t timeout_ms;
        int rise;
        int fall;
    } health;
    int64_t connect_timeout_ms;
    int64_t idle_timeout_ms;
    int retries;
    int max_conns; /* per backend, 0 = unlimited */
    int64_t slow_start_ms;
    int64_t drain_timeout_ms;
    enum lb_proxy_protocol proxy_protocol;
    int panic_threshold; /* percent, 0..100 */
    /* Percent, 0..100, 0 = off: while at least this share of the backends in
     * lbd's own zone (--zone) are eligible, new connections stay in that
     * zone; below it they spread over every zone. */
    int zone_affinity;
    /* Every eligible backend at max_conns: a new client waits up to this
     * for a slot (HAProxy's timeout queue); 0 = closed at once. */
    int64_t queue_timeout_ms;
};

/* Fills *p with DESIGN.md's defaults. */
void lb_pool_policy_defaults(struct lb_pool_policy *p);

enum lb_update_kind {
    LB_UPDATE_BACKEND_PUT,    /* added or changed; u.backend valid */
    LB_UPDATE_BACKEND_DELETE, /* key deleted or its lease expired */
    LB_UPDATE_POLICY_PUT,     /* u.policy valid; id is NULL */
    LB_UPDATE_POLICY_DELETE,  /* back to defaults; id is NULL */
    LB_UPDATE_OVERRIDE_PUT,   /* u.override valid */
    LB_UPDATE_OVERRIDE_DELETE,
};

struct lb_update {
    enum lb_update_kind kind;
    const char *pool;
    const char *id;
    union {
        struct lb_backend_spec backend;
        struct lb_pool_policy policy;
        struct lb_override override;
    } u;
};

/*
 * Where updates go.  apply() receives one change (pointers valid during the
 * call only); commit() ends a batch (one watch message, or one full listing)
 * and is where the receiver publishes.  A listing after a reconnect or a
 * compaction is delivered as the difference against what was delivered
 * before, so keys that did not change produce no update at all.  Both run on
 * the loop that drives the watcher.
 */
struct lb_update_sink {
    void (*apply)(void *ctx, const struct lb_update *update);
    void (*commit)(void *ctx);
    void *ctx;
};

/*
 * Cluster-scope writes of overrides, implemented by the watcher's etcd
 * client.  put_override() with ov == NULL deletes the override key.  done()
 * runs later on the loop with 0 or a negative errno and a message (or with
 * -ECANCELED when the store is freed first); it is never called when
 * put_override() itself returns an error.
 */
typedef void (*lb_store_done_cb)(void *ud, int status, const char *message);
struct lb_store {
    int (*put_override)(void *ctx, const char *pool, const char *id, const struct lb_override *ov,
                        lb_store_done_cb done, void *ud);
    void *ctx;
};

/*
 * A view of etcd kept outside the watcher (the watcher exports and seeds
 * it; an upgrade hands it to the next lbd, the state file keeps it across
 * restarts): the revision it was at, etcd's cluster id, how long it had
 * been out of touch with etcd (0 when watching), the key prefix, and its
 * keys with their values as etcd stored them.
 */
struct lb_watcher_view {
    int64_t revision;
    uint64_t cluster_id;
    int64_t stale_ms;
    const char *prefix; /* normalised ("/lb/"); the keys are under it */
};

struct lb_watcher_kv {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
    int64_t mod_revision;
};

/* A key prefix, with its NUL (as --prefix allows). */
#define LB_VIEW_PREFIX_MAX 512

/* Such a view owned as one value. */
struct lb_saved_view {
    struct lb_watcher_view view; /* .prefix points to prefix */
    char prefix[LB_VIEW_PREFIX_MAX];
    int64_t written_ms; /* from a state file: when it was written (ms since the epoch) */
    /* Each key's bytes then its value's, in one malloc'd block at .key. */
    struct lb_watcher_kv *keys;
    size_t n_keys;
};

/* Frees the keys of v and empties its list (a no-op when it holds none). */
void lb_saved_view_free(struct lb_saved_view *v);

/*
 * Appends a copy of one key to v, whose keys array has room for `cap`:
 * 0, -ENOSPC when full, -ENOMEM.
 */
int lb_saved_view_add(struct lb_saved_view *v, size_t cap, const struct lb_watcher_kv *kv);

#endif
