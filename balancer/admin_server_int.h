/*
 * Inside the admin server: the state its connections and calls share with
 * it (limits, the token, the method table, admission and request memory,
 * the reaper's lists, counters).  admin_server.c owns it; the layers below
 * read it and use the two services here: pressure notes and the reaper.
 * Not for use outside the admin transport.
 */
#ifndef LB_ADMIN_SERVER_INT_H
#define LB_ADMIN_SERVER_INT_H

#include "admin_auth.h"
#include "admin_server.h"
#include "conn_guard.h"
#include "lb_list.h"
#include "lb_reaper.h"
#include "lb_listen.h"

#include <ev.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ADMIN_LOG_SUB "admin"

struct admin_conn;
struct lb_admin_call;

/* Kinds of pressure from clients, each logged at most once a second with a count. */
enum admin_note {
    ADMIN_NOTE_REFUSED,
    ADMIN_NOTE_SHED,
    ADMIN_NOTE_NO_REQUEST,
    ADMIN_NOTE_REQUEST_TIMEOUT,
    ADMIN_NOTE_MAX
};

struct lb_admin_server {
    struct ev_loop *loop;
    const struct lb_admin_method *methods;
    size_t n_methods;
    void *context;
    struct lb_admin_limits limits;
    struct lb_admin_auth auth;
    SSL_CTX *tls; /* NULL: cleartext h2c */
    struct lb_listen_socket listener;
    char addr[96];
    ev_io accept_watcher;
    struct lb_accept_backoff accept_backoff;
    struct lb_reaper reaper; /* frees closed connections and released calls */
    struct lb_list conns;    /* open */
    unsigned n_conns;
    struct lb_list calls; /* every live call, streams gone or not */

    /* Pressure from clients: admission, request memory, and what is told about it. */
    struct lb_conn_guard guard;
    size_t request_bytes; /* held by every connection's unfinished requests */
    struct lb_rate_log notes[ADMIN_NOTE_MAX];
    ev_timer note_timer;
    uint64_t conns_refused, conns_shed, conns_no_request;
    uint64_t calls_request_timeout, calls_request_budget;
};

/* One more event of kind `what`: logged now or in the next summary line. */
void admin_server_note(struct lb_admin_server *s, enum admin_note what);

/* A new connection: on the open list, counted by admission. */
void admin_server_conn_opened(struct lb_admin_server *s, struct admin_conn *conn,
                              const struct lb_conn_peer *addr);

/* A connection went from open to closing: off the open list and admission, to the reaper. */
void admin_server_conn_closed(struct lb_admin_server *s, struct admin_conn *conn);

#endif
