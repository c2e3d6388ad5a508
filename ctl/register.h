/*
 * `lbctl register`: a backend announces itself in etcd and stays announced.
 *
 *   lbctl register --etcd URL[,URL...] [--prefix /lb/] --pool P --id ID
 *                  --addr HOST:PORT [--weight N] [--ttl 10s]
 *                  [--zone ZONE] [--meta KEY=VALUE ...]
 *
 * It grants a lease of --ttl, puts <prefix>pools/<pool>/backends/<id> with
 * {"addr":...,"weight":...} (and "zone", "meta" when given) attached to
 * it, checked by the reader lbd uses, and keeps the lease alive about
 * every ttl/3.  If the lease is lost (it expired while etcd was out of
 * reach, or etcd lost its data) it registers again; on failure it moves to
 * the next endpoint.  SIGTERM or SIGINT revokes the lease, so the backend
 * leaves every lbd's pool at once, and it exits.
 */
#ifndef LBCTL_REGISTER_H
#define LBCTL_REGISTER_H

/*
 * argv[0] is "register".  Runs in the foreground until SIGTERM/SIGINT.
 * Returns the exit code: 0 ok (lease revoked, or never granted), 1 runtime
 * failure (the lease could not be revoked), 2 usage error.
 */
int lbctl_register_main(int argc, char **argv);

#include "lb_settings.h"

#include <stddef.h>

/* register's flag rows (for `lbctl completion`): *n rows, valid for the process. */
const struct lb_setting *lbctl_register_settings(size_t *n);

#endif
