/*
 * The JSON values stored under the schema's keys, read into the typed
 * structs of lb_update.h (and, for what lbd and lbctl write, written back).
 *
 * Reading is strict about what is there and lenient about what is not:
 * every field is optional except a backend's "addr", unknown fields are
 * ignored, a field of the wrong type or out of bounds fails the whole value
 * with a sentence naming the field.  Values longer than LB_VALUE_MAX bytes
 * are refused before parsing.
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

/* {"addr":"10.0.0.5:8080","weight":100,"zone":"a","meta":{...}} */
int lb_value_parse_backend(const char *json, size_t len, struct lb_backend_spec *out, char **err);

/* {"drain":true,"weight":50,"health":"up|down|auto"} */
int lb_value_parse_override(const char *json, size_t len, struct lb_override *out, char **err);

/* Pool policy per DESIGN.md; absent fields keep lb_pool_policy_defaults(). */
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

#endif
