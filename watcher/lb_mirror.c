/*
 * The mirror is a chained hash table keyed by the raw etcd key, holding
 * schema keys only.  Each entry remembers the raw bytes of the last value
 * seen (good or bad), which is all the diff needs: same bytes, no update,
 * no log line.  A value that could not be read at all (too large,
 * malformed) is remembered by its mod_revision instead, for the same
 * purpose.  The typed value is not kept; the sink owns that.  While the
 * last value seen is bad, the raw bytes of the last good one, which the
 * sink still serves, are kept beside it for lb_mirror_each(): a view handed
 * on (the state file, an upgrade) is what lbd serves.  A re-list
 * stamps every key it puts with the current generation; relist_end()
 * sweeps the unstamped ones.
 *
 * Every refusal goes through one lb_skip_log, so its counters are the
 * metrics and its limits bound the log however many keys are bad.
 */
#include "lb_mirror.h"
#include "lb_error.h"
#include "lb_key.h"
#include "lb_log.h"
#include "lb_value.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mirror_entry {
    struct mirror_entry *next; /* hash chain */
    uint64_t hash;
    char *key;
    size_t key_len;
    struct lb_key parsed;
    bool delivered; /* the sink holds a value for this key */
    bool bad;       /* the last value seen could not be used (invalid or unread) */
    char *raw;      /* last value seen, NUL-terminated; NULL when it could not be read */
    size_t raw_len;
    char *kept; /* what the sink holds when raw is not it (bad or unread since); else NULL */
    size_t kept_len;
    int64_t kept_revision;
    enum lb_skip_reason unread; /* why the value could not be read; LB_SKIP_REASONS: it could */
    int64_t mod_revision;
    uint64_t generation; /* last re-list that put this key */
};

#define NOT_OF_THE_SCHEMA "not <prefix>pools/<pool>/config, .../backends/<id> or .../overrides/<id>"

struct lb_mirror {
    char prefix[LB_PREFIX_MAX];
    struct lb_update_sink sink;
    struct mirror_entry **buckets;
    size_t n_buckets; /* power of two */
    size_t n_entries;
    uint64_t generation;
    uint64_t updates;
    uint64_t bad_values;
    size_t bad_keys[2]; /* entries whose last value is bad: [0] never good, [1] last good served */
    struct lb_skip_log log;
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
    lb_skip_log_init(&m->log);
    *out = m;
    return 0;
}

static void entry_free(struct mirror_entry *e)
{
    free(e->key);
    free(e->raw);
    free(e->kept);
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

/* Parses `value` by the entry's key kind into u; 0 or -EINVAL with *err. */
static int parse_value(const struct mirror_entry *e, const char *value, size_t len,
                       struct lb_update *u, struct lb_value_notes *notes, char **err)
{
    memset(u, 0, sizeof(*u));
    switch (e->parsed.kind) {
    case LB_KEY_BACKEND:
        u->kind = LB_UPDATE_BACKEND_PUT;
        return lb_value_parse_backend_noted(value, len, &u->u.backend, notes, err);
    case LB_KEY_CONFIG:
        u->kind = LB_UPDATE_POLICY_PUT;
        return lb_value_parse_policy_noted(value, len, &u->u.policy, notes, err);
    case LB_KEY_OVERRIDE:
        u->kind = LB_UPDATE_OVERRIDE_PUT;
        return lb_value_parse_override_noted(value, len, &u->u.override, notes, err);
    }
    return -EINVAL;
}

void lb_mirror_skip(struct lb_mirror *m, enum lb_skip_reason reason, const char *key,
                    size_t key_len, size_t key_size, const char *why)
{
    static const char *const msgs[LB_SKIP_REASONS] = {
        [LB_SKIP_KEY_TOO_LONG] = "key too long, skipped",
        [LB_SKIP_VALUE_TOO_LARGE] = "value too large, skipped",
        [LB_SKIP_MALFORMED] = "malformed etcd entry, skipped",
        [LB_SKIP_BAD_KEY] = "key outside the schema, skipped",
        [LB_SKIP_BAD_VALUE] = "bad value, skipped",
        [LB_SKIP_TOO_MANY_KEYS] = "too many keys, skipped",
    };

    if ((unsigned)reason < LB_SKIP_REASONS)
        lb_skip_note(&m->log, reason, msgs[reason], key, key_len, key_size, why);
}

/* The skip reason of a flawed kv. */
static enum lb_skip_reason flaw_reason(const struct lb_etcd_kv *kv)
{
    switch (kv->flaw) {
    case LB_ETCD_FLAW_KEY_TOO_LONG:
        return LB_SKIP_KEY_TOO_LONG;
    case LB_ETCD_FLAW_VALUE_TOO_LARGE:
        return LB_SKIP_VALUE_TOO_LARGE;
    default:
        return LB_SKIP_MALFORMED;
    }
}

static void skip_kv(struct lb_mirror *m, const struct lb_etcd_kv *kv)
{
    lb_mirror_skip(m, flaw_reason(kv), kv->key ? kv->key : "", kv->key ? kv->key_len : 0,
                   kv->key_size, kv->flaw_why);
}

/* The entry of a key, or NULL with the key skipped and counted when it is not of the schema. */
static int new_entry(struct lb_mirror *m, const char *key, size_t key_len, uint64_t hash,
                     struct mirror_entry **out)
{
    struct mirror_entry *e;
    struct lb_key parsed;
    char *err = NULL;
    int rc;

    *out = NULL;
    rc = lb_key_parse(m->prefix, key, key_len, &parsed, &err);
    if (rc) {
        lb_mirror_skip(m, LB_SKIP_BAD_KEY, key, key_len, key_len, err ? err : NOT_OF_THE_SCHEMA);
        free(err);
        return 0;
    }
    if (m->n_entries >= LB_MIRROR_MAX_KEYS) {
        lb_mirror_skip(m, LB_SKIP_TOO_MANY_KEYS, key, key_len, key_len,
                       "lbd tracks at most 1048576 schema keys");
        return 0;
    }
    e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->key = malloc(key_len + 1);
    if (!e->key) {
        free(e);
        return -ENOMEM;
    }
    memcpy(e->key, key, key_len);
    e->key[key_len] = '\0';
    e->key_len = key_len;
    e->hash = hash;
    e->parsed = parsed;
    e->unread = LB_SKIP_REASONS;
    maybe_grow(m);
    *find_slot(m, key, key_len, hash) = e;
    m->n_entries++;
    *out = e;
    return 0;
}

/* The entry of a key, made when new; NULL (and 0) when the key was skipped. */
static int entry_of(struct lb_mirror *m, const char *key, size_t key_len, struct mirror_entry **out)
{
    uint64_t hash = hash_key(key, key_len);

    *out = *find_slot(m, key, key_len, hash);
    return *out ? 0 : new_entry(m, key, key_len, hash, out);
}

/*
 * raw (NULL: unreadable) becomes e's last value seen.  The value the sink
 * holds stays on hand for lb_mirror_each(), so that a view handed on (the
 * state file, an upgrade) is what lbd serves: in raw while raw is that
 * value, moved to kept when a value the sink cannot take comes after it.
 */
static void entry_replace(struct mirror_entry *e, char *raw, size_t raw_len, int64_t mod_revision)
{
    if (e->delivered && !e->kept) {
        e->kept = e->raw;
        e->kept_len = e->raw_len;
        e->kept_revision = e->mod_revision;
    } else {
        free(e->raw);
    }
    e->raw = raw;
    e->raw_len = raw_len;
    e->mod_revision = mod_revision;
}

/* Whether e's last value seen is bad, counted by whether the sink serves a last good one. */
static void entry_set_bad(struct lb_mirror *m, struct mirror_entry *e, bool bad)
{
    if (e->bad)
        m->bad_keys[e->delivered]--;
    e->bad = bad;
    if (bad)
        m->bad_keys[e->delivered]++;
}

/* The sink took e's raw value: nothing else need be kept. */
static void entry_delivered(struct mirror_entry *e)
{
    free(e->kept);
    e->kept = NULL;
    e->kept_len = 0;
    e->delivered = true;
}

int lb_mirror_put(struct lb_mirror *m, const char *key, size_t key_len, const char *value,
                  size_t value_len, int64_t mod_revision)
{
    struct lb_value_notes notes;
    struct mirror_entry *e;
    struct lb_update u;
    char *err = NULL, *raw;
    int rc;

    rc = entry_of(m, key, key_len, &e);
    if (rc || !e)
        return rc;
    if (e->raw && e->raw_len == value_len && memcmp(e->raw, value, value_len) == 0) {
        e->mod_revision = mod_revision;
        e->generation = m->generation;
        return 0; /* unchanged */
    }
    raw = malloc(value_len + 1);
    if (!raw)
        return -ENOMEM;
    memcpy(raw, value, value_len);
    raw[value_len] = '\0';
    entry_replace(e, raw, value_len, mod_revision);
    e->unread = LB_SKIP_REASONS;
    e->generation = m->generation;
    notes.n = notes.n_unknown = 0;
    rc = parse_value(e, e->raw, e->raw_len, &u, &notes, &err);
    if (rc) {
        entry_set_bad(m, e, true);
        m->bad_values++;
        lb_skip_note(&m->log, LB_SKIP_BAD_VALUE,
                     e->delivered ? "bad value, keeping the last good one" : "bad value, skipped",
                     e->key, e->key_len, e->key_len, err ? err : "out of memory");
        free(err);
        return 0;
    }
    for (size_t i = 0; i < notes.n; i++)
        lb_skip_note_clamped(&m->log, e->key, e->key_len, notes.note[i].field, notes.note[i].given,
                             notes.note[i].used, notes.note[i].why);
    for (size_t i = 0; i < notes.n_unknown; i++)
        lb_skip_note_unknown(&m->log, e->key, e->key_len,
                             i < LB_VALUE_UNKNOWN_MAX ? notes.unknown[i] : NULL);
    entry_set_bad(m, e, false);
    deliver(m, &u, e);
    entry_delivered(e);
    return 1;
}

/*
 * A schema key whose value could not be read (kv->flaw, key_whole): a bad
 * value like any other, kept apart from good ones by its mod_revision.
 */
static int put_unread(struct lb_mirror *m, const struct lb_etcd_kv *kv)
{
    enum lb_skip_reason reason = flaw_reason(kv);
    struct mirror_entry *e;
    char msg[80], why[160];
    int rc;

    rc = entry_of(m, kv->key, kv->key_len, &e);
    if (rc || !e)
        return rc;
    e->generation = m->generation;
    if (e->unread == reason && e->mod_revision == kv->mod_revision)
        return 0; /* the same unreadable value, seen before */
    entry_replace(e, NULL, 0, kv->mod_revision);
    e->unread = reason;
    entry_set_bad(m, e, true);
    snprintf(msg, sizeof(msg), "%s, %s",
             reason == LB_SKIP_VALUE_TOO_LARGE ? "value too large" : "malformed etcd entry",
             e->delivered ? "keeping the last good one" : "skipped");
    if (reason == LB_SKIP_VALUE_TOO_LARGE && kv->value_size > 0)
        snprintf(why, sizeof(why), "%s (%zu bytes; lbd reads values up to %d)", kv->flaw_why,
                 kv->value_size, LB_VALUE_MAX);
    else
        snprintf(why, sizeof(why), "%s", kv->flaw_why ? kv->flaw_why : "");
    lb_skip_note(&m->log, reason, msg, e->key, e->key_len, e->key_len, why);
    return 0;
}

int lb_mirror_put_kv(struct lb_mirror *m, const struct lb_etcd_kv *kv)
{
    if (kv->flaw == LB_ETCD_FLAW_NONE)
        return lb_mirror_put(m, kv->key, kv->key_len, kv->value, kv->value_len, kv->mod_revision);
    if (kv->flaw != LB_ETCD_FLAW_KEY_TOO_LONG && kv->key_whole)
        return put_unread(m, kv);
    skip_kv(m, kv);
    return 0;
}

bool lb_mirror_screen(struct lb_mirror *m, const struct lb_etcd_kv *kv)
{
    struct lb_key parsed;
    char *err = NULL;

    if (kv->flaw != LB_ETCD_FLAW_NONE &&
        (kv->flaw == LB_ETCD_FLAW_KEY_TOO_LONG || !kv->key_whole)) {
        skip_kv(m, kv);
        return false;
    }
    if (*find_slot(m, kv->key, kv->key_len, hash_key(kv->key, kv->key_len)))
        return true;
    if (lb_key_parse(m->prefix, kv->key, kv->key_len, &parsed, &err) < 0) {
        lb_mirror_skip(m, LB_SKIP_BAD_KEY, kv->key, kv->key_len, kv->key_len,
                       err ? err : NOT_OF_THE_SCHEMA);
        free(err);
        return false;
    }
    return true;
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
    entry_set_bad(m, e, false);
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
        const struct lb_watch_event *ev = &msg->events[i];
        const struct lb_etcd_kv *kv = &ev->kv;

        if (kv->flaw != LB_ETCD_FLAW_NONE && ev->deleted) {
            skip_kv(m, kv); /* a delete lbd cannot read: nothing it knows can be meant */
            continue;
        }
        if (ev->deleted)
            rc = lb_mirror_delete(m, kv->key, kv->key_len);
        else
            rc = lb_mirror_put_kv(m, kv);
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

double lb_mirror_flush_log(struct lb_mirror *m)
{
    return lb_skip_log_flush(&m->log);
}

void lb_mirror_set_clock(struct lb_mirror *m, double (*clock)(void))
{
    m->log.clock = clock;
}

void lb_mirror_get_stats(const struct lb_mirror *m, struct lb_mirror_stats *out)
{
    out->keys = m->n_entries;
    out->updates = m->updates;
    out->bad_values = m->bad_values;
    out->bad_keys_never_good = m->bad_keys[0];
    out->bad_keys_last_good = m->bad_keys[1];
    memcpy(out->skipped, m->log.skipped, sizeof(out->skipped));
    out->clamped = m->log.clamped;
    out->unknown_fields = m->log.unknown_fields;
}

void lb_mirror_each(const struct lb_mirror *m,
                    void (*fn)(void *ctx, const struct lb_watcher_kv *kv), void *ctx)
{
    for (size_t i = 0; i < m->n_buckets; i++)
        for (const struct mirror_entry *e = m->buckets[i]; e; e = e->next) {
            struct lb_watcher_kv kv = {e->key, e->key_len, e->raw, e->raw_len, e->mod_revision};

            if (e->kept) {
                kv.value = e->kept;
                kv.value_len = e->kept_len;
                kv.mod_revision = e->kept_revision;
            }
            if (kv.value)
                fn(ctx, &kv);
        }
}
