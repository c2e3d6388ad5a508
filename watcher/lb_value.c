/*
 * Value parsers over json-c.  Each parser fills a local struct and copies
 * it to *out only when the whole value is good, so a bad value never
 * half-updates anything.  Field helpers share one shape: absent or null
 * leaves the default, a wrong type or a text that does not parse is an
 * error naming the field as the user wrote it ("health.rise"), and a
 * number or duration out of its range is clamped to the nearest bound with
 * a note (lb_value.h lists the ranges and why).  Clamping, not refusing:
 * a policy with one field out of range still applies its other fields, and
 * the operator reads which field lbd changed and to what.
 *
 * A pool policy is read whole, problem after problem, by the one validator
 * lbd and `lbctl policy` share (lb_value_check_policy()): its fields are
 * few, fixed and written by hand, so an unknown one is a typo whose field
 * silently keeps its default -- "intervl" leaving checks at 2s.  It is
 * refused, with the nearest known name.  Backend and override values keep
 * ignoring unknown fields: any etcd client writes them, with "meta" and
 * fields of their own.
 */
#include "lb_value.h"
#include "lb_addr.h"
#include "lb_duration.h"
#include "lb_error.h"
#include "lb_etcd_json.h"
#include "lb_settings.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- addresses ------------------------------------------------------------------------- */

/* The port text itself: digits only (no sign, no spaces), 1..65535. */
static int check_port_text(const char *port, char **err)
{
    size_t len = strlen(port);

    if (len == 0 || len > 5 || strspn(port, "0123456789") != len)
        return lb_error_set(err, -EINVAL, "port \"%s\" must be a number 1..65535", port);
    return 0;
}

static bool looks_numeric(const char *host)
{
    return strspn(host, "0123456789.") == strlen(host);
}

/* RFC 1123 host name; '_' is tolerated because container runtimes hand them out. */
static bool dns_name_is_valid(const char *host)
{
    size_t len = strlen(host), label = 0;

    if (len > 0 && host[len - 1] == '.')
        len--; /* one trailing dot: fully qualified */
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i <= len; i++) {
        char c = i < len ? host[i] : '.';

        if (c == '.') {
            if (label == 0 || label > 63 || host[i - 1] == '-' || host[i - label] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
        label++;
    }
    return true;
}

/*
 * lb_addr_parse() (shared with the data plane, which connects to these
 * addresses) splits and checks the text; what lbd will accept from etcd is
 * a little stricter on top: canonical port digits, well-formed host names,
 * and dotted quads that really are IPv4 addresses.
 */
int lb_value_check_addr(const char *addr, char **err)
{
    struct lb_hostport hp;
    const char *why = NULL;

    if (strlen(addr) >= LB_ADDR_MAX)
        return lb_error_set(err, -EINVAL, "address longer than %d characters", LB_ADDR_MAX - 1);
    if (lb_addr_parse(addr, false, &hp, &why) < 0)
        return lb_error_set(err, -EINVAL, "%s", why ? why : "not host:port");
    if (check_port_text(strrchr(addr, ':') + 1, err) < 0)
        return -EINVAL;
    if (hp.is_ipv6_literal)
        return 0;
    if (looks_numeric(hp.host)) {
        if (!lb_addr_is_numeric(&hp))
            return lb_error_set(err, -EINVAL, "\"%s\" is not an IPv4 address", hp.host);
    } else if (!dns_name_is_valid(hp.host)) {
        return lb_error_set(err, -EINVAL, "\"%s\" is not a valid host name", hp.host);
    }
    return 0;
}

/* --- field helpers --------------------------------------------------------------------- */

/* The member, or NULL when absent or null. */
static json_object *member(json_object *obj, const char *name)
{
    json_object *v = NULL;

    json_object_object_get_ex(obj, name, &v);
    return v;
}

/* Adds a note (dropped past LB_VALUE_NOTES_MAX; the clamp happens all the same). */
static void add_note(struct lb_value_notes *notes, const char *field, const char *given,
                     const char *used, const char *why)
{
    struct lb_value_note *n;

    if (!notes || notes->n >= LB_VALUE_NOTES_MAX)
        return;
    n = &notes->note[notes->n++];
    snprintf(n->field, sizeof(n->field), "%s", field);
    snprintf(n->given, sizeof(n->given), "%s", given);
    snprintf(n->used, sizeof(n->used), "%s", used);
    n->why = why;
}

/*
 * A whole number in [min, max]; out of range is clamped with a note.  A
 * number json-c cannot hold in 64 bits saturates, which clamps the same way.
 */
static int get_int(json_object *obj, const char *name, const char *label, int64_t min, int64_t max,
                   int *out, struct lb_value_notes *notes, char **err)
{
    json_object *v = member(obj, name);
    char given[24], used[24];
    int64_t n;

    if (!v)
        return 0;
    if (!json_object_is_type(v, json_type_int))
        return lb_error_set(err, -EINVAL, "%s must be a whole number %lld..%lld", label,
                            (long long)min, (long long)max);
    n = json_object_get_int64(v);
    if (n < min || n > max) {
        snprintf(given, sizeof(given), "%lld", (long long)n);
        n = n < min ? min : max;
        snprintf(used, sizeof(used), "%lld", (long long)n);
        add_note(notes, label, given, used, n == min ? "below the minimum" : "above the maximum");
    }
    *out = (int)n;
    return 0;
}

static int get_bool(json_object *obj, const char *name, bool *out, char **err)
{
    json_object *v = member(obj, name);

    if (!v)
        return 0;
    if (!json_object_is_type(v, json_type_boolean))
        return lb_error_set(err, -EINVAL, "%s must be true or false", name);
    *out = json_object_get_boolean(v);
    return 0;
}

/* A string member copied into out (size bytes with the NUL); *present tells if it was there. */
static int get_string(json_object *obj, const char *name, const char *label, char *out, size_t size,
                      bool *present, char **err)
{
    json_object *v = member(obj, name);
    size_t len;

    if (present)
        *present = false;
    if (!v)
        return 0;
    if (!json_object_is_type(v, json_type_string))
        return lb_error_set(err, -EINVAL, "%s must be a string", label);
    len = (size_t)json_object_get_string_len(v);
    if (len >= size || strlen(json_object_get_string(v)) != len)
        return lb_error_set(err, -EINVAL, "%s must be at most %zu characters", label, size - 1);
    memcpy(out, json_object_get_string(v), len + 1);
    if (present)
        *present = true;
    return 0;
}

/* Picks `text` out of "a|b|c"; returns its index or -1. */
static int choice_index(const char *choices, const char *text)
{
    size_t tlen = strlen(text);
    int i = 0;

    for (const char *p = choices; *p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);

        if (len == tlen && memcmp(p, text, len) == 0)
            return i;
        if (!bar)
            break;
        p = bar + 1;
    }
    return -1;
}

/* " (did you mean X?)" for the entry of "a|b|c" nearest to text, or "". */
static const char *choice_hint(const char *choices, const char *text, char *buf, size_t size)
{
    char copy[128], *save = NULL, *tok;
    const char *names[16], *near;
    size_t n = 0;

    buf[0] = '\0';
    snprintf(copy, sizeof(copy), "%s", choices);
    for (tok = strtok_r(copy, "|", &save); tok && n < 16; tok = strtok_r(NULL, "|", &save))
        names[n++] = tok;
    near = lb_settings_nearest(text, names, n);
    if (near)
        snprintf(buf, size, " (did you mean %s?)", near);
    return buf;
}

static int get_choice(json_object *obj, const char *name, const char *label, const char *choices,
                      int *out, char **err)
{
    char text[32], hint[64];
    bool present;
    int idx, rc;

    rc = get_string(obj, name, label, text, sizeof(text), &present, err);
    if (rc || !present)
        return rc == -EINVAL ? lb_error_set(err, rc, "%s must be one of %s", label, choices) : rc;
    idx = choice_index(choices, text);
    if (idx < 0)
        return lb_error_set(err, -EINVAL, "%s \"%s\" is not one of %s%s", label, text, choices,
                            choice_hint(choices, text, hint, sizeof(hint)));
    *out = idx;
    return 0;
}

/*
 * True when `text` is written as a duration (numbers with units) whatever
 * its size: lb_duration_parse() refusing such a text means it was too large.
 */
static bool duration_is_well_formed(const char *text)
{
    const char *p = text;

    if (!*p)
        return false;
    while (*p) {
        size_t digits = strspn(p, "0123456789");

        p += digits;
        if (*p == '.') {
            size_t frac = strspn(p + 1, "0123456789");

            p += 1 + frac;
            digits += frac;
        }
        if (!digits)
            return false;
        if (strncmp(p, "ms", 2) == 0)
            p += 2;
        else if (*p == 's' || *p == 'm' || *p == 'h')
            p++;
        else
            return false;
    }
    return true;
}

/* How a duration field reads 0. */
enum zero_means {
    ZERO_OFF,     /* 0 turns the feature off (DESIGN.md: "0 means off") */
    ZERO_DEFAULT, /* 0 cannot mean off: the field keeps its default, with a note */
};

/*
 * A duration string in [min_ms, max_ms], or 0 as `zero` says.  Out of range
 * (including texts too large for lb_duration_parse()) is clamped with a
 * note; a text that is not a duration is an error.  *given (64 bytes) gets
 * the text when the member is present, "" otherwise.
 */
static int get_duration(json_object *obj, const char *name, const char *label, int64_t min_ms,
                        int64_t max_ms, enum zero_means zero, int64_t *out, char given[64],
                        struct lb_value_notes *notes, char **err)
{
    char used[32];
    const char *why = NULL, *note = NULL;
    bool present;
    int64_t ms;
    int rc;

    given[0] = '\0';
    rc = get_string(obj, name, label, given, 64, &present, err);
    if (rc || !present) {
        given[0] = '\0';
        return rc == -EINVAL
                   ? lb_error_set(err, rc, "%s must be a duration string like \"3s\"", label)
                   : rc;
    }
    if (lb_duration_parse(given, &ms, &why) < 0) {
        if (!duration_is_well_formed(given))
            return lb_error_set(err, -EINVAL, "%s \"%s\": %s", label, given, why);
        ms = max_ms; /* well formed, too large to parse */
        note = "above the maximum";
    } else if (ms == 0 && zero == ZERO_DEFAULT) {
        ms = *out;
        note = "0 is not a valid value, using the default";
    } else if (ms == 0) {
        /* off */
    } else if (ms < min_ms) {
        ms = min_ms;
        note = "below the minimum";
    } else if (ms > max_ms) {
        ms = max_ms;
        note = "above the maximum";
    }
    if (note)
        add_note(notes, label, given, lb_duration_format(ms, used, sizeof(used)), note);
    *out = ms;
    return 0;
}

/* Parses the value and checks it is an object; the caller puts *root. */
static int parse_object(const char *json, size_t len, const char *what, json_object **root,
                        char **err)
{
    char *why = NULL;
    int rc;

    *root = NULL;
    if (len > LB_VALUE_MAX)
        return lb_error_set(err, -EINVAL, "%s value is larger than %d bytes", what, LB_VALUE_MAX);
    rc = lb_etcd_json_parse(json, len, root, &why);
    if (rc) {
        lb_error_set(err, rc, "%s value is %s", what, why ? why : "not JSON");
        free(why);
        return rc;
    }
    if (!json_object_is_type(*root, json_type_object)) {
        json_object_put(*root);
        *root = NULL;
        return lb_error_set(err, -EINVAL, "%s value must be a JSON object", what);
    }
    return 0;
}

static bool zone_is_valid(const char *zone)
{
    for (const char *p = zone; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == ':' || *p == '-'))
            return false;
    return true;
}

int lb_value_check_zone(const char *zone, char **err)
{
    return zone_is_valid(zone) ? 0
                               : lb_error_set(err, -EINVAL, "zone must be made of [A-Za-z0-9._:-]");
}

/* --- values ---------------------------------------------------------------------------- */

int lb_value_parse_backend_noted(const char *json, size_t len, struct lb_backend_spec *out,
                                 struct lb_value_notes *notes, char **err)
{
    struct lb_backend_spec spec;
    json_object *root;
    char *why = NULL;
    bool present;
    int rc;

    memset(&spec, 0, sizeof(spec));
    spec.weight = LB_WEIGHT_DEFAULT;
    rc = parse_object(json, len, "backend", &root, err);
    if (rc)
        return rc;
    rc = get_string(root, "addr", "addr", spec.addr, sizeof(spec.addr), &present, err);
    if (!rc && !present)
        rc = lb_error_set(err, -EINVAL, "backend value has no \"addr\" (want host:port)");
    if (!rc && lb_value_check_addr(spec.addr, &why) < 0) {
        rc = lb_error_set(err, -EINVAL, "addr \"%s\": %s", spec.addr, why ? why : "invalid");
        free(why);
    }
    if (!rc)
        rc = get_int(root, "weight", "weight", 0, LB_WEIGHT_MAX, &spec.weight, notes, err);
    if (!rc)
        rc = get_string(root, "zone", "zone", spec.zone, sizeof(spec.zone), NULL, err);
    if (!rc)
        rc = lb_value_check_zone(spec.zone, err);
    if (!rc)
        *out = spec;
    json_object_put(root);
    return rc;
}

int lb_value_parse_override_noted(const char *json, size_t len, struct lb_override *out,
                                  struct lb_value_notes *notes, char **err)
{
    struct lb_override ov;
    json_object *root;
    int health = LB_HEALTH_AUTO, rc;

    memset(&ov, 0, sizeof(ov));
    rc = parse_object(json, len, "override", &root, err);
    if (rc)
        return rc;
    rc = get_bool(root, "drain", &ov.drain, err);
    if (!rc && member(root, "weight")) {
        rc = get_int(root, "weight", "weight", 0, LB_WEIGHT_MAX, &ov.weight, notes, err);
        ov.has_weight = rc == 0;
    }
    if (!rc) {
        /* index order matches enum lb_health_override: auto, up, down */
        rc = get_choice(root, "health", "health", "auto|up|down", &health, err);
        ov.health = (enum lb_health_override)health;
    }
    if (!rc)
        *out = ov;
    json_object_put(root);
    return rc;
}

/* --- pool policy ----------------------------------------------------------------------- */

/* The fields of a policy, and of its health object, as users write them. */
static const char *const policy_fields[] = {
    "algorithm",      "health",          "connect_timeout", "idle_timeout",
    "retries",        "max_conns",       "slow_start",      "drain_timeout",
    "proxy_protocol", "panic_threshold", "zone_affinity",   "queue_timeout",
};
static const char *const health_fields[] = {"type", "path", "interval", "timeout", "rise", "fall"};

#define N_POLICY_FIELDS (sizeof(policy_fields) / sizeof(policy_fields[0]))
#define N_HEALTH_FIELDS (sizeof(health_fields) / sizeof(health_fields[0]))

/* Adds a problem; past LB_VALUE_PROBLEMS_MAX it is counted, not kept. */
static void add_problem(struct lb_value_problems *ps, const char *field, const char *text)
{
    struct lb_value_problem *p;

    ps->total++;
    if (ps->n >= LB_VALUE_PROBLEMS_MAX)
        return;
    p = &ps->problem[ps->n++];
    snprintf(p->field, sizeof(p->field), "%s", field);
    snprintf(p->text, sizeof(p->text), "%s", text);
    p->unknown = false;
}

/*
 * Files the outcome of one field helper: 0 passes, -EINVAL becomes a
 * problem of `field` worded by the helper (*err, consumed), anything else
 * (-ENOMEM) is returned to stop the reading.
 */
static int keep(struct lb_value_problems *ps, const char *field, int rc, char **err)
{
    if (rc == -EINVAL)
        add_problem(ps, field, *err ? *err : "invalid value");
    free(*err);
    *err = NULL;
    return rc == -EINVAL ? 0 : rc;
}

static bool is_one_of(const char *name, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(name, names[i]) == 0)
            return true;
    return false;
}

/*
 * One problem per member of obj that is not in known[]: with the nearest
 * known name when one is close, else with the nearest name of the other
 * level (a field written inside health that belongs at the top, or the
 * other way round), else with the list of known names.  `where` is ""
 * at the top level and "health." inside health.
 */
static void check_unknown(json_object *obj, const char *where, const char *const *known,
                          size_t n_known, const char *other_where, const char *const *other,
                          size_t n_other, struct lb_value_problems *ps)
{
    json_object_object_foreach(obj, key, val)
    {
        char field[sizeof(ps->problem[0].field)], text[sizeof(ps->problem[0].text)];
        const char *near;

        (void)val;
        if (is_one_of(key, known, n_known))
            continue;
        snprintf(field, sizeof(field), "%s%.40s", where, key);
        if ((near = lb_settings_nearest(key, known, n_known)))
            snprintf(text, sizeof(text), "unknown field \"%s\" (did you mean %s?)", field, near);
        else if ((near = lb_settings_nearest(key, other, n_other)) && other_where[0])
            snprintf(text, sizeof(text), "unknown field \"%s\" (did you mean %s%s?)", field,
                     other_where, near);
        else if (near && strcmp(near, key) == 0)
            snprintf(text, sizeof(text),
                     "unknown field \"%s\" (%s belongs at the top level, not in health)", field,
                     near);
        else if (near)
            snprintf(text, sizeof(text),
                     "unknown field \"%s\" (did you mean %s, at the top level?)", field, near);
        else if (where[0])
            snprintf(text, sizeof(text),
                     "unknown field \"%s\" (health takes type, path, interval, timeout, rise, "
                     "fall)",
                     field);
        else
            snprintf(text, sizeof(text),
                     "unknown field \"%s\" (a policy takes algorithm, health, connect_timeout, "
                     "idle_timeout, retries, max_conns, slow_start, drain_timeout, "
                     "proxy_protocol, panic_threshold, zone_affinity, queue_timeout)",
                     field);
        add_problem(ps, field, text);
        ps->n_unknown++;
        if (ps->n && ps->total == ps->n)
            ps->problem[ps->n - 1].unknown = true;
    }
}

static int parse_health(json_object *h, struct lb_pool_policy *p, struct lb_value_notes *notes,
                        struct lb_value_problems *ps)
{
    char interval_text[64], timeout_text[64], used[32], *err = NULL;
    int64_t interval_default = p->health.interval_ms;
    bool present, path_ok = true;
    int type = (int)p->health.type, rc;

    interval_text[0] = timeout_text[0] = '\0';
    if (!json_object_is_type(h, json_type_object)) {
        add_problem(ps, "health", "health must be an object");
        return 0;
    }
    check_unknown(h, "health.", health_fields, N_HEALTH_FIELDS, "", policy_fields, N_POLICY_FIELDS,
                  ps);
    /* index order matches enum lb_health_type */
    rc = keep(ps, "health.type", get_choice(h, "type", "health.type", "tcp|http|none", &type, &err),
              &err);
    p->health.type = (enum lb_health_type)type;
    if (!rc) {
        rc = get_string(h, "path", "health.path", p->health.path, sizeof(p->health.path), &present,
                        &err);
        path_ok = rc == 0;
        rc = keep(ps, "health.path", rc, &err);
    }
    if (!rc && path_ok && present) {
        const char *c = p->health.path;

        while (*c && (unsigned char)*c > 0x20 && *c != 0x7f)
            c++;
        if (p->health.path[0] != '/')
            add_problem(ps, "health.path", "health.path must start with '/'");
        else if (*c)
            add_problem(ps, "health.path",
                        "health.path must not hold spaces or control characters");
    }
    if (!rc)
        rc = keep(ps, "health.interval",
                  get_duration(h, "interval", "health.interval", LB_POLICY_INTERVAL_MIN_MS,
                               LB_POLICY_INTERVAL_MAX_MS, ZERO_OFF, &p->health.interval_ms,
                               interval_text, notes, &err),
                  &err);
    if (!rc)
        rc = keep(ps, "health.timeout",
                  get_duration(h, "timeout", "health.timeout", LB_POLICY_TIMEOUT_MIN_MS,
                               LB_POLICY_INTERVAL_MAX_MS, ZERO_DEFAULT, &p->health.timeout_ms,
                               timeout_text, notes, &err),
                  &err);
    if (!rc)
        rc = keep(ps, "health.rise",
                  get_int(h, "rise", "health.rise", 1, LB_POLICY_RISE_FALL_MAX, &p->health.rise,
                          notes, &err),
                  &err);
    if (!rc)
        rc = keep(ps, "health.fall",
                  get_int(h, "fall", "health.fall", 1, LB_POLICY_RISE_FALL_MAX, &p->health.fall,
                          notes, &err),
                  &err);
    if (rc)
        return rc;
    if (p->health.interval_ms == 0) {
        /* "0 means off": no checks, the same as "type":"none" */
        p->health.type = LB_CHECK_NONE;
        p->health.interval_ms = interval_default;
    }
    if (p->health.timeout_ms > p->health.interval_ms) {
        /* a check must end before the next one is due; say so only if the user set it */
        if (timeout_text[0])
            add_note(notes, "health.timeout", timeout_text,
                     lb_duration_format(p->health.interval_ms, used, sizeof(used)),
                     "above health.interval");
        p->health.timeout_ms = p->health.interval_ms;
    }
    return 0;
}

/*
 * The validator.  `unknown_ok`: unknown fields are problems all the same
 * (ps->n_unknown of them), but when they are the only ones the policy is
 * read and returned (lbd); otherwise any problem refuses it (lbctl).
 */
static int check_policy(const char *json, size_t len, struct lb_pool_policy *out,
                        struct lb_value_problems *ps, struct lb_value_notes *notes, bool unknown_ok)
{
    struct lb_pool_policy p;
    json_object *root, *h;
    char text[64], *err = NULL;
    int algorithm, proxy, rc;

    ps->n = ps->total = ps->n_unknown = 0;
    lb_pool_policy_defaults(&p);
    algorithm = (int)p.algorithm;
    proxy = (int)p.proxy_protocol;
    rc = parse_object(json, len, "pool config", &root, &err);
    if (rc) {
        rc = keep(ps, "", rc, &err);
        return rc ? rc : -EINVAL;
    }
    check_unknown(root, "", policy_fields, N_POLICY_FIELDS, "health.", health_fields,
                  N_HEALTH_FIELDS, ps);
    /* index order matches enum lb_algorithm and enum lb_proxy_protocol */
    rc = keep(ps, "algorithm",
              get_choice(root, "algorithm", "algorithm", LB_ALGORITHM_NAMES, &algorithm, &err),
              &err);
    p.algorithm = (enum lb_algorithm)algorithm;
    if (!rc && (h = member(root, "health")))
        rc = parse_health(h, &p, notes, ps);
    if (!rc)
        rc = keep(ps, "connect_timeout",
                  get_duration(root, "connect_timeout", "connect_timeout",
                               LB_POLICY_CONNECT_TIMEOUT_MIN_MS, LB_POLICY_CONNECT_TIMEOUT_MAX_MS,
                               ZERO_OFF, &p.connect_timeout_ms, text, notes, &err),
                  &err);
    if (!rc)
        rc = keep(ps, "idle_timeout",
                  get_duration(root, "idle_timeout", "idle_timeout", LB_POLICY_IDLE_TIMEOUT_MIN_MS,
                               LB_POLICY_IDLE_TIMEOUT_MAX_MS, ZERO_OFF, &p.idle_timeout_ms, text,
                               notes, &err),
                  &err);
    if (!rc)
        rc = keep(
            ps, "retries",
            get_int(root, "retries", "retries", 0, LB_POLICY_RETRIES_MAX, &p.retries, notes, &err),
            &err);
    if (!rc)
        rc = keep(ps, "max_conns",
                  get_int(root, "max_conns", "max_conns", 0, LB_POLICY_MAX_CONNS_MAX, &p.max_conns,
                          notes, &err),
                  &err);
    if (!rc)
        rc = keep(ps, "slow_start",
                  get_duration(root, "slow_start", "slow_start", LB_POLICY_SLOW_START_MIN_MS,
                               LB_POLICY_SLOW_START_MAX_MS, ZERO_OFF, &p.slow_start_ms, text, notes,
                               &err),
                  &err);
    if (!rc)
        rc = keep(ps, "drain_timeout",
                  get_duration(root, "drain_timeout", "drain_timeout",
                               LB_POLICY_DRAIN_TIMEOUT_MIN_MS, LB_POLICY_DRAIN_TIMEOUT_MAX_MS,
                               ZERO_OFF, &p.drain_timeout_ms, text, notes, &err),
                  &err);
    if (!rc) {
        rc = keep(ps, "proxy_protocol",
                  get_choice(root, "proxy_protocol", "proxy_protocol", "none|v1|v2", &proxy, &err),
                  &err);
        p.proxy_protocol = (enum lb_proxy_protocol)proxy;
    }
    if (!rc)
        rc = keep(ps, "panic_threshold",
                  get_int(root, "panic_threshold", "panic_threshold", 0, 100, &p.panic_threshold,
                          notes, &err),
                  &err);
    if (!rc)
        rc = keep(
            ps, "zone_affinity",
            get_int(root, "zone_affinity", "zone_affinity", 0, 100, &p.zone_affinity, notes, &err),
            &err);
    if (!rc)
        rc = keep(ps, "queue_timeout",
                  get_duration(root, "queue_timeout", "queue_timeout",
                               LB_POLICY_QUEUE_TIMEOUT_MIN_MS, LB_POLICY_QUEUE_TIMEOUT_MAX_MS,
                               ZERO_OFF, &p.queue_timeout_ms, text, notes, &err),
                  &err);
    json_object_put(root);
    if (rc)
        return rc;
    if (ps->total && !(unknown_ok && ps->total == ps->n_unknown))
        return -EINVAL;
    *out = p;
    return 0;
}

int lb_value_check_policy(const char *json, size_t len, struct lb_pool_policy *out,
                          struct lb_value_problems *ps, struct lb_value_notes *notes)
{
    return check_policy(json, len, out, ps, notes, false);
}

int lb_value_parse_policy_noted(const char *json, size_t len, struct lb_pool_policy *out,
                                struct lb_value_notes *notes, char **err)
{
    struct lb_value_problems *ps = malloc(sizeof(*ps));
    char joined[512];
    size_t o = 0;
    int rc;

    if (!ps)
        return lb_error_set(err, -ENOMEM, "out of memory");
    rc = check_policy(json, len, out, ps, notes, true);
    if (rc == 0 && notes) {
        /* Applied without them: the log says which fields were ignored. */
        notes->n_unknown = ps->n_unknown;
        for (size_t i = 0, k = 0; i < ps->n && k < LB_VALUE_UNKNOWN_MAX; i++)
            if (ps->problem[i].unknown)
                snprintf(notes->unknown[k++], sizeof(notes->unknown[0]), "%s", ps->problem[i].text);
    }
    if (rc == -EINVAL) {
        /* one line for the log: the problems in order, as many as fit */
        joined[0] = '\0';
        for (size_t i = 0; i < ps->n && o < sizeof(joined); i++)
            o += (size_t)snprintf(joined + o, sizeof(joined) - o, "%s%s", i ? "; " : "",
                                  ps->problem[i].text);
        if (ps->total > 1)
            lb_error_set(err, rc, "%s (%zu problems)", joined, ps->total);
        else
            lb_error_set(err, rc, "%s", joined);
    } else if (rc) {
        lb_error_set(err, rc, "out of memory");
    }
    free(ps);
    return rc;
}

int lb_value_parse_backend(const char *json, size_t len, struct lb_backend_spec *out, char **err)
{
    return lb_value_parse_backend_noted(json, len, out, NULL, err);
}

int lb_value_parse_override(const char *json, size_t len, struct lb_override *out, char **err)
{
    return lb_value_parse_override_noted(json, len, out, NULL, err);
}

int lb_value_parse_policy(const char *json, size_t len, struct lb_pool_policy *out, char **err)
{
    return lb_value_parse_policy_noted(json, len, out, NULL, err);
}

bool lb_value_override_is_default(const struct lb_override *ov)
{
    return !ov->drain && !ov->has_weight && ov->health == LB_HEALTH_AUTO;
}

static int add_member(json_object *obj, const char *name, json_object *v)
{
    if (!v || json_object_object_add(obj, name, v) < 0) {
        json_object_put(v);
        return -ENOMEM;
    }
    return 0;
}

int lb_value_encode_override(const struct lb_override *ov, char **out)
{
    static const char *const health[] = {"auto", "up", "down"};
    json_object *obj;
    int rc = 0;

    *out = NULL;
    if ((ov->has_weight && (ov->weight < 0 || ov->weight > LB_WEIGHT_MAX)) ||
        (unsigned)ov->health > LB_HEALTH_FORCE_DOWN)
        return -EINVAL;
    obj = json_object_new_object();
    if (!obj)
        return -ENOMEM;
    if (ov->drain)
        rc = add_member(obj, "drain", json_object_new_boolean(1));
    if (!rc && ov->has_weight)
        rc = add_member(obj, "weight", json_object_new_int(ov->weight));
    if (!rc && ov->health != LB_HEALTH_AUTO)
        rc = add_member(obj, "health", json_object_new_string(health[ov->health]));
    if (rc) {
        json_object_put(obj);
        return rc;
    }
    return lb_etcd_json_finish(obj, out);
}

int lb_value_encode_backend(const struct lb_backend_spec *spec, char **out)
{
    return lb_value_encode_backend_meta(spec, NULL, out);
}

int lb_value_encode_backend_meta(const struct lb_backend_spec *spec, json_object *meta, char **out)
{
    json_object *obj;
    int rc;

    *out = NULL;
    if (memchr(spec->addr, '\0', sizeof(spec->addr)) == NULL ||
        memchr(spec->zone, '\0', sizeof(spec->zone)) == NULL ||
        lb_value_check_addr(spec->addr, NULL) < 0 || spec->weight < 0 ||
        spec->weight > LB_WEIGHT_MAX || !zone_is_valid(spec->zone)) {
        json_object_put(meta);
        return -EINVAL;
    }
    obj = json_object_new_object();
    if (!obj) {
        json_object_put(meta);
        return -ENOMEM;
    }
    rc = add_member(obj, "addr", json_object_new_string(spec->addr));
    if (!rc)
        rc = add_member(obj, "weight", json_object_new_int(spec->weight));
    if (!rc && spec->zone[0])
        rc = add_member(obj, "zone", json_object_new_string(spec->zone));
    if (!rc && meta)
        rc = add_member(obj, "meta", meta);
    else
        json_object_put(meta);
    if (rc) {
        json_object_put(obj);
        return rc;
    }
    return lb_etcd_json_finish(obj, out);
}

/* Adds name: a duration as lb_duration_format() writes it. */
static int add_duration(json_object *obj, const char *name, int64_t ms)
{
    char text[32];

    return add_member(obj, name,
                      json_object_new_string(lb_duration_format(ms, text, sizeof(text))));
}

int lb_value_encode_policy(const struct lb_pool_policy *p, char **out)
{
    static const char *const health_types[] = {"tcp", "http", "none"};
    static const char *const proxies[] = {"none", "v1", "v2"};
    json_object *obj, *h;
    int rc;

    *out = NULL;
    if ((unsigned)p->algorithm > LB_ALGO_MAGLEV || (unsigned)p->health.type > LB_CHECK_NONE ||
        (unsigned)p->proxy_protocol > LB_PROXY_V2 ||
        memchr(p->health.path, '\0', sizeof(p->health.path)) == NULL)
        return -EINVAL;
    obj = json_object_new_object();
    h = json_object_new_object();
    if (!obj || !h) {
        json_object_put(obj);
        json_object_put(h);
        return -ENOMEM;
    }
    rc = add_member(obj, "algorithm", json_object_new_string(lb_algorithm_name(p->algorithm)));
    if (!rc)
        rc = add_member(h, "type", json_object_new_string(health_types[p->health.type]));
    if (!rc)
        rc = add_member(h, "path", json_object_new_string(p->health.path));
    if (!rc)
        rc = add_duration(h, "interval", p->health.interval_ms);
    if (!rc)
        rc = add_duration(h, "timeout", p->health.timeout_ms);
    if (!rc)
        rc = add_member(h, "rise", json_object_new_int(p->health.rise));
    if (!rc)
        rc = add_member(h, "fall", json_object_new_int(p->health.fall));
    if (!rc) {
        rc = add_member(obj, "health", h);
        h = NULL; /* owned by obj, or put by add_member */
    }
    if (!rc)
        rc = add_duration(obj, "connect_timeout", p->connect_timeout_ms);
    if (!rc)
        rc = add_duration(obj, "idle_timeout", p->idle_timeout_ms);
    if (!rc)
        rc = add_member(obj, "retries", json_object_new_int(p->retries));
    if (!rc)
        rc = add_member(obj, "max_conns", json_object_new_int(p->max_conns));
    if (!rc)
        rc = add_duration(obj, "slow_start", p->slow_start_ms);
    if (!rc)
        rc = add_duration(obj, "drain_timeout", p->drain_timeout_ms);
    if (!rc)
        rc = add_member(obj, "proxy_protocol", json_object_new_string(proxies[p->proxy_protocol]));
    if (!rc)
        rc = add_member(obj, "panic_threshold", json_object_new_int(p->panic_threshold));
    if (!rc)
        rc = add_member(obj, "zone_affinity", json_object_new_int(p->zone_affinity));
    if (!rc)
        rc = add_duration(obj, "queue_timeout", p->queue_timeout_ms);
    json_object_put(h);
    if (rc) {
        json_object_put(obj);
        return rc;
    }
    return lb_etcd_json_finish(obj, out);
}
