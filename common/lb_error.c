/*
 * The one error convention (lb_error.h): a negative errno returned, and a
 * malloc'd sentence for the operator in *err.
 */
#include "lb_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int lb_error_set(char **err, int code, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    if (!err)
        return code;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    free(*err);
    *err = s;
    return code;
}
