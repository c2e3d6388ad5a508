/*
 * An intrusive doubly-linked list (nginx's ngx_queue_t, libuv's queue):
 * a struct lb_list is embedded in each element and in the head; the list
 * is circular, so insertion and removal are a few stores and never look
 * at the head.  An element that is not in a list points at itself
 * (lb_list_init), so lb_list_is_linked() tells, and removing it twice is
 * harmless.  No allocation anywhere.
 *
 *   struct lb_list sessions;                 lb_list_init(&sessions);
 *   struct session { struct lb_list link; }; lb_list_insert_head(&sessions, &s->link);
 *   lb_list_for_each_safe(pos, next, &sessions) {
 *       struct session *s = lb_list_entry(pos, struct session, link); ...
 *   }
 */
#ifndef LB_LIST_H
#define LB_LIST_H

#include "lb_util.h"

#include <stdbool.h>
#include <stddef.h>

struct lb_list {
    struct lb_list *prev, *next;
};

/* A head, or an element in no list. */
static inline void lb_list_init(struct lb_list *l)
{
    l->prev = l->next = l;
}

static inline bool lb_list_is_empty(const struct lb_list *head)
{
    return head->next == head;
}

/* True when the element is in a list (it was initialised with lb_list_init()). */
static inline bool lb_list_is_linked(const struct lb_list *e)
{
    return e->next != e;
}

static inline void lb_list_insert_head(struct lb_list *head, struct lb_list *e)
{
    e->next = head->next;
    e->prev = head;
    head->next->prev = e;
    head->next = e;
}

static inline void lb_list_insert_tail(struct lb_list *head, struct lb_list *e)
{
    e->prev = head->prev;
    e->next = head;
    head->prev->next = e;
    head->prev = e;
}

/* Takes e out of its list; e is then in no list.  No-op for an unlinked e. */
static inline void lb_list_remove(struct lb_list *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = e;
}

/* The first and last elements; NULL when empty. */
/* Moves every element of `from` to the end of `head`; `from` is left empty. */
static inline void lb_list_splice_tail(struct lb_list *head, struct lb_list *from)
{
    if (from->next == from)
        return;
    from->next->prev = head->prev;
    head->prev->next = from->next;
    from->prev->next = head;
    head->prev = from->prev;
    from->next = from->prev = from;
}

static inline struct lb_list *lb_list_first(const struct lb_list *head)
{
    return lb_list_is_empty(head) ? NULL : head->next;
}

static inline struct lb_list *lb_list_last(const struct lb_list *head)
{
    return lb_list_is_empty(head) ? NULL : head->prev;
}

/* The element after (before) e, or NULL at the end of the list headed by head. */
static inline struct lb_list *lb_list_next(const struct lb_list *head, const struct lb_list *e)
{
    return e->next == head ? NULL : e->next;
}

static inline struct lb_list *lb_list_prev(const struct lb_list *head, const struct lb_list *e)
{
    return e->prev == head ? NULL : e->prev;
}

/* The struct that embeds the list link `member` at `ptr`. */
#define lb_list_entry(ptr, type, member) lb_container_of(ptr, type, member)

#define lb_list_for_each(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* Iteration that survives removing (and freeing) pos. */
#define lb_list_for_each_safe(pos, tmp, head)                                                      \
    for ((pos) = (head)->next; (tmp) = (pos)->next, (pos) != (head); (pos) = (tmp))

#endif
