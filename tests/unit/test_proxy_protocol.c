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

/* Each header built here parses back to the same addresses, whole and cut short. */
static void test_parse_round_trip(void **state)
{
    struct sockaddr_in c, l;
    struct sockaddr_in6 c6, l6;
    const struct sockaddr *pairs[][2] = {{(void *)&c, (void *)&l}, {(void *)&c6, (void *)&l6}};
    enum lb_proxy_protocol versions[] = {LB_PROXY_V1, LB_PROXY_V2};

    v4(&c, "203.0.113.7", 51234);
    v4(&l, "10.0.0.1", 443);
    v6(&c6, "2001:db8::7", 40000);
    v6(&l6, "2001:db8::1", 80);
    for (size_t v = 0; v < 2; v++)
        for (size_t p = 0; p < 2; p++) {
            uint8_t buf[LB_PROXY_HEADER_MAX + 8];
            struct sockaddr_storage src, dst;
            int n = lb_proxy_protocol_build(versions[v], pairs[p][0], pairs[p][1], (char *)buf,
                                            sizeof(buf));

            assert_true(n > 0);
            memcpy(buf + n, "GET /", 5); /* client bytes after the header are not its */
            assert_int_equal(lb_proxy_protocol_parse(buf, (size_t)n + 5, &src, &dst), n);
            if (p == 0) {
                assert_memory_equal(&((struct sockaddr_in *)&src)->sin_addr, &c.sin_addr, 4);
                assert_int_equal(((struct sockaddr_in *)&src)->sin_port, c.sin_port);
                assert_int_equal(((struct sockaddr_in *)&dst)->sin_port, l.sin_port);
            } else {
                assert_memory_equal(&((struct sockaddr_in6 *)&src)->sin6_addr, &c6.sin6_addr, 16);
                assert_int_equal(((struct sockaddr_in6 *)&dst)->sin6_port, l6.sin6_port);
            }
            for (int k = 0; k < n; k++)
                assert_int_equal(lb_proxy_protocol_parse(buf, (size_t)k, &src, &dst), 0);
        }
}

static void test_parse_local_and_unknown(void **state)
{
    static const uint8_t local[16] = "\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    struct sockaddr_storage src, dst;
    const char *unknown = "PROXY UNKNOWN whatever follows\r\nhello";

    assert_int_equal(lb_proxy_protocol_parse(local, 16, &src, &dst), 16);
    assert_int_equal(src.ss_family, AF_UNSPEC);
    assert_int_equal(lb_proxy_protocol_parse((const uint8_t *)unknown, strlen(unknown), &src, &dst),
                     (int)strlen("PROXY UNKNOWN whatever follows\r\n"));
    assert_int_equal(src.ss_family, AF_UNSPEC);
}

static void test_parse_refuses(void **state)
{
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        "PROXY TCP4 ::1 ::1 1 2\r\n",
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    };
    uint8_t v2[16 + 12] = "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c";
    uint8_t longv1[200];
    struct sockaddr_storage src, dst;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(
            lb_proxy_protocol_parse((const uint8_t *)bad[i], strlen(bad[i]), &src, &dst), -EINVAL);
    /* No CRLF within 107 bytes. */
    memset(longv1, 'x', sizeof(longv1));
    memcpy(longv1, "PROXY TCP4 ", 11);
    assert_int_equal(lb_proxy_protocol_parse(longv1, sizeof(longv1), &src, &dst), -EINVAL);
    assert_int_equal(lb_proxy_protocol_parse(longv1, 100, &src, &dst), 0);
    /* v2: a valid one, then a bad version, command, too short for its family, too long. */
    assert_int_equal(lb_proxy_protocol_parse(v2, sizeof(v2), &src, &dst), 28);
    v2[12] = 0x11;
    assert_int_equal(lb_proxy_protocol_parse(v2, sizeof(v2), &src, &dst), -EINVAL);
    v2[12] = 0x22;
    assert_int_equal(lb_proxy_protocol_parse(v2, sizeof(v2), &src, &dst), -EINVAL);
    v2[12] = 0x21;
    v2[15] = 0x08;
    assert_int_equal(lb_proxy_protocol_parse(v2, sizeof(v2), &src, &dst), -EINVAL);
    v2[14] = 0x04; /* 16 + 1032 bytes: over the bound */
    assert_int_equal(lb_proxy_protocol_parse(v2, sizeof(v2), &src, &dst), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1),
        cmocka_unit_test(test_v2),
        cmocka_unit_test(test_parse_round_trip),
        cmocka_unit_test(test_parse_local_and_unknown),
        cmocka_unit_test(test_parse_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
