/* The settings table: defaults, env, flags, config file, precedence, errors. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb_duration.h"
#include "lb_settings.h"

struct cfg {
    char *etcd;
    struct lb_strlist pools;
    int64_t grace_ms;
    int64_t workers;
    bool verbose;
    char *output;
    char *config;
};

static const struct lb_setting table[] = {
    {"etcd", 0, "T_ETCD", LB_SETTING_STRING, offsetof(struct cfg, etcd), 0, 0,
     "http://127.0.0.1:2379", NULL, "URL", "etcd endpoints"},
    {"pool", 'p', "T_POOL", LB_SETTING_LIST, offsetof(struct cfg, pools), 0, 0, NULL, NULL,
     "NAME=ADDR", "pool listener"},
    {"grace", 0, "T_GRACE", LB_SETTING_DURATION, offsetof(struct cfg, grace_ms), 0, 3600 * 1000,
     "30s", NULL, "DURATION", "shutdown grace"},
    {"workers", 0, NULL, LB_SETTING_INT, offsetof(struct cfg, workers), 1, 64, "1", NULL, "N",
     "workers"},
    {"verbose", 'v', NULL, LB_SETTING_BOOL, offsetof(struct cfg, verbose), 0, 0, NULL, NULL, NULL,
     "talk more"},
    {"output", 'o', NULL, LB_SETTING_STRING, offsetof(struct cfg, output), 0, 0, "table",
     "table|json", "FORMAT", "output format"},
    {"config", 0, "T_CONFIG", LB_SETTING_CONFIG, offsetof(struct cfg, config), 0, 0, NULL, NULL,
     "FILE", "config file"},
};
#define N_TABLE (sizeof(table) / sizeof(table[0]))

static int parse(struct cfg *c, int argc, char **argv, char ***pos, size_t *npos, char **err,
                 unsigned flags)
{
    memset(c, 0, sizeof(*c));
    return lb_settings_parse(table, N_TABLE, c, argc, argv, flags, pos, npos, err);
}

static void test_defaults(void **state)
{
    struct cfg c;
    char *argv[] = {"prog", NULL};
    char **pos, *err;
    size_t npos;

    unsetenv("T_ETCD");
    unsetenv("T_POOL");
    assert_int_equal(parse(&c, 1, argv, &pos, &npos, &err, 0), 0);
    assert_string_equal(c.etcd, "http://127.0.0.1:2379");
    assert_int_equal(c.grace_ms, 30000);
    assert_int_equal(c.workers, 1);
    assert_false(c.verbose);
    assert_int_equal(c.pools.n, 0);
    assert_int_equal(npos, 0);
    free(pos);
    lb_settings_free(table, N_TABLE, &c);
}

static void test_flags_env_precedence(void **state)
{
    struct cfg c;
    char *argv[] = {"prog", "--pool",        "web=1", "cmd", "-p",
                    "db=2", "--grace=1m30s", "-v",    "x",   NULL};
    char **pos, *err;
    size_t npos;

    setenv("T_ETCD", "http://a:1", 1);
    setenv("T_POOL", "env1=1,env2=2", 1);
    assert_int_equal(parse(&c, 9, argv, &pos, &npos, &err, 0), 0);
    assert_string_equal(c.etcd, "http://a:1");
    /* flags replace the environment's list instead of appending */
    assert_int_equal(c.pools.n, 2);
    assert_string_equal(c.pools.v[0], "web=1");
    assert_string_equal(c.pools.v[1], "db=2");
    assert_int_equal(c.grace_ms, 90000);
    assert_true(c.verbose);
    assert_int_equal(npos, 2);
    assert_string_equal(pos[0], "cmd");
    assert_string_equal(pos[1], "x");
    free(pos);
    lb_settings_free(table, N_TABLE, &c);

    /* env list alone is split on commas */
    char *argv2[] = {"prog", NULL};
    assert_int_equal(parse(&c, 1, argv2, &pos, &npos, &err, 0), 0);
    assert_int_equal(c.pools.n, 2);
    assert_string_equal(c.pools.v[1], "env2=2");
    free(pos);
    lb_settings_free(table, N_TABLE, &c);
    unsetenv("T_ETCD");
    unsetenv("T_POOL");
}

static void test_stop_at_positional(void **state)
{
    struct cfg c;
    char *argv[] = {"prog", "-o", "json", "drain", "--pool", "x", NULL};
    char **pos, *err;
    size_t npos;

    assert_int_equal(parse(&c, 6, argv, &pos, &npos, &err, LB_SETTINGS_STOP_AT_POSITIONAL), 0);
    assert_string_equal(c.output, "json");
    assert_int_equal(c.pools.n, 0);
    assert_int_equal(npos, 3);
    assert_string_equal(pos[0], "drain");
    assert_string_equal(pos[1], "--pool");
    free(pos);
    lb_settings_free(table, N_TABLE, &c);
}

static void expect_error(char **argv, int argc, const char *needle)
{
    struct cfg c;
    char **pos, *err = NULL;
    size_t npos;

    assert_int_equal(parse(&c, argc, argv, &pos, &npos, &err, 0), -EINVAL);
    assert_non_null(err);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    free(err);
    lb_settings_free(table, N_TABLE, &c);
}

static void test_errors(void **state)
{
    char *a1[] = {"prog", "--grace", "10", NULL};
    char *a2[] = {"prog", "--workers", "65", NULL};
    char *a3[] = {"prog", "--workers", "1x", NULL};
    char *a4[] = {"prog", "--nope", NULL};
    char *a5[] = {"prog", "--etcd", NULL};
    char *a6[] = {"prog", "-o", "yaml", NULL};
    char *a7[] = {"prog", "--grace", "2h", NULL};

    expect_error(a1, 3, "unit");
    expect_error(a2, 3, "out of range");
    expect_error(a3, 3, "whole number");
    expect_error(a4, 2, "unknown option --nope");
    expect_error(a5, 2, "needs a value");
    expect_error(a6, 3, "table|json");
    expect_error(a7, 3, "out of range");

    setenv("T_GRACE", "forever", 1);
    char *a8[] = {"prog", NULL};
    expect_error(a8, 1, "T_GRACE");
    unsetenv("T_GRACE");
}

static void test_config_file(void **state)
{
    struct cfg c;
    char path[] = "/tmp/lb-settings-XXXXXX";
    int fd = mkstemp(path);
    const char *json = "{\"etcd\":\"http://file:1\",\"pool\":[\"a=1\",\"b=2\"],\"grace\":\"5s\","
                       "\"workers\":4,\"unknown\":1}";
    char **pos, *err;
    size_t npos;

    assert_true(fd >= 0);
    assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    setenv("T_GRACE", "7s", 1); /* env beats the file */
    char *argv[] = {"prog", "--config", path, "--workers", "8", NULL};
    assert_int_equal(parse(&c, 5, argv, &pos, &npos, &err, 0), 0);
    assert_string_equal(c.etcd, "http://file:1");
    assert_int_equal(c.pools.n, 2);
    assert_int_equal(c.grace_ms, 7000);
    assert_int_equal(c.workers, 8);
    free(pos);
    lb_settings_free(table, N_TABLE, &c);
    unsetenv("T_GRACE");

    char *bad[] = {"prog", "--config", "/nonexistent/lbd.json", NULL};
    expect_error(bad, 3, "/nonexistent/lbd.json");
    unlink(path);
}

static void test_durations(void **state)
{
    int64_t ms;
    const char *why;

    assert_int_equal(lb_duration_parse("250ms", &ms, &why), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(lb_duration_parse("1.5s", &ms, &why), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(lb_duration_parse("1h2m3s", &ms, &why), 0);
    assert_int_equal(ms, 3723000);
    assert_int_equal(lb_duration_parse("0", &ms, &why), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(lb_duration_parse("5", &ms, &why), -EINVAL);
    assert_int_equal(lb_duration_parse("", &ms, &why), -EINVAL);
    assert_int_equal(lb_duration_parse("s", &ms, &why), -EINVAL);
    assert_int_equal(lb_duration_parse("99999999999h", &ms, &why), -EINVAL);
    assert_int_equal(lb_duration_parse("3d", &ms, &why), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),           cmocka_unit_test(test_flags_env_precedence),
        cmocka_unit_test(test_stop_at_positional), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_config_file),        cmocka_unit_test(test_durations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
