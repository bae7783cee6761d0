// Writing an export directory (dinoexport's output; see docs/export.md): the weights in one naming
// with the metadata our tools read back, config.json and, for Hugging Face, preprocessor_config.json.
#pragma once
#include <stddef.h>

#include "model/export_dinov3.h"
#include "model/export_names.h"
#include "model/params.h"

// Writes text to path atomically (path.tmp, then rename). Returns 0 or -1 with err.
int export_write_text(const char *path, const char *text, char *err);
// The reference's inference transform as a transformers BitImageProcessor config: resize the shorter
// side to crop*256/224 (bicubic), center crop `crop`, ImageNet mean/std. The same for DINOv2 and DINOv3
// (dinov3/data/transforms.py make_classification_eval_transform: resize 256, crop 224, bicubic).
void export_preprocessor_json(char *out, size_t n, int crop);
// A DINOv3 backbone (registered in tab under prefix, values in the host buffer P) into outdir (created
// with its parents): model.safetensors in `naming` (NAMING_HF or NAMING_DINOV2; F32, __metadata__
// format=pt, naming, num_attention_heads, image_size, rope_theta, layer_norm_eps, mask_k_bias, source),
// config.json (transformers DINOv3ViTConfig, or ours for the official names) and, for HF,
// preprocessor_config.json. *n_tensors (may be NULL) gets the tensor count. Returns 0 or -1 with err.
int export_write_dinov3(const char *outdir, const Dinov3Arch *a, const ParamTable *tab, const char *prefix,
                        const float *P, ExportNaming naming, const char *source, int *n_tensors, char *err);
