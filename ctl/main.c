/*
 * lbctl: the operator's command line for lbd.  Every subcommand but
 * `register` is one gRPC call to lbd's admin API (watch is a stream).
 *
 * Flags come from one settings table: the global rows (--admin, -o, ...,
 * each with an LBCTL_* variable) are parsed up to the subcommand, then the
 * subcommand's own rows are parsed together with the global rows again
 * (without defaults or environment, so nothing is reset), which lets global
 * flags also follow the subcommand: `lbctl backends web -o json`.
 *
 * Exit codes: 0 ok, 1 runtime failure (including any gRPC error status),
 * 2 usage error.  Errors are one line on stderr.
 */
#include "admin_client.h"
#include "lb_duration.h"
#include "lb_grpc_frame.h"
#include "lb_file.h"
#include "lb_secret.h"
#include "lb_settings.h"

#include "lb/v1/admin.pb-c.h"
#ifdef LBCTL_HAVE_REGISTER
#include "register.h"
#endif

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXIT_RUNTIME  1
#define EXIT_USAGE    2
#define MAX_FLAGS     20
#define WAIT_GRACE_MS 5000 /* the call's deadline beyond --timeout of drain --wait */

struct ctl_opts {
    /* global */
    char *admin;
    char *admin_token_file;
    char *admin_ca;
    char *output;
    int64_t rpc_timeout_ms;
    bool help;
    bool version;
    /* subcommands */
    bool wait;
    int64_t timeout_ms;
    bool local;
    bool clear;
};

#define ROW_HELP                                                                                   \
    {                                                                                              \
        "help", 'h', NULL, LB_SETTING_BOOL, offsetof(struct ctl_opts, help), 0, 0, NULL, NULL,     \
            NULL, "show help and exit"                                                             \
    }

static const struct lb_setting global_rows[] = {
    {"admin", 0, "LBCTL_ADMIN", LB_SETTING_STRING, offsetof(struct ctl_opts, admin), 0, 255,
     "127.0.0.1:9000", NULL, "ADDR", "lbd admin API address, HOST:PORT"},
    {"admin-token-file", 0, "LBCTL_ADMIN_TOKEN_FILE", LB_SETTING_STRING,
     offsetof(struct ctl_opts, admin_token_file), 0, 0, NULL, NULL, "FILE",
     "send the token on this file's first line (lbd --admin-token-file)"},
    {"admin-ca", 0, "LBCTL_ADMIN_CA", LB_SETTING_STRING, offsetof(struct ctl_opts, admin_ca), 0, 0,
     NULL, NULL, "FILE", "speak TLS, trusting the PEM CA in FILE for lbd's certificate"},
    {"output", 'o', "LBCTL_OUTPUT", LB_SETTING_STRING, offsetof(struct ctl_opts, output), 0, 0,
     "table", "table|json", "FORMAT", "output format: table or json"},
    {"rpc-timeout", 0, "LBCTL_RPC_TIMEOUT", LB_SETTING_DURATION,
     offsetof(struct ctl_opts, rpc_timeout_ms), 1, 3600 * 1000, "10s", NULL, "DURATION",
     "deadline of each call (not of watch)"},
    ROW_HELP,
    {"version", 0, NULL, LB_SETTING_BOOL, offsetof(struct ctl_opts, version), 0, 0, NULL, NULL,
     NULL, "print the version and exit"},
};
#define N_GLOBAL (sizeof(global_rows) / sizeof(global_rows[0]))

static const struct lb_setting row_wait = {
    "wait",
    0,
    NULL,
    LB_SETTING_BOOL,
    offsetof(struct ctl_opts, wait),
    0,
    0,
    NULL,
    NULL,
    NULL,
    "return once the backend has no active connections left"};
static const struct lb_setting row_timeout = {
    "timeout",          0,     NULL, LB_SETTING_DURATION, offsetof(struct ctl_opts, timeout_ms), 1,
    24LL * 3600 * 1000, "30s", NULL, "DURATION",          "with --wait: give up after this long"};
static const struct lb_setting row_local = {
    "local",
    0,
    NULL,
    LB_SETTING_BOOL,
    offsetof(struct ctl_opts, local),
    0,
    0,
    NULL,
    NULL,
    NULL,
    "change this lbd only (default: every replica, through etcd)"};
static const struct lb_setting row_clear = {
    "clear",
    0,
    NULL,
    LB_SETTING_BOOL,
    offsetof(struct ctl_opts, clear),
    0,
    0,
    NULL,
    NULL,
    NULL,
    "remove the weight override (back to the registered weight)"};
static const struct lb_setting row_help = ROW_HELP;

struct ctl {
    struct ctl_opts opts;
    struct lb_admin_client *client;
    bool json;
};

struct command {
    const char *name;
    const char *args; /* usage after the name */
    const char *summary;
    size_t min_args, max_args;
    const struct lb_setting *flags[4];
    int (*run)(struct ctl *ctl, char **args, size_t n);
};

static int cmd_pools(struct ctl *ctl, char **args, size_t n);
static int cmd_backends(struct ctl *ctl, char **args, size_t n);
static int cmd_drain(struct ctl *ctl, char **args, size_t n);
static int cmd_undrain(struct ctl *ctl, char **args, size_t n);
static int cmd_weight(struct ctl *ctl, char **args, size_t n);
static int cmd_health(struct ctl *ctl, char **args, size_t n);
static int cmd_watch(struct ctl *ctl, char **args, size_t n);
static int cmd_upgrade(struct ctl *ctl, char **args, size_t n);

static const struct command commands[] = {
    {"pools", "", "list pools with their listeners and connection counts", 0, 0, {NULL}, cmd_pools},
    {"backends", "[POOL]", "list backends (of every pool, or of POOL)", 0, 1, {NULL}, cmd_backends},
    {"drain",
     "POOL ID [--wait [--timeout 30s]] [--local]",
     "stop sending new connections to a backend",
     2,
     2,
     {&row_wait, &row_timeout, &row_local, NULL},
     cmd_drain},
    {"undrain",
     "POOL ID [--local]",
     "let a drained backend take new connections again",
     2,
     2,
     {&row_local, NULL},
     cmd_undrain},
    {"weight",
     "POOL ID N|--clear [--local]",
     "override a backend's weight (0..1000)",
     2,
     3,
     {&row_clear, &row_local, NULL},
     cmd_weight},
    {"health",
     "POOL ID up|down|auto [--local]",
     "force a backend's health, or give it back to the checks",
     3,
     3,
     {&row_local, NULL},
     cmd_health},
    {"watch", "[POOL]", "print pool events as they happen, until Ctrl-C", 0, 1, {NULL}, cmd_watch},
    {"upgrade",
     "",
     "start the lbd binary on disk, which takes over listeners and open connections "
     "(needs lbd --upgrade-socket)",
     0,
     0,
     {NULL},
     cmd_upgrade},
    {"register",
     "--etcd URL --pool P --id ID --addr HOST:PORT ...",
     "register this backend in etcd and keep it registered (see lbctl register --help)",
     0,
     0,
     {NULL},
     NULL},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage_overall(FILE *f)
{
    fprintf(f, "Usage: lbctl [FLAGS] COMMAND [ARGS]\n\nSteer a running lbd through its admin "
               "API.\n\nCommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nFlags (may also follow the command):\n");
    lb_settings_print_help(f, global_rows, N_GLOBAL);
    fprintf(f, "\nRun 'lbctl COMMAND --help' for a command's arguments and flags.\n"
               "Exit codes: 0 ok, 1 failure (including an error from lbd), 2 usage error.\n");
}

static void usage_command(FILE *f, const struct command *cmd)
{
    struct lb_setting rows[MAX_FLAGS];
    size_t n = 0;

    fprintf(f, "Usage: lbctl %s %s\n\n%c%s.\n", cmd->name, cmd->args,
            toupper((unsigned char)cmd->summary[0]), cmd->summary + 1);
    for (size_t i = 0; cmd->flags[i]; i++)
        rows[n++] = *cmd->flags[i];
    rows[n++] = row_help;
    fprintf(f, "\nFlags:\n");
    lb_settings_print_help(f, rows, n);
    fprintf(f, "\nGlobal flags: --admin ADDR, --admin-token-file FILE, --admin-ca FILE, "
               "-o table|json,\n--rpc-timeout DURATION (lbctl --help).\n");
}

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "lbctl: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, " (see lbctl %s --help)\n", cmd);
    else
        fprintf(stderr, " (see lbctl --help)\n");
    return EXIT_USAGE;
}

/* Prints a failed call's status in one line; returns the exit code. */
static int report_status(const struct ctl *ctl, const char *what, const struct lb_admin_status *st)
{
    if (st->code == LB_GRPC_UNAUTHENTICATED && !st->transport) {
        if (ctl->opts.admin_token_file)
            fprintf(stderr,
                    "lbctl: %s: lbd refused the admin token from %s (%s); pass "
                    "--admin-token-file with the token lbd was started with\n",
                    what, ctl->opts.admin_token_file, st->message[0] ? st->message : "rejected");
        else
            fprintf(stderr,
                    "lbctl: %s: lbd requires an admin token: pass --admin-token-file FILE "
                    "(or set LBCTL_ADMIN_TOKEN_FILE)\n",
                    what);
    } else if (st->transport)
        fprintf(stderr, "lbctl: %s\n", st->message);
    else if (st->message[0])
        fprintf(stderr, "lbctl: %s: %s (%s)\n", what, st->message, lb_grpc_status_name(st->code));
    else
        fprintf(stderr, "lbctl: %s failed: %s\n", what, lb_grpc_status_name(st->code));
    return EXIT_RUNTIME;
}

/* ---- output ---- */

#define TABLE_MAX_COLS 12

struct table {
    size_t cols;
    size_t rows;
    char **cells; /* rows * cols, owned */
    size_t width[TABLE_MAX_COLS];
};

static void table_init(struct table *t, const char *const *header, size_t cols)
{
    memset(t, 0, sizeof(*t));
    t->cols = cols;
    for (size_t i = 0; i < cols; i++)
        t->width[i] = strlen(header[i]);
}

static int table_add(struct table *t, char *const *row)
{
    char **cells = realloc(t->cells, (t->rows + 1) * t->cols * sizeof(*cells));

    if (!cells)
        return -ENOMEM;
    t->cells = cells;
    for (size_t i = 0; i < t->cols; i++) {
        char *v = strdup(row[i]);

        if (!v)
            v = strdup("?");
        cells[t->rows * t->cols + i] = v;
        if (v && strlen(v) > t->width[i])
            t->width[i] = strlen(v);
    }
    t->rows++;
    return 0;
}

static void table_print_row(const struct table *t, const char *const *row)
{
    for (size_t i = 0; i < t->cols; i++) {
        if (i + 1 == t->cols)
            printf("%s\n", row[i] ? row[i] : "");
        else
            printf("%-*s  ", (int)t->width[i], row[i] ? row[i] : "");
    }
}

static void table_print(struct table *t, const char *const *header)
{
    table_print_row(t, header);
    for (size_t r = 0; r < t->rows; r++)
        table_print_row(t, (const char *const *)&t->cells[r * t->cols]);
    for (size_t i = 0; i < t->rows * t->cols; i++)
        free(t->cells[i]);
    free(t->cells);
    t->cells = NULL;
}

static void print_json(json_object *o)
{
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

static const char *health_name(Lb__V1__HealthState h)
{
    return h == LB__V1__HEALTH_STATE__HEALTH_STATE_UP     ? "up"
           : h == LB__V1__HEALTH_STATE__HEALTH_STATE_DOWN ? "down"
                                                          : "unknown";
}

static const char *override_name(Lb__V1__HealthOverride o)
{
    return o == LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_FORCE_UP     ? "up"
           : o == LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_FORCE_DOWN ? "down"
                                                                      : "auto";
}

static const char *drain_name(const Lb__V1__Backend *b)
{
    return b->drained ? "drained" : b->drain ? "draining" : "-";
}

static bool has_weight_override(const Lb__V1__Backend *b)
{
    return b->weight_override_opt_case == LB__V1__BACKEND__WEIGHT_OVERRIDE_OPT_WEIGHT_OVERRIDE;
}

static json_object *backend_json(const Lb__V1__Backend *b)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "pool", json_object_new_string(b->pool));
    json_object_object_add(o, "id", json_object_new_string(b->id));
    json_object_object_add(o, "addr", json_object_new_string(b->addr));
    json_object_object_add(o, "zone", json_object_new_string(b->zone));
    json_object_object_add(o, "weight", json_object_new_int64(b->weight));
    json_object_object_add(o, "weight_override",
                           has_weight_override(b) ? json_object_new_int64(b->weight_override)
                                                  : NULL);
    json_object_object_add(o, "effective_weight", json_object_new_int64(b->effective_weight));
    json_object_object_add(o, "drain", json_object_new_boolean(b->drain));
    json_object_object_add(o, "drained", json_object_new_boolean(b->drained));
    json_object_object_add(o, "health", json_object_new_string(health_name(b->health)));
    json_object_object_add(o, "health_override",
                           json_object_new_string(override_name(b->health_override)));
    json_object_object_add(o, "active_connections",
                           json_object_new_int64((int64_t)b->active_connections));
    json_object_object_add(o, "total_connections",
                           json_object_new_int64((int64_t)b->total_connections));
    json_object_object_add(o, "connect_failures",
                           json_object_new_int64((int64_t)b->connect_failures));
    json_object_object_add(o, "bytes_in", json_object_new_int64((int64_t)b->bytes_in));
    json_object_object_add(o, "bytes_out", json_object_new_int64((int64_t)b->bytes_out));
    return o;
}

static const char *const backend_header[] = {"POOL",   "ID",    "ADDR",  "WEIGHT",
                                             "OVR",    "EFF",   "DRAIN", "HEALTH",
                                             "ACTIVE", "TOTAL", "FAILS", "ZONE"};
#define BACKEND_COLS (sizeof(backend_header) / sizeof(backend_header[0]))

static void backend_row(struct table *t, const Lb__V1__Backend *b)
{
    char weight[16], ovr[16], eff[16], health[32], active[24], total[24], fails[24];
    char *row[BACKEND_COLS];

    snprintf(weight, sizeof(weight), "%u", b->weight);
    if (has_weight_override(b))
        snprintf(ovr, sizeof(ovr), "%u", b->weight_override);
    else
        snprintf(ovr, sizeof(ovr), "-");
    snprintf(eff, sizeof(eff), "%u", b->effective_weight);
    /* An operator override decides routing whatever the checks say: show it. */
    if (b->health_override != LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_AUTO)
        snprintf(health, sizeof(health), "%s (forced)", override_name(b->health_override));
    else
        snprintf(health, sizeof(health), "%s", health_name(b->health));
    snprintf(active, sizeof(active), "%llu", (unsigned long long)b->active_connections);
    snprintf(total, sizeof(total), "%llu", (unsigned long long)b->total_connections);
    snprintf(fails, sizeof(fails), "%llu", (unsigned long long)b->connect_failures);
    row[0] = b->pool;
    row[1] = b->id;
    row[2] = b->addr;
    row[3] = weight;
    row[4] = ovr;
    row[5] = eff;
    row[6] = (char *)drain_name(b);
    row[7] = health;
    row[8] = active;
    row[9] = total;
    row[10] = fails;
    row[11] = b->zone[0] ? b->zone : "-";
    table_add(t, row);
}

static void print_backends(struct ctl *ctl, Lb__V1__Backend *const *items, size_t n, bool as_list)
{
    struct table t;

    if (ctl->json) {
        json_object *arr;

        if (!as_list && n == 1) {
            print_json(backend_json(items[0]));
            return;
        }
        arr = json_object_new_array();
        for (size_t i = 0; i < n; i++)
            json_object_array_add(arr, backend_json(items[i]));
        json_object *o = json_object_new_object();
        json_object_object_add(o, "backends", arr);
        print_json(o);
        return;
    }
    table_init(&t, backend_header, BACKEND_COLS);
    for (size_t i = 0; i < n; i++)
        backend_row(&t, items[i]);
    table_print(&t, backend_header);
}

/* ---- commands ---- */

static int unary(struct ctl *ctl, const char *what, const char *path, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *type, int64_t timeout_ms,
                 ProtobufCMessage **resp)
{
    struct lb_admin_status st;

    if (lb_admin_client_call(ctl->client, path, req, type, timeout_ms, resp, &st) != LB_GRPC_OK)
        return report_status(ctl, what, &st);
    return 0;
}

static int cmd_pools(struct ctl *ctl, char **args, size_t n)
{
    static const char *const header[] = {"POOL",     "LISTEN", "ALGORITHM", "BACKENDS",
                                         "ELIGIBLE", "ACTIVE", "TOTAL"};
    Lb__V1__ListPoolsRequest req = LB__V1__LIST_POOLS_REQUEST__INIT;
    Lb__V1__ListPoolsResponse *resp;
    ProtobufCMessage *m;
    int rc = unary(ctl, "pools", "/lb.v1.Admin/ListPools", &req.base,
                   &lb__v1__list_pools_response__descriptor, ctl->opts.rpc_timeout_ms, &m);

    if (rc)
        return rc;
    resp = (Lb__V1__ListPoolsResponse *)m;
    if (ctl->json) {
        json_object *arr = json_object_new_array(), *o = json_object_new_object();

        for (size_t i = 0; i < resp->n_pools; i++) {
            const Lb__V1__Pool *p = resp->pools[i];
            json_object *po = json_object_new_object();

            json_object_object_add(po, "name", json_object_new_string(p->name));
            json_object_object_add(po, "listen", json_object_new_string(p->listen));
            json_object_object_add(po, "algorithm", json_object_new_string(p->algorithm));
            json_object_object_add(po, "backends", json_object_new_int64(p->backends));
            json_object_object_add(po, "eligible", json_object_new_int64(p->eligible));
            json_object_object_add(po, "active_connections",
                                   json_object_new_int64((int64_t)p->active_connections));
            json_object_object_add(po, "total_connections",
                                   json_object_new_int64((int64_t)p->total_connections));
            json_object_array_add(arr, po);
        }
        json_object_object_add(o, "pools", arr);
        print_json(o);
    } else {
        struct table t;

        table_init(&t, header, 7);
        for (size_t i = 0; i < resp->n_pools; i++) {
            const Lb__V1__Pool *p = resp->pools[i];
            char backends[16], eligible[16], active[24], total[24];
            char *row[7] = {p->name, p->listen, p->algorithm, backends, eligible, active, total};

            snprintf(backends, sizeof(backends), "%u", p->backends);
            snprintf(eligible, sizeof(eligible), "%u", p->eligible);
            snprintf(active, sizeof(active), "%llu", (unsigned long long)p->active_connections);
            snprintf(total, sizeof(total), "%llu", (unsigned long long)p->total_connections);
            table_add(&t, row);
        }
        table_print(&t, header);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

static int cmd_upgrade(struct ctl *ctl, char **args, size_t n)
{
    Lb__V1__UpgradeRequest req = LB__V1__UPGRADE_REQUEST__INIT;
    ProtobufCMessage *m;
    int32_t pid;
    int rc = unary(ctl, "upgrade", "/lb.v1.Admin/Upgrade", &req.base,
                   &lb__v1__upgrade_response__descriptor, ctl->opts.rpc_timeout_ms, &m);

    if (rc)
        return rc;
    pid = ((Lb__V1__UpgradeResponse *)m)->new_pid;
    protobuf_c_message_free_unpacked(m, NULL);
    if (ctl->json) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "new_pid", json_object_new_int(pid));
        print_json(o);
    } else {
        printf("upgrade started: the new lbd is pid %d; it takes over once synced with etcd, "
               "and the old one exits when its connections have moved\n",
               (int)pid);
    }
    return 0;
}

static int cmd_backends(struct ctl *ctl, char **args, size_t n)
{
    Lb__V1__ListBackendsRequest req = LB__V1__LIST_BACKENDS_REQUEST__INIT;
    ProtobufCMessage *m;
    Lb__V1__ListBackendsResponse *resp;
    int rc;

    if (n == 1)
        req.pool = args[0];
    rc = unary(ctl, "backends", "/lb.v1.Admin/ListBackends", &req.base,
               &lb__v1__list_backends_response__descriptor, ctl->opts.rpc_timeout_ms, &m);
    if (rc)
        return rc;
    resp = (Lb__V1__ListBackendsResponse *)m;
    print_backends(ctl, resp->backends, resp->n_backends, true);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/* GetBackendResponse and the Set*Response types are { Backend backend = 1; }. */
struct backend_response {
    ProtobufCMessage base;
    Lb__V1__Backend *backend;
};

static int print_backend_response(struct ctl *ctl, ProtobufCMessage *m)
{
    struct backend_response *r = (struct backend_response *)m;

    if (r->backend)
        print_backends(ctl, &r->backend, 1, false);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

static Lb__V1__Scope scope_of(const struct ctl *ctl)
{
    return ctl->opts.local ? LB__V1__SCOPE__SCOPE_LOCAL : LB__V1__SCOPE__SCOPE_CLUSTER;
}

static int set_drain(struct ctl *ctl, char **args, bool drain)
{
    Lb__V1__SetDrainRequest req = LB__V1__SET_DRAIN_REQUEST__INIT;
    int64_t timeout = ctl->opts.rpc_timeout_ms;
    char what[300];
    ProtobufCMessage *m;
    int rc;

    req.pool = args[0];
    req.id = args[1];
    req.drain = drain;
    req.scope = scope_of(ctl);
    if (drain && ctl->opts.wait) {
        req.wait = true;
        req.wait_timeout_ms = (uint32_t)ctl->opts.timeout_ms;
        timeout += ctl->opts.timeout_ms + WAIT_GRACE_MS;
    }
    snprintf(what, sizeof(what), "%s %s/%s", drain ? "drain" : "undrain", args[0], args[1]);
    rc = unary(ctl, what, "/lb.v1.Admin/SetDrain", &req.base,
               &lb__v1__set_drain_response__descriptor, timeout, &m);
    return rc ? rc : print_backend_response(ctl, m);
}

static int cmd_drain(struct ctl *ctl, char **args, size_t n)
{
    if (!ctl->opts.wait && ctl->opts.timeout_ms != 30000)
        return usage_error("drain", "--timeout only makes sense with --wait");
    return set_drain(ctl, args, true);
}

static int cmd_undrain(struct ctl *ctl, char **args, size_t n)
{
    return set_drain(ctl, args, false);
}

static int cmd_weight(struct ctl *ctl, char **args, size_t n)
{
    Lb__V1__SetWeightRequest req = LB__V1__SET_WEIGHT_REQUEST__INIT;
    char what[300];
    ProtobufCMessage *m;
    int rc;

    if (ctl->opts.clear && n == 3)
        return usage_error("weight", "give either N or --clear, not both");
    if (!ctl->opts.clear && n != 3)
        return usage_error("weight", "expected POOL ID N, or POOL ID --clear");
    req.pool = args[0];
    req.id = args[1];
    req.scope = scope_of(ctl);
    if (ctl->opts.clear) {
        req.clear = true;
    } else {
        char *end;
        long w;

        errno = 0;
        w = strtol(args[2], &end, 10);
        if (errno || end == args[2] || *end || w < 0 || w > 1000)
            return usage_error("weight", "weight \"%s\" is not a whole number from 0 to 1000",
                               args[2]);
        req.weight_opt_case = LB__V1__SET_WEIGHT_REQUEST__WEIGHT_OPT_WEIGHT;
        req.weight = (uint32_t)w;
    }
    snprintf(what, sizeof(what), "weight %s/%s", args[0], args[1]);
    rc = unary(ctl, what, "/lb.v1.Admin/SetWeight", &req.base,
               &lb__v1__set_weight_response__descriptor, ctl->opts.rpc_timeout_ms, &m);
    return rc ? rc : print_backend_response(ctl, m);
}

static int cmd_health(struct ctl *ctl, char **args, size_t n)
{
    Lb__V1__SetHealthRequest req = LB__V1__SET_HEALTH_REQUEST__INIT;
    char what[300];
    ProtobufCMessage *m;
    int rc;

    if (strcmp(args[2], "up") == 0)
        req.health = LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_FORCE_UP;
    else if (strcmp(args[2], "down") == 0)
        req.health = LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_FORCE_DOWN;
    else if (strcmp(args[2], "auto") == 0)
        req.health = LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_AUTO;
    else
        return usage_error("health", "health must be up, down or auto, not \"%s\"", args[2]);
    req.pool = args[0];
    req.id = args[1];
    req.scope = scope_of(ctl);
    snprintf(what, sizeof(what), "health %s/%s", args[0], args[1]);
    rc = unary(ctl, what, "/lb.v1.Admin/SetHealth", &req.base,
               &lb__v1__set_health_response__descriptor, ctl->opts.rpc_timeout_ms, &m);
    return rc ? rc : print_backend_response(ctl, m);
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = 1;
}

static const char *event_type_name(Lb__V1__Event__Type t)
{
    switch (t) {
    case LB__V1__EVENT__TYPE__TYPE_BACKEND_ADDED:
        return "backend_added";
    case LB__V1__EVENT__TYPE__TYPE_BACKEND_CHANGED:
        return "backend_changed";
    case LB__V1__EVENT__TYPE__TYPE_BACKEND_REMOVED:
        return "backend_removed";
    case LB__V1__EVENT__TYPE__TYPE_POLICY_CHANGED:
        return "policy_changed";
    case LB__V1__EVENT__TYPE__TYPE_HEALTH_CHANGED:
        return "health_changed";
    case LB__V1__EVENT__TYPE__TYPE_DRAINED:
        return "drained";
    default:
        return "unknown";
    }
}

static int print_event(void *ud, const ProtobufCMessage *msg)
{
    const struct ctl *ctl = ud;
    const Lb__V1__Event *ev = (const Lb__V1__Event *)msg;

    if (ctl->json) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "type", json_object_new_string(event_type_name(ev->type)));
        json_object_object_add(o, "pool", json_object_new_string(ev->pool));
        json_object_object_add(o, "id", ev->id[0] ? json_object_new_string(ev->id) : NULL);
        json_object_object_add(o, "unix_ms", json_object_new_int64(ev->unix_ms));
        json_object_object_add(o, "detail", json_object_new_string(ev->detail));
        json_object_object_add(o, "backend", ev->backend ? backend_json(ev->backend) : NULL);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
    } else {
        time_t secs = (time_t)(ev->unix_ms / 1000);
        struct tm tm;
        char ts[32];

        gmtime_r(&secs, &tm);
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
        printf("%s.%03dZ %-15s %s%s%s", ts, (int)(ev->unix_ms % 1000), event_type_name(ev->type),
               ev->pool, ev->id[0] ? "/" : "", ev->id);
        if (ev->backend) {
            const Lb__V1__Backend *b = ev->backend;

            printf(" addr=%s eff=%u drain=%s health=%s active=%llu", b->addr, b->effective_weight,
                   drain_name(b), health_name(b->health),
                   (unsigned long long)b->active_connections);
        }
        if (ev->detail[0])
            printf(" %s", ev->detail);
        printf("\n");
    }
    fflush(stdout);
    return 0;
}

static int cmd_watch(struct ctl *ctl, char **args, size_t n)
{
    Lb__V1__WatchEventsRequest req = LB__V1__WATCH_EVENTS_REQUEST__INIT;
    struct lb_admin_status st;
    struct sigaction sa;
    int rc;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: let curl's poll wake up */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (n == 1)
        req.pool = args[0];
    rc = lb_admin_client_stream(ctl->client, "/lb.v1.Admin/WatchEvents", &req.base,
                                &lb__v1__event__descriptor, 0, print_event, ctl, &interrupted, &st);
    if (interrupted)
        return 0; /* Ctrl-C is how a watch ends */
    if (rc == LB_GRPC_OK) {
        fprintf(stderr, "lbctl: watch: lbd ended the event stream\n");
        return EXIT_RUNTIME;
    }
    return report_status(ctl, "watch", &st);
}

/* ---- main ---- */

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* Reads the token and checks the CA file, then makes the client.  Returns 0 or an exit code. */
static int client_open(struct ctl *ctl)
{
    struct lb_admin_client_options co = {.addr = ctl->opts.admin, .ca_file = ctl->opts.admin_ca};
    char *token = NULL, *err = NULL;
    int rc;

    if (ctl->opts.admin_token_file) {
        bool shared = false;

        rc = lb_secret_read(ctl->opts.admin_token_file, "admin token file", &token, &shared, &err);
        if (rc < 0) {
            fprintf(stderr, "lbctl: %s\n", err ? err : strerror(-rc));
            free(err);
            return EXIT_RUNTIME;
        }
        if (shared)
            fprintf(stderr,
                    "lbctl: warning: admin token file %s is readable by every user; "
                    "chmod o-rwx it\n",
                    ctl->opts.admin_token_file);
    }
    if (ctl->opts.admin_ca) {
        if (lb_file_check_readable(ctl->opts.admin_ca, "--admin-ca", &err) < 0) {
            fprintf(stderr, "lbctl: %s\n", err ? err : "--admin-ca: cannot read");
            free(err);
            lb_secret_free(token);
            return EXIT_RUNTIME;
        }
    }
    co.token = token;
    rc = lb_admin_client_new(&co, &ctl->client, &err);
    lb_secret_free(token);
    if (rc == -EINVAL) {
        rc = usage_error(NULL, "%s", err);
    } else if (rc < 0) {
        fprintf(stderr, "lbctl: out of memory\n");
        rc = EXIT_RUNTIME;
    }
    free(err);
    return rc;
}

static int run_register(int argc, char **argv)
{
#ifdef LBCTL_HAVE_REGISTER
    return lbctl_register_main(argc, argv);
#else
    fprintf(stderr, "lbctl: register is not built into this lbctl\n");
    return EXIT_RUNTIME;
#endif
}

int main(int argc, char **argv)
{
    struct ctl ctl;
    struct lb_setting rows[MAX_FLAGS];
    const struct command *cmd;
    char **pos = NULL, **sub_pos = NULL, *err = NULL;
    size_t npos = 0, nsub = 0, nrows = 0;
    int rc;

    memset(&ctl, 0, sizeof(ctl));
    rc = lb_settings_parse(global_rows, N_GLOBAL, &ctl.opts, argc, argv,
                           LB_SETTINGS_STOP_AT_POSITIONAL, &pos, &npos, &err);
    if (rc < 0) {
        rc = usage_error(NULL, "%s", err ? err : "cannot read flags");
        goto out;
    }
    if (ctl.opts.version) {
        printf("lbctl %s\n", LB_VERSION);
        rc = 0;
        goto out;
    }
    if (npos > 0 && strcmp(pos[0], "help") == 0) {
        cmd = npos > 1 ? find_command(pos[1]) : NULL;
        if (cmd)
            usage_command(stdout, cmd);
        else
            usage_overall(stdout);
        rc = npos > 1 && !cmd ? usage_error(NULL, "unknown command \"%s\"", pos[1]) : 0;
        goto out;
    }
    if (ctl.opts.help) {
        usage_overall(stdout);
        rc = 0;
        goto out;
    }
    if (npos == 0) {
        rc = usage_error(NULL, "no command given");
        goto out;
    }
    cmd = find_command(pos[0]);
    if (!cmd) {
        rc = usage_error(NULL, "unknown command \"%s\"", pos[0]);
        goto out;
    }
    if (!cmd->run) {
        /* register parses its own flags: hand it everything after the word */
        rc = run_register((int)npos, pos);
        goto out;
    }

    /* The command's rows plus the global ones, without defaults or env. */
    for (size_t i = 0; cmd->flags[i]; i++)
        rows[nrows++] = *cmd->flags[i];
    for (size_t i = 0; i < N_GLOBAL; i++) {
        rows[nrows] = global_rows[i];
        rows[nrows].def = NULL;
        rows[nrows].env = NULL;
        nrows++;
    }
    rc = lb_settings_parse(rows, nrows, &ctl.opts, (int)npos, pos, 0, &sub_pos, &nsub, &err);
    if (rc < 0) {
        rc = usage_error(cmd->name, "%s: %s", cmd->name, err ? err : "cannot read flags");
        goto out;
    }
    if (ctl.opts.help) {
        usage_command(stdout, cmd);
        rc = 0;
        goto out;
    }
    if (nsub < cmd->min_args || nsub > cmd->max_args) {
        rc = usage_error(cmd->name, "%s: expected %s%s", cmd->name,
                         cmd->args[0] ? cmd->args : "no arguments",
                         nsub > cmd->max_args ? ", got more" : "");
        goto out;
    }
    ctl.json = strcmp(ctl.opts.output, "json") == 0;
    free(err);
    err = NULL;
    rc = client_open(&ctl);
    if (rc == 0)
        rc = cmd->run(&ctl, sub_pos, nsub);
out:
    lb_admin_client_free(ctl.client);
    /* Only the global rows own memory (the command rows are flags and durations). */
    lb_settings_free(global_rows, N_GLOBAL, &ctl.opts);
    free(err);
    free(sub_pos);
    free(pos);
    return rc;
}
