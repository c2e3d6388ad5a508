/*
 * `lbctl completion bash|zsh`: a shell completion script generated from
 * lbctl's own tables (the commands, their usage text and their settings
 * rows), so a new command or flag is completed the day it is added.
 *
 * What completes:
 *  - command names (zsh: with their summaries), `help COMMAND`;
 *  - flags: the global rows and the command's rows (zsh: with their help);
 *    a flag's value from its choices ("table|json"), or file names when
 *    its metavar is FILE, or pool names when it is POOL;
 *  - positional arguments, read off the command's usage text: POOL is a
 *    pool name, ID a backend id of the pool given before it, FILE a file
 *    name, "up|down|auto" those words; [--flag ...] groups are skipped.
 *
 * Pool and backend names come from the lbd the command line points at:
 * the script runs `lbctl pools -o json` or `lbctl backends POOL -o json`
 * with the --admin, --admin-token-file and --admin-ca already typed and a
 * 2 s --rpc-timeout, and completes nothing, quietly, when that fails.
 */
#ifndef LBCTL_COMPLETION_H
#define LBCTL_COMPLETION_H

#include "lb_settings.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define LBCTL_COMPLETION_MAX_FLAGS 40

struct lbctl_completion_command {
    const char *name;
    const char *args;    /* usage after the name: "POOL ID up|down|auto [--local]" */
    const char *summary; /* one line */
    /* the command's own rows, NULL-terminated (--help included) */
    const struct lb_setting *flags[LBCTL_COMPLETION_MAX_FLAGS + 1];
    bool own_parser; /* parses its own flags: the global rows do not follow it */
};

struct lbctl_completion_spec {
    const char *program; /* "lbctl" */
    const char *version;
    const struct lbctl_completion_command *commands;
    size_t n_commands;
    const struct lb_setting *global; /* the rows before (and after) any command */
    size_t n_global;
    const char *const *connection_flags; /* global flags a name lookup passes on, NULL-ended */
};

/*
 * Writes the script for `shell` ("bash" or "zsh") to f.  Returns 0, or
 * -EINVAL for another shell.
 */
int lbctl_completion_print(FILE *f, const char *shell, const struct lbctl_completion_spec *spec);

#endif
