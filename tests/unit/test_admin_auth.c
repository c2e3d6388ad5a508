/*
 * The admin API's bearer token on its own (admin_auth.h): which
 * authorization header values let a call in, and which token files lbd
 * accepts, with the sentence it gives for each it refuses.  Files live in
 * a temporary directory made for the run.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin_auth.h"
#include "lb_secret.h"

#define TOKEN "s3cret-t0ken"

static char dir[] = "/tmp/lbd-auth-XXXXXX";

/* The path of `name` in the run's directory, in one of a few rotating buffers. */
static const char *in_dir(const char *name)
{
    static char paths[4][PATH_MAX];
    static unsigned turn;
    char *buf = paths[turn++ % 4];

    snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    return buf;
}

/* Creates (or replaces) `name` with `content`; returns its path. */
static const char *token_file(const char *name, const char *content)
{
    const char *path = in_dir(name);
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_true(fputs(content, f) >= 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0600), 0);
    return path;
}

static int setup(void **state)
{
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    static const char *const names[] = {"token", "empty", "blank", "spaced", "long"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        unlink(in_dir(names[i]));
    rmdir(dir);
    return 0;
}

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

static void expect_load_error(const char *path, const char *needle)
{
    struct lb_admin_auth auth;
    char *err = NULL;

    assert_true(lb_admin_auth_load(&auth, path, &err) < 0);
    assert_false(auth.required);
    assert_non_null(err);
    if (!strstr(err, needle) || !strstr(err, "admin token file"))
        fail_msg("\"%s\" does not say \"%s\"", err, needle);
    assert_null(strstr(err, "two words")); /* never quotes the file */
    free(err);
}

static void test_token_files(void **state)
{
    static char big[5001];
    struct lb_admin_auth auth;
    char *err = NULL;

    memset(big, 'x', sizeof(big) - 1);
    assert_int_equal(lb_admin_auth_load(&auth, token_file("token", "  " TOKEN "  \n"), &err), 0);
    assert_true(lb_admin_auth_accepts(&auth, "Bearer " TOKEN, strlen("Bearer " TOKEN)));
    expect_load_error(in_dir("missing"), "cannot read: No such file");
    expect_load_error(token_file("empty", ""), "is empty");
    /* the first line counts, and it is blank */
    expect_load_error(token_file("blank", " \t \n" TOKEN "\n"), "is empty");
    expect_load_error(token_file("spaced", "two words\n"), "printable ASCII without spaces");
    expect_load_error(token_file("long", big), "longer than");
    assert_true(lb_admin_auth_load(&auth, dir, &err) < 0);
    assert_non_null(strstr(err, "is a directory"));
    free(err);
}

/* A FIFO as the token file is one error at once, for lbd and lbctl alike (lb_secret). */
static void test_token_file_fifo_is_refused_without_blocking(void **state)
{
    const char *fifo = in_dir("fifo");
    struct lb_admin_auth auth;
    char *err = NULL, *token = NULL;

    assert_int_equal(mkfifo(fifo, 0600), 0);
    alarm(5); /* a blocking open() ends the test here */
    assert_int_equal(lb_admin_auth_load(&auth, fifo, &err), -EINVAL);
    assert_non_null(strstr(err, "admin token file"));
    assert_non_null(strstr(err, "is a FIFO, not a regular file"));
    free(err);
    assert_int_equal(lb_secret_read_file(fifo, "admin token file", &token, &err), -EINVAL);
    alarm(0);
    assert_null(token);
    free(err);
    unlink(fifo);
}

/* Everyone may read the token file: flagged (lbd warns); owner and group only: not. */
static void test_token_file_readable_by_everyone_is_flagged(void **state)
{
    static const struct {
        mode_t mode;
        bool shared;
    } cases[] = {{0600, false}, {0640, false}, {0644, true}, {0604, true}};
    const char *path = token_file("token", TOKEN "\n");
    struct lb_admin_auth auth;
    char *err = NULL;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool shared = !cases[i].shared;
        char *token = NULL;

        assert_int_equal(chmod(path, cases[i].mode), 0);
        assert_int_equal(lb_admin_auth_load(&auth, path, &err), 0);
        assert_int_equal(auth.file_shared, cases[i].shared);
        assert_int_equal(lb_secret_read(path, "admin token file", &token, &shared, &err), 0);
        assert_int_equal(shared, cases[i].shared);
        lb_secret_free(token);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth_header_rules),
        cmocka_unit_test(test_token_files),
        cmocka_unit_test(test_token_file_fifo_is_refused_without_blocking),
        cmocka_unit_test(test_token_file_readable_by_everyone_is_flagged),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
