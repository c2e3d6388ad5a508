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
 *
 * The config file is a JSON object whose keys are the long flag names; a
 * value is a string, a number, a boolean, or (for a list) an array of
 * those.  Any other key or value stops the parse with an error naming the
 * file and the key, so a typo never leaves a setting at its default
 * unnoticed.
 */
#ifndef LB_SETTINGS_H
#define LB_SETTINGS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum lb_setting_type {
    LB_SETTING_STRING,   /* char *, owned; NULL when unset */
    LB_SETTING_LIST,     /* struct lb_strlist; flag repeatable, env and a config string split
                          * on ','; each item of a config array taken whole */
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
 *
 * An unknown flag or config key is an error that names the nearest known
 * one when it is close ("unknown option --shutdown_grace (did you mean
 * --shutdown-grace?)"); so is a value outside a row's choices.  Config
 * keys are spelled exactly as the long flags, one spelling per setting: a
 * key with '_' for '-' is refused with the right spelling, not read
 * silently under a second name.
 */
int lb_settings_parse(const struct lb_setting *table, size_t n, void *out, int argc, char **argv,
                      unsigned flags, char ***positional, size_t *n_positional, char **err);

/* Frees the strings and lists the table owns inside `out`. */
void lb_settings_free(const struct lb_setting *table, size_t n, void *out);

/* Prints one aligned line per row: flag, metavar, help, env and default. */
void lb_settings_print_help(FILE *f, const struct lb_setting *table, size_t n);

/*
 * One usage error line on stderr: "PROG: MESSAGE (see HELP --help)".  A
 * message from lb_settings_parse() ends with its own " (see --help)": that
 * one is dropped for the more precise hint.
 */
void lb_settings_usage_line(const char *prog, const char *help, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/*
 * "Did you mean ...?" for a mistyped name: flags, config keys, policy
 * fields, choices.  lb_settings_distance() is the Damerau-Levenshtein
 * distance in its optimal-string-alignment form (insert, delete, replace,
 * or swap two neighbours: one edit each), comparing letters regardless of
 * case and '-' equal to '_', so "Shutdown_Grace" is 0 edits from
 * "shutdown-grace".  Names longer than LB_SETTINGS_NAME_MAX count as
 * infinitely far (UINT_MAX).
 *
 * lb_settings_nearest() returns the entry of names[0..n) nearest to `word`
 * when it is close enough to be what was meant -- at most 1 edit for a word
 * of up to 3 characters, 2 up to 7, 3 beyond -- else NULL.  Two different
 * names equally near make no suggestion ("v3" is as near v1 as v2: a guess
 * would mislead).  A word equal to a name is its own answer.
 */
#define LB_SETTINGS_NAME_MAX 64

unsigned lb_settings_distance(const char *a, const char *b);
const char *lb_settings_nearest(const char *word, const char *const *names, size_t n);

#endif
