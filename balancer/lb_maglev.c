/*
 * Maglev consistent hashing of the client address (Eisenbud et al., NSDI
 * 2016), with weights as in Envoy's maglev load balancer.
 *
 * Each backend gets a permutation of the 65537 table slots from two hashes
 * of its id (offset, skip); backends take turns claiming their next free
 * slot until the table is full.  A backend's turns come in proportion to
 * its weight: one of weight w claims on iteration i only when
 * i * w >= its running target, which grows by the largest weight per claim.
 * When one of N backends leaves, its slots are refilled and only about 1/N
 * of the clients move; the others keep their backend.
 *
 * The table is built in init() over the entries eligible at that moment;
 * pick() is a hash of the client IP and one lookup.  When an entry leaves
 * the eligible set (down, drained) its slots stay and a pick landing on one
 * walks forward to the next eligible entry, as a retrying connection does
 * past the backends it tried: the clients of that backend spread over the
 * others, everyone else keeps their backend, and every replica with the
 * same view answers the same.  Changes the table cannot absorb that way (a
 * weight change, an entry joining, more than half the slots dead) ask the
 * pool to rebuild it once at its next publish.
 */
#include "algo.h"
#include "pool.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define MAGLEV_TABLE_SIZE 65537 /* prime, as the paper requires */
#define NO_SLOT           UINT32_MAX

struct maglev_state {
    size_t n;                         /* entries */
    size_t dead;                      /* slots whose entry is not eligible now */
    uint32_t *owned;                  /* per entry: slots it holds */
    uint32_t *built_weight;           /* per entry: its weight when the table was built */
    uint32_t slot[MAGLEV_TABLE_SIZE]; /* entry index, or NO_SLOT in an empty table */
};

/* 64-bit FNV-1a, then a murmur finaliser for better low bits. */
static uint64_t hash_bytes(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

struct build_entry {
    uint64_t offset, skip, next, target;
    uint64_t weight;
    uint32_t index; /* into snap->entries */
};

static void maglev_destroy(void *state)
{
    struct maglev_state *st = state;

    if (!st)
        return;
    free(st->owned);
    free(st->built_weight);
    free(st);
}

static int maglev_init(const struct lb_snapshot *snap, const struct lb_snapshot *prev, void **out)
{
    struct maglev_state *st = calloc(1, sizeof(*st));
    size_t n = snap->n_eligible, filled = 0;
    struct build_entry *e = NULL;
    uint64_t max_weight = 0;

    if (!st)
        return -ENOMEM;
    st->n = snap->n_entries;
    st->owned = calloc(st->n ? st->n : 1, sizeof(*st->owned));
    st->built_weight = calloc(st->n ? st->n : 1, sizeof(*st->built_weight));
    e = calloc(n ? n : 1, sizeof(*e));
    if (!st->owned || !st->built_weight || !e) {
        free(e);
        maglev_destroy(st);
        return -ENOMEM;
    }
    for (size_t i = 0; i < MAGLEV_TABLE_SIZE; i++)
        st->slot[i] = NO_SLOT;
    /* Entries in id order, whatever the order of the eligible set: the table
     * depends only on the ids and weights, the same on every replica. */
    for (size_t i = 0, k = 0; i < snap->n_entries; i++) {
        const struct lb_snap_entry *en = &snap->entries[i];
        const char *id = en->backend->id;

        st->built_weight[i] = en->weight;
        if (!en->weight)
            continue;
        e[k].index = (uint32_t)i;
        e[k].offset = hash_bytes(id, strlen(id), 0x5bd1e995) % MAGLEV_TABLE_SIZE;
        e[k].skip = hash_bytes(id, strlen(id), 0x27d4eb2f) % (MAGLEV_TABLE_SIZE - 1) + 1;
        e[k].weight = en->weight;
        if (e[k].weight > max_weight)
            max_weight = e[k].weight;
        k++;
    }
    for (uint64_t iteration = 1; n && filled < MAGLEV_TABLE_SIZE; iteration++) {
        for (size_t i = 0; i < n && filled < MAGLEV_TABLE_SIZE; i++) {
            uint64_t c;

            if (iteration * e[i].weight < e[i].target)
                continue;
            e[i].target += max_weight;
            do {
                c = (e[i].offset + e[i].skip * e[i].next) % MAGLEV_TABLE_SIZE;
                e[i].next++;
            } while (st->slot[c] != NO_SLOT);
            st->slot[c] = e[i].index;
            st->owned[e[i].index]++;
            filled++;
        }
    }
    free(e);
    *out = st;
    return 0;
}

static void maglev_set_weight(struct lb_snapshot *snap, size_t i, uint32_t old_weight)
{
    struct maglev_state *st = snap->algo_state;
    uint32_t w = snap->entries[i].weight;

    if (old_weight && !w) {
        st->dead += st->owned[i];
    } else if (!old_weight && w) {
        if (st->dead >= st->owned[i])
            st->dead -= st->owned[i];
    }
    /* A weight other than the built one (or a joiner without slots) needs
     * a new table for its share; so does a table that is mostly dead. */
    if ((w && w != st->built_weight[i]) || st->dead * 2 > MAGLEV_TABLE_SIZE)
        snap->algo_stale = true;
}

static uint64_t client_hash(const struct sockaddr *sa)
{
    if (!sa)
        return 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

        return hash_bytes(&s4->sin_addr, sizeof(s4->sin_addr), 0);
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;

        return hash_bytes(&s6->sin6_addr, sizeof(s6->sin6_addr), 0);
    }
    return 0;
}

static struct lb_backend *maglev_pick(struct lb_snapshot *snap, const struct lb_pick *p)
{
    struct maglev_state *st = snap->algo_state;
    size_t slot;

    if (snap->n_eligible == 0)
        return NULL;
    slot = client_hash(p->client) % MAGLEV_TABLE_SIZE;
    /* Forward from the client's slot to the first eligible entry it may use:
     * one step unless its backend is down, drained, tried or full. */
    for (size_t k = 0; k < MAGLEV_TABLE_SIZE; k++) {
        uint32_t i = st->slot[slot];
        const struct lb_snap_entry *e;

        slot = slot + 1 == MAGLEV_TABLE_SIZE ? 0 : slot + 1;
        if (i == NO_SLOT)
            continue;
        e = &snap->entries[i];
        if (e->weight && !(lb_pick_filters(p) && lb_pick_skips(p, e->backend)))
            return e->backend;
    }
    /* Eligible entries that joined since the table was built hold no slot. */
    for (size_t k = 0; k < snap->n_eligible; k++) {
        const struct lb_snap_entry *e = &snap->entries[snap->eligible[k]];

        if (!lb_pick_skips(p, e->backend))
            return e->backend;
    }
    return NULL;
}

const struct lb_algo_ops lb_algo_maglev = {
    .name = "maglev",
    .init = maglev_init,
    .set_weight = maglev_set_weight,
    .pick = maglev_pick,
    .destroy = maglev_destroy,
};
