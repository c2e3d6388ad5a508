/*
 * The hand-over codec and its fd passing (lb_handover.h).  Codec tests
 * round-trip every message type (decode, then re-encode to the same bytes)
 * and build refused records by hand with a small raw writer, so each
 * rejection is one record with one defect.  The I/O tests run over a real
 * socketpair(AF_UNIX, SOCK_SEQPACKET) and count /proc/self/fd around every
 * error path: a descriptor that arrives must end up either with the caller
 * or closed.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lb_handover.h"

/* ------------------------------------------------------------------------ */
/* Helpers */

/* An encoded record in a buffer of its own (pending bytes point into it after decode). */
static void encode_ok(const struct lb_handover_msg *m, struct lb_buf *out)
{
    lb_buf_init(out, LB_HANDOVER_MSG_MAX);
    assert_int_equal(lb_handover_encode(m, out), 0);
    assert_true(out->len >= LB_HANDOVER_HEADER_LEN);
}

/* Decodes rec, expecting success, and checks that re-encoding gives the same bytes. */
static void decode_ok(const struct lb_buf *rec, struct lb_handover_msg *m)
{
    struct lb_buf again;
    char *err = NULL;
    int rc = lb_handover_decode((const uint8_t *)rec->data, rec->len,
                                lb_handover_type_fds(((const uint8_t *)rec->data)[6]), m, &err);

    if (rc != 0)
        fail_msg("decode failed (%d): %s", rc, err ? err : "(no message)");
    assert_null(err);
    encode_ok(m, &again);
    assert_int_equal(again.len, rec->len);
    assert_memory_equal(again.data, rec->data, rec->len);
    lb_buf_free(&again);
}

/* Decodes, expecting `code` and an error sentence that contains `needle`. */
static void expect_reject(const void *rec, size_t len, int n_fds, int code, const char *needle)
{
    struct lb_handover_msg m;
    char *err = NULL;
    int rc = lb_handover_decode(rec, len, n_fds, &m, &err);

    if (rc != code)
        fail_msg("decode returned %d, expected %d (%s)", rc, code, err ? err : "no message");
    assert_non_null(err);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    if (code == -EPROTO) {
        static const struct lb_handover_msg zero;

        assert_memory_equal(&m, &zero, sizeof(m));
    }
    free(err);
}

/* A hand-built record: header then whatever the test writes; raw_end patches the length. */
struct raw {
    uint8_t b[4096];
    size_t n;
};

static void raw_bytes(struct raw *r, const void *p, size_t n)
{
    assert_true(r->n + n <= sizeof(r->b));
    memcpy(r->b + r->n, p, n);
    r->n += n;
}

static void raw_u8(struct raw *r, uint8_t v)
{
    raw_bytes(r, &v, 1);
}

static void raw_u16(struct raw *r, uint16_t v)
{
    raw_u8(r, (uint8_t)v);
    raw_u8(r, (uint8_t)(v >> 8));
}

static void raw_u32(struct raw *r, uint32_t v)
{
    raw_u16(r, (uint16_t)v);
    raw_u16(r, (uint16_t)(v >> 16));
}

static void raw_u64(struct raw *r, uint64_t v)
{
    raw_u32(r, (uint32_t)v);
    raw_u32(r, (uint32_t)(v >> 32));
}

static void raw_str(struct raw *r, const char *s, size_t n)
{
    raw_u16(r, (uint16_t)n);
    raw_bytes(r, s, n);
}

static void raw_begin(struct raw *r, uint8_t type)
{
    r->n = 0;
    raw_bytes(r, "LBHO", 4);
    raw_u16(r, LB_HANDOVER_PROTO);
    raw_u8(r, type);
    raw_u8(r, 0);
    raw_u32(r, 0);
}

static void set_payload_len(uint8_t *rec, size_t len)
{
    uint32_t payload = (uint32_t)(len - LB_HANDOVER_HEADER_LEN);

    for (int i = 0; i < 4; i++)
        rec[8 + i] = (uint8_t)(payload >> (8 * i));
}

static void raw_end(struct raw *r)
{
    set_payload_len(r->b, r->n);
}

/* The SESSION fields a rejection test may spoil; raw_session writes them. */
struct raw_session {
    uint32_t version;
    const char *pool;
    size_t pool_len;
    const char *backend_id;
    size_t backend_id_len;
    uint8_t family;
    uint16_t port;
    uint8_t flags;
    uint32_t up_declared; /* up pending length as written */
    size_t up_actual;     /* bytes that follow it */
};

static const struct raw_session good_session = {
    .version = LB_HANDOVER_SESSION_VERSION,
    .pool = "web",
    .pool_len = 3,
    .backend_id = "b1",
    .backend_id_len = 2,
    .family = 4,
    .port = 40000,
};

static void raw_session(struct raw *r, const struct raw_session *s)
{
    static const uint8_t zeros[64];

    raw_begin(r, LB_HANDOVER_SESSION);
    raw_u32(r, s->version);
    raw_u64(r, 42);
    raw_str(r, s->pool, s->pool_len);
    raw_str(r, s->backend_id, s->backend_id_len);
    raw_str(r, "10.0.0.5:8080", 13);
    raw_u8(r, s->family);
    raw_bytes(r, "\x7f\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01",
              s->family == 6 ? 16 : 4);
    raw_u16(r, s->port);
    if (s->family == 6) {
        raw_u32(r, 0);
        raw_u32(r, 0);
    }
    raw_u64(r, 1);
    raw_u64(r, 2);
    raw_u32(r, 3);
    raw_u32(r, 4);
    raw_u8(r, s->flags);
    raw_u32(r, s->up_declared);
    assert_true(s->up_actual <= sizeof(zeros));
    raw_bytes(r, zeros, s->up_actual);
    raw_u32(r, 0);
    raw_end(r);
}

static uint8_t up_bytes[LB_HANDOVER_PENDING_MAX];
static uint8_t down_bytes[LB_HANDOVER_PENDING_MAX];

/* A SESSION from 192.0.2.7:51000, small pending bytes. */
static void session_v4(struct lb_handover_msg *m)
{
    struct lb_handover_session *s = &m->u.session;
    struct sockaddr_in *sin = (struct sockaddr_in *)&s->client;

    memset(m, 0, sizeof(*m));
    m->type = LB_HANDOVER_SESSION;
    s->id = 0x0102030405060708ull;
    strcpy(s->pool, "web");
    strcpy(s->backend_id, "web-1");
    strcpy(s->backend_addr, "10.0.0.5:8080");
    sin->sin_family = AF_INET;
    sin->sin_port = htons(51000);
    assert_int_equal(inet_pton(AF_INET, "192.0.2.7", &sin->sin_addr), 1);
    s->client_len = sizeof(*sin);
    s->bytes_up = 1ull << 40;
    s->bytes_down = 123456789;
    s->age_ms = 60000;
    s->idle_ms = 250;
    s->flags = LB_HANDOVER_UP_EOF | LB_HANDOVER_DOWN_SHUT;
    s->up_pending = (const uint8_t *)"GET / HTTP/1.1\r\n";
    s->up_pending_len = 16;
}

/* A SESSION from [2001:db8::7%3]:443 with both pending buffers full. */
static void session_v6_full(struct lb_handover_msg *m)
{
    struct lb_handover_session *s = &m->u.session;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&s->client;

    memset(m, 0, sizeof(*m));
    m->type = LB_HANDOVER_SESSION;
    s->id = UINT64_MAX;
    memset(s->pool, 'p', LB_NAME_MAX - 1);
    memset(s->backend_id, 'b', LB_NAME_MAX - 1);
    memset(s->backend_addr, 'a', LB_ADDR_MAX - 1);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(443);
    assert_int_equal(inet_pton(AF_INET6, "2001:db8::7", &sin6->sin6_addr), 1);
    sin6->sin6_flowinfo = htonl(0x12345);
    sin6->sin6_scope_id = 3;
    s->client_len = sizeof(*sin6);
    s->bytes_up = UINT64_MAX;
    s->bytes_down = 0;
    s->age_ms = UINT32_MAX;
    s->idle_ms = UINT32_MAX;
    s->flags = LB_HANDOVER_FLAGS_ALL;
    for (size_t i = 0; i < LB_HANDOVER_PENDING_MAX; i++) {
        up_bytes[i] = (uint8_t)(i * 7);
        down_bytes[i] = (uint8_t)(i * 13 + 1);
    }
    s->up_pending = up_bytes;
    s->up_pending_len = LB_HANDOVER_PENDING_MAX;
    s->down_pending = down_bytes;
    s->down_pending_len = LB_HANDOVER_PENDING_MAX;
}

static void assert_session_equal(const struct lb_handover_session *a,
                                 const struct lb_handover_session *b)
{
    assert_int_equal(a->id, b->id);
    assert_string_equal(a->pool, b->pool);
    assert_string_equal(a->backend_id, b->backend_id);
    assert_string_equal(a->backend_addr, b->backend_addr);
    assert_int_equal(a->client_len, b->client_len);
    assert_memory_equal(&a->client, &b->client, a->client_len);
    assert_int_equal(a->bytes_up, b->bytes_up);
    assert_int_equal(a->bytes_down, b->bytes_down);
    assert_int_equal(a->age_ms, b->age_ms);
    assert_int_equal(a->idle_ms, b->idle_ms);
    assert_int_equal(a->flags, b->flags);
    assert_int_equal(a->up_pending_len, b->up_pending_len);
    assert_int_equal(a->down_pending_len, b->down_pending_len);
    if (a->up_pending_len)
        assert_memory_equal(a->up_pending, b->up_pending, a->up_pending_len);
    if (a->down_pending_len)
        assert_memory_equal(a->down_pending, b->down_pending, a->down_pending_len);
}

/* One valid message of every type (the SESSION is session_v4). */
static void sample(int type, struct lb_handover_msg *m)
{
    memset(m, 0, sizeof(*m));
    m->type = (enum lb_handover_type)type;
    switch (type) {
    case LB_HANDOVER_HELLO:
        m->u.hello.session_version = LB_HANDOVER_SESSION_VERSION;
        m->u.hello.pid = 4242;
        m->u.hello.workers = 8;
        strcpy(m->u.hello.version, "0.1.0");
        break;
    case LB_HANDOVER_LISTENER:
        m->u.listener.kind = LB_HANDOVER_LISTENER_POOL;
        strcpy(m->u.listener.name, "web");
        strcpy(m->u.listener.addr, "[::]:8080");
        break;
    case LB_HANDOVER_LISTENERS_DONE:
        m->u.listeners_done_count = 3;
        break;
    case LB_HANDOVER_SESSION:
        session_v4(m);
        break;
    case LB_HANDOVER_SESSION_ACK:
        m->u.ack_id = 99;
        break;
    case LB_HANDOVER_SESSION_NAK:
        m->u.nak.id = 100;
        strcpy(m->u.nak.reason, "pool web is unknown here");
        break;
    case LB_HANDOVER_BACKEND:
        strcpy(m->u.backend.pool, "web");
        strcpy(m->u.backend.id, "web-1");
        strcpy(m->u.backend.addr, "10.0.0.5:8080");
        m->u.backend.health = 2;
        m->u.backend.ejected_ms = 4000;
        m->u.backend.ejections = 3;
        m->u.backend.drain_left_ms = 120000;
        m->u.backend.local = LB_HANDOVER_LOCAL_DRAIN | LB_HANDOVER_LOCAL_WEIGHT;
        m->u.backend.local_drain = 1;
        m->u.backend.local_weight = 1000;
        break;
    default:
        break;
    }
}

/* Open descriptors of this process (the directory's own is counted both times). */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void seqpacket_pair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
}

static bool same_file(int a, int b)
{
    struct stat sa, sb;

    assert_int_equal(fstat(a, &sa), 0);
    assert_int_equal(fstat(b, &sb), 0);
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* ------------------------------------------------------------------------ */
/* Round trips */

static void test_hello_round_trip(void **state)
{
    struct lb_handover_msg m, back;
    struct lb_buf rec;

    sample(LB_HANDOVER_HELLO, &m);
    memset(m.u.hello.version, 'v', LB_HANDOVER_VERSION_MAX - 1); /* longest */
    encode_ok(&m, &rec);
    assert_memory_equal(rec.data, "LBHO\x01\x00\x01\x00", 8);
    decode_ok(&rec, &back);
    assert_int_equal(back.type, LB_HANDOVER_HELLO);
    assert_int_equal(back.u.hello.session_version, LB_HANDOVER_SESSION_VERSION);
    assert_int_equal(back.u.hello.pid, 4242);
    assert_int_equal(back.u.hello.workers, 8);
    assert_string_equal(back.u.hello.version, m.u.hello.version);
    lb_buf_free(&rec);
}

static void test_listener_round_trip(void **state)
{
    static const uint8_t kinds[] = {LB_HANDOVER_LISTENER_POOL, LB_HANDOVER_LISTENER_ADMIN,
                                    LB_HANDOVER_LISTENER_HTTP, LB_HANDOVER_LISTENER_UPGRADE};

    for (size_t i = 0; i < sizeof(kinds); i++) {
        struct lb_handover_msg m, back;
        struct lb_buf rec;

        sample(LB_HANDOVER_LISTENER, &m);
        m.u.listener.kind = kinds[i];
        if (kinds[i] != LB_HANDOVER_LISTENER_POOL)
            m.u.listener.name[0] = '\0';
        else
            memset(m.u.listener.name, 'n', LB_NAME_MAX - 1);
        memset(m.u.listener.addr, 'a', LB_ADDR_MAX - 1);
        encode_ok(&m, &rec);
        decode_ok(&rec, &back);
        assert_int_equal(back.type, LB_HANDOVER_LISTENER);
        assert_int_equal(back.u.listener.kind, kinds[i]);
        assert_string_equal(back.u.listener.name, m.u.listener.name);
        assert_string_equal(back.u.listener.addr, m.u.listener.addr);
        lb_buf_free(&rec);
    }
}

static void test_small_messages_round_trip(void **state)
{
    static const int types[] = {LB_HANDOVER_LISTENERS_DONE, LB_HANDOVER_READY,
                                LB_HANDOVER_SESSION_ACK,    LB_HANDOVER_SESSION_NAK,
                                LB_HANDOVER_DONE,           LB_HANDOVER_BACKEND};

    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        struct lb_handover_msg m, back;
        struct lb_buf rec;

        sample(types[i], &m);
        if (types[i] == LB_HANDOVER_SESSION_NAK)
            memset(m.u.nak.reason, 'r', LB_HANDOVER_REASON_MAX - 1);
        encode_ok(&m, &rec);
        decode_ok(&rec, &back);
        assert_memory_equal(&back, &m, sizeof(m)); /* no pointers in these */
        if (types[i] == LB_HANDOVER_READY || types[i] == LB_HANDOVER_DONE)
            assert_int_equal(rec.len, LB_HANDOVER_HEADER_LEN);
        lb_buf_free(&rec);
    }
}

static void test_session_ipv4_round_trip(void **state)
{
    struct lb_handover_msg m, back;
    struct lb_buf rec;

    session_v4(&m);
    encode_ok(&m, &rec);
    decode_ok(&rec, &back);
    assert_int_equal(back.type, LB_HANDOVER_SESSION);
    assert_int_equal(back.u.session.session_version, LB_HANDOVER_SESSION_VERSION);
    assert_session_equal(&back.u.session, &m.u.session);
    /* pending bytes are not copied: they point into the record */
    assert_true(back.u.session.up_pending > (const uint8_t *)rec.data &&
                back.u.session.up_pending < (const uint8_t *)rec.data + rec.len);
    assert_null(back.u.session.down_pending);
    lb_buf_free(&rec);

    /* and with nothing pending at all */
    m.u.session.up_pending = NULL;
    m.u.session.up_pending_len = 0;
    encode_ok(&m, &rec);
    decode_ok(&rec, &back);
    assert_null(back.u.session.up_pending);
    assert_int_equal(back.u.session.up_pending_len, 0);
    lb_buf_free(&rec);
}

static void test_session_ipv6_full_round_trip(void **state)
{
    struct lb_handover_msg m, back;
    struct lb_buf rec;

    session_v6_full(&m);
    encode_ok(&m, &rec);
    assert_true(rec.len <= LB_HANDOVER_MSG_MAX);
    assert_true(rec.len > 2 * LB_HANDOVER_PENDING_MAX);
    decode_ok(&rec, &back);
    assert_session_equal(&back.u.session, &m.u.session);
    assert_int_equal(((struct sockaddr_in6 *)&back.u.session.client)->sin6_scope_id, 3);
    lb_buf_free(&rec);
}

/* ------------------------------------------------------------------------ */
/* Rejections */

static void test_reject_header(void **state)
{
    struct lb_handover_msg m;
    struct lb_buf rec;
    uint8_t b[64];

    sample(LB_HANDOVER_LISTENERS_DONE, &m);
    encode_ok(&m, &rec);
    assert_true(rec.len + 1 <= sizeof(b));

    expect_reject(NULL, 0, 0, -EPROTO, "shorter than the 12-byte header");
    expect_reject(rec.data, LB_HANDOVER_HEADER_LEN - 1, 0, -EPROTO, "shorter than");

    memcpy(b, rec.data, rec.len);
    b[0] = 'X';
    expect_reject(b, rec.len, 0, -EPROTO, "bad magic");

    memcpy(b, rec.data, rec.len);
    b[4] = 2;
    expect_reject(b, rec.len, 0, -EPROTO, "framing version 2");
    memcpy(b, rec.data, rec.len);
    b[5] = 1; /* 257: the version is a little-endian u16 */
    expect_reject(b, rec.len, 0, -EPROTO, "framing version 257");

    memcpy(b, rec.data, rec.len);
    b[7] = 0x80;
    expect_reject(b, rec.len, 0, -EPROTO, "header flags 0x80");

    for (unsigned t = 0; t < 256; t++) {
        if (t >= LB_HANDOVER_HELLO && t <= LB_HANDOVER_KEY)
            continue;
        memcpy(b, rec.data, rec.len);
        b[6] = (uint8_t)t;
        expect_reject(b, rec.len, 0, -EPROTO, "unknown message type");
    }

    /* payload length one more, one less, and far more than the record */
    memcpy(b, rec.data, rec.len);
    set_payload_len(b, rec.len + 1);
    expect_reject(b, rec.len, 0, -EPROTO, "announces a 5-byte payload, the record holds 4");
    set_payload_len(b, rec.len - 1);
    expect_reject(b, rec.len, 0, -EPROTO, "announces a 3-byte payload");
    b[11] = 0xff;
    expect_reject(b, rec.len, 0, -EPROTO, "payload");
    lb_buf_free(&rec);
}

/* Every message cut short anywhere in its payload (length fixed up) is refused. */
static void test_reject_truncated(void **state)
{
    for (int type = LB_HANDOVER_HELLO; type <= LB_HANDOVER_DONE; type++) {
        struct lb_handover_msg m;
        struct lb_buf rec;
        uint8_t *b;

        sample(type, &m);
        encode_ok(&m, &rec);
        b = malloc(rec.len);
        assert_non_null(b);
        for (size_t len = LB_HANDOVER_HEADER_LEN; len < rec.len; len++) {
            memcpy(b, rec.data, len);
            set_payload_len(b, len);
            expect_reject(b, len, lb_handover_type_fds(type), -EPROTO, "truncated");
        }
        free(b);
        lb_buf_free(&rec);
    }
}

static void test_reject_trailing(void **state)
{
    for (int type = LB_HANDOVER_HELLO; type <= LB_HANDOVER_DONE; type++) {
        struct lb_handover_msg m;
        struct lb_buf rec;
        char sentence[64];

        sample(type, &m);
        encode_ok(&m, &rec);
        assert_int_equal(lb_buf_append(&rec, "\0\0", 2), 0);
        set_payload_len((uint8_t *)rec.data, rec.len);
        snprintf(sentence, sizeof(sentence), "%s: 2 trailing bytes", lb_handover_type_name(type));
        expect_reject(rec.data, rec.len, lb_handover_type_fds(type), -EPROTO, sentence);
        lb_buf_free(&rec);
    }
}

static void test_reject_fd_count(void **state)
{
    for (int type = LB_HANDOVER_HELLO; type <= LB_HANDOVER_DONE; type++) {
        struct lb_handover_msg m;
        struct lb_buf rec;

        sample(type, &m);
        encode_ok(&m, &rec);
        for (int n = 0; n <= 3; n++) {
            if (n != lb_handover_type_fds(type))
                expect_reject(rec.data, rec.len, n, -EPROTO, "file descriptors, expected");
        }
        lb_buf_free(&rec);
    }
    assert_int_equal(lb_handover_type_fds(LB_HANDOVER_LISTENER), 1);
    assert_int_equal(lb_handover_type_fds(LB_HANDOVER_SESSION), 2);
    assert_int_equal(lb_handover_type_fds(LB_HANDOVER_HELLO), 0);
}

static void test_reject_strings(void **state)
{
    char long_text[300];
    struct raw r;
    struct raw_session s;

    memset(long_text, 'x', sizeof(long_text));

    /* at the bound, then one past it */
    s = good_session;
    s.pool = long_text;
    s.pool_len = LB_NAME_MAX - 1;
    raw_session(&r, &s);
    {
        struct lb_handover_msg m;

        assert_int_equal(lb_handover_decode(r.b, r.n, 2, &m, NULL), 0);
        assert_int_equal(strlen(m.u.session.pool), LB_NAME_MAX - 1);
    }
    s.pool_len = LB_NAME_MAX;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO, "SESSION: pool name longer than 127 bytes");

    s = good_session;
    s.backend_id = "b\0c";
    s.backend_id_len = 3;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO, "SESSION: backend id contains a NUL byte");

    /* a length that runs past the record */
    raw_begin(&r, LB_HANDOVER_SESSION_NAK);
    raw_u64(&r, 1);
    raw_u16(&r, 10);
    raw_bytes(&r, "short", 5);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "SESSION_NAK: reason truncated");

    raw_begin(&r, LB_HANDOVER_SESSION_NAK);
    raw_u64(&r, 1);
    raw_str(&r, long_text, LB_HANDOVER_REASON_MAX);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "SESSION_NAK: reason longer than 199 bytes");

    raw_begin(&r, LB_HANDOVER_HELLO);
    raw_u32(&r, 1);
    raw_u32(&r, 1);
    raw_u32(&r, 1);
    raw_str(&r, long_text, LB_HANDOVER_VERSION_MAX);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "HELLO: version text longer than 31 bytes");

    raw_begin(&r, LB_HANDOVER_LISTENER);
    raw_u8(&r, LB_HANDOVER_LISTENER_ADMIN);
    raw_str(&r, "", 0);
    raw_str(&r, long_text, LB_ADDR_MAX);
    raw_end(&r);
    expect_reject(r.b, r.n, 1, -EPROTO, "LISTENER: address longer than 263 bytes");
}

static void test_reject_listener(void **state)
{
    struct raw r;

    raw_begin(&r, LB_HANDOVER_LISTENER);
    raw_u8(&r, 0);
    raw_str(&r, "", 0);
    raw_str(&r, ":80", 3);
    raw_end(&r);
    expect_reject(r.b, r.n, 1, -EPROTO, "unknown listener kind 0");
    r.b[LB_HANDOVER_HEADER_LEN] = 5;
    expect_reject(r.b, r.n, 1, -EPROTO, "unknown listener kind 5");
    r.b[LB_HANDOVER_HEADER_LEN] = LB_HANDOVER_LISTENER_POOL;
    expect_reject(r.b, r.n, 1, -EPROTO, "pool listener without a pool name");

    raw_begin(&r, LB_HANDOVER_LISTENER);
    raw_u8(&r, LB_HANDOVER_LISTENER_HTTP);
    raw_str(&r, "web", 3);
    raw_str(&r, ":80", 3);
    raw_end(&r);
    expect_reject(r.b, r.n, 1, -EPROTO, "listener of kind 3 has a name");
}

/* A BACKEND of the sample's fields with one changed, as raw bytes. */
static void raw_backend(struct raw *r, const char *pool, uint8_t health, uint8_t ejections,
                        uint8_t local, uint8_t drain, uint16_t weight, uint8_t forced)
{
    raw_begin(r, LB_HANDOVER_BACKEND);
    raw_str(r, pool, strlen(pool));
    raw_str(r, "web-1", 5);
    raw_str(r, "10.0.0.5:8080", 13);
    raw_u8(r, health);
    raw_u32(r, 0);
    raw_u8(r, ejections);
    raw_u32(r, 0);
    raw_u8(r, local);
    raw_u8(r, drain);
    raw_u16(r, weight);
    raw_u8(r, forced);
    raw_end(r);
}

static void test_reject_backend_fields(void **state)
{
    static const struct {
        const char *pool;
        uint8_t health, ejections, local, drain;
        uint16_t weight;
        uint8_t forced;
        const char *why;
    } bad[] = {
        {"", 0, 0, 0, 0, 0, 0, "BACKEND: empty pool or id"},
        {"web", 3, 0, 0, 0, 0, 0, "health state beyond 2"},
        {"web", 0, 65, 0, 0, 0, 0, "more than 64 ejections"},
        {"web", 0, 0, 0x10, 0, 0, 0, "unknown local override flags"},
        {"web", 0, 0, LB_HANDOVER_LOCAL_WEIGHT | LB_HANDOVER_LOCAL_CLEAR_WEIGHT, 0, 0, 0,
         "both set and cleared"},
        {"web", 0, 0, 0, 2, 0, 0, "local drain neither 0 nor 1"},
        {"web", 0, 0, 0, 0, 1001, 0, "local weight beyond 1000"},
        {"web", 0, 0, 0, 0, 0, 3, "local health override beyond 2"},
    };
    struct lb_handover_msg m;
    struct lb_buf rec;
    struct raw r;
    char *err = NULL;

    /* every field at its bound is fine */
    raw_backend(&r, "web", 2, 64, LB_HANDOVER_LOCAL_ALL & ~LB_HANDOVER_LOCAL_WEIGHT, 1, 1000, 2);
    assert_int_equal(lb_handover_decode(r.b, r.n, 0, &m, &err), 0);
    assert_null(err);
    assert_int_equal(m.u.backend.local_health, 2);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        raw_backend(&r, bad[i].pool, bad[i].health, bad[i].ejections, bad[i].local, bad[i].drain,
                    bad[i].weight, bad[i].forced);
        expect_reject(r.b, r.n, 0, -EPROTO, bad[i].why);
    }
    raw_backend(&r, "web", 0, 0, 0, 0, 0, 0);
    expect_reject(r.b, r.n, 1, -EPROTO, "arrived with 1 file descriptors, expected 0");
    /* the encoder refuses what the decoder would */
    sample(LB_HANDOVER_BACKEND, &m);
    m.u.backend.local |= LB_HANDOVER_LOCAL_CLEAR_WEIGHT;
    lb_buf_init(&rec, LB_HANDOVER_MSG_MAX);
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    sample(LB_HANDOVER_BACKEND, &m);
    m.u.backend.id[0] = '\0';
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    assert_int_equal(rec.len, 0);
    lb_buf_free(&rec);
}

static void test_view_round_trip(void **state)
{
    struct lb_handover_msg m = {.type = LB_HANDOVER_VIEW}, back;
    struct lb_buf rec;

    m.u.view.revision = INT64_MAX;
    m.u.view.cluster_id = UINT64_MAX;
    m.u.view.stale_ms = UINT32_MAX;
    m.u.view.keys = LB_HANDOVER_VIEW_KEYS_MAX;
    memset(m.u.view.prefix, 'p', LB_HANDOVER_PREFIX_MAX - 1); /* longest */
    encode_ok(&m, &rec);
    decode_ok(&rec, &back);
    assert_memory_equal(&back, &m, sizeof(m));
    lb_buf_free(&rec);
    /* the encoder refuses what the decoder would */
    lb_buf_init(&rec, LB_HANDOVER_MSG_MAX);
    m.u.view.keys = LB_HANDOVER_VIEW_KEYS_MAX + 1;
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    m.u.view.keys = 0;
    m.u.view.revision = 0;
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    m.u.view.revision = 1;
    m.u.view.prefix[0] = '\0';
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    assert_int_equal(rec.len, 0);
    lb_buf_free(&rec);
}

static void test_key_round_trip(void **state)
{
    static char key[LB_HANDOVER_KEY_MAX], value[LB_HANDOVER_VALUE_MAX];
    struct lb_handover_msg m = {.type = LB_HANDOVER_KEY}, back;
    struct lb_buf rec;

    memset(key, 'k', sizeof(key)); /* both at their bound: the record still fits */
    memset(value, 'v', sizeof(value));
    m.u.key.key = (const uint8_t *)key;
    m.u.key.key_len = sizeof(key);
    m.u.key.value = (const uint8_t *)value;
    m.u.key.value_len = sizeof(value);
    m.u.key.mod_revision = 77;
    encode_ok(&m, &rec);
    decode_ok(&rec, &back);
    assert_int_equal(back.u.key.key_len, sizeof(key));
    assert_memory_equal(back.u.key.key, key, sizeof(key));
    assert_int_equal(back.u.key.value_len, sizeof(value));
    assert_memory_equal(back.u.key.value, value, sizeof(value));
    assert_int_equal(back.u.key.mod_revision, 77);
    lb_buf_free(&rec);
    /* an empty value is a value (lbd judges it), read back as NULL */
    m.u.key.key_len = 3;
    m.u.key.value = NULL;
    m.u.key.value_len = 0;
    encode_ok(&m, &rec);
    decode_ok(&rec, &back);
    assert_null(back.u.key.value);
    assert_int_equal(back.u.key.value_len, 0);
    lb_buf_free(&rec);
    /* the encoder refuses what the decoder would */
    lb_buf_init(&rec, LB_HANDOVER_MSG_MAX);
    m.u.key.key_len = 0;
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    m.u.key.key_len = LB_HANDOVER_KEY_MAX + 1;
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    m.u.key.key_len = 3;
    m.u.key.value_len = LB_HANDOVER_VALUE_MAX + 1;
    m.u.key.value = (const uint8_t *)value;
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    m.u.key.value_len = 0;
    m.u.key.mod_revision = 0;
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    m.u.key.mod_revision = 1;
    m.u.key.key = (const uint8_t *)"a\0b";
    assert_int_equal(lb_handover_encode(&m, &rec), -EINVAL);
    assert_int_equal(rec.len, 0);
    lb_buf_free(&rec);
}

static void test_reject_view_and_key_fields(void **state)
{
    struct raw r;

    raw_begin(&r, LB_HANDOVER_VIEW);
    raw_u64(&r, 0);
    raw_u64(&r, 1);
    raw_u32(&r, 0);
    raw_u32(&r, 1);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "VIEW: revision 0 is not a revision");
    raw_begin(&r, LB_HANDOVER_VIEW);
    raw_u64(&r, (uint64_t)INT64_MAX + 1);
    raw_u64(&r, 1);
    raw_u32(&r, 0);
    raw_u32(&r, 1);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "is not a revision");
    raw_begin(&r, LB_HANDOVER_VIEW);
    raw_u64(&r, 5);
    raw_u64(&r, 1);
    raw_u32(&r, 0);
    raw_u32(&r, LB_HANDOVER_VIEW_KEYS_MAX + 1);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "VIEW: 1048577 keys, more than 1048576");
    raw_begin(&r, LB_HANDOVER_VIEW);
    raw_u64(&r, 5);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "VIEW: cluster id truncated");
    raw_begin(&r, LB_HANDOVER_VIEW);
    raw_u64(&r, 5);
    raw_u64(&r, 1);
    raw_u32(&r, 0);
    raw_u32(&r, 1);
    raw_str(&r, "", 0);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "VIEW: empty prefix");
    r.n -= 2;
    raw_str(&r, "/lb/", 4);
    raw_end(&r);
    {
        struct lb_handover_msg m;

        assert_int_equal(lb_handover_decode(r.b, r.n, 0, &m, NULL), 0);
        assert_string_equal(m.u.view.prefix, "/lb/");
    }

    raw_begin(&r, LB_HANDOVER_KEY);
    raw_u16(&r, 0);
    raw_u32(&r, 0);
    raw_u64(&r, 1);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "KEY: a key of 0 bytes");
    raw_begin(&r, LB_HANDOVER_KEY);
    raw_u16(&r, LB_HANDOVER_KEY_MAX + 1);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "KEY: a key of 4097 bytes");
    raw_begin(&r, LB_HANDOVER_KEY);
    raw_str(&r, "a\0b", 3);
    raw_u32(&r, 0);
    raw_u64(&r, 1);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "KEY: key contains a NUL byte");
    raw_begin(&r, LB_HANDOVER_KEY);
    raw_str(&r, "/k", 2);
    raw_u32(&r, LB_HANDOVER_VALUE_MAX + 1);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "KEY: a value of 65537 bytes is above the maximum");
    raw_begin(&r, LB_HANDOVER_KEY);
    raw_str(&r, "/k", 2);
    raw_u32(&r, 100);
    raw_bytes(&r, "{}", 2);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "KEY: value truncated");
    raw_begin(&r, LB_HANDOVER_KEY);
    raw_str(&r, "/k", 2);
    raw_u32(&r, 2);
    raw_bytes(&r, "{}", 2);
    raw_u64(&r, 0);
    raw_end(&r);
    expect_reject(r.b, r.n, 0, -EPROTO, "KEY: mod revision 0 is not a revision");
    r.n -= 8;
    raw_u64(&r, 9);
    raw_end(&r);
    {
        struct lb_handover_msg m;

        assert_int_equal(lb_handover_decode(r.b, r.n, 0, &m, NULL), 0);
        assert_int_equal(m.u.key.mod_revision, 9);
    }
    expect_reject(r.b, r.n, 1, -EPROTO, "arrived with 1 file descriptors, expected 0");
}

static void test_reject_session_fields(void **state)
{
    struct raw r;
    struct raw_session s;

    s = good_session;
    raw_session(&r, &s);
    {
        struct lb_handover_msg m;

        assert_int_equal(lb_handover_decode(r.b, r.n, 2, &m, NULL), 0);
    }

    s = good_session;
    s.family = 5;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO, "client address family 5 is neither");
    s.family = 0;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO, "client address family 0");

    s = good_session;
    s.port = 0;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO, "client port is 0");
    s.family = 6;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO, "client port is 0");

    s = good_session;
    s.flags = 0x10;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO, "SESSION: unknown flags 0x10");

    /* pending length above the bound is refused before its bytes are looked for */
    s = good_session;
    s.up_declared = LB_HANDOVER_PENDING_MAX + 1;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO,
                  "SESSION: up pending length of 262145 bytes is above the maximum 262144");
    s.up_declared = UINT32_MAX;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO, "above the maximum");
    s.up_declared = 40; /* within the bound, more than the record holds */
    s.up_actual = 39;
    raw_session(&r, &s);
    expect_reject(r.b, r.n, 2, -EPROTO, "truncated");
}

/* A SESSION of another layout still yields its id, so the receiver can NAK it. */
static void test_session_other_version(void **state)
{
    struct lb_handover_msg m;
    struct raw r;
    char *err = NULL;

    raw_begin(&r, LB_HANDOVER_SESSION);
    raw_u32(&r, LB_HANDOVER_SESSION_VERSION + 1);
    raw_u64(&r, 77);
    raw_bytes(&r, "whatever version 9 carries", 26);
    raw_end(&r);
    assert_int_equal(lb_handover_decode(r.b, r.n, 2, &m, &err), -EPROTONOSUPPORT);
    {
        char want[80];

        snprintf(want, sizeof(want), "SESSION: session version %d (this lbd speaks %d)",
                 LB_HANDOVER_SESSION_VERSION + 1, LB_HANDOVER_SESSION_VERSION);
        assert_non_null(strstr(err, want));
    }
    free(err);
    err = NULL;
    assert_int_equal(m.type, LB_HANDOVER_SESSION);
    assert_int_equal(m.u.session.session_version, LB_HANDOVER_SESSION_VERSION + 1);
    assert_int_equal(m.u.session.id, 77);
    assert_int_equal(m.u.session.pool[0], '\0');

    /* the frozen part still has to be whole, and the fds right */
    expect_reject(r.b, r.n, 1, -EPROTO, "file descriptors");
    set_payload_len(r.b, LB_HANDOVER_HEADER_LEN + 4 + 7);
    expect_reject(r.b, LB_HANDOVER_HEADER_LEN + 4 + 7, 2, -EPROTO, "SESSION: id truncated");
}

static void test_decode_bad_arguments(void **state)
{
    struct lb_handover_msg m;
    struct lb_buf rec;
    char *err = NULL;

    sample(LB_HANDOVER_READY, &m);
    encode_ok(&m, &rec);
    assert_int_equal(lb_handover_decode((uint8_t *)rec.data, rec.len, 0, NULL, &err), -EINVAL);
    free(err);
    err = NULL;
    assert_int_equal(lb_handover_decode((uint8_t *)rec.data, rec.len, -1, &m, &err), -EINVAL);
    free(err);
    /* err may be NULL */
    assert_int_equal(lb_handover_decode((uint8_t *)rec.data, 3, 0, &m, NULL), -EPROTO);
    lb_buf_free(&rec);
}

static void expect_encode_einval(const struct lb_handover_msg *m)
{
    struct lb_buf out;

    lb_buf_init(&out, LB_HANDOVER_MSG_MAX);
    assert_int_equal(lb_buf_append(&out, "abc", 3), 0);
    assert_int_equal(lb_handover_encode(m, &out), -EINVAL);
    assert_int_equal(out.len, 3); /* untouched */
    assert_string_equal(out.data, "abc");
    lb_buf_free(&out);
}

static void test_encode_rejects(void **state)
{
    struct lb_handover_msg m;
    struct lb_buf out;

    sample(LB_HANDOVER_READY, &m);
    m.type = 0;
    expect_encode_einval(&m);
    m.type = 9;
    expect_encode_einval(&m);

    session_v4(&m);
    memset(m.u.session.pool, 'p', sizeof(m.u.session.pool)); /* no NUL */
    expect_encode_einval(&m);
    session_v4(&m);
    m.u.session.up_pending_len = LB_HANDOVER_PENDING_MAX + 1;
    expect_encode_einval(&m);
    session_v4(&m);
    m.u.session.down_pending_len = 1; /* with a NULL pointer */
    expect_encode_einval(&m);
    session_v4(&m);
    m.u.session.flags = 0x20;
    expect_encode_einval(&m);
    session_v4(&m);
    m.u.session.client_len = sizeof(struct sockaddr_in6); /* length of another family */
    expect_encode_einval(&m);
    session_v4(&m);
    m.u.session.client.ss_family = AF_UNIX;
    expect_encode_einval(&m);
    session_v4(&m);
    ((struct sockaddr_in *)&m.u.session.client)->sin_port = 0;
    expect_encode_einval(&m);

    sample(LB_HANDOVER_LISTENER, &m);
    m.u.listener.kind = 0;
    expect_encode_einval(&m);
    sample(LB_HANDOVER_LISTENER, &m);
    m.u.listener.name[0] = '\0'; /* a pool listener needs its pool */
    expect_encode_einval(&m);
    sample(LB_HANDOVER_LISTENER, &m);
    m.u.listener.kind = LB_HANDOVER_LISTENER_ADMIN; /* ... and only it has a name */
    expect_encode_einval(&m);

    sample(LB_HANDOVER_HELLO, &m);
    memset(m.u.hello.version, 'v', sizeof(m.u.hello.version));
    expect_encode_einval(&m);

    /* a SESSION is written with this lbd's session version whatever the struct says */
    session_v4(&m);
    m.u.session.session_version = 9;
    encode_ok(&m, &out);
    assert_int_equal(((uint8_t *)out.data)[LB_HANDOVER_HEADER_LEN], LB_HANDOVER_SESSION_VERSION);
    lb_buf_free(&out);

    /* a buffer too small: -E2BIG and nothing left behind */
    session_v6_full(&m);
    lb_buf_init(&out, 1000);
    assert_int_equal(lb_buf_append(&out, "abc", 3), 0);
    assert_int_equal(lb_handover_encode(&m, &out), -E2BIG);
    assert_int_equal(out.len, 3);
    lb_buf_free(&out);
}

static void test_type_names(void **state)
{
    assert_string_equal(lb_handover_type_name(LB_HANDOVER_HELLO), "HELLO");
    assert_string_equal(lb_handover_type_name(LB_HANDOVER_SESSION_NAK), "SESSION_NAK");
    assert_string_equal(lb_handover_type_name(LB_HANDOVER_DONE), "DONE");
    assert_string_equal(lb_handover_type_name(0), "UNKNOWN");
    assert_string_equal(lb_handover_type_name(LB_HANDOVER_BACKEND), "BACKEND");
    assert_string_equal(lb_handover_type_name(LB_HANDOVER_VIEW), "VIEW");
    assert_string_equal(lb_handover_type_name(LB_HANDOVER_KEY), "KEY");
    assert_string_equal(lb_handover_type_name(12), "UNKNOWN");
    assert_string_equal(lb_handover_type_name(-1), "UNKNOWN");
}

/* ------------------------------------------------------------------------ */
/* fd passing over a real SEQPACKET pair */

static void test_send_recv_listener(void **state)
{
    struct lb_handover_msg m, back;
    struct lb_buf rec;
    uint8_t *buf = malloc(LB_HANDOVER_MSG_MAX);
    int sv[2], fd, fds[LB_HANDOVER_FDS_MAX], n_fds = -1, before;
    ssize_t n;

    assert_non_null(buf);
    seqpacket_pair(sv);
    fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    before = count_fds();

    sample(LB_HANDOVER_LISTENER, &m);
    encode_ok(&m, &rec);
    assert_int_equal(lb_handover_send(sv[0], rec.data, rec.len, &fd, 1), 0);
    n = lb_handover_recv(sv[1], buf, LB_HANDOVER_MSG_MAX, fds, LB_HANDOVER_FDS_MAX, &n_fds);
    assert_int_equal(n, rec.len);
    assert_memory_equal(buf, rec.data, rec.len);
    assert_int_equal(n_fds, 1);
    assert_int_not_equal(fds[0], fd);
    assert_true(same_file(fds[0], fd));
    assert_true(fcntl(fds[0], F_GETFD) & FD_CLOEXEC);
    assert_int_equal(count_fds(), before + 1);
    assert_int_equal(lb_handover_decode(buf, (size_t)n, n_fds, &back, NULL), 0);
    assert_string_equal(back.u.listener.name, "web");

    close(fds[0]);
    close(fd);
    close(sv[0]);
    close(sv[1]);
    lb_buf_free(&rec);
    free(buf);
}

static void test_send_recv_session(void **state)
{
    struct lb_handover_msg m, back;
    struct lb_buf rec;
    uint8_t *buf = malloc(LB_HANDOVER_MSG_MAX);
    int sv[2], client[2], fds[LB_HANDOVER_FDS_MAX], n_fds = -1;
    int sent[2];
    ssize_t n;

    assert_non_null(buf);
    seqpacket_pair(sv);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, client), 0);
    sent[0] = client[0]; /* the "client" */
    sent[1] = client[1]; /* the "backend" */

    session_v4(&m);
    encode_ok(&m, &rec);
    assert_int_equal(lb_handover_send(sv[0], rec.data, rec.len, sent, 2), 0);
    n = lb_handover_recv(sv[1], buf, LB_HANDOVER_MSG_MAX, fds, LB_HANDOVER_FDS_MAX, &n_fds);
    assert_int_equal(n, rec.len);
    assert_int_equal(n_fds, 2);
    assert_true(same_file(fds[0], client[0])); /* order kept: client then backend */
    assert_true(same_file(fds[1], client[1]));
    assert_int_equal(lb_handover_decode(buf, (size_t)n, n_fds, &back, NULL), 0);
    assert_session_equal(&back.u.session, &m.u.session);

    /* the descriptors work: bytes written on the received client reach the backend */
    assert_int_equal(write(fds[0], "hi", 2), 2);
    {
        char got[2];

        assert_int_equal(read(client[1], got, 2), 2);
        assert_memory_equal(got, "hi", 2);
    }
    close(fds[0]);
    close(fds[1]);
    close(client[0]);
    close(client[1]);
    close(sv[0]);
    close(sv[1]);
    lb_buf_free(&rec);
    free(buf);
}

/* A record longer than the buffer is consumed whole, its fds closed; the next one is fine. */
static void test_recv_record_too_big(void **state)
{
    struct lb_handover_msg m;
    struct lb_buf rec;
    uint8_t buf[64];
    int sv[2], pipefd[2], fds[LB_HANDOVER_FDS_MAX] = {-1, -1}, n_fds = -1, before;

    seqpacket_pair(sv);
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
    session_v4(&m);
    encode_ok(&m, &rec);
    assert_true(rec.len > sizeof(buf));
    before = count_fds();

    assert_int_equal(lb_handover_send(sv[0], rec.data, rec.len, pipefd, 2), 0);
    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), fds, LB_HANDOVER_FDS_MAX, &n_fds),
                     -EMSGSIZE);
    assert_int_equal(n_fds, 0);
    assert_int_equal(fds[0], -1); /* untouched */
    assert_int_equal(count_fds(), before);

    sample(LB_HANDOVER_DONE, &m);
    lb_buf_free(&rec);
    encode_ok(&m, &rec);
    assert_int_equal(lb_handover_send(sv[0], rec.data, rec.len, NULL, 0), 0);
    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), fds, LB_HANDOVER_FDS_MAX, &n_fds),
                     LB_HANDOVER_HEADER_LEN);
    assert_int_equal(n_fds, 0);

    close(pipefd[0]);
    close(pipefd[1]);
    close(sv[0]);
    close(sv[1]);
    lb_buf_free(&rec);
}

static void test_recv_more_fds_than_max(void **state)
{
    uint8_t buf[64];
    int sv[2], pipefd[2], fds[LB_HANDOVER_FDS_MAX], n_fds = -1, before;

    seqpacket_pair(sv);
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
    before = count_fds();
    assert_int_equal(lb_handover_send(sv[0], "LBHO", 4, pipefd, 2), 0);
    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), fds, 1, &n_fds), -EMSGSIZE);
    assert_int_equal(n_fds, 0);
    assert_int_equal(count_fds(), before);

    /* max_fds 0: a record with one descriptor is refused too */
    assert_int_equal(lb_handover_send(sv[0], "LBHO", 4, pipefd, 1), 0);
    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), NULL, 0, &n_fds), -EMSGSIZE);
    assert_int_equal(count_fds(), before);

    close(pipefd[0]);
    close(pipefd[1]);
    close(sv[0]);
    close(sv[1]);
}

/* A peer that sends more descriptors than the control buffer holds (MSG_CTRUNC). */
static void test_recv_control_truncated(void **state)
{
    enum { MANY = 20 };
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * MANY)];
    } control;
    struct iovec iov = {"LBHO", 4};
    struct msghdr msg;
    struct cmsghdr *cmsg;
    uint8_t buf[64];
    int sv[2], many[MANY], fds[LB_HANDOVER_FDS_MAX], n_fds = -1, before;

    seqpacket_pair(sv);
    for (int i = 0; i < MANY; i++) {
        many[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_true(many[i] >= 0);
    }
    memset(&msg, 0, sizeof(msg));
    memset(&control, 0, sizeof(control));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(many));
    memcpy(CMSG_DATA(cmsg), many, sizeof(many));
    before = count_fds();
    assert_int_equal(sendmsg(sv[0], &msg, MSG_NOSIGNAL), 4);

    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), fds, LB_HANDOVER_FDS_MAX, &n_fds),
                     -EMSGSIZE);
    assert_int_equal(n_fds, 0);
    assert_int_equal(count_fds(), before);

    for (int i = 0; i < MANY; i++)
        close(many[i]);
    close(sv[0]);
    close(sv[1]);
}

static void test_recv_eof(void **state)
{
    uint8_t buf[64];
    int sv[2], fds[LB_HANDOVER_FDS_MAX], n_fds = -1;

    seqpacket_pair(sv);
    close(sv[0]);
    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), fds, LB_HANDOVER_FDS_MAX, &n_fds),
                     0);
    assert_int_equal(n_fds, 0);
    /* and the other way round: sending to a closed peer is -EPIPE, no SIGPIPE */
    seqpacket_pair(sv);
    close(sv[1]);
    assert_int_equal(lb_handover_send(sv[0], "LBHO", 4, NULL, 0), -EPIPE);
    close(sv[0]);
}

/* A full non-blocking socket: -EAGAIN, and exactly the records that were accepted arrive. */
static void test_nonblocking(void **state)
{
    static uint8_t rec[4096];
    uint8_t buf[sizeof(rec)];
    int sv[2], fds[LB_HANDOVER_FDS_MAX], n_fds, sent = 0, got = 0, rc;

    seqpacket_pair(sv);
    assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
    assert_int_equal(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), fds, LB_HANDOVER_FDS_MAX, &n_fds),
                     -EAGAIN);
    memset(rec, 'x', sizeof(rec));
    for (;;) {
        rec[0] = (uint8_t)sent;
        rc = lb_handover_send(sv[0], rec, sizeof(rec), NULL, 0);
        if (rc == -EAGAIN)
            break;
        assert_int_equal(rc, 0);
        sent++;
        assert_true(sent < 100000);
    }
    assert_true(sent > 0);
    while (lb_handover_recv(sv[1], buf, sizeof(buf), fds, LB_HANDOVER_FDS_MAX, &n_fds) ==
           (ssize_t)sizeof(rec)) {
        assert_int_equal(buf[0], (uint8_t)got);
        got++;
    }
    assert_int_equal(got, sent);
    close(sv[0]);
    close(sv[1]);
}

/* The largest SESSION crosses whole once the send buffer is sized for it. */
static void test_send_recv_largest(void **state)
{
    struct lb_handover_msg m, back;
    struct lb_buf rec;
    uint8_t *buf;
    int sv[2], pipefd[2], fds[LB_HANDOVER_FDS_MAX], n_fds = -1, rc;
    ssize_t n;

    seqpacket_pair(sv);
    rc = lb_handover_socket_setup(sv[0]);
    if (rc == -ENOBUFS) {
        /* net.core.wmem_max too low here and no CAP_NET_ADMIN: nothing to test */
        close(sv[0]);
        close(sv[1]);
        skip();
    }
    assert_int_equal(rc, 0);
    buf = malloc(LB_HANDOVER_MSG_MAX);
    assert_non_null(buf);
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
    session_v6_full(&m);
    encode_ok(&m, &rec);
    assert_int_equal(lb_handover_send(sv[0], rec.data, rec.len, pipefd, 2), 0);
    n = lb_handover_recv(sv[1], buf, LB_HANDOVER_MSG_MAX, fds, LB_HANDOVER_FDS_MAX, &n_fds);
    assert_int_equal(n, rec.len);
    assert_int_equal(n_fds, 2);
    assert_int_equal(lb_handover_decode(buf, (size_t)n, n_fds, &back, NULL), 0);
    assert_session_equal(&back.u.session, &m.u.session);
    close(fds[0]);
    close(fds[1]);
    close(pipefd[0]);
    close(pipefd[1]);
    close(sv[0]);
    close(sv[1]);
    lb_buf_free(&rec);
    free(buf);
}

/* A record the send buffer cannot hold is refused whole (what an unsized socket does). */
static void test_send_too_big(void **state)
{
    static uint8_t rec[64 * 1024];
    int sv[2], small = 4096;

    seqpacket_pair(sv);
    assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    assert_int_equal(lb_handover_send(sv[0], rec, sizeof(rec), NULL, 0), -EMSGSIZE);
    close(sv[0]);
    close(sv[1]);
}

static void test_io_bad_arguments(void **state)
{
    uint8_t buf[16];
    int sv[2], fds[3] = {0, 1, 2}, n_fds = -1;

    seqpacket_pair(sv);
    assert_int_equal(lb_handover_send(sv[0], "x", 0, NULL, 0), -EINVAL);
    assert_int_equal(lb_handover_send(sv[0], "x", 1, fds, 3), -EINVAL);
    assert_int_equal(lb_handover_send(sv[0], "x", 1, NULL, 1), -EINVAL);
    assert_int_equal(lb_handover_recv(sv[1], buf, 0, fds, 2, &n_fds), -EINVAL);
    assert_int_equal(n_fds, 0);
    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), fds, 3, &n_fds), -EINVAL);
    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), NULL, 1, &n_fds), -EINVAL);
    assert_int_equal(lb_handover_recv(sv[1], buf, sizeof(buf), fds, 2, NULL), -EINVAL);
    assert_int_equal(lb_handover_send(-1, "x", 1, NULL, 0), -EBADF);
    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_round_trip),
        cmocka_unit_test(test_listener_round_trip),
        cmocka_unit_test(test_small_messages_round_trip),
        cmocka_unit_test(test_session_ipv4_round_trip),
        cmocka_unit_test(test_session_ipv6_full_round_trip),
        cmocka_unit_test(test_reject_header),
        cmocka_unit_test(test_reject_truncated),
        cmocka_unit_test(test_reject_trailing),
        cmocka_unit_test(test_reject_fd_count),
        cmocka_unit_test(test_reject_strings),
        cmocka_unit_test(test_reject_listener),
        cmocka_unit_test(test_reject_session_fields),
        cmocka_unit_test(test_reject_backend_fields),
        cmocka_unit_test(test_view_round_trip),
        cmocka_unit_test(test_key_round_trip),
        cmocka_unit_test(test_reject_view_and_key_fields),
        cmocka_unit_test(test_session_other_version),
        cmocka_unit_test(test_decode_bad_arguments),
        cmocka_unit_test(test_encode_rejects),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_send_recv_listener),
        cmocka_unit_test(test_send_recv_session),
        cmocka_unit_test(test_recv_record_too_big),
        cmocka_unit_test(test_recv_more_fds_than_max),
        cmocka_unit_test(test_recv_control_truncated),
        cmocka_unit_test(test_recv_eof),
        cmocka_unit_test(test_nonblocking),
        cmocka_unit_test(test_send_recv_largest),
        cmocka_unit_test(test_send_too_big),
        cmocka_unit_test(test_io_bad_arguments),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
