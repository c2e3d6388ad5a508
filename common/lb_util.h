/* Tiny macros used across lbd and lbctl. */
#ifndef LB_UTIL_H
#define LB_UTIL_H

#include <stddef.h>

/* The struct that embeds `member` at address `ptr` (watchers embedded in objects). */
#define lb_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#define LB_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
