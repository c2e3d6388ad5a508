/*
 * The admin API's bearer token and TLS, over real loopback sockets, against
 * lbd's real registry (admin_fixture.h).
 *
 * Certificates are made at start-up with the OpenSSL API in a temporary
 * directory: a CA, a server certificate for 127.0.0.1 and localhost signed
 * by it, a second, unrelated CA, and a certificate naming another host.
 * The main server speaks TLS and wants a token; other servers on the same
 * loop and registry cover the other combinations and the set-up errors.
 * Clients are lbctl's client library, raw sockets, and the raw HTTP/2
 * client over TLS (h2_client.h) for what lbctl never does (ALPN without
 * h2, not reading its answer for a while).  The token check and token
 * files on their own are unit tests (tests/unit/test_admin_auth.c).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <nghttp2/nghttp2.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin_client.h"
#include "admin_fixture.h"
#include "admin_server.h"
#include "h2_client.h"
#include "lb_grpc_frame.h"

#include "grpc/health/v1/health.pb-c.h"
#include "lb/v1/admin.pb-c.h"

#define TOKEN                "s3cret-t0ken"
#define HANDSHAKE_TIMEOUT_MS 300

static char dir[64];

static void path_of(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", dir, name);
}

static const char *p(const char *name)
{
    static char bufs[8][128];
    static int next;
    char *b = bufs[next++ % 8];

    path_of(b, sizeof(bufs[0]), name);
    return b;
}

static void write_file(const char *name, const char *content)
{
    FILE *f = fopen(p(name), "w");

    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

/* ---- certificates ---- */

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;

    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/* A certificate for `key`, signed by issuer/issuer_key (self-signed when NULL). */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       const char *san)
{
    static long serial = 1;
    X509 *x = X509_new();
    X509_NAME *name;

    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600);
    X509_set_pubkey(x, key);
    name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    add_ext(x, issuer ? issuer : x, NID_subject_key_identifier, "hash");
    if (!issuer) {
        add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(x, issuer, NID_basic_constraints, "CA:FALSE");
        add_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
        add_ext(x, issuer, NID_ext_key_usage, "serverAuth");
        add_ext(x, issuer, NID_subject_alt_name, san);
    }
    assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void write_pem(const char *name, X509 *cert, EVP_PKEY *key)
{
    FILE *f = fopen(p(name), "w");

    assert_non_null(f);
    if (cert)
        assert_int_equal(PEM_write_X509(f, cert), 1);
    if (key)
        assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

static void make_pki(void)
{
    EVP_PKEY *ca_key = EVP_EC_gen("P-256"), *srv_key = EVP_EC_gen("P-256");
    EVP_PKEY *other_key = EVP_EC_gen("P-256"), *named_key = EVP_EC_gen("P-256");
    X509 *ca, *srv, *other, *named;

    assert_non_null(ca_key);
    assert_non_null(srv_key);
    assert_non_null(other_key);
    assert_non_null(named_key);
    ca = make_cert(ca_key, "lbd test CA", NULL, NULL, NULL);
    srv = make_cert(srv_key, "lbd", ca, ca_key, "IP:127.0.0.1,DNS:localhost");
    other = make_cert(other_key, "some other CA", NULL, NULL, NULL);
    named = make_cert(named_key, "elsewhere", ca, ca_key, "DNS:other.example");
    write_pem("ca.pem", ca, NULL);
    write_pem("srv.pem", srv, NULL);
    write_pem("srv.key", NULL, srv_key);
    write_pem("other-ca.pem", other, NULL);
    write_pem("other.key", NULL, other_key);
    write_pem("named.pem", named, NULL);
    write_pem("named.key", NULL, named_key);
    X509_free(ca);
    X509_free(srv);
    X509_free(other);
    X509_free(named);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(srv_key);
    EVP_PKEY_free(other_key);
    EVP_PKEY_free(named_key);
}

static const char *const files[] = {
    "ca.pem",    "srv.pem",   "srv.key", "other-ca.pem", "other.key",
    "named.pem", "named.key", "token",   "empty",        "garbage.pem",
};

static int setup(void **state)
{
    struct lb_admin_options opts = {0};
    struct lb_admin_limits limits;

    snprintf(dir, sizeof(dir), "/tmp/lbd-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    make_pki();
    write_file("token", "  " TOKEN "  \n");
    write_file("empty", "");
    write_file("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n");
    lb_admin_limits_defaults(&limits);
    limits.handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
    opts.token_file = p("token");
    opts.tls_cert_file = p("srv.pem");
    opts.tls_key_file = p("srv.key");
    fx_start(&opts, &limits);
    return 0;
}

static int teardown(void **state)
{
    fx_stop();
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(p(files[i]));
    rmdir(dir);
    return 0;
}

/* ---- calls through lbctl's client ---- */

static struct lb_admin_client *client_for(const char *addr, const char *token, const char *ca)
{
    struct lb_admin_client_options co = {.addr = addr, .token = token, .ca_file = ca};
    struct lb_admin_client *c = NULL;
    char *err = NULL;

    if (lb_admin_client_new(&co, &c, &err) != 0)
        fail_msg("client: %s", err ? err : "?");
    return c;
}

static int list_pools(struct lb_admin_client *c, struct lb_admin_status *st)
{
    Lb__V1__ListPoolsRequest req = LB__V1__LIST_POOLS_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    int rc = lb_admin_client_call(c, "/lb.v1.Admin/ListPools", &req.base,
                                  &lb__v1__list_pools_response__descriptor, 3000, &m, st);

    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

static int health_check(struct lb_admin_client *c, struct lb_admin_status *st)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    int rc =
        lb_admin_client_call(c, "/grpc.health.v1.Health/Check", &req.base,
                             &grpc__health__v1__health_check_response__descriptor, 3000, &m, st);

    if (m) {
        assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status,
                         GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    return rc;
}

/* The main server (TLS and token) answers a well-formed client. */
static void expect_serving(void)
{
    struct lb_admin_client *c = client_for(fx.addr, TOKEN, p("ca.pem"));
    struct lb_admin_status st;

    fx_expect_status(list_pools(c, &st), &st, LB_GRPC_OK, NULL);
    lb_admin_client_free(c);
}

struct bad_config {
    const char *token, *cert, *key;
    const char *needle;
};

static void test_server_config_errors(void **state)
{
    const struct bad_config cases[] = {
        {NULL, "srv.pem", NULL, "go together"},
        {NULL, NULL, "srv.key", "go together"},
        {NULL, "missing.pem", "srv.key", "admin TLS certificate"},
        {NULL, "srv.pem", "missing.key", "admin TLS key"},
        {NULL, "garbage.pem", "srv.key", "not a usable PEM certificate"},
        {NULL, "srv.pem", "ca.pem", "not a usable unencrypted PEM private key"},
        {NULL, "srv.pem", "other.key", "does not belong to the certificate"},
        {"missing", NULL, NULL, "admin token file"},
        {"empty", "srv.pem", "srv.key", "is empty"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct lb_admin_options o = {
            .token_file = cases[i].token ? p(cases[i].token) : NULL,
            .tls_cert_file = cases[i].cert ? p(cases[i].cert) : NULL,
            .tls_key_file = cases[i].key ? p(cases[i].key) : NULL,
        };
        struct lb_admin_server *s = NULL;
        char *err = NULL;

        assert_true(fx_server_new(&o, NULL, &s, &err) < 0);
        assert_null(s);
        if (!err || !strstr(err, cases[i].needle))
            fail_msg("case %zu: \"%s\" does not say \"%s\"", i, err ? err : "(null)",
                     cases[i].needle);
        assert_null(strchr(err, '\n'));
        free(err);
    }
}

/* ---- token over cleartext ---- */

static void test_token_required(void **state)
{
    struct lb_admin_options o = {.token_file = p("token")};
    struct lb_admin_server *s;
    struct lb_admin_client *none, *wrong, *right;
    struct lb_admin_status st;
    Lb__V1__WatchEventsRequest watch = LB__V1__WATCH_EVENTS_REQUEST__INIT;
    Lb__V1__SetDrainRequest sd = LB__V1__SET_DRAIN_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    char *err = NULL, addr[64];

    assert_int_equal(fx_server_new(&o, NULL, &s, &err), 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", lb_admin_server_port(s));
    none = client_for(addr, NULL, NULL);
    wrong = client_for(addr, "not-the-token", NULL);
    right = client_for(addr, TOKEN, NULL);

    fx_expect_status(list_pools(none, &st), &st, LB_GRPC_UNAUTHENTICATED,
                     "missing or invalid admin token");
    fx_expect_status(list_pools(wrong, &st), &st, LB_GRPC_UNAUTHENTICATED,
                     "missing or invalid admin token");
    fx_expect_status(list_pools(right, &st), &st, LB_GRPC_OK, NULL);
    /* health probes carry no token */
    fx_expect_status(health_check(none, &st), &st, LB_GRPC_OK, NULL);
    fx_expect_status(health_check(wrong, &st), &st, LB_GRPC_OK, NULL);
    /* nothing about methods is told without the token */
    fx_expect_status(lb_admin_client_call(none, "/lb.v1.Admin/Nope", &sd.base,
                                          &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                     &st, LB_GRPC_UNAUTHENTICATED, NULL);
    fx_expect_status(lb_admin_client_call(none, "/nopath", &sd.base,
                                          &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                     &st, LB_GRPC_UNAUTHENTICATED, NULL);
    fx_expect_status(lb_admin_client_call(right, "/lb.v1.Admin/Nope", &sd.base,
                                          &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                     &st, LB_GRPC_UNIMPLEMENTED, NULL);
    /* streams and mutations alike */
    fx_expect_status(lb_admin_client_stream(none, "/lb.v1.Admin/WatchEvents", &watch.base,
                                            &lb__v1__event__descriptor, 3000, NULL, NULL, NULL,
                                            &st),
                     &st, LB_GRPC_UNAUTHENTICATED, NULL);
    sd.pool = "web";
    sd.id = "b1";
    sd.drain = true;
    sd.scope = LB__V1__SCOPE__SCOPE_LOCAL;
    fx_expect_status(lb_admin_client_call(none, "/lb.v1.Admin/SetDrain", &sd.base,
                                          &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                     &st, LB_GRPC_UNAUTHENTICATED, NULL);
    assert_null(m);
    assert_false(fx_backend_drain("web", "b1"));
    fx_expect_status(lb_admin_client_call(right, "/lb.v1.Admin/SetDrain", &sd.base,
                                          &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                     &st, LB_GRPC_OK, NULL);
    protobuf_c_message_free_unpacked(m, NULL);
    assert_true(fx_backend_drain("web", "b1"));
    sd.drain = false;
    fx_expect_status(lb_admin_client_call(right, "/lb.v1.Admin/SetDrain", &sd.base,
                                          &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                     &st, LB_GRPC_OK, NULL);
    protobuf_c_message_free_unpacked(m, NULL);

    lb_admin_client_free(none);
    lb_admin_client_free(wrong);
    lb_admin_client_free(right);
    fx_server_free(s);
}

/* ---- TLS through lbctl's client ---- */

static void test_tls_calls(void **state)
{
    struct lb_admin_client *c = client_for(fx.addr, TOKEN, p("ca.pem"));
    struct lb_admin_client *no_token = client_for(fx.addr, NULL, p("ca.pem"));
    struct lb_admin_status st;
    char local[64];

    fx_expect_status(list_pools(c, &st), &st, LB_GRPC_OK, NULL);
    fx_expect_status(health_check(no_token, &st), &st, LB_GRPC_OK, NULL);
    fx_expect_status(list_pools(no_token, &st), &st, LB_GRPC_UNAUTHENTICATED,
                     "missing or invalid admin token");
    lb_admin_client_free(c);
    lb_admin_client_free(no_token);
    /* the certificate names localhost too */
    snprintf(local, sizeof(local), "localhost:%d", lb_admin_server_port(fx.server));
    c = client_for(local, TOKEN, p("ca.pem"));
    fx_expect_status(list_pools(c, &st), &st, LB_GRPC_OK, NULL);
    lb_admin_client_free(c);
}

static void test_tls_client_refuses_wrong_server(void **state)
{
    struct lb_admin_options cleartext = {0};
    struct lb_admin_options named = {.tls_cert_file = p("named.pem"),
                                     .tls_key_file = p("named.key")};
    struct lb_admin_server *s;
    struct lb_admin_client *c;
    struct lb_admin_status st;
    char *err = NULL, addr[64];

    /* a CA that did not sign lbd's certificate */
    c = client_for(fx.addr, TOKEN, p("other-ca.pem"));
    fx_expect_status(list_pools(c, &st), &st, LB_GRPC_UNAVAILABLE, "TLS certificate");
    assert_true(st.transport);
    assert_non_null(strstr(st.message, "--admin-ca"));
    lb_admin_client_free(c);

    /* the right CA, but the certificate names another host */
    assert_int_equal(fx_server_new(&named, NULL, &s, &err), 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", lb_admin_server_port(s));
    c = client_for(addr, NULL, p("ca.pem"));
    fx_expect_status(list_pools(c, &st), &st, LB_GRPC_UNAVAILABLE, "was not accepted");
    lb_admin_client_free(c);
    fx_server_free(s);

    /* TLS asked of a cleartext server */
    assert_int_equal(fx_server_new(&cleartext, NULL, &s, &err), 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", lb_admin_server_port(s));
    c = client_for(addr, NULL, p("ca.pem"));
    fx_expect_status(list_pools(c, &st), &st, LB_GRPC_UNAVAILABLE, "TLS handshake");
    assert_non_null(strstr(st.message, "drop --admin-ca"));
    lb_admin_client_free(c);
    fx_server_free(s);
    expect_serving();
}

/* ---- raw clients on the TLS port ---- */

static void send_and_expect_close(const void *data, size_t len)
{
    int fd = h2_tcp_connect(NULL, lb_admin_server_port(fx.server), 0);

    assert_int_equal(send(fd, data, len, MSG_NOSIGNAL), (ssize_t)len);
    assert_true(h2_closed_after(fd, 3) >= 0);
    close(fd);
}

static void test_tls_port_refuses_cleartext(void **state)
{
    static const char http1[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    struct lb_admin_client *plain = client_for(fx.addr, TOKEN, NULL);
    struct lb_admin_status st;
    uint8_t noise[512];

    /* lbctl without --admin-ca */
    fx_expect_status(list_pools(plain, &st), &st, LB_GRPC_UNAVAILABLE, "pass --admin-ca");
    assert_true(st.transport);
    lb_admin_client_free(plain);
    /* HTTP/1, an h2c preface, noise, a TLS record type followed by junk */
    send_and_expect_close(http1, sizeof(http1) - 1);
    send_and_expect_close(preface, sizeof(preface) - 1);
    srand(11);
    for (size_t i = 0; i < sizeof(noise); i++)
        noise[i] = (uint8_t)rand();
    noise[0] = 0x42;
    send_and_expect_close(noise, sizeof(noise));
    noise[0] = 0x16;
    send_and_expect_close(noise, sizeof(noise));
    expect_serving();
}

static void test_tls_handshake_timeout(void **state)
{
    static const uint8_t partial_hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};
    int port = lb_admin_server_port(fx.server);
    double start = h2_now();
    int idle = h2_tcp_connect(NULL, port, 0), partial = h2_tcp_connect(NULL, port, 0);

    /* others are served while two clients stall */
    assert_int_equal(send(partial, partial_hello, sizeof(partial_hello), MSG_NOSIGNAL),
                     (ssize_t)sizeof(partial_hello));
    expect_serving();
    assert_true(h2_closed_after(idle, 3) >= 0);
    assert_true(h2_closed_after(partial, 3) >= 0);
    /* not before the timeout (a little slack for timer rounding) */
    assert_true(h2_now() - start >= HANDSHAKE_TIMEOUT_MS / 1000.0 - 0.05);
    close(idle);
    close(partial);
    expect_serving();
}

/* A raw HTTP/2 client on the main (TLS) server, offering `alpn`. */
static bool tls_open(struct h2 *c, const char *alpn, size_t alpn_len, int rcvbuf)
{
    return h2_open_tls(c, lb_admin_server_port(fx.server), p("ca.pem"), alpn, alpn_len, rcvbuf);
}

static bool server_waits_to_write(void *arg)
{
    return fx_server_waits_to_write(fx.server);
}

static void test_tls_alpn_must_offer_h2(void **state)
{
    struct h2 c;

    assert_false(tls_open(&c, "\x08http/1.1", 9, 0));
    h2_close(&c);
    assert_true(tls_open(&c, "\x08http/1.1\x02h2", 12, 0));
    assert_string_equal(SSL_get_version(c.ssl), "TLSv1.3");
    {
        const unsigned char *proto;
        unsigned int len;

        SSL_get0_alpn_selected(c.ssl, &proto, &len);
        assert_int_equal(len, 2);
        assert_memory_equal(proto, "h2", 2);
    }
    h2_close(&c);
    expect_serving();
}

/*
 * Big answers to a client that reads nothing for a while, through a small
 * receive buffer: the server's socket fills, SSL_write() wants to write,
 * and once the client reads again every answer arrives whole.
 */
static void test_tls_big_answers_to_slow_reader(void **state)
{
    enum { CALLS = 8, BACKENDS = 30000 };
    struct h2 c;

    fx_add_backends("db", BACKENDS);
    assert_true(tls_open(&c, "\x02h2", 3, 4096));
    h2_start(&c, 1u << 30);
    for (int i = 0; i < CALLS; i++)
        h2_request(&c, "/lb.v1.Admin/ListBackends", "application/grpc", "Bearer " TOKEN,
                   "\0\0\0\0\0", 5);
    /* the server fills the socket meanwhile, until it must wait for it */
    assert_true(fx_wait_until(server_waits_to_write, NULL, 10));
    h2_pump(&c, 20);
    assert_int_equal(c.open, 0);
    assert_int_equal(c.ok, CALLS);
    if (c.data_bytes < (size_t)CALLS * BACKENDS * 30)
        fail_msg("only %zu bytes", c.data_bytes);
    h2_close(&c);
    expect_serving();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_config_errors),
        cmocka_unit_test(test_token_required),
        cmocka_unit_test(test_tls_calls),
        cmocka_unit_test(test_tls_client_refuses_wrong_server),
        cmocka_unit_test(test_tls_port_refuses_cleartext),
        cmocka_unit_test(test_tls_handshake_timeout),
        cmocka_unit_test(test_tls_alpn_must_offer_h2),
        cmocka_unit_test(test_tls_big_answers_to_slow_reader),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
