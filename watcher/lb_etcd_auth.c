/*
 * Credentials file, authenticate body and token.  The request body is
 * written by hand rather than through json-c so that the one buffer that
 * holds the password is ours to wipe.
 */
#include "lb_etcd_auth.h"
#include "lb_error.h"
#include "lb_etcd_json.h"
#include "lb_file.h"
#include "lb_secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool is_user_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != ':';
}

int lb_etcd_creds_parse(const char *text, size_t len, struct lb_etcd_creds *out, char **err)
{
    const char *colon;
    size_t user_len, pass_len;

    memset(out, 0, sizeof(*out));
    /* one trailing line end is the editor's, not the password's */
    if (len > 0 && text[len - 1] == '\n')
        len--;
    if (len > 0 && text[len - 1] == '\r')
        len--;
    if (len == 0)
        return lb_error_set(err, -EINVAL, "is empty; write \"user:password\" on one line");
    colon = memchr(text, ':', len);
    if (!colon)
        return lb_error_set(err, -EINVAL, "holds no ':'; write \"user:password\" on one line");
    user_len = (size_t)(colon - text);
    pass_len = len - user_len - 1;
    if (user_len == 0)
        return lb_error_set(err, -EINVAL, "has no user name before the ':'");
    if (user_len >= LB_ETCD_USER_MAX)
        return lb_error_set(err, -EINVAL, "has a user name longer than %d bytes",
                            LB_ETCD_USER_MAX - 1);
    for (size_t i = 0; i < user_len; i++)
        if (!is_user_char((unsigned char)text[i]))
            return lb_error_set(err, -EINVAL,
                                "has a user name with a space or a control character");
    if (pass_len == 0)
        return lb_error_set(err, -EINVAL, "has no password after the ':'");
    if (pass_len >= LB_ETCD_PASSWORD_MAX)
        return lb_error_set(err, -EINVAL, "has a password longer than %d bytes",
                            LB_ETCD_PASSWORD_MAX - 1);
    for (size_t i = 0; i < pass_len; i++) {
        unsigned char c = (unsigned char)colon[1 + i];

        if (c < 0x20 || c == 0x7f)
            return lb_error_set(err, -EINVAL,
                                c == '\n' ? "holds more than one line; write \"user:password\" "
                                            "on one line"
                                          : "has a control character in the password");
    }
    memcpy(out->user, text, user_len);
    memcpy(out->password, colon + 1, pass_len);
    return 0;
}

int lb_etcd_creds_load(const char *path, struct lb_etcd_creds *out, bool *shared, char **err)
{
    char buf[LB_ETCD_CREDS_FILE_MAX + 1];
    size_t len = 0;
    char *why = NULL;
    int fd, rc = 0;

    memset(out, 0, sizeof(*out));
    /* A regular file, opened without blocking; tells who may read it (lb_secret.h). */
    fd = lb_file_open(path, "--etcd-user-file", shared, &why);
    if (fd < 0) {
        if (fd == -EINVAL && why) /* not a regular file: why says what it is */
            rc = lb_error_set(err, fd, "%s", why);
        else
            rc = lb_error_set(err, fd, "cannot read --etcd-user-file %s: %s", path, strerror(-fd));
        free(why);
        return rc;
    }
    while (len < sizeof(buf)) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = lb_error_set(err, -errno, "cannot read --etcd-user-file %s: %s", path,
                              strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (len > LB_ETCD_CREDS_FILE_MAX) {
        rc = lb_error_set(err, -E2BIG, "--etcd-user-file %s is larger than %d bytes", path,
                          LB_ETCD_CREDS_FILE_MAX);
        goto out;
    }
    rc = lb_etcd_creds_parse(buf, len, out, &why);
    if (rc)
        lb_error_set(err, rc, "--etcd-user-file %s %s", path, why ? why : "cannot be read");
out:
    explicit_bzero(buf, sizeof(buf));
    free(why);
    close(fd);
    return rc;
}

void lb_etcd_creds_wipe(struct lb_etcd_creds *c)
{
    explicit_bzero(c, sizeof(*c));
}

/* Appends `s` as a JSON string body (no quotes) at *o; the caller sized buf for 6x. */
static void json_escape(const char *s, char *buf, size_t *o)
{
    static const char hex[] = "0123456789abcdef";

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            buf[(*o)++] = '\\';
            buf[(*o)++] = (char)*p;
        } else if (*p < 0x20) {
            buf[(*o)++] = '\\';
            buf[(*o)++] = 'u';
            buf[(*o)++] = '0';
            buf[(*o)++] = '0';
            buf[(*o)++] = hex[*p >> 4];
            buf[(*o)++] = hex[*p & 15];
        } else {
            buf[(*o)++] = (char)*p;
        }
    }
}

int lb_etcd_auth_request(const struct lb_etcd_creds *c, char **out)
{
    static const char a[] = "{\"name\":\"", b[] = "\",\"password\":\"", z[] = "\"}";
    size_t cap =
        sizeof(a) + sizeof(b) + sizeof(z) +
        6 * (strnlen(c->user, LB_ETCD_USER_MAX) + strnlen(c->password, LB_ETCD_PASSWORD_MAX));
    size_t o = 0;
    char *buf = malloc(cap);

    *out = NULL;
    if (!buf)
        return -ENOMEM;
    memcpy(buf, a, sizeof(a) - 1);
    o += sizeof(a) - 1;
    json_escape(c->user, buf, &o);
    memcpy(buf + o, b, sizeof(b) - 1);
    o += sizeof(b) - 1;
    json_escape(c->password, buf, &o);
    memcpy(buf + o, z, sizeof(z));
    *out = buf;
    return 0;
}

void lb_etcd_auth_body_free(char *body)
{
    if (!body)
        return;
    explicit_bzero(body, strlen(body));
    free(body);
}

int lb_etcd_auth_parse_token(const char *body, size_t len, char *buf, char **err)
{
    json_object *root = NULL, *token = NULL;
    const char *s;
    size_t n;
    int rc;

    buf[0] = '\0';
    rc = lb_etcd_json_parse(body, len, &root, err);
    if (rc)
        return rc;
    if (!json_object_is_type(root, json_type_object) ||
        !json_object_object_get_ex(root, "token", &token) || !token ||
        !json_object_is_type(token, json_type_string)) {
        rc = lb_error_set(err, -EINVAL, "etcd's authenticate answer holds no token");
        goto out;
    }
    s = json_object_get_string(token);
    n = (size_t)json_object_get_string_len(token);
    if (n == 0 || n >= LB_ETCD_TOKEN_MAX) {
        rc = lb_error_set(err, -EINVAL, "etcd's token is empty or longer than %d bytes",
                          LB_ETCD_TOKEN_MAX - 1);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c <= 0x20 || c >= 0x7f) {
            rc = lb_error_set(err, -EINVAL, "etcd's token holds a character a header cannot");
            goto out;
        }
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
out:
    json_object_put(root);
    return rc;
}

bool lb_etcd_auth_is_token_error(const char *message)
{
    return message &&
           (strstr(message, "invalid auth token") || strstr(message, "user name is empty"));
}
