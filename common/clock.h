// Clocks for timing and progress: wall time (monotonic) and this process's CPU time (all threads).
#pragma once
#include <time.h>

static inline double dino_wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// CPU seconds of the whole process: "per core" figures that other jobs on a shared machine barely skew.
static inline double dino_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
