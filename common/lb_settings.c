/*
 * The settings table interpreter.  Each source (default, file, env, flag)
 * goes through the same setting_assign(), so a value is validated the same
 * way wherever it comes from, and an error always names its source.
 */
#include "lb_settings.h"
#include "lb_duration.h"
#include "lb_error.h"
#include "lb_file.h"

#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * SRC_FILE_ITEM is one element of a JSON array in the config file: a whole
 * list entry, like a repeated flag, never split on ','.
 */
enum source { SRC_DEFAULT, SRC_FILE, SRC_FILE_ITEM, SRC_ENV, SRC_FLAG };

#define MAX_SETTINGS 128

static void *field(const struct lb_setting *s, void *out)
{
    return (char *)out + s->offset;
}

static size_t max_len(const struct lb_setting *s)
{
    return s->max > 0 ? (size_t)s->max : 4096;
}

/* Where a value came from, for its error message; `file` is the config file's path. */
static const char *source_name(enum source src, const struct lb_setting *s, const char *file,
                               char *buf, size_t size)
{
    switch (src) {
    case SRC_DEFAULT:
        snprintf(buf, size, "default of --%s", s->name);
        break;
    case SRC_FILE:
    case SRC_FILE_ITEM:
        snprintf(buf, size, "--config %s: key \"%s\"", file ? file : "?", s->name);
        break;
    case SRC_ENV:
        snprintf(buf, size, "%s", s->env);
        break;
    case SRC_FLAG:
        snprintf(buf, size, "--%s", s->name);
        break;
    }
    return buf;
}

/* --- suggestions ------------------------------------------------------------------------ */

static char fold(char c)
{
    if (c >= 'A' && c <= 'Z')
        return (char)(c - 'A' + 'a');
    return c == '_' ? '-' : c;
}

/* lb_settings_distance() over a[0..la) and b[0..lb): three rows of the OSA table. */
static unsigned distance_n(const char *a, size_t la, const char *b, size_t lb)
{
    unsigned rows[3][LB_SETTINGS_NAME_MAX + 1];

    if (la > LB_SETTINGS_NAME_MAX || lb > LB_SETTINGS_NAME_MAX)
        return UINT_MAX;
    for (size_t j = 0; j <= lb; j++)
        rows[0][j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        unsigned *cur = rows[i % 3], *prev = rows[(i - 1) % 3], *prev2 = rows[(i + 1) % 3];

        cur[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned cost = fold(a[i - 1]) != fold(b[j - 1]);
            unsigned v = prev[j - 1] + cost;

            if (prev[j] + 1 < v)
                v = prev[j] + 1;
            if (cur[j - 1] + 1 < v)
                v = cur[j - 1] + 1;
            if (i > 1 && j > 1 && fold(a[i - 1]) == fold(b[j - 2]) &&
                fold(a[i - 2]) == fold(b[j - 1]) && prev2[j - 2] + 1 < v)
                v = prev2[j - 2] + 1; /* two neighbours swapped */
            cur[j] = v;
        }
    }
    return rows[la % 3][lb];
}

unsigned lb_settings_distance(const char *a, const char *b)
{
    return distance_n(a, strlen(a), b, strlen(b));
}

/* How many edits a word of `len` characters may be from what it is taken for. */
static unsigned suggest_limit(size_t len)
{
    return len <= 3 ? 1 : len <= 7 ? 2 : 3;
}

/* The nearest candidate seen so far. */
/* The nearest candidate seen so far; `tied` when another was as near (then none is offered). */
struct nearest {
    const char *word;
    size_t word_len;
    const char *best;
    size_t best_len;
    size_t best_index;
    unsigned distance;
    bool tied;
};

static void nearest_init(struct nearest *n, const char *word, size_t len)
{
    memset(n, 0, sizeof(*n));
    n->word = word;
    n->word_len = len;
    n->distance = UINT_MAX;
}

static void nearest_offer(struct nearest *n, const char *name, size_t len, size_t index)
{
    unsigned d = distance_n(n->word, n->word_len, name, len);

    if (d > suggest_limit(n->word_len) || d > n->distance)
        return;
    if (d == n->distance) {
        /* equally near: ambiguous, unless it is the same name spelled the same */
        n->tied |= len != n->best_len || memcmp(name, n->best, len) != 0;
        return;
    }
    n->best = name;
    n->best_len = len;
    n->best_index = index;
    n->distance = d;
    n->tied = false;
}

static bool nearest_found(const struct nearest *n)
{
    return n->best && !n->tied;
}

const char *lb_settings_nearest(const char *word, const char *const *names, size_t n)
{
    struct nearest near;

    nearest_init(&near, word, strlen(word));
    for (size_t i = 0; i < n; i++)
        if (names[i])
            nearest_offer(&near, names[i], strlen(names[i]), i);
    return nearest_found(&near) ? near.best : NULL;
}

/* The row whose long flag name is nearest to name[0..len), or NULL. */
static const struct lb_setting *nearest_row(const struct lb_setting *t, size_t n, const char *name,
                                            size_t len)
{
    struct nearest near;

    nearest_init(&near, name, len);
    for (size_t i = 0; i < n; i++)
        nearest_offer(&near, t[i].name, strlen(t[i].name), i);
    return nearest_found(&near) ? &t[near.best_index] : NULL;
}

/* Writes " (did you mean X?)" for the choice of "a|b|c" nearest to value into buf, or "". */
static const char *choice_hint(const char *choices, const char *value, char *buf, size_t size)
{
    struct nearest near;
    const char *p = choices;

    nearest_init(&near, value, strlen(value));
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);

        nearest_offer(&near, p, len, 0);
        if (!bar)
            break;
        p = bar + 1;
    }
    if (nearest_found(&near))
        snprintf(buf, size, " (did you mean %.*s?)", (int)near.best_len, near.best);
    else if (size)
        buf[0] = '\0';
    return buf;
}

/* --- assignment ------------------------------------------------------------------------- */

static bool choice_ok(const char *choices, const char *value)
{
    size_t vlen = strlen(value);
    const char *p = choices;

    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);

        if (len == vlen && strncmp(p, value, len) == 0)
            return true;
        if (!bar)
            break;
        p = bar + 1;
    }
    return false;
}

static int list_push(struct lb_strlist *l, const char *value)
{
    char **v = realloc(l->v, (l->n + 1) * sizeof(*v));

    if (!v)
        return -ENOMEM;
    l->v = v;
    l->v[l->n] = strdup(value);
    if (!l->v[l->n])
        return -ENOMEM;
    l->n++;
    return 0;
}

static void list_clear(struct lb_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/*
 * Stores `value` (user syntax) into the setting.  `last_src` remembers which
 * source last wrote a list, so a higher source replaces instead of appending.
 */
static int setting_assign(const struct lb_setting *s, void *out, const char *value, enum source src,
                          const char *file, enum source *last_src, char **err)
{
    char where[640];
    const char *why = NULL;

    source_name(src, s, file, where, sizeof(where));
    switch (s->type) {
    case LB_SETTING_STRING:
    case LB_SETTING_CONFIG: {
        char **p = field(s, out);

        if (strlen(value) > max_len(s)) {
            lb_error_set(err, 0, "%s: value longer than %zu characters", where, max_len(s));
            return -EINVAL;
        }
        if (s->choices && !choice_ok(s->choices, value)) {
            char hint[LB_SETTINGS_NAME_MAX + 32];

            lb_error_set(err, 0, "%s: \"%s\" is not one of %s%s", where, value, s->choices,
                         choice_hint(s->choices, value, hint, sizeof(hint)));
            return -EINVAL;
        }
        free(*p);
        *p = strdup(value);
        if (!*p)
            return -ENOMEM;
        break;
    }
    case LB_SETTING_LIST: {
        struct lb_strlist *l = field(s, out);
        char *copy, *save = NULL, *tok;
        bool split = src == SRC_ENV || src == SRC_FILE || src == SRC_DEFAULT;
        int rc = 0;

        if (*last_src != src)
            list_clear(l);
        if (strlen(value) > max_len(s)) {
            lb_error_set(err, 0, "%s: value longer than %zu characters", where, max_len(s));
            return -EINVAL;
        }
        if (!split) {
            rc = list_push(l, value);
            break;
        }
        copy = strdup(value);
        if (!copy)
            return -ENOMEM;
        for (tok = strtok_r(copy, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save))
            rc = list_push(l, tok);
        free(copy);
        if (rc)
            return rc;
        break;
    }
    case LB_SETTING_DURATION: {
        int64_t ms = 0;
        int rc;

        rc = lb_duration_parse(value, &ms, &why);
        if (rc < 0 && rc != -ERANGE) {
            lb_error_set(err, 0, "%s: \"%s\": %s", where, value, why);
            return -EINVAL;
        }
        if (rc < 0 || ms < s->min || ms > s->max) {
            char lo[32], hi[32];

            lb_error_set(err, 0, "%s: %s is out of range (%s..%s)", where, value,
                         lb_duration_format(s->min, lo, sizeof(lo)),
                         lb_duration_format(s->max, hi, sizeof(hi)));
            return -EINVAL;
        }
        *(int64_t *)field(s, out) = ms;
        break;
    }
    case LB_SETTING_INT: {
        char *end;
        long long v;

        errno = 0;
        v = strtoll(value, &end, 10);
        if ((errno && errno != ERANGE) || end == value || *end) {
            lb_error_set(err, 0, "%s: \"%s\" is not a whole number", where, value);
            return -EINVAL;
        }
        if (errno == ERANGE || v < s->min || v > s->max) {
            lb_error_set(err, 0, "%s: %s is out of range (%lld..%lld)", where, value,
                         (long long)s->min, (long long)s->max);
            return -EINVAL;
        }
        *(int64_t *)field(s, out) = v;
        break;
    }
    case LB_SETTING_BOOL: {
        bool *b = field(s, out);

        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes"))
            *b = true;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no"))
            *b = false;
        else {
            lb_error_set(err, 0, "%s: \"%s\" is not true or false", where, value);
            return -EINVAL;
        }
        break;
    }
    }
    *last_src = src;
    return 0;
}

static const struct lb_setting *find_long(const struct lb_setting *t, size_t n, const char *name,
                                          size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(t[i].name) == len && strncmp(t[i].name, name, len) == 0)
            return &t[i];
    return NULL;
}

static const struct lb_setting *find_short(const struct lb_setting *t, size_t n, char c)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].short_name && t[i].short_name == c)
            return &t[i];
    return NULL;
}

/*
 * The text of a config value for setting_assign(): strings as they are,
 * numbers and booleans as JSON writes them; NULL (and *err) for null,
 * objects and nested arrays, which no setting takes.
 */
static const char *file_value_text(json_object *val, const char *path, const char *key, char **err)
{
    switch (json_object_get_type(val)) {
    case json_type_string:
        if (strlen(json_object_get_string(val)) != (size_t)json_object_get_string_len(val)) {
            lb_error_set(err, 0, "--config %s: \"%s\" holds a NUL character (\\u0000)", path, key);
            return NULL;
        }
        return json_object_get_string(val);
    case json_type_int:
    case json_type_double:
    case json_type_boolean:
        return json_object_get_string(val);
    case json_type_null:
        lb_error_set(err, 0, "--config %s: \"%s\" is null; give a value or leave the key out", path,
                     key);
        return NULL;
    default:
        lb_error_set(err, 0, "--config %s: \"%s\" must be a string, a number or true/false%s", path,
                     key, json_object_is_type(val, json_type_object) ? ", not an object" : "");
        return NULL;
    }
}

/*
 * Reads a JSON object whose keys are setting names; values are strings,
 * numbers, booleans, or arrays of those for lists.  Every error names the
 * file and the key; an unknown key names the nearest known one.
 */
/* A configuration is a page of settings: anything larger was named by mistake. */
#define CONFIG_MAX_BYTES (1 << 20)

/*
 * Reads path (a regular file of at most CONFIG_MAX_BYTES: /dev/zero or a
 * FIFO is one error, not a hang) as one JSON value with nothing after it.
 * Returns 0 with *root, or a negative errno with *err.
 */
static int read_config(const char *path, json_object **root, char **err)
{
    json_tokener *tok = NULL;
    char *buf = NULL;
    size_t len = 0, end;
    enum json_tokener_error jerr;
    int fd = lb_file_open(path, "--config", NULL, err), rc = -EINVAL;

    *root = NULL;
    if (fd < 0)
        return -EINVAL; /* as every other mistake in a configuration: *err says which */
    rc = lb_file_read_all(fd, CONFIG_MAX_BYTES, &buf, &len);
    if (rc == -E2BIG)
        lb_error_set(err, 0, "--config %s: larger than %d KiB; is it the right file?", path,
                     CONFIG_MAX_BYTES / 1024);
    else if (rc < 0)
        lb_error_set(err, 0, "--config %s: cannot read: %s", path, strerror(-rc));
    if (rc < 0) {
        rc = -EINVAL;
        goto out;
    }
    rc = -EINVAL;
    tok = json_tokener_new();
    if (!tok) {
        rc = lb_error_set(err, -ENOMEM, "--config %s: out of memory", path);
        goto out;
    }
    if (strspn(buf, " \t\r\n") == len) {
        lb_error_set(err, 0, "--config %s: the file is empty; give a JSON object of settings",
                     path);
        goto out;
    }
    *root = json_tokener_parse_ex(tok, buf, (int)len + 1); /* the NUL ends a bare word */
    jerr = json_tokener_get_error(tok);
    end = json_tokener_get_parse_end(tok);
    if (end > len)
        end = len;
    if (jerr != json_tokener_success) {
        lb_error_set(err, 0, "--config %s: not JSON at byte %zu (%s)", path, end,
                     jerr == json_tokener_continue ? "the text ends inside a value"
                                                   : json_tokener_error_desc(jerr));
        goto out;
    }
    if (!*root) {
        lb_error_set(err, 0, "--config %s: the top level must be a JSON object, not null", path);
        goto out;
    }
    if (strspn(buf + end, " \t\r\n") != len - end) {
        lb_error_set(err, 0, "--config %s: text after the JSON value, at byte %zu", path, end);
        goto out;
    }
    rc = 0;
out:
    if (rc) {
        json_object_put(*root);
        *root = NULL;
    }
    if (tok)
        json_tokener_free(tok);
    free(buf);
    close(fd);
    return rc;
}

static int load_file(const struct lb_setting *t, size_t n, void *out, const char *path,
                     enum source *last, char **err)
{
    json_object *root;
    int rc = read_config(path, &root, err);

    if (rc)
        return rc;
    if (!json_object_is_type(root, json_type_object)) {
        lb_error_set(err, 0, "--config %s: the top level must be a JSON object", path);
        rc = -EINVAL;
        goto out;
    }
    json_object_object_foreach(root, key, val)
    {
        const struct lb_setting *s = find_long(t, n, key, strlen(key));
        const char *text;
        size_t idx;

        if (!s) {
            const struct lb_setting *near = nearest_row(t, n, key, strlen(key));

            if (near)
                lb_error_set(err, 0, "--config %s: unknown key \"%s\" (did you mean %s?)", path,
                             key, near->name);
            else
                lb_error_set(err, 0,
                             "--config %s: unknown key \"%s\" (the keys are the long flag "
                             "names, see --help)",
                             path, key);
            rc = -EINVAL;
            goto out;
        }
        if (s->type == LB_SETTING_CONFIG)
            continue; /* the file naming a file: it is already being read */
        idx = (size_t)(s - t);
        if (json_object_is_type(val, json_type_array)) {
            if (s->type != LB_SETTING_LIST) {
                lb_error_set(err, 0, "--config %s: \"%s\" takes a single value, not a list", path,
                             key);
                rc = -EINVAL;
                goto out;
            }
            for (size_t i = 0; i < json_object_array_length(val) && !rc; i++) {
                text = file_value_text(json_object_array_get_idx(val, i), path, key, err);
                /* keep appending: only the first item of this source clears */
                rc = text ? setting_assign(s, out, text, SRC_FILE_ITEM, path, &last[idx], err)
                          : -EINVAL;
            }
        } else {
            text = file_value_text(val, path, key, err);
            rc = text ? setting_assign(s, out, text, SRC_FILE, path, &last[idx], err) : -EINVAL;
        }
        if (rc)
            goto out;
    }
out:
    json_object_put(root);
    return rc;
}

int lb_settings_parse(const struct lb_setting *t, size_t n, void *out, int argc, char **argv,
                      unsigned flags, char ***positional, size_t *n_positional, char **err)
{
    enum source last[MAX_SETTINGS];
    const char *config_path = NULL;
    const struct lb_setting *config_row = NULL;
    char **pos = NULL;
    size_t npos = 0;
    int rc = 0;

    *err = NULL;
    *positional = NULL;
    *n_positional = 0;
    if (n > MAX_SETTINGS)
        return -E2BIG;
    for (size_t i = 0; i < n; i++) {
        last[i] = SRC_DEFAULT;
        if (t[i].type == LB_SETTING_CONFIG)
            config_row = &t[i];
        if (t[i].def &&
            (rc = setting_assign(&t[i], out, t[i].def, SRC_DEFAULT, NULL, &last[i], err)))
            return rc;
    }
    pos = calloc((size_t)(argc > 0 ? argc : 1), sizeof(*pos));
    if (!pos)
        return -ENOMEM;

    /* The config file sits below env and flags, so find its path first. */
    if (config_row) {
        config_path = config_row->env ? getenv(config_row->env) : NULL;
        for (int i = 1; i < argc; i++) {
            size_t nl = strlen(config_row->name);

            if (!strcmp(argv[i], "--"))
                break;
            if (strncmp(argv[i], "--", 2) == 0 && strncmp(argv[i] + 2, config_row->name, nl) == 0) {
                if (argv[i][2 + nl] == '=')
                    config_path = argv[i] + 3 + nl;
                else if (argv[i][2 + nl] == '\0' && i + 1 < argc)
                    config_path = argv[i + 1];
            }
        }
        if (config_path && *config_path) {
            size_t idx = (size_t)(config_row - t);

            rc = setting_assign(config_row, out, config_path, SRC_FLAG, NULL, &last[idx], err);
            if (!rc)
                rc = load_file(t, n, out, config_path, last, err);
            if (rc)
                goto out;
        }
    }

    for (size_t i = 0; i < n; i++) {
        const char *v = t[i].env ? getenv(t[i].env) : NULL;

        if (v && t[i].type != LB_SETTING_CONFIG &&
            (rc = setting_assign(&t[i], out, v, SRC_ENV, NULL, &last[i], err)))
            goto out;
    }

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *value = NULL, *eq = NULL;
        const struct lb_setting *s;

        if (!strcmp(arg, "--")) {
            while (++i < argc)
                pos[npos++] = argv[i];
            break;
        }
        if (arg[0] != '-' || arg[1] == '\0') {
            if (flags & LB_SETTINGS_STOP_AT_POSITIONAL) {
                while (i < argc)
                    pos[npos++] = argv[i++];
                break;
            }
            pos[npos++] = argv[i];
            continue;
        }
        if (arg[1] == '-') {
            eq = strchr(arg + 2, '=');
            s = find_long(t, n, arg + 2, eq ? (size_t)(eq - arg - 2) : strlen(arg + 2));
            if (eq)
                value = eq + 1;
        } else {
            s = arg[2] == '\0' ? find_short(t, n, arg[1]) : NULL;
        }
        if (!s) {
            const struct lb_setting *near = NULL;

            if (arg[1] == '-')
                near = nearest_row(t, n, arg + 2, eq ? (size_t)(eq - arg - 2) : strlen(arg + 2));
            if (near)
                lb_error_set(err, 0, "unknown option %.*s (did you mean --%s?)",
                             eq ? (int)(eq - arg) : (int)strlen(arg), arg, near->name);
            else if (arg[1] >= '0' && arg[1] <= '9')
                lb_error_set(err, 0,
                             "%s: a negative number is never a valid value here "
                             "(see --help)",
                             arg);
            else
                lb_error_set(err, 0, "unknown option %s (see --help)", arg);
            rc = -EINVAL;
            goto out;
        }
        if (!value && s->type == LB_SETTING_BOOL)
            value = "true";
        if (!value) {
            if (i + 1 >= argc) {
                lb_error_set(err, 0, "--%s needs a value (%s)", s->name,
                             s->metavar ? s->metavar : "see --help");
                rc = -EINVAL;
                goto out;
            }
            value = argv[++i];
        }
        if (s->type == LB_SETTING_CONFIG)
            continue; /* already loaded */
        rc = setting_assign(s, out, value, SRC_FLAG, NULL, &last[s - t], err);
        if (rc)
            goto out;
    }
out:
    if (rc == -ENOMEM && !*err)
        lb_error_set(err, 0, "out of memory while reading settings");
    if (rc) {
        free(pos);
        return rc;
    }
    *positional = pos;
    *n_positional = npos;
    return 0;
}

void lb_settings_usage_line(const char *prog, const char *help, const char *fmt, va_list ap)
{
    static const char hint[] = " (see --help)";
    char msg[1024];
    size_t len;

    vsnprintf(msg, sizeof(msg), fmt, ap);
    len = strlen(msg);
    if (len >= sizeof(hint) - 1 && strcmp(msg + len - (sizeof(hint) - 1), hint) == 0)
        msg[len - (sizeof(hint) - 1)] = '\0';
    fprintf(stderr, "%s: %s (see %s --help)\n", prog, msg, help);
}

void lb_settings_free(const struct lb_setting *t, size_t n, void *out)
{
    for (size_t i = 0; i < n; i++) {
        switch (t[i].type) {
        case LB_SETTING_STRING:
        case LB_SETTING_CONFIG: {
            char **p = field(&t[i], out);

            free(*p);
            *p = NULL;
            break;
        }
        case LB_SETTING_LIST:
            list_clear(field(&t[i], out));
            break;
        default:
            break;
        }
    }
}

/* Prints `text` from column `indent`, wrapped at `width` columns. */
static void print_wrapped(FILE *f, const char *text, int indent, int width, int col)
{
    const char *p = text;

    while (*p) {
        const char *end = p;
        int len;

        while (*end && *end != ' ')
            end++;
        len = (int)(end - p);
        if (col > indent && col + 1 + len > width) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            fputc(' ', f);
            col++;
        }
        fprintf(f, "%.*s", len, p);
        col += len;
        p = *end ? end + 1 : end;
    }
    fputc('\n', f);
}

void lb_settings_print_help(FILE *f, const struct lb_setting *t, size_t n)
{
    enum { LEFT = 32, WIDTH = 96 };

    for (size_t i = 0; i < n; i++) {
        char left[64], text[1024];
        size_t o;

        if (t[i].short_name)
            snprintf(left, sizeof(left), "-%c, --%s%s%s", t[i].short_name, t[i].name,
                     t[i].metavar ? " " : "", t[i].metavar ? t[i].metavar : "");
        else
            snprintf(left, sizeof(left), "    --%s%s%s", t[i].name, t[i].metavar ? " " : "",
                     t[i].metavar ? t[i].metavar : "");
        o = (size_t)snprintf(text, sizeof(text), "%s", t[i].help);
        if (t[i].type == LB_SETTING_LIST && o < sizeof(text))
            o += (size_t)snprintf(text + o, sizeof(text) - o, " (repeatable)");
        if (t[i].def && t[i].type != LB_SETTING_BOOL && o < sizeof(text))
            o += (size_t)snprintf(text + o, sizeof(text) - o, " [default: %s]", t[i].def);
        if (t[i].env && o < sizeof(text))
            snprintf(text + o, sizeof(text) - o, " [env: %s]", t[i].env);
        if (strlen(left) + 3 > LEFT - 1) {
            fprintf(f, "  %s\n%*s", left, LEFT, "");
        } else {
            fprintf(f, "  %-*s", LEFT - 2, left);
        }
        print_wrapped(f, text, LEFT, WIDTH, LEFT);
    }
}
