/*
 * The watch stream decoder: bytes of a `POST /v3/watch` response in, typed
 * watch messages out.  No I/O, no clock, no etcd: the tests and the fuzzer
 * drive it exactly as the watcher does.
 *
 * Two stages.  The line splitter takes the arbitrary slices libcurl hands
 * to a write callback and cuts them at '\n' (the gateway writes one JSON
 * object per line); a line longer than its maximum is dropped with an
 * error and the splitter resynchronises at the next '\n'.  The message
 * decoder turns one line into a struct lb_watch_msg and merges fragmented
 * responses ("fragment":true) into one message.  Both stay usable after an
 * error; what the caller does with a lost line is its business (the
 * watcher re-lists, since a lost line may have held events).
 */
#ifndef LB_WATCH_DECODE_H
#define LB_WATCH_DECODE_H

#include "lb_buf.h"
#include "lb_etcd_json.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest watch line accepted; etcd writes ~4 KiB per event with prev_kv. */
#define LB_WATCH_LINE_MAX (16 * 1024 * 1024)
/* Most events, and most decoded bytes, one response may hold (fragments merged). */
#define LB_WATCH_EVENTS_MAX    (1024 * 1024)
#define LB_WATCH_MSG_BYTES_MAX ((size_t)256 * 1024 * 1024)

/* --- line splitter --------------------------------------------------------------------- */

struct lb_watch_lines {
    struct lb_buf partial; /* the unfinished line */
    bool skipping;         /* dropping the rest of an oversized line */
};

/*
 * Called once per complete line (without its '\n') with status 0, or with
 * line NULL and status -E2BIG where an oversized line was dropped.  A
 * non-zero return stops lb_watch_lines_feed(), which returns that value;
 * the bytes after the stop point are discarded.
 */
typedef int (*lb_watch_line_cb)(void *ud, const char *line, size_t len, int status);

void lb_watch_lines_init(struct lb_watch_lines *s, size_t max_line);
int lb_watch_lines_feed(struct lb_watch_lines *s, const char *data, size_t len, lb_watch_line_cb cb,
                        void *ud);
/* Forgets any partial line (a new stream starts). */
void lb_watch_lines_reset(struct lb_watch_lines *s);
void lb_watch_lines_free(struct lb_watch_lines *s);

/* --- message decoder ------------------------------------------------------------------- */

/*
 * One event.  An event lbd cannot use (a key too long, a value too large,
 * a kv or type etcd would not write) is kept with kv.flaw set, so that the
 * events around it still apply and it is skipped and counted by whoever
 * applies them (lb_mirror_apply_events()); its kv.mod_revision still
 * counts for the resume revision when it could be read.
 */
struct lb_watch_event {
    bool deleted;         /* "type":"DELETE"; absent type is a PUT */
    struct lb_etcd_kv kv; /* a DELETE's kv has only key and mod_revision */
    int64_t prev_lease;   /* prev_kv.lease: non-zero on a lease expiry or owner delete */
};

struct lb_watch_msg {
    struct lb_etcd_header header; /* header.revision is 0 on a compaction cancel */
    int64_t watch_id;
    bool created;
    bool canceled;
    int64_t compact_revision; /* with canceled: the watch start was compacted */
    char cancel_reason[256];
    bool progress; /* header only: a progress notification */
    struct lb_watch_event *events;
    size_t n_events;
};

struct lb_watch_decoder {
    struct lb_watch_msg msg; /* the message handed out, or fragments being merged */
    size_t events_cap;
    size_t msg_bytes; /* decoded key and value bytes held in msg */
    bool merging;     /* the last line had "fragment":true */
};

void lb_watch_decoder_init(struct lb_watch_decoder *d);

/*
 * Decodes one line.  Returns 1 with *out pointing to a complete message
 * (owned by the decoder, valid until the next call), 0 when the line was a
 * fragment held for merging (nothing to act on yet), or a negative errno
 * with *err (malloc'd) when the line is not a watch message; pending
 * fragments are dropped then, and the next line starts afresh.  A bad
 * event does not fail its line: it is flagged (struct lb_watch_event).
 */
int lb_watch_decoder_line(struct lb_watch_decoder *d, const char *line, size_t len,
                          const struct lb_watch_msg **out, char **err);

/*
 * The revision a watch may resume after once `msg` is applied, or 0 when
 * the message does not move it: the highest mod_revision among its events,
 * or the header revision of a progress notification (etcd sends those only
 * to watchers that have been sent everything up to it).  The header of a
 * message with events is not used: while catching up, etcd stamps batches
 * with its current revision, ahead of the events the batch holds.
 */
int64_t lb_watch_msg_resume_revision(const struct lb_watch_msg *msg);

/* Drops held fragments (a new stream starts). */
void lb_watch_decoder_reset(struct lb_watch_decoder *d);
void lb_watch_decoder_free(struct lb_watch_decoder *d);

#endif
