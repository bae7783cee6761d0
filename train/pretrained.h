// Initialising a backbone from released weights (student.pretrained_weights): a safetensors file in
// any of the three namings (original DINOv2, timm, Hugging Face), detected from the tensor names.
// Nothing is adapted silently: a tensor whose shape differs from the model's is an error naming the
// tensor and both shapes. The one exception, only on request, is the position-embedding grid, which
// can be resampled bicubically (size-based, no antialias) to the model's grid. Heads are untouched.
#pragma once
#include "model/export_names.h"
#include "model/params.h"
#include "model/vit.h"

typedef struct {
    int resample_pos_embed;  // 1: resample a pos-embed grid that differs from the model's (else error)
    const char *file_prefix; // backbone prefix inside the file, e.g. "teacher.backbone."; NULL = detect
    int verbose;             // print one line saying what was loaded
} PretrainedOptions;

// Loads the backbone registered in tab under `prefix` (e.g. "backbone.") from `path` into the host
// parameter buffer `params`. Tensors of the backbone that the file lacks are an error, except
// mask_token (timm files drop it; it keeps its current value). Backbone tensors in the file that the
// model does not have (e.g. a deeper model) are an error; classifier/head tensors are ignored.
// On success returns 0 and, if naming_out is given, the naming that was found. On error returns -1
// with err naming the file, the tensor and the problem; params may then be partly written.
int pretrained_load(const Vit *vit, const ParamTable *tab, const char *prefix, float *params, const char *path,
                    const PretrainedOptions *opt, ExportNaming *naming_out, char *err);
