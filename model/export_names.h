// Name maps between the ViT's parameter table (the reference DINOv2 names) and the three namings the
// ecosystem loads: original DINOv2 (torch hub), timm (vit_*_patch14[_reg4]_dinov2) and Hugging Face
// (Dinov2Model / Dinov2WithRegistersModel). See /work/shared/docs/export-formats.md B.2.
//
// A map is generated from the table: one entry per tensor in the target naming, with the transform
// that produces it from our flat parameter buffer (export) and its inverse (import):
//   COPY        same data and shape (a rename)
//   ROWS        a block of rows of one of our tensors (HF query/key/value from qkv)
//   CLS_POS0    timm with registers: cls_token + pos_embed[:,0]      (import: cls = value, pos[0] = 0)
//   POS_NOCLS   timm with registers: pos_embed[:,1:]                 (import: pos[1:] = value, pos[0] = 0)
//   ONES        LayerScale gamma of a model without LayerScale: ones (import: must be all ones)
//   PERIODS     DINOv3 official names: rope_embed.periods, computed from the RoPE parameters and the
//               head width (import: must be those values)
//   BIAS_MASK   DINOv3 official names: blocks.N.attn.qkv.bias_mask, ones with zeros on the k third
//               (import: must be that pattern)
// Folding pos[0] into cls is exact for the forward pass: tokens use cls + pos[0] and nothing else.
#pragma once
#include <stdint.h>

#include "common/safetensors.h"
#include "model/params.h"
#include "model/vit.h"

typedef enum { NAMING_DINOV2 = 0, NAMING_TIMM = 1, NAMING_HF = 2 } ExportNaming;
typedef enum { XF_COPY = 0, XF_ROWS, XF_CLS_POS0, XF_POS_NOCLS, XF_ONES, XF_PERIODS, XF_BIAS_MASK } ExportXf;

#define EXPORT_NAME_MAX 128

typedef struct {
    char name[EXPORT_NAME_MAX]; // name in the target naming (no prefix)
    int ndim;
    int64_t shape[4];           // shape in the target naming
    size_t numel;
    ExportXf xf;
    size_t src;                 // offset of our tensor in the flat buffer (pos_embed for POS_*)
    size_t src_aux;             // CLS_POS0: offset of pos_embed; else unused
    size_t row0, row_len;       // ROWS: first row and row length of the slice
    int optional;               // may be absent on import (mask_token)
    double rope[3];             // PERIODS: the RoPE base, min and max period (RopeConfig)
    char our_name[PARAM_NAME_MAX]; // our table's name (without prefix), for messages
} ExportEntry;

typedef struct {
    ExportNaming naming;
    ExportEntry *e;
    int n;
} ExportMap;

const char *export_naming_name(ExportNaming n); // "dinov2", "timm", "hf"
int export_naming_parse(const char *s, ExportNaming *n); // 0 or -1

// Builds the map for the backbone registered in tab under prefix (e.g. "backbone."). A DINOv3 ViT
// (cfg.rope) gets export_map_build_dinov3's map (hf or dinov2 naming only: timm dies).
void export_map_build(ExportMap *m, const Vit *vit, const ParamTable *tab, const char *prefix, ExportNaming naming);
void export_map_free(ExportMap *m);
const ExportEntry *export_map_find(const ExportMap *m, const char *name);

// Export: dst[e->numel] = transform(params).
void export_entry_gather(const ExportEntry *e, const float *params, float *dst);
// Import: writes src[e->numel] (already in the target naming's shape) into params. Returns 0, or -1
// with err naming the tensor (ONES with a value that is not 1).
int export_entry_scatter(const ExportEntry *e, const float *src, float *params, char *err);

// ---- reading backbones written by anyone -------------------------------------------------------------
// Finds the naming and the name prefix of the backbone in a safetensors file. `want_prefix` (may be
// NULL or "") is tried first, e.g. "teacher.backbone."; otherwise the common ones are tried ("",
// "backbone.", "teacher.backbone.", "student.backbone.", "module.", "model.", "dinov2.",
// "dinov2_with_registers.", ...). A file that holds both a teacher and a student backbone and no
// want_prefix is refused (ambiguous). Returns 0, or -1 with err set.
int export_detect(const StFile *f, const char *path, const char *want_prefix, ExportNaming *naming,
                  char *prefix, size_t prefix_len, char *err);
// Infers the backbone's hyper-parameters from the tensor shapes (dim, depth, patch, grid, registers,
// ffn kind and width, LayerScale presence). The head count cannot be seen in shapes: `heads` > 0
// sets it; else the metadata keys "num_attention_heads"/"num_heads"/"student.num_heads"/"heads";
// else the reference arch of that width (384 -> 6, 768 -> 12, 1024 -> 16, 1536 -> 24; a note is
// printed to stderr); else an error. Returns 0, or -1 with err set.
int export_infer_config(const StFile *f, const char *path, ExportNaming naming, const char *prefix, int heads,
                        VitConfig *cfg, char *err);

// Reads tensor `t` as float32 into dst (F32, F16, BF16, F64 accepted). Returns 0 or -1 with err set.
int export_read_f32(const StTensor *t, float *dst, char *err);

// Shared by the map builders and readers (export_names.c, export_dinov3.c): a new zeroed entry at the
// end of m (capacity *cap, grown by doubling); an entry's shape and numel; the tensor prefix+name of f
// (NULL when absent); "[1, 2, 3]" of t's shape for messages.
ExportEntry *export_map_push(ExportMap *m, int *cap);
void export_entry_set_shape(ExportEntry *e, int ndim, const int64_t *shape);
const StTensor *export_get_prefixed(const StFile *f, const char *prefix, const char *name);
void export_shape_text(char *out, size_t n, const StTensor *t);
