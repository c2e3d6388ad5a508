/*
 * Fuzzes the unary etcd answers the watcher and lbctl register read: range
 * pages (strictly, and leniently as a listing reads them, through the
 * listing and the mirror behind it), error bodies, lease grant and
 * keepalive answers.  The first byte picks the listing's page size and
 * how often the answer is taken for one over the response bound.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lb_etcd_json.h"
#include "lb_lease.h"
#include "lb_listing.h"
#include "lb_log.h"
#include "lb_mirror.h"
#include "lb_value.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void apply(void *ctx, const struct lb_update *u)
{
    (void)ctx;
    (void)u;
}

static void commit(void *ctx)
{
    (void)ctx;
}

/* The input as a listing page, after `shrinks` answers that were too large. */
static void listing(const char *text, size_t size, int64_t page_size, int shrinks)
{
    struct lb_update_sink sink = {apply, commit, NULL};
    struct lb_mirror *m;
    struct lb_listing l;
    char *err = NULL, *body = NULL;

    if (lb_mirror_new("/lb/", &sink, &m) < 0)
        return;
    lb_listing_init(&l, m, page_size);
    if (lb_listing_begin(&l, "/lb/pools/", 10, "/lb/pools0", 10) == 0) {
        for (int i = 0; i < shrinks; i++)
            lb_listing_too_large(&l);
        if (lb_listing_page(&l, text, size, &err) >= 0) {
            for (size_t i = 0; i < l.n_staged; i++)
                if (l.staged[i].value_len > LB_VALUE_MAX || !l.staged[i].key)
                    abort();
            if (lb_listing_request(&l, &body) == 0 && !body)
                abort();
            lb_listing_apply(&l);
        }
    }
    free(body);
    free(err);
    lb_listing_clear(&l);
    lb_mirror_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    struct lb_etcd_range r;
    char *err = NULL, *message = NULL, *last = NULL;
    size_t last_len;
    int64_t id, ttl;
    int code;

    lb_log_set_level(LB_LOG_ERROR);
    if (lb_etcd_json_parse_range(text, size, &r, &err) == 0)
        lb_etcd_range_free(&r);
    free(err);
    err = NULL;
    if (lb_etcd_json_parse_range_page(text, size, LB_VALUE_MAX, &r, &last, &last_len, &err) == 0) {
        if (r.more && r.n_kvs > 0 && !last)
            abort(); /* a listing that has more must be able to go on */
        for (size_t i = 0; i < r.n_kvs; i++)
            if (r.kvs[i].flaw == LB_ETCD_FLAW_NONE && r.kvs[i].key_len > LB_ETCD_KEY_MAX)
                abort();
        lb_etcd_range_free(&r);
    }
    free(last);
    free(err);
    err = NULL;
    if (lb_etcd_json_parse_error(text, size, &code, &message) == 0)
        free(message);
    lb_lease_parse_grant(text, size, &id, &ttl, &err);
    lb_lease_parse_keepalive(text, size, &ttl, &err);
    free(err);
    if (size > 0)
        listing(text + 1, size - 1, data[0] % 16 + 1, data[0] / 16 % 8);
    return 0;
}
