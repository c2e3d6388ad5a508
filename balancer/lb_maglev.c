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
 * The table is built in init() (when a snapshot is published); pick() is a
 * hash of the client IP and one lookup.  Clients of a retrying connection
 * walk forward in the table to the next backend not yet tried.
 */
#include "algo.h"
#include "pool.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define MAGLEV_TABLE_SIZE 65537 /* prime, as the paper requires */

struct maglev_state {
    uint32_t slot[MAGLEV_TABLE_SIZE]; /* index into snap->eligible */
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
};

static int maglev_init(struct lb_snapshot *snap, const struct lb_snapshot *prev)
{
    struct maglev_state *st;
    struct build_entry *e;
    size_t n = snap->n_eligible, filled = 0;
    uint64_t max_weight = 0;

    st = malloc(sizeof(*st));
    if (!st)
        return -ENOMEM;
    snap->algo_state = st;
    if (n == 0)
        return 0;
    e = calloc(n, sizeof(*e));
    if (!e) {
        free(st);
        snap->algo_state = NULL;
        return -ENOMEM;
    }
    for (size_t i = 0; i < MAGLEV_TABLE_SIZE; i++)
        st->slot[i] = UINT32_MAX;
    for (size_t i = 0; i < n; i++) {
        const char *id = snap->eligible[i]->id;

        e[i].offset = hash_bytes(id, strlen(id), 0x5bd1e995) % MAGLEV_TABLE_SIZE;
        e[i].skip = hash_bytes(id, strlen(id), 0x27d4eb2f) % (MAGLEV_TABLE_SIZE - 1) + 1;
        e[i].weight = (uint64_t)snap->eligible[i]->weight;
        if (e[i].weight > max_weight)
            max_weight = e[i].weight;
    }
    for (uint64_t iteration = 1; filled < MAGLEV_TABLE_SIZE; iteration++) {
        for (size_t i = 0; i < n && filled < MAGLEV_TABLE_SIZE; i++) {
            uint64_t c;

            if (iteration * e[i].weight < e[i].target)
                continue;
            e[i].target += max_weight;
            do {
                c = (e[i].offset + e[i].skip * e[i].next) % MAGLEV_TABLE_SIZE;
                e[i].next++;
            } while (st->slot[c] != UINT32_MAX);
            st->slot[c] = (uint32_t)i;
            filled++;
        }
    }
    free(e);
    return 0;
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
    if (!lb_pick_filters(p))
        return snap->eligible[st->slot[slot]];
    for (size_t k = 0; k < MAGLEV_TABLE_SIZE; k++) {
        struct lb_backend *b = snap->eligible[st->slot[(slot + k) % MAGLEV_TABLE_SIZE]];

        if (!lb_pick_skips(p, b))
            return b;
    }
    return NULL;
}

static void maglev_destroy(struct lb_snapshot *snap)
{
    free(snap->algo_state);
    snap->algo_state = NULL;
}

const struct lb_algo_ops lb_algo_maglev = {
    .name = "maglev",
    .init = maglev_init,
    .pick = maglev_pick,
    .destroy = maglev_destroy,
};
