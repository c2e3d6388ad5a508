/*
 * etcd users before any request: the credentials file (good shapes, every
 * refusal, no password in a message), the login body and token as etcd
 * 3.4.23 writes them, the errors that call for a new login, and what a
 * registrar concludes when it reads its key back.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lb_etcd_auth.h"
#include "lb_etcd_json.h"
#include "lb_lease.h"

#define SECRET "s3cr:et pw"

static void test_creds_good(void **state)
{
    static const struct {
        const char *text, *user, *password;
    } good[] = {
        {"app:apppw", "app", "apppw"},
        {"app:apppw\n", "app", "apppw"},
        {"app:apppw\r\n", "app", "apppw"},
        {"app:" SECRET "\n", "app", SECRET}, /* spaces and ':' in the password */
        {"root:x", "root", "x"},
        {"u.s-e_r@x:p\tw", "u.s-e_r@x", NULL}, /* a tab is a control character: refused */
    };
    struct lb_etcd_creds c;
    char *err = NULL;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int rc = lb_etcd_creds_parse(good[i].text, strlen(good[i].text), &c, &err);

        if (!good[i].password) {
            assert_int_equal(rc, -EINVAL);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_string_equal(c.user, good[i].user);
        assert_string_equal(c.password, good[i].password);
    }
    lb_etcd_creds_wipe(&c);
    assert_int_equal(c.user[0], 0);
    assert_int_equal(c.password[0], 0);
    free(err);
}

static void test_creds_refused(void **state)
{
    static const char *const bad[] = {
        "",
        "\n",
        "apppw",    /* no ':' */
        ":" SECRET, /* no user */
        "app:",     /* no password */
        "app:\n",
        "a pp:" SECRET,         /* space in the user */
        "app:" SECRET "\nmore", /* two lines */
        "app:" SECRET "\n\n",   /* a blank second line */
        "app:" SECRET "\x01",   /* control character */
    };
    struct lb_etcd_creds c;
    char long_user[LB_ETCD_USER_MAX + 8], long_pass[LB_ETCD_PASSWORD_MAX + 8];
    char *err = NULL;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(lb_etcd_creds_parse(bad[i], strlen(bad[i]), &c, &err), -EINVAL);
        assert_non_null(err);
        assert_null(strstr(err, "s3cr")); /* never quotes the password */
    }
    memset(long_user, 'u', sizeof(long_user));
    memcpy(long_user + sizeof(long_user) - 3, ":pw", 3);
    assert_int_equal(lb_etcd_creds_parse(long_user, sizeof(long_user), &c, &err), -EINVAL);
    memset(long_pass, 'p', sizeof(long_pass));
    memcpy(long_pass, "app:", 4);
    assert_int_equal(lb_etcd_creds_parse(long_pass, sizeof(long_pass), &c, &err), -EINVAL);
    /* a NUL byte in the file */
    assert_int_equal(lb_etcd_creds_parse("app:p\0w", 7, &c, &err), -EINVAL);
    free(err);
}

static void test_creds_file(void **state)
{
    char path[] = "/tmp/lbtest-creds-XXXXXX";
    struct lb_etcd_creds c;
    bool shared = true;
    char *err = NULL;
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, "app:" SECRET "\n", strlen("app:" SECRET "\n")),
                     (ssize_t)strlen("app:" SECRET "\n"));
    close(fd);
    chmod(path, 0600);
    assert_int_equal(lb_etcd_creds_load(path, &c, &shared, &err), 0);
    assert_false(shared);
    assert_string_equal(c.password, SECRET);
    chmod(path, 0640); /* group access: a secret mounted with fsGroup */
    assert_int_equal(lb_etcd_creds_load(path, &c, &shared, &err), 0);
    assert_false(shared);
    chmod(path, 0644);
    assert_int_equal(lb_etcd_creds_load(path, &c, &shared, &err), 0);
    assert_true(shared);
    unlink(path);
    assert_int_equal(lb_etcd_creds_load(path, &c, &shared, &err), -ENOENT);
    assert_non_null(strstr(err, "--etcd-user-file"));
    assert_non_null(strstr(err, path));
    assert_int_equal(lb_etcd_creds_load("/tmp", &c, &shared, &err), -EINVAL);
    assert_non_null(strstr(err, "not a regular file"));
    free(err);
}

/* A FIFO (or any non-regular file) is refused at once: open() must not wait for a writer. */
static void test_creds_file_fifo_is_refused_without_blocking(void **state)
{
    char dir[] = "/tmp/lbtest-fifo-XXXXXX", path[64];
    struct lb_etcd_creds c;
    bool shared = true;
    char *err = NULL;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/creds", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    alarm(5); /* a blocking open() ends the test here */
    assert_int_equal(lb_etcd_creds_load(path, &c, &shared, &err), -EINVAL);
    alarm(0);
    assert_non_null(strstr(err, "--etcd-user-file"));
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "FIFO, not a regular file"));
    assert_int_equal(c.user[0], 0);
    free(err);
    err = NULL;
    assert_int_equal(lb_etcd_creds_load("/dev/null", &c, &shared, &err), -EINVAL);
    assert_non_null(strstr(err, "device, not a regular file"));
    free(err);
    unlink(path);
    rmdir(dir);
}

static void test_login_body_and_token(void **state)
{
    struct lb_etcd_creds c;
    char token[LB_ETCD_TOKEN_MAX], *body = NULL, *err = NULL;
    json_object *root = NULL, *v = NULL;
    static const char answer[] =
        "{\"header\":{\"cluster_id\":\"15118495548433857066\",\"member_id\":"
        "\"13668033151171901709\",\"revision\":\"1\",\"raft_term\":\"2\"},"
        "\"token\":\"PZQvRdBNJJHBpZth.18\"}";

    assert_int_equal(lb_etcd_creds_parse("app:p\"w\\x", 9, &c, &err), 0);
    assert_int_equal(lb_etcd_auth_request(&c, &body), 0);
    assert_int_equal(lb_etcd_json_parse(body, strlen(body), &root, &err), 0);
    assert_true(json_object_object_get_ex(root, "name", &v));
    assert_string_equal(json_object_get_string(v), "app");
    assert_true(json_object_object_get_ex(root, "password", &v));
    assert_string_equal(json_object_get_string(v), "p\"w\\x");
    json_object_put(root);
    lb_etcd_auth_body_free(body);

    assert_int_equal(lb_etcd_auth_parse_token(answer, strlen(answer), token, &err), 0);
    assert_string_equal(token, "PZQvRdBNJJHBpZth.18");
    /* no token, or one that would break the header */
    assert_int_equal(lb_etcd_auth_parse_token("{\"header\":{}}", 13, token, &err), -EINVAL);
    assert_int_equal(lb_etcd_auth_parse_token("{\"token\":\"\"}", 12, token, &err), -EINVAL);
    assert_int_equal(lb_etcd_auth_parse_token("{\"token\":\"a\\r\\nX: y\"}", 21, token, &err),
                     -EINVAL);
    assert_int_equal(lb_etcd_auth_parse_token("{\"token\":\"a b\"}", 15, token, &err), -EINVAL);
    assert_int_equal(lb_etcd_auth_parse_token("{\"token\":7}", 11, token, &err), -EINVAL);
    assert_int_equal(lb_etcd_auth_parse_token("[]", 2, token, &err), -EINVAL);
    assert_int_equal(lb_etcd_auth_parse_token("nope", 4, token, &err), -EINVAL);
    assert_string_equal(token, "");
    free(err);
}

static void test_token_errors(void **state)
{
    /* as etcd 3.4.23 words them: unary error bodies and watch cancel reasons */
    assert_true(lb_etcd_auth_is_token_error("HTTP 401: etcdserver: invalid auth token"));
    assert_true(lb_etcd_auth_is_token_error(
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"));
    assert_true(lb_etcd_auth_is_token_error(
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"));
    assert_false(lb_etcd_auth_is_token_error("etcdserver: permission denied"));
    assert_false(lb_etcd_auth_is_token_error(
        "etcdserver: authentication failed, invalid user ID or password"));
    assert_false(lb_etcd_auth_is_token_error(""));
    assert_false(lb_etcd_auth_is_token_error(NULL));
}

static void test_key_classify(void **state)
{
    static const char value[] = "{\"addr\":\"10.0.0.5:80\",\"weight\":100}";
    struct lb_etcd_kv kv = {.value = (char *)value, .value_len = sizeof(value) - 1, .lease = 7};
    struct lb_etcd_range r = {.kvs = &kv, .n_kvs = 1};
    int64_t holder = -1;

    assert_int_equal(lb_lease_classify_key(&r, value, 7, &holder), LB_LEASE_KEY_OURS);
    assert_int_equal(holder, 7);
    assert_int_equal(lb_lease_classify_key(&r, value, 8, &holder), LB_LEASE_KEY_CHANGED);
    assert_int_equal(holder, 7);
    assert_int_equal(lb_lease_classify_key(&r, "{\"addr\":\"10.0.0.6:80\"}", 7, &holder),
                     LB_LEASE_KEY_CHANGED);
    kv.lease = 0; /* an operator's put without a lease */
    assert_int_equal(lb_lease_classify_key(&r, value, 7, &holder), LB_LEASE_KEY_CHANGED);
    assert_int_equal(holder, 0);
    r.n_kvs = 0;
    assert_int_equal(lb_lease_classify_key(&r, value, 7, &holder), LB_LEASE_KEY_MISSING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_creds_good),
        cmocka_unit_test(test_creds_refused),
        cmocka_unit_test(test_creds_file),
        cmocka_unit_test(test_creds_file_fifo_is_refused_without_blocking),
        cmocka_unit_test(test_login_body_and_token),
        cmocka_unit_test(test_token_errors),
        cmocka_unit_test(test_key_classify),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
