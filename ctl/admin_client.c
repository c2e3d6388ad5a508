/*
 * gRPC over libcurl (PROTOCOLS.md section 4).  One easy handle per client;
 * each call has a connection of its own (see CURLOPT_FORBID_REUSE below).
 * Response bytes go through the shared incremental frame decoder; each
 * complete message is unpacked and either kept (unary) or handed to the
 * caller (streaming).  With a CA file the URL is https:// and libcurl
 * negotiates h2 by ALPN; the token rides in an authorization header that
 * is wiped from memory after each call.
 *
 * A call whose connection lbd closes before answering anything (lbd
 * refuses or sheds admin connections at its caps while others hold them
 * all, as during a flood) is made again, twice at most, a moment later:
 * every method but Upgrade and KillSessions sets a state or reads one, so
 * doing it twice is doing it once.  Never past the call's deadline
 * (--rpc-timeout).
 */
#include "admin_client.h"
#include "lb_error.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define URL_MAX            512
#define CONNECT_TIMEOUT_MS 5000
#define TIMEOUT_GRACE_MS   1000 /* let the server's DEADLINE_EXCEEDED arrive before curl gives up */
#define RETRIES            2
#define RETRY_DELAY_MS     150 /* then twice that: lbd's next accept run */

struct lb_admin_client {
    CURL *curl;
    char addr[256];
    char base_url[300];
    char *auth_header; /* "Authorization: Bearer <token>", or NULL */
    char *ca_file;     /* NULL: cleartext */
};

/* State of one call. */
struct call_ctx {
    const ProtobufCMessageDescriptor *type;
    struct lb_grpc_decoder decoder;
    int http_status;
    bool has_grpc_status;
    int grpc_status;
    char grpc_message[LB_GRPC_MESSAGE_TEXT_MAX];
    /* unary */
    ProtobufCMessage *unary;
    unsigned messages;
    /* streaming */
    lb_admin_stream_cb cb;
    void *ud;
    volatile sig_atomic_t *stop;
    bool stopped;     /* by cb or *stop */
    bool unanswered;  /* the connection ended before lbd answered anything */
    int local_status; /* a problem found on our side (decode), 0 if none */
    char local_message[256];
};

static int global_init_done;

static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

int lb_admin_client_new(const struct lb_admin_client_options *opts, struct lb_admin_client **out,
                        char **err)
{
    struct lb_admin_client *c;
    const char *addr = opts->addr;
    const char *colon = strrchr(addr, ':');
    bool ok;

    *out = NULL;
    *err = NULL;
    ok = colon && colon != addr && colon[1] != '\0' && strlen(addr) < 200;
    for (const char *p = colon ? colon + 1 : ""; ok && *p; p++)
        ok = isdigit((unsigned char)*p);
    if (ok && addr[0] == '[')
        ok = colon[-1] == ']';
    else if (ok)
        ok = memchr(addr, ':', (size_t)(colon - addr)) == NULL; /* bare IPv6 needs [] */
    for (const char *p = addr; ok && *p; p++)
        ok = !isspace((unsigned char)*p) && *p != '/' && *p != '@';
    if (!ok) {
        return lb_error_set(err, -EINVAL,
                            "admin address \"%s\": expected HOST:PORT, e.g. 127.0.0.1:9000 or "
                            "[::1]:9000",
                            addr);
    }
    if (opts->token) {
        ok = opts->token[0] != '\0';
        for (const char *p = opts->token; ok && *p; p++)
            ok = *p > 0x20 && *p < 0x7f;
        if (!ok) {
            return lb_error_set(err, -EINVAL,
                                "the admin token must be printable ASCII without spaces");
        }
    }
    if (!global_init_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return -ENOMEM;
        global_init_done = 1;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->curl = curl_easy_init();
    if (!c->curl) {
        free(c);
        return -ENOMEM;
    }
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    snprintf(c->base_url, sizeof(c->base_url), "%s://%s", opts->ca_file ? "https" : "http", addr);
    if ((opts->token && asprintf(&c->auth_header, "Authorization: Bearer %s", opts->token) < 0) ||
        (opts->ca_file && !(c->ca_file = strdup(opts->ca_file)))) {
        c->auth_header = NULL;
        lb_admin_client_free(c);
        return -ENOMEM;
    }
    *out = c;
    return 0;
}

void lb_admin_client_free(struct lb_admin_client *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->curl);
    wipe_free(c->auth_header);
    free(c->ca_file);
    free(c);
}

/* "grpc-status: 5\r\n" and friends; also the status line "HTTP/2 200". */
static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    struct call_ctx *ctx = ud;
    size_t len = size * n;
    const char *colon;
    size_t name_len;

    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        const char *sp = memchr(buf, ' ', len);

        if (sp)
            ctx->http_status = atoi(sp + 1);
        return len;
    }
    colon = memchr(buf, ':', len);
    if (!colon)
        return len;
    name_len = (size_t)(colon - buf);
    {
        const char *v = colon + 1, *end = buf + len;

        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
            end--;
        if (name_len == 11 && strncasecmp(buf, "grpc-status", 11) == 0) {
            char num[16];
            size_t vlen = (size_t)(end - v);

            if (vlen > 0 && vlen < sizeof(num)) {
                memcpy(num, v, vlen);
                num[vlen] = '\0';
                ctx->grpc_status = atoi(num);
                ctx->has_grpc_status = true;
            }
        } else if (name_len == 12 && strncasecmp(buf, "grpc-message", 12) == 0) {
            lb_grpc_percent_decode(v, (size_t)(end - v), ctx->grpc_message,
                                   sizeof(ctx->grpc_message));
        }
    }
    return len;
}

static int on_message(void *ud, const uint8_t *data, size_t len, bool compressed)
{
    struct call_ctx *ctx = ud;
    ProtobufCMessage *msg = protobuf_c_message_unpack(ctx->type, NULL, len, data);

    if (!msg) {
        ctx->local_status = LB_GRPC_INTERNAL;
        snprintf(ctx->local_message, sizeof(ctx->local_message), "cannot decode the %s lbd sent",
                 ctx->type->name);
        return -EBADMSG;
    }
    ctx->messages++;
    if (!ctx->cb) {
        if (ctx->unary) {
            protobuf_c_message_free_unpacked(msg, NULL);
            ctx->local_status = LB_GRPC_INTERNAL;
            snprintf(ctx->local_message, sizeof(ctx->local_message),
                     "lbd sent more than one response message");
            return -EBADMSG;
        }
        ctx->unary = msg;
        return 0;
    }
    if (ctx->cb(ctx->ud, msg) != 0) {
        ctx->stopped = true;
        protobuf_c_message_free_unpacked(msg, NULL);
        return -ECANCELED;
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    return 0;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ud)
{
    struct call_ctx *ctx = ud;
    size_t len = size * n;
    int rc = lb_grpc_decoder_feed(&ctx->decoder, buf, len, on_message, ctx);

    if (rc == 0)
        return len;
    if (rc == -EMSGSIZE) {
        ctx->local_status = LB_GRPC_RESOURCE_EXHAUSTED;
        snprintf(ctx->local_message, sizeof(ctx->local_message),
                 "lbd's answer is larger than %u bytes", LB_GRPC_MAX_MESSAGE_DEFAULT);
    } else if (rc == -EPROTO) {
        ctx->local_status = LB_GRPC_INTERNAL;
        snprintf(ctx->local_message, sizeof(ctx->local_message),
                 "lbd sent a compressed message without grpc-encoding");
    }
    return 0; /* abort the transfer */
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    struct call_ctx *ctx = ud;

    if (ctx->stop && *ctx->stop) {
        ctx->stopped = true;
        return 1;
    }
    return 0;
}

/* gRPC's mapping for responses without grpc-status. */
static int status_from_http(int http)
{
    switch (http) {
    case 400:
        return LB_GRPC_INTERNAL;
    case 401:
        return LB_GRPC_UNAUTHENTICATED;
    case 403:
        return LB_GRPC_PERMISSION_DENIED;
    case 404:
        return LB_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return LB_GRPC_UNAVAILABLE;
    default:
        return LB_GRPC_UNKNOWN;
    }
}

static void lower_first(char *s)
{
    if (s[0] && isupper((unsigned char)s[0]) && !isupper((unsigned char)s[1]))
        s[0] = (char)tolower((unsigned char)s[0]);
}

/* Turns a failed transfer into a status and a sentence. */
static void transport_error(struct lb_admin_client *c, CURLcode cc, const char *curl_err,
                            int64_t timeout_ms, struct lb_admin_status *st)
{
    long os_errno = 0;
    char why[256];

    curl_easy_getinfo(c->curl, CURLINFO_OS_ERRNO, &os_errno);
    st->transport = true;
    if (cc == CURLE_OPERATION_TIMEDOUT) {
        st->code = LB_GRPC_DEADLINE_EXCEEDED;
        snprintf(st->message, sizeof(st->message),
                 "no answer from lbd admin API at %s within %lld ms", c->addr,
                 (long long)timeout_ms);
        return;
    }
    st->code = LB_GRPC_UNAVAILABLE;
    snprintf(why, sizeof(why), "%s", curl_err[0] ? curl_err : curl_easy_strerror(cc));
    lower_first(why);
    if (cc == CURLE_SSL_CACERT_BADFILE) {
        snprintf(st->message, sizeof(st->message), "cannot use --admin-ca %s: %s", c->ca_file, why);
        return;
    }
    if (cc == CURLE_PEER_FAILED_VERIFICATION) {
        snprintf(st->message, sizeof(st->message),
                 "lbd's TLS certificate at %s was not accepted: %s (is --admin-ca the CA that "
                 "signed lbd's --admin-tls-cert, and does the certificate name the host?)",
                 c->addr, why);
        return;
    }
    if (cc == CURLE_SSL_CONNECT_ERROR) {
        snprintf(st->message, sizeof(st->message),
                 "TLS handshake with lbd admin API at %s failed: %s (is lbd serving TLS there, "
                 "with --admin-tls-cert? without it, drop --admin-ca)",
                 c->addr, why);
        return;
    }
    if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST) {
        snprintf(why, sizeof(why), "%s",
                 os_errno ? strerror((int)os_errno)
                          : (curl_err[0] ? curl_err : curl_easy_strerror(cc)));
        lower_first(why);
        snprintf(st->message, sizeof(st->message),
                 "cannot reach lbd admin API at %s: %s (is lbd running with --admin %s?)", c->addr,
                 why, c->addr);
        return;
    }
    if (os_errno == ECONNRESET && !c->ca_file) {
        snprintf(st->message, sizeof(st->message),
                 "lbd admin API at %s reset the connection before answering (lbd refuses admin "
                 "connections while others hold every slot: see its log; or is %s not lbd's "
                 "--admin address, or does it serve TLS? then pass --admin-ca)",
                 c->addr, c->addr);
        return;
    }
    snprintf(st->message, sizeof(st->message),
             "lbd admin API at %s: %s (is %s lbd's --admin address, speaking gRPC?%s)", c->addr,
             why, c->addr, c->ca_file ? "" : " if it serves TLS, pass --admin-ca");
}

static int client_perform(struct lb_admin_client *c, const char *path,
                          const ProtobufCMessage *request, int64_t timeout_ms, struct call_ctx *ctx,
                          struct lb_admin_status *st)
{
    CURL *h = c->curl;
    struct curl_slist *hdrs = NULL, *tmp;
    struct lb_buf body;
    char url[URL_MAX], curl_err[CURL_ERROR_SIZE] = "", line[64], text[32];
    uint8_t *packed = NULL;
    size_t size;
    CURLcode cc;
    int rc;

    memset(st, 0, sizeof(*st));
    lb_buf_init(&body, LB_GRPC_MAX_MESSAGE_DEFAULT + LB_GRPC_FRAME_HEADER_LEN);
    size = protobuf_c_message_get_packed_size(request);
    packed = malloc(size ? size : 1);
    if (!packed ||
        (protobuf_c_message_pack(request, packed), lb_grpc_frame_encode(&body, packed, size) < 0)) {
        st->code = LB_GRPC_RESOURCE_EXHAUSTED;
        snprintf(st->message, sizeof(st->message), "cannot build the request (out of memory)");
        rc = st->code;
        goto out;
    }
    snprintf(url, sizeof(url), "%s%s", c->base_url, path);
    static const char user_agent[] = "User-Agent: lbctl/" LB_VERSION;
    static const char *const fixed[] = {"Content-Type: application/grpc", "TE: trailers",
                                        "Expect:", user_agent};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        tmp = curl_slist_append(hdrs, fixed[i]);
        if (!tmp)
            goto oom;
        hdrs = tmp;
    }
    if (c->auth_header) {
        tmp = curl_slist_append(hdrs, c->auth_header);
        if (!tmp)
            goto oom;
        hdrs = tmp;
    }
    if (timeout_ms > 0) {
        snprintf(line, sizeof(line), "grpc-timeout: %s",
                 lb_grpc_timeout_format(timeout_ms, text, sizeof(text)));
        tmp = curl_slist_append(hdrs, line);
        if (!tmp)
            goto oom;
        hdrs = tmp;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    if (c->ca_file) {
        /* h2 by ALPN; lbd refuses any other protocol in the handshake. */
        curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
        curl_easy_setopt(h, CURLOPT_CAPATH, NULL);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
    } else {
        curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)body.len);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, ctx);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, ctx);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    /*
     * libcurl 7.88 fails a second request on a reused prior-knowledge h2c
     * connection ("Error in the HTTP2 framing layer", curl issue 10634,
     * fixed in 8.0): one connection per call.
     */
    curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L);
    /* Every option is set on every call: the handle is reused. */
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS,
                     timeout_ms > 0 ? (long)(timeout_ms + TIMEOUT_GRACE_MS) : 0L);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, ctx->stop ? 0L : 1L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, ctx);
    cc = curl_easy_perform(h);

    if (ctx->stopped) {
        st->code = LB_GRPC_CANCELLED;
        snprintf(st->message, sizeof(st->message), "cancelled");
    } else if (ctx->local_status) {
        st->code = ctx->local_status;
        snprintf(st->message, sizeof(st->message), "%s", ctx->local_message);
    } else if (cc != CURLE_OK && !ctx->has_grpc_status) {
        long os_errno = 0;

        curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &os_errno);
        ctx->unanswered =
            ctx->http_status == 0 && os_errno == ECONNRESET &&
            (cc == CURLE_RECV_ERROR || cc == CURLE_SEND_ERROR || cc == CURLE_SSL_CONNECT_ERROR);
        transport_error(c, cc, curl_err, timeout_ms, st);
    } else if (ctx->has_grpc_status) {
        st->code = ctx->grpc_status;
        snprintf(st->message, sizeof(st->message), "%s", ctx->grpc_message);
        if (st->code == LB_GRPC_OK && lb_grpc_decoder_finish(&ctx->decoder) < 0) {
            st->code = LB_GRPC_INTERNAL;
            snprintf(st->message, sizeof(st->message), "lbd's answer ends inside a message");
        }
    } else if (ctx->http_status != 200) {
        st->code = status_from_http(ctx->http_status);
        snprintf(st->message, sizeof(st->message),
                 "lbd admin API at %s answered HTTP %d without a gRPC status", c->addr,
                 ctx->http_status);
    } else {
        /*
         * Also what libcurl 7.88 reports when lbd sends the status and closes
         * the connection at once (lbd shutting down): the trailers are lost.
         */
        st->code = LB_GRPC_UNKNOWN;
        snprintf(st->message, sizeof(st->message),
                 "lbd ended the call without a status (is it restarting or shutting down?)");
    }
    rc = st->code;
    goto out;
oom:
    st->code = LB_GRPC_RESOURCE_EXHAUSTED;
    snprintf(st->message, sizeof(st->message), "out of memory");
    rc = st->code;
out:
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    for (tmp = hdrs; tmp; tmp = tmp->next)
        explicit_bzero(tmp->data, strlen(tmp->data)); /* the token */
    curl_slist_free_all(hdrs);
    free(packed);
    lb_buf_free(&body);
    return rc;
}

static bool may_repeat(const char *path)
{
    return strcmp(path, "/lb.v1.Admin/Upgrade") != 0 &&
           strcmp(path, "/lb.v1.Admin/KillSessions") != 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* client_perform(), again while lbd closes the connection unanswered (see the top). */
static int perform_repeating(struct lb_admin_client *c, const char *path,
                             const ProtobufCMessage *request, int64_t timeout_ms,
                             struct call_ctx *ctx, struct lb_admin_status *st)
{
    long delay = RETRY_DELAY_MS;
    int64_t start = now_ms();
    int rc;

    for (int tries = 1;; tries++) {
        lb_grpc_decoder_init(&ctx->decoder, 0, false);
        rc = client_perform(c, path, request, timeout_ms, ctx, st);
        if (!ctx->unanswered || !may_repeat(path) || (ctx->stop && *ctx->stop) || tries > RETRIES ||
            (timeout_ms > 0 && now_ms() - start + delay >= timeout_ms)) {
            if (ctx->unanswered && tries > 1) {
                size_t n = strlen(st->message);

                snprintf(st->message + n, sizeof(st->message) - n, " (tried %d times)", tries);
            }
            return rc;
        }
        lb_grpc_decoder_free(&ctx->decoder);
        ctx->unanswered = false;
        sleep_ms(delay);
        delay *= 2;
    }
}

int lb_admin_client_call(struct lb_admin_client *c, const char *path,
                         const ProtobufCMessage *request,
                         const ProtobufCMessageDescriptor *response_type, int64_t timeout_ms,
                         ProtobufCMessage **resp, struct lb_admin_status *st)
{
    struct call_ctx ctx = {.type = response_type};
    int rc;

    *resp = NULL;
    rc = perform_repeating(c, path, request, timeout_ms, &ctx, st);
    if (rc == LB_GRPC_OK && !ctx.unary) {
        st->code = rc = LB_GRPC_INTERNAL;
        snprintf(st->message, sizeof(st->message), "lbd answered OK without a message");
    }
    if (rc == LB_GRPC_OK) {
        *resp = ctx.unary;
        ctx.unary = NULL;
    }
    if (ctx.unary)
        protobuf_c_message_free_unpacked(ctx.unary, NULL);
    lb_grpc_decoder_free(&ctx.decoder);
    return rc;
}

int lb_admin_client_stream(struct lb_admin_client *c, const char *path,
                           const ProtobufCMessage *request,
                           const ProtobufCMessageDescriptor *response_type, int64_t timeout_ms,
                           lb_admin_stream_cb cb, void *ud, volatile sig_atomic_t *stop,
                           struct lb_admin_status *st)
{
    struct call_ctx ctx = {.type = response_type, .cb = cb, .ud = ud, .stop = stop};
    int rc;

    rc = perform_repeating(c, path, request, timeout_ms, &ctx, st);
    lb_grpc_decoder_free(&ctx.decoder);
    return rc;
}
