/*
 * Where registered backends may point: never at lbd's own listeners (by
 * address, by a wildcard listener's port on any local address, by 0.0.0.0
 * or ::), and only inside --backend-networks when it is given.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "addr_policy.h"
#include "lb_addr.h"

static struct sockaddr_storage addr(const char *text)
{
    struct lb_hostport hp;
    struct sockaddr_storage ss;
    socklen_t len;
    const char *why;

    assert_int_equal(lb_addr_parse(text, true, &hp, &why), 0);
    assert_int_equal(lb_addr_to_sockaddr(&hp, &ss, &len), 0);
    return ss;
}

static const char *refuses(struct lb_addr_policy *p, const char *text)
{
    struct sockaddr_storage ss = addr(text);

    return lb_addr_policy_refuses(p, (struct sockaddr *)&ss);
}

static void own(struct lb_addr_policy *p, const char *text)
{
    struct sockaddr_storage ss = addr(text);

    assert_int_equal(lb_addr_policy_add_own(p, (struct sockaddr *)&ss), 0);
}

static void parse_fails(const char *text, const char *words)
{
    struct lb_hostport hp;
    const char *why = NULL;

    assert_int_equal(lb_addr_parse(text, false, &hp, &why), -EINVAL);
    assert_non_null(strstr(why, words));
}

static void test_parse_errors_say_what_to_write(void **state)
{
    parse_fails("8080", "a port alone is not an address");
    parse_fails("8080", "0.0.0.0:8080");
    parse_fails(":8080", "missing host");
    parse_fails(":8080", "127.0.0.1:8080");
    parse_fails("backend", "missing port");
    parse_fails("::1:80", "[addr]:port");
    parse_fails("h:0", "from 1 to 65535");
    parse_fails("h: 80", "from 1 to 65535"); /* a port is digits alone */
    parse_fails("h:+80", "from 1 to 65535");
    parse_fails("", "empty address");
}

static void test_own_listeners_are_refused(void **state)
{
    struct lb_addr_policy p = {0};

    own(&p, "127.0.0.1:9000");
    own(&p, "0.0.0.0:8080");
    own(&p, "[::1]:9100");
    assert_non_null(refuses(&p, "127.0.0.1:9000"));
    assert_non_null(refuses(&p, "0.0.0.0:9000")); /* this host, any listener */
    assert_non_null(refuses(&p, "[::]:9000"));
    assert_null(refuses(&p, "127.0.0.2:9000"));     /* another address: not lbd */
    assert_non_null(refuses(&p, "127.0.0.7:8080")); /* wildcard listener: all of 127/8 */
    assert_non_null(refuses(&p, "[::ffff:127.0.0.1]:8080"));
    assert_null(refuses(&p, "192.0.2.10:8080")); /* not local (TEST-NET-1) */
    assert_non_null(refuses(&p, "[::1]:9100"));
    assert_null(refuses(&p, "[::1]:9101"));
    assert_null(refuses(&p, "10.1.2.3:80"));
    lb_addr_policy_free(&p);
}

static void test_backend_networks(void **state)
{
    struct lb_addr_policy p = {0};
    char *err = NULL;

    assert_int_equal(lb_addr_policy_set_networks(&p, "10.0.0.0/8, fd00::/8,192.0.2.7", &err), 0);
    assert_null(refuses(&p, "10.200.1.1:80"));
    assert_non_null(refuses(&p, "11.0.0.1:80"));
    assert_non_null(refuses(&p, "127.0.0.1:2379")); /* etcd on loopback stays out */
    assert_null(refuses(&p, "[fd12::1]:80"));
    assert_non_null(refuses(&p, "[fe80::1]:80"));
    assert_null(refuses(&p, "192.0.2.7:1"));
    assert_non_null(refuses(&p, "192.0.2.8:1"));
    assert_null(refuses(&p, "[::ffff:10.0.0.1]:80"));
    assert_int_equal(lb_addr_policy_set_networks(&p, "any", &err), 0);
    assert_null(refuses(&p, "127.0.0.1:2379"));
    assert_int_equal(lb_addr_policy_set_networks(&p, "10.0.0.0/33", &err), -EINVAL);
    assert_non_null(strstr(err, "10.0.0.0/33"));
    free(err);
    err = NULL;
    for (const char *const *bad =
             (const char *const[]){"10.0.0.0/+8", "10.0.0.0/ 8", "10.0.0.0/", NULL};
         *bad; bad++) {
        assert_int_equal(lb_addr_policy_set_networks(&p, *bad, &err), -EINVAL);
        free(err);
        err = NULL;
    }
    assert_int_equal(lb_addr_policy_set_networks(&p, "10.0.0.0/8,,", &err), -EINVAL);
    free(err);
    err = NULL;
    assert_int_equal(lb_addr_policy_set_networks(&p, "example.com", &err), -EINVAL);
    free(err);
    lb_addr_policy_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_errors_say_what_to_write),
        cmocka_unit_test(test_own_listeners_are_refused),
        cmocka_unit_test(test_backend_networks),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
