/*
 * The JSON values stored under the schema's keys, read into the typed
 * structs of lb_update.h (and, for what lbd and lbctl write, written back).
 *
 * Reading is strict about what is there and lenient about what is not:
 * every field is optional except a backend's "addr", a field of the wrong
 * type or a text that does not parse fails the whole value with a sentence
 * naming the field.  Unknown fields are ignored in backend and override
 * values (any etcd client writes those, "meta" and fields of its own
 * included) and refused in a pool policy, whose fields are few and typed
 * by hand: "intervl" is a typo, reported with the nearest known field
 * ("did you mean interval?"), not a reason to run checks at the default.
 * Values longer than LB_VALUE_MAX bytes are refused before parsing.
 *
 * Numbers and durations out of their range do not fail the value: they are
 * clamped to the nearest bound, and each clamp is reported as a note (the
 * watcher logs it with the key and field).  The ranges, and why:
 *
 *   field            default  range             0 means
 *   health.interval  2s       100ms .. 1h       checks off (as "type":"none")
 *   health.timeout   1s       10ms .. interval  (nothing: the default, 1s, capped at interval)
 *   health.rise/fall 2 / 3    1 .. 100
 *   connect_timeout  3s       100ms .. 5m       no timeout of lbd's own
 *   idle_timeout     1h       1s .. 7d          never idle out
 *   retries          2        0 .. 10
 *   max_conns        0        0 .. 10,000,000   no limit
 *   slow_start       0s       1s .. 1h          off
 *   drain_timeout    0s       1s .. 24h         wait for connections to end
 *   panic_threshold  50       0 .. 100 (%)      panic mode off
 *   zone_affinity    0        0 .. 100 (%)      every zone alike (also when lbd has no --zone)
 *   queue_timeout    0s       10ms .. 1h        no queue: a client finding every backend at
 *                                               max_conns is closed at once
 *   weight           100      0 .. 1000         no new connections
 *
 * Every lbd replica checks every backend of its pools: a pool of 10,000
 * backends at the default 2s is 5,000 checks a second per replica, and each
 * backend sees (replicas / interval) checks a second.  The 100 ms floor is
 * twenty times under the default (HAProxy's "inter" default too) and still
 * leaves a check a round trip across a data centre; below it checks become
 * load (1ms on 1,000 backends is a million connections a second).  A check that times out
 * after the next one is due makes no sense, hence timeout <= interval;
 * under 10ms (100ms for connect_timeout) a healthy backend on another host
 * fails.  A slow start under 1s cannot ramp (the pool re-weighs every 100
 * ms at most); an idle timeout or drain deadline under 1s closes
 * connections that are working.  The upper bounds are the points past
 * which a value behaves like "off" anyway; 0 says that directly.
 */
#ifndef LB_VALUE_H
#define LB_VALUE_H

#include "lb_update.h"

#include <stdbool.h>
#include <stddef.h>

#define LB_VALUE_MAX (64 * 1024)

/*
 * Checks a "host:port" address: host is a dotted IPv4 address, a bracketed
 * IPv6 address or a DNS name; port is 1..65535.  Returns 0 or -EINVAL with
 * *err.
 */
int lb_value_check_addr(const char *addr, char **err);

/* Checks a backend's zone ("" for none): [A-Za-z0-9._:-].  0 or -EINVAL with *err. */
int lb_value_check_zone(const char *zone, char **err);

/* Policy bounds (see above); durations in ms. */
#define LB_POLICY_INTERVAL_MIN_MS        100
#define LB_POLICY_INTERVAL_MAX_MS        (3600LL * 1000)
#define LB_POLICY_TIMEOUT_MIN_MS         10
#define LB_POLICY_RISE_FALL_MAX          100
#define LB_POLICY_CONNECT_TIMEOUT_MIN_MS 100
#define LB_POLICY_CONNECT_TIMEOUT_MAX_MS (5LL * 60 * 1000)
#define LB_POLICY_IDLE_TIMEOUT_MIN_MS    1000
#define LB_POLICY_IDLE_TIMEOUT_MAX_MS    (7LL * 24 * 3600 * 1000)
#define LB_POLICY_RETRIES_MAX            10
#define LB_POLICY_MAX_CONNS_MAX          10000000
#define LB_POLICY_SLOW_START_MIN_MS      1000
#define LB_POLICY_SLOW_START_MAX_MS      (3600LL * 1000)
#define LB_POLICY_DRAIN_TIMEOUT_MIN_MS   1000
#define LB_POLICY_DRAIN_TIMEOUT_MAX_MS   (24LL * 3600 * 1000)
#define LB_POLICY_QUEUE_TIMEOUT_MIN_MS   10
#define LB_POLICY_QUEUE_TIMEOUT_MAX_MS   (3600LL * 1000)

/* One field clamped into its range. */
struct lb_value_note {
    char field[32];  /* as users write it: "health.interval" */
    char given[40];  /* what the value said: "1ms", "5000" (cut if long) */
    char used[40];   /* what lbd uses instead: "100ms", "1000" */
    const char *why; /* static: "below the minimum", ... */
};

#define LB_VALUE_NOTES_MAX 16

#define LB_VALUE_UNKNOWN_MAX 4

struct lb_value_notes {
    struct lb_value_note note[LB_VALUE_NOTES_MAX];
    size_t n; /* notes past the array are dropped; the value is clamped all the same */
    /* Unknown policy fields lbd ignored, each a sentence with the nearest
     * known name: 'unknown field "health.intervl" (did you mean interval?)' */
    char unknown[LB_VALUE_UNKNOWN_MAX][256];
    size_t n_unknown; /* found; those past the array are not kept */
};

/*
 * The readers.  Each returns 0 with *out filled (out-of-range fields
 * clamped, one note each in *notes when notes is not NULL), or -EINVAL
 * with *err naming the field when the value does not parse; then *out is
 * untouched.  For a policy, *err lists every problem on one line.
 */
/* {"addr":"10.0.0.5:8080","weight":100,"zone":"a","meta":{...}} */
int lb_value_parse_backend_noted(const char *json, size_t len, struct lb_backend_spec *out,
                                 struct lb_value_notes *notes, char **err);
/* {"drain":true,"weight":50,"health":"up|down|auto"} */
int lb_value_parse_override_noted(const char *json, size_t len, struct lb_override *out,
                                  struct lb_value_notes *notes, char **err);
/*
 * Pool policy per DESIGN.md; absent fields keep lb_pool_policy_defaults().
 * Unknown fields are ignored, as DESIGN.md has it (a policy written for a
 * newer lbd still applies), each noted in notes->unknown with the nearest
 * known name for the log; any other problem refuses the whole value.
 */
int lb_value_parse_policy_noted(const char *json, size_t len, struct lb_pool_policy *out,
                                struct lb_value_notes *notes, char **err);

/* One thing wrong with a pool policy (lb_value_check_policy()). */
struct lb_value_problem {
    bool unknown; /* an unknown field: lbd ignores it (DESIGN: forward compatible), lbctl refuses */
    char field[48]; /* as users write it: "health.interval"; "" for the value as a whole */
    char text[256]; /* a sentence naming the field: unknown field "health.intervl" (did you
                     * mean interval?) */
};

#define LB_VALUE_PROBLEMS_MAX 16

struct lb_value_problems {
    struct lb_value_problem problem[LB_VALUE_PROBLEMS_MAX];
    size_t n;         /* problems kept */
    size_t total;     /* problems found: more than n when the array ran out */
    size_t n_unknown; /* of them, unknown fields */
};

/*
 * The pool policy validator, the one lbd (through
 * lb_value_parse_policy_noted()) and `lbctl policy` use.  Reads the whole
 * value and reports every problem, not just the first: an unknown field
 * (with the nearest known one when it is close, also across levels:
 * "interval" at the top level -> health.interval), a wrong type, a text
 * that does not parse.  Returns 0 with *out filled and the clamps in
 * *notes (notes may be NULL), -EINVAL with *problems filled and *out
 * untouched, or -ENOMEM.  Pure: no allocation survives the call.
 */
int lb_value_check_policy(const char *json, size_t len, struct lb_pool_policy *out,
                          struct lb_value_problems *problems, struct lb_value_notes *notes);

/* The same, clamping without notes. */
int lb_value_parse_backend(const char *json, size_t len, struct lb_backend_spec *out, char **err);
int lb_value_parse_override(const char *json, size_t len, struct lb_override *out, char **err);
int lb_value_parse_policy(const char *json, size_t len, struct lb_pool_policy *out, char **err);

/* True when the override changes nothing (no drain, no weight, health auto). */
bool lb_value_override_is_default(const struct lb_override *ov);

/*
 * Writers: a malloc'd compact JSON string in *out, with only the fields
 * that differ from their defaults.  Return 0, -EINVAL for a struct that
 * would not read back (bad addr, weight out of range), or -ENOMEM.
 */
int lb_value_encode_override(const struct lb_override *ov, char **out);
int lb_value_encode_backend(const struct lb_backend_spec *spec, char **out);
/* The same with a "meta" object beside (taken over, even on failure; NULL: none),
 * which lbd does not read: what `lbctl register --meta` writes for others. */
struct json_object;
int lb_value_encode_backend_meta(const struct lb_backend_spec *spec, struct json_object *meta,
                                 char **out);
/*
 * The policy with every field, defaults included, durations written as
 * "2s": what lbd runs, for `lbctl policy` to show and compare.  It reads
 * back to the same struct.
 */
int lb_value_encode_policy(const struct lb_pool_policy *p, char **out);

#endif
