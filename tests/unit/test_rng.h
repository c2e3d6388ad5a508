/*
 * What the randomized unit tests share: a seeded xorshift64* generator
 * (each test file keeps its state, so a seed replays a run) and the list
 * of every balancing algorithm, which each test runs over.
 */
#ifndef LB_TEST_RNG_H
#define LB_TEST_RNG_H

#include "lb_update.h"

#include <stdint.h>

/* The next number of *state (never 0 once seeded with a non-zero value). */
static inline uint64_t test_rng_next(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
}

static const enum lb_algorithm test_algos[] = {LB_ALGO_WRR, LB_ALGO_LEASTCONN, LB_ALGO_P2C,
                                               LB_ALGO_MAGLEV};
#define N_ALGOS (sizeof(test_algos) / sizeof(test_algos[0]))

#endif
