/*
 * Listening sockets for lbd's servers (the pools' listeners, the admin API):
 * one way to bind, one way to accept, one way to back off when the process
 * runs out of descriptors or memory.
 *
 * Binding: "host:port" text is parsed with lb_addr_parse() (hosts must be
 * IP literals: a listener never waits for DNS), then SO_REUSEADDR (a
 * restart does not wait for TIME_WAIT), IPV6_V6ONLY on IPv6 sockets (so
 * "[::]:80" and "0.0.0.0:80" are two listeners, as nginx has it), and on
 * request SO_REUSEPORT (several loops, each with its own listener on the
 * port) and TCP_NODELAY (accepted sockets inherit it).  Errors are
 * sentences that name the setting and the address.
 *
 * Accepting: lb_listen_accept() takes one client, non-blocking and
 * close-on-exec, and skips the clients that left before they were taken.
 * When it fails for lack of descriptors or memory (EMFILE, ENFILE,
 * ENOBUFS, ENOMEM), accepting again at once would fail again and spin the
 * loop: struct lb_accept_backoff pauses the owner's accept watchers and
 * resumes them after a delay, as often as it takes, and has the first
 * pause of such an episode logged, not every one; the first accept that
 * works again ends the episode.
 */
#ifndef LB_LISTEN_H
#define LB_LISTEN_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct lb_listen_options {
    /*
     * Starts every error sentence: the setting and its value as the user
     * wrote them ("--pool web=0.0.0.0:8080", "--admin 127.0.0.1:9000").
     * NULL: the address alone.
     */
    const char *what;
    int backlog;          /* listen()'s queue; <= 0: SOMAXCONN */
    bool allow_port_zero; /* port 0 asks the kernel for a free port */
    bool reuse_port;      /* SO_REUSEPORT: other sockets may bind the same address */
    /* With reuse_port: refuse an address some socket listens on already (another
     * lbd, or anything else of this user), which SO_REUSEPORT would share
     * silently; for the first socket of an address (later ones join it). */
    bool exclusive;
    bool nodelay; /* TCP_NODELAY on the listener, inherited by accepted sockets */
    /* Bind only; lb_listen_start() listens later.  A bound socket that does
     * not listen gets no share of its SO_REUSEPORT group's clients, so a
     * process taking over may hold its own sockets without the kernel
     * queueing clients there before it accepts (they would be reset if it
     * died first).  Not for a socket taken from the previous process. */
    bool bind_only;
};

struct lb_listen_socket {
    int fd;                       /* non-blocking, close-on-exec; -1 when closed */
    struct sockaddr_storage addr; /* as bound: the port the kernel picked for port 0 */
    socklen_t addr_len;
    bool inherited; /* the previous process's socket (listening, whatever bind_only says) */
};

/*
 * Parses `addr` ("host:port", "[v6]:port"), binds and listens.  Returns 0
 * with *out filled, or a negative errno with *err a malloc'd sentence
 * (the caller frees it); nothing stays open then.
 */
int lb_listen_open(const char *addr, const struct lb_listen_options *o,
                   struct lb_listen_socket *out, char **err);

/*
 * Sockets handed over by the previous lbd at an upgrade (balancer/upgrade.c).
 * lb_listen_open() takes an inherited socket listening on the same address
 * instead of binding a new one: the socket, its accept queue and its place
 * in a SO_REUSEPORT group stay the same, so no client is refused while one
 * process hands over to the next.  The table is the control thread's, used
 * at start-up only.
 *
 * lb_listen_inherit() takes ownership of fd: 0, -EINVAL when it is not a
 * listening TCP socket (closed), -ENOSPC when the table is full (closed).
 * lb_listen_take_inherited() hands over one socket listening on `addr` (the
 * caller owns it then), or returns -1.  lb_listen_close_inherited() closes
 * what nothing took and returns how many.
 */
int lb_listen_inherit(int fd);
int lb_listen_take_inherited(const struct sockaddr *addr, socklen_t len);
size_t lb_listen_close_inherited(void);

/*
 * Whether a socket of some process listens on `addr` ("host:port") now, as
 * a bind without SO_REUSEPORT would find; false for port 0 or an address
 * that does not parse.
 */
bool lb_listen_addr_busy(const char *addr);

/* Listens on a socket opened with bind_only (backlog <= 0: SOMAXCONN): 0 or a negative errno. */
int lb_listen_start(int fd, int backlog);

/* Closes the socket (idempotent). */
void lb_listen_close(struct lb_listen_socket *s);

/* The bound port. */
int lb_listen_port(const struct lb_listen_socket *s);

/* True when bound to 127.0.0.0/8 or ::1: only this host can connect. */
bool lb_listen_is_loopback(const struct lb_listen_socket *s);

/*
 * Takes one client from `fd`'s queue, non-blocking and close-on-exec, with
 * its address in *peer.  Returns the new descriptor; -EAGAIN when the queue
 * is empty; a negative errno when accept failed (lb_listen_error_is_resource()
 * tells whether to back off).  Clients that reset before they were taken
 * (ECONNABORTED, EPROTO) and signals are skipped.
 */
int lb_listen_accept(int fd, struct sockaddr_storage *peer, socklen_t *len);

/* EMFILE, ENFILE, ENOBUFS, ENOMEM (negative): accepting must pause. */
bool lb_listen_error_is_resource(int err);

/*
 * The back-off after a resource error, for one owner of accept watchers
 * (all the pools' listeners share one, the admin API has its own).  The
 * owner embeds it and keeps its own watchers; the hooks run on the loop.
 */
struct lb_accept_backoff_ops {
    /* Stop accepting (every watcher of the owner). */
    void (*pause)(void *ctx);
    /* The delay is over: start accepting again, unless something else holds it. */
    void (*resume)(void *ctx);
};

struct lb_accept_backoff {
    struct ev_loop *loop;
    ev_timer timer;
    double delay_s;
    const struct lb_accept_backoff_ops *ops;
    void *ctx;
    bool in_episode; /* resource errors since accept last worked: said already */
};

enum lb_accept_verdict {
    LB_ACCEPT_GO,        /* a client, or the queue is empty */
    LB_ACCEPT_FAILED,    /* another error: the caller logs it */
    LB_ACCEPT_PAUSED,    /* a resource error: paused, resume armed; the episode was logged */
    LB_ACCEPT_PAUSED_NEW /* the same, the first of its episode: the caller logs one line */
};

void lb_accept_backoff_init(struct lb_accept_backoff *b, struct ev_loop *loop, double delay_s,
                            const struct lb_accept_backoff_ops *ops, void *ctx);

/*
 * Feeds one result of lb_listen_accept().  A resource error pauses
 * accepting (ops->pause) and arms the resume; the caller stops its accept
 * loop.  A client or an empty queue ends the episode, so the next
 * resource error is logged again.
 */
enum lb_accept_verdict lb_accept_backoff_check(struct lb_accept_backoff *b, int rc);

/* True while a resume is pending. */
bool lb_accept_backoff_is_pending(const struct lb_accept_backoff *b);

/* Cancels a pending resume (the owner stops listening). */
void lb_accept_backoff_stop(struct lb_accept_backoff *b);

#endif
