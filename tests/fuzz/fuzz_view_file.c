/*
 * Fuzzes the state file reader (lb_view_file.h) with files that may be
 * anything: a disk that filled up, an editor, another program's JSON.
 *
 * The reader must take the file whole or refuse it with a sentence and
 * nothing kept.  What it takes must write back as a file that reads as
 * the same view, key by key and byte for byte.
 *
 * Seeds (corpus/fuzz_view_file/): a file of three keys as lbd writes it,
 * an empty view, and one with a value of raw bytes.
 */
#include "lb_view_file.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same_view(const struct lb_saved_view *a, const struct lb_saved_view *b)
{
    if (a->view.revision != b->view.revision || a->view.cluster_id != b->view.cluster_id ||
        a->view.stale_ms != b->view.stale_ms || strcmp(a->prefix, b->prefix) != 0 ||
        a->written_ms != b->written_ms || a->n_keys != b->n_keys)
        abort();
    for (size_t i = 0; i < a->n_keys; i++) {
        const struct lb_watcher_kv *x = &a->keys[i], *y = &b->keys[i];

        if (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0 ||
            x->value_len != y->value_len || memcmp(x->value, y->value, x->value_len) != 0 ||
            x->mod_revision != y->mod_revision)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lb_saved_view v, again;
    struct lb_view_file_writer w;
    struct lb_buf b;
    char *err = NULL;

    if (lb_view_file_decode((const char *)data, size, &v, &err) < 0) {
        if (!err || v.keys || v.n_keys)
            abort();
        free(err);
        return 0;
    }
    if (err)
        abort();
    lb_buf_init(&b, LB_VIEW_FILE_MAX);
    lb_view_file_begin(&w, &b);
    for (size_t i = 0; i < v.n_keys; i++)
        lb_view_file_add(&w, &v.keys[i]);
    if (lb_view_file_end(&w, &v.view, v.written_ms) < 0 ||
        lb_view_file_decode(b.data, b.len, &again, &err) < 0)
        abort();
    same_view(&v, &again);
    lb_saved_view_free(&again);
    lb_saved_view_free(&v);
    lb_buf_free(&b);
    return 0;
}
