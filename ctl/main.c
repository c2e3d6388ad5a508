/*
 * lbctl: the operator's command line for lbd.  Every subcommand but
 * `register` and `policy` (which speak to etcd) is one gRPC call to lbd's
 * admin API (watch is a stream).
 *
 * Flags come from one settings table: the global rows (--admin, -o, ...,
 * each with an LBCTL_* variable) are parsed up to the subcommand, then the
 * subcommand's own rows are parsed together with the global rows again
 * (without defaults or environment, so nothing is reset), which lets global
 * flags also follow the subcommand: `lbctl backends web -o json`.
 *
 * Exit codes: 0 ok, 1 runtime failure (including any gRPC error status),
 * 2 usage error.  Errors are one line on stderr.
 *
 * What an operator waits on shows progress: `drain --wait` polls the
 * backend and shows its active connections falling (one updating line on a
 * terminal, a line per change otherwise, both on stderr so stdout stays
 * the result), and `watch` prints the current state before the changes,
 * as `kubectl get -w` does.  `completion bash|zsh` prints a script made
 * from the tables below (completion.c).
 */
#include "admin_client.h"
#include "completion.h"
#include "lb_duration.h"
#include "lb_grpc_frame.h"
#include "lb_file.h"
#include "lb_secret.h"
#include "lb_settings.h"

#include "lb/v1/admin.pb-c.h"
#include "policy.h"
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
#include <unistd.h>

#define EXIT_RUNTIME 1
#define EXIT_USAGE   2
#define MAX_FLAGS    20

#define DRAIN_POLL_MS      250   /* drain --wait reads the backend this often */
#define DRAIN_LINE_MS      1000  /* without a terminal: a line per change, at most this often */
#define DRAIN_HEARTBEAT_MS 10000 /* ... and one this often when nothing changes */

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
     "deadline of each call; watch has none, and tries this long to reconnect when lbd ends "
     "its stream (an upgrade)"},
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
static int cmd_show(struct ctl *ctl, char **args, size_t n);
static int cmd_kill(struct ctl *ctl, char **args, size_t n);
static int cmd_completion(struct ctl *ctl, char **args, size_t n);

static const struct command commands[] = {
    {"pools",
     "",
     "list pools with their listeners, connection counts and clients queued",
     0,
     0,
     {NULL},
     cmd_pools},
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
    {"show",
     "sessions POOL [BACKEND]",
     "list a pool's open sessions, oldest first (at most 10000)",
     2,
     3,
     {NULL},
     cmd_show},
    {"kill",
     "sessions POOL BACKEND",
     "close every open session to a backend, on every worker (drain it first to keep it empty)",
     3,
     3,
     {NULL},
     cmd_kill},
    {"upgrade",
     "",
     "start the lbd binary on disk, which takes over listeners and open connections "
     "(needs lbd --upgrade-socket)",
     0,
     0,
     {NULL},
     cmd_upgrade},
    {"policy",
     "get|validate|set POOL [FILE|-]",
     "read, check or write a pool's policy in etcd (see lbctl policy --help)",
     0,
     0,
     {NULL},
     NULL},
    {"register",
     "--etcd URL --pool P --id ID --addr HOST:PORT ...",
     "register this backend in etcd and keep it registered (see lbctl register --help)",
     0,
     0,
     {NULL},
     NULL},
    {"completion",
     "bash|zsh",
     "print a shell completion script: source <(lbctl completion bash)",
     1,
     1,
     {NULL},
     cmd_completion},
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
    char help[64];
    va_list ap;

    snprintf(help, sizeof(help), "lbctl%s%s", cmd ? " " : "", cmd ? cmd : "");
    va_start(ap, fmt);
    lb_settings_usage_line("lbctl", help, fmt, ap);
    va_end(ap);
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
    t->rows = 0;
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

/* The backend in one word: lbd's state field (an older lbd's: from drain and health). */
static const char *state_name(const Lb__V1__Backend *b)
{
    switch (b->state) {
    case LB__V1__BACKEND_STATE__BACKEND_STATE_UP:
        return "up";
    case LB__V1__BACKEND_STATE__BACKEND_STATE_SLOW_START:
        return "slow_start";
    case LB__V1__BACKEND_STATE__BACKEND_STATE_DOWN:
        return "down";
    case LB__V1__BACKEND_STATE__BACKEND_STATE_EJECTED:
        return "ejected";
    case LB__V1__BACKEND_STATE__BACKEND_STATE_DRAINING:
        return "draining";
    case LB__V1__BACKEND_STATE__BACKEND_STATE_DRAINED:
        return "drained";
    case LB__V1__BACKEND_STATE__BACKEND_STATE_REMOVED:
        return "removed";
    case LB__V1__BACKEND_STATE__BACKEND_STATE_UNRESOLVED:
        return "unresolved";
    case LB__V1__BACKEND_STATE__BACKEND_STATE_REFUSED:
        return "refused";
    default:
        break;
    }
    if (b->drain)
        return b->drained ? "drained" : "draining";
    if (b->health_override == LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_FORCE_DOWN ||
        (b->health == LB__V1__HEALTH_STATE__HEALTH_STATE_DOWN &&
         b->health_override != LB__V1__HEALTH_OVERRIDE__HEALTH_OVERRIDE_FORCE_UP))
        return "down";
    return "up";
}

static bool is_drained(const Lb__V1__Backend *b)
{
    return b->state ? b->state == LB__V1__BACKEND_STATE__BACKEND_STATE_DRAINED : b->drained;
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
    /* `state` is what the backend is; `drain` the operator's order, as in the override key
     * (draining and drained are states, so they are not fields of their own). */
    json_object_object_add(o, "state", json_object_new_string(state_name(b)));
    json_object_object_add(o, "drain", json_object_new_boolean(b->drain));
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

static const char *const backend_header[] = {"POOL", "ID",     "ADDR",   "STATE", "WEIGHT", "OVR",
                                             "EFF",  "HEALTH", "ACTIVE", "TOTAL", "FAILS",  "ZONE"};
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
    row[3] = (char *)state_name(b);
    row[4] = weight;
    row[5] = ovr;
    row[6] = eff;
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
                                         "ELIGIBLE", "ACTIVE", "TOTAL",     "QUEUED"};
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
            json_object_object_add(po, "queued", json_object_new_int64((int64_t)p->queued));
            json_object_array_add(arr, po);
        }
        json_object_object_add(o, "pools", arr);
        print_json(o);
    } else {
        struct table t;

        table_init(&t, header, 8);
        for (size_t i = 0; i < resp->n_pools; i++) {
            const Lb__V1__Pool *p = resp->pools[i];
            char backends[16], eligible[16], active[24], total[24], queued[24];
            char *row[8] = {p->name,  p->listen, p->algorithm, backends,
                            eligible, active,    total,        queued};

            snprintf(backends, sizeof(backends), "%u", p->backends);
            snprintf(eligible, sizeof(eligible), "%u", p->eligible);
            snprintf(active, sizeof(active), "%llu", (unsigned long long)p->active_connections);
            snprintf(total, sizeof(total), "%llu", (unsigned long long)p->total_connections);
            snprintf(queued, sizeof(queued), "%llu", (unsigned long long)p->queued);
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

/* what: "weight web/b1" and the like. */
static int print_backend_response(struct ctl *ctl, ProtobufCMessage *m, const char *what)
{
    struct backend_response *r = (struct backend_response *)m;

    if (r->backend)
        print_backends(ctl, &r->backend, 1, false);
    else /* a cluster change for a backend that left while etcd took it: stored all the same */
        fprintf(stderr,
                "lbctl: %s: stored in etcd, but the backend is not registered now (did its "
                "lease lapse?); the change applies when it registers again\n",
                what);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

static Lb__V1__Scope scope_of(const struct ctl *ctl)
{
    return ctl->opts.local ? LB__V1__SCOPE__SCOPE_LOCAL : LB__V1__SCOPE__SCOPE_CLUSTER;
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = 1;
}

/* Ctrl-C and SIGTERM set `interrupted` and wake a blocked poll or sleep. */
static void catch_interrupts(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: let curl's poll and nanosleep wake up */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* SetDrain, without lbd's own wait (drain --wait polls, to show progress). */
static int set_drain(struct ctl *ctl, char **args, bool drain, bool print)
{
    Lb__V1__SetDrainRequest req = LB__V1__SET_DRAIN_REQUEST__INIT;
    char what[300];
    ProtobufCMessage *m;
    int rc;

    req.pool = args[0];
    req.id = args[1];
    req.drain = drain;
    req.scope = scope_of(ctl);
    snprintf(what, sizeof(what), "%s %s/%s", drain ? "drain" : "undrain", args[0], args[1]);
    rc = unary(ctl, what, "/lb.v1.Admin/SetDrain", &req.base,
               &lb__v1__set_drain_response__descriptor, ctl->opts.rpc_timeout_ms, &m);
    if (rc || print)
        return rc ? rc : print_backend_response(ctl, m, what);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/*
 * drain --wait's progress on stderr.  On a terminal, one line rewritten in
 * place at every poll; otherwise (a log, a pipe) a line when the count
 * changed, at most one a second, and one every 10 s while it does not.
 */
struct progress {
    bool tty;
    size_t shown;       /* tty: characters of the line now on screen */
    int64_t printed_at; /* not a tty: when the last line was written; -1: never */
    uint64_t printed;   /* not a tty: the count it showed */
};

static void progress_show(struct progress *p, const char *text, uint64_t count, bool force)
{
    int64_t now = now_ms();

    if (p->tty) {
        size_t len = strlen(text);

        fprintf(stderr, "\r%s%*s", text, p->shown > len ? (int)(p->shown - len) : 0, "");
        p->shown = len > p->shown ? len : p->shown;
    } else {
        bool changed = p->printed_at < 0 || count != p->printed;

        if (!force && !(changed && now - p->printed_at >= DRAIN_LINE_MS) &&
            now - p->printed_at < DRAIN_HEARTBEAT_MS)
            return;
        fprintf(stderr, "%s\n", text);
        p->printed_at = now;
        p->printed = count;
    }
    fflush(stderr);
}

/* Ends the line on the terminal, so what follows starts a line of its own. */
static void progress_end(struct progress *p)
{
    if (p->tty && p->shown) {
        fputc('\n', stderr);
        fflush(stderr);
        p->shown = 0;
    }
}

/* "lbctl undrain web b1", with the flags that reach the same lbd the same way. */
static void undrain_hint(const struct ctl *ctl, const char *pool, const char *id, char *buf,
                         size_t size)
{
    const char *env_admin = getenv("LBCTL_ADMIN");
    size_t len;

    snprintf(buf, size, "lbctl");
    len = strlen(buf);
    if (strcmp(ctl->opts.admin, "127.0.0.1:9000") != 0 &&
        (!env_admin || strcmp(env_admin, ctl->opts.admin) != 0))
        len += (size_t)snprintf(buf + len, size - len, " --admin %s", ctl->opts.admin);
    if (len < size && ctl->opts.admin_token_file && !getenv("LBCTL_ADMIN_TOKEN_FILE"))
        len += (size_t)snprintf(buf + len, size - len, " --admin-token-file %s",
                                ctl->opts.admin_token_file);
    if (len < size && ctl->opts.admin_ca && !getenv("LBCTL_ADMIN_CA"))
        len += (size_t)snprintf(buf + len, size - len, " --admin-ca %s", ctl->opts.admin_ca);
    if (len < size)
        snprintf(buf + len, size - len, " undrain %s %s%s", pool, id,
                 ctl->opts.local ? " --local" : "");
}

static const char *plural(uint64_t n)
{
    return n == 1 ? "" : "s";
}

/*
 * drain --wait after the drain is in effect: reads the backend every
 * DRAIN_POLL_MS and shows its active connections until none is left (0,
 * the backend printed as drain prints it), the deadline passes, the
 * backend is undrained or removed, or Ctrl-C (1: and the drain stays in
 * effect, which the last line says, with the command that lifts it).
 */
static int drain_wait(struct ctl *ctl, char *pool, char *id)
{
    Lb__V1__GetBackendRequest req = LB__V1__GET_BACKEND_REQUEST__INIT;
    struct progress p = {.tty = isatty(STDERR_FILENO), .printed_at = -1};
    int64_t start = now_ms(), deadline = start + ctl->opts.timeout_ms;
    char limit[32], hint[1024], line[512];
    uint64_t active = 0;

    catch_interrupts();
    lb_duration_format(ctl->opts.timeout_ms, limit, sizeof(limit));
    undrain_hint(ctl, pool, id, hint, sizeof(hint));
    req.pool = pool;
    req.id = id;
    for (;;) {
        int64_t now = now_ms(), call_ms = ctl->opts.rpc_timeout_ms;
        struct lb_admin_status st;
        ProtobufCMessage *m;
        Lb__V1__Backend *b;

        if (deadline - now > 1000 && deadline - now < call_ms)
            call_ms = deadline - now;
        if (lb_admin_client_call(ctl->client, "/lb.v1.Admin/GetBackend", &req.base,
                                 &lb__v1__get_backend_response__descriptor, call_ms, &m,
                                 &st) != LB_GRPC_OK) {
            progress_end(&p);
            if (st.code == LB_GRPC_NOT_FOUND && !st.transport)
                fprintf(stderr,
                        "lbctl: drain %s/%s: %s was removed while waiting (key deleted or lease "
                        "expired)\n",
                        pool, id, id);
            else
                fprintf(stderr,
                        "lbctl: drain %s/%s: cannot read its connections: %s; %s stays drained "
                        "(undrain with: %s)\n",
                        pool, id, st.message[0] ? st.message : lb_grpc_status_name(st.code), id,
                        hint);
            return EXIT_RUNTIME;
        }
        b = ((Lb__V1__GetBackendResponse *)m)->backend;
        now = now_ms();
        if (!b || !b->drain) {
            protobuf_c_message_free_unpacked(m, NULL);
            progress_end(&p);
            fprintf(stderr, "lbctl: drain %s/%s: it was undrained while waiting\n", pool, id);
            return EXIT_RUNTIME;
        }
        active = b->active_connections;
        snprintf(line, sizeof(line), "%s: %llu active connection%s (waited %llds of %s)", id,
                 (unsigned long long)active, plural(active), (long long)((now - start) / 1000),
                 limit);
        if (is_drained(b)) {
            progress_show(&p, line, active, true);
            if (p.tty) {
                snprintf(line, sizeof(line), "%s drained after %.1fs: no active connections left",
                         id, (double)(now - start) / 1000.0);
                progress_show(&p, line, 0, true);
                progress_end(&p);
            } else {
                fprintf(stderr, "%s drained after %.1fs: no active connections left\n", id,
                        (double)(now - start) / 1000.0);
            }
            print_backends(ctl, &b, 1, false);
            protobuf_c_message_free_unpacked(m, NULL);
            return 0;
        }
        protobuf_c_message_free_unpacked(m, NULL);
        progress_show(&p, line, active, false);
        if (interrupted || now >= deadline) {
            progress_end(&p);
            if (interrupted)
                fprintf(stderr, "lbctl: drain %s/%s: stopped waiting after %llds", pool, id,
                        (long long)((now - start) / 1000));
            else
                fprintf(stderr, "lbctl: drain %s/%s: timed out after %s", pool, id, limit);
            fprintf(stderr,
                    " with %llu connection%s still open; %s stays drained (undrain with: %s)\n",
                    (unsigned long long)active, plural(active), id, hint);
            return EXIT_RUNTIME;
        }
        {
            int64_t pause = deadline - now < DRAIN_POLL_MS ? deadline - now : DRAIN_POLL_MS;
            struct timespec ts = {pause / 1000, (pause % 1000) * 1000000};

            nanosleep(&ts, NULL); /* Ctrl-C cuts it short */
        }
    }
}

static int cmd_drain(struct ctl *ctl, char **args, size_t n)
{
    int rc;

    if (!ctl->opts.wait && ctl->opts.timeout_ms != 30000)
        return usage_error("drain", "--timeout only makes sense with --wait");
    rc = set_drain(ctl, args, true, !ctl->opts.wait);
    if (rc || !ctl->opts.wait)
        return rc;
    return drain_wait(ctl, args[0], args[1]);
}

static int cmd_undrain(struct ctl *ctl, char **args, size_t n)
{
    return set_drain(ctl, args, false, true);
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
        if (errno || !isdigit((unsigned char)args[2][0]) || *end || w < 0 || w > 1000)
            return usage_error("weight", "weight \"%s\" is not a whole number from 0 to 1000",
                               args[2]);
        req.weight_opt_case = LB__V1__SET_WEIGHT_REQUEST__WEIGHT_OPT_WEIGHT;
        req.weight = (uint32_t)w;
    }
    snprintf(what, sizeof(what), "weight %s/%s", args[0], args[1]);
    rc = unary(ctl, what, "/lb.v1.Admin/SetWeight", &req.base,
               &lb__v1__set_weight_response__descriptor, ctl->opts.rpc_timeout_ms, &m);
    return rc ? rc : print_backend_response(ctl, m, what);
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
    return rc ? rc : print_backend_response(ctl, m, what);
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
    case LB__V1__EVENT__TYPE__TYPE_CURRENT:
        return "current";
    case LB__V1__EVENT__TYPE__TYPE_SYNCED:
        return "synced";
    default:
        return "unknown";
    }
}

/* The EVENT column of the watch table: the type without its noun. */
static const char *event_column_name(Lb__V1__Event__Type t)
{
    switch (t) {
    case LB__V1__EVENT__TYPE__TYPE_BACKEND_ADDED:
        return "added";
    case LB__V1__EVENT__TYPE__TYPE_BACKEND_CHANGED:
        return "changed";
    case LB__V1__EVENT__TYPE__TYPE_BACKEND_REMOVED:
        return "removed";
    case LB__V1__EVENT__TYPE__TYPE_POLICY_CHANGED:
        return "policy";
    case LB__V1__EVENT__TYPE__TYPE_HEALTH_CHANGED:
        return "health";
    default:
        return event_type_name(t);
    }
}

/*
 * The watch as a table, as `kubectl get -w` prints one: the current state
 * (buffered until SYNCED, so the columns fit it) under a header, then a row
 * per event in the same columns.
 */
static const char *const watch_header[] = {"TIME", "EVENT", "BACKEND", "STATE",
                                           "ADDR", "EFF",   "ACTIVE",  "DETAIL"};
/* Room for every event and state name, so the columns hold still as they change. */
static const size_t watch_min_width[] = {0, 7, 0, 10, 0, 4, 6, 0};
#define WATCH_COLS (sizeof(watch_header) / sizeof(watch_header[0]))

struct watch_out {
    struct ctl *ctl;
    bool got;             /* this call of the stream delivered a message */
    bool reconnecting;    /* say so when the stream comes back */
    bool synced;          /* the current state has come */
    bool changes_only;    /* lbd could not send the current state: changes alone */
    struct table current; /* the rows of the current state until SYNCED, then one event's */
    bool header_done;
    size_t width[WATCH_COLS]; /* the columns as the header printed them */
};

static void watch_row(struct table *t, const Lb__V1__Event *ev)
{
    time_t secs = (time_t)(ev->unix_ms / 1000);
    const Lb__V1__Backend *b = ev->backend;
    char ts[48], stamp[32], name[2 * 128 + 2], weight[16], active[24];
    char *row[WATCH_COLS];
    struct tm tm;

    gmtime_r(&secs, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts, sizeof(ts), "%s.%03dZ", stamp, (int)(ev->unix_ms % 1000));
    snprintf(name, sizeof(name), "%s%s%s", ev->pool, ev->id[0] ? "/" : "", ev->id);
    snprintf(weight, sizeof(weight), "%u", b ? b->effective_weight : 0);
    snprintf(active, sizeof(active), "%llu", b ? (unsigned long long)b->active_connections : 0ULL);
    row[0] = ts;
    row[1] = (char *)event_column_name(ev->type);
    row[2] = name;
    row[3] = b ? (char *)state_name(b) : "-";
    row[4] = b ? b->addr : "-";
    row[5] = b ? weight : "-";
    row[6] = b ? active : "-";
    row[7] = ev->detail[0] ? ev->detail : "";
    table_add(t, row);
}

/* Prints the header and the buffered current state, once. */
static void watch_flush_current(struct watch_out *w)
{
    if (w->header_done)
        return;
    w->header_done = true;
    for (size_t i = 0; i < WATCH_COLS; i++)
        if (w->current.width[i] < watch_min_width[i])
            w->current.width[i] = watch_min_width[i];
    memcpy(w->width, w->current.width, sizeof(w->width));
    table_print(&w->current, watch_header);
}

static int print_event(void *ud, const ProtobufCMessage *msg)
{
    struct watch_out *w = ud;
    const Lb__V1__Event *ev = (const Lb__V1__Event *)msg;

    w->got = true;
    if (w->reconnecting) {
        w->reconnecting = false;
        fprintf(stderr, "lbctl: watch: reconnected; %s\n",
                w->changes_only ? "the changes from now on"
                                : "the current state again, then the changes");
    }
    if (ev->type != LB__V1__EVENT__TYPE__TYPE_CURRENT)
        w->synced = true; /* SYNCED, or a change from an lbd that sends no current state */
    if (w->ctl->json) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "type", json_object_new_string(event_type_name(ev->type)));
        json_object_object_add(o, "pool", ev->pool[0] ? json_object_new_string(ev->pool) : NULL);
        json_object_object_add(o, "id", ev->id[0] ? json_object_new_string(ev->id) : NULL);
        json_object_object_add(o, "unix_ms", json_object_new_int64(ev->unix_ms));
        json_object_object_add(o, "detail", json_object_new_string(ev->detail));
        json_object_object_add(o, "backend", ev->backend ? backend_json(ev->backend) : NULL);
        printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
    } else if (ev->type == LB__V1__EVENT__TYPE__TYPE_CURRENT && !w->header_done) {
        watch_row(&w->current, ev);
        return 0;
    } else if (ev->type == LB__V1__EVENT__TYPE__TYPE_SYNCED) {
        watch_flush_current(w);
    } else {
        watch_flush_current(w); /* an lbd that sends no current state: the header first */
        watch_row(&w->current, ev);
        memcpy(w->current.width, w->width, sizeof(w->width)); /* a longer value overflows */
        table_print_row(&w->current, (const char *const *)w->current.cells);
        for (size_t i = 0; i < WATCH_COLS; i++)
            free(w->current.cells[i]);
        w->current.rows = 0;
    }
    fflush(stdout);
    return 0;
}

/*
 * A watch that was streaming and then ended (lbd upgraded: the old process
 * ends its streams, the new one serves the same address; or restarted) is
 * made again: for up to --rpc-timeout, every 200 ms at first, then every
 * second.  One that never streamed is not: its error is reported at once.
 */
static bool watch_may_reconnect(int code)
{
    return code == LB_GRPC_OK || code == LB_GRPC_UNAVAILABLE || code == LB_GRPC_UNKNOWN;
}

static int watch_stream(struct ctl *ctl, Lb__V1__WatchEventsRequest *req, struct watch_out *w,
                        struct lb_admin_status *st)
{
    int rc;

    w->got = false;
    w->synced = false; /* a reconnected stream starts with the current state again */
    rc = lb_admin_client_stream(ctl->client, "/lb.v1.Admin/WatchEvents", &req->base,
                                &lb__v1__event__descriptor, 0, print_event, w, &interrupted, st);
    if (rc == LB_GRPC_RESOURCE_EXHAUSTED && !w->synced && !interrupted) {
        /* Too many backends to send as they are: the changes still come. */
        fprintf(stderr, "lbctl: watch: %s; showing changes only\n", st->message);
        for (size_t i = 0; i < w->current.rows * w->current.cols; i++)
            free(w->current.cells[i]);
        w->current.rows = 0;
        req->initial_state = false; /* on reconnecting too */
        w->changes_only = true;
        rc =
            lb_admin_client_stream(ctl->client, "/lb.v1.Admin/WatchEvents", &req->base,
                                   &lb__v1__event__descriptor, 0, print_event, w, &interrupted, st);
    }
    return rc;
}

static int cmd_watch(struct ctl *ctl, char **args, size_t n)
{
    Lb__V1__WatchEventsRequest req = LB__V1__WATCH_EVENTS_REQUEST__INIT;
    struct watch_out w = {.ctl = ctl};
    struct lb_admin_status st;
    int64_t give_up = 0; /* reconnecting until then; 0: streaming */
    long delay_ms = 200;
    int rc;

    catch_interrupts();
    table_init(&w.current, watch_header, WATCH_COLS);
    req.initial_state = true;
    if (n == 1)
        req.pool = args[0];
    for (;;) {
        rc = watch_stream(ctl, &req, &w, &st);
        if (interrupted)
            break;
        if (w.got) {
            give_up = 0;
            delay_ms = 200;
        }
        if (!watch_may_reconnect(rc) || (!w.got && give_up == 0) ||
            (give_up && now_ms() + delay_ms > give_up))
            break;
        if (give_up == 0) {
            give_up = now_ms() + ctl->opts.rpc_timeout_ms;
            w.reconnecting = true;
            fprintf(stderr, "lbctl: watch: %s; reconnecting (for up to %lld ms)\n",
                    rc == LB_GRPC_OK ? "lbd ended the event stream" : st.message,
                    (long long)ctl->opts.rpc_timeout_ms);
        }
        nanosleep(
            &(struct timespec){.tv_sec = delay_ms / 1000, .tv_nsec = delay_ms % 1000 * 1000000L},
            NULL); /* Ctrl-C cuts it short */
        if (interrupted)
            break;
        delay_ms = delay_ms * 2 > 1000 ? 1000 : delay_ms * 2;
    }
    for (size_t i = 0; i < w.current.rows * w.current.cols; i++)
        free(w.current.cells[i]);
    free(w.current.cells);
    if (interrupted)
        return 0; /* Ctrl-C is how a watch ends */
    if (rc == LB_GRPC_OK) {
        fprintf(stderr, "lbctl: watch: lbd ended the event stream\n");
        return EXIT_RUNTIME;
    }
    return report_status(ctl, "watch", &st);
}

/* ---- completion ---- */

/* Rows of the commands that parse their own flags (run == NULL), for completion. */
static const struct lb_setting *own_flag_rows(const char *name, size_t *n)
{
    if (strcmp(name, "policy") == 0)
        return lbctl_policy_settings(n);
#ifdef LBCTL_HAVE_REGISTER
    if (strcmp(name, "register") == 0)
        return lbctl_register_settings(n);
#endif
    *n = 0;
    return NULL;
}

static const char *session_state_name(Lb__V1__Session__State s)
{
    switch (s) {
    case LB__V1__SESSION__STATE__STATE_HEADER:
        return "header";
    case LB__V1__SESSION__STATE__STATE_CONNECTING:
        return "connecting";
    case LB__V1__SESSION__STATE__STATE_PROXYING:
        return "proxying";
    case LB__V1__SESSION__STATE__STATE_PARKED:
        return "parked";
    case LB__V1__SESSION__STATE__STATE_QUEUED:
        return "queued";
    default:
        return "unknown";
    }
}

static void print_sessions(struct ctl *ctl, const Lb__V1__ListSessionsResponse *resp)
{
    static const char *const header[] = {"CLIENT", "BACKEND", "WORKER",   "STATE",
                                         "AGE",    "IDLE",    "BYTES_IN", "BYTES_OUT"};
    uint64_t more = resp->total > resp->n_sessions ? resp->total - resp->n_sessions : 0;
    struct table t;

    if (ctl->json) {
        json_object *arr = json_object_new_array(), *o = json_object_new_object();

        for (size_t i = 0; i < resp->n_sessions; i++) {
            const Lb__V1__Session *s = resp->sessions[i];
            json_object *so = json_object_new_object();

            json_object_object_add(so, "client", json_object_new_string(s->client));
            json_object_object_add(so, "backend", json_object_new_string(s->backend));
            json_object_object_add(so, "worker", json_object_new_int64(s->worker));
            json_object_object_add(so, "state",
                                   json_object_new_string(session_state_name(s->state)));
            json_object_object_add(so, "age_s", json_object_new_double(s->age_s));
            json_object_object_add(so, "idle_s", json_object_new_double(s->idle_s));
            json_object_object_add(so, "bytes_in", json_object_new_int64((int64_t)s->bytes_in));
            json_object_object_add(so, "bytes_out", json_object_new_int64((int64_t)s->bytes_out));
            json_object_array_add(arr, so);
        }
        json_object_object_add(o, "sessions", arr);
        json_object_object_add(o, "total", json_object_new_int64((int64_t)resp->total));
        json_object_object_add(o, "not_listed", json_object_new_int64((int64_t)more));
        print_json(o);
        return;
    }
    table_init(&t, header, 8);
    for (size_t i = 0; i < resp->n_sessions; i++) {
        const Lb__V1__Session *s = resp->sessions[i];
        char worker[16], age[32], idle[32], in[24], out[24];
        char *row[8] = {s->client, s->backend[0] ? s->backend : "-",
                        worker,    (char *)session_state_name(s->state),
                        age,       idle,
                        in,        out};

        snprintf(worker, sizeof(worker), "%u", s->worker);
        snprintf(age, sizeof(age), "%.1fs", s->age_s);
        snprintf(idle, sizeof(idle), "%.1fs", s->idle_s);
        snprintf(in, sizeof(in), "%llu", (unsigned long long)s->bytes_in);
        snprintf(out, sizeof(out), "%llu", (unsigned long long)s->bytes_out);
        table_add(&t, row);
    }
    table_print(&t, header);
    if (more)
        printf("... and %llu more not listed (%llu open)\n", (unsigned long long)more,
               (unsigned long long)resp->total);
}

static int cmd_show(struct ctl *ctl, char **args, size_t n)
{
    Lb__V1__ListSessionsRequest req = LB__V1__LIST_SESSIONS_REQUEST__INIT;
    ProtobufCMessage *m;
    char what[300];
    int rc;

    if (strcmp(args[0], "sessions") != 0)
        return usage_error("show", "show what? expected \"sessions\", not \"%s\"", args[0]);
    req.pool = args[1];
    if (n == 3)
        req.backend = args[2];
    snprintf(what, sizeof(what), "show sessions %s%s%s", args[1], n == 3 ? "/" : "",
             n == 3 ? args[2] : "");
    rc = unary(ctl, what, "/lb.v1.Admin/ListSessions", &req.base,
               &lb__v1__list_sessions_response__descriptor, ctl->opts.rpc_timeout_ms, &m);
    if (rc)
        return rc;
    print_sessions(ctl, (Lb__V1__ListSessionsResponse *)m);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

static int cmd_kill(struct ctl *ctl, char **args, size_t n)
{
    Lb__V1__KillSessionsRequest req = LB__V1__KILL_SESSIONS_REQUEST__INIT;
    ProtobufCMessage *m;
    uint64_t killed;
    char what[300];
    int rc;

    if (strcmp(args[0], "sessions") != 0)
        return usage_error("kill", "kill what? expected \"sessions\", not \"%s\"", args[0]);
    req.pool = args[1];
    req.backend = args[2];
    snprintf(what, sizeof(what), "kill sessions %s/%s", args[1], args[2]);
    rc = unary(ctl, what, "/lb.v1.Admin/KillSessions", &req.base,
               &lb__v1__kill_sessions_response__descriptor, ctl->opts.rpc_timeout_ms, &m);
    if (rc)
        return rc;
    killed = ((Lb__V1__KillSessionsResponse *)m)->killed;
    protobuf_c_message_free_unpacked(m, NULL);
    if (ctl->json) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "killed", json_object_new_int64((int64_t)killed));
        print_json(o);
    } else {
        printf("closed %llu session%s to %s/%s\n", (unsigned long long)killed,
               killed == 1 ? "" : "s", args[1], args[2]);
    }
    return 0;
}

static int cmd_completion(struct ctl *ctl, char **args, size_t n)
{
    static const char *const connection_flags[] = {"admin", "admin-token-file", "admin-ca", NULL};
    struct lbctl_completion_command cmds[N_COMMANDS];
    struct lbctl_completion_spec spec = {
        .program = "lbctl",
        .version = LB_VERSION,
        .commands = cmds,
        .n_commands = N_COMMANDS,
        .global = global_rows,
        .n_global = N_GLOBAL,
        .connection_flags = connection_flags,
    };

    memset(cmds, 0, sizeof(cmds));
    for (size_t i = 0; i < N_COMMANDS; i++) {
        struct lbctl_completion_command *c = &cmds[i];
        size_t k = 0;

        c->name = commands[i].name;
        c->args = commands[i].args;
        c->summary = commands[i].summary;
        if (commands[i].run) {
            for (size_t j = 0; commands[i].flags[j]; j++)
                c->flags[k++] = commands[i].flags[j];
            c->flags[k++] = &row_help;
        } else {
            size_t n_rows;
            const struct lb_setting *rows = own_flag_rows(c->name, &n_rows);

            c->own_parser = true;
            for (size_t j = 0; j < n_rows && k < LBCTL_COMPLETION_MAX_FLAGS; j++)
                c->flags[k++] = &rows[j];
            if (!rows)
                c->flags[k++] = &row_help;
        }
    }
    if (lbctl_completion_print(stdout, args[0], &spec) < 0)
        return usage_error("completion", "completion: no script for shell \"%s\" (bash or zsh)",
                           args[0]);
    return 0;
}

/* ---- main ---- */

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* True when rows (n of them, or cmd's NULL-ended flags) know --name (len bytes). */
static bool rows_know(const struct lb_setting *rows, size_t n,
                      const struct lb_setting *const *flags, const char *name, size_t len)
{
    for (size_t i = 0; rows && i < n; i++)
        if (strlen(rows[i].name) == len && strncmp(rows[i].name, name, len) == 0)
            return true;
    for (size_t i = 0; flags && flags[i]; i++)
        if (strlen(flags[i]->name) == len && strncmp(flags[i]->name, name, len) == 0)
            return true;
    return false;
}

/*
 * The global flags come before the command, a command's own flags after it.
 * When the global parse fails on a --flag that the command written later
 * takes (`lbctl --etcd URL policy get web`), says where it goes instead of
 * "unknown option".  Returns true when it printed that line.
 */
static bool misplaced_flag(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *name;
        size_t len;

        if (strncmp(argv[i], "--", 2) != 0)
            continue;
        name = argv[i] + 2;
        len = strcspn(name, "=");
        if (len == 0 || rows_know(global_rows, N_GLOBAL, NULL, name, len))
            continue;
        for (int j = i + 1; j < argc; j++) {
            const struct command *cmd = find_command(argv[j]);
            const struct lb_setting *rows;
            size_t n = 0;

            if (!cmd)
                continue;
            rows = cmd->run ? NULL : own_flag_rows(cmd->name, &n);
            if (!rows_know(rows, n, cmd->run ? cmd->flags : NULL, name, len))
                return false;
            usage_error(cmd->name,
                        "--%.*s is a flag of 'lbctl %s': give it after the command "
                        "(lbctl %s ... --%.*s)",
                        (int)len, name, cmd->name, cmd->name, (int)len, name);
            return true;
        }
        return false;
    }
    return false;
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
        rc = misplaced_flag(argc, argv) ? EXIT_USAGE
                                        : usage_error(NULL, "%s", err ? err : "cannot read flags");
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
        /* register and policy parse their own flags: hand them everything after the word */
        if (strcmp(cmd->name, "policy") == 0)
            rc = lbctl_policy_main((int)npos, pos, ctl.opts.output);
        else
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
    rc = cmd->run == cmd_completion ? 0 : client_open(&ctl); /* completion asks lbd nothing */
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
