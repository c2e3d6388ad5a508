/*
 * Fuzzes what the watcher reads from etcd values and keys: the first byte
 * selects the parser (backend, override, pool config, key, address), the
 * rest is the input.  Values that parse are written back and must parse
 * again to the same thing.
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

        lb_value_parse_policy(text, size, &p, &err);
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
