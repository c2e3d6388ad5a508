/*
 * The snapshot fixture (snapshot_fixture.h): builds struct lb_snapshot
 * exactly as balancer/pool.c does for a rebuild (entries in id order, one
 * backend reference each, eligible[] dense, the algorithm initialised with
 * the previous snapshot) and changes entries in place as its publish
 * does, but from weights and eligible flags a test states, not from
 * registrations, overrides and checks.  Any failure fails the test.
 */
#include "snapshot_fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void snap_fixture_init(struct snap_fixture *f, enum lb_algorithm algorithm)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->pool.name, sizeof(f->pool.name), "fixture");
    snprintf(f->pool.listen, sizeof(f->pool.listen), "127.0.0.1:1");
    lb_pool_policy_defaults(&f->pool.policy);
    f->pool.policy.algorithm = algorithm;
    f->algorithm = algorithm;
}

void snap_fixture_free(struct snap_fixture *f)
{
    lb_snapshot_free(f->snap);
    f->snap = f->pool.snap = NULL;
    for (size_t i = 0; i < f->n_members; i++) {
        lb_backend_retire(f->members[i].backend);
        lb_backend_unref(f->members[i].backend);
    }
    free(f->members);
    f->members = NULL;
    f->n_members = f->cap_members = 0;
}

/* Index of the first member with id >= `id`. */
static size_t member_lower_bound(const struct snap_fixture *f, const char *id)
{
    size_t lo = 0, hi = f->n_members;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (strcmp(f->members[mid].backend->id, id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct snap_fixture_member *member_find(const struct snap_fixture *f, const char *id)
{
    size_t i = member_lower_bound(f, id);

    if (i < f->n_members && strcmp(f->members[i].backend->id, id) == 0)
        return &f->members[i];
    return NULL;
}

static struct lb_backend *member_add(struct snap_fixture *f, const char *id, uint32_t weight,
                                     bool eligible)
{
    struct lb_backend_spec spec = {.weight = (int)weight};
    size_t i = member_lower_bound(f, id);
    struct lb_backend *b;

    assert_true(weight <= LB_WEIGHT_MAX);
    if (i < f->n_members && strcmp(f->members[i].backend->id, id) == 0)
        fail_msg("backend %s is already in the fixture", id);
    if (f->n_members == f->cap_members) {
        size_t cap = f->cap_members ? f->cap_members * 2 : 16;
        struct snap_fixture_member *v;

        assert_true(f->n_members < SNAP_FIXTURE_MAX);
        v = realloc(f->members, cap * sizeof(*v));
        assert_non_null(v);
        f->members = v;
        f->cap_members = cap;
    }
    snprintf(spec.addr, sizeof(spec.addr), "127.0.0.1:%u", 1024 + f->added++ % 60000);
    b = lb_backend_new(&f->pool, id, &spec);
    assert_non_null(b);
    assert_true(b->resolved);
    memmove(f->members + i + 1, f->members + i, (f->n_members - i) * sizeof(*f->members));
    f->members[i].backend = b;
    f->members[i].weight = weight;
    f->members[i].eligible = eligible;
    f->n_members++;
    return b;
}

struct lb_backend *snap_fixture_add(struct snap_fixture *f, const char *id, uint32_t weight)
{
    return member_add(f, id, weight, true);
}

struct lb_backend *snap_fixture_add_ineligible(struct snap_fixture *f, const char *id,
                                               uint32_t weight)
{
    return member_add(f, id, weight, false);
}

void snap_fixture_remove(struct snap_fixture *f, const char *id)
{
    struct snap_fixture_member *m = member_find(f, id);
    size_t i;

    if (!m)
        fail_msg("backend %s is not in the fixture", id);
    i = (size_t)(m - f->members);
    /* Removed from etcd: retired now, freed when the snapshot lets go. */
    lb_backend_retire(m->backend);
    lb_backend_unref(m->backend);
    memmove(f->members + i, f->members + i + 1, (f->n_members - i - 1) * sizeof(*f->members));
    f->n_members--;
}

void snap_fixture_set_algorithm(struct snap_fixture *f, enum lb_algorithm algorithm)
{
    f->algorithm = algorithm;
    f->pool.policy.algorithm = algorithm;
}

/* The weight m's entry gets: 0 when it is not eligible. */
static uint32_t member_weight(const struct snap_fixture_member *m)
{
    return m->eligible ? m->weight : 0;
}

struct lb_snapshot *snap_fixture_build(struct snap_fixture *f)
{
    size_t n = f->n_members;
    struct lb_snapshot *s = calloc(1, sizeof(*s)), *prev = f->snap;

    assert_non_null(s);
    s->entries = calloc(n ? n : 1, sizeof(*s->entries));
    s->eligible = calloc(n ? n : 1, sizeof(*s->eligible));
    assert_non_null(s->entries);
    assert_non_null(s->eligible);
    s->algo = lb_algo_for(f->algorithm);
    for (size_t i = 0; i < n; i++) {
        const struct snap_fixture_member *m = &f->members[i];
        struct lb_snap_entry *e = &s->entries[i];

        lb_backend_ref(m->backend);
        e->backend = m->backend;
        e->weight = member_weight(m);
        e->candidate = e->healthy = e->weight > 0;
        s->n_candidates += e->candidate;
        s->n_healthy += e->healthy;
        if (e->weight) {
            e->eligible_pos = (uint32_t)s->n_eligible;
            s->eligible[s->n_eligible++] = (uint32_t)i;
        }
    }
    s->n_entries = n;
    assert_int_equal(s->algo->init(s, prev, &s->algo_state), 0);
    for (size_t i = 0; i < n; i++)
        s->entries[i].backend->snap_index = i;
    f->snap = f->pool.snap = s;
    lb_snapshot_free(prev);
    return s;
}

struct lb_backend *snap_fixture_backend(const struct snap_fixture *f, const char *id)
{
    const struct snap_fixture_member *m = member_find(f, id);

    return m ? m->backend : NULL;
}

/* Brings member m's entry in line with its weight and flag, in place. */
static void member_refresh(struct snap_fixture *f, struct snap_fixture_member *m)
{
    struct lb_snapshot *s = f->snap;
    size_t i = m->backend->snap_index;
    struct lb_snap_entry *e;
    void *state = NULL;

    assert_non_null(s);
    if (i >= s->n_entries || s->entries[i].backend != m->backend)
        fail_msg("backend %s is not in the current snapshot (build first)", m->backend->id);
    e = &s->entries[i];
    m->backend->base_weight = (int)m->weight;
    if (e->candidate != (member_weight(m) > 0)) {
        e->candidate = e->healthy = member_weight(m) > 0;
        s->n_candidates = e->candidate ? s->n_candidates + 1 : s->n_candidates - 1;
        s->n_healthy = e->healthy ? s->n_healthy + 1 : s->n_healthy - 1;
    }
    lb_snapshot_set_weight(s, i, member_weight(m));
    if (s->algo_stale) { /* what the next publish does */
        assert_int_equal(s->algo->init(s, s, &state), 0);
        s->algo->destroy(s->algo_state);
        s->algo_state = state;
        s->algo_stale = false;
    }
}

void snap_fixture_set_weight(struct snap_fixture *f, const char *id, uint32_t weight)
{
    struct snap_fixture_member *m = member_find(f, id);

    if (!m)
        fail_msg("backend %s is not in the fixture", id);
    assert_true(weight <= LB_WEIGHT_MAX);
    m->weight = weight;
    member_refresh(f, m);
}

void snap_fixture_set_eligible(struct snap_fixture *f, const char *id, bool eligible)
{
    struct snap_fixture_member *m = member_find(f, id);

    if (!m)
        fail_msg("backend %s is not in the fixture", id);
    m->eligible = eligible;
    member_refresh(f, m);
}

struct lb_backend *snap_fixture_pick(struct snap_fixture *f, const struct lb_pick *p)
{
    static const struct lb_pick none;

    assert_non_null(f->snap);
    return f->snap->algo->pick(f->snap, p ? p : &none);
}
