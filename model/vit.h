// DINOv2's Vision Transformer backbone, written once against the backend interface, and DINOv3's
// (cfg.rope = 1, docs/dinov3-vit.md).
//
// Token layout [CLS, reg_1..reg_R, patch_1..patch_N]; pre-norm blocks
//   x += LS1(attn(LN1(x)));  x += LS2(ffn(LN2(x)))   (with sample-subset stochastic depth)
// then a final LayerNorm. Parameter names follow the reference (dinov2/models/vision_transformer.py),
// under a prefix such as "backbone.".
// The DINOv3 ViT (dinov3/models/vision_transformer.py) differs in: no learned position table, axial
// RoPE on the patch tokens' q and k in every block (model/rope.h); "storage" tokens (our registers);
// optionally an untied norm for the CLS and storage tokens (cls_norm) and one for local crops in
// training (local_cls_norm); optionally the k part of the qkv bias held at zero (mask_k_bias); SwiGLU
// as three Linears w1, w2, w3. Its tensors carry the official dinov3 state_dict names.
#pragma once
#include <stdint.h>

#include "common/rng.h"
#include "model/backend.h"
#include "model/params.h"
#include "model/rope.h"

typedef enum { VIT_FFN_MLP = 0, VIT_FFN_SWIGLU = 1 } VitFfn;

typedef struct {
    char arch[32];          // vit_small, vit_base, vit_large, vit_giant2, vit_tiny (tests), vit_test
    int dim, depth, heads;
    int patch;              // patch size p
    int img_size;           // pos-embed grid = img_size / patch (global crop size at pretraining)
    int n_registers;        // 0 or 4 (any R >= 0 works)
    VitFfn ffn;
    int ffn_hidden;         // hidden width of the MLP, or of each SwiGLU half (rounded as the reference)
    float layerscale;       // LayerScale init; 0 disables LayerScale
    double drop_path_rate;  // stochastic depth rate, uniform over blocks; double as the reference's
                            // Python float, or the subset size can be one image off (float(0.3) > 0.3)
    float interpolate_offset;   // 0.1 legacy scale-factor offset, 0 = size-based
    int interpolate_antialias;  // bicubic with antialiasing when downsampling (reg4 models)
    int qkv_bias, proj_bias, ffn_bias;
    float ln_eps;           // LayerNorm eps: 1e-6 (layernorm), 1e-5 (DINOv3's layernormbf16)
    // ---- the DINOv3 ViT ----
    int rope;               // 1: DINOv3 (RoPE, official dinov3 names); 0: DINOv2 (learned pos_embed)
    RopeConfig rope_cfg;
    int untie_cls_and_patch_norms;       // CLS + storage tokens through cls_norm
    int untie_global_and_local_cls_norm; // local crops' CLS + storage tokens through local_cls_norm (training)
    int mask_k_bias;                     // the k third of the qkv bias held at zero (LinearKMaskedBias)
} VitConfig;

// The FFN kind and hidden width of a block as the references compute them from dim * ffn_ratio:
// "mlp" int(dim*ratio); "swiglu"/"swiglufused" (align 8), "swiglu32"/"swiglu64"/"swiglu128": d =
// int(int(dim*ratio) * 2/3) rounded up to a multiple of the alignment (SwiGLUFFN's align_to).
// Returns 0, or -1 with err set.
int vit_ffn_width(const char *ffn_layer, int dim, double ffn_ratio, VitFfn *ffn, int *hidden, char *err);

// Fills cfg with the reference's widths/depths/heads for arch ("vit_small", ...), patch, img_size,
// register count and ffn layer ("mlp" or "swiglu"/"swiglufused"). Returns 0, or -1 with err set.
int vit_config_from_arch(VitConfig *cfg, const char *arch, int patch, int img_size, int n_registers,
                         const char *ffn_layer, char *err);
// Checks that a configuration can work; returns 0, or -1 with err naming the problem.
int vit_config_check(const VitConfig *cfg, char *err);
// Checks a crop size for this model: square, a multiple of the patch. Returns 0 or -1 with err set.
int vit_check_crop(const VitConfig *cfg, int crop, char *err);

typedef struct {
    size_t norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b, ls1;
    size_t norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b, ls2; // fc1 = w12 and fc2 = w3 for SwiGLU
} VitBlockOffsets;

#define VIT_NO_TENSOR ((size_t)-1) // offset of a tensor this configuration does not have

typedef struct {
    VitConfig cfg;
    int grid;       // pos-embed grid side M = img_size / patch
    size_t cls, reg, pos, mask_token, patch_w, patch_b, norm_w, norm_b; // offsets into the flat buffer
    size_t cls_norm_w, cls_norm_b, local_cls_norm_w, local_cls_norm_b; // DINOv3 untied norms (or VIT_NO_TENSOR)
    VitBlockOffsets *blocks;
} Vit;

// Registers the backbone's tensors in tab under prefix (e.g. "backbone.") and records their offsets.
void vit_build(Vit *vit, const VitConfig *cfg, ParamTable *tab, const char *prefix);
void vit_free(Vit *vit);
// The reference's initialisation, into a host copy of the flat parameter buffer.
void vit_init_weights(const Vit *vit, float *params_host, uint64_t seed);

// Activations of one crop group (B images of one size). Created once per shape and reused.
// What is kept for the backward pass:
//  - STORE_ALL: every block's intermediates (fastest; memory ~ depth x a block's activations).
//  - RECOMPUTE: only each block's input; vit_backward runs the block's forward again (the same ops on the
//    same inputs, so the gradients are bit-identical on a deterministic backend) into one shared set of
//    intermediates. About one more forward pass of compute for a fraction of the memory (ViT-L at 64
//    images per GPU).
//  - FORWARD_ONLY: nothing (teacher, evaluation, embedding): one shared set, two residual streams, no
//    backward scratch; vit_backward refuses it.
typedef enum { VIT_ACTS_STORE_ALL = 0, VIT_ACTS_RECOMPUTE = 1, VIT_ACTS_FORWARD_ONLY = 2 } VitActsMode;
typedef struct VitActs VitActs;
VitActs *vit_acts_new(Backend *be, const Vit *vit, int B, int crop, VitActsMode mode);
// The same, borrowing the backward scratch (and, stored, the re-derive buffers) of `share`, another
// VitActs of this ViT with at least as many rows (B*T) that is not forward-only: crop groups whose
// forwards and backwards run one after the other (never interleaved within a pass) need only one set.
// `share` must outlive the new VitActs' use; NULL or a smaller `share`: own buffers, as vit_acts_new.
VitActs *vit_acts_new_sharing(Backend *be, const Vit *vit, int B, int crop, VitActsMode mode, const VitActs *share);
void vit_acts_free(Backend *be, VitActs *a);
int vit_acts_tokens(const VitActs *a);  // T = 1 + R + N
// DINOv3, training only: these activations hold local crops, whose CLS and storage tokens go through
// local_cls_norm when cfg.untie_global_and_local_cls_norm (the official forward_features_list's second
// crop group). Off by default (global crops, teacher, evaluation).
void vit_acts_set_local_crops(VitActs *a, int local);
// DINOv3, training only: the RoPE coordinate augmentation of the following forwards, one draw per
// block (aug[depth], as the official ViT calls its RopePositionEmbedding once per block); NULL: none
// (the default: teacher, evaluation). The tables are computed and uploaded here.
void vit_acts_set_rope_aug(Backend *be, const Vit *vit, VitActs *a, const RopeAug *aug);
// Draws aug[depth] as the configuration asks (shift, jitter, rescale) from `key` (use a key unique per
// step and crop group).
void vit_draw_rope_aug(const Vit *vit, Rng key, RopeAug *aug);
size_t vit_acts_bytes(const VitActs *a); // backend memory these activations hold

// Stochastic depth ("sample-subset", as the reference's nested student forward): for every block and
// each of its two residual branches, S = max(int(B*(1-rate)), 1) distinct images are kept, the branch
// is computed on them only and added back scaled by B/S. Subsets are drawn on the host from `key`
// (use a key unique per (step, crop group)) into subsets[depth][2][S], each sorted ascending.
int vit_drop_subset_size(const Vit *vit, int B);  // S, or B when rate is 0
void vit_draw_drop_subsets(const Vit *vit, int B, Rng key, int *subsets);

// Forward of one crop group. images[B,3,crop,crop] (backend memory, normalized); masks[B*N] (backend
// memory, nonzero = masked) or NULL; drop_subsets as drawn above (host) or NULL for no stochastic
// depth (teacher, eval). Returns x_norm[B,T,D] (final LayerNorm of every token, backend memory owned
// by acts): CLS at token 0, registers at 1..R, patch tokens from 1+R.
const float *vit_forward(Backend *be, const Vit *vit, const float *params, VitActs *a, const float *images,
                         const uint8_t *masks, const int *drop_subsets);
// Optional hook for overlapping gradient communication with backward: called by vit_backward each time
// every gradient from `offset` to the end of the backbone is complete (after each block, from the last
// to the first). Set it only on the crop group whose backward runs last in a step.
typedef void (*VitGradHook)(void *ctx, size_t offset);
void vit_acts_set_grad_hook(VitActs *a, VitGradHook fn, void *ctx);

// Backward from d_xnorm[B,T,D] (backend memory); accumulates into grads (same layout as params).
void vit_backward(Backend *be, const Vit *vit, const float *params, float *grads, VitActs *a,
                  const float *d_xnorm);

// Model FLOPs of n images at `crop` px: forward only, or forward + backward (with_backward): 2 (forward)
// + 4 (backward) per weight and token in the blocks' matmuls, 4 + 8 per L*D*T*T for non-causal
// attention (QK^T and PV), and the patch embedding's forward and weight gradient (no input gradient).
double vit_flops(const VitConfig *c, int n, int crop, int with_backward);

// Bicubic interpolation of the pos-embed grid M x M to g x g as a dense matrix W[g*g, M*M] (host),
// with the reference's semantics (torch interpolate bicubic A=-0.75, align_corners=False; scale
// factor (g+offset)/M when offset > 0, else size-based; optional antialias).
void vit_pos_interp_matrix(float *W, int M, int g, float offset, int antialias);
