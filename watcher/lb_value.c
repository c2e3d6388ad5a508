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
 */
#include "lb_value.h"
#include "lb_addr.h"
#include "lb_duration.h"
#include "lb_error.h"
#include "lb_etcd_json.h"

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

static int get_choice(json_object *obj, const char *name, const char *label, const char *choices,
                      int *out, char **err)
{
    char text[32];
    bool present;
    int idx, rc;

    rc = get_string(obj, name, label, text, sizeof(text), &present, err);
    if (rc || !present)
        return rc == -EINVAL ? lb_error_set(err, rc, "%s must be one of %s", label, choices) : rc;
    idx = choice_index(choices, text);
    if (idx < 0)
        return lb_error_set(err, -EINVAL, "%s \"%s\" is not one of %s", label, text, choices);
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
    if (!rc && !zone_is_valid(spec.zone))
        rc = lb_error_set(err, -EINVAL, "zone must be made of [A-Za-z0-9._:-]");
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

static int parse_health(json_object *h, struct lb_pool_policy *p, struct lb_value_notes *notes,
                        char **err)
{
    char interval_text[64], timeout_text[64], used[32];
    int64_t interval_default = p->health.interval_ms;
    bool present;
    int type = (int)p->health.type, rc;

    if (!json_object_is_type(h, json_type_object))
        return lb_error_set(err, -EINVAL, "health must be an object");
    /* index order matches enum lb_health_type */
    rc = get_choice(h, "type", "health.type", "tcp|http|none", &type, err);
    p->health.type = (enum lb_health_type)type;
    if (!rc)
        rc = get_string(h, "path", "health.path", p->health.path, sizeof(p->health.path), &present,
                        err);
    if (!rc && present) {
        if (p->health.path[0] != '/')
            return lb_error_set(err, -EINVAL, "health.path must start with '/'");
        for (const char *c = p->health.path; *c; c++)
            if ((unsigned char)*c <= 0x20 || *c == 0x7f)
                return lb_error_set(err, -EINVAL,
                                    "health.path must not hold spaces or control characters");
    }
    if (!rc)
        rc = get_duration(h, "interval", "health.interval", LB_POLICY_INTERVAL_MIN_MS,
                          LB_POLICY_INTERVAL_MAX_MS, ZERO_OFF, &p->health.interval_ms,
                          interval_text, notes, err);
    if (!rc)
        rc = get_duration(h, "timeout", "health.timeout", LB_POLICY_TIMEOUT_MIN_MS,
                          LB_POLICY_INTERVAL_MAX_MS, ZERO_DEFAULT, &p->health.timeout_ms,
                          timeout_text, notes, err);
    if (!rc)
        rc = get_int(h, "rise", "health.rise", 1, LB_POLICY_RISE_FALL_MAX, &p->health.rise, notes,
                     err);
    if (!rc)
        rc = get_int(h, "fall", "health.fall", 1, LB_POLICY_RISE_FALL_MAX, &p->health.fall, notes,
                     err);
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

int lb_value_parse_policy_noted(const char *json, size_t len, struct lb_pool_policy *out,
                                struct lb_value_notes *notes, char **err)
{
    struct lb_pool_policy p;
    json_object *root, *h;
    char text[64];
    int algorithm, proxy, rc;

    lb_pool_policy_defaults(&p);
    algorithm = (int)p.algorithm;
    proxy = (int)p.proxy_protocol;
    rc = parse_object(json, len, "pool config", &root, err);
    if (rc)
        return rc;
    /* index order matches enum lb_algorithm and enum lb_proxy_protocol */
    rc = get_choice(root, "algorithm", "algorithm", LB_ALGORITHM_NAMES, &algorithm, err);
    p.algorithm = (enum lb_algorithm)algorithm;
    if (!rc && (h = member(root, "health")))
        rc = parse_health(h, &p, notes, err);
    if (!rc)
        rc = get_duration(root, "connect_timeout", "connect_timeout",
                          LB_POLICY_CONNECT_TIMEOUT_MIN_MS, LB_POLICY_CONNECT_TIMEOUT_MAX_MS,
                          ZERO_OFF, &p.connect_timeout_ms, text, notes, err);
    if (!rc)
        rc = get_duration(root, "idle_timeout", "idle_timeout", LB_POLICY_IDLE_TIMEOUT_MIN_MS,
                          LB_POLICY_IDLE_TIMEOUT_MAX_MS, ZERO_OFF, &p.idle_timeout_ms, text, notes,
                          err);
    if (!rc)
        rc = get_int(root, "retries", "retries", 0, LB_POLICY_RETRIES_MAX, &p.retries, notes, err);
    if (!rc)
        rc = get_int(root, "max_conns", "max_conns", 0, LB_POLICY_MAX_CONNS_MAX, &p.max_conns,
                     notes, err);
    if (!rc)
        rc =
            get_duration(root, "slow_start", "slow_start", LB_POLICY_SLOW_START_MIN_MS,
                         LB_POLICY_SLOW_START_MAX_MS, ZERO_OFF, &p.slow_start_ms, text, notes, err);
    if (!rc)
        rc = get_duration(root, "drain_timeout", "drain_timeout", LB_POLICY_DRAIN_TIMEOUT_MIN_MS,
                          LB_POLICY_DRAIN_TIMEOUT_MAX_MS, ZERO_OFF, &p.drain_timeout_ms, text,
                          notes, err);
    if (!rc) {
        rc = get_choice(root, "proxy_protocol", "proxy_protocol", "none|v1|v2", &proxy, err);
        p.proxy_protocol = (enum lb_proxy_protocol)proxy;
    }
    if (!rc)
        rc = get_int(root, "panic_threshold", "panic_threshold", 0, 100, &p.panic_threshold, notes,
                     err);
    if (!rc)
        *out = p;
    json_object_put(root);
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
    json_object *obj;
    int rc;

    *out = NULL;
    if (memchr(spec->addr, '\0', sizeof(spec->addr)) == NULL ||
        memchr(spec->zone, '\0', sizeof(spec->zone)) == NULL ||
        lb_value_check_addr(spec->addr, NULL) < 0 || spec->weight < 0 ||
        spec->weight > LB_WEIGHT_MAX || !zone_is_valid(spec->zone))
        return -EINVAL;
    obj = json_object_new_object();
    if (!obj)
        return -ENOMEM;
    rc = add_member(obj, "addr", json_object_new_string(spec->addr));
    if (!rc)
        rc = add_member(obj, "weight", json_object_new_int(spec->weight));
    if (!rc && spec->zone[0])
        rc = add_member(obj, "zone", json_object_new_string(spec->zone));
    if (rc) {
        json_object_put(obj);
        return rc;
    }
    return lb_etcd_json_finish(obj, out);
}
