/*
 * etcd gateway JSON: base64 through OpenSSL, int64-as-string, and the
 * request/response bodies the watcher and lbctl register use.  Readers are
 * strict about types (a "revision" that is an object is an error, not 0) and
 * lenient about presence (etcd omits zero values, so absent means 0).
 *
 * Two ways to read a kv.  The strict one (lb_etcd_json_parse_kv) fails on
 * anything unexpected; lbctl register reads its own key with it.  The
 * lenient one (lb_etcd_json_read_kv) is for what anyone may have written
 * under the watched prefix: it flags what it cannot use and goes on, and
 * sizes a key or value from its base64 text before decoding anything, so
 * a 1.5 MiB value costs no copy at all.
 */
#include "lb_etcd_json.h"
#include "lb_error.h"

#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#define STRINGIFY_(x) #x
#define STRINGIFY(x)  STRINGIFY_(x)

int lb_etcd_base64_encode(const void *data, size_t len, char **out)
{
    size_t out_len;
    char *s;

    *out = NULL;
    if (len > (size_t)INT_MAX / 2)
        return -E2BIG;
    out_len = 4 * ((len + 2) / 3);
    s = malloc(out_len + 1);
    if (!s)
        return -ENOMEM;
    EVP_EncodeBlock((unsigned char *)s, data, (int)len);
    s[out_len] = '\0';
    *out = s;
    return 0;
}

static bool is_base64_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/*
 * The size `text` decodes to, when it is canonical padded base64 (only the
 * alphabet, '=' only as the last one or two characters, a whole number of
 * quads); -EINVAL otherwise.  EVP_DecodeBlock() skips white space and
 * ignores padding in its length, so this check comes first.
 */
static int base64_decoded_size(const char *text, size_t text_len, size_t *out)
{
    size_t pad = 0;

    if (text_len % 4 != 0 || text_len > (size_t)INT_MAX)
        return -EINVAL;
    if (text_len >= 1 && text[text_len - 1] == '=')
        pad++;
    if (text_len >= 2 && text[text_len - 2] == '=')
        pad++;
    if (pad == 1 && text_len >= 2 && text[text_len - 2] == '=')
        return -EINVAL;
    for (size_t i = 0; i < text_len - pad; i++)
        if (!is_base64_char((unsigned char)text[i]))
            return -EINVAL;
    *out = text_len / 4 * 3 - pad;
    return 0;
}

int lb_etcd_base64_decode(const char *text, size_t text_len, size_t max, char **out,
                          size_t *out_len)
{
    size_t decoded_len;
    unsigned char *buf;
    int n;

    *out = NULL;
    *out_len = 0;
    if (base64_decoded_size(text, text_len, &decoded_len) < 0)
        return -EINVAL;
    if (decoded_len > max)
        return -E2BIG;
    buf = malloc(text_len / 4 * 3 + 1);
    if (!buf)
        return -ENOMEM;
    n = text_len ? EVP_DecodeBlock(buf, (const unsigned char *)text, (int)text_len) : 0;
    if (n < 0 || (size_t)n != text_len / 4 * 3) {
        free(buf);
        return -EINVAL;
    }
    buf[decoded_len] = '\0';
    *out = (char *)buf;
    *out_len = decoded_len;
    return 0;
}

size_t lb_etcd_prefix_end(const char *prefix, size_t len, char *buf)
{
    for (size_t i = len; i > 0; i--) {
        unsigned char c = (unsigned char)prefix[i - 1];

        if (c < 0xff) {
            memcpy(buf, prefix, i - 1);
            buf[i - 1] = (char)(c + 1);
            buf[i] = '\0';
            return i;
        }
    }
    buf[0] = '\0';
    return 1; /* one NUL byte: "to the end of the keyspace" */
}

void lb_etcd_kv_free(struct lb_etcd_kv *kv)
{
    free(kv->key);
    free(kv->value);
    memset(kv, 0, sizeof(*kv));
}

static int parse_int64_text(const char *s, size_t len, int64_t *out)
{
    char *end;
    long long v;

    if (len == 0 || len > 20 || strlen(s) != len)
        return -EINVAL;
    if (!((s[0] >= '0' && s[0] <= '9') || (s[0] == '-' && len > 1)))
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

int lb_etcd_json_get_int64(json_object *parent, const char *name, int64_t *out)
{
    json_object *v;

    *out = 0;
    if (!parent || !json_object_object_get_ex(parent, name, &v) || !v)
        return 0;
    if (json_object_is_type(v, json_type_string))
        return parse_int64_text(json_object_get_string(v), (size_t)json_object_get_string_len(v),
                                out);
    if (json_object_is_type(v, json_type_int)) {
        errno = 0;
        *out = json_object_get_int64(v);
        if (errno || *out == INT64_MAX) /* json-c saturates what does not fit */
            return -EINVAL;
        return 0;
    }
    return -EINVAL;
}

int lb_etcd_json_parse_header(json_object *header, struct lb_etcd_header *out, char **err)
{
    json_object *v;
    int64_t revision;

    memset(out, 0, sizeof(*out));
    if (!header)
        return 0;
    if (!json_object_is_type(header, json_type_object))
        return lb_error_set(err, -EINVAL, "\"header\" is not an object");
    if (lb_etcd_json_get_int64(header, "revision", &revision) < 0 || revision < 0)
        return lb_error_set(err, -EINVAL, "header.revision is not a revision number");
    out->revision = revision;
    if (json_object_object_get_ex(header, "cluster_id", &v) &&
        json_object_is_type(v, json_type_string)) {
        char *end;

        errno = 0;
        out->cluster_id = strtoull(json_object_get_string(v), &end, 10);
        if (errno || *end)
            return lb_error_set(err, -EINVAL, "header.cluster_id is not a number");
    }
    return 0;
}

/* Decodes the base64 member `name` of obj; absent means empty. */
static int get_bytes(json_object *obj, const char *name, size_t max, char **out, size_t *out_len,
                     bool *present, char **err)
{
    json_object *v;
    int rc;

    *present = false;
    if (!json_object_object_get_ex(obj, name, &v) || !v) {
        *out = strdup("");
        *out_len = 0;
        return *out ? 0 : -ENOMEM;
    }
    if (!json_object_is_type(v, json_type_string))
        return lb_error_set(err, -EINVAL, "\"%s\" is not a string", name);
    *present = true;
    rc = lb_etcd_base64_decode(json_object_get_string(v), (size_t)json_object_get_string_len(v),
                               max, out, out_len);
    if (rc == -EINVAL)
        return lb_error_set(err, rc, "\"%s\" is not valid base64", name);
    if (rc == -E2BIG)
        return lb_error_set(err, rc, "\"%s\" is larger than %zu bytes", name, max);
    return rc;
}

int lb_etcd_json_parse_kv(json_object *obj, struct lb_etcd_kv *out, char **err)
{
    bool present;
    int rc;

    memset(out, 0, sizeof(*out));
    if (!obj || !json_object_is_type(obj, json_type_object))
        return lb_error_set(err, -EINVAL, "a kv is not an object");
    rc = get_bytes(obj, "key", LB_ETCD_KEY_MAX, &out->key, &out->key_len, &present, err);
    if (rc == 0 && !present)
        rc = lb_error_set(err, -EINVAL, "a kv has no key");
    if (rc == 0)
        rc =
            get_bytes(obj, "value", LB_ETCD_VALUE_MAX, &out->value, &out->value_len, &present, err);
    if (rc == 0 && (lb_etcd_json_get_int64(obj, "create_revision", &out->create_revision) < 0 ||
                    lb_etcd_json_get_int64(obj, "mod_revision", &out->mod_revision) < 0 ||
                    lb_etcd_json_get_int64(obj, "version", &out->version) < 0 ||
                    lb_etcd_json_get_int64(obj, "lease", &out->lease) < 0))
        rc = lb_error_set(err, -EINVAL,
                          "a kv has a revision, version or lease that is not a number");
    if (rc == -ENOMEM)
        lb_error_set(err, rc, "out of memory decoding a kv");
    if (rc)
        lb_etcd_kv_free(out);
    return rc;
}

/* Marks *out flawed; its key stays as it is (set key_whole for a key that is). */
static void set_flaw(struct lb_etcd_kv *out, enum lb_etcd_flaw flaw, const char *why)
{
    if (out->flaw == LB_ETCD_FLAW_NONE) {
        out->flaw = flaw;
        out->flaw_why = why;
    }
}

/* The first bytes of a key too long to keep, for the log: a whole number of quads. */
static int read_key_start(const char *text, size_t text_len, struct lb_etcd_kv *out)
{
    size_t take = (LB_ETCD_KEY_SHOWN + 2) / 3 * 4;
    size_t shown;

    if (take > text_len)
        take = text_len;
    if (take > 0 && text[take - 1] == '=')
        take = take >= 4 ? take - 4 : 0; /* a padded quad is the last one: keep it whole */
    free(out->key);
    out->key = NULL;
    if (take == 0 || lb_etcd_base64_decode(text, take, LB_ETCD_KEY_MAX, &out->key, &shown) < 0) {
        out->key = strdup("");
        shown = 0;
    }
    out->key_len = shown;
    return out->key ? 0 : -ENOMEM;
}

/*
 * The base64 text of kv member `name` ("key" or "value"): 1 with *text,
 * *len and the decoded *size; 0 when the member is absent (a flaw for the
 * key; an empty value is fine); -1 when it is not a base64 string (the kv
 * is flawed as malformed).
 */
static int kv_b64_member(json_object *obj, const char *name, struct lb_etcd_kv *out,
                         const char **text, size_t *len, size_t *size)
{
    bool is_key = strcmp(name, "key") == 0;
    json_object *m = NULL;

    if (!json_object_object_get_ex(obj, name, &m) || !m) {
        if (is_key)
            set_flaw(out, LB_ETCD_FLAW_MALFORMED, "a kv has no key, or one that is not a string");
        return 0;
    }
    if (!json_object_is_type(m, json_type_string)) {
        set_flaw(out, LB_ETCD_FLAW_MALFORMED,
                 is_key ? "a kv has no key, or one that is not a string"
                        : "the value is not a string");
        return -1;
    }
    *text = json_object_get_string(m);
    *len = (size_t)json_object_get_string_len(m);
    if (base64_decoded_size(*text, *len, size) < 0) {
        set_flaw(out, LB_ETCD_FLAW_MALFORMED,
                 is_key ? "the key is not valid base64" : "the value is not valid base64");
        return -1;
    }
    return 1;
}

int lb_etcd_json_read_kv(json_object *obj, size_t value_max, struct lb_etcd_kv *out)
{
    const char *text;
    size_t text_len, size;
    bool bad_numbers;

    memset(out, 0, sizeof(*out));
    out->flaw_why = "";
    out->key = strdup("");
    out->value = strdup("");
    if (!out->key || !out->value)
        goto nomem;
    if (!obj || !json_object_is_type(obj, json_type_object)) {
        set_flaw(out, LB_ETCD_FLAW_MALFORMED, "a kv is not an object");
        return 0;
    }
    /* the revisions first: even a kv skipped for its key moves the watch past it */
    bad_numbers = lb_etcd_json_get_int64(obj, "create_revision", &out->create_revision) < 0 ||
                  lb_etcd_json_get_int64(obj, "mod_revision", &out->mod_revision) < 0 ||
                  lb_etcd_json_get_int64(obj, "version", &out->version) < 0 ||
                  lb_etcd_json_get_int64(obj, "lease", &out->lease) < 0;
    if (kv_b64_member(obj, "key", out, &text, &text_len, &size) <= 0)
        return 0; /* flawed, and a kv without a key is flawed */
    out->key_size = size;
    if (size > LB_ETCD_KEY_MAX) {
        set_flaw(out, LB_ETCD_FLAW_KEY_TOO_LONG,
                 "the key is longer than " STRINGIFY(LB_ETCD_KEY_MAX) " bytes");
        if (read_key_start(text, text_len, out) < 0)
            goto nomem;
        return 0;
    }
    free(out->key);
    out->key = NULL;
    if (lb_etcd_base64_decode(text, text_len, LB_ETCD_KEY_MAX, &out->key, &out->key_len) < 0)
        goto nomem; /* checked above: only memory can fail here */
    out->key_whole = true;
    if (bad_numbers) {
        set_flaw(out, LB_ETCD_FLAW_MALFORMED,
                 "a revision, version or lease of the kv is not a number");
        return 0;
    }
    if (kv_b64_member(obj, "value", out, &text, &text_len, &size) <= 0)
        return 0; /* flawed, or an empty value */
    out->value_size = size;
    if (size > value_max) {
        set_flaw(out, LB_ETCD_FLAW_VALUE_TOO_LARGE, "the value is larger than lbd reads");
        return 0;
    }
    free(out->value);
    out->value = NULL;
    if (lb_etcd_base64_decode(text, text_len, value_max, &out->value, &out->value_len) < 0)
        goto nomem;
    return 0;
nomem:
    lb_etcd_kv_free(out);
    return -ENOMEM;
}

int lb_etcd_json_parse(const char *text, size_t len, json_object **out, char **err)
{
    struct json_tokener *tok;
    json_object *obj = NULL;
    enum json_tokener_error jerr;
    size_t end;
    int rc = 0;

    *out = NULL;
    if (len > (size_t)INT_MAX)
        return lb_error_set(err, -E2BIG, "JSON text larger than 2 GiB");
    tok = json_tokener_new_ex(LB_ETCD_JSON_DEPTH);
    if (!tok)
        return lb_error_set(err, -ENOMEM, "out of memory");
    obj = json_tokener_parse_ex(tok, text, (int)len);
    jerr = json_tokener_get_error(tok);
    end = json_tokener_get_parse_end(tok);
    if (jerr == json_tokener_continue) {
        /* A bare word at the end ("null", "true", "12") waits for more: a NUL
         * says the text is over. */
        obj = json_tokener_parse_ex(tok, "", 1);
        jerr = json_tokener_get_error(tok);
        end = len;
    }
    if (jerr == json_tokener_continue) {
        rc = lb_error_set(err, -EINVAL, "not JSON (the text ends inside a value)");
        goto out;
    }
    if (jerr != json_tokener_success) {
        rc = lb_error_set(err, -EINVAL, "not JSON (%s at byte %zu)",
                          jerr == json_tokener_error_parse_null ||
                                  jerr == json_tokener_error_parse_boolean
                              ? "a word that is not null, true or false"
                              : json_tokener_error_desc(jerr),
                          end);
        goto out;
    }
    if (!obj) {
        rc = lb_error_set(err, -EINVAL, "null (a JSON object is expected)");
        goto out;
    }
    for (; end < len; end++) {
        char c = text[end];

        if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            rc = lb_error_set(err, -EINVAL, "not JSON (text after the end of the document)");
            goto out;
        }
    }
    *out = obj;
    obj = NULL;
out:
    json_object_put(obj);
    json_tokener_free(tok);
    return rc;
}

void lb_etcd_range_free(struct lb_etcd_range *r)
{
    for (size_t i = 0; i < r->n_kvs; i++)
        lb_etcd_kv_free(&r->kvs[i]);
    free(r->kvs);
    memset(r, 0, sizeof(*r));
}

/*
 * Reads a range response's envelope (header, count, more) into out and
 * finds its kvs array: *kvs is NULL when there are no keys, otherwise
 * out->kvs has room for *n entries.  *root is the parsed document (put it
 * when done).  Returns 0 or a negative errno with *err.
 */
static int range_open(const char *body, size_t len, struct lb_etcd_range *out, json_object **root,
                      json_object **kvs, size_t *n, char **err)
{
    json_object *header = NULL, *more;
    int rc;

    *root = NULL;
    *kvs = NULL;
    *n = 0;
    rc = lb_etcd_json_parse(body, len, root, err);
    if (rc)
        return rc;
    if (!json_object_is_type(*root, json_type_object))
        return lb_error_set(err, -EINVAL, "range response is not a JSON object");
    json_object_object_get_ex(*root, "header", &header);
    if (!header)
        return lb_error_set(err, -EINVAL, "range response has no header");
    rc = lb_etcd_json_parse_header(header, &out->header, err);
    if (rc)
        return rc;
    if (lb_etcd_json_get_int64(*root, "count", &out->count) < 0)
        return lb_error_set(err, -EINVAL, "range response count is not a number");
    if (json_object_object_get_ex(*root, "more", &more) && more) {
        if (!json_object_is_type(more, json_type_boolean))
            return lb_error_set(err, -EINVAL, "range response \"more\" is not a boolean");
        out->more = json_object_get_boolean(more);
    }
    if (!json_object_object_get_ex(*root, "kvs", kvs) || !*kvs) {
        *kvs = NULL;
        return 0; /* no keys in range */
    }
    if (!json_object_is_type(*kvs, json_type_array))
        return lb_error_set(err, -EINVAL, "range response \"kvs\" is not an array");
    *n = json_object_array_length(*kvs);
    out->kvs = calloc(*n ? *n : 1, sizeof(*out->kvs));
    if (!out->kvs)
        return lb_error_set(err, -ENOMEM, "out of memory reading a range response");
    return 0;
}

int lb_etcd_json_parse_range(const char *body, size_t len, struct lb_etcd_range *out, char **err)
{
    json_object *root = NULL, *kvs = NULL;
    size_t n;
    int rc;

    memset(out, 0, sizeof(*out));
    rc = range_open(body, len, out, &root, &kvs, &n, err);
    if (rc || !kvs)
        goto out;
    for (size_t i = 0; i < n; i++) {
        rc = lb_etcd_json_parse_kv(json_object_array_get_idx(kvs, i), &out->kvs[i], err);
        if (rc)
            goto out;
        out->n_kvs++;
    }
out:
    json_object_put(root);
    if (rc)
        lb_etcd_range_free(out);
    return rc;
}

/* The whole key of a range page's last kv, however long; -EINVAL when it cannot be read. */
static int read_last_key(json_object *kv, const struct lb_etcd_kv *read, char **out, size_t *len)
{
    json_object *k = NULL;

    *out = NULL;
    *len = 0;
    if (read->flaw == LB_ETCD_FLAW_NONE || read->key_whole) {
        *out = malloc(read->key_len + 1);
        if (!*out)
            return -ENOMEM;
        memcpy(*out, read->key, read->key_len + 1);
        *len = read->key_len;
        return 0;
    }
    if (read->flaw != LB_ETCD_FLAW_KEY_TOO_LONG || !json_object_object_get_ex(kv, "key", &k))
        return -EINVAL;
    /* bounded by the body it came in, itself bounded by the caller */
    return lb_etcd_base64_decode(json_object_get_string(k), (size_t)json_object_get_string_len(k),
                                 SIZE_MAX, out, len);
}

int lb_etcd_json_parse_range_page(const char *body, size_t len, size_t value_max,
                                  struct lb_etcd_range *out, char **last_key, size_t *last_key_len,
                                  char **err)
{
    json_object *root = NULL, *kvs = NULL, *last = NULL;
    size_t n;
    int rc;

    memset(out, 0, sizeof(*out));
    *last_key = NULL;
    *last_key_len = 0;
    rc = range_open(body, len, out, &root, &kvs, &n, err);
    if (rc || !kvs)
        goto out;
    for (size_t i = 0; i < n; i++) {
        last = json_object_array_get_idx(kvs, i);
        rc = lb_etcd_json_read_kv(last, value_max, &out->kvs[i]);
        if (rc) {
            lb_error_set(err, rc, "out of memory reading a range response");
            goto out;
        }
        out->n_kvs++;
    }
    if (n > 0) {
        rc = read_last_key(last, &out->kvs[n - 1], last_key, last_key_len);
        if (rc == -ENOMEM) {
            lb_error_set(err, rc, "out of memory reading a range response");
        } else if (rc < 0 && out->more) {
            lb_error_set(err, rc, "the last key of a range page cannot be read (%s)",
                         out->kvs[n - 1].flaw_why);
        } else {
            rc = 0;
        }
    }
out:
    json_object_put(root);
    if (rc) {
        lb_etcd_range_free(out);
        free(*last_key);
        *last_key = NULL;
        *last_key_len = 0;
    }
    return rc;
}

int lb_etcd_json_parse_error(const char *body, size_t len, int *grpc_code, char **message)
{
    json_object *root = NULL, *e, *m = NULL;
    char *ignored = NULL;
    int64_t code = 0;
    int rc = -EINVAL;

    *grpc_code = 0;
    *message = NULL;
    if (lb_etcd_json_parse(body, len, &root, &ignored) < 0)
        goto out;
    if (!json_object_is_type(root, json_type_object) ||
        !json_object_object_get_ex(root, "error", &e) || !e)
        goto out;
    if (json_object_is_type(e, json_type_object)) {
        /* streaming form: {"error":{"grpc_code":14,"http_code":503,"message":"..."}} */
        if (lb_etcd_json_get_int64(e, "grpc_code", &code) < 0)
            goto out;
        json_object_object_get_ex(e, "message", &m);
    } else {
        if (lb_etcd_json_get_int64(root, "code", &code) < 0)
            goto out;
        if (!json_object_object_get_ex(root, "message", &m) || !m)
            m = e;
    }
    *message = strdup(m && json_object_is_type(m, json_type_string) ? json_object_get_string(m)
                                                                    : "unknown error");
    if (!*message) {
        rc = -ENOMEM;
        goto out;
    }
    *grpc_code = (code >= 0 && code <= 16) ? (int)code : 2;
    rc = 0;
out:
    free(ignored);
    json_object_put(root);
    return rc;
}

int lb_etcd_json_finish(json_object *obj, char **out)
{
    const char *s;

    *out = NULL;
    if (!obj)
        return -ENOMEM;
    s = json_object_to_json_string_ext(obj,
                                       JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    *out = s ? strdup(s) : NULL;
    json_object_put(obj);
    return *out ? 0 : -ENOMEM;
}

int lb_etcd_json_add_bytes(json_object *obj, const char *name, const char *bytes, size_t len)
{
    char *b64;
    json_object *s;

    if (lb_etcd_base64_encode(bytes, len, &b64) < 0)
        return -ENOMEM;
    s = json_object_new_string(b64);
    free(b64);
    if (!s || json_object_object_add(obj, name, s) < 0) {
        json_object_put(s);
        return -ENOMEM;
    }
    return 0;
}

/* Adds name: "<v>" (int64 as a string, as etcd writes them). */
static int add_int64(json_object *obj, const char *name, int64_t v)
{
    char text[24];
    json_object *s;

    snprintf(text, sizeof(text), "%lld", (long long)v);
    s = json_object_new_string(text);
    if (!s || json_object_object_add(obj, name, s) < 0) {
        json_object_put(s);
        return -ENOMEM;
    }
    return 0;
}

static int add_bool(json_object *obj, const char *name)
{
    json_object *b = json_object_new_boolean(1);

    if (!b || json_object_object_add(obj, name, b) < 0) {
        json_object_put(b);
        return -ENOMEM;
    }
    return 0;
}

static int range_request(const char *key, size_t key_len, const char *range_end,
                         size_t range_end_len, int64_t revision, int64_t limit, bool keys_only,
                         char **out)
{
    json_object *req = json_object_new_object();
    int rc = req ? 0 : -ENOMEM;

    *out = NULL;
    if (!rc)
        rc = lb_etcd_json_add_bytes(req, "key", key, key_len);
    if (!rc && range_end)
        rc = lb_etcd_json_add_bytes(req, "range_end", range_end, range_end_len);
    if (!rc && revision > 0)
        rc = add_int64(req, "revision", revision);
    if (!rc && limit > 0)
        rc = add_int64(req, "limit", limit);
    if (!rc && keys_only)
        rc = add_bool(req, "keys_only");
    if (rc) {
        json_object_put(req);
        return rc;
    }
    return lb_etcd_json_finish(req, out);
}

int lb_etcd_json_range_request(const char *key, size_t key_len, const char *range_end,
                               size_t range_end_len, int64_t revision, int64_t limit, char **out)
{
    return range_request(key, key_len, range_end, range_end_len, revision, limit, false, out);
}

int lb_etcd_json_range_keys_request(const char *key, size_t key_len, const char *range_end,
                                    size_t range_end_len, int64_t revision, int64_t limit,
                                    char **out)
{
    return range_request(key, key_len, range_end, range_end_len, revision, limit, true, out);
}

int lb_etcd_json_put_request(const char *key, size_t key_len, const char *value, size_t value_len,
                             int64_t lease, char **out)
{
    json_object *req = json_object_new_object();
    int rc = req ? 0 : -ENOMEM;

    *out = NULL;
    if (!rc)
        rc = lb_etcd_json_add_bytes(req, "key", key, key_len);
    if (!rc)
        rc = lb_etcd_json_add_bytes(req, "value", value, value_len);
    if (!rc && lease)
        rc = add_int64(req, "lease", lease);
    if (rc) {
        json_object_put(req);
        return rc;
    }
    return lb_etcd_json_finish(req, out);
}

int lb_etcd_json_delete_request(const char *key, size_t key_len, char **out)
{
    json_object *req = json_object_new_object();
    int rc = req ? 0 : -ENOMEM;

    *out = NULL;
    if (!rc)
        rc = lb_etcd_json_add_bytes(req, "key", key, key_len);
    if (rc) {
        json_object_put(req);
        return rc;
    }
    return lb_etcd_json_finish(req, out);
}

int lb_etcd_json_watch_request(const char *key, size_t key_len, const char *range_end,
                               size_t range_end_len, int64_t start_revision, char **out)
{
    json_object *req = json_object_new_object(), *create = json_object_new_object();
    int rc = req && create ? 0 : -ENOMEM;

    *out = NULL;
    if (!rc)
        rc = lb_etcd_json_add_bytes(create, "key", key, key_len);
    if (!rc)
        rc = lb_etcd_json_add_bytes(create, "range_end", range_end, range_end_len);
    if (!rc && start_revision > 0)
        rc = add_int64(create, "start_revision", start_revision);
    if (!rc)
        rc = add_bool(create, "prev_kv");
    if (!rc)
        rc = add_bool(create, "progress_notify");
    if (!rc)
        rc = add_bool(create, "fragment");
    if (!rc) {
        rc = json_object_object_add(req, "create_request", create) < 0 ? -ENOMEM : 0;
        if (!rc)
            create = NULL;
    }
    json_object_put(create);
    if (rc) {
        json_object_put(req);
        return rc;
    }
    return lb_etcd_json_finish(req, out);
}
