/*
 * --state-file PATH: lbd keeps its view of etcd on disk (lb_view_file.h),
 * so that an lbd restarted while etcd is out of reach (a crash, a reboot, a
 * restart by its supervisor during an etcd outage) serves the pools it last
 * knew instead of none, as an lbd taking over at an upgrade does.
 *
 * The file is written after each change, at most once a second, also every
 * 5 minutes while nothing changes (so its age says when lbd last knew etcd)
 * and at exit; each time whole, to PATH.tmp.PID, flushed to disk, then
 * renamed over PATH, so a crash mid-write leaves the previous file (and
 * a PATH.tmp.PID that the next lbd removes once that PID is gone).  A
 * write that fails is logged (again when the error changes, and each
 * minute) and counted; lbd serves on.  lbd refuses at start-up a PATH
 * that holds a file it did not write (main.c).  The view is encoded on the
 * control loop; a thread of its own writes, flushes and renames it, so a
 * slow disk holds up no admin call, check or watch (a change meanwhile is
 * written once that write is done).  The calls here are the control loop's.
 */
#ifndef LB_STATE_FILE_H
#define LB_STATE_FILE_H

#include "lb_buf.h"
#include "lb_update.h"

#include <ev.h>

struct lb_state_file;
struct lb_watcher;

int lb_state_file_new(struct ev_loop *loop, const char *path, struct lb_watcher *w,
                      struct lb_state_file **out);
/* The view changed (a commit): the file follows within a second. */
void lb_state_file_changed(struct lb_state_file *s);
/* Writes the file now, if the watcher has a view (at exit). */
void lb_state_file_flush(struct lb_state_file *s);
void lb_state_file_free(struct lb_state_file *s);

/* lbd_state_file_* metrics.  0, -E2BIG or -ENOMEM. */
int lb_state_file_render_metrics(const struct lb_state_file *s, struct lb_buf *out);

/*
 * Reads the file at path into *out: 0; -ENOENT when there is none (yet);
 * another negative errno with *err a sentence (unreadable, not whole, of
 * another format, ...).  On failure *out holds nothing.
 */
int lb_state_file_load(const char *path, struct lb_saved_view *out, char **err);

#endif
