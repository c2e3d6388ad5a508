/*
 * lbd's state file (--state-file): a view of etcd (struct lb_saved_view,
 * lb_update.h) kept on disk, so that an lbd restarted while etcd is out of
 * reach serves the pools it last knew, as an upgrade hands the view over.
 *
 * The file is an etcd range response, as the v3 JSON gateway writes it
 * (keys and values in base64, numbers as strings), so jq and etcd's
 * own tooling read it, with one more member naming what it is:
 *
 *   {"kvs":[{"key":"L2xiL3Bvb2xz...","value":"eyJhZGRyIjo...","mod_revision":"7"},...],
 *    "count":"2","header":{"cluster_id":"1455...","revision":"9"},
 *    "lbd":{"format":1,"prefix":"/lb/","written_ms":"1764550000000","stale_ms":"0"}}
 *
 * Decoding is strict: a file that is not whole and of this format gives
 * nothing (with a sentence), never part of a view.
 */
#ifndef LB_VIEW_FILE_H
#define LB_VIEW_FILE_H

#include "lb_buf.h"
#include "lb_key.h"
#include "lb_update.h"

#include <stddef.h>
#include <stdint.h>

#define LB_VIEW_FILE_FORMAT 1
/* Every state file lbd writes starts with these bytes (a file that does not
 * was not written by lbd, and lbd does not replace it). */
#define LB_VIEW_FILE_MAGIC "{\"kvs\":["
/* Largest state file read or written. */
#define LB_VIEW_FILE_MAX ((size_t)256 << 20)

/*
 * Writes the file of a view into `out`: begin, add for each key (as
 * lb_watcher_export() hands them out), then end with the view.  The first
 * failure sticks; end returns it (-E2BIG past `out`'s bound, -ENOMEM) and
 * then leaves `out` empty, or 0 with the whole file in `out`.
 */
struct lb_view_file_writer {
    struct lb_buf *out;
    size_t n;
    int rc;
};
void lb_view_file_begin(struct lb_view_file_writer *w, struct lb_buf *out);
void lb_view_file_add(struct lb_view_file_writer *w, const struct lb_watcher_kv *kv);
int lb_view_file_end(struct lb_view_file_writer *w, const struct lb_watcher_view *view,
                     int64_t written_ms);

/*
 * Reads a file's bytes into *out: 0, or -EINVAL with *err a sentence
 * (not JSON, another format, not whole, a key outside its prefix, ...),
 * -E2BIG above LB_VIEW_FILE_MAX, -ENOMEM.  On failure *out holds nothing.
 */
int lb_view_file_decode(const char *text, size_t len, struct lb_saved_view *out, char **err);

#endif
