/*
 * The mirror is a chained hash table keyed by the raw etcd key.  Each entry
 * remembers the raw bytes of the last value seen (good or bad), which is
 * all the diff needs: same bytes, no update, no log line.  The typed value
 * is not kept; the sink owns that.  A re-list stamps every key it puts with
 * the current generation; relist_end() sweeps the unstamped ones.
 */
#include "lb_mirror.h"
#include "lb_error.h"
#include "lb_key.h"
#include "lb_log.h"
#include "lb_value.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct mirror_entry {
    struct mirror_entry *next; /* hash chain */
    uint64_t hash;
    char *key;
    size_t key_len;
    struct lb_key parsed;
    bool key_valid; /* false: schema shape, bad name; never delivered */
    bool delivered; /* the sink holds a value for this key */
    char *raw;      /* last value seen, NUL-terminated */
    size_t raw_len;
    int64_t mod_revision;
    uint64_t generation; /* last re-list that put this key */
};

struct lb_mirror {
    char prefix[LB_PREFIX_MAX];
    struct lb_update_sink sink;
    struct mirror_entry **buckets;
    size_t n_buckets; /* power of two */
    size_t n_entries;
    uint64_t generation;
    uint64_t updates;
    uint64_t bad_values;
};

static uint64_t hash_key(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return h;
}

int lb_mirror_new(const char *prefix, const struct lb_update_sink *sink, struct lb_mirror **out)
{
    struct lb_mirror *m;

    *out = NULL;
    if (strlen(prefix) >= LB_PREFIX_MAX)
        return -EINVAL;
    m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->n_buckets = 64;
    m->buckets = calloc(m->n_buckets, sizeof(*m->buckets));
    if (!m->buckets) {
        free(m);
        return -ENOMEM;
    }
    strcpy(m->prefix, prefix);
    m->sink = *sink;
    *out = m;
    return 0;
}

static void entry_free(struct mirror_entry *e)
{
    free(e->key);
    free(e->raw);
    free(e);
}

void lb_mirror_free(struct lb_mirror *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_buckets; i++) {
        struct mirror_entry *e = m->buckets[i], *next;

        for (; e; e = next) {
            next = e->next;
            entry_free(e);
        }
    }
    free(m->buckets);
    free(m);
}

static struct mirror_entry **find_slot(struct lb_mirror *m, const char *key, size_t len,
                                       uint64_t hash)
{
    struct mirror_entry **slot = &m->buckets[hash & (m->n_buckets - 1)];

    for (; *slot; slot = &(*slot)->next)
        if ((*slot)->hash == hash && (*slot)->key_len == len && memcmp((*slot)->key, key, len) == 0)
            break;
    return slot;
}

/* Doubles the table when it is full; failing to grow only makes chains longer. */
static void maybe_grow(struct lb_mirror *m)
{
    size_t n = m->n_buckets * 2;
    struct mirror_entry **b;

    if (m->n_entries < m->n_buckets)
        return;
    b = calloc(n, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < m->n_buckets; i++) {
        struct mirror_entry *e = m->buckets[i], *next;

        for (; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = n;
}

static void deliver(struct lb_mirror *m, struct lb_update *u, const struct mirror_entry *e)
{
    u->pool = e->parsed.pool;
    u->id = e->parsed.kind == LB_KEY_CONFIG ? NULL : e->parsed.id;
    m->sink.apply(m->sink.ctx, u);
    m->updates++;
}

/* Parses e->raw by key kind into u; 0 or -EINVAL with *err. */
static int parse_value(const struct mirror_entry *e, struct lb_update *u, char **err)
{
    memset(u, 0, sizeof(*u));
    switch (e->parsed.kind) {
    case LB_KEY_BACKEND:
        u->kind = LB_UPDATE_BACKEND_PUT;
        return lb_value_parse_backend(e->raw, e->raw_len, &u->u.backend, err);
    case LB_KEY_CONFIG:
        u->kind = LB_UPDATE_POLICY_PUT;
        return lb_value_parse_policy(e->raw, e->raw_len, &u->u.policy, err);
    case LB_KEY_OVERRIDE:
        u->kind = LB_UPDATE_OVERRIDE_PUT;
        return lb_value_parse_override(e->raw, e->raw_len, &u->u.override, err);
    }
    return -EINVAL;
}

static void log_refused(const char *msg, const struct mirror_entry *e, const char *err)
{
    char qkey[256], qerr[512];

    LB_WARN("watcher", "msg=\"%s\" key=%s error=%s", msg, lb_log_quote(qkey, sizeof(qkey), e->key),
            lb_log_quote(qerr, sizeof(qerr), err ? err : "out of memory"));
}

static int new_entry(struct lb_mirror *m, const char *key, size_t key_len, uint64_t hash,
                     struct mirror_entry **out)
{
    struct mirror_entry *e;
    char *err = NULL;
    int rc;

    *out = NULL;
    e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    rc = lb_key_parse(m->prefix, key, key_len, &e->parsed, &err);
    if (rc == -ENOENT) {
        if (lb_log_enabled(LB_LOG_DEBUG)) {
            char qkey[256], *copy = strndup(key, key_len);

            LB_DEBUG("watcher", "msg=\"key outside the schema, ignored\" key=%s",
                     copy ? lb_log_quote(qkey, sizeof(qkey), copy) : "?");
            free(copy);
        }
        free(e);
        return 0;
    }
    if (m->n_entries >= LB_MIRROR_MAX_KEYS) {
        free(err);
        free(e);
        return -E2BIG;
    }
    e->key = malloc(key_len + 1);
    if (!e->key) {
        free(err);
        free(e);
        return -ENOMEM;
    }
    memcpy(e->key, key, key_len);
    e->key[key_len] = '\0';
    e->key_len = key_len;
    e->hash = hash;
    e->key_valid = rc == 0;
    if (rc) {
        log_refused("bad key, skipped", e, err);
        m->bad_values++;
    }
    free(err);
    maybe_grow(m);
    *find_slot(m, key, key_len, hash) = e;
    m->n_entries++;
    *out = e;
    return 0;
}

int lb_mirror_put(struct lb_mirror *m, const char *key, size_t key_len, const char *value,
                  size_t value_len, int64_t mod_revision)
{
    uint64_t hash = hash_key(key, key_len);
    struct mirror_entry *e = *find_slot(m, key, key_len, hash);
    struct lb_update u;
    char *err = NULL, *raw;
    int rc;

    if (e && e->raw && e->raw_len == value_len && memcmp(e->raw, value, value_len) == 0) {
        e->mod_revision = mod_revision;
        e->generation = m->generation;
        return 0; /* unchanged */
    }
    if (!e) {
        rc = new_entry(m, key, key_len, hash, &e);
        if (rc || !e)
            return rc;
    }
    raw = malloc(value_len + 1);
    if (!raw)
        return -ENOMEM;
    memcpy(raw, value, value_len);
    raw[value_len] = '\0';
    free(e->raw);
    e->raw = raw;
    e->raw_len = value_len;
    e->mod_revision = mod_revision;
    e->generation = m->generation;
    if (!e->key_valid)
        return 0;
    rc = parse_value(e, &u, &err);
    if (rc) {
        log_refused(e->delivered ? "bad value, keeping the last good one" : "bad value, skipped", e,
                    err);
        m->bad_values++;
        free(err);
        return 0;
    }
    deliver(m, &u, e);
    e->delivered = true;
    return 1;
}

/* Unlinks e (found at *slot) and tells the sink when it knew the key. */
static int remove_entry(struct lb_mirror *m, struct mirror_entry **slot)
{
    struct mirror_entry *e = *slot;
    struct lb_update u;
    int n = 0;

    if (e->delivered) {
        memset(&u, 0, sizeof(u));
        u.kind = e->parsed.kind == LB_KEY_BACKEND  ? LB_UPDATE_BACKEND_DELETE
                 : e->parsed.kind == LB_KEY_CONFIG ? LB_UPDATE_POLICY_DELETE
                                                   : LB_UPDATE_OVERRIDE_DELETE;
        deliver(m, &u, e);
        n = 1;
    }
    *slot = e->next;
    m->n_entries--;
    entry_free(e);
    return n;
}

int lb_mirror_delete(struct lb_mirror *m, const char *key, size_t key_len)
{
    struct mirror_entry **slot = find_slot(m, key, key_len, hash_key(key, key_len));

    return *slot ? remove_entry(m, slot) : 0;
}

int lb_mirror_apply_events(struct lb_mirror *m, const struct lb_watch_msg *msg)
{
    int total = 0, rc;

    for (size_t i = 0; i < msg->n_events; i++) {
        const struct lb_etcd_kv *kv = &msg->events[i].kv;

        if (msg->events[i].deleted)
            rc = lb_mirror_delete(m, kv->key, kv->key_len);
        else
            rc = lb_mirror_put(m, kv->key, kv->key_len, kv->value, kv->value_len, kv->mod_revision);
        if (rc < 0)
            return rc;
        total += rc;
    }
    return total;
}

void lb_mirror_relist_begin(struct lb_mirror *m)
{
    m->generation++;
}

int lb_mirror_relist_end(struct lb_mirror *m)
{
    int total = 0;

    for (size_t i = 0; i < m->n_buckets; i++) {
        struct mirror_entry **slot = &m->buckets[i];

        while (*slot) {
            if ((*slot)->generation != m->generation)
                total += remove_entry(m, slot); /* advances *slot */
            else
                slot = &(*slot)->next;
        }
    }
    return total;
}

void lb_mirror_get_stats(const struct lb_mirror *m, struct lb_mirror_stats *out)
{
    out->keys = m->n_entries;
    out->updates = m->updates;
    out->bad_values = m->bad_values;
}
