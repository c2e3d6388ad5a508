/*
 * Fuzzes the hand-over decoder (lb_handover.h) with records from a peer that
 * may be anything.
 *
 * Input: byte 0 modulo 3 is the number of descriptors the record "arrived"
 * with; the rest is the record.  The decoder must accept or refuse with a
 * sentence, never read past the record.  What it accepts must re-encode to
 * exactly the input (the encoding is canonical) and decode again to the same
 * message, field by field.  A SESSION of another session version must still
 * yield the type and the id the receiver NAKs.
 *
 * Seeds (corpus/fuzz_handover/): one valid record of each type (VIEW and
 * KEY included), two
 * SESSIONs (IPv4 and IPv6 clients) and one of another session version, each
 * behind its descriptor-count byte.
 */
#include "lb_handover.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool pending_equal(const uint8_t *a, uint32_t a_len, const uint8_t *b, uint32_t b_len)
{
    if (a_len != b_len)
        return false;
    if (a_len == 0)
        return a == NULL && b == NULL;
    return memcmp(a, b, a_len) == 0;
}

static bool session_equal(const struct lb_handover_session *a, const struct lb_handover_session *b)
{
    return a->session_version == b->session_version && a->id == b->id &&
           strcmp(a->pool, b->pool) == 0 && strcmp(a->backend_id, b->backend_id) == 0 &&
           strcmp(a->backend_addr, b->backend_addr) == 0 && a->client_len == b->client_len &&
           memcmp(&a->client, &b->client, sizeof(a->client)) == 0 && a->bytes_up == b->bytes_up &&
           a->bytes_down == b->bytes_down && a->age_ms == b->age_ms && a->idle_ms == b->idle_ms &&
           a->flags == b->flags &&
           pending_equal(a->up_pending, a->up_pending_len, b->up_pending, b->up_pending_len) &&
           pending_equal(a->down_pending, a->down_pending_len, b->down_pending,
                         b->down_pending_len);
}

static bool msg_equal(const struct lb_handover_msg *a, const struct lb_handover_msg *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case LB_HANDOVER_HELLO:
        return a->u.hello.session_version == b->u.hello.session_version &&
               a->u.hello.pid == b->u.hello.pid && a->u.hello.workers == b->u.hello.workers &&
               strcmp(a->u.hello.version, b->u.hello.version) == 0;
    case LB_HANDOVER_LISTENER:
        return a->u.listener.kind == b->u.listener.kind &&
               strcmp(a->u.listener.name, b->u.listener.name) == 0 &&
               strcmp(a->u.listener.addr, b->u.listener.addr) == 0;
    case LB_HANDOVER_LISTENERS_DONE:
        return a->u.listeners_done_count == b->u.listeners_done_count;
    case LB_HANDOVER_SESSION:
        return session_equal(&a->u.session, &b->u.session);
    case LB_HANDOVER_SESSION_ACK:
        return a->u.ack_id == b->u.ack_id;
    case LB_HANDOVER_SESSION_NAK:
        return a->u.nak.id == b->u.nak.id && strcmp(a->u.nak.reason, b->u.nak.reason) == 0;
    case LB_HANDOVER_BACKEND:
        return strcmp(a->u.backend.pool, b->u.backend.pool) == 0 &&
               strcmp(a->u.backend.id, b->u.backend.id) == 0 &&
               strcmp(a->u.backend.addr, b->u.backend.addr) == 0 &&
               a->u.backend.health == b->u.backend.health &&
               a->u.backend.ejected_ms == b->u.backend.ejected_ms &&
               a->u.backend.ejections == b->u.backend.ejections &&
               a->u.backend.drain_left_ms == b->u.backend.drain_left_ms &&
               a->u.backend.local == b->u.backend.local &&
               a->u.backend.local_drain == b->u.backend.local_drain &&
               a->u.backend.local_weight == b->u.backend.local_weight &&
               a->u.backend.local_health == b->u.backend.local_health;
    case LB_HANDOVER_VIEW:
        return a->u.view.revision == b->u.view.revision &&
               strcmp(a->u.view.prefix, b->u.view.prefix) == 0 &&
               a->u.view.cluster_id == b->u.view.cluster_id &&
               a->u.view.stale_ms == b->u.view.stale_ms && a->u.view.keys == b->u.view.keys;
    case LB_HANDOVER_KEY:
        return a->u.key.key_len == b->u.key.key_len &&
               memcmp(a->u.key.key, b->u.key.key, a->u.key.key_len) == 0 &&
               pending_equal(a->u.key.value, a->u.key.value_len, b->u.key.value,
                             b->u.key.value_len) &&
               a->u.key.mod_revision == b->u.key.mod_revision;
    case LB_HANDOVER_READY:
    case LB_HANDOVER_DONE:
        return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lb_handover_msg m, again;
    struct lb_buf out;
    const uint8_t *rec;
    size_t len;
    char *err = NULL;
    int n_fds, rc;

    if (size < 1)
        return 0;
    n_fds = data[0] % 3;
    rec = data + 1;
    len = size - 1;

    rc = lb_handover_decode(rec, len, n_fds, &m, &err);
    if (rc != 0) {
        if (rc != -EPROTO && rc != -EPROTONOSUPPORT)
            abort();
        if (!err || !err[0]) /* every refusal says why */
            abort();
        if (rc == -EPROTONOSUPPORT && (m.type != LB_HANDOVER_SESSION ||
                                       m.u.session.session_version == LB_HANDOVER_SESSION_VERSION))
            abort();
        free(err);
        return 0;
    }
    if (err || n_fds != lb_handover_type_fds(m.type))
        abort();
    if (m.type == LB_HANDOVER_SESSION && (m.u.session.up_pending_len > LB_HANDOVER_PENDING_MAX ||
                                          m.u.session.down_pending_len > LB_HANDOVER_PENDING_MAX))
        abort();
    if (m.type == LB_HANDOVER_KEY &&
        (m.u.key.key_len == 0 || m.u.key.key_len > LB_HANDOVER_KEY_MAX ||
         m.u.key.value_len > LB_HANDOVER_VALUE_MAX || m.u.key.key < rec ||
         m.u.key.key + m.u.key.key_len > rec + len ||
         (m.u.key.value && m.u.key.value + m.u.key.value_len > rec + len)))
        abort(); /* the bytes lie within the record */

    lb_buf_init(&out, LB_HANDOVER_MSG_MAX);
    if (lb_handover_encode(&m, &out) != 0)
        abort();
    if (out.len != len || memcmp(out.data, rec, len) != 0)
        abort();
    if (lb_handover_decode((const uint8_t *)out.data, out.len, n_fds, &again, &err) != 0)
        abort();
    if (!msg_equal(&m, &again))
        abort();
    lb_buf_free(&out);
    return 0;
}
