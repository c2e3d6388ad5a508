/*
 * Fuzzes the unary etcd answers the watcher and lbctl register read: range
 * pages, error bodies, lease grant and keepalive answers.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "lb_etcd_json.h"
#include "lb_lease.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    struct lb_etcd_range r;
    char *err = NULL, *message = NULL;
    int64_t id, ttl;
    int code;

    if (lb_etcd_json_parse_range(text, size, &r, &err) == 0)
        lb_etcd_range_free(&r);
    free(err);
    err = NULL;
    if (lb_etcd_json_parse_error(text, size, &code, &message) == 0)
        free(message);
    lb_lease_parse_grant(text, size, &id, &ttl, &err);
    lb_lease_parse_keepalive(text, size, &ttl, &err);
    free(err);
    return 0;
}
