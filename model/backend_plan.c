// A backend for memory planning: every allocation reserves address space only (mmap with
// MAP_NORESERVE, zero pages never touched) and is counted; copies to it are dropped. Building the whole
// training state on it (ssl_model_init) tells how many bytes the same calls would allocate on a GPU,
// on any machine, in seconds. Its compute ops are the CPU backend's and must not be called. (The fused
// linear_gelu_fwd / linear_swiglu_fwd allocate nothing of their own on cuda: their fp32 accumulator is the
// backend scratch that linear_fwd's bf16 path takes already, which the plan does not count either.)
#include "model/backend_plan.h"

#include <string.h>
#include <sys/mman.h>

#include "common/check.h"
#include "model/attention_layout.h"

typedef struct {
    void *p;
    size_t bytes;
} PlanAlloc;

typedef struct {
    PlanAlloc *a;
    int n, cap;
    size_t live;
    // the CUDA layout's bf16 weight copies: (registered buffer, its copy), released together
    void *copy_of[16], *copy[16];
    int n_copies;
} PlanState;

static void *plan_alloc(Backend *be, size_t bytes) {
    PlanState *s = be->impl;
    size_t n = bytes ? bytes : 1;
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) DINO_DIE("plan backend: cannot reserve %zu bytes of address space", bytes);
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->a = dino_realloc(s->a, sizeof(PlanAlloc) * (size_t)s->cap);
    }
    s->a[s->n++] = (PlanAlloc){p, bytes};
    s->live += bytes;
    return p;
}

static void plan_release(Backend *be, void *p) {
    PlanState *s = be->impl;
    for (int i = 0; i < s->n_copies; i++)
        if (s->copy_of[i] == p) { // its bf16 copy goes with it
            void *c = s->copy[i];
            s->n_copies--;
            s->copy_of[i] = s->copy_of[s->n_copies], s->copy[i] = s->copy[s->n_copies];
            plan_release(be, c);
            break;
        }
    for (int i = s->n - 1; i >= 0; i--)
        if (s->a[i].p == p) {
            munmap(p, s->a[i].bytes ? s->a[i].bytes : 1);
            s->live -= s->a[i].bytes;
            s->a[i] = s->a[--s->n];
            return;
        }
    DINO_DIE("plan backend: release of a pointer it did not allocate");
}

static void plan_drop(Backend *be, void *dst, const void *src, size_t bytes) {}
static void plan_zero(Backend *be, void *p, size_t bytes) {} // fresh pages are zero already
static int plan_upload(Backend *be, void *dst, const void *src, size_t bytes) { return 0; }
static void plan_download(Backend *be, void *dst, const void *src, size_t bytes) { memset(dst, 0, bytes); }

// The CUDA backend's saved attention state with its defaults (bf16 GEMMs, DINO_ATTENTION unset): the flash
// path's LSE + bf16 O where it has kernels for the head dim, else the bf16 probabilities.
static size_t plan_attention_saved_floats_cuda(Backend *be, int B, int T, int H, int Dh) {
    return attention_flash_head_dim(Dh) ? attention_saved_floats_flash(B, T, H, Dh) : attention_saved_floats_cuda(B, T, H, 1);
}

// The CUDA backend's activation storage: bf16 where the model asks for it (its default bf16 GEMMs).
static float *plan_alloc_act_cuda(Backend *be, size_t n, DinoDtype dt, size_t *bytes) {
    const size_t b = (dt == DINO_BF16 ? 2 : sizeof(float)) * n;
    if (bytes) *bytes = b;
    return plan_alloc(be, b);
}

// The CUDA backend's bf16 copy of a parameter buffer (model/cuda/weight_copy.cu): 2 bytes per parameter.
static size_t plan_param_copy_register_cuda(Backend *be, float *P, size_t n) {
    PlanState *s = be->impl;
    DINO_ASSERT(s->n_copies < (int)(sizeof s->copy / sizeof s->copy[0]), "plan backend: too many parameter buffers");
    s->copy_of[s->n_copies] = P;
    s->copy[s->n_copies++] = plan_alloc(be, 2 * n);
    return 2 * n;
}
static void plan_param_copy_changed(Backend *be, const float *p, size_t n) {}

static void plan_destroy(Backend *be) {
    PlanState *s = be->impl;
    for (int i = 0; i < s->n; i++) munmap(s->a[i].p, s->a[i].bytes ? s->a[i].bytes : 1);
    free(s->a);
    free(s);
    be->impl = NULL;
}

Backend *backend_plan_new(int cuda_layout) {
    Backend *be = backend_cpu_new();
    if (cuda_layout) be->attention_saved_floats = plan_attention_saved_floats_cuda;
    if (cuda_layout) be->alloc_act = plan_alloc_act_cuda;
    if (cuda_layout) be->param_copy_register = plan_param_copy_register_cuda;
    be->param_copy_changed = plan_param_copy_changed;
    be->name = "plan";
    be->impl = dino_calloc(1, sizeof(PlanState));
    be->alloc = plan_alloc;
    be->release = plan_release;
    be->to_device = plan_drop;
    be->copy = plan_drop;
    be->zero = plan_zero;
    be->upload_async = plan_upload; // host_alloc stays the CPU's: host memory is not device memory
    be->download_async = plan_download; // the plan's memory holds nothing to read back
    be->destroy = plan_destroy;
    return be;
}

size_t backend_plan_live_bytes(const Backend *be) { return ((const PlanState *)be->impl)->live; }
