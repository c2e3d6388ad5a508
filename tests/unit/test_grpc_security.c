/*
 * The admin API's bearer token and TLS, over real loopback sockets, against
 * lbd's real registry (admin_fixture.h).
 *
 * Certificates are made at start-up with the OpenSSL API in a temporary
 * directory: a CA, a server certificate for 127.0.0.1 and localhost signed
 * by it, a second, unrelated CA, and a certificate naming another host.
 * The main server speaks TLS and wants a token; other servers on the same
 * loop and registry cover the other combinations and the set-up errors.
 * Clients are lbctl's client library, raw sockets, and a small blocking
 * HTTP/2-over-TLS client for what lbctl never does (ALPN without h2, not
 * reading its answer for a while).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin_auth.h"
#include "admin_client.h"
#include "admin_fixture.h"
#include "admin_server.h"
#include "lb_grpc_frame.h"
#include "lb_secret.h"

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
    "named.pem", "named.key", "token",   "wrong",        "empty",
    "blank",     "spaced",    "long",    "garbage.pem",  "fifo",
};

static int setup(void **state)
{
    struct lb_admin_options opts = {0};
    struct lb_admin_limits limits;

    snprintf(dir, sizeof(dir), "/tmp/lbd-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    make_pki();
    write_file("token", "  " TOKEN "  \n");
    write_file("wrong", "not-the-token\n");
    write_file("empty", "");
    write_file("blank", " \t \n" TOKEN "\n");
    write_file("spaced", "two words\n");
    write_file("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n");
    {
        static char big[5001];

        memset(big, 'x', sizeof(big) - 1);
        write_file("long", big);
    }
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

static void expect_status(int got, const struct lb_admin_status *st, int want, const char *needle)
{
    if (got != want || (needle && !strstr(st->message, needle)))
        fail_msg("got %s \"%s\", want %s \"%s\"", lb_grpc_status_name(got), st->message,
                 lb_grpc_status_name(want), needle ? needle : "");
}

/* The main server (TLS and token) answers a well-formed client. */
static void expect_serving(void)
{
    struct lb_admin_client *c = client_for(fx.addr, TOKEN, p("ca.pem"));
    struct lb_admin_status st;

    expect_status(list_pools(c, &st), &st, LB_GRPC_OK, NULL);
    lb_admin_client_free(c);
}

/* ---- the token check on its own ---- */

static void test_auth_header_rules(void **state)
{
    static const char *const yes[] = {"Bearer " TOKEN, "bearer " TOKEN, "BEARER \t " TOKEN " \t"};
    static const char *const no[] = {
        "",
        "Bearer",
        "Bearer ",
        "Bearer  \t ",
        "Basic " TOKEN,
        TOKEN,
        "Bearer" TOKEN,
        "Bearer s3cret",
        "Bearer " TOKEN "x",
        "Bearer x" TOKEN,
        "Bearer " TOKEN " x",
        "Bearerx " TOKEN,
    };
    struct lb_admin_auth auth, open = {0};

    assert_int_equal(lb_admin_auth_set(&auth, ""), -EINVAL);
    assert_int_equal(lb_admin_auth_set(&auth, TOKEN), 0);
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (!lb_admin_auth_accepts(&auth, yes[i], strlen(yes[i])))
            fail_msg("refused \"%s\"", yes[i]);
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (lb_admin_auth_accepts(&auth, no[i], strlen(no[i])))
            fail_msg("accepted \"%s\"", no[i]);
    /* the value's length is what counts, not a NUL */
    assert_false(lb_admin_auth_accepts(&auth, "Bearer " TOKEN, strlen("Bearer " TOKEN) - 1));
    assert_true(lb_admin_auth_accepts(&open, "", 0));
}

static void expect_load_error(const char *name, const char *needle)
{
    struct lb_admin_auth auth;
    char *err = NULL;

    assert_true(lb_admin_auth_load(&auth, p(name), &err) < 0);
    assert_false(auth.required);
    assert_non_null(err);
    if (!strstr(err, needle) || !strstr(err, "admin token file"))
        fail_msg("\"%s\" does not say \"%s\"", err, needle);
    assert_null(strstr(err, "two words")); /* never quotes the file */
    free(err);
}

static void test_token_files(void **state)
{
    struct lb_admin_auth auth;
    char *err = NULL;

    assert_int_equal(lb_admin_auth_load(&auth, p("token"), &err), 0);
    assert_true(lb_admin_auth_accepts(&auth, "Bearer " TOKEN, strlen("Bearer " TOKEN)));
    expect_load_error("missing", "cannot read: No such file");
    expect_load_error("empty", "is empty");
    expect_load_error("blank", "is empty"); /* the first line counts, and it is blank */
    expect_load_error("spaced", "printable ASCII without spaces");
    expect_load_error("long", "longer than");
    {
        char d[128];

        path_of(d, sizeof(d), "");
        assert_true(lb_admin_auth_load(&auth, d, &err) < 0);
        assert_non_null(strstr(err, "is a directory"));
        free(err);
    }
}

/* A FIFO as the token file is one error at once, for lbd and lbctl alike (lb_secret). */
static void test_token_file_fifo_is_refused_without_blocking(void **state)
{
    struct lb_admin_auth auth;
    char *err = NULL, *token = NULL;

    assert_int_equal(mkfifo(p("fifo"), 0600), 0);
    alarm(5); /* a blocking open() ends the test here */
    assert_int_equal(lb_admin_auth_load(&auth, p("fifo"), &err), -EINVAL);
    assert_non_null(strstr(err, "admin token file"));
    assert_non_null(strstr(err, "is a FIFO, not a regular file"));
    free(err);
    assert_int_equal(lb_secret_read_file(p("fifo"), "admin token file", &token, &err), -EINVAL);
    alarm(0);
    assert_null(token);
    free(err);
    unlink(p("fifo"));
}

/* Everyone may read the token file: flagged (lbd warns); owner and group only: not. */
static void test_token_file_readable_by_everyone_is_flagged(void **state)
{
    static const struct {
        mode_t mode;
        bool shared;
    } cases[] = {{0600, false}, {0640, false}, {0644, true}, {0604, true}};
    struct lb_admin_auth auth;
    char *err = NULL;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool shared = !cases[i].shared;
        char *token = NULL;

        assert_int_equal(chmod(p("token"), cases[i].mode), 0);
        assert_int_equal(lb_admin_auth_load(&auth, p("token"), &err), 0);
        assert_int_equal(auth.file_shared, cases[i].shared);
        assert_int_equal(lb_secret_read(p("token"), "admin token file", &token, &shared, &err), 0);
        assert_int_equal(shared, cases[i].shared);
        lb_secret_free(token);
    }
    chmod(p("token"), 0600);
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

    expect_status(list_pools(none, &st), &st, LB_GRPC_UNAUTHENTICATED,
                  "missing or invalid admin token");
    expect_status(list_pools(wrong, &st), &st, LB_GRPC_UNAUTHENTICATED,
                  "missing or invalid admin token");
    expect_status(list_pools(right, &st), &st, LB_GRPC_OK, NULL);
    /* health probes carry no token */
    expect_status(health_check(none, &st), &st, LB_GRPC_OK, NULL);
    expect_status(health_check(wrong, &st), &st, LB_GRPC_OK, NULL);
    /* nothing about methods is told without the token */
    expect_status(lb_admin_client_call(none, "/lb.v1.Admin/Nope", &sd.base,
                                       &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                  &st, LB_GRPC_UNAUTHENTICATED, NULL);
    expect_status(lb_admin_client_call(none, "/nopath", &sd.base,
                                       &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                  &st, LB_GRPC_UNAUTHENTICATED, NULL);
    expect_status(lb_admin_client_call(right, "/lb.v1.Admin/Nope", &sd.base,
                                       &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                  &st, LB_GRPC_UNIMPLEMENTED, NULL);
    /* streams and mutations alike */
    expect_status(lb_admin_client_stream(none, "/lb.v1.Admin/WatchEvents", &watch.base,
                                         &lb__v1__event__descriptor, 3000, NULL, NULL, NULL, &st),
                  &st, LB_GRPC_UNAUTHENTICATED, NULL);
    sd.pool = "web";
    sd.id = "b1";
    sd.drain = true;
    sd.scope = LB__V1__SCOPE__SCOPE_LOCAL;
    expect_status(lb_admin_client_call(none, "/lb.v1.Admin/SetDrain", &sd.base,
                                       &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                  &st, LB_GRPC_UNAUTHENTICATED, NULL);
    assert_null(m);
    assert_false(fx_backend_drain("web", "b1"));
    expect_status(lb_admin_client_call(right, "/lb.v1.Admin/SetDrain", &sd.base,
                                       &lb__v1__set_drain_response__descriptor, 3000, &m, &st),
                  &st, LB_GRPC_OK, NULL);
    protobuf_c_message_free_unpacked(m, NULL);
    assert_true(fx_backend_drain("web", "b1"));
    sd.drain = false;
    expect_status(lb_admin_client_call(right, "/lb.v1.Admin/SetDrain", &sd.base,
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

    expect_status(list_pools(c, &st), &st, LB_GRPC_OK, NULL);
    expect_status(health_check(no_token, &st), &st, LB_GRPC_OK, NULL);
    expect_status(list_pools(no_token, &st), &st, LB_GRPC_UNAUTHENTICATED,
                  "missing or invalid admin token");
    lb_admin_client_free(c);
    lb_admin_client_free(no_token);
    /* the certificate names localhost too */
    snprintf(local, sizeof(local), "localhost:%d", lb_admin_server_port(fx.server));
    c = client_for(local, TOKEN, p("ca.pem"));
    expect_status(list_pools(c, &st), &st, LB_GRPC_OK, NULL);
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
    expect_status(list_pools(c, &st), &st, LB_GRPC_UNAVAILABLE, "TLS certificate");
    assert_true(st.transport);
    assert_non_null(strstr(st.message, "--admin-ca"));
    lb_admin_client_free(c);

    /* the right CA, but the certificate names another host */
    assert_int_equal(fx_server_new(&named, NULL, &s, &err), 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", lb_admin_server_port(s));
    c = client_for(addr, NULL, p("ca.pem"));
    expect_status(list_pools(c, &st), &st, LB_GRPC_UNAVAILABLE, "was not accepted");
    lb_admin_client_free(c);
    fx_server_free(s);

    /* TLS asked of a cleartext server */
    assert_int_equal(fx_server_new(&cleartext, NULL, &s, &err), 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", lb_admin_server_port(s));
    c = client_for(addr, NULL, p("ca.pem"));
    expect_status(list_pools(c, &st), &st, LB_GRPC_UNAVAILABLE, "TLS handshake");
    assert_non_null(strstr(st.message, "drop --admin-ca"));
    lb_admin_client_free(c);
    fx_server_free(s);
    expect_serving();
}

/* ---- raw clients on the TLS port ---- */

/* rcvbuf > 0 shrinks the receive buffer first, so that a client not reading fills the socket. */
static int tcp_connect_with(int port, int rcvbuf)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static int tcp_connect(int port)
{
    return tcp_connect_with(port, 0);
}

/* Seconds until the peer closed fd, or a negative number if it did not within `limit`. */
static double closed_after(int fd, double limit)
{
    double start = fx_now(), end = start + limit;

    while (fx_now() < end) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        uint8_t buf[4096];

        if (poll(&pfd, 1, 10) > 0 && recv(fd, buf, sizeof(buf), 0) <= 0)
            return fx_now() - start;
    }
    return -1;
}

static void send_and_expect_close(const void *data, size_t len)
{
    int fd = tcp_connect(lb_admin_server_port(fx.server));

    assert_int_equal(send(fd, data, len, MSG_NOSIGNAL), (ssize_t)len);
    assert_true(closed_after(fd, 3) >= 0);
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
    expect_status(list_pools(plain, &st), &st, LB_GRPC_UNAVAILABLE, "pass --admin-ca");
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
    double start = fx_now();
    int idle = tcp_connect(port), partial = tcp_connect(port);

    /* others are served while two clients stall */
    assert_int_equal(send(partial, partial_hello, sizeof(partial_hello), MSG_NOSIGNAL),
                     (ssize_t)sizeof(partial_hello));
    expect_serving();
    assert_true(closed_after(idle, 3) >= 0);
    assert_true(closed_after(partial, 3) >= 0);
    /* not before the timeout (a little slack for timer rounding) */
    assert_true(fx_now() - start >= HANDSHAKE_TIMEOUT_MS / 1000.0 - 0.05);
    close(idle);
    close(partial);
    expect_serving();
}

/* A blocking HTTP/2-over-TLS client with nghttp2 on an OpenSSL connection. */
struct tls_h2 {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    nghttp2_session *session;
    unsigned open; /* streams not closed yet */
    unsigned ok;   /* grpc-status 0 seen */
    size_t data_bytes;
};

static ssize_t tls_h2_send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags,
                              void *ud)
{
    struct tls_h2 *c = ud;
    int n = SSL_write(c->ssl, data, (int)len);

    return n > 0 ? n : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int tls_h2_header_cb(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                            size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                            void *ud)
{
    if (namelen == 11 && memcmp(name, "grpc-status", 11) == 0 && valuelen == 1 && value[0] == '0')
        ((struct tls_h2 *)ud)->ok++;
    return 0;
}

static int tls_h2_data_cb(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                          size_t len, void *ud)
{
    ((struct tls_h2 *)ud)->data_bytes += len;
    return 0;
}

static int tls_h2_close_cb(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    ((struct tls_h2 *)ud)->open--;
    return 0;
}

/* Connects offering `alpn` (wire format); returns false when the handshake fails. */
static bool tls_h2_open(struct tls_h2 *c, const char *alpn, size_t alpn_len, int rcvbuf)
{
    memset(c, 0, sizeof(*c));
    c->fd = tcp_connect_with(lb_admin_server_port(fx.server), rcvbuf);
    c->ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(c->ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(c->ctx, p("ca.pem"), NULL), 1);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    assert_int_equal(
        SSL_CTX_set_alpn_protos(c->ctx, (const unsigned char *)alpn, (unsigned)alpn_len), 0);
    c->ssl = SSL_new(c->ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set1_host(c->ssl, "127.0.0.1");
    if (SSL_connect(c->ssl) != 1) {
        ERR_clear_error();
        return false;
    }
    return true;
}

static void tls_h2_start(struct tls_h2 *c, uint32_t window)
{
    nghttp2_session_callbacks *cb;
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window}};

    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, tls_h2_send_cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, tls_h2_header_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, tls_h2_data_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, tls_h2_close_cb);
    assert_int_equal(nghttp2_session_client_new(&c->session, cb, c), 0);
    nghttp2_session_callbacks_del(cb);
    assert_int_equal(nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 1), 0);
    /* the connection window too, so only the socket buffers hold the server back */
    nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, (int32_t)window);
}

static void tls_h2_close(struct tls_h2 *c)
{
    if (c->session)
        nghttp2_session_del(c->session);
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    close(c->fd);
    ERR_clear_error();
}

/* The request body: one empty message, then END_STREAM. */
static ssize_t tls_h2_body_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                              uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    memset(buf, 0, LB_GRPC_FRAME_HEADER_LEN);
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return LB_GRPC_FRAME_HEADER_LEN;
}

static void tls_h2_request(struct tls_h2 *c, const char *path, const char *bearer)
{
    nghttp2_nv nva[7] = {
        {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
        {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, 0},
        {(uint8_t *)":authority", (uint8_t *)"lbd", 10, 3, 0},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0},
        {(uint8_t *)"te", (uint8_t *)"trailers", 2, 8, 0},
        {(uint8_t *)"authorization", (uint8_t *)bearer, 13, strlen(bearer), 0},
    };
    nghttp2_data_provider dp = {.read_callback = tls_h2_body_cb};

    assert_true(nghttp2_submit_request(c->session, NULL, nva, 7, &dp, NULL) > 0);
    c->open++;
}

/* Sends what is pending and reads until every stream closed or `seconds` pass. */
static void tls_h2_pump(struct tls_h2 *c, double seconds)
{
    double end = fx_now() + seconds;

    while (c->open > 0 && fx_now() < end) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        uint8_t buf[16384];
        int n;

        assert_int_equal(nghttp2_session_send(c->session), 0);
        if (SSL_pending(c->ssl) == 0 && poll(&pfd, 1, 20) <= 0)
            continue;
        n = SSL_read(c->ssl, buf, sizeof(buf));
        if (n <= 0)
            break;
        assert_true(nghttp2_session_mem_recv(c->session, buf, (size_t)n) >= 0);
    }
    nghttp2_session_send(c->session);
}

static void test_tls_alpn_must_offer_h2(void **state)
{
    struct tls_h2 c;

    assert_false(tls_h2_open(&c, "\x08http/1.1", 9, 0));
    tls_h2_close(&c);
    assert_true(tls_h2_open(&c, "\x08http/1.1\x02h2", 12, 0));
    assert_string_equal(SSL_get_version(c.ssl), "TLSv1.3");
    {
        const unsigned char *proto;
        unsigned int len;

        SSL_get0_alpn_selected(c.ssl, &proto, &len);
        assert_int_equal(len, 2);
        assert_memory_equal(proto, "h2", 2);
    }
    tls_h2_close(&c);
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
    struct tls_h2 c;

    fx_add_backends("db", BACKENDS);
    assert_true(tls_h2_open(&c, "\x02h2", 3, 4096));
    tls_h2_start(&c, 1u << 30);
    for (int i = 0; i < CALLS; i++)
        tls_h2_request(&c, "/lb.v1.Admin/ListBackends", "Bearer " TOKEN);
    assert_int_equal(nghttp2_session_send(c.session), 0);
    usleep(500 * 1000); /* the server fills the socket meanwhile */
    tls_h2_pump(&c, 20);
    assert_int_equal(c.open, 0);
    assert_int_equal(c.ok, CALLS);
    if (c.data_bytes < (size_t)CALLS * BACKENDS * 30)
        fail_msg("only %zu bytes", c.data_bytes);
    tls_h2_close(&c);
    expect_serving();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth_header_rules),
        cmocka_unit_test(test_token_files),
        cmocka_unit_test(test_token_file_fifo_is_refused_without_blocking),
        cmocka_unit_test(test_token_file_readable_by_everyone_is_flagged),
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
