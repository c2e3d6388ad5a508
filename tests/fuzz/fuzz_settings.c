/*
 * Fuzzes the settings table interpreter with arbitrary command lines: the
 * input is split on NUL bytes into argv.  Whatever the flags, parsing must
 * return 0 or -EINVAL with a message, and free cleanly.
 */
#include "lb_settings.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct cfg {
    char *s;
    struct lb_strlist list;
    int64_t ms;
    int64_t n;
    bool b;
    char *choice;
};

static const struct lb_setting table[] = {
    {"str", 's', NULL, LB_SETTING_STRING, offsetof(struct cfg, s), 0, 64, "x", NULL, "S", "s"},
    {"list", 'l', NULL, LB_SETTING_LIST, offsetof(struct cfg, list), 0, 0, NULL, NULL, "L", "l"},
    {"ms", 0, NULL, LB_SETTING_DURATION, offsetof(struct cfg, ms), 0, 3600000, "1s", NULL, "D",
     "d"},
    {"n", 'n', NULL, LB_SETTING_INT, offsetof(struct cfg, n), -5, 1000000, "0", NULL, "N", "n"},
    {"b", 'b', NULL, LB_SETTING_BOOL, offsetof(struct cfg, b), 0, 0, NULL, NULL, NULL, "b"},
    {"choice", 'c', NULL, LB_SETTING_STRING, offsetof(struct cfg, choice), 0, 0, "table",
     "table|json", "C", "c"},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    char *argv[64];
    int argc = 1;
    char **pos = NULL, *err = NULL;
    size_t npos = 0;
    struct cfg c;
    int rc;

    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    argv[0] = "prog";
    for (size_t i = 0; i <= size && argc < 63;) {
        argv[argc++] = copy + i;
        i += strlen(copy + i) + 1;
    }
    argv[argc] = NULL;
    memset(&c, 0, sizeof(c));
    rc = lb_settings_parse(table, sizeof(table) / sizeof(table[0]), &c, argc, argv,
                           size && data[0] & 1 ? LB_SETTINGS_STOP_AT_POSITIONAL : 0, &pos, &npos,
                           &err);
    if (rc != 0 && (rc != -EINVAL || !err) && rc != -ENOMEM)
        abort();
    if (rc == 0 && npos > (size_t)argc)
        abort();
    free(err);
    free(pos);
    lb_settings_free(table, sizeof(table) / sizeof(table[0]), &c);
    free(copy);
    return 0;
}
