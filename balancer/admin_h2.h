/*
 * The admin API's HTTP/2 layer (admin_h2.c): nghttp2 server callbacks that
 * turn streams into calls, check their headers and token, gather their
 * request and hand it to the method table.  A connection needs one thing
 * of it: a session wired to those callbacks.
 * Not for use outside the admin transport.
 */
#ifndef LB_ADMIN_H2_H
#define LB_ADMIN_H2_H

#include <nghttp2/nghttp2.h>

struct admin_conn;

/*
 * A server session for `conn` (its user data) with lbd's SETTINGS queued
 * (max concurrent streams, max header list size, from the server's
 * limits).  Returns 0 with *out set, or -ENOMEM.
 */
int admin_h2_session_new(struct admin_conn *conn, nghttp2_session **out);

#endif
