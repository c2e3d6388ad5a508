/*
 * Listing pages.  The cursor is the key the next page starts at: the range
 * key at first, then the last key of a page with a NUL byte appended (the
 * smallest key after it).  Entries move from the parsed page into the
 * staging array without copying their bytes.
 */
#include "lb_listing.h"
#include "lb_error.h"
#include "lb_value.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void lb_listing_init(struct lb_listing *l, struct lb_mirror *mirror, int64_t page_size)
{
    memset(l, 0, sizeof(*l));
    l->mirror = mirror;
    l->page_size = page_size > 0 ? page_size : 1;
    l->limit = l->page_size;
    l->keys_max = LB_MIRROR_MAX_KEYS;
    l->bytes_max = LB_LISTING_BYTES_MAX;
}

void lb_listing_clear(struct lb_listing *l)
{
    for (size_t i = 0; i < l->n_staged; i++)
        lb_etcd_kv_free(&l->staged[i]);
    free(l->staged);
    l->staged = NULL;
    l->n_staged = l->staged_cap = l->staged_bytes = 0;
    free(l->start);
    l->start = NULL;
    l->start_len = 0;
}

/* Makes `key` + (with_nul ? "\0" : "") the start of the next page. */
static int set_start(struct lb_listing *l, const char *key, size_t key_len, bool with_nul)
{
    char *start = malloc(key_len + 2);

    if (!start)
        return -ENOMEM;
    memcpy(start, key, key_len);
    start[key_len] = '\0';
    start[key_len + 1] = '\0';
    free(l->start);
    l->start = start;
    l->start_len = key_len + (with_nul ? 1 : 0);
    return 0;
}

int lb_listing_begin(struct lb_listing *l, const char *key, size_t key_len, const char *range_end,
                     size_t range_end_len)
{
    lb_listing_clear(l);
    l->range_end = range_end;
    l->range_end_len = range_end_len;
    l->limit = l->page_size;
    l->keys_only = false;
    l->revision = 0;
    l->cluster_id = 0;
    l->pages = l->retries = 0;
    return set_start(l, key, key_len, false);
}

int lb_listing_request(struct lb_listing *l, char **body)
{
    if (l->keys_only)
        return lb_etcd_json_range_keys_request(l->start, l->start_len, l->range_end,
                                               l->range_end_len, l->revision, 1, body);
    return lb_etcd_json_range_request(l->start, l->start_len, l->range_end, l->range_end_len,
                                      l->revision, l->limit, body);
}

int lb_listing_too_large(struct lb_listing *l)
{
    if (l->keys_only)
        return -E2BIG;
    l->retries++;
    if (l->limit > 1)
        l->limit = l->limit / 4 > 1 ? l->limit / 4 : 1;
    else
        l->keys_only = true; /* one value alone passes the bound: read its key only */
    return 0;
}

static int reserve(struct lb_listing *l, size_t more)
{
    size_t cap = l->staged_cap ? l->staged_cap : 256;
    struct lb_etcd_kv *s;

    if (l->n_staged + more <= l->staged_cap)
        return 0;
    while (cap < l->n_staged + more)
        cap *= 2;
    s = realloc(l->staged, cap * sizeof(*s));
    if (!s)
        return -ENOMEM;
    l->staged = s;
    l->staged_cap = cap;
    return 0;
}

/* Drops the value of a kv that is staged past the listing's byte budget. */
static int drop_value(struct lb_etcd_kv *kv, const char *why)
{
    char *empty = strdup("");

    if (!empty)
        return -ENOMEM;
    free(kv->value);
    kv->value = empty;
    kv->value_size = kv->value_len;
    kv->value_len = 0;
    kv->flaw = LB_ETCD_FLAW_VALUE_TOO_LARGE;
    kv->flaw_why = why;
    kv->key_whole = true;
    return 0;
}

/* Moves the usable entries of a page into the staging area (the page keeps nothing to free). */
static int stage(struct lb_listing *l, struct lb_etcd_range *page)
{
    int rc = reserve(l, page->n_kvs);

    for (size_t i = 0; i < page->n_kvs && !rc; i++) {
        struct lb_etcd_kv *kv = &page->kvs[i];

        if (l->keys_only && kv->flaw == LB_ETCD_FLAW_NONE) {
            /* asked without its value because the value alone was too large */
            kv->flaw = LB_ETCD_FLAW_VALUE_TOO_LARGE;
            kv->flaw_why = "the value alone is larger than an etcd answer lbd reads (64 MiB)";
            kv->key_whole = true;
        }
        if (!lb_mirror_screen(l->mirror, kv))
            continue; /* skipped and counted there */
        if (l->n_staged >= l->keys_max) {
            lb_mirror_skip(l->mirror, LB_SKIP_TOO_MANY_KEYS, kv->key, kv->key_len, kv->key_size,
                           "a listing stages at most as many keys as lbd tracks");
            continue;
        }
        if (l->staged_bytes + kv->key_len + kv->value_len > l->bytes_max)
            rc = drop_value(kv, "the listing holds more than 512 MiB of values; this one was "
                                "not kept");
        if (rc)
            break;
        l->staged_bytes += kv->key_len + kv->value_len;
        l->staged[l->n_staged++] = *kv;
        memset(kv, 0, sizeof(*kv));
    }
    return rc;
}

int lb_listing_page(struct lb_listing *l, const char *body, size_t len, char **err)
{
    struct lb_etcd_range page;
    char *last = NULL;
    size_t last_len = 0;
    int rc;

    rc = lb_etcd_json_parse_range_page(body, len, LB_VALUE_MAX, &page, &last, &last_len, err);
    if (rc)
        return rc;
    l->pages++;
    if (l->pages == 1) {
        l->revision = page.header.revision;
        l->cluster_id = page.header.cluster_id;
    }
    rc = stage(l, &page);
    if (rc) {
        lb_error_set(err, rc, "out of memory staging the listing");
        goto out;
    }
    if (!page.more) {
        rc = 0;
        goto out;
    }
    if (!last) {
        rc = lb_error_set(err, -EINVAL, "etcd said the range has more keys but sent none");
        goto out;
    }
    rc = set_start(l, last, last_len, true);
    if (rc) {
        lb_error_set(err, rc, "out of memory staging the listing");
        goto out;
    }
    /* fewer keys asked only while needed: grow back after a page well under the bound */
    l->keys_only = false;
    if (len < LB_LISTING_RESPONSE_MAX / 4)
        l->limit = l->limit * 2 < l->page_size ? l->limit * 2 : l->page_size;
    rc = 1;
out:
    free(last);
    lb_etcd_range_free(&page);
    return rc;
}

int lb_listing_apply(struct lb_listing *l)
{
    int updates = 0, rc = 0;

    lb_mirror_relist_begin(l->mirror);
    for (size_t i = 0; i < l->n_staged; i++) {
        rc = lb_mirror_put_kv(l->mirror, &l->staged[i]);
        if (rc < 0)
            break;
        updates += rc;
    }
    if (rc >= 0)
        updates += lb_mirror_relist_end(l->mirror);
    lb_listing_clear(l);
    return rc < 0 ? rc : updates;
}
