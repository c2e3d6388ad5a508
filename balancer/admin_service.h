/*
 * lbd's admin API (admin_service.c): lb.v1.Admin and
 * grpc.health.v1.Health/Check, each a row of a method table (admin_call.h)
 * with a request type and a handler that turns protobuf into calls on
 * balancer/control.h and back.  lbd hands the table to the admin server
 * with its struct lb_registry as the context.
 */
#ifndef LB_ADMIN_SERVICE_H
#define LB_ADMIN_SERVICE_H

#include "admin_call.h"

#include <stddef.h>

/* The table (static, *n rows); the server's context must be lbd's struct lb_registry. */
const struct lb_admin_method *lb_admin_service_methods(size_t *n);

#endif
