// Cross-rank reductions that the objective makes (DINO/iBOT centres, Sinkhorn-Knopp sums, masked-patch
// counts) go through this one table, so the distributed layer only plugs in the transport:
// dist/ fills it with MPI (CPU backend) or NCCL (CUDA backend). NULL means a single process.
#pragma once
#include <stddef.h>

typedef struct Collective Collective;
struct Collective {
    void *ctx;
    int rank, world;
    // In-place sum over all ranks of n floats in backend memory (deterministic order).
    void (*allreduce_sum_f32)(Collective *c, float *buf, size_t n);
};

// Sum over ranks, or nothing for a single process (c == NULL or world == 1).
static inline void collective_sum_f32(Collective *c, float *buf, size_t n) {
    if (c && c->world > 1) c->allreduce_sum_f32(c, buf, n);
}
static inline int collective_world(const Collective *c) { return c ? c->world : 1; }
