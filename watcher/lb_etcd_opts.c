/*
 * The etcd client settings group (lb_etcd_opts.h): endpoint checks and the
 * client's set-up, shared by lbd's watcher and lbctl register.
 */
#include "lb_etcd_opts.h"
#include "lb_addr.h"
#include "lb_error.h"
#include "lb_etcd_auth.h"
#include "lb_etcd_http.h"
#include "lb_log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define ENDPOINT_MAX_LEN 512

void lb_etcd_endpoints_free(struct lb_etcd_endpoints *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i]);
    e->n = 0;
}

/*
 * A port, when the URL gives one, is 1..65535 in digits alone: the host and
 * port (hlen bytes at host) are checked as any other address of lbd's.
 * Without a port the scheme's own applies, as for curl.
 */
static int endpoint_check_port(const char *url, size_t len, const char *host, size_t hlen,
                               char **err)
{
    const char *bracket = memchr(host, ']', hlen), *why = NULL;
    const char *from = bracket ? bracket : host;
    struct lb_hostport hp;
    char text[ENDPOINT_MAX_LEN + 1];

    if (!memchr(from, ':', hlen - (size_t)(from - host)) && !(host[0] == '[' && !bracket))
        return 0; /* no port given */
    memcpy(text, host, hlen);
    text[hlen] = '\0';
    if (lb_addr_parse(text, false, &hp, &why) == 0)
        return 0;
    return lb_error_set(err, -EINVAL, "--etcd: \"%.*s\": %s (e.g. http://127.0.0.1:2379)",
                        (int)(len > 80 ? 80 : len), url, why);
}

/*
 * What follows the scheme must be a host and port alone.  A user name or
 * password in the URL is refused without echoing it: lbd would not log in
 * with it, and the URL shows in logs, in --check and on /metrics.  A path,
 * query or fragment is refused too: lbd appends the gateway's own paths.
 */
static int endpoint_check_authority(const char *url, size_t len, char **err)
{
    int rc;
    size_t scheme = strncmp(url, "https://", 8) == 0 ? 8 : 7;
    const char *host = url + scheme;
    size_t n = len - scheme, end = strcspn(host, "/?#");

    if (end > n)
        end = n;
    if (memchr(host, '@', end))
        return lb_error_set(err, -EINVAL,
                            "--etcd: a user name or password in the URL is not used and would "
                            "show in logs and metrics; give %.*s<host:port> and put the user in "
                            "--etcd-user-file",
                            (int)scheme, url);
    if (end == 0)
        return lb_error_set(err, -EINVAL, "--etcd: \"%.*s\" has no host (e.g. %.*s127.0.0.1:2379)",
                            (int)(len > 80 ? 80 : len), url, (int)scheme, url);
    rc = endpoint_check_port(url, len, host, end, err);
    if (rc)
        return rc;
    while (end < n && host[end] == '/')
        end++; /* a trailing slash is no path */
    if (end < n)
        return lb_error_set(err, -EINVAL,
                            "--etcd: \"%.*s\": give the scheme, host and port alone (e.g. "
                            "%.*s127.0.0.1:2379); lbd adds the gateway's paths",
                            (int)(len > 80 ? 80 : len), url, (int)scheme, url);
    return 0;
}

/* Adds one URL (len bytes at url) to out.  Returns 0, or a negative errno with *err. */
static int endpoint_add(struct lb_etcd_endpoints *out, const char *url, size_t len, char **err)
{
    int rc;

    if (len == 0 || len > ENDPOINT_MAX_LEN ||
        (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        return lb_error_set(err, -EINVAL,
                            "--etcd: \"%.*s\" is not an http:// or https:// URL (e.g. "
                            "http://127.0.0.1:2379)",
                            (int)(len > 80 ? 80 : len), url);
    rc = endpoint_check_authority(url, len, err);
    if (rc)
        return rc;
    while (len > 0 && url[len - 1] == '/')
        len--; /* paths are appended to it */
    if (out->n == LB_ETCD_ENDPOINTS_MAX)
        return lb_error_set(err, -EINVAL, "--etcd: at most %d endpoints", LB_ETCD_ENDPOINTS_MAX);
    out->v[out->n] = strndup(url, len);
    if (!out->v[out->n])
        return lb_error_set(err, -ENOMEM, "out of memory");
    out->n++;
    return 0;
}

int lb_etcd_opts_endpoints(const struct lb_etcd_opts *o, struct lb_etcd_endpoints *out, char **err)
{
    int rc = 0;

    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < o->etcd.n && !rc; i++) {
        const char *s = o->etcd.v[i];

        while (*s && !rc) {
            size_t len = strcspn(s, ",");

            if (len)
                rc = endpoint_add(out, s, len, err);
            s += len;
            if (*s == ',')
                s++;
        }
    }
    if (!rc && out->n == 0)
        rc = lb_error_set(err, -EINVAL,
                          "--etcd: give at least one URL, e.g. "
                          "http://127.0.0.1:2379");
    if (rc)
        lb_etcd_endpoints_free(out);
    return rc;
}

int lb_etcd_opts_client(const struct lb_etcd_opts *o, const struct lb_etcd_endpoints *endpoints,
                        struct ev_loop *loop, const char *log_sub, struct lb_etcd_http **out,
                        char **err)
{
    struct lb_etcd_http_config hc = {
        .ca_file = o->ca_file,
        .cert_file = o->cert_file,
        .key_file = o->key_file,
    };
    struct lb_etcd_creds creds;
    bool shared = false, any_https = false;
    int rc = 0;

    memset(&creds, 0, sizeof(creds));
    if (o->user_file && o->user_file[0]) {
        rc = lb_etcd_creds_load(o->user_file, &creds, &shared, err);
        if (rc)
            goto out;
        if (shared)
            LB_WARN(log_sub,
                    "msg=\"the etcd credentials file is readable by every user; "
                    "chmod o-rwx it\" file=%s",
                    o->user_file);
        hc.creds = &creds;
    }
    rc = lb_etcd_http_new(loop, &hc, out, err);
    if (rc)
        goto out;
    for (size_t i = 0; endpoints && i < endpoints->n; i++)
        any_https |= strncmp(endpoints->v[i], "https://", 8) == 0;
    if (endpoints && !any_https && (o->ca_file || o->cert_file))
        LB_WARN(log_sub, "msg=\"TLS files given but no etcd endpoint is https://; they are "
                         "not used\"");
out:
    lb_etcd_creds_wipe(&creds);
    return rc;
}

int lb_etcd_opts_reload(const struct lb_etcd_opts *o, struct lb_etcd_http *h, const char *log_sub,
                        char **err)
{
    struct lb_etcd_creds creds;
    bool shared = false;
    int rc = 0;

    memset(&creds, 0, sizeof(creds));
    if (o->user_file && o->user_file[0]) {
        /* A bad new file leaves the old credentials in place. */
        rc = lb_etcd_creds_load(o->user_file, &creds, &shared, err);
        if (rc)
            goto out;
        if (shared)
            LB_WARN(log_sub,
                    "msg=\"the etcd credentials file is readable by every user; "
                    "chmod o-rwx it\" file=%s",
                    o->user_file);
        lb_etcd_http_set_creds(h, &creds);
    }
    if (o->ca_file || o->cert_file)
        lb_etcd_http_renew_tls(h);
out:
    lb_etcd_creds_wipe(&creds);
    return rc;
}
