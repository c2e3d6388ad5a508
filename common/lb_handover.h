/*
 * The hand-over protocol of hitless upgrades: an old lbd hands its listening
 * sockets, then its established sessions, to a new lbd over a unix
 * SOCK_SEQPACKET socket, file descriptors riding along by SCM_RIGHTS.  This
 * module is the codec (a message struct <-> one record) and the two I/O
 * helpers that move one record with its descriptors; the state machine that
 * drives them lives with the daemon.
 *
 * One SEQPACKET record is one message: a 12-byte header ("LBHO", u16
 * framing version, u8 type, u8 flags = 0, u32 payload length = record
 * length - 12), then the payload.  Integers are little-endian; a string is a
 * u16 length and that many bytes, no NUL inside.  Every field has a bound,
 * so a record never exceeds LB_HANDOVER_MSG_MAX and the decoder checks each
 * bound before it reads: a peer cannot make it allocate or read past the
 * record.  Encoding is canonical (decode then encode gives back the same
 * bytes), which is what the fuzzer checks.
 *
 * Versioning.  Framing v1 and the payloads of HELLO, LISTENER,
 * LISTENERS_DONE, READY and DONE are frozen forever: any two lbd versions
 * can always move their listeners.  SESSION's layout is versioned by
 * LB_HANDOVER_SESSION_VERSION, exchanged in HELLO; an old process hands
 * sessions only to a peer of the same session version.  Every SESSION
 * starts with u32 session_version and u64 id, frozen too, so a peer of
 * another session version can still NAK it by id.  BACKEND records (since
 * session version 2) go only to a peer of the same session version too,
 * among the LISTENERs, before LISTENERS_DONE; so do VIEW and its KEYs (since
 * session version 3).
 *
 * Descriptors: lb_handover_send() leaves the caller's fds open (the kernel
 * holds its own references while the record is in flight).  Those that
 * lb_handover_recv() returns belong to the caller, close-on-exec; on every
 * error path it has already closed whatever arrived.  Nothing here keeps
 * state, logs or runs on a loop: the functions are safe on any thread.
 */
#ifndef LB_HANDOVER_H
#define LB_HANDOVER_H

#include "lb_buf.h"
#include "lb_update.h" /* LB_NAME_MAX, LB_ADDR_MAX */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define LB_HANDOVER_MAGIC "LBHO"
#define LB_HANDOVER_PROTO 1 /* framing version: frozen forever */
/* Layout of SESSION after its version and id, and which other records the
 * old process sends: 1 the first; 2 adds BACKEND; 3 adds VIEW and KEY
 * (SESSION unchanged since 1). */
#define LB_HANDOVER_SESSION_VERSION 3
#define LB_HANDOVER_HEADER_LEN      12

#define LB_HANDOVER_VERSION_MAX   32            /* lbd version text in HELLO, with the NUL */
#define LB_HANDOVER_REASON_MAX    200           /* SESSION_NAK reason, with the NUL */
#define LB_HANDOVER_PENDING_MAX   (256u * 1024) /* unsent bytes per direction of a session */
#define LB_HANDOVER_FIXED_MAX     1024          /* every field but pending bytes, with room */
#define LB_HANDOVER_FDS_MAX       2             /* descriptors one record may carry */
#define LB_HANDOVER_KEY_MAX       4096         /* bytes of an etcd key in KEY (as lbd reads keys) */
#define LB_HANDOVER_VALUE_MAX     (64u * 1024) /* bytes of its value (the largest lbd parses) */
#define LB_HANDOVER_VIEW_KEYS_MAX (1u << 20)   /* keys in one VIEW (as many as lbd tracks) */
#define LB_HANDOVER_PREFIX_MAX    512          /* etcd key prefix in VIEW, with the NUL */
/* The largest record: the size of the receive buffer and of an encode lb_buf's max. */
#define LB_HANDOVER_MSG_MAX                                                                        \
    (LB_HANDOVER_HEADER_LEN + LB_HANDOVER_FIXED_MAX + 2 * LB_HANDOVER_PENDING_MAX)

/* Message types.  The numbers are on the wire: never renumber. */
enum lb_handover_type {
    LB_HANDOVER_HELLO = 1,          /* both ways, first */
    LB_HANDOVER_LISTENER = 2,       /* old -> new, 1 fd: a listening socket */
    LB_HANDOVER_LISTENERS_DONE = 3, /* old -> new: how many LISTENERs were sent */
    LB_HANDOVER_READY = 4,          /* new -> old: synced and accepting; old stops accepting */
    LB_HANDOVER_SESSION = 5,        /* old -> new, 2 fds: client then backend */
    LB_HANDOVER_SESSION_ACK = 6,    /* new -> old: the new process owns the session */
    LB_HANDOVER_SESSION_NAK = 7,    /* new -> old: closed its copies untouched; old keeps it */
    LB_HANDOVER_DONE = 8,           /* old -> new: no more sessions */
    LB_HANDOVER_BACKEND = 9,        /* old -> new, among LISTENERs: what it knew of a backend */
    LB_HANDOVER_VIEW = 10,          /* old -> new, among LISTENERs: its view of etcd, then KEYs */
    LB_HANDOVER_KEY = 11,           /* old -> new, after VIEW: one etcd key of that view */
};

enum lb_handover_listener_kind {
    LB_HANDOVER_LISTENER_POOL = 1, /* a pool's listener: name is the pool */
    LB_HANDOVER_LISTENER_ADMIN = 2,
    LB_HANDOVER_LISTENER_HTTP = 3,
    LB_HANDOVER_LISTENER_UPGRADE = 4,
};

/* lb_handover_session.flags: what each direction had seen when handed over. */
#define LB_HANDOVER_UP_EOF    0x01u /* client -> backend: client sent FIN */
#define LB_HANDOVER_UP_SHUT   0x02u /* client -> backend: shutdown(SHUT_WR) done on backend */
#define LB_HANDOVER_DOWN_EOF  0x04u /* backend -> client: backend sent FIN */
#define LB_HANDOVER_DOWN_SHUT 0x08u /* backend -> client: shutdown(SHUT_WR) done on client */
#define LB_HANDOVER_FLAGS_ALL 0x0fu

/* lb_handover_backend.local: the old process's local (lbctl --local) overrides. */
#define LB_HANDOVER_LOCAL_DRAIN        0x01u /* drain overridden: local_drain */
#define LB_HANDOVER_LOCAL_WEIGHT       0x02u /* weight overridden: local_weight */
#define LB_HANDOVER_LOCAL_CLEAR_WEIGHT 0x04u /* the cluster's weight override hidden */
#define LB_HANDOVER_LOCAL_HEALTH       0x08u /* health forced: local_health */
#define LB_HANDOVER_LOCAL_ALL          0x0fu

/* Strings are NUL-terminated copies; every array bound includes the NUL. */
struct lb_handover_hello {
    uint32_t session_version; /* the sender's LB_HANDOVER_SESSION_VERSION */
    uint32_t pid;
    uint32_t workers;
    char version[LB_HANDOVER_VERSION_MAX]; /* LB_VERSION */
};

struct lb_handover_listener {
    uint8_t kind;           /* enum lb_handover_listener_kind */
    char name[LB_NAME_MAX]; /* the pool for POOL (not empty), "" for the others */
    char addr[LB_ADDR_MAX]; /* "host:port" as configured */
};

struct lb_handover_session {
    uint32_t session_version; /* decode: LB_HANDOVER_SESSION_VERSION; encode: ignored */
    uint64_t id;              /* the old process's handle, echoed by ACK/NAK */
    char pool[LB_NAME_MAX];
    char backend_id[LB_NAME_MAX];
    char backend_addr[LB_ADDR_MAX];
    struct sockaddr_storage client; /* AF_INET or AF_INET6, port not 0 */
    socklen_t client_len;           /* sizeof(struct sockaddr_in) or _in6, exactly */
    uint64_t bytes_up;              /* client -> backend so far */
    uint64_t bytes_down;            /* backend -> client so far */
    uint32_t age_ms;                /* since accept */
    uint32_t idle_ms;               /* since last activity */
    uint8_t flags;                  /* LB_HANDOVER_UP_EOF ... */
    /* Bytes read but not yet written.  After decode they point into the
     * record buffer (valid as long as it is); NULL when the length is 0. */
    const uint8_t *up_pending;
    uint32_t up_pending_len; /* <= LB_HANDOVER_PENDING_MAX */
    const uint8_t *down_pending;
    uint32_t down_pending_len; /* <= LB_HANDOVER_PENDING_MAX */
};

/*
 * What the old process knew of one backend that etcd does not hold, so that
 * an upgrade changes nothing an operator or a check decided: its local
 * overrides, its health as checked (sent for a backend down, or one sent
 * for another reason), its passive ejection and its drain deadline.  The new
 * process applies it to the backend of the same pool, id and address after
 * its first etcd listing, before it accepts.
 */
struct lb_handover_backend {
    char pool[LB_NAME_MAX]; /* not empty */
    char id[LB_NAME_MAX];   /* not empty */
    char addr[LB_ADDR_MAX]; /* as registered */
    uint8_t health;         /* as checked: 0 unknown, 1 up, 2 down */
    uint32_t ejected_ms;    /* passive ejection: time left; 0 = not ejected */
    uint8_t ejections;      /* ejections in a row (each lasts longer), <= 64 */
    uint32_t drain_left_ms; /* drained with a drain_timeout: time left to it; 0 = none */
    uint8_t local;          /* LB_HANDOVER_LOCAL_*; WEIGHT and CLEAR_WEIGHT exclude each other */
    uint8_t local_drain;    /* 0 or 1 */
    uint16_t local_weight;  /* 0..LB_WEIGHT_MAX */
    uint8_t local_health;   /* 0 auto, 1 forced up, 2 forced down */
};

/*
 * The old process's view of etcd: the revision it had applied, etcd's
 * cluster id, how long it had been out of touch with etcd, the key prefix
 * it watched, and how many KEY records follow (each schema key it holds,
 * with the value as etcd stored it).  The new process starts from this view without waiting for
 * etcd, then lists etcd and applies the difference, as after a reconnect.
 */
struct lb_handover_view {
    int64_t revision;    /* > 0 */
    uint64_t cluster_id; /* 0 = not known */
    uint32_t stale_ms;   /* since the old process last had etcd's word; 0 when watching */
    uint32_t keys;       /* KEY records that follow, <= LB_HANDOVER_VIEW_KEYS_MAX */
    char prefix[LB_HANDOVER_PREFIX_MAX]; /* the --prefix the keys are under; not empty */
};

/* One key of a VIEW.  After decode the bytes point into the record buffer. */
struct lb_handover_key {
    const uint8_t *key; /* 1..LB_HANDOVER_KEY_MAX bytes, no NUL */
    uint32_t key_len;
    const uint8_t *value; /* NULL when value_len is 0 */
    uint32_t value_len;   /* <= LB_HANDOVER_VALUE_MAX */
    int64_t mod_revision; /* > 0 */
};

struct lb_handover_msg {
    enum lb_handover_type type;
    union {
        struct lb_handover_hello hello;
        struct lb_handover_listener listener;
        uint32_t listeners_done_count; /* LISTENERS_DONE: LISTENER messages sent */
        struct lb_handover_session session;
        uint64_t ack_id; /* SESSION_ACK */
        struct {
            uint64_t id;
            char reason[LB_HANDOVER_REASON_MAX];
        } nak; /* SESSION_NAK */
        struct lb_handover_backend backend;
        struct lb_handover_view view;
        struct lb_handover_key key;
    } u; /* READY and DONE have no payload */
};

/* "SESSION" for LB_HANDOVER_SESSION; "UNKNOWN" for a type not above. */
const char *lb_handover_type_name(int type);

/* How many descriptors a record of this type carries: 1, 2, or 0 (also for unknown types). */
int lb_handover_type_fds(int type);

/*
 * Appends the record of `m` to `out` (whose max should be at least
 * LB_HANDOVER_MSG_MAX).  Checks what the decoder checks: a known type,
 * strings terminated within their arrays (no NUL inside is implied),
 * listener kind and name, the client address and its length, pending
 * lengths and pointers, flags.  A SESSION is always written with
 * LB_HANDOVER_SESSION_VERSION.  Returns 0, -EINVAL for a message the
 * decoder would refuse, or lb_buf_append()'s -E2BIG / -ENOMEM; on error
 * `out` is left as it was.
 */
int lb_handover_encode(const struct lb_handover_msg *m, struct lb_buf *out);

/*
 * Decodes the record rec[0..len) that arrived with `n_fds` descriptors into
 * *m.  Strings are copied; SESSION's pending bytes point into `rec`.  Checks
 * the magic, the framing version, flags, the payload length, the type, that
 * n_fds is what the type carries (lb_handover_type_fds()), every field's
 * presence and bound, and that nothing trails.  Returns:
 *   0                 *m holds the message;
 *   -EPROTONOSUPPORT  a well-framed SESSION of another session version:
 *                     only m->type, m->u.session.session_version and .id are
 *                     set, so the caller can NAK that id (and close the fds);
 *   -EPROTO           anything else wrong with the record;
 *   -EINVAL           bad arguments (m NULL, n_fds < 0).
 * On error *err (if err is not NULL) is a malloc'd sentence naming what was
 * wrong, e.g. "SESSION: pool name longer than 127 bytes", and *m is zeroed
 * but for the -EPROTONOSUPPORT fields.  The caller closes the fds in any
 * case of error: decoding never touches them.
 */
int lb_handover_decode(const uint8_t *rec, size_t len, int n_fds, struct lb_handover_msg *m,
                       char **err);

/*
 * Sends the record rec[0..len) with fds[0..n_fds) (0..LB_HANDOVER_FDS_MAX)
 * in one sendmsg(), MSG_NOSIGNAL, retrying EINTR.  The fds stay the
 * caller's.  Returns 0; -EAGAIN when a non-blocking socket is full (nothing
 * was sent); -EMSGSIZE when the record exceeds what the socket's send buffer
 * allows (see lb_handover_socket_setup()); -EINVAL for bad arguments
 * (len 0 included: it would read as end of stream); or sendmsg's -errno
 * (-EPIPE when the peer is gone).
 */
int lb_handover_send(int sock, const void *rec, size_t len, const int *fds, int n_fds);

/*
 * Receives one record into buf[0..cap) with one recvmsg(), MSG_CMSG_CLOEXEC,
 * retrying EINTR.  On success stores the descriptors that came with it in
 * fds[0..*n_fds) (they are the caller's to close) and returns the record
 * length; returns 0 at end of stream (a zero-length record reads the same).
 * Errors: -EAGAIN (non-blocking, nothing queued); -EMSGSIZE when the record
 * was longer than cap, its descriptors did not all fit the control buffer,
 * or more than max_fds (0..LB_HANDOVER_FDS_MAX) came: the record is
 * consumed and every descriptor that arrived is already closed; -EINVAL for
 * bad arguments; recvmsg's -errno.  On any return but a positive one *n_fds
 * is 0 and no descriptor is left open.
 */
ssize_t lb_handover_recv(int sock, uint8_t *buf, size_t cap, int *fds, int max_fds, int *n_fds);

/*
 * Sizes the send buffer of a hand-over socket for LB_HANDOVER_MSG_MAX-byte
 * records: a unix datagram must fit the sender's SO_SNDBUF whole, and the
 * default (net.core.wmem_default, 208 KiB) is smaller than a SESSION with
 * full pending buffers.  Tries SO_SNDBUFFORCE (CAP_NET_ADMIN), then
 * SO_SNDBUF.  Returns 0 when the largest record fits; -ENOBUFS when
 * net.core.wmem_max caps the buffer lower (then sending a bigger SESSION
 * fails with -EMSGSIZE and the old process should keep that session); or
 * setsockopt's -errno.
 */
int lb_handover_socket_setup(int sock);

#endif
