/* PROXY protocol v1 and v2 headers, byte for byte against HAProxy's spec. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "proxy_protocol.h"

static void v4(struct sockaddr_in *sa, const char *ip, int port)
{
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &sa->sin_addr);
    sa->sin_port = htons((uint16_t)port);
}

static void v6(struct sockaddr_in6 *sa, const char *ip, int port)
{
    memset(sa, 0, sizeof(*sa));
    sa->sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &sa->sin6_addr);
    sa->sin6_port = htons((uint16_t)port);
}

static void test_v1(void **state)
{
    struct sockaddr_in c, l;
    struct sockaddr_in6 c6, l6;
    char buf[128];
    int n;

    v4(&c, "192.0.2.7", 51000);
    v4(&l, "127.0.0.1", 8080);
    n = lb_proxy_protocol_build(LB_PROXY_V1, (void *)&c, (void *)&l, buf, sizeof(buf));
    assert_int_equal(n, (int)strlen("PROXY TCP4 192.0.2.7 127.0.0.1 51000 8080\r\n"));
    assert_memory_equal(buf, "PROXY TCP4 192.0.2.7 127.0.0.1 51000 8080\r\n", (size_t)n);

    v6(&c6, "2001:db8::1", 40000);
    v6(&l6, "::1", 443);
    n = lb_proxy_protocol_build(LB_PROXY_V1, (void *)&c6, (void *)&l6, buf, sizeof(buf));
    assert_memory_equal(buf, "PROXY TCP6 2001:db8::1 ::1 40000 443\r\n", (size_t)n);

    n = lb_proxy_protocol_build(LB_PROXY_V1, (void *)&c, (void *)&l6, buf, sizeof(buf));
    assert_memory_equal(buf, "PROXY UNKNOWN\r\n", (size_t)n);
    assert_int_equal(lb_proxy_protocol_build(LB_PROXY_V1, (void *)&c, (void *)&l, buf, 10),
                     -ENOSPC);
}

static void test_v2(void **state)
{
    static const unsigned char expect4[] = {
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, /* signature */
        0x21, 0x11, 0x00, 0x0c,                                                 /* PROXY TCP4 12 */
        192,  0,    2,    7,    127,  0,    0,    1,                            /* src, dst */
        0xc7, 0x38, 0x1f, 0x90,                                                 /* 51000, 8080 */
    };
    struct sockaddr_in c, l;
    struct sockaddr_in6 c6, l6;
    unsigned char buf[128];
    int n;

    v4(&c, "192.0.2.7", 51000);
    v4(&l, "127.0.0.1", 8080);
    n = lb_proxy_protocol_build(LB_PROXY_V2, (void *)&c, (void *)&l, (char *)buf, sizeof(buf));
    assert_int_equal(n, sizeof(expect4));
    assert_memory_equal(buf, expect4, sizeof(expect4));

    v6(&c6, "2001:db8::1", 40000);
    v6(&l6, "::1", 443);
    n = lb_proxy_protocol_build(LB_PROXY_V2, (void *)&c6, (void *)&l6, (char *)buf, sizeof(buf));
    assert_int_equal(n, 16 + 36);
    assert_int_equal(buf[13], 0x21);
    assert_int_equal(buf[15], 36);
    assert_int_equal(buf[16], 0x20);
    assert_int_equal(buf[47], 0x01);
    assert_int_equal((buf[48] << 8) | buf[49], 40000);
    assert_int_equal((buf[50] << 8) | buf[51], 443);

    /* mixed families: LOCAL command, no addresses */
    n = lb_proxy_protocol_build(LB_PROXY_V2, (void *)&c, (void *)&l6, (char *)buf, sizeof(buf));
    assert_int_equal(n, 16);
    assert_int_equal(buf[12], 0x20);
    assert_int_equal(
        lb_proxy_protocol_build(LB_PROXY_NONE, (void *)&c, (void *)&l, (char *)buf, sizeof(buf)),
        -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1),
        cmocka_unit_test(test_v2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
