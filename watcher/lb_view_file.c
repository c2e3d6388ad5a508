/*
 * A view of etcd as one value, and its file (lb_view_file.h).  The writer
 * appends to a bounded buffer as keys come; the reader parses the whole
 * file once with json-c and takes nothing unless all of it is right.
 */
#include "lb_view_file.h"
#include "lb_error.h"
#include "lb_etcd_json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(LB_VIEW_PREFIX_MAX == LB_PREFIX_MAX, "a view holds any --prefix");

/* ---- writing ---------------------------------------------------------- */

static void put_base64(struct lb_view_file_writer *w, const char *bytes, size_t len)
{
    char *text = NULL;

    if (w->rc == 0)
        w->rc = lb_etcd_base64_encode(bytes, len, &text);
    /* Not through printf: a value's text may be longer than one printf takes. */
    if (w->rc == 0)
        w->rc = lb_buf_append(w->out, "\"", 1);
    if (w->rc == 0)
        w->rc = lb_buf_append(w->out, text, strlen(text));
    if (w->rc == 0)
        w->rc = lb_buf_append(w->out, "\"", 1);
    free(text);
}

void lb_view_file_begin(struct lb_view_file_writer *w, struct lb_buf *out)
{
    w->out = out;
    w->n = 0;
    w->rc = lb_buf_printf(out, "%s", LB_VIEW_FILE_MAGIC);
}

void lb_view_file_add(struct lb_view_file_writer *w, const struct lb_watcher_kv *kv)
{
    if (w->rc == 0)
        w->rc = lb_buf_printf(w->out, "%s\n{\"key\":", w->n ? "," : "");
    put_base64(w, kv->key, kv->key_len);
    if (w->rc == 0)
        w->rc = lb_buf_printf(w->out, ",\"value\":");
    put_base64(w, kv->value, kv->value_len);
    if (w->rc == 0)
        w->rc = lb_buf_printf(w->out, ",\"mod_revision\":\"%" PRId64 "\"}", kv->mod_revision);
    w->n++;
}

int lb_view_file_end(struct lb_view_file_writer *w, const struct lb_watcher_view *view,
                     int64_t written_ms)
{
    json_object *prefix = NULL;
    const char *text;
    int rc = w->rc;

    if (rc == 0)
        rc = lb_buf_printf(w->out,
                           "],\n\"count\":\"%zu\",\"header\":{\"cluster_id\":\"%" PRIu64
                           "\",\"revision\":\"%" PRId64 "\"},\n\"lbd\":{\"format\":%d,\"prefix\":",
                           w->n, view->cluster_id, view->revision, LB_VIEW_FILE_FORMAT);
    if (rc == 0) {
        /* The prefix is operator text: json-c escapes it (appended: it may be long). */
        prefix = json_object_new_string(view->prefix);
        text = prefix ? json_object_to_json_string_ext(prefix, JSON_C_TO_STRING_PLAIN |
                                                                   JSON_C_TO_STRING_NOSLASHESCAPE)
                      : NULL;
        rc = text ? lb_buf_append(w->out, text, strlen(text)) : -ENOMEM;
        json_object_put(prefix);
    }
    if (rc == 0)
        rc = lb_buf_printf(w->out,
                           ",\"written_ms\":\"%" PRId64 "\",\"stale_ms\":\"%" PRId64 "\"}}\n",
                           written_ms, view->stale_ms > 0 ? view->stale_ms : 0);
    if (rc < 0)
        lb_buf_reset(w->out);
    return rc;
}

/* ---- reading ---------------------------------------------------------- */

static int read_meta(json_object *root, struct lb_saved_view *out, char **err)
{
    json_object *meta, *v;
    char normal[LB_PREFIX_MAX];
    int64_t format = 0;
    char *why = NULL;

    if (!json_object_object_get_ex(root, "lbd", &meta) ||
        !json_object_is_type(meta, json_type_object))
        return lb_error_set(err, -EINVAL, "not an lbd state file (no \"lbd\" object)");
    if (lb_etcd_json_get_int64(meta, "format", &format) < 0 || format != LB_VIEW_FILE_FORMAT)
        return lb_error_set(err, -EINVAL,
                            "of another format (%" PRId64 "; this lbd reads format %d)", format,
                            LB_VIEW_FILE_FORMAT);
    if (!json_object_object_get_ex(meta, "prefix", &v) || !json_object_is_type(v, json_type_string))
        return lb_error_set(err, -EINVAL, "names no key prefix");
    if (lb_key_prefix_normalize(json_object_get_string(v), normal, &why) < 0 ||
        strcmp(normal, json_object_get_string(v)) != 0) {
        free(why);
        return lb_error_set(err, -EINVAL, "names a key prefix lbd would not write");
    }
    memcpy(out->prefix, normal, sizeof(normal));
    out->view.prefix = out->prefix;
    if (lb_etcd_json_get_int64(meta, "written_ms", &out->written_ms) < 0 || out->written_ms <= 0 ||
        lb_etcd_json_get_int64(meta, "stale_ms", &out->view.stale_ms) < 0 || out->view.stale_ms < 0)
        return lb_error_set(err, -EINVAL, "has a bad written_ms or stale_ms");
    return 0;
}

static int read_keys(json_object *root, struct lb_saved_view *out, char **err)
{
    size_t plen = strlen(out->prefix), n;
    json_object *kvs, *count_obj;
    int64_t count = -1;
    int rc = 0;

    if (!json_object_object_get_ex(root, "kvs", &kvs))
        kvs = NULL;
    if (kvs && !json_object_is_type(kvs, json_type_array))
        return lb_error_set(err, -EINVAL, "\"kvs\" is not an array");
    n = kvs ? json_object_array_length(kvs) : 0;
    if (!json_object_object_get_ex(root, "count", &count_obj) ||
        lb_etcd_json_get_int64(root, "count", &count) < 0 || count < 0 || (uint64_t)count != n)
        return lb_error_set(err, -EINVAL, "is not whole: %zu keys where it announces %" PRId64, n,
                            count);
    out->keys = calloc(n ? n : 1, sizeof(*out->keys));
    if (!out->keys)
        return -ENOMEM;
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct lb_etcd_kv kv;
        char *why = NULL;

        rc = lb_etcd_json_parse_kv(json_object_array_get_idx(kvs, i), &kv, &why);
        if (rc < 0) {
            rc = lb_error_set(err, rc == -ENOMEM ? -ENOMEM : -EINVAL, "key %zu: %s", i + 1,
                              why ? why : "unreadable");
            free(why);
            break;
        }
        if (kv.key_len < plen || memcmp(kv.key, out->prefix, plen) != 0)
            rc = lb_error_set(err, -EINVAL, "key %zu is outside the prefix %s", i + 1, out->prefix);
        else
            rc = lb_saved_view_add(out, n,
                                   &(struct lb_watcher_kv){kv.key, kv.key_len, kv.value,
                                                           kv.value_len, kv.mod_revision});
        lb_etcd_kv_free(&kv);
    }
    return rc;
}

int lb_view_file_decode(const char *text, size_t len, struct lb_saved_view *out, char **err)
{
    struct lb_etcd_header header;
    json_object *root = NULL, *h;
    int rc;

    memset(out, 0, sizeof(*out));
    if (len > LB_VIEW_FILE_MAX)
        return lb_error_set(err, -E2BIG, "larger than %zu MiB", LB_VIEW_FILE_MAX >> 20);
    rc = lb_etcd_json_parse(text, len, &root, err);
    if (rc < 0)
        return rc;
    if (!json_object_is_type(root, json_type_object)) {
        rc = lb_error_set(err, -EINVAL, "not a JSON object");
        goto out;
    }
    rc = read_meta(root, out, err);
    if (rc == 0)
        rc = lb_etcd_json_parse_header(json_object_object_get_ex(root, "header", &h) ? h : NULL,
                                       &header, err);
    if (rc == 0 && header.revision <= 0)
        rc = lb_error_set(err, -EINVAL, "has no revision");
    if (rc == 0) {
        out->view.revision = header.revision;
        out->view.cluster_id = header.cluster_id;
        rc = read_keys(root, out, err);
    }
out:
    json_object_put(root);
    if (rc < 0) {
        lb_saved_view_free(out);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}
