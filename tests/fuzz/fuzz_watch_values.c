/*
 * Fuzzes what the watcher reads from etcd values and keys: the first byte
 * selects the parser (backend, override, pool config, key, address), the
 * rest is the input.  Values that parse are written back and must parse
 * again to the same thing, and every field of a value that parses is in
 * its range (lb_value.h): out of range is clamped, never passed on.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lb_key.h"
#include "lb_value.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text;
    char *err = NULL, *json = NULL;
    char *copy;

    if (size < 1)
        return 0;
    text = (const char *)data + 1;
    size--;
    switch (data[0] % 5) {
    case 0: {
        struct lb_backend_spec b, back;

        if (lb_value_parse_backend(text, size, &b, &err) == 0 &&
            lb_value_encode_backend(&b, &json) == 0) {
            if (lb_value_parse_backend(json, strlen(json), &back, NULL) != 0 ||
                memcmp(&b, &back, sizeof(b)) != 0)
                abort();
        }
        break;
    }
    case 1: {
        struct lb_override o, back;

        if (lb_value_parse_override(text, size, &o, &err) == 0) {
            if (lb_value_encode_override(&o, &json) != 0 ||
                lb_value_parse_override(json, strlen(json), &back, NULL) != 0 ||
                back.drain != o.drain || back.has_weight != o.has_weight ||
                (o.has_weight && back.weight != o.weight) || back.health != o.health)
                abort();
        }
        break;
    }
    case 2: {
        struct lb_pool_policy p;
        struct lb_value_notes notes = {.n = 0};

        if (lb_value_parse_policy_noted(text, size, &p, &notes, &err) == 0) {
            const struct lb_pool_policy *q = &p;

            if (q->health.interval_ms < LB_POLICY_INTERVAL_MIN_MS ||
                q->health.interval_ms > LB_POLICY_INTERVAL_MAX_MS ||
                q->health.timeout_ms < LB_POLICY_TIMEOUT_MIN_MS ||
                q->health.timeout_ms > q->health.interval_ms || q->health.rise < 1 ||
                q->health.rise > LB_POLICY_RISE_FALL_MAX || q->health.fall < 1 ||
                q->health.fall > LB_POLICY_RISE_FALL_MAX ||
                (q->connect_timeout_ms != 0 &&
                 (q->connect_timeout_ms < LB_POLICY_CONNECT_TIMEOUT_MIN_MS ||
                  q->connect_timeout_ms > LB_POLICY_CONNECT_TIMEOUT_MAX_MS)) ||
                (q->idle_timeout_ms != 0 && (q->idle_timeout_ms < LB_POLICY_IDLE_TIMEOUT_MIN_MS ||
                                             q->idle_timeout_ms > LB_POLICY_IDLE_TIMEOUT_MAX_MS)) ||
                (q->slow_start_ms != 0 && (q->slow_start_ms < LB_POLICY_SLOW_START_MIN_MS ||
                                           q->slow_start_ms > LB_POLICY_SLOW_START_MAX_MS)) ||
                (q->drain_timeout_ms != 0 &&
                 (q->drain_timeout_ms < LB_POLICY_DRAIN_TIMEOUT_MIN_MS ||
                  q->drain_timeout_ms > LB_POLICY_DRAIN_TIMEOUT_MAX_MS)) ||
                q->retries < 0 || q->retries > LB_POLICY_RETRIES_MAX || q->max_conns < 0 ||
                q->max_conns > LB_POLICY_MAX_CONNS_MAX || q->panic_threshold < 0 ||
                q->panic_threshold > 100 || q->zone_affinity < 0 || q->zone_affinity > 100 ||
                (q->queue_timeout_ms != 0 &&
                 (q->queue_timeout_ms < LB_POLICY_QUEUE_TIMEOUT_MIN_MS ||
                  q->queue_timeout_ms > LB_POLICY_QUEUE_TIMEOUT_MAX_MS)) ||
                notes.n > LB_VALUE_NOTES_MAX)
                abort();
            for (size_t i = 0; i < notes.n; i++)
                if (!notes.note[i].why || !memchr(notes.note[i].field, '\0', 32))
                    abort();
        }
        break;
    }
    case 3: {
        struct lb_key k;

        lb_key_parse("/lb/", text, size, &k, &err);
        break;
    }
    case 4:
        copy = malloc(size + 1);
        if (!copy)
            return 0;
        memcpy(copy, text, size);
        copy[size] = '\0';
        lb_value_check_addr(copy, &err);
        free(copy);
        break;
    }
    free(json);
    free(err);
    return 0;
}
