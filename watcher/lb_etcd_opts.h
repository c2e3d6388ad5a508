/*
 * The etcd client's settings, one group for lbd and `lbctl register`: the
 * same flags (--etcd, --etcd-ca, --etcd-cert, --etcd-key, --etcd-user-file)
 * with the same help, the same checks of the endpoints, and the same set-up
 * of the client (TLS files, the credentials read once and wiped, a warning
 * when everyone may read them).  Each program puts LB_ETCD_SETTINGS() in its
 * settings table with its own environment prefix ("LBD_", "LBCTL_").
 */
#ifndef LB_ETCD_OPTS_H
#define LB_ETCD_OPTS_H

#include "lb_settings.h"

#include <stddef.h>

struct ev_loop;
struct lb_etcd_http;

#define LB_ETCD_ENDPOINTS_MAX 16

struct lb_etcd_opts {
    struct lb_strlist etcd; /* --etcd: URLs, each flag possibly a comma-separated list */
    char *ca_file;
    char *cert_file;
    char *key_file;
    char *user_file;
};

/* The settings rows of struct lb_etcd_opts MEMBER inside TYPE; ENV is the prefix of the variables.
 */
#define LB_ETCD_SETTINGS(ENV, TYPE, MEMBER)                                                        \
    {"etcd",                                                                                       \
     0,                                                                                            \
     ENV "ETCD",                                                                                   \
     LB_SETTING_LIST,                                                                              \
     offsetof(TYPE, MEMBER.etcd),                                                                  \
     0,                                                                                            \
     0,                                                                                            \
     "http://127.0.0.1:2379",                                                                      \
     NULL,                                                                                         \
     "URL[,URL...]",                                                                               \
     "etcd endpoints (v3 HTTP/JSON gateway), tried in turn"},                                      \
        {"etcd-ca",                                                                                \
         0,                                                                                        \
         ENV "ETCD_CA",                                                                            \
         LB_SETTING_STRING,                                                                        \
         offsetof(TYPE, MEMBER.ca_file),                                                           \
         0,                                                                                        \
         0,                                                                                        \
         NULL,                                                                                     \
         NULL,                                                                                     \
         "FILE",                                                                                   \
         "CA bundle (PEM) that signs etcd's certificate, for https:// endpoints (default: the "    \
         "system's)"},                                                                             \
        {"etcd-cert",                                                                              \
         0,                                                                                        \
         ENV "ETCD_CERT",                                                                          \
         LB_SETTING_STRING,                                                                        \
         offsetof(TYPE, MEMBER.cert_file),                                                         \
         0,                                                                                        \
         0,                                                                                        \
         NULL,                                                                                     \
         NULL,                                                                                     \
         "FILE",                                                                                   \
         "client certificate (PEM) for an etcd started with "                                      \
         "--client-cert-auth"},                                                                    \
        {"etcd-key",                                                                               \
         0,                                                                                        \
         ENV "ETCD_KEY",                                                                           \
         LB_SETTING_STRING,                                                                        \
         offsetof(TYPE, MEMBER.key_file),                                                          \
         0,                                                                                        \
         0,                                                                                        \
         NULL,                                                                                     \
         NULL,                                                                                     \
         "FILE",                                                                                   \
         "private key (PEM) of --etcd-cert"},                                                      \
    {                                                                                              \
        "etcd-user-file", 0, ENV "ETCD_USER_FILE", LB_SETTING_STRING,                              \
            offsetof(TYPE, MEMBER.user_file), 0, 0, NULL, NULL, "FILE",                            \
            "file holding USER:PASSWORD on one line, to log in to etcd (not readable by "          \
            "everyone)"                                                                            \
    }

struct lb_etcd_endpoints {
    char *v[LB_ETCD_ENDPOINTS_MAX]; /* "http://host:port", no trailing '/' */
    size_t n;
};

/*
 * Splits every --etcd value on ',' and checks each URL (http:// or
 * https://, at most 512 bytes, trailing '/' dropped).  Returns 0 with at
 * least one endpoint in *out (free with lb_etcd_endpoints_free), or -EINVAL
 * / -ENOMEM with *err a sentence naming the flag.
 */
int lb_etcd_opts_endpoints(const struct lb_etcd_opts *o, struct lb_etcd_endpoints *out, char **err);
void lb_etcd_endpoints_free(struct lb_etcd_endpoints *e);

/*
 * Makes the etcd client of o on `loop` (NULL: for blocking calls only):
 * checks the TLS files, reads the credentials file (warning under log_sub
 * when everyone may read it, and when TLS files are given for http://
 * endpoints only).  Returns 0 with *out, or a negative errno with *err.
 */
int lb_etcd_opts_client(const struct lb_etcd_opts *o, const struct lb_etcd_endpoints *endpoints,
                        struct ev_loop *loop, const char *log_sub, struct lb_etcd_http **out,
                        char **err);

/*
 * SIGHUP: reads o's credentials file again into h (the next call logs in
 * with them) and has the next call open a new connection, so rotated TLS
 * files take effect.  Returns 0, or a negative errno with *err when the new
 * file is unusable: h keeps the credentials it had.
 */
int lb_etcd_opts_reload(const struct lb_etcd_opts *o, struct lb_etcd_http *h, const char *log_sub,
                        char **err);

#endif
