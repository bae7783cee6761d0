// The DINOv3 ViT as the ecosystem loads it: the name map between our parameter table (the official
// facebookresearch/dinov3 state-dict names) and Hugging Face transformers' DINOv3ViTModel (model_type
// "dinov3_vit") or the official names with the official model's buffers; the transformers config.json.
// See docs/export.md "DINOv3".
//
//   ours = official                   Hugging Face DINOv3ViTModel
//   cls_token (1,1,C)                 embeddings.cls_token
//   storage_tokens (1,R,C)            embeddings.register_tokens (always present: (1,0,C) when R = 0)
//   mask_token (1,C)                  embeddings.mask_token (1,1,C)
//   patch_embed.proj.{weight,bias}    embeddings.patch_embeddings.{weight,bias}
//   blocks.N.norm{1,2}.*              layer.N.norm{1,2}.*
//   blocks.N.attn.qkv.weight (3C,C)   layer.N.attention.{q,k,v}_proj.weight (rows [0,C) [C,2C) [2C,3C))
//   blocks.N.attn.qkv.bias (3C)       layer.N.attention.{q,v}_proj.bias; k_proj.bias only when the k
//                                     bias is not masked (key_bias: true)
//   blocks.N.attn.proj.*              layer.N.attention.o_proj.*
//   blocks.N.ls{1,2}.gamma            layer.N.layer_scale{1,2}.lambda1 (ones without LayerScale)
//   blocks.N.mlp.fc1.* / fc2.*        layer.N.mlp.up_proj.* / down_proj.*
//   blocks.N.mlp.w1.* / w2.* / w3.*   layer.N.mlp.gate_proj.* / up_proj.* / down_proj.*  (SwiGLU)
//   blocks.N.mlp.w12.* (fused)        rows [0,h) -> gate_proj, [h,2h) -> up_proj
//   norm.*                            norm.*
//   local_cls_norm.*                  (dropped: used only for local crops in training)
// The official names add the model's persistent buffers, so that the file loads strictly into
// dinov3's DinoVisionTransformer: rope_embed.periods (Dh/4, base^(2i/(Dh/2))) and, with a masked k
// bias, blocks.N.attn.qkv.bias_mask (3C: ones, zeros on the k third).
#pragma once
#include <stddef.h>

#include "common/json.h"
#include "common/safetensors.h"
#include "model/export_names.h"
#include "model/params.h"
#include "model/rope.h"
#include "model/vit.h"

// What an export needs to know about a DINOv3 ViT (the part of the config that is not in the shapes
// are the RoPE parameters, ln_eps, mask_k_bias, img_size and the head count).
typedef struct {
    int dim, depth, heads, patch;
    int img_size;        // the training global crop (config image_size; preprocessing default)
    int n_storage;       // storage (register) tokens
    int swiglu;          // 0: MLP with exact GELU; 1: SwiGLU (SiLU gate)
    int ffn_hidden;      // MLP hidden width, or each SwiGLU half's
    int swiglu_fused;    // our table holds w12 (gate rows then up rows) instead of w1 and w2
    RopeConfig rope;     // RoPE: base (HF rope_theta) or min/max periods; coordinate normalisation;
                         // training-only augmentation (HF pos_embed_shift/jitter/rescale)
    double ln_eps;       // every LayerNorm's eps (1e-5: the official "layernormbf16")
    int qkv_bias, mask_k_bias, proj_bias, ffn_bias;
    int layerscale;      // the table holds ls1/ls2 gammas (else ones are exported)
    int untie_cls_norm;  // a separate cls_norm for CLS + storage tokens at inference (HF has none)
    int local_cls_norm;  // the table holds local_cls_norm.* (training only, never exported)
} Dinov3Arch;

// Checks what an export can represent; 0, or -1 with err naming the problem.
int dinov3_arch_check(const Dinov3Arch *a, char *err);
// Between the model's config (cfg->rope = 1) and the export's view of it.
void dinov3_arch_from_vit(const VitConfig *c, Dinov3Arch *a);
// The ViT that computes what the export describes (LayerScale, when present, gets the reference init
// 1e-5: the gammas come from the file). Returns 0, or -1 with err (vit_config_check's).
int dinov3_arch_to_vit(const Dinov3Arch *a, VitConfig *c, char *err);

// The map for a DINOv3 backbone registered in tab under prefix. naming: NAMING_HF or NAMING_DINOV2
// (the official names); NAMING_TIMM is refused (DINOV3_TIMM_UNSUPPORTED). Dies on a table that does
// not hold the official names (a programming error).
void export_map_build_dinov3(ExportMap *m, const Dinov3Arch *a, const ParamTable *tab, const char *prefix,
                             ExportNaming naming);

// transformers' config.json (DINOv3ViTConfig) for a, into out[n]. Returns 0, or -1 with err when the
// model cannot be expressed: an untied cls norm, RoPE periods from min/max periods instead of a base,
// coordinates normalised by min/max(H, W) instead of per axis.
int dinov3_hf_config(char *out, size_t n, const Dinov3Arch *a, char *err);
// Our own config.json for the official names (dinotrain's keys, the arch of the original model).
void dinov3_own_config(char *out, size_t n, const Dinov3Arch *a);

// A backbone file in DINOv3 layout: 1 when the backbone under prefix has no absolute position
// embedding (RoPE): HF names "embeddings.patch_embeddings.weight", or official names without pos_embed.
int export_is_dinov3(const StFile *f, const char *prefix, ExportNaming naming);
// The architecture from the tensor shapes of a DINOv3 backbone file (dim, depth, patch, storage tokens,
// MLP or SwiGLU and width, biases, LayerScale, a masked k bias when HF names lack k_proj.bias or the
// official names hold bias_mask) and from config.json when given (cfg: transformers keys or ours;
// path names it in messages), else the file's metadata, for what shapes cannot tell: heads
// (num_attention_heads, num_heads, student.num_heads, heads), the RoPE (rope_theta / pos_embed_rope_base,
// or rope_embed.periods; ours: min/max periods, normalize_coords; pos_embed_shift/jitter/rescale),
// layer_norm_eps, image_size, mask_k_bias. `heads` > 0 overrides. Defaults: the released models' (theta 100, per-axis coordinates,
// eps 1e-5, image 224). Returns 0, or -1 with err naming the file, tensor or key.
int export_infer_dinov3(const StFile *f, const char *path, ExportNaming naming, const char *prefix, int heads,
                        json_object *cfg, const char *cfg_path, Dinov3Arch *a, char *err);
