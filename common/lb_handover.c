/*
 * The hand-over codec and its fd-passing I/O (contract and wire format in
 * lb_handover.h).  Encoding goes through a writer whose first failure sticks,
 * so one check at the end covers every append, and the payload length is
 * patched into the header last.  Decoding goes through a reader over the
 * record that refuses to step past its end; each field is checked against
 * its bound before its bytes are touched, and each refusal names the
 * message and the field.  Nothing is allocated but the error sentence.
 */
#include "lb_handover.h"

#include "lb_error.h"

#include <errno.h>
#include <stdint.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define FAMILY_CODE_INET  4
#define FAMILY_CODE_INET6 6

/* Fds the receive control buffer has room for: more than any message
 * carries, so that a peer sending too many is seen (and all are closed). */
#define RECV_FDS_ROOM 8

/* The kernel's per-datagram overhead on a unix socket's send buffer, and
 * then some: a record fits when SO_SNDBUF >= its length + this. */
#define SNDBUF_SLACK 4096

/* SESSION with every string at its bound and an IPv6 client, pending bytes aside. */
#define SESSION_FIXED_MAX                                                                          \
    (4 + 8 + 2 * (2 + LB_NAME_MAX - 1) + (2 + LB_ADDR_MAX - 1) + (1 + 16 + 2 + 4 + 4) + 8 + 8 +    \
     4 + 4 + 1 + 4 + 4)
_Static_assert(SESSION_FIXED_MAX <= LB_HANDOVER_FIXED_MAX, "LB_HANDOVER_FIXED_MAX too small");
_Static_assert(2 + LB_HANDOVER_REASON_MAX - 1 + 8 <= LB_HANDOVER_FIXED_MAX, "NAK too large");
_Static_assert(2 * (2 + LB_NAME_MAX - 1) + (2 + LB_ADDR_MAX - 1) + 1 + 4 + 1 + 4 + 1 + 1 + 2 + 1 <=
                   LB_HANDOVER_FIXED_MAX,
               "BACKEND too large");
_Static_assert(LB_HANDOVER_MSG_MAX <= UINT32_MAX, "payload length is 32-bit");
_Static_assert(LB_HANDOVER_HEADER_LEN + 2 + LB_HANDOVER_KEY_MAX + 4 + LB_HANDOVER_VALUE_MAX + 8 <=
                   LB_HANDOVER_MSG_MAX,
               "a KEY record fits the largest record");
_Static_assert(LB_HANDOVER_KEY_MAX <= UINT16_MAX, "key length is 16-bit");

static const char *const type_names[] = {
    [LB_HANDOVER_HELLO] = "HELLO",
    [LB_HANDOVER_LISTENER] = "LISTENER",
    [LB_HANDOVER_LISTENERS_DONE] = "LISTENERS_DONE",
    [LB_HANDOVER_READY] = "READY",
    [LB_HANDOVER_SESSION] = "SESSION",
    [LB_HANDOVER_SESSION_ACK] = "SESSION_ACK",
    [LB_HANDOVER_SESSION_NAK] = "SESSION_NAK",
    [LB_HANDOVER_DONE] = "DONE",
    [LB_HANDOVER_BACKEND] = "BACKEND",
    [LB_HANDOVER_VIEW] = "VIEW",
    [LB_HANDOVER_KEY] = "KEY",
};

static bool type_is_known(int type)
{
    return type >= LB_HANDOVER_HELLO && type <= LB_HANDOVER_KEY;
}

const char *lb_handover_type_name(int type)
{
    return type_is_known(type) ? type_names[type] : "UNKNOWN";
}

int lb_handover_type_fds(int type)
{
    switch (type) {
    case LB_HANDOVER_LISTENER:
        return 1;
    case LB_HANDOVER_SESSION:
        return 2;
    default:
        return 0;
    }
}

static bool kind_is_known(unsigned kind)
{
    return kind >= LB_HANDOVER_LISTENER_POOL && kind <= LB_HANDOVER_LISTENER_UPGRADE;
}

/* ------------------------------------------------------------------------ */
/* Encoding */

struct writer {
    struct lb_buf *out;
    int rc; /* first failure, sticky */
};

/* Records the first failure only: later puts become no-ops. */
static void put_fail(struct writer *w, int rc)
{
    if (w->rc == 0)
        w->rc = rc;
}

static void put_bytes(struct writer *w, const void *p, size_t n)
{
    if (w->rc == 0)
        w->rc = lb_buf_append(w->out, p, n);
}

static void put_u8(struct writer *w, uint8_t v)
{
    put_bytes(w, &v, 1);
}

static void put_u16(struct writer *w, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};

    put_bytes(w, b, sizeof(b));
}

static void put_u32(struct writer *w, uint32_t v)
{
    uint8_t b[4];

    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    put_bytes(w, b, sizeof(b));
}

static void put_u64(struct writer *w, uint64_t v)
{
    uint8_t b[8];

    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    put_bytes(w, b, sizeof(b));
}

/* A string held in char[size]: it must end within the array. */
static void put_string(struct writer *w, const char *s, size_t size)
{
    size_t n = strnlen(s, size);

    if (n == size) {
        put_fail(w, -EINVAL);
        return;
    }
    put_u16(w, (uint16_t)n);
    put_bytes(w, s, n);
}

static void put_pending(struct writer *w, const uint8_t *p, uint32_t len)
{
    if (len > LB_HANDOVER_PENDING_MAX || (len && !p)) {
        put_fail(w, -EINVAL);
        return;
    }
    put_u32(w, len);
    put_bytes(w, p, len);
}

static void put_sockaddr(struct writer *w, const struct sockaddr_storage *ss, socklen_t len)
{
    if (ss->ss_family == AF_INET && len == sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

        if (sin->sin_port == 0)
            goto bad;
        put_u8(w, FAMILY_CODE_INET);
        put_bytes(w, &sin->sin_addr, 4);
        put_u16(w, ntohs(sin->sin_port));
        return;
    }
    if (ss->ss_family == AF_INET6 && len == sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

        if (sin6->sin6_port == 0)
            goto bad;
        put_u8(w, FAMILY_CODE_INET6);
        put_bytes(w, &sin6->sin6_addr, 16);
        put_u16(w, ntohs(sin6->sin6_port));
        put_u32(w, ntohl(sin6->sin6_flowinfo));
        put_u32(w, sin6->sin6_scope_id);
        return;
    }
bad:
    put_fail(w, -EINVAL);
}

static void put_session(struct writer *w, const struct lb_handover_session *s)
{
    if (s->flags & ~LB_HANDOVER_FLAGS_ALL) {
        put_fail(w, -EINVAL);
        return;
    }
    put_u32(w, LB_HANDOVER_SESSION_VERSION);
    put_u64(w, s->id);
    put_string(w, s->pool, sizeof(s->pool));
    put_string(w, s->backend_id, sizeof(s->backend_id));
    put_string(w, s->backend_addr, sizeof(s->backend_addr));
    put_sockaddr(w, &s->client, s->client_len);
    put_u64(w, s->bytes_up);
    put_u64(w, s->bytes_down);
    put_u32(w, s->age_ms);
    put_u32(w, s->idle_ms);
    put_u8(w, s->flags);
    put_pending(w, s->up_pending, s->up_pending_len);
    put_pending(w, s->down_pending, s->down_pending_len);
}

/* Why a BACKEND's fields are out of bounds, or NULL (strings aside). */
static const char *backend_fault(const struct lb_handover_backend *b)
{
    if (b->health > 2)
        return "health state beyond 2";
    if (b->ejections > 64)
        return "more than 64 ejections in a row";
    if (b->local & ~LB_HANDOVER_LOCAL_ALL)
        return "unknown local override flags";
    if ((b->local & LB_HANDOVER_LOCAL_WEIGHT) && (b->local & LB_HANDOVER_LOCAL_CLEAR_WEIGHT))
        return "a local weight both set and cleared";
    if (b->local_drain > 1)
        return "local drain neither 0 nor 1";
    if (b->local_weight > LB_WEIGHT_MAX)
        return "local weight beyond 1000";
    if (b->local_health > 2)
        return "local health override beyond 2";
    return NULL;
}

static void put_backend(struct writer *w, const struct lb_handover_backend *b)
{
    if (backend_fault(b) || !b->pool[0] || !b->id[0]) {
        put_fail(w, -EINVAL);
        return;
    }
    put_string(w, b->pool, sizeof(b->pool));
    put_string(w, b->id, sizeof(b->id));
    put_string(w, b->addr, sizeof(b->addr));
    put_u8(w, b->health);
    put_u32(w, b->ejected_ms);
    put_u8(w, b->ejections);
    put_u32(w, b->drain_left_ms);
    put_u8(w, b->local);
    put_u8(w, b->local_drain);
    put_u16(w, b->local_weight);
    put_u8(w, b->local_health);
}

static void put_view(struct writer *w, const struct lb_handover_view *v)
{
    if (v->revision <= 0 || v->keys > LB_HANDOVER_VIEW_KEYS_MAX || !v->prefix[0]) {
        put_fail(w, -EINVAL);
        return;
    }
    put_u64(w, (uint64_t)v->revision);
    put_u64(w, v->cluster_id);
    put_u32(w, v->stale_ms);
    put_u32(w, v->keys);
    put_string(w, v->prefix, sizeof(v->prefix));
}

static void put_key(struct writer *w, const struct lb_handover_key *k)
{
    if (k->key_len == 0 || k->key_len > LB_HANDOVER_KEY_MAX || !k->key ||
        memchr(k->key, '\0', k->key_len) || k->value_len > LB_HANDOVER_VALUE_MAX ||
        (k->value_len && !k->value) || k->mod_revision <= 0) {
        put_fail(w, -EINVAL);
        return;
    }
    put_u16(w, (uint16_t)k->key_len);
    put_bytes(w, k->key, k->key_len);
    put_u32(w, k->value_len);
    put_bytes(w, k->value, k->value_len);
    put_u64(w, (uint64_t)k->mod_revision);
}

static void put_listener(struct writer *w, const struct lb_handover_listener *l)
{
    bool named = strnlen(l->name, sizeof(l->name)) > 0;

    if (!kind_is_known(l->kind) || named != (l->kind == LB_HANDOVER_LISTENER_POOL)) {
        put_fail(w, -EINVAL);
        return;
    }
    put_u8(w, l->kind);
    put_string(w, l->name, sizeof(l->name));
    put_string(w, l->addr, sizeof(l->addr));
}

int lb_handover_encode(const struct lb_handover_msg *m, struct lb_buf *out)
{
    struct writer w = {out, 0};
    size_t start = out->len;
    size_t payload;

    if (!type_is_known(m->type))
        return -EINVAL;
    put_bytes(&w, LB_HANDOVER_MAGIC, 4);
    put_u16(&w, LB_HANDOVER_PROTO);
    put_u8(&w, (uint8_t)m->type);
    put_u8(&w, 0);
    put_u32(&w, 0); /* payload length, patched below */

    switch (m->type) {
    case LB_HANDOVER_HELLO:
        put_u32(&w, m->u.hello.session_version);
        put_u32(&w, m->u.hello.pid);
        put_u32(&w, m->u.hello.workers);
        put_string(&w, m->u.hello.version, sizeof(m->u.hello.version));
        break;
    case LB_HANDOVER_LISTENER:
        put_listener(&w, &m->u.listener);
        break;
    case LB_HANDOVER_LISTENERS_DONE:
        put_u32(&w, m->u.listeners_done_count);
        break;
    case LB_HANDOVER_SESSION:
        put_session(&w, &m->u.session);
        break;
    case LB_HANDOVER_SESSION_ACK:
        put_u64(&w, m->u.ack_id);
        break;
    case LB_HANDOVER_SESSION_NAK:
        put_u64(&w, m->u.nak.id);
        put_string(&w, m->u.nak.reason, sizeof(m->u.nak.reason));
        break;
    case LB_HANDOVER_BACKEND:
        put_backend(&w, &m->u.backend);
        break;
    case LB_HANDOVER_VIEW:
        put_view(&w, &m->u.view);
        break;
    case LB_HANDOVER_KEY:
        put_key(&w, &m->u.key);
        break;
    case LB_HANDOVER_READY:
    case LB_HANDOVER_DONE:
        break;
    }

    if (w.rc < 0) {
        out->len = start; /* never leave half a record behind */
        if (out->data)
            out->data[start] = '\0';
        return w.rc;
    }
    payload = out->len - start - LB_HANDOVER_HEADER_LEN;
    for (int i = 0; i < 4; i++)
        out->data[start + 8 + i] = (char)(uint8_t)(payload >> (8 * i));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Decoding */

struct reader {
    const uint8_t *p;
    size_t left;
    const char *type; /* the message's name, first word of every sentence */
    char **err;
};

static int get_bytes(struct reader *r, const char *field, size_t n, const uint8_t **out)
{
    *out = NULL;
    if (n > r->left)
        return lb_error_set(r->err, -EPROTO, "%s: %s truncated (%zu bytes needed, %zu left)",
                            r->type, field, n, r->left);
    *out = r->p;
    r->p += n;
    r->left -= n;
    return 0;
}

static int get_u8(struct reader *r, const char *field, uint8_t *v)
{
    const uint8_t *b;
    int rc = get_bytes(r, field, 1, &b);

    *v = rc == 0 ? b[0] : 0;
    return rc;
}

static int get_u16(struct reader *r, const char *field, uint16_t *v)
{
    const uint8_t *b;
    int rc = get_bytes(r, field, 2, &b);

    *v = rc == 0 ? (uint16_t)(b[0] | (unsigned)b[1] << 8) : 0;
    return rc;
}

static int get_u32(struct reader *r, const char *field, uint32_t *v)
{
    const uint8_t *b;
    int rc = get_bytes(r, field, 4, &b);

    *v = rc == 0
             ? (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24
             : 0;
    return rc;
}

static int get_u64(struct reader *r, const char *field, uint64_t *v)
{
    uint32_t lo = 0, hi = 0;
    int rc = get_u32(r, field, &lo);

    if (rc == 0)
        rc = get_u32(r, field, &hi);
    if (rc == 0)
        *v = (uint64_t)hi << 32 | lo;
    return rc;
}

/* A string into out[size]: at most size - 1 bytes, none of them NUL. */
static int get_string(struct reader *r, const char *field, char *out, size_t size)
{
    const uint8_t *b;
    uint16_t n;
    int rc = get_u16(r, field, &n);

    if (rc < 0)
        return rc;
    if (n >= size)
        return lb_error_set(r->err, -EPROTO, "%s: %s longer than %zu bytes", r->type, field,
                            size - 1);
    rc = get_bytes(r, field, n, &b);
    if (rc < 0)
        return rc;
    if (memchr(b, '\0', n))
        return lb_error_set(r->err, -EPROTO, "%s: %s contains a NUL byte", r->type, field);
    memcpy(out, b, n);
    out[n] = '\0';
    return 0;
}

static int get_pending(struct reader *r, const char *field, const uint8_t **p, uint32_t *len)
{
    int rc = get_u32(r, field, len);

    if (rc < 0)
        return rc;
    if (*len > LB_HANDOVER_PENDING_MAX)
        return lb_error_set(r->err, -EPROTO, "%s: %s of %u bytes is above the maximum %u", r->type,
                            field, *len, LB_HANDOVER_PENDING_MAX);
    rc = get_bytes(r, field, *len, p);
    if (rc == 0 && *len == 0)
        *p = NULL;
    return rc;
}

static int get_sockaddr(struct reader *r, struct sockaddr_storage *ss, socklen_t *len)
{
    const uint8_t *addr;
    uint8_t family;
    uint16_t port;
    uint32_t flowinfo, scope;
    int rc = get_u8(r, "client address family", &family);

    if (rc < 0)
        return rc;
    if (family != FAMILY_CODE_INET && family != FAMILY_CODE_INET6)
        return lb_error_set(r->err, -EPROTO,
                            "%s: client address family %u is neither 4 (IPv4) nor 6 (IPv6)",
                            r->type, family);
    rc = get_bytes(r, "client address", family == FAMILY_CODE_INET ? 4 : 16, &addr);
    if (rc == 0)
        rc = get_u16(r, "client port", &port);
    if (rc == 0 && port == 0)
        rc = lb_error_set(r->err, -EPROTO, "%s: client port is 0", r->type);
    if (rc < 0)
        return rc;
    memset(ss, 0, sizeof(*ss));
    if (family == FAMILY_CODE_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;

        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, addr, 4);
        sin->sin_port = htons(port);
        *len = sizeof(*sin);
        return 0;
    }
    rc = get_u32(r, "client flow info", &flowinfo);
    if (rc == 0)
        rc = get_u32(r, "client scope id", &scope);
    if (rc == 0) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, addr, 16);
        sin6->sin6_port = htons(port);
        sin6->sin6_flowinfo = htonl(flowinfo);
        sin6->sin6_scope_id = scope;
        *len = sizeof(*sin6);
    }
    return rc;
}

/* After the frozen prefix (session_version, id), which the caller read. */
static int get_session(struct reader *r, struct lb_handover_session *s)
{
    int rc = get_string(r, "pool name", s->pool, sizeof(s->pool));

    if (rc == 0)
        rc = get_string(r, "backend id", s->backend_id, sizeof(s->backend_id));
    if (rc == 0)
        rc = get_string(r, "backend address", s->backend_addr, sizeof(s->backend_addr));
    if (rc == 0)
        rc = get_sockaddr(r, &s->client, &s->client_len);
    if (rc == 0)
        rc = get_u64(r, "bytes up", &s->bytes_up);
    if (rc == 0)
        rc = get_u64(r, "bytes down", &s->bytes_down);
    if (rc == 0)
        rc = get_u32(r, "age", &s->age_ms);
    if (rc == 0)
        rc = get_u32(r, "idle time", &s->idle_ms);
    if (rc == 0)
        rc = get_u8(r, "flags", &s->flags);
    if (rc == 0 && (s->flags & ~LB_HANDOVER_FLAGS_ALL))
        rc = lb_error_set(r->err, -EPROTO, "%s: unknown flags 0x%02x", r->type,
                          s->flags & ~LB_HANDOVER_FLAGS_ALL);
    if (rc == 0)
        rc = get_pending(r, "up pending length", &s->up_pending, &s->up_pending_len);
    if (rc == 0)
        rc = get_pending(r, "down pending length", &s->down_pending, &s->down_pending_len);
    return rc;
}

static int get_listener(struct reader *r, struct lb_handover_listener *l)
{
    int rc = get_u8(r, "kind", &l->kind);

    if (rc == 0 && !kind_is_known(l->kind))
        rc = lb_error_set(r->err, -EPROTO, "%s: unknown listener kind %u", r->type, l->kind);
    if (rc == 0)
        rc = get_string(r, "name", l->name, sizeof(l->name));
    if (rc == 0 && l->kind == LB_HANDOVER_LISTENER_POOL && !l->name[0])
        rc = lb_error_set(r->err, -EPROTO, "%s: pool listener without a pool name", r->type);
    if (rc == 0 && l->kind != LB_HANDOVER_LISTENER_POOL && l->name[0])
        rc = lb_error_set(r->err, -EPROTO,
                          "%s: listener of kind %u has a name; only pool "
                          "listeners (kind 1) have one",
                          r->type, l->kind);
    if (rc == 0)
        rc = get_string(r, "address", l->addr, sizeof(l->addr));
    return rc;
}

static int get_backend(struct reader *r, struct lb_handover_backend *b)
{
    const char *fault;
    int rc = get_string(r, "pool", b->pool, sizeof(b->pool));

    if (rc == 0)
        rc = get_string(r, "id", b->id, sizeof(b->id));
    if (rc == 0 && (!b->pool[0] || !b->id[0]))
        rc = lb_error_set(r->err, -EPROTO, "%s: empty pool or id", r->type);
    if (rc == 0)
        rc = get_string(r, "address", b->addr, sizeof(b->addr));
    if (rc == 0)
        rc = get_u8(r, "health", &b->health);
    if (rc == 0)
        rc = get_u32(r, "ejection left", &b->ejected_ms);
    if (rc == 0)
        rc = get_u8(r, "ejections", &b->ejections);
    if (rc == 0)
        rc = get_u32(r, "drain time left", &b->drain_left_ms);
    if (rc == 0)
        rc = get_u8(r, "local flags", &b->local);
    if (rc == 0)
        rc = get_u8(r, "local drain", &b->local_drain);
    if (rc == 0)
        rc = get_u16(r, "local weight", &b->local_weight);
    if (rc == 0)
        rc = get_u8(r, "local health", &b->local_health);
    if (rc == 0 && (fault = backend_fault(b)))
        rc = lb_error_set(r->err, -EPROTO, "%s: %s", r->type, fault);
    return rc;
}

static int get_view(struct reader *r, struct lb_handover_view *v)
{
    uint64_t revision = 0;
    int rc = get_u64(r, "revision", &revision);

    if (rc == 0 && (revision == 0 || revision > INT64_MAX))
        rc = lb_error_set(r->err, -EPROTO, "%s: revision %llu is not a revision", r->type,
                          (unsigned long long)revision);
    v->revision = (int64_t)revision;
    if (rc == 0)
        rc = get_u64(r, "cluster id", &v->cluster_id);
    if (rc == 0)
        rc = get_u32(r, "time out of touch", &v->stale_ms);
    if (rc == 0)
        rc = get_u32(r, "key count", &v->keys);
    if (rc == 0 && v->keys > LB_HANDOVER_VIEW_KEYS_MAX)
        rc = lb_error_set(r->err, -EPROTO, "%s: %u keys, more than %u", r->type, v->keys,
                          LB_HANDOVER_VIEW_KEYS_MAX);
    if (rc == 0)
        rc = get_string(r, "prefix", v->prefix, sizeof(v->prefix));
    if (rc == 0 && !v->prefix[0])
        rc = lb_error_set(r->err, -EPROTO, "%s: empty prefix", r->type);
    return rc;
}

static int get_key(struct reader *r, struct lb_handover_key *k)
{
    uint64_t revision = 0;
    uint16_t key_len;
    int rc = get_u16(r, "key length", &key_len);

    k->key_len = key_len;
    if (rc == 0 && (key_len == 0 || key_len > LB_HANDOVER_KEY_MAX))
        rc = lb_error_set(r->err, -EPROTO, "%s: a key of %u bytes (1..%u)", r->type, key_len,
                          LB_HANDOVER_KEY_MAX);
    if (rc == 0)
        rc = get_bytes(r, "key", key_len, &k->key);
    if (rc == 0 && memchr(k->key, '\0', key_len))
        rc = lb_error_set(r->err, -EPROTO, "%s: key contains a NUL byte", r->type);
    if (rc == 0)
        rc = get_u32(r, "value length", &k->value_len);
    if (rc == 0 && k->value_len > LB_HANDOVER_VALUE_MAX)
        rc = lb_error_set(r->err, -EPROTO, "%s: a value of %u bytes is above the maximum %u",
                          r->type, k->value_len, LB_HANDOVER_VALUE_MAX);
    if (rc == 0)
        rc = get_bytes(r, "value", k->value_len, &k->value);
    if (rc == 0 && k->value_len == 0)
        k->value = NULL;
    if (rc == 0)
        rc = get_u64(r, "mod revision", &revision);
    if (rc == 0 && (revision == 0 || revision > INT64_MAX))
        rc = lb_error_set(r->err, -EPROTO, "%s: mod revision %llu is not a revision", r->type,
                          (unsigned long long)revision);
    k->mod_revision = (int64_t)revision;
    return rc;
}

/* The header; sets *type once it is known.  Record length checked >= header. */
static int get_header(const uint8_t *rec, size_t len, int *type, char **err)
{
    uint16_t proto = (uint16_t)(rec[4] | (unsigned)rec[5] << 8);
    uint32_t payload = (uint32_t)rec[8] | (uint32_t)rec[9] << 8 | (uint32_t)rec[10] << 16 |
                       (uint32_t)rec[11] << 24;

    if (memcmp(rec, LB_HANDOVER_MAGIC, 4) != 0)
        return lb_error_set(err, -EPROTO, "hand-over record: bad magic (not \"LBHO\")");
    if (proto != LB_HANDOVER_PROTO)
        return lb_error_set(err, -EPROTO,
                            "hand-over record: framing version %u (this lbd speaks %u)", proto,
                            LB_HANDOVER_PROTO);
    if (!type_is_known(rec[6]))
        return lb_error_set(err, -EPROTO, "hand-over record: unknown message type %u", rec[6]);
    *type = rec[6];
    if (rec[7] != 0)
        return lb_error_set(err, -EPROTO, "%s: header flags 0x%02x are not 0", type_names[*type],
                            rec[7]);
    if (payload != len - LB_HANDOVER_HEADER_LEN)
        return lb_error_set(err, -EPROTO,
                            "%s: header announces a %u-byte payload, the record holds %zu",
                            type_names[*type], payload, len - LB_HANDOVER_HEADER_LEN);
    return 0;
}

int lb_handover_decode(const uint8_t *rec, size_t len, int n_fds, struct lb_handover_msg *m,
                       char **err)
{
    struct reader r;
    int type = 0, want_fds, rc;

    if (!m || n_fds < 0 || (!rec && len))
        return lb_error_set(err, -EINVAL, "hand-over decode: bad arguments");
    memset(m, 0, sizeof(*m));
    if (len < LB_HANDOVER_HEADER_LEN)
        return lb_error_set(err, -EPROTO,
                            "hand-over record: %zu bytes, shorter than the %d-byte header", len,
                            LB_HANDOVER_HEADER_LEN);
    rc = get_header(rec, len, &type, err);
    if (rc < 0)
        goto out;
    want_fds = lb_handover_type_fds(type);
    if (n_fds != want_fds) {
        rc = lb_error_set(err, -EPROTO, "%s: arrived with %d file descriptors, expected %d",
                          type_names[type], n_fds, want_fds);
        goto out;
    }
    m->type = (enum lb_handover_type)type;
    r.p = rec + LB_HANDOVER_HEADER_LEN;
    r.left = len - LB_HANDOVER_HEADER_LEN;
    r.type = type_names[type];
    r.err = err;

    switch (type) {
    case LB_HANDOVER_HELLO:
        rc = get_u32(&r, "session version", &m->u.hello.session_version);
        if (rc == 0)
            rc = get_u32(&r, "pid", &m->u.hello.pid);
        if (rc == 0)
            rc = get_u32(&r, "workers", &m->u.hello.workers);
        if (rc == 0)
            rc = get_string(&r, "version text", m->u.hello.version, sizeof(m->u.hello.version));
        break;
    case LB_HANDOVER_LISTENER:
        rc = get_listener(&r, &m->u.listener);
        break;
    case LB_HANDOVER_LISTENERS_DONE:
        rc = get_u32(&r, "count", &m->u.listeners_done_count);
        break;
    case LB_HANDOVER_SESSION: {
        struct lb_handover_session *s = &m->u.session;

        rc = get_u32(&r, "session version", &s->session_version);
        if (rc == 0)
            rc = get_u64(&r, "id", &s->id);
        if (rc == 0 && s->session_version != LB_HANDOVER_SESSION_VERSION) {
            uint32_t version = s->session_version;
            uint64_t id = s->id;

            memset(m, 0, sizeof(*m));
            m->type = LB_HANDOVER_SESSION;
            s->session_version = version;
            s->id = id;
            return lb_error_set(err, -EPROTONOSUPPORT,
                                "SESSION: session version %u (this lbd speaks %u)", version,
                                LB_HANDOVER_SESSION_VERSION);
        }
        if (rc == 0)
            rc = get_session(&r, s);
        break;
    }
    case LB_HANDOVER_SESSION_ACK:
        rc = get_u64(&r, "id", &m->u.ack_id);
        break;
    case LB_HANDOVER_SESSION_NAK:
        rc = get_u64(&r, "id", &m->u.nak.id);
        if (rc == 0)
            rc = get_string(&r, "reason", m->u.nak.reason, sizeof(m->u.nak.reason));
        break;
    case LB_HANDOVER_BACKEND:
        rc = get_backend(&r, &m->u.backend);
        break;
    case LB_HANDOVER_VIEW:
        rc = get_view(&r, &m->u.view);
        break;
    case LB_HANDOVER_KEY:
        rc = get_key(&r, &m->u.key);
        break;
    default: /* READY, DONE */
        break;
    }
    if (rc == 0 && r.left)
        rc = lb_error_set(err, -EPROTO, "%s: %zu trailing bytes after the payload", r.type, r.left);
out:
    if (rc < 0)
        memset(m, 0, sizeof(*m));
    return rc;
}

/* ------------------------------------------------------------------------ */
/* I/O */

int lb_handover_send(int sock, const void *rec, size_t len, const int *fds, int n_fds)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * LB_HANDOVER_FDS_MAX)];
    } control;
    struct iovec iov = {(void *)rec, len};
    struct msghdr msg;
    ssize_t n;

    if (!rec || len == 0 || n_fds < 0 || n_fds > LB_HANDOVER_FDS_MAX || (n_fds && !fds))
        return -EINVAL;
    memset(&msg, 0, sizeof(msg));
    memset(&control, 0, sizeof(control));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (n_fds) {
        struct cmsghdr *cmsg;

        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n_fds);
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n_fds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)n_fds);
    }
    do {
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    /* A SEQPACKET record goes whole or not at all; anything else is a kernel surprise. */
    return (size_t)n == len ? 0 : -EIO;
}

static void close_all(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

ssize_t lb_handover_recv(int sock, uint8_t *buf, size_t cap, int *fds, int max_fds, int *n_fds)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * RECV_FDS_ROOM)];
    } control;
    struct iovec iov = {buf, cap};
    struct msghdr msg;
    struct cmsghdr *cmsg;
    int got[RECV_FDS_ROOM];
    int n_got = 0;
    bool excess = false;
    ssize_t n;

    if (n_fds)
        *n_fds = 0;
    if (!buf || cap == 0 || !n_fds || max_fds < 0 || max_fds > LB_HANDOVER_FDS_MAX ||
        (max_fds && !fds))
        return -EINVAL;
    do {
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof(control.buf);
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;

    /* Take every descriptor that arrived before deciding anything. */
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        const unsigned char *data = CMSG_DATA(cmsg);
        size_t k;

        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        k = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;

            memcpy(&fd, data + i * sizeof(int), sizeof(int));
            if (n_got < RECV_FDS_ROOM) {
                got[n_got++] = fd;
            } else {
                close(fd);
                excess = true;
            }
        }
    }
    if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || excess || n_got > max_fds) {
        close_all(got, n_got);
        return -EMSGSIZE;
    }
    if (n == 0) {
        close_all(got, n_got); /* end of stream carries nothing */
        return 0;
    }
    if (n_got)
        memcpy(fds, got, sizeof(int) * (size_t)n_got);
    *n_fds = n_got;
    return n;
}

int lb_handover_socket_setup(int sock)
{
    int want = LB_HANDOVER_MSG_MAX + SNDBUF_SLACK;
    int got = 0;
    socklen_t got_len = sizeof(got);

    /* The kernel doubles the value asked for and caps SO_SNDBUF at wmem_max. */
    if (setsockopt(sock, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof(want)) < 0 &&
        setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &want, sizeof(want)) < 0)
        return -errno;
    if (getsockopt(sock, SOL_SOCKET, SO_SNDBUF, &got, &got_len) < 0)
        return -errno;
    return got >= want ? 0 : -ENOBUFS;
}
