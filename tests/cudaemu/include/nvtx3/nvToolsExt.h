// Stand-in for NVTX (tests/cudaemu/): profiler ranges do nothing on the CPU.
#pragma once
static inline int nvtxRangePushA(const char *) { return 0; }
static inline int nvtxRangePop(void) { return 0; }
