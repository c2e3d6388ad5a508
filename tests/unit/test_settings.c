/* The settings table: defaults, env, flags, config file, precedence, errors. */
#include <errno.h>
#include <limits.h>
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

/* Writes `json` to a fresh temporary file; the caller unlinks `path`. */
static void write_config(char *path, const char *json)
{
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
}

static void test_config_file(void **state)
{
    struct cfg c;
    char path[] = "/tmp/lb-settings-XXXXXX";
    int fd = mkstemp(path);
    const char *json = "{\"etcd\":\"http://file:1\",\"pool\":[\"a=1\",\"b=2\"],\"grace\":\"5s\","
                       "\"workers\":4,\"verbose\":true}";
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

    /* an array item is one entry, commas and all; a string splits like the environment */
    {
        char p2[] = "/tmp/lb-settings-XXXXXX";
        char *argv2[] = {"prog", "--config", p2, NULL};

        write_config(p2, "{\"pool\":[\"web=1,accept-proxy\",\"db=2\"]}");
        assert_int_equal(parse(&c, 3, argv2, &pos, &npos, &err, 0), 0);
        assert_int_equal(c.pools.n, 2);
        assert_string_equal(c.pools.v[0], "web=1,accept-proxy");
        assert_string_equal(c.pools.v[1], "db=2");
        free(pos);
        lb_settings_free(table, N_TABLE, &c);
        unlink(p2);
        strcpy(p2, "/tmp/lb-settings-XXXXXX");
        write_config(p2, "{\"pool\":\"web=1,db=2\"}");
        assert_int_equal(parse(&c, 3, argv2, &pos, &npos, &err, 0), 0);
        assert_int_equal(c.pools.n, 2);
        free(pos);
        lb_settings_free(table, N_TABLE, &c);
        unlink(p2);
    }

    char *bad[] = {"prog", "--config", "/nonexistent/lbd.json", NULL};
    expect_error(bad, 3, "/nonexistent/lbd.json");
    unlink(path);
}

/* Parses --config with `json` expecting failure; the error must hold every needle. */
static void expect_config_error(const char *json, const char *const *needles)
{
    char path[] = "/tmp/lb-settings-XXXXXX";
    char *argv[] = {"prog", "--config", path, NULL};
    struct cfg c;
    char **pos, *err = NULL;
    size_t npos;

    write_config(path, json);
    assert_int_equal(parse(&c, 3, argv, &pos, &npos, &err, 0), -EINVAL);
    assert_non_null(err);
    assert_non_null(strstr(err, path)); /* the file is named */
    for (size_t i = 0; needles[i]; i++)
        if (!strstr(err, needles[i]))
            fail_msg("error \"%s\" does not mention \"%s\"", err, needles[i]);
    assert_null(strchr(err, '\n')); /* one line */
    free(err);
    lb_settings_free(table, N_TABLE, &c);
    unlink(path);
}

static void test_config_unknown_keys_are_errors_with_a_suggestion(void **state)
{
    /* the key the operator meant, also with '_' for '-' or another case */
    expect_config_error(
        "{\"workers\":2,\"graec\":\"5s\"}",
        (const char *const[]){"unknown key \"graec\"", "did you mean grace?", NULL});
    expect_config_error("{\"Verbose\":true}",
                        (const char *const[]){"\"Verbose\"", "did you mean verbose?", NULL});
    /* nothing close: no guess, a pointer to the names instead */
    expect_config_error("{\"shutdown\":\"5s\"}",
                        (const char *const[]){"unknown key \"shutdown\"", "long flag names", NULL});
    /* values no setting takes are errors naming the key, not crashes or guesses */
    expect_config_error("{\"etcd\":null}", (const char *const[]){"\"etcd\" is null", NULL});
    expect_config_error("{\"grace\":{\"s\":5}}",
                        (const char *const[]){"\"grace\"", "not an object", NULL});
    expect_config_error("{\"pool\":[\"a=1\",null]}", (const char *const[]){"\"pool\"", NULL});
    expect_config_error("{\"grace\":[\"5s\"]}",
                        (const char *const[]){"\"grace\" takes a single value", NULL});
    /* a bad value names the file and the key */
    expect_config_error("{\"workers\":100}",
                        (const char *const[]){"key \"workers\"", "out of range", NULL});
    expect_config_error("{\"output\":\"jsn\"}",
                        (const char *const[]){"table|json", "did you mean json?", NULL});
}

static void test_config_file_shape_errors(void **state)
{
    char *zero[] = {"prog", "--config", "/dev/zero", NULL};
    char *dir[] = {"prog", "--config", "/tmp", NULL};

    /* a device or a directory named by mistake: one error, not a read without end */
    expect_error(zero, 3, "/dev/zero: is a device, not a regular file");
    expect_error(dir, 3, "/tmp: is a directory");
    expect_config_error("", (const char *const[]){"the file is empty", NULL});
    expect_config_error(" \n", (const char *const[]){"the file is empty", NULL});
    expect_config_error("{\"workers\":2} x",
                        (const char *const[]){"text after the JSON value, at byte 14", NULL});
    expect_config_error("{\"workers\":", (const char *const[]){"not JSON at byte", NULL});
    expect_config_error("null", (const char *const[]){"must be a JSON object, not null", NULL});
    expect_config_error("[1]", (const char *const[]){"must be a JSON object", NULL});
    /* JSON may carry a NUL in a string; C strings cannot: refused, not cut */
    expect_config_error("{\"etcd\":\"http://a:1\\u0000x\"}",
                        (const char *const[]){"\"etcd\" holds a NUL character", NULL});
    expect_config_error("{\"pool\":[\"web=1.2.3.4:80\\u0000\"]}",
                        (const char *const[]){"NUL character", NULL});
}

static void test_flag_suggestions(void **state)
{
    char *a1[] = {"prog", "--graec", "5s", NULL};
    char *a2[] = {"prog", "--worker=3", NULL};
    char *a3[] = {"prog", "--Verbose", NULL};
    char *a4[] = {"prog", "--xyzzy", NULL};
    char *a5[] = {"prog", "-o", "tabel", NULL};

    expect_error(a1, 3, "unknown option --graec (did you mean --grace?)");
    expect_error(a2, 2, "unknown option --worker (did you mean --workers?)");
    expect_error(a3, 2, "did you mean --verbose?");
    expect_error(a4, 2, "unknown option --xyzzy (see --help)");
    expect_error(a5, 3, "did you mean table?");
    /* a duration too large to parse names the flag's range, not the parser's limit */
    char *a6[] = {"prog", "--grace", "99999999h", NULL};

    expect_error(a6, 3, "--grace: 99999999h is out of range (0s..1h)");
    char *a7[] = {"prog", "--workers", "99999999999999999999", NULL};

    expect_error(a7, 3, "--workers: 99999999999999999999 is out of range (1..64)");
}

static void test_distance_and_nearest(void **state)
{
    static const char *const names[] = {"interval", "timeout", "rise", "fall", "type", "path"};
    static const char *const flags[] = {"shutdown-grace", "shutdown-delay", "etcd", "etcd-ca"};

    assert_int_equal(lb_settings_distance("", ""), 0);
    assert_int_equal(lb_settings_distance("abc", ""), 3);
    assert_int_equal(lb_settings_distance("", "abc"), 3);
    assert_int_equal(lb_settings_distance("intervl", "interval"), 1); /* deletion */
    assert_int_equal(lb_settings_distance("conect_timeout", "connect_timeout"), 1);
    assert_int_equal(lb_settings_distance("tyep", "type"), 1); /* swap */
    assert_int_equal(lb_settings_distance("kitten", "sitting"), 3);
    assert_int_equal(lb_settings_distance("shutdown_grace", "shutdown-grace"), 0);
    assert_int_equal(lb_settings_distance("Interval", "interval"), 0);
    assert_int_equal(lb_settings_distance("ca", "abc"), 3); /* OSA, not full Damerau (2) */
    /* a name past the bound is never near anything */
    {
        char longname[LB_SETTINGS_NAME_MAX + 2];

        memset(longname, 'a', sizeof(longname) - 1);
        longname[sizeof(longname) - 1] = '\0';
        assert_int_equal(lb_settings_distance(longname, "a"), UINT_MAX);
        assert_null(lb_settings_nearest(longname, names, 6));
    }

    assert_string_equal(lb_settings_nearest("intervl", names, 6), "interval");
    assert_string_equal(lb_settings_nearest("interval", names, 6), "interval");
    assert_string_equal(lb_settings_nearest("timout", names, 6), "timeout");
    assert_string_equal(lb_settings_nearest("tyep", names, 6), "type");
    assert_string_equal(lb_settings_nearest("rose", names, 6), "rise");
    /* short words get one edit, no more: "fal" is fall, "pat" path, "ab" nothing */
    assert_string_equal(lb_settings_nearest("fal", names, 6), "fall");
    assert_null(lb_settings_nearest("ab", names, 6));
    assert_null(lb_settings_nearest("checks", names, 6));
    assert_null(lb_settings_nearest("", names, 6));
    /* the closest wins; two equally close make no guess */
    assert_string_equal(lb_settings_nearest("shutdown_grace", flags, 4), "shutdown-grace");
    assert_string_equal(lb_settings_nearest("shutdown-dealy", flags, 4), "shutdown-delay");
    assert_string_equal(lb_settings_nearest("etc", flags, 4), "etcd");
    assert_null(lb_settings_nearest("x", NULL, 0));
    {
        static const char *const versions[] = {"none", "v1", "v2"};

        assert_null(lb_settings_nearest("v3", versions, 3));
        assert_string_equal(lb_settings_nearest("V1", versions, 3), "v1");
        assert_string_equal(lb_settings_nearest("nnoe", versions, 3), "none");
    }
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
    assert_non_null(strstr(why, "needs a unit"));
    assert_int_equal(lb_duration_parse("1e3s", &ms, &why), -EINVAL); /* not "needs a unit" */
    assert_non_null(strstr(why, "no exponent"));
    assert_int_equal(lb_duration_parse("", &ms, &why), -EINVAL);
    assert_int_equal(lb_duration_parse("s", &ms, &why), -EINVAL);
    assert_int_equal(lb_duration_parse("99999999999h", &ms, &why), -ERANGE);
    assert_int_equal(lb_duration_parse("3d", &ms, &why), -EINVAL);
    assert_int_equal(lb_duration_parse("-5s", &ms, &why), -EINVAL);
    assert_non_null(strstr(why, "never negative"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_flags_env_precedence),
        cmocka_unit_test(test_stop_at_positional),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_config_file),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_config_unknown_keys_are_errors_with_a_suggestion),
        cmocka_unit_test(test_config_file_shape_errors),
        cmocka_unit_test(test_flag_suggestions),
        cmocka_unit_test(test_distance_and_nearest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
