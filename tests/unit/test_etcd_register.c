/*
 * `lbctl register` before it talks to etcd: every bad flag, variable or
 * value is a usage error (exit 2) with one line on stderr, and --help
 * succeeds.  Registering itself needs a real etcd: the integration tier.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "register.h"

static const char *const env_names[] = {"LBCTL_ETCD",     "LBCTL_PREFIX",        "LBCTL_POOL",
                                        "LBCTL_ID",       "LBCTL_ADDR",          "LBCTL_WEIGHT",
                                        "LBCTL_TTL",      "LBCTL_ETCD_CA",       "LBCTL_ETCD_CERT",
                                        "LBCTL_ETCD_KEY", "LBCTL_ETCD_USER_FILE"};

static int clear_env(void **state)
{
    for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
        unsetenv(env_names[i]);
    return 0;
}

#define RUN(...)                                                                                   \
    ({                                                                                             \
        char *argv_[] = {"register", __VA_ARGS__, NULL};                                           \
        lbctl_register_main((int)(sizeof(argv_) / sizeof(argv_[0])) - 1, argv_);                   \
    })

#define OK_FLAGS "--etcd", "http://127.0.0.1:1", "--pool", "web", "--id", "b1"

static void test_usage_errors(void **state)
{
    char *none[] = {"register", NULL};

    assert_int_equal(lbctl_register_main(1, none), 2); /* --pool, --id, --addr missing */
    assert_int_equal(RUN(OK_FLAGS), 2);                /* --addr missing */
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "::1:80"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:0"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--weight", "1001"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--weight", "-1"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--weight", "ten"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--ttl", "1s"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--ttl", "10"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--prefix", "lb"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--bogus"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "extra"), 2);
    assert_int_equal(
        RUN("--etcd", "127.0.0.1:2379", "--pool", "web", "--id", "b1", "--addr", "10.0.0.5:80"), 2);
    assert_int_equal(
        RUN("--etcd", "http://a,ftp://b", "--pool", "web", "--id", "b1", "--addr", "10.0.0.5:80"),
        2);
    assert_int_equal(RUN("--pool", "we b", "--id", "b1", "--addr", "10.0.0.5:80"), 2);
    assert_int_equal(RUN("--pool", "web", "--id", "b/1", "--addr", "10.0.0.5:80"), 2);
}

static void test_env_errors(void **state)
{
    setenv("LBCTL_WEIGHT", "lots", 1);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80"), 2);
    unsetenv("LBCTL_WEIGHT");
    setenv("LBCTL_ADDR", "nope", 1);
    assert_int_equal(RUN(OK_FLAGS), 2);
    unsetenv("LBCTL_ADDR");
}

/* TLS and credential files are read before anything is sent: a bad one is a usage error. */
static void test_file_errors(void **state)
{
    char path[] = "/tmp/lbtest-reg-XXXXXX";
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, "no colon\n", 9), 9);
    close(fd);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--etcd-user-file", path), 2);
    assert_int_equal(
        RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--etcd-user-file", "/nonexistent/lbtest"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--etcd-ca", "/nonexistent/ca.pem"), 2);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80", "--etcd-key", path), 2);
    setenv("LBCTL_ETCD_CERT", "/nonexistent/cert.pem", 1);
    assert_int_equal(RUN(OK_FLAGS, "--addr", "10.0.0.5:80"), 2);
    unsetenv("LBCTL_ETCD_CERT");
    unlink(path);
}

static void test_help(void **state)
{
    assert_int_equal(RUN("--help"), 0);
    assert_int_equal(RUN("-h"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_usage_errors, clear_env),
        cmocka_unit_test_setup(test_env_errors, clear_env),
        cmocka_unit_test_setup(test_file_errors, clear_env),
        cmocka_unit_test_setup(test_help, clear_env),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
