/*
 * systemd readiness and state notifications (sd_notify(3)), for a unit with
 * Type=notify and NotifyAccess=all (deploy/systemd/lbd.service).
 *
 * Contract, for every function here:
 *  - A no-op when $NOTIFY_SOCKET is unset (not started by systemd, or by a
 *    test that does not listen): nothing is formatted or sent.
 *  - Never fails the caller: a message that cannot be sent is logged once
 *    as a warning (sub=systemd) and dropped.  One datagram each, sent
 *    without blocking.
 *  - $NOTIFY_SOCKET is left in the environment, so the process lbd re-execs
 *    at an upgrade (--upgrade-socket) inherits it and can notify too.
 *  - Not async-signal-safe (formats, may allocate): call from the control
 *    loop, e.g. an ev_signal callback, never from a raw signal handler.
 *
 * When lbd calls each:
 *  - lb_sd_notify_ready(): once at start-up, after the first etcd sync with
 *    every listener bound (when /readyz turns 200).  systemd holds
 *    `systemctl start` and units ordered After=lbd until then.  A process
 *    that took over from another sends the pair below instead.
 *  - lb_sd_notify_reloading(): in the old process when SIGUSR2 starts an
 *    upgrade (`systemctl reload` sends it).  A RELOADING=1 must be followed
 *    by a READY=1, or the unit stays "reloading": if the upgrade fails and
 *    the old process keeps serving, it calls lb_sd_notify_status() with the
 *    reason and then lb_sd_notify_ready() itself.
 *  - lb_sd_notify_mainpid(getpid()) then lb_sd_notify_ready(): in the new
 *    process after an upgrade, when it is ready to serve, before it sends
 *    READY over the upgrade socket (from then on the old process may exit
 *    at any moment).  systemd reads notifications before SIGCHLD, so the
 *    main PID has moved to the new process by the time it sees the old one
 *    exit, and the unit stays up; sent after the old one's exit, MAINPID=
 *    comes too late and systemd stops the unit, new process included.
 *    Needs NotifyAccess=all: the sender is not the main PID yet.
 *  - lb_sd_notify_stopping(): at SIGTERM, before the grace period starts.
 *  - lb_sd_notify_status(): anything an operator should read in
 *    `systemctl status lbd` (waiting for etcd, upgrade failed, ...).
 */
#ifndef LB_SD_NOTIFY_H
#define LB_SD_NOTIFY_H

#include <sys/types.h>

/* "READY=1" and "STATUS=serving": start-up or a reload is complete. */
void lb_sd_notify_ready(void);

/*
 * "STATUS=<text>": one line for `systemctl status`.  Control characters
 * (a newline would start another assignment) become spaces; the text is
 * cut at 256 bytes, on a UTF-8 character boundary.
 */
void lb_sd_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "MAINPID=<pid>": systemd tracks `pid` as the service's main process. */
void lb_sd_notify_mainpid(pid_t pid);

/*
 * "RELOADING=1" and "MONOTONIC_USEC=<now>".  systemd 252 (Debian 12) knows
 * RELOADING=1 and ignores MONOTONIC_USEC; systemd 253 and later use it to
 * match the reload to the request (Type=notify-reload requires it), so the
 * same binary is right on both.
 */
void lb_sd_notify_reloading(void);

/* "STOPPING=1": shutdown has begun (the grace period for open connections). */
void lb_sd_notify_stopping(void);

#endif
