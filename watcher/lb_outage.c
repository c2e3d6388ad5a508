/*
 * The outage log limiter (see lb_outage.h): a few fields and two
 * transitions, kept apart from the watcher and `lbctl register` so both
 * word their lines their own way and the timing is tested once.
 */
#include "lb_outage.h"

#include <string.h>

void lb_outage_init(struct lb_outage *o, double interval_s)
{
    memset(o, 0, sizeof(*o));
    o->interval_s = interval_s > 0 ? interval_s : LB_OUTAGE_INTERVAL_S;
}

enum lb_outage_report lb_outage_failed(struct lb_outage *o, double now)
{
    enum lb_outage_report r;

    if (!o->down) {
        o->down = true;
        o->announced = false;
        o->since = now;
        o->failures = 0;
    }
    o->failures++;
    if (o->ever_logged && now - o->last_line < o->interval_s)
        return LB_OUTAGE_QUIET;
    r = o->announced ? LB_OUTAGE_STILL : LB_OUTAGE_FIRST;
    o->announced = true;
    o->ever_logged = true;
    o->last_line = now;
    return r;
}

bool lb_outage_ended(struct lb_outage *o, double now, double *down_s, uint64_t *failures)
{
    bool announced = o->down && o->announced;

    *down_s = o->down ? now - o->since : 0;
    *failures = o->down ? o->failures : 0;
    o->down = false;
    o->announced = false;
    o->failures = 0;
    return announced;
}

double lb_outage_duration(const struct lb_outage *o, double now)
{
    return o->down ? now - o->since : 0;
}
