// A backend that wraps another and forwards every call to it: when counting, it tallies per op the
// calls and the roofline model's FLOPs, bytes and predicted time of each call (model/roofline.h, both
// layouts, computed from the call's arguments); when timing as well, it synchronises the wrapped backend
// around each op and adds the wall time it took. The results are the wrapped backend's, bit for bit
// (tests/test_roofline.c). bench_step prints the per-family table from it; wrapped around the
// allocate-only plan backend with execute = 0 it counts a whole step of any model in seconds, without
// computing anything (bench_step --roofline-only).
#pragma once
#include "model/backend.h"
#include "model/roofline.h"

#ifdef __cplusplus
extern "C" {
#endif
// Takes ownership of inner (backend_free of the wrapper frees it). execute = 0: compute ops are only
// counted, never run (memory ops are still forwarded; sum_squares returns 0): for a plan backend.
// The wrapper's name is the inner backend's. Counting and timing start off.
Backend *backend_timed_new(Backend *inner, const RoofCard *card, int execute);
Backend *backend_timed_inner(Backend *be);
void backend_timed_set(Backend *be, int counting, int timing);
void backend_timed_reset(Backend *be); // clears the tallies
// The tallies, one per RoofOp (ROP_COUNT entries), since the last reset.
const RoofTally *backend_timed_tally(const Backend *be);
#ifdef __cplusplus
}
#endif
