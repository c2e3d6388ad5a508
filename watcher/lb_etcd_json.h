/*
 * The etcd v3 JSON gateway's wire format, as etcd 3.4 speaks it: keys and
 * values are standard base64, every int64 travels as a JSON string, and a
 * field equal to its zero value is simply absent (a PUT event has no
 * "type", an empty value has no "value", a kv without lease no "lease").
 *
 * This file holds the pure half of talking to etcd: building request bodies
 * and reading response bodies.  No I/O happens here, so the watcher (async,
 * on the loop), `lbctl register` (blocking, in its own process) and the
 * tests all share the same code.  Every function that reads outside input
 * takes its length and rejects anything it does not understand with a
 * sentence in *err (malloc'd; the caller frees it).
 */
#ifndef LB_ETCD_JSON_H
#define LB_ETCD_JSON_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Largest key, and largest value, decoded.  etcd itself takes keys and
 * values up to its request limit (--max-request-bytes, 1.5 MiB by
 * default), so larger ones do arrive: the strict readers refuse them, the
 * lenient ones (lb_etcd_json_read_kv()) flag them and go on.  No schema key
 * comes near LB_ETCD_KEY_MAX (a prefix of at most 511 bytes and two names
 * of at most 127).
 */
#define LB_ETCD_KEY_MAX   4096
#define LB_ETCD_VALUE_MAX (2 * 1024 * 1024)
/* Bytes of a key kept for a log line when the key itself is not kept. */
#define LB_ETCD_KEY_SHOWN 96

/* JSON nesting accepted from etcd and in values. */
#define LB_ETCD_JSON_DEPTH 32

/* Base64 (standard alphabet, padded), as etcd encodes bytes. */
/* Encodes len bytes into a malloc'd NUL-terminated string; -ENOMEM. */
int lb_etcd_base64_encode(const void *data, size_t len, char **out);
/* Adds name: base64(bytes) to a json-c object (a request body).  0 or -ENOMEM. */
int lb_etcd_json_add_bytes(json_object *obj, const char *name, const char *bytes, size_t len);
/*
 * Decodes `text` (text_len characters) into a malloc'd buffer, NUL-terminated
 * for convenience (the terminator is not counted in *out_len).  Returns 0,
 * -EINVAL for anything but canonical padded base64, -E2BIG when the decoded
 * size would pass `max`, or -ENOMEM.
 */
int lb_etcd_base64_decode(const char *text, size_t text_len, size_t max, char **out,
                          size_t *out_len);

/*
 * The range_end that makes [prefix, range_end) cover every key starting with
 * `prefix`: the prefix with its last byte below 0xff incremented and what
 * follows dropped; "\0" (the whole keyspace) when there is no such byte.
 * Writes into buf (size >= len + 1); returns the length of the result.
 */
size_t lb_etcd_prefix_end(const char *prefix, size_t len, char *buf);

/* Response header; fields absent in the JSON stay 0. */
struct lb_etcd_header {
    uint64_t cluster_id;
    int64_t revision;
};

/*
 * What is wrong with a kv the lenient reader kept anyway.  The strict
 * reader fails instead, so its kvs always have LB_ETCD_FLAW_NONE.
 */
enum lb_etcd_flaw {
    LB_ETCD_FLAW_NONE = 0,
    LB_ETCD_FLAW_KEY_TOO_LONG,    /* key above LB_ETCD_KEY_MAX: only its first bytes kept */
    LB_ETCD_FLAW_VALUE_TOO_LARGE, /* value above the reader's bound: not decoded */
    LB_ETCD_FLAW_MALFORMED,       /* something etcd would not write (see flaw_why) */
};

/* One key-value pair, decoded.  key and value are malloc'd and NUL-terminated. */
struct lb_etcd_kv {
    char *key;
    size_t key_len;
    char *value; /* "" when etcd omitted it (empty value, or a DELETE event) */
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease; /* 0 = none */
    /*
     * Lenient reader only.  With a flaw, value is "" and:
     *   key_whole  key is the entry's whole key (else: its first bytes, or "")
     *   key_size   the key's size in etcd (>= key_len)
     *   value_size the value's size in etcd, when known
     *   flaw_why   a static sentence for the log
     * Without a flaw every field above is the entry's, key_whole aside
     * (treat it as true).
     */
    enum lb_etcd_flaw flaw;
    bool key_whole;
    size_t key_size;
    size_t value_size;
    const char *flaw_why;
};

void lb_etcd_kv_free(struct lb_etcd_kv *kv);

/*
 * Reads an int64 the way etcd writes it: a JSON string of digits ("123",
 * "-1") or, as etcd also accepts on input, a JSON integer.  A missing
 * member leaves *out at 0 and succeeds.  Returns 0 or -EINVAL.
 */
int lb_etcd_json_get_int64(json_object *parent, const char *name, int64_t *out);

/* Fills *out from a "header" object (NULL is fine: all zero).  0 or -EINVAL. */
int lb_etcd_json_parse_header(json_object *header, struct lb_etcd_header *out, char **err);

/* Decodes one "kv" object.  On failure *out holds nothing to free. */
int lb_etcd_json_parse_kv(json_object *kv, struct lb_etcd_kv *out, char **err);

/*
 * The lenient reader, for listings and watch events: decodes one "kv"
 * object whose value may be at most value_max bytes, and never refuses
 * it: what it cannot use is flagged in out->flaw (a key too long keeps its
 * first LB_ETCD_KEY_SHOWN bytes for the log; a value too large is not
 * decoded; anything else etcd would not write is MALFORMED, keeping the
 * key when it decoded).  Returns 0, or -ENOMEM (then *out holds nothing to
 * free).  The caller frees *out with lb_etcd_kv_free().
 */
int lb_etcd_json_read_kv(json_object *kv, size_t value_max, struct lb_etcd_kv *out);

/*
 * Parses a JSON document of exactly `len` bytes (trailing whitespace
 * allowed), at most LB_ETCD_JSON_DEPTH deep.  Returns 0 with *out holding a
 * reference the caller puts, or -EINVAL with *err.
 */
int lb_etcd_json_parse(const char *text, size_t len, json_object **out, char **err);

/* POST /v3/kv/range response. */
struct lb_etcd_range {
    struct lb_etcd_header header;
    struct lb_etcd_kv *kvs;
    size_t n_kvs;
    bool more;     /* more keys than `limit` allowed */
    int64_t count; /* keys in the whole range */
};

/* Parses a range response body.  On failure *out holds nothing to free. */
int lb_etcd_json_parse_range(const char *body, size_t len, struct lb_etcd_range *out, char **err);

/*
 * Parses one page of a listing, leniently: each kv is read with
 * lb_etcd_json_read_kv() (values above value_max are flagged, not
 * decoded), so one bad entry never fails the page.  *last_key (malloc'd,
 * *last_key_len bytes, NULL when the page holds no kv) is the whole key of
 * the page's last entry, however long, to continue the listing after it.
 * Fails (-EINVAL with *err) only when the body is not a range response or
 * that last key cannot be read, since the listing could not go on; -ENOMEM.
 */
int lb_etcd_json_parse_range_page(const char *body, size_t len, size_t value_max,
                                  struct lb_etcd_range *out, char **last_key, size_t *last_key_len,
                                  char **err);
void lb_etcd_range_free(struct lb_etcd_range *r);

/*
 * Reads an error body ({"error":"...","message":"...","code":N}, or the
 * streaming form {"error":{"grpc_code":N,"message":"..."}}).  Returns 0 with
 * *grpc_code and a malloc'd *message, or -EINVAL when the body is not one.
 */
int lb_etcd_json_parse_error(const char *body, size_t len, int *grpc_code, char **message);

/*
 * Request bodies.  Keys and values are raw bytes (with their lengths); the
 * builders base64 them.  Each returns 0 with a malloc'd JSON string in *out,
 * or -ENOMEM.
 */
/* revision 0 = latest; limit 0 = no limit; range_end NULL = the single key. */
int lb_etcd_json_range_request(const char *key, size_t key_len, const char *range_end,
                               size_t range_end_len, int64_t revision, int64_t limit, char **out);
/* The same with "keys_only": the answer names the keys, without their values. */
int lb_etcd_json_range_keys_request(const char *key, size_t key_len, const char *range_end,
                                    size_t range_end_len, int64_t revision, int64_t limit,
                                    char **out);
/* lease 0 = none. */
int lb_etcd_json_put_request(const char *key, size_t key_len, const char *value, size_t value_len,
                             int64_t lease, char **out);
int lb_etcd_json_delete_request(const char *key, size_t key_len, char **out);

/*
 * A watch create_request over [key, range_end) from start_revision, asking
 * for prev_kv, progress notifications and fragmented large responses.
 */
int lb_etcd_json_watch_request(const char *key, size_t key_len, const char *range_end,
                               size_t range_end_len, int64_t start_revision, char **out);

/* Serialises `obj` (consumed: its reference is put) into a malloc'd string. */
int lb_etcd_json_finish(json_object *obj, char **out);

#endif
