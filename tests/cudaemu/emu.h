// Internals of the CUDA execution layer (tests/cudaemu/): what the runtime stand-in (runtime.cpp)
// offers the library stand-ins (cublas.cpp, nccl.cpp) and the kernel executor (kernel.cpp). Never
// included by project code: the project sees only the stand-in headers in include/.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include <cuda_runtime.h>

namespace cudaemu {

// ---- diagnostics ----------------------------------------------------------------------------------
// A finding of the layer (a bug in the code under test): "cudaemu: <message>" on stderr, then the
// process exits with status 3 at once, so a test fails at the first finding and names it. Mutant tests
// grep for the message.
[[noreturn]] void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2))); // information, no failure

// ---- memory ---------------------------------------------------------------------------------------
enum MemKind { MEM_NONE = 0, MEM_DEVICE = 1, MEM_PINNED = 2 };
// Which kind of allocation [p, p + bytes) lies in entirely (MEM_NONE: not one live allocation, e.g.
// pageable host memory, a freed buffer, or a range that runs past the end of its allocation).
MemKind mem_kind(const void *p, size_t bytes);
// The live allocation containing p (base and size), or false.
bool mem_find(const void *p, const void **base, size_t *size, MemKind *kind);

// ---- streams --------------------------------------------------------------------------------------
// Work is queued per stream and runs later, in an order the scheduler picks among what the recorded
// dependencies allow (CUDAEMU_STREAMS=eager|random|delay, see runtime.cpp). `touches` lists the
// pointers the work reads or writes (a free while work that touches the buffer is pending is a
// finding); `what` names the work in diagnostics.
void enqueue(cudaStream_t s, const char *what, std::function<void()> run,
             std::vector<const void *> touches = {});
// Runs everything queued on `s` so far (and what it depends on): the host then sees its results.
void complete_stream(cudaStream_t s);
// Host code that must not run while the scheduler is inside an op (all runtime entry points lock it).
void lock();
void unlock();
struct Guard {
    Guard() { lock(); }
    ~Guard() { unlock(); }
};
// Whether work enqueued on `s` now is recorded into a graph (stream capture) rather than queued.
bool capturing(cudaStream_t s);
// The stream an op runs on while it runs (NULL outside ops) and the name of the current op.
const char *current_op();

// ---- numerics ---------------------------------------------------------------------------------------
// fp32 -> bf16 -> fp32 by round to nearest even (NaN kept quiet), as __float2bfloat16 and the tensor
// cores' input conversion.
float bf16_round(float x);

// ---- kernels ----------------------------------------------------------------------------------------
// Names of kernels launched so far (a template's name without its arguments), for the coverage test:
// written one per line to $CUDAEMU_COVERAGE (appended) at exit when that is set.
void record_kernel(const char *name);

} // namespace cudaemu
