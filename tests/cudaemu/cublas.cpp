// The cuBLAS and cuBLASLt stand-in of the execution layer (include/cublas_api.h, include/cublasLt.h).
//
// Every call checks its arguments when it is made and answers the status real cuBLAS documents for them
// (CUBLAS_STATUS_INVALID_VALUE for a bad size or leading dimension, CUBLAS_STATUS_NOT_SUPPORTED for a
// type combination outside cublasGemmEx's table, ...). Operands that are not device memory covering
// everything the call reads or writes are findings (cudaemu::fatal), as are outputs that overlap an
// input or another batch's output (a race on a GPU, invisible here because the inputs are packed first).
// The work itself is enqueued on the handle's stream and runs when the scheduler runs that stream;
// alpha and beta are read at call time (host pointer mode; device pointer mode is refused with
// CUBLAS_STATUS_NOT_SUPPORTED and a note: the project never uses it).
//
// The reference GEMM (gemm_one): column-major D = alpha op(A) op(B) + beta C (+ bias), with
//  - inputs converted as the compute type says: COMPUTE_32F_FAST_16BF rounds fp32 inputs to bf16,
//    FAST_TF32 to tf32, FAST_16F to fp16 (as the tensor cores); 32F and 32F_PEDANTIC keep fp32; stored
//    bf16 / fp16 / int8 inputs are exact in fp32;
//  - each output one fp32 accumulator, products rounded to fp32 and added in increasing k (compile this
//    file with -ffp-contract=off, as the rest of the layer, so nothing is fused);
//  - then r = alpha * acc, r = r + beta * C (C not read at all when beta == 0: NaNs in C do not
//    propagate), r = r + bias[i], stored as D's type (bf16 and fp16 by round to nearest even).
// Blocked for speed (packed panels, an 8 x 4 register tile, k in chunks with the accumulators kept in an
// fp32 buffer between chunks), which changes none of the above.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <map>
#include <vector>

#include <cublasLt.h>
#include <cublas_v2.h>

#include "emu.h"

// ---- live objects: a destroyed or made-up handle or descriptor is a finding ---------------------------

enum ObjKind { OBJ_HANDLE = 1, OBJ_LT_HANDLE, OBJ_DESC, OBJ_LAYOUT, OBJ_PREF };
static const char *obj_name[] = {"", "cublasHandle_t", "cublasLtHandle_t", "cublasLtMatmulDesc_t",
                                 "cublasLtMatrixLayout_t", "cublasLtMatmulPreference_t"};
static std::map<const void *, ObjKind> live_objs;

static void obj_add(const void *p, ObjKind k) { live_objs[p] = k; }
static void obj_check(const void *p, ObjKind k, const char *api) {
    auto it = live_objs.find(p);
    if (it == live_objs.end() || it->second != k)
        cudaemu::fatal("%s: %s %p was destroyed or never created", api, obj_name[k], p);
}
static void obj_remove(const void *p, ObjKind k, const char *api) {
    obj_check(p, k, api);
    live_objs.erase(p);
}

// ---- element types ----------------------------------------------------------------------------------

static size_t type_size(cudaDataType_t t) {
    switch (t) {
    case CUDA_R_8I: return 1;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    case CUDA_R_64F: return 8;
    default: return 4;
    }
}

static float half_to_float(uint16_t h) {
    const int e = (h >> 10) & 0x1f, mant = h & 0x3ff;
    float v = e == 0    ? ldexpf((float)mant, -24)
              : e == 31 ? (mant ? NAN : INFINITY)
                        : ldexpf((float)(1024 + mant), e - 25);
    return (h & 0x8000) ? -v : v;
}

// fp32 -> fp16 by round to nearest even (overflow to infinity, subnormals kept, NaN stays NaN)
static uint16_t float_to_half(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) return sign | 0x7e00;
    if (u >= 0x477ff000u) return sign | 0x7c00;                      // >= 65520: rounds to infinity
    if (u < 0x38800000u) return sign | (uint16_t)lrintf(fabsf(f) * 16777216.0f); // subnormal: units of 2^-24
    return sign | (uint16_t)((u - 0x38000000u + 0xfffu + ((u >> 13) & 1u)) >> 13);
}

// fp32 -> tf32 (10-bit mantissa) by round to nearest, ties away from zero, as cvt.rna.tf32.f32
static float tf32_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return x; // Inf, NaN
    u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&x, &u, 4);
    return x;
}

static float bf16_bits_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float load(cudaDataType_t t, const void *p, size_t i) {
    switch (t) {
    case CUDA_R_16BF: return bf16_bits_to_float(((const uint16_t *)p)[i]);
    case CUDA_R_16F: return half_to_float(((const uint16_t *)p)[i]);
    case CUDA_R_8I: return (float)((const int8_t *)p)[i];
    default: return ((const float *)p)[i];
    }
}

static void store(cudaDataType_t t, void *p, size_t i, float v) {
    switch (t) {
    case CUDA_R_16BF: {
        float r = cudaemu::bf16_round(v);
        uint32_t u;
        memcpy(&u, &r, 4);
        ((uint16_t *)p)[i] = (uint16_t)(u >> 16);
        break;
    }
    case CUDA_R_16F: ((uint16_t *)p)[i] = float_to_half(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

// n contiguous elements of type t -> fp32, converted as the compute type converts its inputs
static void gather(float *dst, const void *src, cudaDataType_t t, int64_t n, cublasComputeType_t ct) {
    if (t != CUDA_R_32F) {
        for (int64_t i = 0; i < n; i++) dst[i] = load(t, src, (size_t)i);
        return;
    }
    const float *s = (const float *)src;
    switch (ct) {
    case CUBLAS_COMPUTE_32F_FAST_16BF:
        for (int64_t i = 0; i < n; i++) dst[i] = cudaemu::bf16_round(s[i]);
        break;
    case CUBLAS_COMPUTE_32F_FAST_TF32:
        for (int64_t i = 0; i < n; i++) dst[i] = tf32_round(s[i]);
        break;
    case CUBLAS_COMPUTE_32F_FAST_16F:
        for (int64_t i = 0; i < n; i++) dst[i] = half_to_float(float_to_half(s[i]));
        break;
    default: memcpy(dst, s, (size_t)n * 4); break;
    }
}

// ---- the type combinations of cublasGemmEx's documented table ------------------------------------

enum Combo { COMBO_OK, COMBO_NOT_ALLOWED, COMBO_NOT_MODELLED };

static Combo combo(cublasComputeType_t ct, cudaDataType_t a, cudaDataType_t b, cudaDataType_t c) {
    if (a != b) return COMBO_NOT_ALLOWED;
    switch (ct) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
        if (a == CUDA_R_32F) return c == CUDA_R_32F ? COMBO_OK : COMBO_NOT_ALLOWED;
        if (a == CUDA_R_16BF || a == CUDA_R_16F) return c == a || c == CUDA_R_32F ? COMBO_OK : COMBO_NOT_ALLOWED;
        if (a == CUDA_R_8I) return c == CUDA_R_32F ? COMBO_OK : COMBO_NOT_ALLOWED;
        return COMBO_NOT_ALLOWED;
    case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_TF32:
        return a == CUDA_R_32F && c == CUDA_R_32F ? COMBO_OK : COMBO_NOT_ALLOWED;
    // in the table, but with half / int / double scalars: not modelled (the project does not use them)
    case CUBLAS_COMPUTE_16F:
    case CUBLAS_COMPUTE_16F_PEDANTIC:
        return a == CUDA_R_16F && c == CUDA_R_16F ? COMBO_NOT_MODELLED : COMBO_NOT_ALLOWED;
    case CUBLAS_COMPUTE_32I:
    case CUBLAS_COMPUTE_32I_PEDANTIC:
        return a == CUDA_R_8I && c == CUDA_R_32I ? COMBO_NOT_MODELLED : COMBO_NOT_ALLOWED;
    case CUBLAS_COMPUTE_64F:
    case CUBLAS_COMPUTE_64F_PEDANTIC:
        return a == CUDA_R_64F && c == CUDA_R_64F ? COMBO_NOT_MODELLED : COMBO_NOT_ALLOWED;
    default: return COMBO_NOT_ALLOWED;
    }
}

static cublasStatus_t check_combo(const char *api, cublasComputeType_t ct, cudaDataType_t a, cudaDataType_t b,
                                  cudaDataType_t c) {
    Combo k = combo(ct, a, b, c);
    if (k == COMBO_NOT_MODELLED)
        cudaemu::note("%s: compute type %d with A/B/C types %d/%d/%d is valid cuBLAS but not modelled by the "
                      "layer (tests/cudaemu/cublas.cpp): answered CUBLAS_STATUS_NOT_SUPPORTED",
                      api, (int)ct, (int)a, (int)b, (int)c);
    return k == COMBO_OK ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

// ---- operands -------------------------------------------------------------------------------------

// Bytes a column-major rows x cols matrix with leading dimension ld spans (0 if it is empty).
static size_t extent_bytes(int64_t rows, int64_t cols, int64_t ld, size_t es) {
    if (rows <= 0 || cols <= 0) return 0;
    return (size_t)((cols - 1) * ld + rows) * es;
}

static size_t align_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    if (!a) return 256;
    size_t al = (size_t)(a & (~a + 1)); // lowest set bit
    return al > 256 ? 256 : al;
}

// The operand must be device memory covering [p, p + bytes) and aligned to its element size.
static void check_device(const char *api, const char *what, const void *p, size_t bytes, size_t es) {
    if (bytes == 0) return;
    if (cudaemu::mem_kind(p, bytes) != cudaemu::MEM_DEVICE) {
        const void *base;
        size_t size;
        cudaemu::MemKind kind;
        if (!cudaemu::mem_find(p, &base, &size, &kind))
            cudaemu::fatal("%s: %s (%p, %zu bytes) is not inside one device allocation (host memory, a freed "
                           "buffer, or a wrong pointer)", api, what, p, bytes);
        cudaemu::fatal("%s: %s (%p, %zu bytes) is not inside one device allocation: it lies in the %s allocation "
                       "[%p, +%zu bytes) and %s", api, what, p, bytes,
                       kind == cudaemu::MEM_DEVICE ? "device" : "page-locked host", base, size,
                       (uintptr_t)p + bytes > (uintptr_t)base + size ? "runs past its end (a leading dimension, "
                                                                       "stride or size too large?)"
                                                                     : "is not device memory");
    }
    if ((uintptr_t)p % es)
        cudaemu::fatal("%s: %s (%p) is not aligned to its %zu-byte elements (a GPU faults)", api, what, p, es);
}

// ---- the reference GEMM ---------------------------------------------------------------------------

// One GEMM's parameters, captured when the call is made. D is m x n; C has D's shape (ldc).
struct Gemm {
    bool ta, tb; // op(A) = A^T, op(B) = B^T
    int m, n, k;
    float alpha, beta;
    cudaDataType_t at, bt, ct, dt;
    int64_t lda, ldb, ldc, ldd;
    cublasComputeType_t compute;
    bool bias; // the Lt BIAS epilogue: bias[i] (D's type) added to row i
};

static int64_t a_rows(const Gemm &g) { return g.ta ? g.k : g.m; } // A as stored
static int64_t a_cols(const Gemm &g) { return g.ta ? g.m : g.k; }
static int64_t b_rows(const Gemm &g) { return g.tb ? g.n : g.k; }
static int64_t b_cols(const Gemm &g) { return g.tb ? g.k : g.n; }
static bool reads_ab(const Gemm &g) { return g.k > 0 && g.alpha != 0.0f; }
static bool reads_c(const Gemm &g) { return g.beta != 0.0f; }

enum { MR = 8, NR = 4, KC = 256 }; // register tile rows x cols, k chunk

struct Scratch {
    std::vector<float> a, b, acc, tmp;
};

// Packs the k-indexed vectors of an operand into panels of W: dst[(r / W) * k * W + p * W + r % W] =
// element (r, p), where element (r, p) is src[r * sr + p * sp] and one of sr, sp is 1. Rows past nr are 0.
static void pack(float *dst, int W, int64_t nr, int64_t k, const void *src, cudaDataType_t t, int64_t sr,
                 int64_t sp, cublasComputeType_t ct, std::vector<float> &tmp) {
    const size_t es = type_size(t);
    const int64_t nr_pad = (nr + W - 1) / W * W;
    memset(dst, 0, sizeof(float) * (size_t)(nr_pad * k));
    if (sr == 1) { // contiguous along r: one gather per p
        tmp.resize((size_t)nr);
        for (int64_t p = 0; p < k; p++) {
            gather(tmp.data(), (const char *)src + (size_t)(p * sp) * es, t, nr, ct);
            for (int64_t r = 0; r < nr; r++) dst[(r / W) * k * W + p * W + r % W] = tmp[(size_t)r];
        }
    } else { // contiguous along p: one gather per r
        tmp.resize((size_t)k);
        for (int64_t r = 0; r < nr; r++) {
            gather(tmp.data(), (const char *)src + (size_t)(r * sr) * es, t, k, ct);
            float *d = dst + (r / W) * k * W + r % W;
            for (int64_t p = 0; p < k; p++) d[p * W] = tmp[(size_t)p];
        }
    }
}

typedef float v4 __attribute__((vector_size(16)));

// acc (an MR x NR tile, leading dimension ld) += a (k x MR panel) * b (k x NR panel) over p in [p0, p1):
// each accumulator adds its products in increasing p, one at a time. It reads only the panels sized above,
// so it is left uninstrumented: sanitizers would make the hot loop ten times slower.
__attribute__((no_sanitize("address", "undefined"))) static void tile(const float *a, const float *b, int64_t p0,
                                                                      int64_t p1, float *acc, int64_t ld) {
    v4 c[NR][2];
    for (int j = 0; j < NR; j++) {
        memcpy(&c[j][0], acc + j * ld, 16);
        memcpy(&c[j][1], acc + j * ld + 4, 16);
    }
    for (int64_t p = p0; p < p1; p++) {
        v4 a0, a1;
        memcpy(&a0, a + p * MR, 16);
        memcpy(&a1, a + p * MR + 4, 16);
        const float *bp = b + p * NR;
        for (int j = 0; j < NR; j++) {
            c[j][0] += a0 * bp[j];
            c[j][1] += a1 * bp[j];
        }
    }
    for (int j = 0; j < NR; j++) {
        memcpy(acc + j * ld, &c[j][0], 16);
        memcpy(acc + j * ld + 4, &c[j][1], 16);
    }
}

static void gemm_one(const Gemm &g, const void *A, const void *B, const void *C, void *D, const void *bias,
                     Scratch &s) {
    const int64_t mp = (g.m + MR - 1) / MR * MR, np = (g.n + NR - 1) / NR * NR, k = g.k;
    s.acc.assign((size_t)(mp * np), 0.0f);
    if (reads_ab(g)) {
        s.a.resize((size_t)(mp * k));
        s.b.resize((size_t)(np * k));
        // op(A)(i, p) = A[i + p lda] or A[p + i lda]; op(B)(p, j) = B[p + j ldb] or B[j + p ldb]
        pack(s.a.data(), MR, g.m, k, A, g.at, g.ta ? g.lda : 1, g.ta ? 1 : g.lda, g.compute, s.tmp);
        pack(s.b.data(), NR, g.n, k, B, g.bt, g.tb ? 1 : g.ldb, g.tb ? g.ldb : 1, g.compute, s.tmp);
        for (int64_t p0 = 0; p0 < k; p0 += KC) {
            const int64_t p1 = std::min<int64_t>(k, p0 + KC);
            for (int64_t jb = 0; jb < np / NR; jb++)
                for (int64_t ib = 0; ib < mp / MR; ib++)
                    tile(s.a.data() + ib * k * MR, s.b.data() + jb * k * NR, p0, p1,
                         s.acc.data() + jb * NR * mp + ib * MR, mp);
        }
    }
    for (int64_t j = 0; j < g.n; j++)
        for (int64_t i = 0; i < g.m; i++) {
            float r = g.alpha * s.acc[(size_t)(i + j * mp)];
            if (reads_c(g)) r = r + g.beta * load(g.ct, C, (size_t)(i + j * g.ldc));
            if (g.bias) r = r + load(g.dt, bias, (size_t)i);
            store(g.dt, D, (size_t)(i + j * g.ldd), r);
        }
}

// ---- overlaps: an output that overlaps an input, or another batch's output, is a race on a GPU ----------

struct Region { // the bytes of a stored matrix: column j is [base + j ld es, + rows es)
    const char *what;
    int batch;
    uintptr_t base;
    int64_t rows, cols, ld;
    size_t es;
    uintptr_t lo() const { return base; }
    uintptr_t hi() const { return base + extent_bytes(rows, cols, ld, es); }
};

// Outputs that overlap in their extents, grouped; a bitmap of their bytes is made when needed.
struct Cluster {
    uintptr_t lo, hi;
    std::vector<const Region *> members;
    std::vector<uint64_t> bits;
};

// Calls fn(word, mask) for the bits of the bytes [s, e) of the cluster, a 64-bit word at a time.
template <typename F> static void for_bits(Cluster &c, uintptr_t s, uintptr_t e, F fn) {
    for (uintptr_t x = s - c.lo, end = e - c.lo; x < end;) {
        const uintptr_t b = x % 64, nb = std::min<uintptr_t>(64 - b, end - x);
        if (!fn(c.bits[x / 64], (nb == 64 ? ~0ull : (1ull << nb) - 1) << b)) return;
        x += nb;
    }
}
// The first byte of [s, e) that the cluster's outputs cover (0: none)
static uintptr_t first_set(Cluster &c, uintptr_t s, uintptr_t e) {
    uintptr_t hit = 0;
    for_bits(c, s, e, [&](uint64_t &w, uint64_t mask) {
        if (w & mask) hit = c.lo + (uintptr_t)(&w - c.bits.data()) * 64 + (uintptr_t)__builtin_ctzll(w & mask);
        return hit == 0;
    });
    return hit;
}

static const Region *owner(const Cluster &c, uintptr_t a) {
    for (const Region *r : c.members)
        for (int64_t j = 0; j < r->cols; j++) {
            uintptr_t s = r->base + (uintptr_t)(j * r->ld) * r->es;
            if (a >= s && a < s + (uintptr_t)r->rows * r->es) return r;
        }
    return nullptr;
}

static void build(const char *api, Cluster &c) {
    if (!c.bits.empty()) return;
    c.bits.assign((c.hi - c.lo + 63) / 64, 0);
    for (const Region *r : c.members)
        for (int64_t j = 0; j < r->cols; j++) {
            uintptr_t s = r->base + (uintptr_t)(j * r->ld) * r->es, e = s + (uintptr_t)r->rows * r->es;
            if (uintptr_t a = first_set(c, s, e)) {
                const Region *o = owner(c, a);
                cudaemu::fatal("%s: the output %s of batch %d (%p) overlaps the output %s of batch %d (%p) at "
                               "%p: the batches run in parallel on a GPU (a race)",
                               api, r->what, r->batch, (void *)r->base, o ? o->what : "?", o ? o->batch : -1,
                               o ? (void *)o->base : nullptr, (void *)a);
            }
            for_bits(c, s, e, [](uint64_t &w, uint64_t mask) {
                w |= mask;
                return true;
            });
        }
}

static void check_overlaps(const char *api, const std::vector<Region> &writes, const std::vector<Region> &reads) {
    std::vector<const Region *> w;
    for (const Region &r : writes)
        if (r.hi() > r.lo()) w.push_back(&r);
    std::sort(w.begin(), w.end(), [](const Region *a, const Region *b) { return a->lo() < b->lo(); });
    std::vector<Cluster> cl;
    for (const Region *r : w) {
        if (cl.empty() || r->lo() >= cl.back().hi) cl.push_back(Cluster{r->lo(), r->hi(), {}, {}});
        cl.back().hi = std::max(cl.back().hi, r->hi());
        cl.back().members.push_back(r);
    }
    for (Cluster &c : cl)
        if (c.members.size() > 1) build(api, c);
    for (const Region &r : reads) {
        if (r.hi() <= r.lo()) continue;
        // the first cluster that ends after r starts, and on while they start before r ends
        auto it = std::upper_bound(cl.begin(), cl.end(), r.lo(),
                                   [](uintptr_t a, const Cluster &c) { return a < c.hi; });
        for (; it != cl.end() && it->lo < r.hi(); ++it) {
            build(api, *it);
            for (int64_t j = 0; j < r.cols; j++) {
                uintptr_t s = r.base + (uintptr_t)(j * r.ld) * r.es, e = s + (uintptr_t)r.rows * r.es;
                if (std::max(s, it->lo) >= std::min(e, it->hi)) continue;
                if (uintptr_t a = first_set(*it, std::max(s, it->lo), std::min(e, it->hi))) {
                    const Region *o = owner(*it, a);
                    cudaemu::fatal("%s: the input %s of batch %d (%p) overlaps the output %s of batch %d (%p) at %p: "
                                   "a GPU may write it while it is read",
                                   api, r.what, r.batch, (void *)r.base, o ? o->what : "?", o ? o->batch : -1,
                                   o ? (void *)o->base : nullptr, (void *)a);
                }
            }
        }
    }
}

// Runs the batches of a call (when its stream runs): checks, then one reference GEMM per batch.
static void execute(const char *api, const Gemm &g, const std::vector<const void *> &A,
                    const std::vector<const void *> &B, const std::vector<const void *> &C,
                    const std::vector<void *> &D, const void *bias) {
    std::vector<Region> writes, reads;
    const size_t ea = type_size(g.at), eb = type_size(g.bt), ec = type_size(g.ct), ed = type_size(g.dt);
    for (size_t i = 0; i < D.size(); i++) {
        writes.push_back(Region{C[i] == D[i] ? "C" : "D", (int)i, (uintptr_t)D[i], g.m, g.n, g.ldd, ed});
        if (reads_ab(g)) {
            reads.push_back(Region{"A", (int)i, (uintptr_t)A[i], a_rows(g), a_cols(g), g.lda, ea});
            reads.push_back(Region{"B", (int)i, (uintptr_t)B[i], b_rows(g), b_cols(g), g.ldb, eb});
        }
        if (reads_c(g) && C[i] != D[i]) reads.push_back(Region{"C", (int)i, (uintptr_t)C[i], g.m, g.n, g.ldc, ec});
    }
    if (g.bias) reads.push_back(Region{"bias", 0, (uintptr_t)bias, g.m, 1, g.m, ed});
    check_overlaps(api, writes, reads);
    Scratch s;
    for (size_t i = 0; i < D.size(); i++) gemm_one(g, A[i], B[i], C[i], D[i], bias, s);
}

// ---- cuBLAS ---------------------------------------------------------------------------------------

struct cublasContext {
    cudaStream_t stream;
    cublasPointerMode_t mode;
    void *workspace; // cublasSetWorkspace (NULL: cuBLAS's own)
    size_t workspace_bytes;
};

// A cuBLAS call recorded into a CUDA graph: with cuBLAS's own workspace the library allocates during the
// capture, which the capture refuses; cublasSetWorkspace makes the call capturable.
static void capture_check(cublasHandle_t handle, const char *api) {
    if (cudaemu::capturing(handle->stream) && !handle->workspace)
        cudaemu::fatal("%s captured into a CUDA graph on a handle without a workspace: set one with "
                       "cublasSetWorkspace before the capture (cuBLAS would allocate its own during the capture)",
                       api);
}

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    cudaemu::Guard lk;
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext{nullptr, CUBLAS_POINTER_MODE_HOST, nullptr, 0};
    obj_add(*handle, OBJ_HANDLE);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    cudaemu::Guard lk;
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_remove(handle, OBJ_HANDLE, "cublasDestroy");
    delete handle; // work already enqueued holds copies of what it needs
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    cudaemu::Guard lk;
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_check(handle, OBJ_HANDLE, "cublasSetStream");
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t bytes) {
    cudaemu::Guard lk;
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_check(handle, OBJ_HANDLE, "cublasSetWorkspace");
    if (workspace && cudaemu::mem_kind(workspace, bytes) != cudaemu::MEM_DEVICE)
        cudaemu::fatal("cublasSetWorkspace: %p (%zu bytes) is not inside one device allocation", workspace, bytes);
    handle->workspace = workspace;
    handle->workspace_bytes = bytes;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *stream) {
    cudaemu::Guard lk;
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_check(handle, OBJ_HANDLE, "cublasGetStream");
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode(cublasHandle_t handle, cublasPointerMode_t mode) {
    cudaemu::Guard lk;
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_check(handle, OBJ_HANDLE, "cublasSetPointerMode");
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) return CUBLAS_STATUS_INVALID_VALUE;
    handle->mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode(cublasHandle_t handle, cublasPointerMode_t *mode) {
    cudaemu::Guard lk;
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_check(handle, OBJ_HANDLE, "cublasGetPointerMode");
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->mode;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
    }
    return "unknown error";
}

// The checks every GemmEx flavour makes at call time; fills g. Scalars are read here (host mode).
static cublasStatus_t gemm_args(const char *api, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                int n, int k, const void *alpha, cudaDataType at, int lda, cudaDataType bt, int ldb,
                                const void *beta, cudaDataType ct, int ldc, int batch, cublasComputeType_t compute,
                                cublasGemmAlgo_t algo, Gemm *g) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_check(h, OBJ_HANDLE, api);
    const bool op_ok = (ta == CUBLAS_OP_N || ta == CUBLAS_OP_T || ta == CUBLAS_OP_C) &&
                       (tb == CUBLAS_OP_N || tb == CUBLAS_OP_T || tb == CUBLAS_OP_C);
    if (!op_ok || m < 0 || n < 0 || k < 0 || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    *g = Gemm{ta != CUBLAS_OP_N, tb != CUBLAS_OP_N, m, n, k, 0, 0, at, bt, ct, ct, lda, ldb, ldc, ldc, compute, false};
    if (lda < std::max<int64_t>(1, a_rows(*g)) || ldb < std::max<int64_t>(1, b_rows(*g)) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!((algo >= -1 && algo <= 23) || (algo >= 99 && algo <= 115))) return CUBLAS_STATUS_INVALID_VALUE;
    cublasStatus_t st = check_combo(api, compute, at, bt, ct);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (h->mode != CUBLAS_POINTER_MODE_HOST) {
        cudaemu::note("%s: CUBLAS_POINTER_MODE_DEVICE is not modelled by the layer: answered "
                      "CUBLAS_STATUS_NOT_SUPPORTED", api);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    g->alpha = *(const float *)alpha; // every modelled compute type has fp32 scalars
    g->beta = *(const float *)beta;
    return CUBLAS_STATUS_SUCCESS;
}

// [lo, hi) in elements of batch offsets 0, stride, ..., (batch - 1) stride, plus one matrix's extent
static void batch_span(long long stride, int batch, size_t ext_bytes, size_t es, int64_t *lo, size_t *bytes) {
    const int64_t last = (int64_t)(batch - 1) * stride;
    *lo = std::min<int64_t>(0, last);
    *bytes = ext_bytes ? (size_t)(std::max<int64_t>(0, last) - *lo) * es + ext_bytes : 0;
}

static char *op_name(char *buf, size_t n, const char *api, const Gemm &g, int batch) {
    snprintf(buf, n, "%s(%c%c m=%d n=%d k=%d batch=%d)", api, g.ta ? 'T' : 'N', g.tb ? 'T' : 'N', g.m, g.n, g.k,
             batch);
    return buf;
}


// cublasGemmEx (one batch, strides 0) and cublasGemmStridedBatchedEx
static cublasStatus_t gemm_strided(const char *api, cublasHandle_t handle, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k, const void *alpha, const void *A,
                                   cudaDataType Atype, int lda, long long strideA, const void *B, cudaDataType Btype,
                                   int ldb, long long strideB, const void *beta, void *C, cudaDataType Ctype, int ldc,
                                   long long strideC, int batch, cublasComputeType_t computeType,
                                   cublasGemmAlgo_t algo) {
    cudaemu::Guard lk;
    Gemm g;
    cublasStatus_t st = gemm_args(api, handle, transa, transb, m, n, k, alpha, Atype, lda, Btype, ldb, beta, Ctype, ldc,
                                  batch, computeType, algo, &g);
    if (st != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0 || batch == 0) return st;
    const size_t ea = type_size(Atype), eb = type_size(Btype), ec = type_size(Ctype);
    const char *all = batch > 1 ? " over all batches" : "";
    char what[64];
    int64_t lo;
    size_t bytes;
    if (reads_ab(g)) {
        batch_span(strideA, batch, extent_bytes(a_rows(g), a_cols(g), lda, ea), ea, &lo, &bytes);
        snprintf(what, sizeof what, "A%s", all);
        check_device(api, what, (const char *)A + lo * (int64_t)ea, bytes, ea);
        batch_span(strideB, batch, extent_bytes(b_rows(g), b_cols(g), ldb, eb), eb, &lo, &bytes);
        snprintf(what, sizeof what, "B%s", all);
        check_device(api, what, (const char *)B + lo * (int64_t)eb, bytes, eb);
    }
    batch_span(strideC, batch, extent_bytes(m, n, ldc, ec), ec, &lo, &bytes);
    snprintf(what, sizeof what, "C%s", all);
    check_device(api, what, (const char *)C + lo * (int64_t)ec, bytes, ec);
    capture_check(handle, api);
    char name[160];
    cudaemu::enqueue(
        handle->stream, op_name(name, sizeof name, api, g, batch),
        [=] {
            std::vector<const void *> a(batch), b(batch), c(batch);
            std::vector<void *> d(batch);
            for (int i = 0; i < batch; i++) {
                a[i] = (const char *)A + i * strideA * (int64_t)ea;
                b[i] = (const char *)B + i * strideB * (int64_t)eb;
                d[i] = (char *)C + i * strideC * (int64_t)ec;
                c[i] = d[i];
            }
            execute(api, g, a, b, c, d, nullptr);
        },
        {A, B, C});
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    return gemm_strided("cublasGemmEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0,
                        beta, C, Ctype, ldc, 0, 1, computeType, algo);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long int strideA, const void *B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void *beta, void *C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    return gemm_strided("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA,
                        B, Btype, ldb, strideB, beta, C, Ctype, ldc, strideC, batchCount, computeType, algo);
}

// The pointer arrays are device memory that a kernel earlier on the stream may still be writing: they are
// read, and each pointer checked, only when the call runs.
cublasStatus_t cublasGemmBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                   int n, int k, const void *alpha, const void *const Aarray[], cudaDataType Atype,
                                   int lda, const void *const Barray[], cudaDataType Btype, int ldb, const void *beta,
                                   void *const Carray[], cudaDataType Ctype, int ldc, int batchCount,
                                   cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    const char *api = "cublasGemmBatchedEx";
    cudaemu::Guard lk;
    Gemm g;
    const int batch = batchCount;
    cublasStatus_t st = gemm_args(api, handle, transa, transb, m, n, k, alpha, Atype, lda, Btype, ldb, beta, Ctype, ldc,
                                  batch, computeType, algo, &g);
    if (st != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0 || batch == 0) return st;
    const size_t arr = sizeof(void *) * (size_t)batch;
    if (reads_ab(g)) {
        check_device(api, "the pointer array Aarray", Aarray, arr, sizeof(void *));
        check_device(api, "the pointer array Barray", Barray, arr, sizeof(void *));
    }
    check_device(api, "the pointer array Carray", Carray, arr, sizeof(void *));
    capture_check(handle, api);
    char name[160];
    cudaemu::enqueue(
        handle->stream, op_name(name, sizeof name, api, g, batch),
        [=] {
            const size_t ea = type_size(g.at), eb = type_size(g.bt), ec = type_size(g.ct);
            const size_t xa = extent_bytes(a_rows(g), a_cols(g), g.lda, ea),
                         xb = extent_bytes(b_rows(g), b_cols(g), g.ldb, eb), xc = extent_bytes(g.m, g.n, g.ldc, ec);
            std::vector<const void *> a(batch), b(batch), c(batch);
            std::vector<void *> d(batch);
            char what[64];
            for (int i = 0; i < batch; i++) {
                if (reads_ab(g)) {
                    a[i] = Aarray[i];
                    b[i] = Barray[i];
                    snprintf(what, sizeof what, "Aarray[%d]", i);
                    check_device(api, what, a[i], xa, ea);
                    snprintf(what, sizeof what, "Barray[%d]", i);
                    check_device(api, what, b[i], xb, eb);
                }
                d[i] = Carray[i];
                c[i] = d[i];
                snprintf(what, sizeof what, "Carray[%d]", i);
                check_device(api, what, d[i], xc, ec);
            }
            execute(api, g, a, b, c, d, nullptr);
        },
        {Aarray, Barray, Carray});
    return CUBLAS_STATUS_SUCCESS;
}

// ---- cuBLASLt ---------------------------------------------------------------------------------------

struct cublasLtContext {
    int unused;
};
struct cublasLtMatmulDescOpaque_st {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    int32_t pointer_mode;
    int32_t ta, tb;
    uint32_t epilogue;
    const void *bias;
    int32_t bias_type; // -1: D's type
};
struct cublasLtMatrixLayoutOpaque_st {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};
struct cublasLtMatmulPreferenceOpaque_st {
    uint32_t search_mode;
    uint64_t max_workspace;
    uint32_t reduction_mask;
    uint32_t min_align[4]; // A, B, C, D
};

// What an algorithm was chosen for, kept inside cublasLtMatmulAlgo_t.data.
struct AlgoRecord {
    uint64_t magic;
    uint32_t align[4]; // A, B, C, D: the addresses the algorithm may assume are multiples of these
    uint32_t align_bias;
    int32_t compute;
    uint32_t epilogue;
    uint32_t unused;
    uint64_t workspace; // what it needs (cublasLtMatmul must be given at least this)
};
static_assert(sizeof(AlgoRecord) <= sizeof(cublasLtMatmulAlgo_t), "AlgoRecord must fit the opaque algo");
static const uint64_t ALGO_MAGIC = 0x6f676c61756d6563ull; // "cemualgo"

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    cudaemu::Guard lk;
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    *h = new cublasLtContext{0};
    obj_add(*h, OBJ_LT_HANDLE);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    cudaemu::Guard lk;
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_remove(h, OBJ_LT_HANDLE, "cublasLtDestroy");
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType) {
    cudaemu::Guard lk;
    if (!d) return CUBLAS_STATUS_INVALID_VALUE;
    *d = new cublasLtMatmulDescOpaque_st{computeType, scaleType, CUBLASLT_POINTER_MODE_HOST, CUBLAS_OP_N, CUBLAS_OP_N,
                                         CUBLASLT_EPILOGUE_DEFAULT, nullptr, -1};
    obj_add(*d, OBJ_DESC);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    cudaemu::Guard lk;
    if (!d) return CUBLAS_STATUS_INVALID_VALUE;
    obj_remove(d, OBJ_DESC, "cublasLtMatmulDescDestroy");
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}

// Copies an attribute of exactly sizeof(*dst) bytes (INVALID_VALUE otherwise, as the library)
template <typename T> static cublasStatus_t set_attr(T *dst, const void *buf, size_t size) {
    if (!buf || size != sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(dst, buf, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size) {
    cudaemu::Guard lk;
    if (!d) return CUBLAS_STATUS_INVALID_VALUE;
    obj_check(d, OBJ_DESC, "cublasLtMatmulDescSetAttribute");
    int32_t v;
    cublasStatus_t st;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
        if ((st = set_attr(&v, buf, size)) == CUBLAS_STATUS_SUCCESS) d->compute = (cublasComputeType_t)v;
        return st;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE:
        if ((st = set_attr(&v, buf, size)) == CUBLAS_STATUS_SUCCESS) d->scale = (cudaDataType_t)v;
        return st;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return set_attr(&d->pointer_mode, buf, size);
    case CUBLASLT_MATMUL_DESC_TRANSA: return set_attr(&d->ta, buf, size);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set_attr(&d->tb, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set_attr(&d->epilogue, buf, size);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set_attr(&d->bias, buf, size);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return set_attr(&d->bias_type, buf, size);
    }
    cudaemu::note("cublasLtMatmulDescSetAttribute: attribute %d is not modelled by the layer: answered "
                  "CUBLAS_STATUS_INVALID_VALUE", (int)attr);
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    cudaemu::Guard lk;
    if (!l) return CUBLAS_STATUS_INVALID_VALUE;
    *l = new cublasLtMatrixLayoutOpaque_st{type, rows, cols, ld};
    obj_add(*l, OBJ_LAYOUT);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    cudaemu::Guard lk;
    if (!l) return CUBLAS_STATUS_INVALID_VALUE;
    obj_remove(l, OBJ_LAYOUT, "cublasLtMatrixLayoutDestroy");
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    cudaemu::Guard lk;
    if (!p) return CUBLAS_STATUS_INVALID_VALUE;
    // the documented defaults: no workspace, every reduction scheme, 256-byte alignment of every operand
    *p = new cublasLtMatmulPreferenceOpaque_st{0, 0, CUBLASLT_REDUCTION_SCHEME_MASK, {256, 256, 256, 256}};
    obj_add(*p, OBJ_PREF);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    cudaemu::Guard lk;
    if (!p) return CUBLAS_STATUS_INVALID_VALUE;
    obj_remove(p, OBJ_PREF, "cublasLtMatmulPreferenceDestroy");
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size) {
    cudaemu::Guard lk;
    if (!p) return CUBLAS_STATUS_INVALID_VALUE;
    obj_check(p, OBJ_PREF, "cublasLtMatmulPreferenceSetAttribute");
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: return set_attr(&p->search_mode, buf, size);
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return set_attr(&p->max_workspace, buf, size);
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: return set_attr(&p->reduction_mask, buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return set_attr(&p->min_align[0], buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return set_attr(&p->min_align[1], buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return set_attr(&p->min_align[2], buf, size);
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return set_attr(&p->min_align[3], buf, size);
    }
    cudaemu::note("cublasLtMatmulPreferenceSetAttribute: attribute %d is not modelled by the layer: answered "
                  "CUBLAS_STATUS_INVALID_VALUE", (int)attr);
    return CUBLAS_STATUS_INVALID_VALUE;
}

// The problem a descriptor and four layouts describe (shared by the heuristic and the matmul): the shapes
// must agree (INVALID_VALUE), the types and epilogue must be ones the layer runs (NOT_SUPPORTED).
static cublasStatus_t lt_problem(const char *api, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                 cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl,
                                 Gemm *g) {
    if (!d || !a || !b || !c || !dl) return CUBLAS_STATUS_INVALID_VALUE;
    obj_check(d, OBJ_DESC, api);
    obj_check(a, OBJ_LAYOUT, api);
    obj_check(b, OBJ_LAYOUT, api);
    obj_check(c, OBJ_LAYOUT, api);
    obj_check(dl, OBJ_LAYOUT, api);
    const bool op_ok = (d->ta == CUBLAS_OP_N || d->ta == CUBLAS_OP_T) && (d->tb == CUBLAS_OP_N || d->tb == CUBLAS_OP_T);
    if (!op_ok) return CUBLAS_STATUS_INVALID_VALUE;
    const bool ta = d->ta == CUBLAS_OP_T, tb = d->tb == CUBLAS_OP_T;
    const uint64_t m = dl->rows, n = dl->cols, k = ta ? a->rows : a->cols;
    if ((ta ? a->cols : a->rows) != m || (tb ? b->cols : b->rows) != k || (tb ? b->rows : b->cols) != n ||
        c->rows != m || c->cols != n || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) {
        cudaemu::note("%s: the layouts disagree: D is %llu x %llu, op(A) %llu x %llu, op(B) %llu x %llu, "
                      "C %llu x %llu: answered CUBLAS_STATUS_INVALID_VALUE",
                      api, (unsigned long long)m, (unsigned long long)n,
                      (unsigned long long)(ta ? a->cols : a->rows), (unsigned long long)(ta ? a->rows : a->cols),
                      (unsigned long long)(tb ? b->cols : b->rows), (unsigned long long)(tb ? b->rows : b->cols),
                      (unsigned long long)c->rows, (unsigned long long)c->cols);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    for (const cublasLtMatrixLayoutOpaque_st *l : {a, b, c, dl})
        if (l->ld < (int64_t)std::max<uint64_t>(1, l->rows)) {
            cudaemu::note("%s: a layout has ld %lld < %llu rows: answered CUBLAS_STATUS_INVALID_VALUE", api,
                          (long long)l->ld, (unsigned long long)l->rows);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    *g = Gemm{ta, tb, (int)m, (int)n, (int)k, 0, 0, a->type, b->type, c->type, dl->type, a->ld, b->ld, c->ld, dl->ld,
              d->compute, d->epilogue == CUBLASLT_EPILOGUE_BIAS};
    const bool types_ok = combo(d->compute, a->type, b->type, c->type) == COMBO_OK && c->type == dl->type &&
                          d->scale == CUDA_R_32F;
    const bool epi_ok = d->epilogue == CUBLASLT_EPILOGUE_DEFAULT ||
                        (d->epilogue == CUBLASLT_EPILOGUE_BIAS && (d->bias_type == -1 || d->bias_type == dl->type));
    if (!types_ok || !epi_ok) {
        cudaemu::note("%s: compute %d, scale %d, A/B/C/D types %d/%d/%d/%d, epilogue %u, bias type %d: not a "
                      "configuration the layer runs: answered CUBLAS_STATUS_NOT_SUPPORTED", api, (int)d->compute,
                      (int)d->scale, (int)a->type, (int)b->type, (int)c->type, (int)dl->type, d->epilogue,
                      d->bias_type);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (d->pointer_mode != CUBLASLT_POINTER_MODE_HOST) {
        cudaemu::note("%s: only CUBLASLT_POINTER_MODE_HOST is modelled by the layer: answered "
                      "CUBLAS_STATUS_NOT_SUPPORTED", api);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

// The algorithm is chosen for the preference's minimum alignments (256 bytes unless set) and, for the
// bias, for the alignment of the BIAS_POINTER on the descriptor now: cublasLtMatmul refuses pointers
// aligned less than that, as a GPU may (NOT_SUPPORTED, or a fault inside a vectorized kernel).
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t dl, cublasLtMatmulPreference_t pref,
                                              int requested, cublasLtMatmulHeuristicResult_t results[], int *returned) {
    const char *api = "cublasLtMatmulAlgoGetHeuristic";
    cudaemu::Guard lk;
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_check(h, OBJ_LT_HANDLE, api);
    if (!pref || requested <= 0 || !results || !returned) return CUBLAS_STATUS_INVALID_VALUE;
    obj_check(pref, OBJ_PREF, api);
    *returned = 0;
    Gemm g;
    cublasStatus_t st = lt_problem(api, d, a, b, c, dl, &g);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    AlgoRecord rec;
    memset(&rec, 0, sizeof rec);
    rec.magic = ALGO_MAGIC;
    const cudaDataType_t types[4] = {a->type, b->type, c->type, dl->type};
    for (int i = 0; i < 4; i++) {
        const uint32_t al = pref->min_align[i];
        if (al == 0 || (al & (al - 1)) || al < type_size(types[i])) {
            cudaemu::note("%s: a minimum alignment of %u bytes for %c is not a power of two of at least the element "
                          "size: no algorithm (CUBLAS_STATUS_NOT_SUPPORTED)", api, al, "ABCD"[i]);
            return CUBLAS_STATUS_NOT_SUPPORTED;
        }
        rec.align[i] = al;
    }
    rec.align_bias = (uint32_t)align_of(d->bias);
    if (g.bias && rec.align_bias < type_size(dl->type)) {
        cudaemu::note("%s: the BIAS_POINTER %p is not aligned to its elements: no algorithm "
                      "(CUBLAS_STATUS_NOT_SUPPORTED)", api, d->bias);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    rec.compute = (int32_t)d->compute;
    rec.epilogue = d->epilogue;
    rec.workspace = pref->max_workspace; // may use all it was allowed
    memset(&results[0], 0, sizeof results[0]);
    memcpy(results[0].algo.data, &rec, sizeof rec);
    results[0].workspaceSize = (size_t)rec.workspace;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

// A pointer aligned less than the algorithm assumes: a finding of the kind a real card reports as
// CUBLAS_STATUS_NOT_SUPPORTED (or does not report, and faults).
static bool lt_aligned(const char *what, const void *p, uint32_t need, const char *how) {
    if (align_of(p) >= need) return true;
    cudaemu::note("cublasLtMatmul: %s = %p is only %zu-byte aligned, but the algorithm (from "
                  "cublasLtMatmulAlgoGetHeuristic) was chosen for %u-byte alignment (%s): a GPU may answer "
                  "CUBLAS_STATUS_NOT_SUPPORTED or fault; answered CUBLAS_STATUS_NOT_SUPPORTED",
                  what, p, align_of(p), need, how);
    return false;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspaceSizeInBytes, cudaStream_t stream) {
    const char *api = "cublasLtMatmul";
    cudaemu::Guard lk;
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    obj_check(h, OBJ_LT_HANDLE, api);
    Gemm g;
    cublasStatus_t st = lt_problem(api, desc, Adesc, Bdesc, Cdesc, Ddesc, &g);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    g.alpha = *(const float *)alpha;
    g.beta = *(const float *)beta;
    if (C == D && (Cdesc->type != Ddesc->type || Cdesc->ld != Ddesc->ld)) {
        cudaemu::note("%s: in place (C == D) needs the same layout for C and D: answered CUBLAS_STATUS_INVALID_VALUE",
                      api);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    AlgoRecord rec;
    if (algo) {
        memcpy(&rec, algo->data, sizeof rec);
        if (rec.magic != ALGO_MAGIC)
            cudaemu::fatal("%s: the algo was not filled by cublasLtMatmulAlgoGetHeuristic", api);
        if (rec.compute != (int32_t)desc->compute || rec.epilogue != desc->epilogue) {
            cudaemu::note("%s: the algo was chosen for compute %d and epilogue %u, the descriptor now has %d and %u: "
                          "answered CUBLAS_STATUS_INVALID_VALUE", api, rec.compute, rec.epilogue, (int)desc->compute,
                          desc->epilogue);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
        if (workspaceSizeInBytes < rec.workspace) {
            cudaemu::note("%s: the algo needs %llu bytes of workspace, %zu given: answered CUBLAS_STATUS_INVALID_VALUE",
                          api, (unsigned long long)rec.workspace, workspaceSizeInBytes);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    }
    if (workspaceSizeInBytes) check_device(api, "workspace", workspace, workspaceSizeInBytes, 1);
    if (g.m == 0 || g.n == 0) return CUBLAS_STATUS_SUCCESS;
    const size_t ea = type_size(g.at), eb = type_size(g.bt), ec = type_size(g.ct), ed = type_size(g.dt);
    if (reads_ab(g)) {
        check_device(api, "A", A, extent_bytes(a_rows(g), a_cols(g), g.lda, ea), ea);
        check_device(api, "B", B, extent_bytes(b_rows(g), b_cols(g), g.ldb, eb), eb);
    }
    if (reads_c(g)) check_device(api, "C", C, extent_bytes(g.m, g.n, g.ldc, ec), ec);
    check_device(api, "D", D, extent_bytes(g.m, g.n, g.ldd, ed), ed);
    const void *bias = desc->bias;
    if (g.bias) check_device(api, "the bias (CUBLASLT_MATMUL_DESC_BIAS_POINTER)", bias, (size_t)g.m * ed, ed);
    if (algo) {
        const char *pref = "CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES, 256 unless set";
        bool ok = lt_aligned("A", A, rec.align[0], pref) && lt_aligned("B", B, rec.align[1], pref) &&
                  (!reads_c(g) || lt_aligned("C", C, rec.align[2], pref)) && lt_aligned("D", D, rec.align[3], pref) &&
                  (!g.bias || lt_aligned("the bias", bias, rec.align_bias,
                                         "the alignment of the BIAS_POINTER set when the heuristic ran"));
        if (!ok) return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    char name[160];
    cudaemu::enqueue(
        stream, op_name(name, sizeof name, api, g, 1),
        [=] { execute(api, g, {A}, {B}, {C}, {D}, bias); },
        {A, B, C, D, bias, workspace});
    return CUBLAS_STATUS_SUCCESS;
}
