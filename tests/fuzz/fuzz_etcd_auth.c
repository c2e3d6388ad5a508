/*
 * Fuzzes what an etcd login reads from outside: the credentials file (the
 * first byte 0) and etcd's authenticate answer (any other first byte).  A
 * credentials file that parses must make a login body that is JSON and
 * holds the same user and password; a token that is accepted must be fit
 * for a header line.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lb_etcd_auth.h"
#include "lb_etcd_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data + 1;
    struct lb_etcd_creds c;
    char token[LB_ETCD_TOKEN_MAX], *err = NULL, *body = NULL;
    json_object *root = NULL, *v = NULL;

    if (size < 1)
        return 0;
    size--;
    if (data[0] == 0) {
        if (lb_etcd_creds_parse(text, size, &c, &err) == 0) {
            if (c.user[0] == '\0' || c.password[0] == '\0' || lb_etcd_auth_request(&c, &body) != 0)
                abort();
            if (lb_etcd_json_parse(body, strlen(body), &root, NULL) != 0 ||
                !json_object_object_get_ex(root, "name", &v) ||
                strcmp(json_object_get_string(v), c.user) != 0 ||
                !json_object_object_get_ex(root, "password", &v) ||
                strcmp(json_object_get_string(v), c.password) != 0)
                abort();
            json_object_put(root);
            lb_etcd_auth_body_free(body);
        }
    } else if (lb_etcd_auth_parse_token(text, size, token, &err) == 0) {
        for (const char *p = token; *p; p++)
            if (*p <= ' ' || *p >= 0x7f)
                abort();
    }
    free(err);
    return 0;
}
