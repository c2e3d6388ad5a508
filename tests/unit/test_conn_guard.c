/*
 * conn_guard: admission with shedding, the per-peer cap, the log limiter
 * and the request budget, as pure bookkeeping (no sockets).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "conn_guard.h"

#define N 40

static struct lb_conn_guard_entry e[N];

static struct lb_conn_peer peer(const char *ip)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(1234)};
    struct lb_conn_peer p;

    assert_int_equal(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
    lb_conn_peer_from_sockaddr(&p, (struct sockaddr *)&sa);
    return p;
}

/* Admits entry i from ip, closing any victim at once; returns the verdict. */
static enum lb_conn_verdict connect_from(struct lb_conn_guard *g, int i, const char *ip,
                                         int *victim)
{
    struct lb_conn_peer p = peer(ip);
    struct lb_conn_guard_entry *v;
    enum lb_conn_verdict r;

    lb_conn_guard_next_batch(g); /* each connection accepted in a run of its own */
    r = lb_conn_guard_admit(g, &p, &v);

    *victim = v ? (int)(v - e) : -1;
    if (v)
        lb_conn_guard_remove(g, v);
    if (r == LB_CONN_ADMIT || r == LB_CONN_SHED)
        lb_conn_guard_add(g, &e[i], &p);
    return r;
}

static void test_idle_flood_sheds_oldest_unproven_instead_of_refusing(void **state)
{
    struct lb_conn_guard g;
    int v;

    lb_conn_guard_init(&g, 8, 0);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(connect_from(&g, i, "127.0.0.2", &v), LB_CONN_ADMIT);
        assert_int_equal(v, -1);
    }
    /* full: each newcomer costs the oldest idle connection its slot */
    for (int i = 8; i < 20; i++) {
        assert_int_equal(connect_from(&g, i, "127.0.0.2", &v), LB_CONN_SHED);
        assert_int_equal(v, i - 8);
        assert_int_equal(g.count, 8);
    }
}

static void test_proven_connections_are_kept_and_newcomer_refused_when_all_proven(void **state)
{
    struct lb_conn_guard g;
    int v;

    lb_conn_guard_init(&g, 4, 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(connect_from(&g, i, "127.0.0.1", &v), LB_CONN_ADMIT);
    lb_conn_guard_set_proven(&g, &e[0], true);
    lb_conn_guard_set_proven(&g, &e[2], true);
    /* the operator's connections (0, 2) stay; the idle ones go, oldest first */
    assert_int_equal(connect_from(&g, 4, "127.0.0.3", &v), LB_CONN_SHED);
    assert_int_equal(v, 1);
    assert_int_equal(connect_from(&g, 5, "127.0.0.3", &v), LB_CONN_SHED);
    assert_int_equal(v, 3);
    lb_conn_guard_set_proven(&g, &e[4], true);
    lb_conn_guard_set_proven(&g, &e[5], true);
    /* real calls fill every slot: only now is a newcomer refused */
    assert_int_equal(connect_from(&g, 6, "127.0.0.3", &v), LB_CONN_REFUSE_TOTAL);
    assert_int_equal(v, -1);
    assert_int_equal(g.count, 4);
    /* one closes: room again */
    lb_conn_guard_remove(&g, &e[2]);
    assert_int_equal(connect_from(&g, 6, "127.0.0.3", &v), LB_CONN_ADMIT);
}

static void test_per_peer_cap_sheds_only_from_that_peer(void **state)
{
    struct lb_conn_guard g;
    struct lb_conn_peer a = peer("127.0.0.2");
    int v;

    lb_conn_guard_init(&g, 10, 3);
    assert_int_equal(connect_from(&g, 0, "127.0.0.1", &v), LB_CONN_ADMIT); /* oldest overall */
    for (int i = 1; i <= 3; i++)
        assert_int_equal(connect_from(&g, i, "127.0.0.2", &v), LB_CONN_ADMIT);
    assert_int_equal(lb_conn_guard_peer_count(&g, &a), 3);
    /* a fourth from 127.0.0.2 pushes out its own oldest, not 127.0.0.1's */
    assert_int_equal(connect_from(&g, 4, "127.0.0.2", &v), LB_CONN_SHED);
    assert_int_equal(v, 1);
    assert_int_equal(lb_conn_guard_peer_count(&g, &a), 3);
    for (int i = 2; i <= 4; i++)
        lb_conn_guard_set_proven(&g, &e[i], true);
    assert_int_equal(connect_from(&g, 5, "127.0.0.2", &v), LB_CONN_REFUSE_PEER);
    /* another address is not affected */
    assert_int_equal(connect_from(&g, 5, "127.0.0.3", &v), LB_CONN_ADMIT);
    assert_int_equal(v, -1);
    /* IPv6 and IPv4 addresses are peers of their own */
    {
        struct sockaddr_in6 sa6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
        struct lb_conn_peer p6;

        lb_conn_peer_from_sockaddr(&p6, (struct sockaddr *)&sa6);
        assert_int_equal(lb_conn_guard_peer_count(&g, &p6), 0);
    }
}

static void test_losing_proof_makes_a_connection_the_newest_candidate(void **state)
{
    struct lb_conn_guard g;
    int v;

    lb_conn_guard_init(&g, 3, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(connect_from(&g, i, "127.0.0.1", &v), LB_CONN_ADMIT);
    /* 0 served a request and waits for its next one: it is as old as that wait */
    lb_conn_guard_set_proven(&g, &e[0], true);
    lb_conn_guard_set_proven(&g, &e[0], false);
    assert_int_equal(connect_from(&g, 3, "127.0.0.1", &v), LB_CONN_SHED);
    assert_int_equal(v, 1);
    assert_int_equal(connect_from(&g, 4, "127.0.0.1", &v), LB_CONN_SHED);
    assert_int_equal(v, 2);
    assert_int_equal(connect_from(&g, 5, "127.0.0.1", &v), LB_CONN_SHED);
    assert_int_equal(v, 0);
    /* removing twice, or an entry never added, is harmless */
    lb_conn_guard_remove(&g, &e[0]);
    lb_conn_guard_remove(&g, &e[30]);
    assert_int_equal(g.count, 3);
}

static void test_flood_from_many_addresses_sheds_the_busiest_address_first(void **state)
{
    static const char *const flood[] = {"127.0.0.2", "127.0.0.3", "127.0.0.4"};
    struct lb_conn_guard g;
    int v;

    lb_conn_guard_init(&g, 8, 4);
    assert_int_equal(connect_from(&g, 0, "127.0.0.1", &v), LB_CONN_ADMIT); /* the kubelet */
    for (int i = 1; i < 8; i++)
        assert_int_equal(connect_from(&g, i, flood[i % 3], &v), LB_CONN_ADMIT);
    /* full, and the kubelet's connection is the oldest: the flood still pays for itself */
    for (int i = 8; i < 30; i++) {
        assert_int_equal(connect_from(&g, i, flood[i % 3], &v), LB_CONN_SHED);
        assert_true(v > 0);
        assert_true(e[v].linked == false);
    }
    assert_true(e[0].linked);
}

static void test_connections_of_the_current_batch_are_not_shed(void **state)
{
    struct lb_conn_guard g;
    struct lb_conn_peer p = peer("127.0.0.2"), q = peer("127.0.0.1");
    struct lb_conn_guard_entry *v;

    lb_conn_guard_init(&g, 3, 0);
    lb_conn_guard_next_batch(&g);
    lb_conn_guard_add(&g, &e[0], &p);
    lb_conn_guard_next_batch(&g);
    /* one run accepts the probe and a burst: the probe's request is read in that run */
    assert_int_equal(lb_conn_guard_admit(&g, &q, &v), LB_CONN_ADMIT);
    lb_conn_guard_add(&g, &e[1], &q);
    assert_int_equal(lb_conn_guard_admit(&g, &p, &v), LB_CONN_ADMIT);
    lb_conn_guard_add(&g, &e[2], &p);
    assert_int_equal(lb_conn_guard_admit(&g, &p, &v), LB_CONN_SHED);
    assert_ptr_equal(v, &e[0]); /* from an earlier run */
    lb_conn_guard_remove(&g, v);
    lb_conn_guard_add(&g, &e[3], &p);
    assert_int_equal(lb_conn_guard_admit(&g, &p, &v), LB_CONN_REFUSE_TOTAL);
    assert_null(v);
    /* the next run may shed them: 127.0.0.2 holds the most */
    lb_conn_guard_next_batch(&g);
    assert_int_equal(lb_conn_guard_admit(&g, &q, &v), LB_CONN_SHED);
    assert_ptr_equal(v, &e[2]);
}

static void test_a_burst_in_the_same_run_gives_a_slot_to_a_lighter_address(void **state)
{
    struct lb_conn_guard g;
    struct lb_conn_peer p = peer("127.0.0.2"), r = peer("127.0.0.3"), q = peer("127.0.0.1");
    struct lb_conn_guard_entry *v;

    lb_conn_guard_init(&g, 4, 0);
    lb_conn_guard_next_batch(&g);
    /* one run accepts a burst from two addresses, then the operator */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(lb_conn_guard_admit(&g, i < 3 ? &p : &r, &v), LB_CONN_ADMIT);
        lb_conn_guard_add(&g, &e[i], i < 3 ? &p : &r);
    }
    assert_int_equal(lb_conn_guard_admit(&g, &q, &v), LB_CONN_SHED);
    assert_ptr_equal(v, &e[2]); /* the newest of the address holding the most */
    lb_conn_guard_remove(&g, v);
    lb_conn_guard_add(&g, &e[4], &q);
    /* 127.0.0.2 now holds 2, 127.0.0.3 and the operator 1 each: nobody holds two more */
    assert_int_equal(lb_conn_guard_admit(&g, &r, &v), LB_CONN_REFUSE_TOTAL);
    assert_int_equal(lb_conn_guard_admit(&g, &q, &v), LB_CONN_REFUSE_TOTAL);
    assert_int_equal(lb_conn_guard_admit(&g, &p, &v), LB_CONN_REFUSE_TOTAL);
    /* a fourth address still gets in, once */
    struct lb_conn_peer s = peer("127.0.0.4");

    assert_int_equal(lb_conn_guard_admit(&g, &s, &v), LB_CONN_SHED);
    assert_ptr_equal(v, &e[1]);
    lb_conn_guard_remove(&g, v);
    lb_conn_guard_add(&g, &e[5], &s);
    assert_true(e[4].linked && !e[4].shed); /* the operator keeps its slot */
}

static void test_rate_log_one_line_per_interval_with_a_count(void **state)
{
    struct lb_rate_log l;

    lb_rate_log_init(&l, 1.0);
    assert_int_equal(lb_rate_log_hit(&l, 10.0), 1); /* the first is told at once */
    for (int i = 0; i < 500; i++)
        assert_int_equal(lb_rate_log_hit(&l, 10.0 + i * 0.001), 0);
    assert_int_equal(lb_rate_log_flush(&l, 10.5), 0); /* not yet */
    assert_true(lb_rate_log_next(&l) == 11.0);
    assert_int_equal(lb_rate_log_flush(&l, 11.0), 500);
    assert_int_equal(lb_rate_log_flush(&l, 12.5), 0); /* nothing held */
    assert_int_equal(lb_rate_log_hit(&l, 11.5), 0);
    assert_int_equal(lb_rate_log_hit(&l, 12.0), 2); /* the held one and this one */
}

static void test_request_budget_per_connection_and_server_with_a_reserve(void **state)
{
    const struct lb_request_budget b = {.conn_max = 4096, .conn_reserve = 256, .server_max = 10000};

    assert_true(lb_request_budget_fits(&b, 0, 0, 4096));
    assert_false(lb_request_budget_fits(&b, 0, 0, 4097));
    assert_false(lb_request_budget_fits(&b, 4000, 0, 97)); /* the connection's own cap */
    assert_true(lb_request_budget_fits(&b, 4000, 0, 96));
    /* the server is full: big requests wait, a small one still fits in the reserve */
    assert_false(lb_request_budget_fits(&b, 0, 10000, 257));
    assert_true(lb_request_budget_fits(&b, 0, 10000, 256));
    assert_false(lb_request_budget_fits(&b, 200, 10000, 57));
    assert_true(lb_request_budget_fits(&b, 200, 9000, 1000));
    assert_false(lb_request_budget_fits(&b, 0, 0, SIZE_MAX)); /* no overflow */
    assert_false(lb_request_budget_fits(&b, 300, SIZE_MAX - 5, 10));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_flood_sheds_oldest_unproven_instead_of_refusing),
        cmocka_unit_test(test_proven_connections_are_kept_and_newcomer_refused_when_all_proven),
        cmocka_unit_test(test_per_peer_cap_sheds_only_from_that_peer),
        cmocka_unit_test(test_losing_proof_makes_a_connection_the_newest_candidate),
        cmocka_unit_test(test_flood_from_many_addresses_sheds_the_busiest_address_first),
        cmocka_unit_test(test_connections_of_the_current_batch_are_not_shed),
        cmocka_unit_test(test_a_burst_in_the_same_run_gives_a_slot_to_a_lighter_address),
        cmocka_unit_test(test_rate_log_one_line_per_interval_with_a_count),
        cmocka_unit_test(test_request_budget_per_connection_and_server_with_a_reserve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
