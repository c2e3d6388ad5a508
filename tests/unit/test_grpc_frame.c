/* gRPC framing: encoder, incremental decoder, grpc-message, grpc-timeout. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "lb_grpc_frame.h"

#define MAX_SEEN 16

struct seen {
    size_t n;
    size_t len[MAX_SEEN];
    uint8_t *data[MAX_SEEN];
    bool compressed[MAX_SEEN];
    int fail_at; /* return -ECANCELED on this message (1-based), 0 = never */
};

static int collect(void *ud, const uint8_t *data, size_t len, bool compressed)
{
    struct seen *s = ud;

    assert_true(s->n < MAX_SEEN);
    s->data[s->n] = malloc(len ? len : 1);
    assert_non_null(s->data[s->n]);
    memcpy(s->data[s->n], data, len);
    s->len[s->n] = len;
    s->compressed[s->n] = compressed;
    s->n++;
    if (s->fail_at && (int)s->n == s->fail_at)
        return -ECANCELED;
    return 0;
}

static void seen_free(struct seen *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->data[i]);
    memset(s, 0, sizeof(*s));
}

/* Encodes three messages (one empty) back to back. */
static void encode_three(struct lb_buf *out)
{
    lb_buf_init(out, 1 << 20);
    assert_int_equal(lb_grpc_frame_encode(out, "hello", 5), 0);
    assert_int_equal(lb_grpc_frame_encode(out, "", 0), 0);
    assert_int_equal(lb_grpc_frame_encode(out, "\x0a\x03web", 5), 0);
    assert_int_equal(out->len, 3 * 5 + 10);
}

static void check_three(const struct seen *s)
{
    assert_int_equal(s->n, 3);
    assert_int_equal(s->len[0], 5);
    assert_memory_equal(s->data[0], "hello", 5);
    assert_int_equal(s->len[1], 0);
    assert_int_equal(s->len[2], 5);
    assert_memory_equal(s->data[2], "\x0a\x03web", 5);
    assert_false(s->compressed[0]);
}

static void test_round_trip(void **state)
{
    struct lb_buf buf;
    struct lb_grpc_decoder d;
    struct seen s = {0};

    encode_three(&buf);
    assert_memory_equal(buf.data, "\0\0\0\0\5hello\0\0\0\0\0", 15);
    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, buf.data, buf.len, collect, &s), 0);
    assert_int_equal(lb_grpc_decoder_finish(&d), 0);
    check_three(&s);
    assert_int_equal(d.messages, 3);
    seen_free(&s);
    lb_grpc_decoder_free(&d);
    lb_buf_free(&buf);
}

static void test_arbitrary_chunks(void **state)
{
    struct lb_buf buf;

    encode_three(&buf);
    /* every chunk size, and a pseudo-random slicing */
    for (size_t chunk = 1; chunk <= buf.len; chunk++) {
        struct lb_grpc_decoder d;
        struct seen s = {0};

        lb_grpc_decoder_init(&d, 64, false);
        for (size_t off = 0; off < buf.len; off += chunk) {
            size_t n = buf.len - off < chunk ? buf.len - off : chunk;

            assert_int_equal(lb_grpc_decoder_feed(&d, buf.data + off, n, collect, &s), 0);
        }
        assert_int_equal(lb_grpc_decoder_finish(&d), 0);
        check_three(&s);
        seen_free(&s);
        lb_grpc_decoder_free(&d);
    }
    for (unsigned seed = 1; seed < 50; seed++) {
        struct lb_grpc_decoder d;
        struct seen s = {0};
        size_t off = 0;

        srand(seed);
        lb_grpc_decoder_init(&d, 64, false);
        while (off < buf.len) {
            size_t n = (size_t)rand() % 4; /* zero-length feeds included */

            if (n > buf.len - off)
                n = buf.len - off;
            assert_int_equal(lb_grpc_decoder_feed(&d, buf.data + off, n, collect, &s), 0);
            off += n;
        }
        assert_int_equal(lb_grpc_decoder_finish(&d), 0);
        check_three(&s);
        seen_free(&s);
        lb_grpc_decoder_free(&d);
    }
    lb_buf_free(&buf);
}

static void test_truncated(void **state)
{
    struct lb_grpc_decoder d;
    struct seen s = {0};

    /* cut inside the prefix */
    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\0\0\0", 3, collect, &s), 0);
    assert_false(lb_grpc_decoder_is_idle(&d));
    assert_int_equal(lb_grpc_decoder_finish(&d), -EBADMSG);
    lb_grpc_decoder_free(&d);

    /* cut inside the body */
    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\0\0\0\0\5hel", 8, collect, &s), 0);
    assert_int_equal(lb_grpc_decoder_finish(&d), -EBADMSG);
    assert_int_equal(s.n, 0);
    lb_grpc_decoder_free(&d);

    /* empty stream is clean */
    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_finish(&d), 0);
    lb_grpc_decoder_free(&d);
}

static void test_oversized(void **state)
{
    struct lb_grpc_decoder d;
    struct seen s = {0};

    lb_grpc_decoder_init(&d, 4, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\0\0\0\0\4abcd", 9, collect, &s), 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\0\0\0\0\5", 5, collect, &s), -EMSGSIZE);
    /* sticky */
    assert_int_equal(lb_grpc_decoder_feed(&d, "", 0, collect, &s), -EMSGSIZE);
    assert_int_equal(lb_grpc_decoder_finish(&d), -EMSGSIZE);
    seen_free(&s);
    lb_grpc_decoder_free(&d);

    /* a huge declared length is refused before any allocation */
    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\0\xff\xff\xff\xff", 5, collect, &s), -EMSGSIZE);
    assert_null(d.msg.data);
    lb_grpc_decoder_free(&d);

    /* exactly the default maximum is fine */
    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\0\0\x40\0\0", 5, collect, &s), 0);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\0\0\x40\0\1", 0, collect, &s), 0);
    lb_grpc_decoder_free(&d);
    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\0\0\x40\0\1", 5, collect, &s), -EMSGSIZE);
    lb_grpc_decoder_free(&d);
}

static void test_zero_length(void **state)
{
    struct lb_grpc_decoder d;
    struct seen s = {0};

    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\0\0\0\0\0", 5, collect, &s), 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.len[0], 0);
    assert_true(lb_grpc_decoder_is_idle(&d));
    assert_int_equal(lb_grpc_decoder_finish(&d), 0);
    seen_free(&s);
    lb_grpc_decoder_free(&d);
}

static void test_compressed_flag(void **state)
{
    struct lb_grpc_decoder d;
    struct seen s = {0};

    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\1\0\0\0\1x", 6, collect, &s), -EPROTO);
    assert_int_equal(s.n, 0);
    lb_grpc_decoder_free(&d);

    lb_grpc_decoder_init(&d, 0, true);
    assert_int_equal(lb_grpc_decoder_feed(&d, "\1\0\0\0\1x", 6, collect, &s), 0);
    assert_int_equal(s.n, 1);
    assert_true(s.compressed[0]);
    /* flags other than 0 and 1 are never valid */
    assert_int_equal(lb_grpc_decoder_feed(&d, "\2\0\0\0\0", 5, collect, &s), -EPROTO);
    seen_free(&s);
    lb_grpc_decoder_free(&d);
}

static void test_callback_stops(void **state)
{
    struct lb_grpc_decoder d;
    struct lb_buf buf;
    struct seen s = {.fail_at = 2};

    encode_three(&buf);
    lb_grpc_decoder_init(&d, 0, false);
    assert_int_equal(lb_grpc_decoder_feed(&d, buf.data, buf.len, collect, &s), -ECANCELED);
    assert_int_equal(s.n, 2);
    seen_free(&s);
    lb_grpc_decoder_free(&d);
    lb_buf_free(&buf);
}

static void test_encode_bounded(void **state)
{
    struct lb_buf buf;

    lb_buf_init(&buf, 8);
    assert_int_equal(lb_grpc_frame_encode(&buf, "abc", 3), 0);
    /* does not fit: nothing of it is left behind */
    assert_int_equal(lb_grpc_frame_encode(&buf, "abc", 3), -E2BIG);
    assert_int_equal(buf.len, 8);
    lb_buf_free(&buf);
}

static void test_percent(void **state)
{
    char out[64];
    char small[8];

    assert_int_equal(lb_grpc_percent_encode("ok", 2, out, sizeof(out)), 2);
    assert_string_equal(out, "ok");
    lb_grpc_percent_encode("100% broken\n", 12, out, sizeof(out));
    assert_string_equal(out, "100%25 broken%0A");
    lb_grpc_percent_encode("caf\xc3\xa9", 5, out, sizeof(out));
    assert_string_equal(out, "caf%C3%A9");
    /* an escape is never split when the output is short */
    assert_int_equal(lb_grpc_percent_encode("ab\ncd", 5, small, 5), 2);
    assert_string_equal(small, "ab");
    assert_int_equal(lb_grpc_percent_encode("ab\ncd", 5, small, 6), 5);
    assert_string_equal(small, "ab%0A");

    lb_grpc_percent_decode("100%25 broken%0A", 16, out, sizeof(out));
    assert_string_equal(out, "100% broken\n");
    lb_grpc_percent_decode("caf%c3%a9", 9, out, sizeof(out));
    assert_string_equal(out, "caf\xc3\xa9");
    /* malformed escapes stay literal, %00 is dropped */
    lb_grpc_percent_decode("50% off %zz %4", 14, out, sizeof(out));
    assert_string_equal(out, "50% off %zz %4");
    lb_grpc_percent_decode("a%00b", 5, out, sizeof(out));
    assert_string_equal(out, "ab");
    /* bounded output */
    assert_int_equal(lb_grpc_percent_decode("abcdefghijkl", 12, small, sizeof(small)), 7);
    assert_string_equal(small, "abcdefg");

    /* round trip of every byte */
    {
        char in[255], enc[1024], dec[512];

        for (int i = 0; i < 255; i++)
            in[i] = (char)(i + 1);
        lb_grpc_percent_encode(in, sizeof(in), enc, sizeof(enc));
        assert_int_equal(lb_grpc_percent_decode(enc, strlen(enc), dec, sizeof(dec)), 255);
        assert_memory_equal(in, dec, 255);
    }
}

static void test_timeout(void **state)
{
    int64_t ms = -1;
    char buf[32];

    assert_int_equal(lb_grpc_timeout_parse("3S", 2, &ms), 0);
    assert_int_equal(ms, 3000);
    assert_int_equal(lb_grpc_timeout_parse("3010m", 5, &ms), 0);
    assert_int_equal(ms, 3010);
    assert_int_equal(lb_grpc_timeout_parse("2M", 2, &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(lb_grpc_timeout_parse("1H", 2, &ms), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(lb_grpc_timeout_parse("1500u", 5, &ms), 0);
    assert_int_equal(ms, 2);
    assert_int_equal(lb_grpc_timeout_parse("1n", 2, &ms), 0);
    assert_int_equal(ms, 1);
    assert_int_equal(lb_grpc_timeout_parse("0m", 2, &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(lb_grpc_timeout_parse("99999999H", 9, &ms), 0);
    assert_int_equal(ms, 99999999LL * 3600 * 1000);
    /* not NUL-terminated: only len bytes count */
    assert_int_equal(lb_grpc_timeout_parse("5Sjunk", 2, &ms), 0);
    assert_int_equal(ms, 5000);

    assert_int_equal(lb_grpc_timeout_parse("", 0, &ms), -EINVAL);
    assert_int_equal(lb_grpc_timeout_parse("S", 1, &ms), -EINVAL);
    assert_int_equal(lb_grpc_timeout_parse("100", 3, &ms), -EINVAL);
    assert_int_equal(lb_grpc_timeout_parse("123456789S", 10, &ms), -EINVAL); /* 9 digits */
    assert_int_equal(lb_grpc_timeout_parse("1s", 2, &ms), -EINVAL);
    assert_int_equal(lb_grpc_timeout_parse("-1S", 3, &ms), -EINVAL);
    assert_int_equal(lb_grpc_timeout_parse(" 1S", 3, &ms), -EINVAL);

    assert_string_equal(lb_grpc_timeout_format(5000, buf, sizeof(buf)), "5000m");
    assert_string_equal(lb_grpc_timeout_format(0, buf, sizeof(buf)), "1m");
    assert_string_equal(lb_grpc_timeout_format(100000000, buf, sizeof(buf)), "100000S");
    assert_int_equal(lb_grpc_timeout_parse(buf, strlen(buf), &ms), 0);
    assert_int_equal(ms, 100000000);
}

static void test_content_type(void **state)
{
    assert_true(lb_grpc_content_type_is_grpc("application/grpc", 16));
    assert_true(lb_grpc_content_type_is_grpc("application/grpc+proto", 22));
    assert_true(lb_grpc_content_type_is_grpc("application/grpc;charset=x", 26));
    assert_false(lb_grpc_content_type_is_grpc("application/grpcx", 17));
    assert_false(lb_grpc_content_type_is_grpc("application/json", 16));
    assert_false(lb_grpc_content_type_is_grpc("application/grpc", 10));
    assert_false(lb_grpc_content_type_is_grpc("", 0));
}

static void test_status_names(void **state)
{
    assert_string_equal(lb_grpc_status_name(0), "OK");
    assert_string_equal(lb_grpc_status_name(5), "NOT_FOUND");
    assert_string_equal(lb_grpc_status_name(16), "UNAUTHENTICATED");
    assert_string_equal(lb_grpc_status_name(17), "UNKNOWN_STATUS");
    assert_string_equal(lb_grpc_status_name(-1), "UNKNOWN_STATUS");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),     cmocka_unit_test(test_arbitrary_chunks),
        cmocka_unit_test(test_truncated),      cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_zero_length),    cmocka_unit_test(test_compressed_flag),
        cmocka_unit_test(test_callback_stops), cmocka_unit_test(test_encode_bounded),
        cmocka_unit_test(test_percent),        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_content_type),   cmocka_unit_test(test_status_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
