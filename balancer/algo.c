/* The algorithm table: the one place that maps a policy's name to its ops. */
#include "algo.h"

const struct lb_algo_ops *lb_algo_for(enum lb_algorithm algorithm)
{
    switch (algorithm) {
    case LB_ALGO_LEASTCONN:
        return &lb_algo_leastconn;
    case LB_ALGO_P2C:
        return &lb_algo_p2c;
    case LB_ALGO_MAGLEV:
        return &lb_algo_maglev;
    case LB_ALGO_WRR:
        break;
    }
    return &lb_algo_wrr;
}
