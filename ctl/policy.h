/*
 * `lbctl policy`: a pool's policy in etcd, checked by lbd's own validator.
 *
 *   lbctl policy get POOL [-o json]
 *   lbctl policy validate POOL [FILE|-]
 *   lbctl policy set POOL [FILE|-]
 *
 * Talks to etcd (the same --etcd, --prefix and credential flags as
 * `lbctl register`), not to lbd's admin API.
 */
#ifndef LBCTL_POLICY_H
#define LBCTL_POLICY_H

#include "lb_settings.h"

#include <stddef.h>

/*
 * argv[0] is "policy".  `output` is the -o given before the command
 * ("table" or "json"); -o after it wins.  Returns the exit code: 0 ok,
 * 1 refused (a policy with problems) or etcd failed, 2 usage error.
 */
int lbctl_policy_main(int argc, char **argv, const char *output);

/* The rows `lbctl policy` parses (for completion and usage hints); *n is set to their count. */
const struct lb_setting *lbctl_policy_settings(size_t *n);

#endif
