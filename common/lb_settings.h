/*
 * One declarative table per program drives its flags, environment
 * variables, config file and --help (STYLE.md habit 6).  A row names a
 * setting once: flag name, environment variable, type, where it is stored,
 * bounds, default and help text.
 *
 * Precedence, lowest first: the row's default, the JSON config file (when a
 * row of type LB_SETTING_CONFIG is present and given), the environment, the
 * command line.  A repeatable list given on a higher level replaces what a
 * lower level set instead of appending to it.
 */
#ifndef LB_SETTINGS_H
#define LB_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum lb_setting_type {
    LB_SETTING_STRING,   /* char *, owned; NULL when unset */
    LB_SETTING_LIST,     /* struct lb_strlist; flag repeatable, env/file split on ',' */
    LB_SETTING_DURATION, /* int64_t milliseconds, bounds in ms */
    LB_SETTING_INT,      /* int64_t within [min, max] */
    LB_SETTING_BOOL,     /* bool; "--x" alone means true */
    LB_SETTING_CONFIG,   /* char *: path of a JSON file read before env and flags */
};

struct lb_strlist {
    size_t n;
    char **v;
};

struct lb_setting {
    const char *name; /* long flag without "--"; also the config-file key */
    char short_name;  /* 0 when none */
    const char *env;  /* environment variable, or NULL */
    enum lb_setting_type type;
    size_t offset;       /* offsetof() into the caller's settings struct */
    int64_t min, max;    /* INT/DURATION: value bounds; STRING/LIST: max length (0 = 4096) */
    const char *def;     /* default, written as a user would; NULL = unset */
    const char *choices; /* STRING only: "table|json" restricts the values */
    const char *metavar; /* shown in --help ("ADDR"); NULL for BOOL */
    const char *help;
};

enum {
    LB_SETTINGS_STOP_AT_POSITIONAL = 1 << 0, /* stop at the first non-flag (subcommands) */
};

/*
 * Fills `out` from the table and argv[1..argc).  Non-flag arguments are
 * collected in order into *positional (a malloc'd array of argv pointers,
 * *n_positional entries); with LB_SETTINGS_STOP_AT_POSITIONAL the first
 * non-flag and everything after it are returned as positionals unparsed.
 * Returns 0, or -EINVAL with *err set to a malloc'd one-line message naming
 * the flag or variable and what is expected.  On failure `out` may be
 * partly filled: release it with lb_settings_free() either way.
 */
int lb_settings_parse(const struct lb_setting *table, size_t n, void *out, int argc, char **argv,
                      unsigned flags, char ***positional, size_t *n_positional, char **err);

/* Frees the strings and lists the table owns inside `out`. */
void lb_settings_free(const struct lb_setting *table, size_t n, void *out);

/* Prints one aligned line per row: flag, metavar, help, env and default. */
void lb_settings_print_help(FILE *f, const struct lb_setting *table, size_t n);

#endif
