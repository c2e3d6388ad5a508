/*
 * etcd users, as lbd and `lbctl register` log in: the credentials file and
 * the body and answer of `POST /v3/auth/authenticate`.  Pure: no I/O but
 * reading the file, so the tests and the fuzzer drive it directly.
 *
 * Credentials come from a file holding "user:password" on one line (a
 * Kubernetes secret mounted as a file, a systemd credential), named by
 * --etcd-user-file or its environment variable.  Never from a flag value or
 * an environment variable holding the password itself: both show in `ps`
 * (`ps e` prints the environment), a file with mode 0600 does not.  No
 * message made here quotes the password, and lb_etcd_creds_wipe() clears
 * it from memory.
 *
 * etcd answers with a token that every later request carries, raw (no
 * "Bearer "), in the Authorization header.  A token is only accepted when
 * it is made of printable non-space ASCII, so it can never break a header.
 */
#ifndef LB_ETCD_AUTH_H
#define LB_ETCD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#define LB_ETCD_USER_MAX       128  /* with the NUL */
#define LB_ETCD_PASSWORD_MAX   512  /* with the NUL */
#define LB_ETCD_CREDS_FILE_MAX 4096 /* bytes read from a credentials file */
#define LB_ETCD_TOKEN_MAX      1024 /* with the NUL */

#define LB_ETCD_PATH_AUTHENTICATE "/v3/auth/authenticate"

struct lb_etcd_creds {
    char user[LB_ETCD_USER_MAX];
    char password[LB_ETCD_PASSWORD_MAX];
};

/*
 * Reads the text of a credentials file: "user:password", split at the first
 * ':', optionally ended by "\n" or "\r\n".  The user name is printable
 * ASCII without spaces; the password may hold any byte but control
 * characters (spaces and further ':' included).  Returns 0, or -EINVAL with
 * *err (malloc'd) saying what is wrong without quoting the password.
 */
int lb_etcd_creds_parse(const char *text, size_t len, struct lb_etcd_creds *out, char **err);

/*
 * Reads and parses the file at `path` (at most LB_ETCD_CREDS_FILE_MAX
 * bytes, a regular file).  Returns 0, with *shared set when the file is
 * readable by group or others, or a negative errno with *err naming the
 * --etcd-user-file and what went wrong.
 */
int lb_etcd_creds_load(const char *path, struct lb_etcd_creds *out, bool *shared, char **err);

/* Overwrites the password and user name with zeros. */
void lb_etcd_creds_wipe(struct lb_etcd_creds *c);

/*
 * The authenticate body, {"name":"...","password":"..."}.  Returns 0 with a
 * malloc'd string the caller wipes (lb_etcd_auth_body_free()), or -ENOMEM.
 */
int lb_etcd_auth_request(const struct lb_etcd_creds *c, char **out);
void lb_etcd_auth_body_free(char *body);

/*
 * Reads an authenticate answer and copies its token into buf (size
 * LB_ETCD_TOKEN_MAX).  Returns 0, or -EINVAL with *err when there is no
 * token or it holds anything but printable non-space ASCII.
 */
int lb_etcd_auth_parse_token(const char *body, size_t len, char *buf, char **err);

/*
 * True when etcd's error message (unary error body or a watch's
 * cancel_reason) says the request lacked a valid token: "invalid auth
 * token" (expired, or revoked by a password change) or "user name is
 * empty" (no token).  Those are cured by logging in again.
 */
bool lb_etcd_auth_is_token_error(const char *message);

#endif
