/*
 * One listing of `<prefix>pools/`, page by page: what to ask etcd for next,
 * what to keep of each answer, and the staged result, applied to the
 * mirror in one batch once the last page is in.  No I/O: the watcher sends
 * the requests this builds and hands back the answers; the tests do the
 * same with recorded pages.
 *
 * No key and no value may stop a listing.  Pages are ranges with `limit`
 * at one revision, each continuing just after the last key of the one
 * before (that key is read whole, however long, only for this).  Of each
 * answer only schema keys are kept, values only up to LB_VALUE_MAX (the
 * largest lbd parses); the rest is skipped and counted by the mirror.
 * etcd still sends the values it holds, so an answer may pass the bound
 * lbd puts on one response (LB_LISTING_RESPONSE_MAX) because of a few huge
 * values (up to etcd's --max-request-bytes each, 1.5 MiB by default): the
 * same page is then asked again for a quarter of the keys, down to one,
 * and when one key's value alone passes the bound, for that key without
 * its value ("keys_only"), which is skipped as too large.  The limit grows
 * back after pages that came in well under the bound.  This pages around
 * the bad entries rather than listing keys first and fetching values
 * after: the common listing stays one request per page, and only the rare
 * huge value costs extra requests.
 *
 * Bounds: at most LB_MIRROR_MAX_KEYS entries and LB_LISTING_BYTES_MAX
 * bytes of keys and values are staged; past them entries are skipped
 * (too_many_keys) or staged without their value (value_too_large), so the
 * listing still completes.
 */
#ifndef LB_LISTING_H
#define LB_LISTING_H

#include "lb_etcd_json.h"
#include "lb_mirror.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest range answer read (the watcher's bound on the response body). */
#define LB_LISTING_RESPONSE_MAX (64 * 1024 * 1024)
/* Most key and value bytes one listing stages. */
#define LB_LISTING_BYTES_MAX ((size_t)512 * 1024 * 1024)

struct lb_listing {
    struct lb_mirror *mirror; /* screens entries and counts those skipped */
    const char *range_end;    /* not owned: outlives the listing */
    size_t range_end_len;
    int64_t page_size; /* keys per page when nothing is too large */
    int64_t limit;     /* keys the next page asks for */
    bool keys_only;    /* the next page is one key, without its value */
    char *start;       /* first key of the next page (malloc'd) */
    size_t start_len;
    int64_t revision; /* of the listing: the first page's header.revision */
    uint64_t cluster_id;
    size_t pages;     /* answers read */
    size_t retries;   /* pages asked again for being too large */
    size_t keys_max;  /* LB_MIRROR_MAX_KEYS; smaller in tests */
    size_t bytes_max; /* LB_LISTING_BYTES_MAX; smaller in tests */
    struct lb_etcd_kv *staged;
    size_t n_staged, staged_cap, staged_bytes;
};

/* An empty listing; page_size >= 1.  Nothing to free until lb_listing_begin(). */
void lb_listing_init(struct lb_listing *l, struct lb_mirror *mirror, int64_t page_size);

/*
 * Starts a listing of [key, range_end): forgets anything staged.  The
 * range_end bytes must outlive the listing.  Returns 0 or -ENOMEM.
 */
int lb_listing_begin(struct lb_listing *l, const char *key, size_t key_len, const char *range_end,
                     size_t range_end_len);

/* The JSON body of the next range request (malloc'd in *body); 0 or -ENOMEM. */
int lb_listing_request(struct lb_listing *l, char **body);

/*
 * The answer to the last request passed LB_LISTING_RESPONSE_MAX: the next
 * request asks for fewer keys, or for one key without its value.  Returns
 * 0, or -E2BIG when the last request already was that (nothing smaller
 * can be asked).
 */
int lb_listing_too_large(struct lb_listing *l);

/*
 * An answer to the last request.  Stages what it holds (skipping, through
 * the mirror, what cannot be used) and moves on.  Returns 1 when more
 * pages are due (call lb_listing_request() again), 0 when the listing is
 * complete, or -EINVAL with *err when the answer is not a range response
 * (or the listing cannot continue after it), -ENOMEM.
 */
int lb_listing_page(struct lb_listing *l, const char *body, size_t len, char **err);

/*
 * Applies a complete listing: every staged entry is put into the mirror as
 * one re-list (lb_mirror_relist_begin/put/end), so keys no longer listed
 * are deleted.  Returns the updates delivered, or -ENOMEM (what was
 * delivered stays; list again).  The staged entries are freed.
 */
int lb_listing_apply(struct lb_listing *l);

/* Frees everything staged; the listing may begin again. */
void lb_listing_clear(struct lb_listing *l);

#endif
