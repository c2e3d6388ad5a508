/*
 * Completion scripts (see completion.h).  Both shells get the same model,
 * built here from the tables: per command, the flags (and which of them
 * take a value, and what value), and the kind of each positional argument,
 * read off the usage text.  Each script walks the words typed so far the
 * way lbctl's parser does (flags anywhere, a flag's value is the next word
 * or follows '='), then completes the word under the cursor.
 *
 * Everything printed comes from lbctl's tables: names are plain
 * ([a-z0-9-]), and the help text the zsh script shows is single-quoted.
 */
#include "completion.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#define MAX_ARGS  8
#define WORDS_MAX 256

enum arg_kind { ARG_NONE, ARG_POOL, ARG_BACKEND, ARG_FILE, ARG_WORDS };

struct arg {
    enum arg_kind kind;
    char words[WORDS_MAX]; /* ARG_WORDS: space-separated */
    size_t pool;           /* ARG_BACKEND: index of the POOL argument before it */
};

enum value_kind { VALUE_NONE, VALUE_FREE, VALUE_WORDS, VALUE_FILE, VALUE_POOL };

static enum value_kind value_of(const struct lb_setting *s)
{
    if (s->type == LB_SETTING_BOOL)
        return VALUE_NONE;
    if (s->choices)
        return VALUE_WORDS;
    if (s->type == LB_SETTING_CONFIG ||
        (s->metavar && (strstr(s->metavar, "FILE") || strstr(s->metavar, "PATH"))))
        return VALUE_FILE;
    if (s->metavar && strcmp(s->metavar, "POOL") == 0)
        return VALUE_POOL;
    return VALUE_FREE;
}

/* "table|json" -> "table json" */
static void choices_words(const char *choices, char *out, size_t size)
{
    size_t i;

    for (i = 0; choices[i] && i + 1 < size; i++)
        out[i] = choices[i] == '|' ? ' ' : choices[i];
    out[i] = '\0';
}

static bool is_word(const char *s, size_t len)
{
    if (!len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) && s[i] != '-')
            return false;
    return s[0] != '-';
}

/* One positional from its usage token ("POOL", "[FILE|-]", "up|down|auto"). */
static void arg_from_token(const char *tok, size_t len, struct arg *a, size_t last_pool)
{
    size_t n_words = 0, wlen = 0;

    memset(a, 0, sizeof(*a));
    for (size_t i = 0; i <= len;) {
        size_t j = i;

        while (j < len && tok[j] != '|')
            j++;
        if (j - i == 4 && strncmp(tok + i, "POOL", 4) == 0) {
            a->kind = ARG_POOL;
        } else if (j - i == 2 && strncmp(tok + i, "ID", 2) == 0) {
            a->kind = ARG_BACKEND;
            a->pool = last_pool;
        } else if (j - i == 4 && strncmp(tok + i, "FILE", 4) == 0) {
            a->kind = ARG_FILE;
        } else if (is_word(tok + i, j - i) && wlen + (j - i) + 2 < sizeof(a->words)) {
            if (n_words++)
                a->words[wlen++] = ' ';
            memcpy(a->words + wlen, tok + i, j - i);
            wlen += j - i;
            a->words[wlen] = '\0';
        }
        i = j + 1;
    }
    if (a->kind == ARG_NONE && n_words)
        a->kind = ARG_WORDS;
}

/*
 * The positionals of a usage text: "POOL ID [--wait [--timeout 30s]]
 * [--local]" is a pool and a backend.  Flags and their bracketed groups are
 * skipped, so is the metavar after a bare flag ("--etcd URL").  An ID
 * without a POOL before it completes nothing.  Returns the count.
 */
static size_t parse_args(const char *usage, struct arg *out, size_t max)
{
    size_t n = 0, last_pool = SIZE_MAX;
    int group = 0; /* bracket depth inside a [--flag ...] group */
    bool skip_value = false;
    const char *p = usage;

    while (*p) {
        const char *tok, *core;
        size_t len, core_len;
        int open = 0, close = 0;

        while (*p == ' ')
            p++;
        if (!*p)
            break;
        tok = p;
        while (*p && *p != ' ')
            p++;
        len = (size_t)(p - tok);
        core = tok;
        while (core < tok + len && *core == '[') {
            core++;
            open++;
        }
        core_len = len - (size_t)(core - tok);
        while (core_len && core[core_len - 1] == ']') {
            core_len--;
            close++;
        }
        if (group) {
            group += open - close;
            if (group < 0)
                group = 0;
            continue;
        }
        if (core_len && core[0] == '-') {
            if (open > close)
                group = open - close;
            else
                skip_value = !open; /* "--etcd URL" */
            continue;
        }
        if (skip_value) {
            skip_value = false;
            if (!open)
                continue;
        }
        if (core_len == 3 && strncmp(core, "...", 3) == 0)
            continue;
        if (n == max)
            break;
        arg_from_token(core, core_len, &out[n], last_pool);
        if (out[n].kind == ARG_BACKEND && last_pool == SIZE_MAX)
            out[n].kind = ARG_NONE;
        if (out[n].kind == ARG_POOL)
            last_pool = n;
        n++;
    }
    return n;
}

/* Calls fn(f, row, ud) for each flag row a word after `cmd` may be (NULL cmd: before one). */
static void for_each_flag(const struct lbctl_completion_spec *spec,
                          const struct lbctl_completion_command *cmd,
                          void (*fn)(FILE *f, const struct lb_setting *s, void *ud), FILE *f,
                          void *ud)
{
    if (cmd) {
        for (size_t i = 0; cmd->flags[i]; i++)
            fn(f, cmd->flags[i], ud);
        if (cmd->own_parser)
            return;
    }
    for (size_t i = 0; i < spec->n_global; i++) {
        const struct lb_setting *s = &spec->global[i];

        /* after a command, its own --help stands for the global one; --version means nothing */
        if (cmd && (strcmp(s->name, "help") == 0 || strcmp(s->name, "version") == 0))
            continue;
        fn(f, s, ud);
    }
}

/* ---- bash ---- */

struct bash_ctx {
    bool first;
    bool values_only;
};

static void bash_flag_word(FILE *f, const struct lb_setting *s, void *ud)
{
    struct bash_ctx *c = ud;

    if (c->values_only && value_of(s) == VALUE_NONE)
        return;
    if (c->values_only) {
        fprintf(f, "%s--%s", c->first ? "" : "|", s->name);
        if (s->short_name)
            fprintf(f, "|-%c", s->short_name);
    } else {
        fprintf(f, "%s--%s", c->first ? "" : " ", s->name);
        if (s->short_name)
            fprintf(f, " -%c", s->short_name);
    }
    c->first = false;
}

/* How a shell spells the completion of a flag's value, in a case arm. */
struct value_spelling {
    const char *words_pre, *words_post; /* around the choices, space-separated */
    const char *files, *pools;
    const char *free_pre, *free_post; /* around the metavar; NULL: no arm */
};

/* The case arm of flag s's value (none for a flag without one). */
static void value_case(FILE *f, const struct lb_setting *s, const struct value_spelling *sp)
{
    enum value_kind k = value_of(s);
    char words[WORDS_MAX];

    if (k == VALUE_NONE || (k == VALUE_FREE && !sp->free_pre))
        return;
    fprintf(f, "        --%s", s->name);
    if (s->short_name)
        fprintf(f, "|-%c", s->short_name);
    switch (k) {
    case VALUE_WORDS:
        choices_words(s->choices, words, sizeof(words));
        fprintf(f, ") %s%s%s ;;\n", sp->words_pre, words, sp->words_post);
        break;
    case VALUE_FILE:
        fprintf(f, ") %s ;;\n", sp->files);
        break;
    case VALUE_POOL:
        fprintf(f, ") %s ;;\n", sp->pools);
        break;
    default:
        fprintf(f, ") %s%s%s ;;\n", sp->free_pre, s->metavar ? s->metavar : "value", sp->free_post);
        break;
    }
}

static void bash_value_case(FILE *f, const struct lb_setting *s, void *ud)
{
    static const struct value_spelling bash = {
        .words_pre = "_lbctl_reply \"",
        .words_post = "\"",
        .files = "_lbctl_reply_files",
        .pools = "_lbctl_reply \"$(_lbctl_names pools)\"",
    };

    value_case(f, s, &bash);
}

/* The case label of cmd (NULL: no command yet). */
static void bash_label(FILE *f, const struct lbctl_completion_command *cmd)
{
    fprintf(f, "    %s)\n", cmd ? cmd->name : "''");
}

static void bash_per_command(FILE *f, const struct lbctl_completion_spec *spec,
                             void (*body)(FILE *f, const struct lbctl_completion_spec *spec,
                                          const struct lbctl_completion_command *cmd))
{
    bash_label(f, NULL);
    body(f, spec, NULL);
    for (size_t i = 0; i < spec->n_commands; i++) {
        bash_label(f, &spec->commands[i]);
        body(f, spec, &spec->commands[i]);
    }
}

static void bash_flags_body(FILE *f, const struct lbctl_completion_spec *spec,
                            const struct lbctl_completion_command *cmd)
{
    struct bash_ctx c = {.first = true};

    fprintf(f, "        echo \"");
    for_each_flag(spec, cmd, bash_flag_word, f, &c);
    fprintf(f, "\" ;;\n");
}

static void bash_takes_value_body(FILE *f, const struct lbctl_completion_spec *spec,
                                  const struct lbctl_completion_command *cmd)
{
    struct bash_ctx c = {.first = true, .values_only = true};

    fprintf(f, "        case $2 in\n        ");
    for_each_flag(spec, cmd, bash_flag_word, f, &c);
    if (c.first)
        fprintf(f, "''");
    fprintf(f, ") return 0 ;;\n        esac ;;\n");
}

static void bash_value_body(FILE *f, const struct lbctl_completion_spec *spec,
                            const struct lbctl_completion_command *cmd)
{
    fprintf(f, "        case $2 in\n");
    for_each_flag(spec, cmd, bash_value_case, f, NULL);
    fprintf(f, "        esac ;;\n");
}

static void bash_args_body(FILE *f, const struct lbctl_completion_spec *spec,
                           const struct lbctl_completion_command *cmd)
{
    struct arg args[MAX_ARGS];
    size_t n = cmd ? parse_args(cmd->args, args, MAX_ARGS) : 0;

    fprintf(f, "        case $2 in\n");
    for (size_t i = 0; i < n; i++) {
        switch (args[i].kind) {
        case ARG_POOL:
            fprintf(f, "        %zu) _lbctl_reply \"$(_lbctl_names pools)\" ;;\n", i);
            break;
        case ARG_BACKEND:
            fprintf(
                f,
                "        %zu) _lbctl_reply \"$(_lbctl_names backends \"${_lbctl_args[%zu]}\")\" "
                ";;\n",
                i, args[i].pool);
            break;
        case ARG_FILE:
            fprintf(f, "        %zu) _lbctl_reply_files ;;\n", i);
            break;
        case ARG_WORDS:
            fprintf(f, "        %zu) _lbctl_reply \"%s\" ;;\n", i, args[i].words);
            break;
        case ARG_NONE:
            break;
        }
    }
    fprintf(f, "        esac ;;\n");
}

/*
 * The loop body both shells share: the words before the cursor, one at a
 * time in $w, sort into the connection flags (kept to call lbctl for
 * names), the value of a flag that takes one, the command and its
 * arguments.  Ends the loop.
 */
static void print_word_scan(FILE *f, const struct lbctl_completion_spec *spec)
{
    fprintf(f, "        if [[ -n $want ]]; then\n"
               "            case $want in\n"
               "            ");
    for (size_t i = 0; spec->connection_flags && spec->connection_flags[i]; i++)
        fprintf(f, "%s--%s", i ? "|" : "", spec->connection_flags[i]);
    fprintf(f, ") _lbctl_conn+=(\"$want\" \"$w\") ;;\n"
               "            esac\n"
               "            want=\n"
               "            continue\n"
               "        fi\n"
               "        case $w in\n"
               "        ");
    for (size_t i = 0; spec->connection_flags && spec->connection_flags[i]; i++)
        fprintf(f, "%s--%s=*", i ? "|" : "", spec->connection_flags[i]);
    fprintf(f, ") _lbctl_conn+=(\"$w\") ;;\n"
               "        --*=*) ;;\n"
               "        -*) _lbctl_takes_value \"$cmd\" \"$w\" && want=$w ;;\n"
               "        *) if [[ -z $cmd ]]; then cmd=$w; else _lbctl_args+=(\"$w\"); fi ;;\n"
               "        esac\n"
               "    done\n");
}

static void print_bash(FILE *f, const struct lbctl_completion_spec *spec)
{
    const char *prog = spec->program;

    fprintf(
        f,
        "# bash completion for %s %s, generated by `%s completion bash` from its own\n"
        "# command and flag tables.  For this shell:  source <(%s completion bash)\n"
        "# For every shell: %s completion bash > ~/.local/share/bash-completion/completions/%s\n"
        "\n",
        prog, spec->version, prog, prog, prog, prog);
    fprintf(f, "_lbctl_commands=\"help");
    for (size_t i = 0; i < spec->n_commands; i++)
        fprintf(f, " %s", spec->commands[i].name);
    fprintf(f, "\"\n\n");

    fprintf(f, "# Pool or backend names from the lbd this command line points at;\n"
               "# nothing (and no noise) when it does not answer within 2 s.\n"
               "_lbctl_names() {\n"
               "    local out\n"
               "    out=$(\"$_lbctl_bin\" \"${_lbctl_conn[@]}\" --rpc-timeout 2s -o json \"$@\" "
               "</dev/null 2>/dev/null) || return 0\n"
               "    case $1 in\n"
               "    pools) sed -n 's/^[[:space:]]*\"name\":[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p' "
               "<<<\"$out\" ;;\n"
               "    backends) sed -n 's/^[[:space:]]*\"id\":[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p' "
               "<<<\"$out\" ;;\n"
               "    esac\n"
               "}\n\n"
               "_lbctl_reply() {\n"
               "    local IFS=$'\\n'\n"
               "    COMPREPLY=($(IFS=$' \\t\\n'; compgen -W \"$1\" -- \"$_lbctl_cur\"))\n"
               "}\n\n"
               "_lbctl_reply_files() {\n"
               "    local IFS=$'\\n'\n"
               "    COMPREPLY=($(compgen -f -- \"$_lbctl_cur\"))\n"
               "    compopt -o filenames 2>/dev/null\n"
               "}\n\n");

    fprintf(f, "# The flags after command $1 (none: before a command).\n"
               "_lbctl_flags() {\n    case $1 in\n");
    bash_per_command(f, spec, bash_flags_body);
    fprintf(f, "    esac\n}\n\n");

    fprintf(f, "# 0 when flag $2 takes a value (the next word) after command $1.\n"
               "_lbctl_takes_value() {\n    case $1 in\n");
    bash_per_command(f, spec, bash_takes_value_body);
    fprintf(f, "    esac\n    return 1\n}\n\n");

    fprintf(f, "# Completes the value of flag $2 after command $1.\n"
               "_lbctl_value() {\n    case $1 in\n");
    bash_per_command(f, spec, bash_value_body);
    fprintf(f, "    esac\n}\n\n");

    fprintf(f, "# Completes positional argument number $2 (from 0) of command $1.\n"
               "_lbctl_positional() {\n    case $1 in\n"
               "    help)\n        case $2 in\n"
               "        0) _lbctl_reply \"${_lbctl_commands#help }\" ;;\n"
               "        esac ;;\n");
    for (size_t i = 0; i < spec->n_commands; i++) {
        bash_label(f, &spec->commands[i]);
        bash_args_body(f, spec, &spec->commands[i]);
    }
    fprintf(f, "    esac\n}\n\n");

    /*
     * The words come from COMP_LINE when bash gives it: COMP_WORDS splits
     * "127.0.0.1:9000" and "--output=json" at COMP_WORDBREAKS.  Replies for
     * a word with a ':' then lose what bash takes for an earlier word.
     */
    fprintf(
        f,
        "_lbctl() {\n"
        "    local -a _lbctl_words _lbctl_conn=() _lbctl_args=()\n"
        "    local _lbctl_cur _lbctl_bin cmd= want= w i n\n"
        "    COMPREPLY=()\n"
        "    if [[ -n ${COMP_LINE-} ]]; then\n"
        "        read -ra _lbctl_words <<<\"${COMP_LINE:0:COMP_POINT}\"\n"
        "        [[ ${#_lbctl_words[@]} -eq 0 || ${COMP_LINE:0:COMP_POINT} == *[[:space:]] ]] &&\n"
        "            _lbctl_words+=(\"\")\n"
        "    else\n"
        "        _lbctl_words=(\"${COMP_WORDS[@]:0:COMP_CWORD}\" \"${COMP_WORDS[COMP_CWORD]-}\")\n"
        "    fi\n"
        "    n=$((${#_lbctl_words[@]} - 1))\n"
        "    _lbctl_cur=${_lbctl_words[n]}\n"
        "    _lbctl_bin=${_lbctl_words[0]}\n"
        "    [[ $_lbctl_bin == \"~/\"* ]] && _lbctl_bin=$HOME/${_lbctl_bin#\"~/\"}\n"
        "    for ((i = 1; i < n; i++)); do\n"
        "        w=${_lbctl_words[i]}\n");
    print_word_scan(f, spec);
    fprintf(f,
            "    if [[ -z $want && $_lbctl_cur == --*=* ]]; then\n"
            "        want=${_lbctl_cur%%%%=*}\n"
            "        _lbctl_cur=${_lbctl_cur#*=}\n"
            "    fi\n"
            "    if [[ -n $want ]]; then\n"
            "        _lbctl_value \"$cmd\" \"$want\"\n"
            "    elif [[ $_lbctl_cur == -* ]]; then\n"
            "        _lbctl_reply \"$(_lbctl_flags \"$cmd\")\"\n"
            "    elif [[ -z $cmd ]]; then\n"
            "        _lbctl_reply \"$_lbctl_commands\"\n"
            "    else\n"
            "        _lbctl_positional \"$cmd\" \"${#_lbctl_args[@]}\"\n"
            "    fi\n"
            "    if [[ -n ${COMP_LINE-} && $_lbctl_cur == *:* && $COMP_WORDBREAKS == *:* ]]; then\n"
            "        local colon=${_lbctl_cur%%\"${_lbctl_cur##*:}\"}\n"
            "        for i in \"${!COMPREPLY[@]}\"; do\n"
            "            COMPREPLY[i]=${COMPREPLY[i]#\"$colon\"}\n"
            "        done\n"
            "    fi\n"
            "    return 0\n"
            "}\n\n"
            "complete -F _lbctl %s\n",
            prog);
}

/* ---- zsh ---- */

/* Writes s single-quoted for zsh, and with the characters _arguments and
 * _describe give meaning to ("[]:\\") escaped when `escape` is set. */
static void zsh_quote_text(FILE *f, const char *s, bool escape)
{
    for (; *s; s++) {
        if (*s == '\'')
            fputs("'\\''", f);
        else if (escape && (*s == '[' || *s == ']' || *s == ':' || *s == '\\'))
            fprintf(f, "\\%c", *s);
        else
            fputc(*s, f);
    }
}

static void zsh_flag_spec(FILE *f, const struct lb_setting *s, void *ud)
{
    /* "--name:help" entries for _describe, one per spelling */
    for (int spelling = 0; spelling < (s->short_name ? 2 : 1); spelling++) {
        fputs("        '", f);
        if (spelling)
            fprintf(f, "-%c", s->short_name);
        else
            fprintf(f, "--%s", s->name);
        fputc(':', f);
        zsh_quote_text(f, s->help ? s->help : "", false);
        fputs("'\n", f);
    }
}

static void zsh_value_case(FILE *f, const struct lb_setting *s, void *ud)
{
    static const struct value_spelling zsh = {
        .words_pre = "compadd -- ",
        .words_post = "",
        .files = "_files",
        .pools = "_lbctl_pools",
        .free_pre = "_message -e values '",
        .free_post = "'",
    };

    value_case(f, s, &zsh);
}

static void zsh_takes_value(FILE *f, const struct lb_setting *s, void *ud)
{
    bool *first = ud;

    if (value_of(s) == VALUE_NONE)
        return;
    fprintf(f, "%s--%s", *first ? "" : "|", s->name);
    if (s->short_name)
        fprintf(f, "|-%c", s->short_name);
    *first = false;
}

static void zsh_label(FILE *f, const struct lbctl_completion_command *cmd)
{
    fprintf(f, "    %s)\n", cmd ? cmd->name : "''");
}

static void print_zsh(FILE *f, const struct lbctl_completion_spec *spec)
{
    const char *prog = spec->program;

    fprintf(f,
            "#compdef %s\n"
            "# zsh completion for %s %s, generated by `%s completion zsh` from its own\n"
            "# command and flag tables.  For this shell (after compinit):\n"
            "#   source <(%s completion zsh)\n"
            "# For every shell: %s completion zsh > \"${fpath[1]}/_%s\"\n"
            "\n",
            prog, prog, spec->version, prog, prog, prog, prog);

    fprintf(f, "# Pool or backend names from the lbd this command line points at;\n"
               "# nothing (and no noise) when it does not answer within 2 s.\n"
               "_lbctl_names() {\n"
               "    local out\n"
               "    out=$(\"$_lbctl_bin\" \"${_lbctl_conn[@]}\" --rpc-timeout 2s -o json \"$@\" "
               "</dev/null 2>/dev/null) || return 0\n"
               "    case $1 in\n"
               "    pools) print -r -- \"$out\" | sed -n "
               "'s/^[[:space:]]*\"name\":[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p' ;;\n"
               "    backends) print -r -- \"$out\" | sed -n "
               "'s/^[[:space:]]*\"id\":[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p' ;;\n"
               "    esac\n"
               "}\n\n"
               "_lbctl_pools() {\n"
               "    local -a names\n"
               "    names=(${(f)\"$(_lbctl_names pools)\"})\n"
               "    _wanted pools expl pool compadd -a names\n"
               "}\n\n"
               "_lbctl_backends() {\n"
               "    local -a names\n"
               "    names=(${(f)\"$(_lbctl_names backends \"$1\")\"})\n"
               "    _wanted backends expl backend compadd -a names\n"
               "}\n\n");

    fprintf(f, "# 0 when flag $2 takes a value (the next word) after command $1.\n"
               "_lbctl_takes_value() {\n    case $1 in\n");
    for (size_t i = 0; i <= spec->n_commands; i++) {
        const struct lbctl_completion_command *cmd = i ? &spec->commands[i - 1] : NULL;
        bool first = true;

        zsh_label(f, cmd);
        fprintf(f, "        case $2 in\n        ");
        for_each_flag(spec, cmd, zsh_takes_value, f, &first);
        if (first)
            fprintf(f, "''");
        fprintf(f, ") return 0 ;;\n        esac ;;\n");
    }
    fprintf(f, "    esac\n    return 1\n}\n\n");

    fprintf(f, "# The flags after command $1 (none: before a command), with their help.\n"
               "_lbctl_flags() {\n    local -a flags\n    case $1 in\n");
    for (size_t i = 0; i <= spec->n_commands; i++) {
        const struct lbctl_completion_command *cmd = i ? &spec->commands[i - 1] : NULL;

        zsh_label(f, cmd);
        fprintf(f, "        flags=(\n");
        for_each_flag(spec, cmd, zsh_flag_spec, f, NULL);
        fprintf(f, "        ) ;;\n");
    }
    fprintf(f, "    esac\n    _describe -t flags flag flags\n}\n\n");

    fprintf(f, "# Completes the value of flag $2 after command $1.\n"
               "_lbctl_value() {\n    case $1 in\n");
    for (size_t i = 0; i <= spec->n_commands; i++) {
        const struct lbctl_completion_command *cmd = i ? &spec->commands[i - 1] : NULL;

        zsh_label(f, cmd);
        fprintf(f, "        case $2 in\n");
        for_each_flag(spec, cmd, zsh_value_case, f, NULL);
        fprintf(f, "        esac ;;\n");
    }
    fprintf(f, "    esac\n}\n\n");

    fprintf(f, "_lbctl_commands() {\n    local -a cmds\n    cmds=(\n"
               "        'help:show help (of a command)'\n");
    for (size_t i = 0; i < spec->n_commands; i++) {
        fprintf(f, "        '%s:", spec->commands[i].name);
        zsh_quote_text(f, spec->commands[i].summary, false);
        fprintf(f, "'\n");
    }
    fprintf(f, "    )\n    _describe -t commands command cmds\n}\n\n");

    fprintf(f, "# Completes positional argument number $2 (from 1) of command $1.\n"
               "_lbctl_positional() {\n    case $1 in\n"
               "    help)\n        case $2 in\n        1) _lbctl_commands ;;\n        esac ;;\n");
    for (size_t c = 0; c < spec->n_commands; c++) {
        struct arg args[MAX_ARGS];
        size_t n = parse_args(spec->commands[c].args, args, MAX_ARGS);

        zsh_label(f, &spec->commands[c]);
        fprintf(f, "        case $2 in\n");
        for (size_t i = 0; i < n; i++) {
            switch (args[i].kind) {
            case ARG_POOL:
                fprintf(f, "        %zu) _lbctl_pools ;;\n", i + 1);
                break;
            case ARG_BACKEND:
                fprintf(f, "        %zu) _lbctl_backends \"${_lbctl_args[%zu]}\" ;;\n", i + 1,
                        args[i].pool + 1);
                break;
            case ARG_FILE:
                fprintf(f, "        %zu) _files ;;\n", i + 1);
                break;
            case ARG_WORDS:
                fprintf(f, "        %zu) compadd -- %s ;;\n", i + 1, args[i].words);
                break;
            case ARG_NONE:
                break;
            }
        }
        fprintf(f, "        esac ;;\n");
    }
    fprintf(f, "    esac\n}\n\n");

    fprintf(f, "_lbctl() {\n"
               "    local _lbctl_bin=${words[1]} cmd= want= w i\n"
               "    local -a _lbctl_conn _lbctl_args\n"
               "    _lbctl_bin=${_lbctl_bin/#\\~/$HOME}\n"
               "    for ((i = 2; i < CURRENT; i++)); do\n"
               "        w=${words[i]}\n");
    print_word_scan(f, spec);
    fprintf(f,
            "    if [[ -n $want ]]; then\n"
            "        _lbctl_value \"$cmd\" \"$want\"\n"
            "    elif [[ $PREFIX == --*=* ]]; then\n"
            "        want=${PREFIX%%%%=*}\n"
            "        compset -P '*='\n"
            "        _lbctl_value \"$cmd\" \"$want\"\n"
            "    elif [[ $PREFIX == -* ]]; then\n"
            "        _lbctl_flags \"$cmd\"\n"
            "    elif [[ -z $cmd ]]; then\n"
            "        _lbctl_commands\n"
            "    else\n"
            "        _lbctl_positional \"$cmd\" $(( ${#_lbctl_args} + 1 ))\n"
            "    fi\n"
            "}\n\n"
            "if [[ $zsh_eval_context[-1] == loadautofunc ]]; then\n"
            "    _lbctl \"$@\"\n"
            "else\n"
            "    compdef _lbctl %s\n"
            "fi\n",
            prog);
}

int lbctl_completion_print(FILE *f, const char *shell, const struct lbctl_completion_spec *spec)
{
    if (strcmp(shell, "bash") == 0)
        print_bash(f, spec);
    else if (strcmp(shell, "zsh") == 0)
        print_zsh(f, spec);
    else
        return -EINVAL;
    return 0;
}
