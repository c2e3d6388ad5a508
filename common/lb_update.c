/*
 * The typed pool updates between discovery and the registry (lb_update.h):
 * the pool policy's defaults, the algorithms' names and the name grammar,
 * each written in one place.
 */
#include "lb_update.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void lb_pool_policy_defaults(struct lb_pool_policy *p)
{
    memset(p, 0, sizeof(*p));
    p->algorithm = LB_ALGO_WRR;
    p->health.type = LB_CHECK_TCP;
    strcpy(p->health.path, "/healthz");
    p->health.interval_ms = 2000;
    p->health.timeout_ms = 1000;
    p->health.rise = 2;
    p->health.fall = 3;
    p->connect_timeout_ms = 3000;
    p->idle_timeout_ms = 3600 * 1000;
    p->retries = 2;
    p->max_conns = 0;
    p->slow_start_ms = 0;
    p->drain_timeout_ms = 0;
    p->proxy_protocol = LB_PROXY_NONE;
    p->panic_threshold = 50;
    p->zone_affinity = 0;
    p->queue_timeout_ms = 0;
}

const char *lb_algorithm_name(enum lb_algorithm algorithm)
{
    static const char *const names[] = {
        [LB_ALGO_WRR] = "wrr",
        [LB_ALGO_LEASTCONN] = "leastconn",
        [LB_ALGO_P2C] = "p2c",
        [LB_ALGO_MAGLEV] = "maglev",
    };

    if ((unsigned)algorithm < sizeof(names) / sizeof(names[0]))
        return names[algorithm];
    return "unknown";
}

static bool is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

bool lb_name_is_valid(const char *name, size_t len)
{
    if (!name || len == 0 || len >= LB_NAME_MAX)
        return false;
    if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
        return false;
    for (size_t i = 0; i < len; i++)
        if (!is_name_char((unsigned char)name[i]))
            return false;
    return true;
}

void lb_saved_view_free(struct lb_saved_view *v)
{
    for (size_t i = 0; i < v->n_keys; i++)
        free((void *)v->keys[i].key);
    free(v->keys);
    v->keys = NULL;
    v->n_keys = 0;
}

int lb_saved_view_add(struct lb_saved_view *v, size_t cap, const struct lb_watcher_kv *kv)
{
    struct lb_watcher_kv *slot;
    char *block;

    if (v->n_keys >= cap)
        return -ENOSPC;
    block = malloc(kv->key_len + kv->value_len + 1);
    if (!block)
        return -ENOMEM;
    memcpy(block, kv->key, kv->key_len);
    if (kv->value_len)
        memcpy(block + kv->key_len, kv->value, kv->value_len);
    block[kv->key_len + kv->value_len] = '\0';
    slot = &v->keys[v->n_keys++];
    slot->key = block;
    slot->key_len = kv->key_len;
    slot->value = block + kv->key_len;
    slot->value_len = kv->value_len;
    slot->mod_revision = kv->mod_revision;
    return 0;
}
