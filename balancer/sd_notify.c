/*
 * systemd notifications (see sd_notify.h): a thin layer over libsystemd's
 * sd_notify() that formats into bounded buffers, keeps STATUS= to one safe
 * line, and swallows errors.  libsystemd does the protocol (path or abstract
 * $NOTIFY_SOCKET, a non-blocking datagram with our credentials); we always
 * pass unset_environment=0 so a re-exec'd lbd still sees the socket.
 *
 * Everything runs on the control loop; the one piece of state, whether a
 * failure was already warned about, is that loop's.
 */
#include "sd_notify.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "lb_log.h"

/* STATUS= text bound; systemd's own limit is 4 KiB per datagram. */
#define LB_SD_STATUS_MAX 256

static bool sd_notify_warned;

static bool sd_notify_enabled(void)
{
    const char *socket_path = getenv("NOTIFY_SOCKET");

    return socket_path && socket_path[0];
}

/* Sends `state`; a failure is reported once at warn level, then at debug. */
static void sd_notify_send(const char *what, const char *state)
{
    int rc = sd_notify(0, state);

    /* 0: $NOTIFY_SOCKET was unset after the check; nothing to do. */
    if (rc >= 0)
        return;
    if (!sd_notify_warned) {
        sd_notify_warned = true;
        LB_WARN("systemd",
                "msg=\"cannot notify systemd, continuing without\" state=%s error=\"%s\"", what,
                strerror(-rc));
    } else {
        LB_DEBUG("systemd", "msg=\"cannot notify systemd\" state=%s error=\"%s\"", what,
                 strerror(-rc));
    }
}

/* Turns text into one line of valid UTF-8 after truncation to `len` bytes. */
static void sd_status_sanitize(char *text, size_t len, bool truncated)
{
    size_t i;

    if (truncated) {
        /* Drop the last character if the cut split it: count its
         * continuation bytes and compare with what its lead byte says. */
        size_t cont = 0;

        while (cont < len && cont < 3 && ((unsigned char)text[len - 1 - cont] & 0xC0) == 0x80)
            cont++;
        if (cont < len) {
            unsigned char lead = (unsigned char)text[len - 1 - cont];
            size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;

            if (need != cont + 1)
                len -= cont + 1;
        }
        text[len] = '\0';
    }
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];

        if (c < 0x20 || c == 0x7F)
            text[i] = ' ';
    }
}

void lb_sd_notify_ready(void)
{
    if (!sd_notify_enabled())
        return;
    sd_notify_send("READY", "READY=1\nSTATUS=serving");
}

void lb_sd_notify_status(const char *fmt, ...)
{
    char text[LB_SD_STATUS_MAX];
    char state[sizeof("STATUS=") + LB_SD_STATUS_MAX];
    va_list ap;
    int n;

    if (!sd_notify_enabled())
        return;
    va_start(ap, fmt);
    n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(text))
        sd_status_sanitize(text, sizeof(text) - 1, true);
    else
        sd_status_sanitize(text, (size_t)n, false);
    snprintf(state, sizeof(state), "STATUS=%s", text);
    sd_notify_send("STATUS", state);
}

void lb_sd_notify_mainpid(pid_t pid)
{
    char state[32];

    if (!sd_notify_enabled())
        return;
    snprintf(state, sizeof(state), "MAINPID=%ld", (long)pid);
    sd_notify_send("MAINPID", state);
}

void lb_sd_notify_reloading(void)
{
    char state[64];
    struct timespec now;
    uint64_t usec = 0;

    if (!sd_notify_enabled())
        return;
    if (clock_gettime(CLOCK_MONOTONIC, &now) == 0)
        usec = (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u;
    if (usec > 0)
        snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, usec);
    else
        snprintf(state, sizeof(state), "RELOADING=1");
    sd_notify_send("RELOADING", state);
}

void lb_sd_notify_stopping(void)
{
    if (!sd_notify_enabled())
        return;
    sd_notify_send("STOPPING", "STOPPING=1");
}
