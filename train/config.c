// The run configuration: one table of keys drives defaults, YAML reading, overrides, writing,
// comparison and "did you mean" suggestions. See config.h and docs/configuration.md.
#include "train/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "common/check.h"
#include "common/text.h"
#include "common/fs.h"
#include "data/source.h"

typedef enum { CT_BOOL, CT_INT, CT_I64, CT_F64, CT_STR, CT_ENUM, CT_F64_LIST, CT_STR_LIST, CT_INT_VLIST, CT_F64_VLIST, CT_STUDENTS } CfgType;

typedef struct {
    const char *key;     // dotted name, e.g. "optim.base_lr"
    CfgType type;
    size_t off;          // offsetof(Config, field)
    int n;               // F64_LIST: length; STR/ENUM: capacity; STR_LIST: max entries
    const char *def;     // default, as YAML text
    const char *choices; // ENUM: "a|b|c"
    const char *doc;
} CfgKey;

#define K(key, type, field, n, def, choices, doc) {key, type, offsetof(Config, field), n, def, choices, doc}
#define B(key, field, def, doc) K(key, CT_BOOL, field, 0, def, NULL, doc)
#define I(key, field, def, doc) K(key, CT_INT, field, 0, def, NULL, doc)
#define F(key, field, def, doc) K(key, CT_F64, field, 0, def, NULL, doc)
#define S(key, field, def, doc) K(key, CT_STR, field, CFG_STR, def, NULL, doc)
#define E(key, field, def, choices, doc) K(key, CT_ENUM, field, CFG_NAME, def, choices, doc)
#define L(key, field, n, def, doc) K(key, CT_F64_LIST, field, n, def, NULL, doc)
// a number that may be null (YAML null / ~ / empty): stored as 0, which the reader takes as "none"
#define FN(key, field, def, doc) K(key, CT_F64, field, 0, def, "null", doc)

static int nullable(const CfgKey *k) { return k->type == CT_F64 && k->choices && strcmp(k->choices, "null") == 0; }

// nullable where 0 is a value (n = 1): YAML null is -1 for an integer, NaN for a number, written back as null
#define IN(key, field, def, doc) K(key, CT_INT, field, 1, def, NULL, doc)
#define FNAN(key, field, def, doc) K(key, CT_F64, field, 1, def, NULL, doc)
#define SCHEDULE(sec, fld, v_start, v_peak, v_end, v_warmup, v_cosine, what)                                     \
    FNAN(sec ".start", fld.start, v_start, what ": value at iteration 0 (null: no schedule)"),                    \
        FNAN(sec ".peak", fld.peak, v_peak, what ": value after the linear warmup"),                              \
        FNAN(sec ".end", fld.end, v_end, what ": value after the cosine, held to the end"),                       \
        I(sec ".warmup_epochs", fld.warmup_epochs, v_warmup, what ": linear warmup length (epochs)"),              \
        IN(sec ".cosine_epochs", fld.cosine_epochs, v_cosine, what ": cosine length (epochs); null = the rest of the run")
#define IV(key, field, def, doc) K(key, CT_INT_VLIST, field, CFG_MAX_PAIRS, def, NULL, doc)
#define FV(key, field, def, doc) K(key, CT_F64_VLIST, field, CFG_MAX_PAIRS, def, NULL, doc)
// an integer list that may be null: stored as one entry -1, written back as null
#define IVN(key, field, def, doc) K(key, CT_INT_VLIST, field, CFG_MAX_PAIRS, def, "null", doc)
static int vlist_nullable(const CfgKey *k) { return k->type == CT_INT_VLIST && k->choices && strcmp(k->choices, "null") == 0; }

// Sections must stay contiguous (the writer opens a section when the prefix changes).
static const CfgKey KEYS[] = {
    E("student.arch", student.arch, "vit_large", "vit_test|vit_tiny|vit_small|vit_base|vit_large|vit_giant2",
      "backbone size: test 32x2 (2 heads), tiny 192x12 (3 heads), small 384x12 (6), base 768x12 (12), large 1024x24 (16), giant2 1536x40 (24)"),
    I("student.patch_size", student.patch_size, "16", "patch side in pixels; must divide both crop sizes"),
    F("student.drop_path_rate", student.drop_path_rate, "0.3", "stochastic depth rate of the student, in [0, 1)"),
    B("student.drop_path_uniform", student.drop_path_uniform, "true",
      "same rate in every block; must be true (the per-block linspace variant is not implemented)"),
    F("student.layerscale", student.layerscale, "1.0e-05", "LayerScale init value; 0 disables LayerScale"),
    I("student.num_register_tokens", student.num_register_tokens, "0", "register tokens (4 for *_reg4 models)"),
    E("student.ffn_layer", student.ffn_layer, "mlp", "mlp|swiglu|swiglufused|swiglu32|swiglu64|swiglu128",
      "block FFN: GELU MLP or SwiGLU (hidden 2/3 of dim*ffn_ratio rounded up to 8, or 32/64/128 for swiglu32/64/128)"),
    F("student.ffn_ratio", student.ffn_ratio, "4.0", "FFN hidden width int(dim * ffn_ratio) before the SwiGLU 2/3"),
    B("student.qkv_bias", student.qkv_bias, "true", "bias in the attention qkv projection"),
    B("student.proj_bias", student.proj_bias, "true", "bias in the attention output projection"),
    B("student.ffn_bias", student.ffn_bias, "true", "biases in the FFN"),
    F("student.interpolate_offset", student.interpolate_offset, "0.1",
      "pos-embed interpolation scale-factor offset (0.1 legacy, 0 = size-based)"),
    B("student.interpolate_antialias", student.interpolate_antialias, "false",
      "antialias in pos-embed bicubic interpolation (reg4 models: true)"),
    S("student.pretrained_weights", student.pretrained_weights, "''",
      "safetensors file (original DINOv2, timm or HF names) to start the backbone from; '' = random init"),
    I("student.block_chunks", student.block_chunks, "0", "reference FSDP block chunking; accepted, no effect here"),
    I("student.img_size", student.img_size, "0",
      "pos-embed grid side in pixels (ours); 0 = crops.global_crops_size (the largest when several, as the official); "
      "a high-resolution phase keeps the earlier run's size here so that its pos-embed loads, and interpolates it"),
    I("student.embed_dim", student.embed_dim, "0", "width override (ours); 0 = the arch's"),
    I("student.depth", student.depth, "0", "block count override (ours); 0 = the arch's"),
    I("student.num_heads", student.num_heads, "0", "attention heads override (ours); 0 = the arch's"),
    E("student.norm_layer", student.norm_layer, "layernorm", "layernorm|layernormbf16",
      "LayerNorm eps: layernorm 1e-6, layernormbf16 1e-5 (DINOv3's released configs); computed in fp32 either way"),
    // the DINOv3 ViT (docs/dinov3-vit.md): pos_embed_type rope selects it
    E("student.pos_embed_type", student.pos_embed_type, "learned", "learned|rope|ropenew",
      "learned: DINOv2 ViT (pos_embed table); rope (ropenew: the same): the DINOv3 ViT with axial RoPE"),
    FN("student.pos_embed_rope_base", student.pos_embed_rope_base, "100.0",
       "RoPE periods base^(2i/(Dh/2)); null when min/max periods are given"),
    FN("student.pos_embed_rope_min_period", student.pos_embed_rope_min_period, "null",
       "RoPE periods log-spaced from min to max period (with max_period; base null)"),
    FN("student.pos_embed_rope_max_period", student.pos_embed_rope_max_period, "null", "see min_period"),
    E("student.pos_embed_rope_normalize_coords", student.pos_embed_rope_normalize_coords, "separate",
      "separate|min|max", "patch coordinates in [-1, 1]: divided by H and W separately, or by min/max(H, W)"),
    FN("student.pos_embed_rope_shift_coords", student.pos_embed_rope_shift_coords, "null",
       "training: coordinates += U(-s, s) per axis, drawn per block; null = off"),
    FN("student.pos_embed_rope_jitter_coords", student.pos_embed_rope_jitter_coords, "null",
       "training: coordinates *= log-uniform in [1/j, j] per axis, per block; null = off"),
    FN("student.pos_embed_rope_rescale_coords", student.pos_embed_rope_rescale_coords, "null",
       "training: coordinates *= log-uniform in [1/r, r] (one for both axes), per block; released configs: 2"),
    E("student.pos_embed_rope_dtype", student.pos_embed_rope_dtype, "fp32", "fp32|bf16|fp16",
      "accepted; the tables are computed in double and applied in fp32 here"),
    I("student.n_storage_tokens", student.n_storage_tokens, "0",
      "DINOv3's name for register tokens (the same tokens as num_register_tokens; set one of them)"),
    B("student.untie_cls_and_patch_norms", student.untie_cls_and_patch_norms, "false",
      "DINOv3: CLS and storage tokens through their own final norm (cls_norm)"),
    B("student.untie_global_and_local_cls_norm", student.untie_global_and_local_cls_norm, "false",
      "DINOv3: local crops' CLS and storage tokens through local_cls_norm in training"),
    B("student.mask_k_bias", student.mask_k_bias, "false", "DINOv3: the k third of the qkv bias held at zero"),

    F("dino.loss_weight", dino.loss_weight, "1.0", "weight of the DINO (CLS) losses; 0 disables DINO"),
    I("dino.head_n_prototypes", dino.head_n_prototypes, "65536", "K, output width of the DINO head"),
    I("dino.head_bottleneck_dim", dino.head_bottleneck_dim, "256", "bottleneck before the weight-normed last layer"),
    I("dino.head_nlayers", dino.head_nlayers, "3", "MLP layers of the head"),
    I("dino.head_hidden_dim", dino.head_hidden_dim, "2048", "MLP hidden width of the head"),
    F("dino.koleo_loss_weight", dino.koleo_loss_weight, "0.1", "KoLeo weight (regularizer koleo); 0 disables"),
    E("dino.regularizer", dino.regularizer, "koleo", "koleo|kde",
      "CLS spreading regularizer: KoLeo (reference) or KDE (Virchow2/Midnight)"),
    F("dino.kde_weight", dino.kde_weight, "0.05", "KDE weight (regularizer kde)"),
    F("dino.kde_concentration", dino.kde_concentration, "5.0", "KDE von Mises-Fisher kernel concentration kappa"),
    B("dino.global_ignore_diagonal", dino.global_ignore_diagonal, "true",
      "DINOv3 key: skip the A-A and B-B global pairs; must be true (the DINOv2 pairing, the only one here)"),
    B("dino.reweight_dino_local_loss", dino.reweight_dino_local_loss, "false",
      "DINOv3: weight the local-crop DINO loss by dino.local_loss_weight_schedule (Gram-anchoring recipes)"),
    SCHEDULE("dino.local_loss_weight_schedule", dino.local_loss_weight_schedule, "0.5", "0.5", "0.5", "0", "null",
             "local-crop DINO loss weight"),

    F("ibot.loss_weight", ibot.loss_weight, "1.0", "weight of the iBOT (masked patch) loss; 0 disables iBOT"),
    F("ibot.mask_sample_probability", ibot.mask_sample_probability, "0.5", "fraction of global crops that get a mask"),
    L("ibot.mask_ratio_min_max", ibot.mask_ratio_min_max, 2, "[0.1, 0.5]", "range of masked-token ratios"),
    B("ibot.separate_head", ibot.separate_head, "false", "own iBOT head (true) or the DINO head (false)"),
    I("ibot.head_n_prototypes", ibot.head_n_prototypes, "65536", "iBOT head K (separate_head only)"),
    I("ibot.head_bottleneck_dim", ibot.head_bottleneck_dim, "256", "iBOT head bottleneck (separate_head only)"),
    I("ibot.head_nlayers", ibot.head_nlayers, "3", "iBOT head MLP layers (separate_head only)"),
    I("ibot.head_hidden_dim", ibot.head_hidden_dim, "2048", "iBOT head hidden width (separate_head only)"),

    I("optim.epochs", optim.epochs, "100", "run length in epochs of train.OFFICIAL_EPOCH_LENGTH iterations"),
    F("optim.base_lr", optim.base_lr, "0.004", "learning rate before batch scaling (see scaling_rule)"),
    F("optim.lr", optim.lr, "0.0", "computed from base_lr by scaling_rule at start; a value given is overwritten"),
    I("optim.warmup_epochs", optim.warmup_epochs, "10", "linear lr warmup from 0"),
    F("optim.min_lr", optim.min_lr, "1.0e-06", "cosine lr floor"),
    F("optim.weight_decay", optim.weight_decay, "0.04", "weight decay at the start (cosine schedule)"),
    F("optim.weight_decay_end", optim.weight_decay_end, "0.4", "weight decay at the end"),
    F("optim.layerwise_decay", optim.layerwise_decay, "0.9", "layer-wise lr decay, in (0, 1]"),
    F("optim.patch_embed_lr_mult", optim.patch_embed_lr_mult, "0.2", "extra lr multiplier of patch_embed"),
    F("optim.clip_grad", optim.clip_grad, "3.0", "grad-norm clip per student submodule; 0 = off"),
    I("optim.freeze_last_layer_epochs", optim.freeze_last_layer_epochs, "1", "head last layer lr = 0 this long"),
    E("optim.scaling_rule", optim.scaling_rule, "sqrt_wrt_1024", "sqrt_wrt_1024|linear_wrt_256|none",
      "lr = base_lr*sqrt(global_batch/1024) | base_lr*global_batch/256 (DINO v1) | base_lr"),
    F("optim.adamw_beta1", optim.adamw_beta1, "0.9", "AdamW beta1"),
    F("optim.adamw_beta2", optim.adamw_beta2, "0.999", "AdamW beta2"),
    F("optim.adamw_eps", optim.adamw_eps, "1.0e-08", "AdamW epsilon (ours; the reference uses torch's default)"),
    F("optim.schedule_trunc_extra", optim.schedule_trunc_extra, "0.0",
      "DINOv3: the lr/wd/momentum cosine is computed over (1 + x) times its length and cut, rescaled to end at "
      "the final value (0.25 is the official suggestion); 0 = DINOv2's cosine"),

    F("teacher.momentum_teacher", teacher.momentum_teacher, "0.992", "EMA momentum at the start (cosine to final)"),
    F("teacher.final_momentum_teacher", teacher.final_momentum_teacher, "1.0", "EMA momentum at the end"),
    F("teacher.warmup_teacher_temp", teacher.warmup_teacher_temp, "0.04", "teacher temperature at iteration 0"),
    F("teacher.teacher_temp", teacher.teacher_temp, "0.07", "teacher temperature after the warmup"),
    I("teacher.warmup_teacher_temp_epochs", teacher.warmup_teacher_temp_epochs, "30", "linear temperature warmup"),

    L("crops.global_crops_scale", crops.global_crops_scale, 2, "[0.32, 1.0]", "area range of the global crops"),
    I("crops.local_crops_number", crops.local_crops_number, "8", "local crops per image"),
    L("crops.local_crops_scale", crops.local_crops_scale, 2, "[0.05, 0.32]", "area range of the local crops"),
    IV("crops.global_crops_size", crops.global_crops_size, "224",
       "global crop side (also the pos-embed grid unless student.img_size is set); a list gives one side per size "
       "pair (high-resolution phase, docs/high-resolution.md)"),
    IV("crops.local_crops_size", crops.local_crops_size, "96", "local crop side; a list: one per size pair"),
    FV("crops.global_local_crop_pairs_ratios", crops.global_local_crop_pairs_ratios, "1.0",
       "sampling weights of the size pairs (one per pair; normalized), one pair drawn per iteration"),
    B("crops.extended_context", crops.extended_context, "false",
      "Virchow2 extended-context translation: every crop is a box of about its own size (ect_scale, ect_ratio) "
      "translated inside the tile; online slide sources read a region context_factor times the tile size"),
    F("crops.context_factor", crops.context_factor, "1.75",
      "extended_context: side of the region an online slide source reads, relative to its size= (392/224)"),
    L("crops.ect_scale", crops.ect_scale, 2, "[0.9, 1.1]", "extended_context: crop box area / crop area"),
    L("crops.ect_ratio", crops.ect_ratio, 2, "[0.95, 1.05]", "extended_context: crop box aspect range (log-uniform)"),
    IVN("crops.gram_teacher_crops_size", crops.gram_teacher_crops_size, "null",
        "Gram anchoring: side of the Gram teacher's copies of the global crops (same boxes); a list: one per size "
        "pair (high-resolution phase); null = each pair's global_crops_size"),
    B("crops.gram_teacher_no_distortions", crops.gram_teacher_no_distortions, "false",
      "Gram anchoring: the Gram teacher's crops without colour jitter, grayscale, blur, solarize, HED"),

    B("gram.use_loss", gram.use_loss, "false", "DINOv3 Gram anchoring on (docs/gram-anchoring.md)"),
    B("gram.compute_stats", gram.compute_stats, "false", "auxiliary masked/unmasked Gram statistics; must be false"),
    F("gram.loss_weight", gram.loss_weight, "1.0", "Gram loss weight when gram.loss_weight_schedule is null"),
    B("gram.ema_teacher", gram.ema_teacher, "false",
      "use the EMA teacher's features as the Gram target; must be false (a separate Gram teacher)"),
    S("gram.ckpt", gram.ckpt, "''",
      "start the Gram teacher from this checkpoint dir or backbone safetensors; '' = none (then it_load_ema_teacher)"),
    I("gram.it_load_ema_teacher", gram.it_load_ema_teacher, "-1",
      "copy the EMA teacher into the Gram teacher before this iteration; -1 = never"),
    B("gram.rep_update", gram.rep_update, "true",
      "refresh the Gram teacher from the EMA teacher after every iteration i with i+1 >= it_first_update and "
      "(i+1) % update_frequency == 0"),
    I("gram.update_frequency", gram.update_frequency, "50000", "Gram teacher refresh period (iterations)"),
    I("gram.it_first_update", gram.it_first_update, "0", "no refresh before this iteration"),
    IN("gram.max_updates", gram.max_updates, "null", "at most this many refreshes; null = unlimited"),
    B("gram.normalized", gram.normalized, "true", "L2-normalise the patch features before the Gram matrices"),
    B("gram.img_level", gram.img_level, "false",
      "true: one Gram matrix per image (the released recipes); false: one over all the rank's global-crop tokens"),
    B("gram.remove_neg", gram.remove_neg, "false", "clamp the negative similarities of both Gram matrices to 0"),
    B("gram.remove_only_teacher_neg", gram.remove_only_teacher_neg, "false",
      "clamp the teacher's negative similarities to 0 (not with remove_neg)"),
    E("gram.tokens_used", gram.tokens_used, "all", "all|masked|unmasked",
      "patch tokens in the loss; only all is implemented"),
    E("gram.global_teacher_resize_method", gram.global_teacher_resize_method, "bicubic", "bicubic",
      "resampling of the Gram teacher's patch features to the student's grid (torch interpolate)"),
    B("gram.global_teacher_resize_antialias", gram.global_teacher_resize_antialias, "false",
      "antialias in that resampling (when the Gram teacher's grid is larger)"),
    SCHEDULE("gram.loss_weight_schedule", gram.loss_weight_schedule, "null", "null", "null", "0", "null",
             "Gram loss weight"),

    I("train.batch_size_per_gpu", train.batch_size_per_gpu, "64", "images per rank per iteration"),
    I("train.OFFICIAL_EPOCH_LENGTH", train.OFFICIAL_EPOCH_LENGTH, "1250", "iterations per epoch for all schedules"),
    S("train.output_dir", train.output_dir, "'.'", "checkpoints, metrics and the resolved config go here"),
    K("train.seed", CT_I64, train.seed, 0, "0", NULL, "seed of every random draw (keyed by purpose)"),
    E("train.centering", train.centering, "centering", "centering|sinkhorn_knopp",
      "teacher target normalisation: EMA centre + softmax, or Sinkhorn-Knopp"),
    I("train.num_workers", train.num_workers, "10", "data loader threads"),
    B("train.stop_on_collapse", train.stop_on_collapse, "false",
      "stop the run when the collapse diagnostics confirm a collapse (head uniform, one prototype, backbone "
      "constant); no checkpoint is written while they warn, so the newest one is the last good one"),

    B("schedules.enabled", schedules.enabled, "false",
      "DINOv3 schedules (linear warm-up, cosine, constant tail) replace the DINOv2 ones; set by writing any "
      "schedules key (docs/schedules.md)"),
    F("schedules.lr.start", schedules.lr.start, "0.0", "lr: value at iteration 0 (start of the linear warm-up)"),
    F("schedules.lr.peak", schedules.lr.peak, "0.001", "lr: value at the end of the warm-up, start of the cosine (before the lr scaling rule)"),
    F("schedules.lr.end", schedules.lr.end, "1.0e-06", "lr: value at the end of the cosine, then constant (before the lr scaling rule)"),
    I("schedules.lr.warmup_epochs", schedules.lr.warmup_epochs, "10", "lr: linear warm-up length"),
    I("schedules.lr.freeze_last_layer_epochs", schedules.lr_freeze_last_layer_epochs, "1", "head last layer lr = 0 this long"),
    I("schedules.lr.cosine_epochs", schedules.lr.cosine_epochs, "-1", "lr: cosine length; -1 = the rest of the run (the official key absent)"),
    F("schedules.weight_decay.start", schedules.weight_decay.start, "0.04", "weight decay: value at iteration 0 (start of the linear warm-up)"),
    F("schedules.weight_decay.peak", schedules.weight_decay.peak, "0.04", "weight decay: value at the end of the warm-up, start of the cosine"),
    F("schedules.weight_decay.end", schedules.weight_decay.end, "0.04", "weight decay: value at the end of the cosine, then constant"),
    I("schedules.weight_decay.warmup_epochs", schedules.weight_decay.warmup_epochs, "0", "weight decay: linear warm-up length"),
    I("schedules.weight_decay.cosine_epochs", schedules.weight_decay.cosine_epochs, "-1", "weight decay: cosine length; -1 = the rest of the run (the official key absent)"),
    F("schedules.momentum.start", schedules.momentum.start, "0.992", "teacher EMA momentum: value at iteration 0 (start of the linear warm-up)"),
    F("schedules.momentum.peak", schedules.momentum.peak, "0.992", "teacher EMA momentum: value at the end of the warm-up, start of the cosine"),
    F("schedules.momentum.end", schedules.momentum.end, "0.992", "teacher EMA momentum: value at the end of the cosine, then constant"),
    I("schedules.momentum.warmup_epochs", schedules.momentum.warmup_epochs, "0", "teacher EMA momentum: linear warm-up length"),
    I("schedules.momentum.cosine_epochs", schedules.momentum.cosine_epochs, "-1", "teacher EMA momentum: cosine length; -1 = the rest of the run (the official key absent)"),
    F("schedules.teacher_temp.start", schedules.teacher_temp.start, "0.04", "teacher temperature: value at iteration 0 (start of the linear warm-up)"),
    F("schedules.teacher_temp.peak", schedules.teacher_temp.peak, "0.07", "teacher temperature: value at the end of the warm-up, start of the cosine"),
    F("schedules.teacher_temp.end", schedules.teacher_temp.end, "0.07", "teacher temperature: value at the end of the cosine, then constant"),
    I("schedules.teacher_temp.warmup_epochs", schedules.teacher_temp.warmup_epochs, "30", "teacher temperature: linear warm-up length"),
    I("schedules.teacher_temp.cosine_epochs", schedules.teacher_temp.cosine_epochs, "-1", "teacher temperature: cosine length; -1 = the rest of the run (the official key absent)"),

    S("hrft.checkpoint_path", hrft.checkpoint_path, "''",
      "high-resolution phase: a fresh run (no checkpoint in train.output_dir) starts with student and teacher = the "
      "teacher of this checkpoint (a checkpoint directory, or an earlier run's output_dir: its newest), fresh AdamW, "
      "centres and iteration 0; '' = off"),

    B("distillation.enabled", distillation.enabled, "false",
      "distil from a frozen teacher (with multidistillation: docs/distillation.md)"),
    S("distillation.full_cfg_path", distillation.full_cfg_path, "''",
      "the teacher's config file (its architecture and heads)"),
    S("distillation.checkpoint_path", distillation.checkpoint_path, "''",
      "the teacher's weights: its training output_dir (or one checkpoint dir: backbone and heads), or a weights "
      "file (export or released: backbone only, heads fresh); 'ignore' = random teacher (tests, as dinov3)"),
    B("multidistillation.enabled", multidistillation.enabled, "false",
      "train the students listed in multidistillation.students at once from one teacher (docs/distillation.md)"),
    I("multidistillation.global_batch_size", multidistillation.global_batch_size, "0",
      "images per iteration, seen by every student (divisible by the world and by each student's rank count)"),
    K("multidistillation.students", CT_STUDENTS, multidistillation.students, CFG_MAX_STUDENTS, "[]", NULL,
      "list of {name, config_path, ranks_range: [first, end)}: each student's normal config file and its ranks"),

    E("compute_precision.param_dtype", param_dtype, "auto", "auto|fp32|bf16",
      "compute dtype: fp32 on the cpu backend; on cuda bf16 tensor-core GEMMs (fp32 master weights, the default) "
      "or fp32 (true fp32 GEMMs, several times slower: to tell bf16 rounding from a bug)"),
    B("compute_precision.recompute_activations", recompute_activations, "false",
      "keep only each student block's input and recompute the block in backward (same gradients; about "
      "a third more compute for a fraction of the activation memory)"),
    B("compute_precision.cuda_graphs", cuda_graphs, "false",
      "backend cuda, one process: launch the work between the points where the host waits (the loss "
      "read-back, the clipping norms) as CUDA graphs, replayed without recording when a segment repeats (same "
      "kernels and arguments: the same bits; docs/cuda-backend.md \"CUDA graphs\"); DINO_CUDA_GRAPHS=0|1 "
      "overrides, DINO_CUDA_GRAPH_MODE=replay|record|verify picks the mode"),

    I("evaluation.eval_period_iterations", evaluation.eval_period_iterations, "12500",
      "teacher export (and k-NN eval when sets are given) period; 0 = off"),
    S("evaluation.knn_train", evaluation.knn_train, "''", "labeled tile set for periodic k-NN (train side)"),
    S("evaluation.knn_test", evaluation.knn_test, "''", "labeled tile set for periodic k-NN (test side)"),

    K("data.sources", CT_STR_LIST, data.sources, CFG_MAX_SOURCES, "[]", NULL,
      "tile sources (docs/data-sources.md): DIR of shards, FILE.dtshard, shards:LIST, folder:DIR, list:FILE, "
      "wsi:SLIDES[,mpp=0.5][,size=224]; parts joined by +; inside [...] quote specs with commas"),
    F("data.max_corrupt_fraction", data.max_corrupt_fraction, "0.01",
      "stop when more than this fraction of tiles read is corrupt"),
    K("data.corrupt_min_reads", CT_I64, data.corrupt_min_reads, 0, "1000", NULL,
      "the corrupt fraction is enforced once this many tiles were read (a few bad tiles early must not end a run)"),
    I("data.prefetch", data.prefetch, "3", "batches the loader builds ahead of the step"),
    K("data.max_image_pixels", CT_I64, data.max_image_pixels, 0, "67108864", NULL,
      "pixel budget per tile image (8192 x 8192): an image file or shard record whose header declares more "
      "pixels is refused before anything is allocated for it and counted as a corrupt tile"),
    F("data.hsv_min_fraction", data.hsv_min_fraction, "0.0",
      "Midnight's tile filter on online slide tiles: keep a tile when this fraction of its pixels lies in the "
      "HSV ranges below (Midnight 0.6); 0 = off"),
    L("data.hsv_hue", data.hsv_hue, 2, "[90.0, 180.0]", "HSV filter hue range, OpenCV units (degrees / 2)"),
    L("data.hsv_saturation", data.hsv_saturation, 2, "[8.0, 255.0]", "HSV filter saturation range, 0..255"),
    L("data.hsv_value", data.hsv_value, 2, "[103.0, 255.0]", "HSV filter value range, 0..255"),

    F("augment.blur_p_global1", augment.blur_p_global1, "0.0",
      "blur apply probability, global crop 1 (reference's effective value; its docs say 1.0)"),
    F("augment.blur_p_global2", augment.blur_p_global2, "0.9", "blur apply probability, global crop 2 (docs: 0.1)"),
    F("augment.blur_p_local", augment.blur_p_local, "0.5", "blur apply probability, local crops"),
    L("augment.blur_sigma", augment.blur_sigma, 2, "[0.1, 2.0]", "Gaussian blur sigma range"),
    I("augment.blur_kernel", augment.blur_kernel, "9", "Gaussian blur kernel side (odd)"),
    F("augment.solarize_p", augment.solarize_p, "0.2", "solarization probability (global crop 2)"),
    I("augment.solarize_threshold", augment.solarize_threshold, "128", "pixels >= this (0..255 scale) are inverted"),
    F("augment.hflip_p", augment.hflip_p, "0.5", "horizontal flip probability"),
    L("augment.ratio", augment.ratio, 2, "[0.75, 1.3333333333333333]", "RandomResizedCrop aspect ratio range"),
    F("augment.color_jitter_p", augment.color_jitter_p, "0.8", "color jitter apply probability"),
    F("augment.brightness", augment.brightness, "0.4", "color jitter brightness"),
    F("augment.contrast", augment.contrast, "0.4", "color jitter contrast"),
    F("augment.saturation", augment.saturation, "0.2", "color jitter saturation"),
    F("augment.hue", augment.hue, "0.1", "color jitter hue, in [0, 0.5]"),
    F("augment.grayscale_p", augment.grayscale_p, "0.2", "random grayscale probability"),
    L("augment.mean", augment.mean, 3, "[0.485, 0.456, 0.406]", "normalisation mean (RGB, [0,1] scale)"),
    L("augment.std", augment.std, 3, "[0.229, 0.224, 0.225]", "normalisation std (RGB)"),
    F("augment.vflip_p", augment.vflip_p, "0.0", "pathology: vertical flip probability (Virchow2: 0.5)"),
    B("augment.rot90", augment.rot90, "false", "pathology: random multiple-of-90 degree rotation"),
    F("augment.hed_p", augment.hed_p, "0.0", "pathology: HED stain jitter probability; 0 = off"),
    F("augment.hed_scale", augment.hed_scale, "0.05", "HED jitter: per-stain factor ~ U[1-s, 1+s]"),
    F("augment.hed_shift", augment.hed_shift, "0.05", "HED jitter: per-stain optical-density offset ~ U[-s, s]"),
    B("augment.crop_without_resize", augment.crop_without_resize, "false",
      "pathology (ECT-like): crop at the output size instead of RandomResizedCrop"),

    I("log.every_n_iterations", log.every_n_iterations, "10", "console line and metrics record period"),
    S("log.metrics_file", log.metrics_file, "'training_metrics.jsonl'", "JSON-lines metrics (relative: in output_dir)"),

    I("checkpoint.every_n_iterations", checkpoint.every_n_iterations, "3750",
      "checkpoint period (one is also written at the end)"),
    I("checkpoint.keep_last", checkpoint.keep_last, "3", "checkpoints kept (older ones are deleted)"),

    E("backend", backend, "cpu", "cpu|cuda", "compute backend"),
    B("dist.zero1", zero1, "false", "shard the AdamW moments over ranks (ZeRO-1)"),
    F("dist.grad_bucket_mb", grad_bucket_mb, "8.0",
      "gradient all-reduce bucket size (MB): buckets start during the backward pass"),
    F("dist.collective_timeout_s", collective_timeout_s, "600.0",
      "a collective (MPI, or NCCL on cuda) that has not finished after this many seconds ends the whole job, "
      "naming the rank that did not arrive"),
};
#define N_KEYS ((int)(sizeof KEYS / sizeof KEYS[0]))
_Static_assert(sizeof KEYS / sizeof KEYS[0] <= CFG_MAX_KEYS, "raise CFG_MAX_KEYS");

int config_n_keys(void) { return N_KEYS; }
const char *config_key_name(int i) { return KEYS[i].key; }
const char *config_key_doc(int i) { return KEYS[i].doc; }
const char *config_key_default(int i) { return KEYS[i].def; }
const char *config_key_choices(int i) { return KEYS[i].choices; }

static const CfgKey *find_key(const char *name) {
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(KEYS[i].key, name) == 0) return &KEYS[i];
    return NULL;
}
static int key_index(const CfgKey *k) { return (int)(k - KEYS); }
static void *field(Config *c, const CfgKey *k) { return (char *)c + k->off; }
static const void *cfield(const Config *c, const CfgKey *k) { return (const char *)c + k->off; }
static int *list_count(Config *c) { return &c->data.n_sources; } // the only string list

// ---- "did you mean" ---------------------------------------------------------------------------------

int config_edit_distance(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b);
    int *prev = dino_malloc((m + 1) * sizeof(int)), *cur = dino_malloc((m + 1) * sizeof(int));
    for (size_t j = 0; j <= m; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= n; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= m; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        int *t = prev; prev = cur; cur = t;
    }
    int d = prev[m];
    free(prev);
    free(cur);
    return d;
}

static const char *leaf(const char *key) {
    const char *d = strrchr(key, '.');
    return d ? d + 1 : key;
}

// The nearest valid key: the same leaf name in another section wins (train.base_lr -> optim.base_lr),
// else the smallest edit distance if it is plausibly a typo.
static const char *suggest_key(const char *name) {
    const char *best = NULL;
    int best_d = INT_MAX;
    for (int i = 0; i < N_KEYS; i++) {
        int d = config_edit_distance(name, KEYS[i].key);
        if (strcmp(leaf(name), leaf(KEYS[i].key)) == 0 && strchr(name, '.')) d = d < 2 ? d : 2;
        if (d < best_d) best_d = d, best = KEYS[i].key;
    }
    int limit = (int)strlen(name) / 3;
    if (limit < 3) limit = 3;
    return best_d <= limit ? best : NULL;
}

static const char *suggest_choice(const char *value, const char *choices, char *buf, size_t cap) {
    int best_d = INT_MAX;
    buf[0] = 0;
    const char *p = choices;
    while (*p) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char c[CFG_NAME];
        snprintf(c, sizeof c, "%.*s", (int)len, p);
        int d = config_edit_distance(value, c);
        if (*value && (strncmp(c, value, strlen(value)) == 0 || strncmp(value, c, strlen(c)) == 0)) d = 1;
        if (d < best_d) best_d = d, snprintf(buf, cap, "%s", c);
        p += len + (e != NULL);
    }
    return best_d <= 3 ? buf : NULL;
}

static int choice_ok(const char *value, const char *choices) {
    size_t n = strlen(value);
    const char *p = choices;
    while (*p) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, value, n) == 0) return 1;
        p += len + (e != NULL);
    }
    return 0;
}

// ---- values: a YAML node or an override, reduced to scalars -----------------------------------------

#define VAL_MAX 64
typedef struct {
    int kind; // 0 scalar, 1 sequence, 2 mapping, 3 empty (no value)
    int n;
    const char *item[VAL_MAX];
    int plain[VAL_MAX]; // unquoted scalar (YAML null/bool/number syntax applies)
} Val;

static int val_from_node(Val *v, yaml_document_t *doc, yaml_node_t *node) {
    memset(v, 0, sizeof *v);
    if (!node) { v->kind = 3; return 0; }
    if (node->type == YAML_SCALAR_NODE) {
        v->kind = 0;
        v->n = 1;
        v->item[0] = (const char *)node->data.scalar.value;
        v->plain[0] = node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        return 0;
    }
    if (node->type == YAML_MAPPING_NODE) { v->kind = 2; return 0; }
    v->kind = 1;
    for (yaml_node_item_t *it = node->data.sequence.items.start; it < node->data.sequence.items.top; it++) {
        yaml_node_t *e = yaml_document_get_node(doc, *it);
        if (!e || e->type != YAML_SCALAR_NODE || v->n == VAL_MAX) return -1;
        v->item[v->n] = (const char *)e->data.scalar.value;
        v->plain[v->n] = e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        v->n++;
    }
    return 0;
}

static int is_null(const char *s, int plain) {
    return plain && (!*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
                     strcmp(s, "NULL") == 0);
}

static int parse_bool(const char *s, bool *out) {
    static const char *t[] = {"true", "yes", "on"}, *f[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, t[i]) == 0) { *out = true; return 0; }
        if (strcasecmp(s, f[i]) == 0) { *out = false; return 0; }
    }
    return -1;
}

static int parse_i64(const char *s, int64_t *out) {
    if (!*s) return -1;
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || *end) return -1;
    *out = x;
    return 0;
}

static int parse_f64(const char *s, double *out) {
    if (!*s) return -1;
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (errno == ERANGE || *end || !isfinite(x)) return -1;
    *out = x;
    return 0;
}

static const char *type_name(const CfgKey *k) {
    static char buf[96];
    switch (k->type) {
    case CT_BOOL: return "a boolean (true/false)";
    case CT_INT: case CT_I64: return k->n ? "an integer or null" : "an integer";
    case CT_F64: return nullable(k) || k->n ? "a number or null" : "a number";
    case CT_STR: return "a string";
    case CT_ENUM: snprintf(buf, sizeof buf, "one of %s", k->choices); return buf;
    case CT_F64_LIST: snprintf(buf, sizeof buf, "a list of %d numbers like %s", k->n, k->def); return buf;
    case CT_STR_LIST: return "a list of strings like [\"/data/tiles\"]";
    case CT_STUDENTS: return "a list of {name: vits, config_path: FILE, ranks_range: [0, 4]}";
    case CT_INT_VLIST: return "an integer or a list of integers like [512, 768]";
    case CT_F64_VLIST: return "a number or a list of numbers like [0.5, 0.5]";
    }
    return "?";
}

// Sets key k from v. `where` names the origin for messages ("configs/x.yaml:12", "the command line").
static int set_value(Config *c, const CfgKey *k, const Val *v, const char *where, char *err) {
    void *p = field(c, k);
    char shown[160];
    snprintf(shown, sizeof shown, "%s", v->kind == 0 ? v->item[0] : v->kind == 1 ? "a list" : v->kind == 2 ? "a mapping" : "nothing");
    if (k->type == CT_STUDENTS) { // a YAML file's list is read by parse_students; here only "[]"
        if (v->kind != 1 || v->n != 0) {
            dino_seterr(err, "%s in %s: set the students in a config file (a list of {name, config_path, "
                             "ranks_range}), or [] for none", k->key, where);
            return -1;
        }
        c->multidistillation.n_students = 0;
        return 0;
    }
    if (vlist_nullable(k) && (v->kind == 3 || (v->kind == 0 && is_null(v->item[0], v->plain[0])))) {
        *(CfgIntList *)p = (CfgIntList){.n = 1, .v = {-1}};
        return 0;
    }
    if (k->type == CT_INT_VLIST || k->type == CT_F64_VLIST) { // a scalar, or a list of 1..n
        int n = v->kind == 0 ? 1 : v->kind == 1 ? v->n : 0;
        if (n < 1 || (v->kind == 0 && is_null(v->item[0], v->plain[0]))) goto wrong_type;
        if (n > k->n) {
            dino_seterr(err, "%s in %s: at most %d entries, got %d", k->key, where, k->n, n);
            return -1;
        }
        if (k->type == CT_INT_VLIST) {
            CfgIntList tmp = {.n = n};
            for (int i = 0; i < n; i++) {
                int64_t x;
                if (parse_i64(v->item[i], &x) || x < INT_MIN || x > INT_MAX) goto wrong_type;
                tmp.v[i] = (int)x;
            }
            *(CfgIntList *)p = tmp;
        } else {
            CfgF64List tmp = {.n = n};
            for (int i = 0; i < n; i++)
                if (parse_f64(v->item[i], &tmp.v[i])) goto wrong_type;
            *(CfgF64List *)p = tmp;
        }
        return 0;
    }
    if (k->type == CT_F64_LIST || k->type == CT_STR_LIST) {
        int scalar_as_list = k->type == CT_STR_LIST && v->kind == 0 && !is_null(v->item[0], v->plain[0]);
        if (v->kind != 1 && !scalar_as_list) goto wrong_type;
        if (k->type == CT_F64_LIST) {
            if (v->n != k->n) goto wrong_type;
            double tmp[8];
            for (int i = 0; i < v->n; i++)
                if (parse_f64(v->item[i], &tmp[i])) goto wrong_type;
            memcpy(p, tmp, sizeof(double) * (size_t)k->n);
            return 0;
        }
        if (v->n > k->n) {
            dino_seterr(err, "%s in %s: at most %d entries, got %d", k->key, where, k->n, v->n);
            return -1;
        }
        char(*list)[CFG_STR] = p;
        for (int i = 0; i < v->n; i++) {
            if (strlen(v->item[i]) >= CFG_STR) {
                dino_seterr(err, "%s in %s: entry %d is too long (max %d characters)", k->key, where, i, CFG_STR - 1);
                return -1;
            }
            if (!v->item[i][0]) {
                dino_seterr(err, "%s in %s: entry %d is empty", k->key, where, i);
                return -1;
            }
        }
        for (int i = 0; i < v->n; i++) snprintf(list[i], CFG_STR, "%s", v->item[i]);
        *list_count(c) = v->n;
        return 0;
    }
    if (v->kind == 3 && (k->type == CT_STR)) { ((char *)p)[0] = 0; return 0; }
    if (nullable(k) && (v->kind == 3 || (v->kind == 0 && is_null(v->item[0], v->plain[0])))) {
        *(double *)p = 0;
        return 0;
    }
    if (v->kind == 3 && k->n && k->type == CT_INT) { *(int *)p = -1; return 0; }     // "key:" (null)
    if (v->kind == 3 && k->n && k->type == CT_F64) { *(double *)p = NAN; return 0; }
    if (v->kind != 0) goto wrong_type;
    const char *s = v->item[0];
    switch (k->type) {
    case CT_BOOL:
        if (parse_bool(s, p)) goto wrong_type;
        return 0;
    case CT_INT: {
        int64_t x;
        if (k->n && is_null(s, v->plain[0])) {
            *(int *)p = -1;
            return 0;
        }
        if (parse_i64(s, &x) || x < INT_MIN || x > INT_MAX) goto wrong_type;
        *(int *)p = (int)x;
        return 0;
    }
    case CT_I64:
        if (parse_i64(s, p)) goto wrong_type;
        return 0;
    case CT_F64:
        if (k->n && is_null(s, v->plain[0])) {
            *(double *)p = NAN;
            return 0;
        }
        if (parse_f64(s, p)) goto wrong_type;
        return 0;
    case CT_STR:
        if (is_null(s, v->plain[0])) s = "";
        if (strlen(s) >= (size_t)k->n) {
            dino_seterr(err, "%s in %s: value is too long (max %d characters)", k->key, where, k->n - 1);
            return -1;
        }
        snprintf(p, (size_t)k->n, "%s", s);
        return 0;
    case CT_ENUM: {
        if (!choice_ok(s, k->choices)) {
            char sug[CFG_NAME];
            const char *m = suggest_choice(s, k->choices, sug, sizeof sug);
            dino_seterr(err, "%s = '%s' in %s: must be one of %s%s%s%s", k->key, s, where, k->choices,
                        m ? "; did you mean '" : "", m ? m : "", m ? "'?" : "");
            return -1;
        }
        snprintf(p, (size_t)k->n, "%s", s);
        return 0;
    }
    default: break;
    }
wrong_type:
    dino_seterr(err, "wrong type for %s in %s: expected %s, got %s%s%s", k->key, where, type_name(k),
                v->kind == 0 ? "'" : "", shown, v->kind == 0 ? "'" : "");
    return -1;
}

static void set_origin(Config *c, const CfgKey *k, int file) { c->origin.of_key[key_index(k)] = (unsigned char)file; }

// A key was set from `file`. A `schedules:` key enables the section (the official code switches on the
// section's presence), unless this same file or command line says schedules.enabled itself.
static void key_was_set(Config *c, const CfgKey *k, int file) {
    set_origin(c, k, file);
    if (strncmp(k->key, "schedules.", 10) != 0 || strcmp(k->key, "schedules.enabled") == 0) return;
    const CfgKey *en = find_key("schedules.enabled");
    if (c->origin.of_key[key_index(en)] == file) return;
    c->schedules.enabled = true;
}

static int add_origin(Config *c, const char *name) {
    if (c->origin.n_files >= CFG_MAX_FILES + 2) return c->origin.n_files - 1;
    snprintf(c->origin.files[c->origin.n_files], CFG_STR, "%s", name);
    return c->origin.n_files++;
}

static void set_default(Config *c, const CfgKey *k) {
        yaml_parser_t parser;
        yaml_document_t doc;
        DINO_ASSERT(yaml_parser_initialize(&parser), "yaml_parser_initialize failed");
        yaml_parser_set_input_string(&parser, (const unsigned char *)k->def, strlen(k->def));
        DINO_ASSERT(yaml_parser_load(&parser, &doc), "bad default for %s", k->key);
        Val v;
        DINO_ASSERT(val_from_node(&v, &doc, yaml_document_get_root_node(&doc)) == 0, "bad default for %s", k->key);
        char err[DINO_ERRLEN];
        DINO_ASSERT(set_value(c, k, &v, "the defaults", err) == 0, "%s", err);
        yaml_document_delete(&doc);
        yaml_parser_delete(&parser);
}

void config_defaults(Config *c) {
    memset(c, 0, sizeof *c);
    add_origin(c, "the defaults");
    for (int i = 0; i < N_KEYS; i++) set_default(c, &KEYS[i]);
}

// ---- reading files ----------------------------------------------------------------------------------

static int is_section(const char *prefix) {
    size_t n = strlen(prefix);
    for (int i = 0; i < N_KEYS; i++)
        if (strncmp(KEYS[i].key, prefix, n) == 0 && KEYS[i].key[n] == '.') return 1;
    return 0;
}

static int unknown_key(const char *name, const char *where, char *err) {
    const char *s = suggest_key(name);
    if (s)
        dino_seterr(err, "unknown key '%s' in %s; did you mean '%s'?", name, where, s);
    else
        dino_seterr(err, "unknown key '%s' in %s (docs/configuration.md lists every key)", name, where);
    return -1;
}

// multidistillation.students from a YAML sequence of mappings {name, config_path, ranks_range: [a, b]}.
static int parse_students(Config *c, yaml_document_t *doc, yaml_node_t *seq, const char *where, char *err) {
    const char *key = "multidistillation.students";
    if (!seq || seq->type != YAML_SEQUENCE_NODE) {
        dino_seterr(err, "wrong type for %s in %s: expected a list of {name, config_path, ranks_range}", key, where);
        return -1;
    }
    CfgMultiDistillation *md = &c->multidistillation;
    int n = 0;
    for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++, n++) {
        yaml_node_t *e = yaml_document_get_node(doc, *it);
        if (n >= CFG_MAX_STUDENTS) {
            dino_seterr(err, "%s in %s: at most %d students", key, where, CFG_MAX_STUDENTS);
            return -1;
        }
        if (!e || e->type != YAML_MAPPING_NODE) {
            dino_seterr(err, "%s in %s: student %d is not a mapping {name, config_path, ranks_range}", key, where, n);
            return -1;
        }
        CfgStudentRef *st = &md->students[n];
        memset(st, 0, sizeof *st);
        int have = 0;
        for (yaml_node_pair_t *pr = e->data.mapping.pairs.start; pr < e->data.mapping.pairs.top; pr++) {
            yaml_node_t *kn = yaml_document_get_node(doc, pr->key), *vn = yaml_document_get_node(doc, pr->value);
            const char *kname = kn && kn->type == YAML_SCALAR_NODE ? (const char *)kn->data.scalar.value : "?";
            const char *sv = vn && vn->type == YAML_SCALAR_NODE ? (const char *)vn->data.scalar.value : NULL;
            if (strcmp(kname, "name") == 0 && sv && strlen(sv) < CFG_NAME) {
                snprintf(st->name, CFG_NAME, "%s", sv), have |= 1;
            } else if (strcmp(kname, "config_path") == 0 && sv && strlen(sv) < CFG_STR) {
                snprintf(st->config_path, CFG_STR, "%s", sv), have |= 2;
            } else if (strcmp(kname, "ranks_range") == 0 && vn && vn->type == YAML_SEQUENCE_NODE &&
                       vn->data.sequence.items.top - vn->data.sequence.items.start == 2) {
                for (int j = 0; j < 2; j++) {
                    yaml_node_t *x = yaml_document_get_node(doc, vn->data.sequence.items.start[j]);
                    int64_t r;
                    if (!x || x->type != YAML_SCALAR_NODE || parse_i64((const char *)x->data.scalar.value, &r) ||
                        r < 0 || r > INT_MAX) {
                        dino_seterr(err, "%s in %s: student %d: ranks_range must be two ranks [first, end)", key,
                                    where, n);
                        return -1;
                    }
                    st->ranks_range[j] = (int)r;
                }
                have |= 4;
            } else {
                dino_seterr(err, "%s in %s: student %d: '%s' is not name (< %d characters), config_path or "
                                 "ranks_range [first, end)",
                            key, where, n, kname, CFG_NAME);
                return -1;
            }
        }
        if (have != 7) {
            dino_seterr(err, "%s in %s: student %d needs name, config_path and ranks_range", key, where, n);
            return -1;
        }
    }
    md->n_students = n;
    return 0;
}

// Applies every key of mapping `map` under `prefix` ("" at the top) from file index `file`.
static int apply_mapping(Config *c, yaml_document_t *doc, yaml_node_t *map, const char *prefix, const char *path,
                         int file, char *err) {
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
        yaml_node_t *kn = yaml_document_get_node(doc, pr->key), *vn = yaml_document_get_node(doc, pr->value);
        char where[CFG_STR + 32];
        snprintf(where, sizeof where, "%s (line %lu)", path, (unsigned long)kn->start_mark.line + 1);
        if (kn->type != YAML_SCALAR_NODE) {
            dino_seterr(err, "%s: a key must be a plain name", where);
            return -1;
        }
        const char *kname = (const char *)kn->data.scalar.value;
        if (!*prefix && strcmp(kname, "base") == 0) continue; // handled by the caller
        char full[256];
        snprintf(full, sizeof full, "%s%s%s", prefix, *prefix ? "." : "", kname);
        // the same key twice in one mapping is almost always an editing mistake
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < pr; q++) {
            yaml_node_t *qk = yaml_document_get_node(doc, q->key);
            if (qk->type == YAML_SCALAR_NODE && strcmp((const char *)qk->data.scalar.value, kname) == 0) {
                dino_seterr(err, "duplicate key '%s' in %s", full, where);
                return -1;
            }
        }
        const CfgKey *k = find_key(full);
        if (vn && vn->type == YAML_MAPPING_NODE) {
            if (k) {
                dino_seterr(err, "wrong type for %s in %s: expected %s, got a mapping", full, where, type_name(k));
                return -1;
            }
            if (!is_section(full)) {
                // name the first key inside, so a misspelt section still gets a full suggestion
                yaml_node_pair_t *in = vn->data.mapping.pairs.start;
                yaml_node_t *ik = in < vn->data.mapping.pairs.top ? yaml_document_get_node(doc, in->key) : NULL;
                if (ik && ik->type == YAML_SCALAR_NODE) {
                    char inner[300];
                    snprintf(inner, sizeof inner, "%s.%s", full, (const char *)ik->data.scalar.value);
                    return unknown_key(inner, where, err);
                }
                return unknown_key(full, where, err);
            }
            if (apply_mapping(c, doc, vn, full, path, file, err)) return -1;
            continue;
        }
        if (!k) {
            if (is_section(full) && vn && vn->type == YAML_SCALAR_NODE &&
                is_null((const char *)vn->data.scalar.value, vn->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)) {
                // a null sub-section (the reference's `loss_weight_schedule: null`): its keys' defaults
                size_t n = strlen(full);
                for (int i = 0; i < N_KEYS; i++)
                    if (strncmp(KEYS[i].key, full, n) == 0 && KEYS[i].key[n] == '.') {
                        set_default(c, &KEYS[i]);
                        set_origin(c, &KEYS[i], file);
                    }
                continue;
            }
            if (is_section(full)) {
                dino_seterr(err, "'%s' in %s is a section: expected a mapping of its keys", full, where);
                return -1;
            }
            return unknown_key(full, where, err);
        }
        if (k->type == CT_STUDENTS) {
            if (parse_students(c, doc, vn, where, err)) return -1;
            set_origin(c, k, file);
            continue;
        }
        Val v;
        if (val_from_node(&v, doc, vn)) {
            dino_seterr(err, "wrong type for %s in %s: expected %s", full, where, type_name(k));
            return -1;
        }
        // an empty value ("key:") is YAML null: a plain empty scalar
        if (set_value(c, k, &v, where, err)) return -1;
        key_was_set(c, k, file);
    }
    return 0;
}

static int apply_file(Config *c, const char *path, char chain[][PATH_MAX], int depth, char *err);

// Applies the YAML document the parser reads: its base first (a path relative to the folder of
// `path`, or to the current directory when the text has no file), then its keys. `path` names the text
// in messages.
static int apply_yaml(Config *c, yaml_parser_t *parser, const char *path, int is_file, char chain[][PATH_MAX],
                      int depth, char *err) {
    yaml_document_t doc;
    if (!yaml_parser_load(parser, &doc)) {
        dino_seterr(err, "config %s: YAML error at line %lu: %s", path, (unsigned long)parser->problem_mark.line + 1,
                    parser->problem ? parser->problem : "parse error");
        return -1;
    }
    int rc = -1;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) { rc = 0; goto done; } // empty file: nothing to change
    if (root->type != YAML_MAPPING_NODE) {
        dino_seterr(err, "config %s: expected a mapping of sections at the top", path);
        goto done;
    }
    // base first, so this file's values override it
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top; pr++) {
        yaml_node_t *kn = yaml_document_get_node(&doc, pr->key), *vn = yaml_document_get_node(&doc, pr->value);
        if (kn->type != YAML_SCALAR_NODE || strcmp((const char *)kn->data.scalar.value, "base") != 0) continue;
        if (!vn || vn->type != YAML_SCALAR_NODE || !vn->data.scalar.length) {
            dino_seterr(err, "config %s (line %lu): base must name a config file", path,
                        (unsigned long)kn->start_mark.line + 1);
            goto done;
        }
        const char *b = (const char *)vn->data.scalar.value;
        char bpath[PATH_MAX + CFG_STR];
        if (b[0] == '/' || !is_file) {
            snprintf(bpath, sizeof bpath, "%s", b);
        } else {
            const char *slash = strrchr(path, '/');
            int dl = slash ? (int)(slash - path) + 1 : 0;
            snprintf(bpath, sizeof bpath, "%.*s%s", dl, path, b);
        }
        if (access(bpath, R_OK) != 0) {
            dino_seterr(err, "config %s (line %lu): base config %s: %s", path, (unsigned long)kn->start_mark.line + 1,
                        bpath, strerror(errno));
            goto done;
        }
        if (apply_file(c, bpath, chain, depth + 1, err)) goto done;
    }
    int file = add_origin(c, path);
    rc = apply_mapping(c, &doc, root, "", path, file, err);
done:
    yaml_document_delete(&doc);
    return rc;
}

static int apply_file(Config *c, const char *path, char chain[][PATH_MAX], int depth, char *err) {
    char real[PATH_MAX];
    if (!realpath(path, real)) {
        dino_seterr(err, "cannot open config %s: %s", path, strerror(errno));
        return -1;
    }
    for (int i = 0; i < depth; i++)
        if (strcmp(chain[i], real) == 0) {
            dino_seterr(err, "config %s: base chain has a cycle (%s is its own base through %s)", path, path,
                        depth > 0 ? chain[depth - 1] : path);
            return -1;
        }
    if (depth >= CFG_MAX_FILES) {
        dino_seterr(err, "config %s: base chain deeper than %d files", path, CFG_MAX_FILES);
        return -1;
    }
    snprintf(chain[depth], PATH_MAX, "%s", real);

    FILE *fp = fopen(path, "rb");
    if (!fp) {
        dino_seterr(err, "cannot open config %s: %s", path, strerror(errno));
        return -1;
    }
    yaml_parser_t parser;
    DINO_ASSERT(yaml_parser_initialize(&parser), "yaml_parser_initialize failed");
    yaml_parser_set_input_file(&parser, fp);
    int rc = apply_yaml(c, &parser, path, 1, chain, depth, err);
    yaml_parser_delete(&parser);
    fclose(fp);
    return rc;
}

// ---- overrides --------------------------------------------------------------------------------------

static int override_at(Config *c, const char *kv, int file, char *err) {
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv) {
        dino_seterr(err, "override '%s' on the command line: expected key.sub=value", kv);
        return -1;
    }
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(eq - kv), kv);
    const char *value = eq + 1;
    const CfgKey *k = find_key(name);
    if (!k && strcmp(name, "base") == 0) {
        dino_seterr(err, "override '%s' on the command line: base can only be named inside a config file", kv);
        return -1;
    }
    if (!k) {
        if (is_section(name)) {
            dino_seterr(err, "override '%s' on the command line: '%s' is a section; set its keys one by one", kv, name);
            return -1;
        }
        return unknown_key(name, "the command line", err);
    }
    Val v;
    int rc;
    if (k->type == CT_STR || k->type == CT_ENUM) {
        // strings are taken verbatim (paths may hold YAML-special characters); matching quotes are removed
        char buf[CFG_STR + 2];
        size_t n = strlen(value);
        if (n >= 2 && (value[0] == '"' || value[0] == '\'') && value[n - 1] == value[0])
            snprintf(buf, sizeof buf, "%.*s", (int)n - 2, value + 1);
        else
            snprintf(buf, sizeof buf, "%s", value);
        memset(&v, 0, sizeof v);
        v.n = 1;
        v.item[0] = buf;
        v.plain[0] = 0;
        rc = set_value(c, k, &v, "the command line", err);
    } else {
        yaml_parser_t parser;
        yaml_document_t doc;
        DINO_ASSERT(yaml_parser_initialize(&parser), "yaml_parser_initialize failed");
        yaml_parser_set_input_string(&parser, (const unsigned char *)value, strlen(value));
        if (!yaml_parser_load(&parser, &doc)) {
            dino_seterr(err, "override '%s' on the command line: cannot parse the value (%s)", kv,
                        parser.problem ? parser.problem : "YAML error");
            yaml_parser_delete(&parser);
            return -1;
        }
        if (val_from_node(&v, &doc, yaml_document_get_root_node(&doc))) {
            dino_seterr(err, "wrong type for %s in the command line: expected %s", k->key, type_name(k));
            rc = -1;
        } else {
            rc = set_value(c, k, &v, "the command line", err);
        }
        yaml_document_delete(&doc);
        yaml_parser_delete(&parser);
    }
    if (rc == 0) key_was_set(c, k, file);
    return rc;
}

static int command_line_origin(Config *c) {
    for (int i = 0; i < c->origin.n_files; i++)
        if (strcmp(c->origin.files[i], "the command line") == 0) return i;
    return add_origin(c, "the command line");
}

int config_override(Config *c, const char *kv, char *err) { return override_at(c, kv, command_line_origin(c), err); }

// Overrides, param_dtype=auto, validation: the end of config_load and config_load_string.
static int finish_load(Config *c, int n_overrides, char *const *overrides, char *err) {
    for (int i = 0; i < n_overrides; i++)
        if (config_override(c, overrides[i], err)) return -1;
    if (strcmp(c->param_dtype, "auto") == 0)
        snprintf(c->param_dtype, CFG_NAME, "%s", strcmp(c->backend, "cuda") == 0 ? "bf16" : "fp32");
    return config_validate(c, err);
}

static char base_chain[CFG_MAX_FILES + 1][PATH_MAX]; // the files of a base chain (PATH_MAX-sized: off the stack)

int config_load(Config *c, const char *path, int n_overrides, char *const *overrides, char *err) {
    config_defaults(c);
    if (apply_file(c, path, base_chain, 0, err)) return -1;
    return finish_load(c, n_overrides, overrides, err);
}

int config_load_string(Config *c, const char *yaml, const char *name, int n_overrides, char *const *overrides,
                       char *err) {
    config_defaults(c);
    yaml_parser_t parser;
    DINO_ASSERT(yaml_parser_initialize(&parser), "yaml_parser_initialize failed");
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, strlen(yaml));
    base_chain[0][0] = 0; // the text is no file: its base starts the chain
    int rc = apply_yaml(c, &parser, name, 0, base_chain, 0, err);
    yaml_parser_delete(&parser);
    return rc ? -1 : finish_load(c, n_overrides, overrides, err);
}

// The modules' own checks, run on what the config maps to them (the last line of defence: the key checks
// above should have caught everything with a better message).
static int check_modules(const Config *c, char *err) {
    char why[DINO_ERRLEN];
    SslConfig ssl;
    LoaderConfig lc;
    if (config_to_ssl(c, &ssl, why)) goto bad;
    config_to_loader(c, 0, 1, &lc);
    if (augment_config_check(&lc.aug, why)) goto bad;
    return 0;
bad:
    dino_seterr(err, "config (%s): %s", c->origin.files[c->origin.n_files - 1], why);
    return -1;
}

// ---- writing ----------------------------------------------------------------------------------------


// Shortest text that reads back to exactly x.
static void fmt_f64(char *out, size_t cap, double x) {
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, x);
        if (strtod(out, NULL) == x) break;
    }
    if (!strpbrk(out, ".eE")) strncat(out, ".0", cap - strlen(out) - 1); // keep it a float to the eye
}

static void put_quoted(Text *b, const char *s) {
    text_printf(b, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') text_printf(b, "\\%c", ch);
        else if (ch < 0x20) text_printf(b, "\\x%02x", ch);
        else text_printf(b, "%c", ch);
    }
    text_printf(b, "\"");
}

static void put_value(Text *b, const Config *c, const CfgKey *k) {
    const void *p = cfield(c, k);
    char num[64];
    switch (k->type) {
    case CT_BOOL: text_printf(b, "%s", *(const bool *)p ? "true" : "false"); break;
    case CT_INT:
        if (k->n && *(const int *)p == -1)
            text_printf(b, "null");
        else
            text_printf(b, "%d", *(const int *)p);
        break;
    case CT_I64: text_printf(b, "%lld", (long long)*(const int64_t *)p); break;
    case CT_F64:
        if (nullable(k) && *(const double *)p == 0) { text_printf(b, "null"); break; }
        if (isnan(*(const double *)p)) {
            text_printf(b, "null");
            break;
        }
        fmt_f64(num, sizeof num, *(const double *)p);
        text_printf(b, "%s", num);
        break;
    case CT_STR: put_quoted(b, p); break;
    case CT_ENUM: text_printf(b, "%s", (const char *)p); break;
    case CT_F64_LIST:
        text_printf(b, "[");
        for (int i = 0; i < k->n; i++) {
            fmt_f64(num, sizeof num, ((const double *)p)[i]);
            text_printf(b, "%s%s", i ? ", " : "", num);
        }
        text_printf(b, "]");
        break;
    case CT_INT_VLIST: case CT_F64_VLIST: { // one value as a scalar (as every config before lists)
        int n = k->type == CT_INT_VLIST ? ((const CfgIntList *)p)->n : ((const CfgF64List *)p)->n;
        if (vlist_nullable(k) && n == 1 && ((const CfgIntList *)p)->v[0] == -1) {
            text_printf(b, "null");
            break;
        }
        if (n > 1) text_printf(b, "[");
        for (int i = 0; i < n; i++) {
            if (k->type == CT_INT_VLIST) text_printf(b, "%s%d", i ? ", " : "", ((const CfgIntList *)p)->v[i]);
            else fmt_f64(num, sizeof num, ((const CfgF64List *)p)->v[i]), text_printf(b, "%s%s", i ? ", " : "", num);
        }
        if (n > 1) text_printf(b, "]");
        break;
    }
    case CT_STR_LIST: {
        const char(*list)[CFG_STR] = p;
        text_printf(b, "[");
        for (int i = 0; i < c->data.n_sources; i++) {
            if (i) text_printf(b, ", ");
            put_quoted(b, list[i]);
        }
        text_printf(b, "]");
        break;
    }
    case CT_STUDENTS: {
        const CfgMultiDistillation *md = &c->multidistillation;
        text_printf(b, "[");
        for (int i = 0; i < md->n_students; i++) {
            text_printf(b, "%s{name: ", i ? ", " : "");
            put_quoted(b, md->students[i].name);
            text_printf(b, ", config_path: ");
            put_quoted(b, md->students[i].config_path);
            text_printf(b, ", ranks_range: [%d, %d]}", md->students[i].ranks_range[0], md->students[i].ranks_range[1]);
        }
        text_printf(b, "]");
        break;
    }
    }
}

char *config_to_yaml(const Config *c) {
    Text b;
    text_init(&b, 4096);
    b.s[0] = 0;
    text_printf(&b, "# dinotrain resolved config: every key, as used by the run (docs/configuration.md)\n");
    char section[64] = "", subsection[64] = "";
    for (int i = 0; i < N_KEYS; i++) {
        const CfgKey *k = &KEYS[i];
        const char *dot = strchr(k->key, '.'), *dot2 = dot ? strchr(dot + 1, '.') : NULL;
        char sec[64], sub[64]; // schedules.lr.start: section schedules, subsection lr
        snprintf(sec, sizeof sec, "%.*s", dot ? (int)(dot - k->key) : 0, k->key);
        snprintf(sub, sizeof sub, "%.*s", dot2 ? (int)(dot2 - dot - 1) : 0, dot ? dot + 1 : "");
        if (strcmp(sec, section) != 0) {
            if (*sec) text_printf(&b, "%s:\n", sec);
            snprintf(section, sizeof section, "%s", sec);
            subsection[0] = 0;
        }
        if (strcmp(sub, subsection) != 0) {
            if (*sub) text_printf(&b, "  %s:\n", sub);
            snprintf(subsection, sizeof subsection, "%s", sub);
        }
        text_printf(&b, "%s%s: ", *sub ? "    " : *sec ? "  " : "", dot2 ? dot2 + 1 : dot ? dot + 1 : k->key);
        put_value(&b, c, k);
        text_printf(&b, "\n");
    }
    return b.s;
}

int config_write(const Config *c, const char *path, char *err) {
    char *text = config_to_yaml(c);
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        dino_seterr(err, "cannot write %s: %s", tmp, strerror(errno));
        free(text);
        return -1;
    }
    size_t len = strlen(text), done = 0;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            dino_seterr(err, "cannot write %s: %s", tmp, strerror(errno));
            goto out;
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0) {
        dino_seterr(err, "cannot fsync %s: %s", tmp, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    close(fd);
    if (rc == 0 && rename(tmp, path) != 0) {
        dino_seterr(err, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        rc = -1;
    }
    if (rc) unlink(tmp);
    free(text);
    return rc;
}

int config_equal(const Config *a, const Config *b, const char **diff_key) {
    for (int i = 0; i < N_KEYS; i++) {
        const CfgKey *k = &KEYS[i];
        const void *pa = cfield(a, k), *pb = cfield(b, k);
        int same = 1;
        switch (k->type) {
        case CT_BOOL: same = *(const bool *)pa == *(const bool *)pb; break;
        case CT_INT: same = *(const int *)pa == *(const int *)pb; break;
        case CT_I64: same = *(const int64_t *)pa == *(const int64_t *)pb; break;
        case CT_F64:
            same = *(const double *)pa == *(const double *)pb || (isnan(*(const double *)pa) && isnan(*(const double *)pb));
            break;
        case CT_STR: case CT_ENUM: same = strcmp(pa, pb) == 0; break;
        case CT_F64_LIST: same = memcmp(pa, pb, sizeof(double) * (size_t)k->n) == 0; break;
        case CT_INT_VLIST: {
            const CfgIntList *x = pa, *y = pb;
            same = x->n == y->n && memcmp(x->v, y->v, sizeof(int) * (size_t)x->n) == 0;
            break;
        }
        case CT_F64_VLIST: {
            const CfgF64List *x = pa, *y = pb;
            same = x->n == y->n && memcmp(x->v, y->v, sizeof(double) * (size_t)x->n) == 0;
            break;
        }
        case CT_STR_LIST:
            same = a->data.n_sources == b->data.n_sources;
            for (int j = 0; same && j < a->data.n_sources; j++) same = strcmp(a->data.sources[j], b->data.sources[j]) == 0;
            break;
        case CT_STUDENTS: {
            const CfgMultiDistillation *x = &a->multidistillation, *y = &b->multidistillation;
            same = x->n_students == y->n_students;
            for (int j = 0; same && j < x->n_students; j++)
                same = strcmp(x->students[j].name, y->students[j].name) == 0 &&
                       strcmp(x->students[j].config_path, y->students[j].config_path) == 0 &&
                       x->students[j].ranks_range[0] == y->students[j].ranks_range[0] &&
                       x->students[j].ranks_range[1] == y->students[j].ranks_range[1];
            break;
        }
        }
        if (!same) {
            if (diff_key) *diff_key = k->key;
            return 0;
        }
    }
    return 1;
}

// The top file is the last one read (its bases come before it); the command line comes after it.
int config_apply_own_keys(Config *dst, const Config *src) {
    int top = -1, cli = -1;
    for (int i = 1; i < src->origin.n_files; i++) {
        if (strcmp(src->origin.files[i], "the command line") == 0) cli = i;
        else top = i;
    }
    int n = 0;
    for (int i = 0; i < N_KEYS; i++) {
        const CfgKey *k = &KEYS[i];
        const int from = src->origin.of_key[i];
        if (from == 0 || (from != top && from != cli)) continue;
        size_t bytes = 0;
        switch (k->type) {
        case CT_BOOL: bytes = sizeof(bool); break;
        case CT_INT: bytes = sizeof(int); break;
        case CT_I64: bytes = sizeof(int64_t); break;
        case CT_F64: bytes = sizeof(double); break;
        case CT_STR: case CT_ENUM: bytes = (size_t)k->n; break;
        case CT_F64_LIST: bytes = sizeof(double) * (size_t)k->n; break;
        case CT_STR_LIST: bytes = sizeof src->data.sources, dst->data.n_sources = src->data.n_sources; break;
        case CT_INT_VLIST: bytes = sizeof(CfgIntList); break;
        case CT_F64_VLIST: bytes = sizeof(CfgF64List); break;
        case CT_STUDENTS: bytes = sizeof src->multidistillation.students;
            dst->multidistillation.n_students = src->multidistillation.n_students;
            break;
        }
        memcpy(field(dst, k), cfield(src, k), bytes);
        set_origin(dst, k, add_origin(dst, src->origin.files[from]));
        n++;
    }
    return n;
}

// ---- derived values ---------------------------------------------------------------------------------

double config_scaled_lr(const Config *c, int world_size) {
    double global = (double)c->train.batch_size_per_gpu * world_size;
    if (strcmp(c->optim.scaling_rule, "sqrt_wrt_1024") == 0) return c->optim.base_lr * sqrt(global / 1024.0);
    if (strcmp(c->optim.scaling_rule, "linear_wrt_256") == 0) return c->optim.base_lr * global / 256.0;
    return c->optim.base_lr;
}

void config_apply_lr_scaling(Config *c, int world_size) { c->optim.lr = config_scaled_lr(c, world_size); }

int64_t config_total_iterations(const Config *c) {
    return (int64_t)c->optim.epochs * c->train.OFFICIAL_EPOCH_LENGTH;
}

int config_n_pairs(const Config *c) { return c->crops.global_crops_size.n; }

static int list_max(const CfgIntList *l) {
    int m = l->v[0];
    for (int i = 1; i < l->n; i++) m = l->v[i] > m ? l->v[i] : m;
    return m;
}
int config_max_global_crop(const Config *c) { return list_max(&c->crops.global_crops_size); }

int config_gram_crop(const Config *c, int pair) {
    const CfgIntList *g = &c->crops.gram_teacher_crops_size;
    const int v = g->n == 1 ? g->v[0] : pair < g->n ? g->v[pair] : -1; // one size: every pair's
    return v > 0 ? v : c->crops.global_crops_size.v[pair];
}
int config_max_local_crop(const Config *c) { return list_max(&c->crops.local_crops_size); }
static int config_min_local_crop(const Config *c) {
    int m = c->crops.local_crops_size.v[0];
    for (int i = 1; i < c->crops.local_crops_size.n; i++) m = c->crops.local_crops_size.v[i] < m ? c->crops.local_crops_size.v[i] : m;
    return m;
}
int config_img_size(const Config *c) { return c->student.img_size > 0 ? c->student.img_size : config_max_global_crop(c); }

void config_arch_dims(const Config *c, int *dim, int *depth, int *heads) {
    static const struct { const char *name; int dim, depth, heads; } archs[] = {
        {"vit_test", 32, 2, 2}, {"vit_tiny", 192, 12, 3}, {"vit_small", 384, 12, 6}, {"vit_base", 768, 12, 12},
        {"vit_large", 1024, 24, 16}, {"vit_giant2", 1536, 40, 24},
    };
    *dim = *depth = *heads = 0;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (strcmp(archs[i].name, c->student.arch) == 0) *dim = archs[i].dim, *depth = archs[i].depth, *heads = archs[i].heads;
    if (c->student.embed_dim > 0) *dim = c->student.embed_dim;
    if (c->student.depth > 0) *depth = c->student.depth;
    if (c->student.num_heads > 0) *heads = c->student.num_heads;
}

int config_to_vit(const Config *c, VitConfig *v, char *err) {
    const CfgStudent *s = &c->student;
    const int registers = s->n_storage_tokens > 0 ? s->n_storage_tokens : s->num_register_tokens;
    if (vit_config_from_arch(v, s->arch, s->patch_size, config_img_size(c), registers, s->ffn_layer, err))
        return -1;
    int dim, depth, heads;
    config_arch_dims(c, &dim, &depth, &heads);
    v->dim = dim; // the FFN width from dim * ffn_ratio as the references derive it
    if (vit_ffn_width(s->ffn_layer, dim, s->ffn_ratio, &v->ffn, &v->ffn_hidden, err)) return -1;
    v->depth = depth;
    v->heads = heads;
    v->layerscale = (float)s->layerscale;
    v->drop_path_rate = s->drop_path_rate; // kept double: it sets the drop-path subset size
    v->interpolate_offset = (float)s->interpolate_offset;
    v->interpolate_antialias = s->interpolate_antialias;
    v->qkv_bias = s->qkv_bias;
    v->proj_bias = s->proj_bias;
    v->ffn_bias = s->ffn_bias;
    v->ln_eps = strcmp(s->norm_layer, "layernormbf16") == 0 ? 1e-5f : 1e-6f;
    v->rope = strcmp(s->pos_embed_type, "learned") != 0;
    if (v->rope) {
        const char *nc = s->pos_embed_rope_normalize_coords;
        v->rope_cfg = (RopeConfig){
            .base = s->pos_embed_rope_base,
            .min_period = s->pos_embed_rope_min_period,
            .max_period = s->pos_embed_rope_max_period,
            .normalize = !strcmp(nc, "min") ? ROPE_NORMALIZE_MIN
                         : !strcmp(nc, "max") ? ROPE_NORMALIZE_MAX : ROPE_NORMALIZE_SEPARATE,
            .shift = s->pos_embed_rope_shift_coords,
            .jitter = s->pos_embed_rope_jitter_coords,
            .rescale = s->pos_embed_rope_rescale_coords,
        };
        v->untie_cls_and_patch_norms = s->untie_cls_and_patch_norms;
        v->untie_global_and_local_cls_norm = s->untie_global_and_local_cls_norm;
        v->mask_k_bias = s->mask_k_bias;
    }
    if (vit_config_check(v, err)) return -1;
    for (int k = 0; k < config_n_pairs(c); k++) {
        if (vit_check_crop(v, c->crops.global_crops_size.v[k], err)) return -1;
        if (c->crops.local_crops_number > 0 && vit_check_crop(v, c->crops.local_crops_size.v[k], err)) return -1;
    }
    return 0;
}

int config_to_ssl(const Config *c, SslConfig *o, char *err) {
    VitConfig v;
    if (config_to_vit(c, &v, err)) return -1;
    ssl_config_default(o, &v);
    const CfgDino *d = &c->dino;
    const CfgIbot *ib = &c->ibot;
    o->dino_head = (HeadConfig){.in_dim = v.dim, .hidden = d->head_hidden_dim, .bottleneck = d->head_bottleneck_dim,
                                .K = d->head_n_prototypes, .nlayers = d->head_nlayers};
    o->ibot_separate_head = ib->separate_head;
    o->ibot_head = ib->separate_head ? (HeadConfig){.in_dim = v.dim, .hidden = ib->head_hidden_dim,
                                                    .bottleneck = ib->head_bottleneck_dim,
                                                    .K = ib->head_n_prototypes, .nlayers = ib->head_nlayers}
                                     : o->dino_head;
    o->batch = c->train.batch_size_per_gpu;
    o->n_local = c->crops.local_crops_number;
    o->global_crop = c->crops.global_crops_size.v[0];
    o->local_crop = c->crops.local_crops_size.v[0];
    o->n_pairs = config_n_pairs(c);
    for (int k = 0; k < o->n_pairs; k++)
        o->pair_global[k] = c->crops.global_crops_size.v[k], o->pair_local[k] = c->crops.local_crops_size.v[k];
    o->centering = strcmp(c->train.centering, "sinkhorn_knopp") == 0 ? CENTERING_SINKHORN : CENTERING_SOFTMAX;
    o->dino_loss_weight = (float)d->loss_weight;
    o->ibot_loss_weight = (float)ib->loss_weight;
    o->use_kde = strcmp(d->regularizer, "kde") == 0;
    o->koleo_loss_weight = o->use_kde ? 0.0f : (float)d->koleo_loss_weight;
    o->kde_loss_weight = (float)d->kde_weight;
    o->kde_kappa = (float)d->kde_concentration;
    o->clip_grad = (float)c->optim.clip_grad;
    o->recompute_activations = c->recompute_activations;
    o->adamw_beta1 = (float)c->optim.adamw_beta1;
    o->adamw_beta2 = (float)c->optim.adamw_beta2;
    o->adamw_eps = (float)c->optim.adamw_eps;
    o->layerwise_decay = (float)c->optim.layerwise_decay;
    o->patch_embed_lr_mult = (float)c->optim.patch_embed_lr_mult;
    const CfgGram *gr = &c->gram;
    o->gram = gr->use_loss;
    o->gram_crop = config_gram_crop(c, 0);
    for (int k = 0; k < o->n_pairs; k++) o->pair_gram[k] = config_gram_crop(c, k);
    o->gram_normalize = gr->normalized;
    o->gram_neg_mode = gr->remove_neg ? 1 : gr->remove_only_teacher_neg ? 2 : 0;
    o->gram_img_level = gr->img_level;
    o->gram_resize_antialias = gr->global_teacher_resize_antialias;
    o->reweight_dino_local = d->reweight_dino_local_loss;
    return ssl_config_check(o, err);
}

ScheduleConfig config_to_schedule(const Config *c, int world_size) {
    const CfgOptim *o = &c->optim;
    const CfgTeacher *t = &c->teacher;
    ScheduleConfig s = {
        .lr = config_scaled_lr(c, world_size),
        .min_lr = o->min_lr,
        .weight_decay = o->weight_decay,
        .weight_decay_end = o->weight_decay_end,
        .momentum_teacher = t->momentum_teacher,
        .final_momentum_teacher = t->final_momentum_teacher,
        .warmup_teacher_temp = t->warmup_teacher_temp,
        .teacher_temp = t->teacher_temp,
        .epochs = o->epochs,
        .warmup_epochs = o->warmup_epochs,
        .warmup_teacher_temp_epochs = t->warmup_teacher_temp_epochs,
        .freeze_last_layer_epochs = o->freeze_last_layer_epochs,
        .epoch_length = c->train.OFFICIAL_EPOCH_LENGTH,
        .trunc_extra = o->schedule_trunc_extra,
    };
    if (c->schedules.enabled) {
        const CfgSchedules *sc = &c->schedules;
        s.v3 = true;
        s.lr3 = sc->lr;
        double scale = dinov3_lr_scale(o->scaling_rule, (long)c->train.batch_size_per_gpu * world_size);
        s.lr3.peak *= scale;
        s.lr3.end *= scale;
        s.wd3 = sc->weight_decay;
        s.momentum3 = sc->momentum;
        s.teacher_temp3 = sc->teacher_temp;
        s.freeze_last_layer_epochs3 = sc->lr_freeze_last_layer_epochs;
    }
    return s;
}

void config_to_loader(const Config *c, int rank, int world_size, LoaderConfig *o) {
    loader_config_default(o);
    o->batch_size = c->train.batch_size_per_gpu;
    o->rank = rank;
    o->world = world_size;
    o->seed = (uint64_t)c->train.seed;
    o->n_threads = c->train.num_workers;
    o->prefetch = c->data.prefetch;
    o->patch_size = c->student.patch_size;
    o->mask_probability = c->ibot.loss_weight > 0 ? c->ibot.mask_sample_probability : 0.0; // no iBOT, no masks
    o->mask_ratio[0] = c->ibot.mask_ratio_min_max[0];
    o->mask_ratio[1] = c->ibot.mask_ratio_min_max[1];
    o->max_corrupt_fraction = c->data.max_corrupt_fraction;
    o->corrupt_min_reads = c->data.corrupt_min_reads;
    AugmentConfig *g = &o->aug;
    const CfgAugment *a = &c->augment;
    const CfgCrops *cr = &c->crops;
    g->global_size = cr->global_crops_size.v[0];
    g->local_size = cr->local_crops_size.v[0];
    o->n_pairs = config_n_pairs(c);
    for (int k = 0; k < o->n_pairs; k++) {
        o->pair_global[k] = cr->global_crops_size.v[k];
        o->pair_local[k] = cr->local_crops_size.v[k];
        o->pair_ratio[k] = cr->global_local_crop_pairs_ratios.n == o->n_pairs ? cr->global_local_crop_pairs_ratios.v[k] : 1.0;
    }
    g->n_local = cr->local_crops_number;
    memcpy(g->global_scale, cr->global_crops_scale, sizeof g->global_scale);
    memcpy(g->local_scale, cr->local_crops_scale, sizeof g->local_scale);
    memcpy(g->ratio, a->ratio, sizeof g->ratio);
    g->hflip_p = a->hflip_p;
    g->jitter_p = a->color_jitter_p;
    g->brightness = a->brightness;
    g->contrast = a->contrast;
    g->saturation = a->saturation;
    g->hue = a->hue;
    g->gray_p = a->grayscale_p;
    g->blur_p[0] = a->blur_p_global1;
    g->blur_p[1] = a->blur_p_global2;
    g->blur_p[2] = a->blur_p_local;
    memcpy(g->blur_sigma, a->blur_sigma, sizeof g->blur_sigma);
    g->blur_kernel = a->blur_kernel;
    g->solarize_p = a->solarize_p;
    g->solarize_threshold = a->solarize_threshold;
    for (int i = 0; i < 3; i++) g->mean[i] = (float)a->mean[i], g->std[i] = (float)a->std[i];
    g->vflip_p = a->vflip_p;
    g->rot90 = a->rot90;
    g->hed_p = a->hed_p;
    g->hed_scale = a->hed_scale;
    g->hed_shift = a->hed_shift;
    g->no_resize = a->crop_without_resize;
    g->ect = cr->extended_context;
    memcpy(g->ect_scale, cr->ect_scale, sizeof g->ect_scale);
    memcpy(g->ect_ratio, cr->ect_ratio, sizeof g->ect_ratio);
    if (c->gram.use_loss) { // the Gram teacher's crops, only when Gram anchoring is on
        g->gram_size = config_gram_crop(c, 0);
        for (int k = 0; k < o->n_pairs; k++) o->pair_gram[k] = config_gram_crop(c, k); // per size pair
        g->gram_no_distortions = cr->gram_teacher_no_distortions;
    }
}

void config_to_hsv_filter(const Config *c, HsvFilter *f) {
    const CfgData *d = &c->data;
    f->min_fraction = d->hsv_min_fraction;
    for (int i = 0; i < 2; i++) {
        f->hue[i] = (int)lround(d->hsv_hue[i]);
        f->saturation[i] = (int)lround(d->hsv_saturation[i]);
        f->value[i] = (int)lround(d->hsv_value[i]);
    }
}

// A DINOv3 weight schedule (start/peak/end null: none) at iteration it; `fallback` without one.
static double weight_schedule_at(const Config *c, const ScheduleSpec *s, double fallback, long it) {
    if (isnan(s->start)) return fallback;
    WarmupCosineSchedule w = schedule_spec_iterations(s, c->optim.epochs, c->train.OFFICIAL_EPOCH_LENGTH);
    return warmup_cosine_at(&w, it);
}

double config_gram_weight_at(const Config *c, long it) {
    if (!c->gram.use_loss) return 0.0;
    return weight_schedule_at(c, &c->gram.loss_weight_schedule, c->gram.loss_weight, it);
}

double config_dino_local_weight_at(const Config *c, long it) {
    if (!c->dino.reweight_dino_local_loss) return 1.0;
    return weight_schedule_at(c, &c->dino.local_loss_weight_schedule, 1.0, it);
}

void config_output_path(const Config *c, const char *rel, char *path, size_t cap) {
    if (rel[0] == '/') snprintf(path, cap, "%s", rel);
    else snprintf(path, cap, "%s/%s", c->train.output_dir, rel);
}

int config_save_resolved(const Config *c, char *err) {
    char e2[DINO_ERRLEN];
    if (dino_mkdir_p(c->train.output_dir, e2)) {
        dino_seterr(err, "train.output_dir: %s", e2);
        return -1;
    }
    char path[PATH_MAX + 16];
    config_output_path(c, "config.yaml", path, sizeof path);
    return config_write(c, path, err);
}

// ---- validation -------------------------------------------------------------------------------------

static const char *origin_of(const Config *c, const char *key) {
    const CfgKey *k = find_key(key);
    DINO_ASSERT(k, "no key %s", key);
    int f = c->origin.of_key[key_index(k)];
    return f < c->origin.n_files ? c->origin.files[f] : "the defaults";
}

static int bad(const Config *c, char *err, const char *key, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int bad(const Config *c, char *err, const char *key, const char *fmt, ...) {
    Text b;
    text_init(&b, 256);
    b.s[0] = 0;
    put_value(&b, c, find_key(key));
    char msg[DINO_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dino_seterr(err, "invalid %s = %s in %s: %s", key, b.s, origin_of(c, key), msg);
    free(b.s);
    return -1;
}

#define NEED(cond, key, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) return bad(c, err, key, __VA_ARGS__);                                         \
    } while (0)

static int prob_ok(double p) { return p >= 0 && p <= 1; }

int config_validate(const Config *c, char *err) {
    const CfgStudent *s = &c->student;
    int dim, depth, heads;
    config_arch_dims(c, &dim, &depth, &heads);
    NEED(s->patch_size >= 1, "student.patch_size", "must be >= 1");
    NEED(s->drop_path_rate >= 0 && s->drop_path_rate < 1, "student.drop_path_rate", "must be in [0, 1)");
    NEED(s->layerscale >= 0, "student.layerscale", "must be >= 0 (0 disables LayerScale)");
    NEED(s->num_register_tokens >= 0, "student.num_register_tokens", "must be >= 0");
    NEED(s->block_chunks >= 0, "student.block_chunks", "must be >= 0");
    NEED(s->embed_dim >= 0, "student.embed_dim", "must be >= 0 (0 = the arch's)");
    NEED(s->depth >= 0, "student.depth", "must be >= 0 (0 = the arch's)");
    NEED(s->num_heads >= 0, "student.num_heads", "must be >= 0 (0 = the arch's)");
    if (dim % heads != 0) {
        const char *key = s->num_heads > 0 ? "student.num_heads" : s->embed_dim > 0 ? "student.embed_dim" : "student.arch";
        return bad(c, err, key, "embedding width %d is not divisible by %d heads", dim, heads);
    }
    NEED(s->drop_path_uniform, "student.drop_path_uniform",
         "only uniform stochastic depth is implemented (as in every reference preset)");
    NEED(s->interpolate_offset >= 0, "student.interpolate_offset", "must be >= 0");
    NEED(s->ffn_ratio > 0 && dim * s->ffn_ratio < 1e8, "student.ffn_ratio", "must be > 0 (and reasonable)");
    NEED(s->n_storage_tokens >= 0, "student.n_storage_tokens", "must be >= 0");
    NEED(s->n_storage_tokens == 0 || s->num_register_tokens == 0 || s->n_storage_tokens == s->num_register_tokens,
         "student.n_storage_tokens", "= %d but student.num_register_tokens = %d (set in %s): they name the same "
         "tokens, set one of them", s->n_storage_tokens, s->num_register_tokens,
         origin_of(c, "student.num_register_tokens"));
    if (strcmp(s->pos_embed_type, "learned") == 0) {
        const char *v3 = s->untie_cls_and_patch_norms ? "student.untie_cls_and_patch_norms"
                         : s->untie_global_and_local_cls_norm ? "student.untie_global_and_local_cls_norm"
                         : s->mask_k_bias ? "student.mask_k_bias" : NULL;
        if (v3)
            return bad(c, err, v3, "belongs to the DINOv3 ViT: set student.pos_embed_type: rope (now 'learned', set in %s)",
                       origin_of(c, "student.pos_embed_type"));
    } else {
        const int both = s->pos_embed_rope_min_period > 0 && s->pos_embed_rope_max_period > 0;
        NEED((s->pos_embed_rope_min_period > 0) == (s->pos_embed_rope_max_period > 0),
             "student.pos_embed_rope_min_period", "and pos_embed_rope_max_period go together: give both or neither");
        NEED((s->pos_embed_rope_base > 0) != both, "student.pos_embed_rope_base",
             "give either pos_embed_rope_base (> 0) or both pos_embed_rope_min_period and pos_embed_rope_max_period "
             "(> 0), the other null");
        NEED(s->pos_embed_rope_min_period >= 0 && s->pos_embed_rope_max_period >= 0 &&
                 (!both || s->pos_embed_rope_min_period <= s->pos_embed_rope_max_period),
             "student.pos_embed_rope_min_period", "periods must be positive with min <= max");
        NEED(s->pos_embed_rope_shift_coords >= 0, "student.pos_embed_rope_shift_coords", "must be >= 0 (or null)");
        NEED(s->pos_embed_rope_jitter_coords == 0 || s->pos_embed_rope_jitter_coords >= 1,
             "student.pos_embed_rope_jitter_coords", "must be >= 1 (or null)");
        NEED(s->pos_embed_rope_rescale_coords == 0 || s->pos_embed_rope_rescale_coords >= 1,
             "student.pos_embed_rope_rescale_coords", "must be >= 1 (or null)");
        if ((dim / heads) % 4) {
            const char *key = s->num_heads > 0 ? "student.num_heads" : s->embed_dim > 0 ? "student.embed_dim" : "student.arch";
            return bad(c, err, key, "RoPE needs a head dim divisible by 4; embed_dim %d / %d heads = %d", dim, heads,
                       dim / heads);
        }
    }

    const CfgCrops *cr = &c->crops;
    const int np = cr->global_crops_size.n;
    NEED(cr->local_crops_size.n == np, "crops.local_crops_size",
         "%d sizes, but crops.global_crops_size (set in %s) has %d: one local size per (global, local) pair",
         cr->local_crops_size.n, origin_of(c, "crops.global_crops_size"), np);
    NEED(cr->global_local_crop_pairs_ratios.n == np || (np == 1 && cr->global_local_crop_pairs_ratios.n == 1),
         "crops.global_local_crop_pairs_ratios", "%d ratios for %d size pairs (crops.global_crops_size, set in %s)",
         cr->global_local_crop_pairs_ratios.n, np, origin_of(c, "crops.global_crops_size"));
    for (int k = 0; k < np; k++) {
        NEED(cr->global_crops_size.v[k] >= 1, "crops.global_crops_size", "every size must be >= 1");
        NEED(cr->local_crops_size.v[k] >= 1, "crops.local_crops_size", "every size must be >= 1");
        NEED(cr->global_crops_size.v[k] % s->patch_size == 0, "crops.global_crops_size",
             "%d is not a multiple of student.patch_size = %d (set in %s)", cr->global_crops_size.v[k], s->patch_size,
             origin_of(c, "student.patch_size"));
        NEED(cr->local_crops_number == 0 || cr->local_crops_size.v[k] % s->patch_size == 0, "crops.local_crops_size",
             "%d is not a multiple of student.patch_size = %d (set in %s)", cr->local_crops_size.v[k], s->patch_size,
             origin_of(c, "student.patch_size"));
        NEED(cr->global_local_crop_pairs_ratios.v[k] > 0, "crops.global_local_crop_pairs_ratios", "every ratio must be > 0");
    }
    NEED(cr->local_crops_number >= 0, "crops.local_crops_number", "must be >= 0");
    NEED(s->img_size >= 0 && s->img_size % s->patch_size == 0, "student.img_size",
         "must be 0 or a multiple of student.patch_size = %d", s->patch_size);
    NEED(cr->global_crops_scale[0] > 0 && cr->global_crops_scale[1] <= 1, "crops.global_crops_scale",
         "area fractions must be in (0, 1]");
    NEED(cr->global_crops_scale[0] <= cr->global_crops_scale[1], "crops.global_crops_scale", "min > max");
    NEED(cr->local_crops_scale[0] > 0 && cr->local_crops_scale[1] <= 1, "crops.local_crops_scale",
         "area fractions must be in (0, 1]");
    NEED(cr->local_crops_scale[0] <= cr->local_crops_scale[1], "crops.local_crops_scale", "min > max");
    NEED(cr->context_factor >= 1 && cr->context_factor <= 8, "crops.context_factor", "must be in [1, 8]");
    NEED(cr->ect_scale[0] > 0 && cr->ect_scale[0] <= cr->ect_scale[1] && cr->ect_scale[1] <= 16, "crops.ect_scale",
         "need 0 < min <= max <= 16 (box area relative to the crop area)");
    NEED(cr->ect_ratio[0] > 0 && cr->ect_ratio[0] <= cr->ect_ratio[1], "crops.ect_ratio", "need 0 < min <= max");
    NEED(!cr->extended_context || !c->augment.crop_without_resize, "crops.extended_context",
         "excludes augment.crop_without_resize (set in %s): ECT already translates crops of about their size",
         origin_of(c, "augment.crop_without_resize"));

    const CfgDino *d = &c->dino;
    const CfgIbot *ib = &c->ibot;
    NEED(d->loss_weight >= 0, "dino.loss_weight", "must be >= 0");
    NEED(ib->loss_weight >= 0, "ibot.loss_weight", "must be >= 0");
    NEED(d->loss_weight > 0 || ib->loss_weight > 0, "dino.loss_weight",
         "DINO and iBOT are both off (ibot.loss_weight = 0): nothing to train");
    NEED(d->head_n_prototypes >= 1, "dino.head_n_prototypes", "must be >= 1");
    NEED(d->head_bottleneck_dim >= 1, "dino.head_bottleneck_dim", "must be >= 1");
    NEED(d->head_nlayers >= 1, "dino.head_nlayers", "must be >= 1");
    NEED(d->head_hidden_dim >= 1, "dino.head_hidden_dim", "must be >= 1");
    NEED(d->koleo_loss_weight >= 0, "dino.koleo_loss_weight", "must be >= 0");
    NEED(d->kde_weight >= 0, "dino.kde_weight", "must be >= 0");
    NEED(d->kde_concentration > 0, "dino.kde_concentration", "must be > 0");
    // KoLeo needs a nearest neighbour among the rank's images: undefined with one image per rank.
    if (strcmp(d->regularizer, "koleo") == 0 && d->koleo_loss_weight > 0 && c->train.batch_size_per_gpu < 2)
        return bad(c, err, "train.batch_size_per_gpu",
                   "KoLeo (dino.koleo_loss_weight = %g, set in %s) needs >= 2 images per rank: its nearest-neighbour "
                   "distance is undefined for one; raise the batch or set dino.koleo_loss_weight=0",
                   d->koleo_loss_weight, origin_of(c, "dino.koleo_loss_weight"));
    NEED(d->global_ignore_diagonal, "dino.global_ignore_diagonal",
         "must be true: the step compares each global crop with the other one only (the DINOv2 pairing)");
    const ScheduleSpec *sch[2] = {&d->local_loss_weight_schedule, &c->gram.loss_weight_schedule};
    const char *sch_key[2] = {"dino.local_loss_weight_schedule.start", "gram.loss_weight_schedule.start"};
    for (int i = 0; i < 2; i++) {
        const int nulls = isnan(sch[i]->start) + isnan(sch[i]->peak) + isnan(sch[i]->end);
        NEED(nulls == 0 || nulls == 3, sch_key[i], "start, peak and end must all be set, or all null (no schedule)");
        NEED(sch[i]->warmup_epochs >= 0 && sch[i]->cosine_epochs >= -1, sch_key[i],
             "warmup_epochs must be >= 0 and cosine_epochs >= 0 (or null)");
    }
    NEED(!d->reweight_dino_local_loss || !isnan(d->local_loss_weight_schedule.start),
         "dino.local_loss_weight_schedule.start", "is null but dino.reweight_dino_local_loss is true");
    const CfgGram *gr = &c->gram;
    const CfgIntList *gsz = &cr->gram_teacher_crops_size;
    const int gram_null = gsz->n == 1 && gsz->v[0] == -1;
    // one entry per size pair, as the official (dinov3/train/train.py zips the three lists); one size
    // (or null) serves every pair
    NEED(gsz->n == 1 || gsz->n == np, "crops.gram_teacher_crops_size",
         "%d sizes, but crops.global_crops_size (set in %s) has %d: one Gram size per (global, local) pair", gsz->n,
         origin_of(c, "crops.global_crops_size"), np);
    for (int k = 0; k < gsz->n && !gram_null; k++)
        NEED(gsz->v[k] >= 1, "crops.gram_teacher_crops_size", "%d: every size must be >= 1 (or the whole key null)",
             gsz->v[k]);
    for (int k = 0; k < np && !gram_null; k++) {
        const int gk = config_gram_crop(c, k), glob = cr->global_crops_size.v[k];
        NEED(gk >= glob, "crops.gram_teacher_crops_size",
             "%d for size pair %d must be null or >= its crops.global_crops_size (%d)", gk, k, glob);
        NEED(gk % s->patch_size == 0, "crops.gram_teacher_crops_size",
             "%d (size pair %d) must be a multiple of student.patch_size (%d)", gk, k, s->patch_size);
    }
    if (gr->use_loss) {
        NEED(!gr->ema_teacher, "gram.ema_teacher", "must be false: only a separate Gram teacher is implemented");
        NEED(!gr->compute_stats, "gram.compute_stats", "must be false: the auxiliary statistics are not implemented");
        NEED(strcmp(gr->tokens_used, "all") == 0, "gram.tokens_used",
             "'%s' is not implemented (only all, the released recipes' choice)", gr->tokens_used);
        NEED(!(gr->remove_neg && gr->remove_only_teacher_neg), "gram.remove_neg",
             "remove_neg and remove_only_teacher_neg exclude each other");
        NEED(gr->ckpt[0] || gr->it_load_ema_teacher >= 0, "gram.it_load_ema_teacher",
             "is %d and gram.ckpt is empty: the Gram teacher would never be set (give gram.ckpt, or an iteration >= 0 "
             "at which the EMA teacher is copied into it)", gr->it_load_ema_teacher);
        NEED(!gr->rep_update || gr->update_frequency >= 1, "gram.update_frequency", "must be >= 1");
        NEED(gr->it_first_update >= 0, "gram.it_first_update", "must be >= 0");
        NEED(gr->max_updates >= -1, "gram.max_updates", "must be >= 0 or null (unlimited)");
        NEED(isfinite(gr->loss_weight), "gram.loss_weight", "must be a number");
    }
    NEED(prob_ok(ib->mask_sample_probability), "ibot.mask_sample_probability", "must be in [0, 1]");
    NEED(ib->mask_ratio_min_max[0] >= 0 && ib->mask_ratio_min_max[1] <= 1, "ibot.mask_ratio_min_max",
         "ratios must be in [0, 1]");
    NEED(ib->mask_ratio_min_max[0] <= ib->mask_ratio_min_max[1], "ibot.mask_ratio_min_max", "min > max");
    NEED(ib->head_n_prototypes >= 1, "ibot.head_n_prototypes", "must be >= 1");
    NEED(ib->head_bottleneck_dim >= 1, "ibot.head_bottleneck_dim", "must be >= 1");
    NEED(ib->head_nlayers >= 1, "ibot.head_nlayers", "must be >= 1");
    NEED(ib->head_hidden_dim >= 1, "ibot.head_hidden_dim", "must be >= 1");

    const CfgOptim *o = &c->optim;
    NEED(o->epochs >= 1, "optim.epochs", "must be >= 1");
    NEED(o->base_lr > 0, "optim.base_lr", "must be > 0");
    NEED(o->lr >= 0, "optim.lr", "must be >= 0 (it is computed from optim.base_lr)");
    NEED(o->warmup_epochs >= 0 && o->warmup_epochs <= o->epochs, "optim.warmup_epochs",
         "must be in [0, optim.epochs = %d]", o->epochs);
    NEED(o->min_lr >= 0, "optim.min_lr", "must be >= 0");
    NEED(o->weight_decay >= 0, "optim.weight_decay", "must be >= 0");
    NEED(o->weight_decay_end >= 0, "optim.weight_decay_end", "must be >= 0");
    NEED(o->layerwise_decay > 0 && o->layerwise_decay <= 1, "optim.layerwise_decay", "must be in (0, 1]");
    NEED(o->patch_embed_lr_mult >= 0, "optim.patch_embed_lr_mult", "must be >= 0");
    NEED(o->clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 = no clipping)");
    NEED(o->freeze_last_layer_epochs >= 0, "optim.freeze_last_layer_epochs", "must be >= 0");
    NEED(o->adamw_beta1 >= 0 && o->adamw_beta1 < 1, "optim.adamw_beta1", "must be in [0, 1)");
    NEED(o->adamw_beta2 >= 0 && o->adamw_beta2 < 1, "optim.adamw_beta2", "must be in [0, 1)");
    NEED(o->adamw_eps > 0, "optim.adamw_eps", "must be > 0");
    NEED(o->schedule_trunc_extra >= 0 && o->schedule_trunc_extra <= 100, "optim.schedule_trunc_extra",
         "must be in [0, 100] (0 = the plain cosine)");
    if (c->schedules.enabled) {
        static const char *names[4] = {"lr", "weight_decay", "momentum", "teacher_temp"};
        const ScheduleSpec *specs[4] = {&c->schedules.lr, &c->schedules.weight_decay, &c->schedules.momentum,
                                        &c->schedules.teacher_temp};
        for (int i = 0; i < 4; i++) {
            char kw[64], kc[64];
            snprintf(kw, sizeof kw, "schedules.%s.warmup_epochs", names[i]);
            snprintf(kc, sizeof kc, "schedules.%s.cosine_epochs", names[i]);
            const ScheduleSpec *sp = specs[i];
            NEED(sp->warmup_epochs >= 0 && sp->warmup_epochs <= o->epochs, kw, "must be in [0, optim.epochs = %d]",
                 o->epochs);
            NEED(sp->cosine_epochs >= -1, kc, "must be >= 0, or -1 for the rest of the run");
            NEED(sp->cosine_epochs < 0 || sp->warmup_epochs + sp->cosine_epochs <= o->epochs, kc,
                 "warm-up + cosine must fit in optim.epochs = %d (set in %s)", o->epochs, origin_of(c, "optim.epochs"));
        }
        NEED(c->schedules.lr.start >= 0 && c->schedules.lr.peak >= 0 && c->schedules.lr.end >= 0, "schedules.lr.peak",
             "learning rates must be >= 0");
        NEED(c->schedules.lr_freeze_last_layer_epochs >= 0, "schedules.lr.freeze_last_layer_epochs", "must be >= 0");
        const ScheduleSpec *w = &c->schedules.weight_decay, *m = &c->schedules.momentum, *t = &c->schedules.teacher_temp;
        NEED(w->start >= 0 && w->peak >= 0 && w->end >= 0, "schedules.weight_decay.peak", "must be >= 0");
        NEED(prob_ok(m->start) && prob_ok(m->peak) && prob_ok(m->end), "schedules.momentum.peak",
             "momenta must be in [0, 1]");
        NEED(t->start > 0 && t->peak > 0 && t->end > 0, "schedules.teacher_temp.peak", "temperatures must be > 0");
    }

    const CfgTeacher *t = &c->teacher;
    NEED(prob_ok(t->momentum_teacher), "teacher.momentum_teacher", "must be in [0, 1]");
    NEED(prob_ok(t->final_momentum_teacher), "teacher.final_momentum_teacher", "must be in [0, 1]");
    NEED(t->warmup_teacher_temp > 0, "teacher.warmup_teacher_temp", "must be > 0");
    NEED(t->teacher_temp > 0, "teacher.teacher_temp", "must be > 0");
    NEED(t->warmup_teacher_temp_epochs >= 0, "teacher.warmup_teacher_temp_epochs", "must be >= 0");

    const CfgTrain *tr = &c->train;
    NEED(tr->batch_size_per_gpu >= 1, "train.batch_size_per_gpu", "must be >= 1");
    NEED(tr->OFFICIAL_EPOCH_LENGTH >= 1, "train.OFFICIAL_EPOCH_LENGTH", "must be >= 1");
    NEED(tr->output_dir[0], "train.output_dir", "must name a directory");
    NEED(tr->seed >= 0, "train.seed", "must be >= 0");
    NEED(tr->num_workers >= 0, "train.num_workers", "must be >= 0");

    if (strcmp(c->backend, "cpu") == 0)
        NEED(strcmp(c->param_dtype, "bf16") != 0, "compute_precision.param_dtype",
             "the cpu backend computes in fp32 (use fp32 or auto)");

    NEED(c->evaluation.eval_period_iterations >= 0, "evaluation.eval_period_iterations", "must be >= 0 (0 = off)");
    NEED(!c->evaluation.knn_test[0] || c->evaluation.knn_train[0], "evaluation.knn_train",
         "evaluation.knn_test is set: k-NN needs a training set too");
    NEED(!c->evaluation.knn_train[0] || c->evaluation.knn_test[0], "evaluation.knn_test",
         "evaluation.knn_train is set: k-NN needs a test set too");
    NEED(prob_ok(c->data.max_corrupt_fraction), "data.max_corrupt_fraction", "must be in [0, 1]");
    NEED(c->data.corrupt_min_reads >= 0, "data.corrupt_min_reads", "must be >= 0");
    NEED(c->data.prefetch >= 1, "data.prefetch", "must be >= 1");
    NEED(c->data.max_image_pixels >= 1 && c->data.max_image_pixels <= ((int64_t)1 << 40), "data.max_image_pixels",
         "must be in [1, 2^40] (pixels, width x height)");
    for (int i = 0; i < c->data.n_sources; i++) { // the options of wsi: sources, before any slide is opened
        char why[DINO_ERRLEN];
        if (source_check_spec(c->data.sources[i], why) != 0) return bad(c, err, "data.sources", "%s", why);
    }
    NEED(c->data.hsv_min_fraction >= 0 && c->data.hsv_min_fraction <= 1, "data.hsv_min_fraction",
         "must be in [0, 1] (0 = off)");
    const struct { const char *key; const double *r; double top; } hsv[3] = {
        {"data.hsv_hue", c->data.hsv_hue, 180}, {"data.hsv_saturation", c->data.hsv_saturation, 255},
        {"data.hsv_value", c->data.hsv_value, 255}};
    for (int i = 0; i < 3; i++)
        NEED(hsv[i].r[0] >= 0 && hsv[i].r[0] <= hsv[i].r[1] && hsv[i].r[1] <= hsv[i].top, hsv[i].key,
             "need 0 <= min <= max <= %g (OpenCV 8-bit HSV units)", hsv[i].top);

    const CfgAugment *a = &c->augment;
    NEED(prob_ok(a->blur_p_global1), "augment.blur_p_global1", "must be in [0, 1]");
    NEED(prob_ok(a->blur_p_global2), "augment.blur_p_global2", "must be in [0, 1]");
    NEED(prob_ok(a->blur_p_local), "augment.blur_p_local", "must be in [0, 1]");
    NEED(a->blur_sigma[0] > 0 && a->blur_sigma[0] <= a->blur_sigma[1], "augment.blur_sigma", "need 0 < min <= max");
    NEED(a->blur_kernel >= 1 && a->blur_kernel % 2 == 1, "augment.blur_kernel", "must be odd and >= 1");
    NEED(a->blur_kernel / 2 < config_min_local_crop(c), "augment.blur_kernel", "must be smaller than the crops");
    NEED(a->solarize_threshold >= 0 && a->solarize_threshold <= 256, "augment.solarize_threshold", "must be in [0, 256]");
    NEED(a->ratio[0] > 0 && a->ratio[0] <= a->ratio[1], "augment.ratio", "need 0 < min <= max");
    NEED(prob_ok(a->solarize_p), "augment.solarize_p", "must be in [0, 1]");
    NEED(prob_ok(a->hflip_p), "augment.hflip_p", "must be in [0, 1]");
    NEED(prob_ok(a->color_jitter_p), "augment.color_jitter_p", "must be in [0, 1]");
    NEED(a->brightness >= 0, "augment.brightness", "must be >= 0");
    NEED(a->contrast >= 0, "augment.contrast", "must be >= 0");
    NEED(a->saturation >= 0, "augment.saturation", "must be >= 0");
    NEED(a->hue >= 0 && a->hue <= 0.5, "augment.hue", "must be in [0, 0.5]");
    NEED(prob_ok(a->grayscale_p), "augment.grayscale_p", "must be in [0, 1]");
    for (int i = 0; i < 3; i++) NEED(a->std[i] > 0, "augment.std", "every std must be > 0");
    NEED(prob_ok(a->vflip_p), "augment.vflip_p", "must be in [0, 1]");
    NEED(prob_ok(a->hed_p), "augment.hed_p", "must be in [0, 1]");
    NEED(a->hed_scale >= 0 && a->hed_scale < 1, "augment.hed_scale", "must be in [0, 1)");
    NEED(a->hed_shift >= 0, "augment.hed_shift", "must be >= 0");

    const CfgDistillation *ds = &c->distillation;
    const CfgMultiDistillation *md = &c->multidistillation;
    if (md->enabled) {
        NEED(ds->enabled, "distillation.enabled", "multidistillation.enabled is true: the students need a teacher");
        NEED(md->n_students >= 1, "multidistillation.students", "name at least one student");
        NEED(md->global_batch_size >= 1, "multidistillation.global_batch_size", "must be >= 1");
        int next = 0; // the ranges tile [0, world) in order
        for (int i = 0; i < md->n_students; i++) {
            const CfgStudentRef *st = &md->students[i];
            NEED(st->name[0] && !strchr(st->name, '/') && strcmp(st->name, ".") && strcmp(st->name, ".."),
                 "multidistillation.students", "student %d: name must be a plain directory name", i);
            for (int j = 0; j < i; j++)
                NEED(strcmp(md->students[j].name, st->name) != 0, "multidistillation.students",
                     "two students are named '%s' (each gets <train.output_dir>/<name>)", st->name);
            NEED(st->config_path[0], "multidistillation.students", "student '%s': config_path is empty", st->name);
            NEED(st->ranks_range[0] == next && st->ranks_range[1] > st->ranks_range[0], "multidistillation.students",
                 "student '%s': ranks_range [%d, %d) must be non-empty and start at %d (the ranges follow each other "
                 "from rank 0)",
                 st->name, st->ranks_range[0], st->ranks_range[1], next);
            next = st->ranks_range[1];
            NEED(md->global_batch_size % (st->ranks_range[1] - st->ranks_range[0]) == 0,
                 "multidistillation.global_batch_size", "not divisible by the %d ranks of student '%s'",
                 st->ranks_range[1] - st->ranks_range[0], st->name);
        }
    }
    if (ds->enabled) {
        NEED(ds->full_cfg_path[0], "distillation.full_cfg_path", "distillation needs the teacher's config file");
        NEED(ds->checkpoint_path[0], "distillation.checkpoint_path", "distillation needs the teacher's weights");
        NEED(md->enabled, "multidistillation.enabled",
             "distillation.enabled runs through multidistillation (one student on ranks [0, world) for a single "
             "distillation); see docs/distillation.md");
    }

    NEED(c->log.every_n_iterations >= 1, "log.every_n_iterations", "must be >= 1");
    NEED(c->log.metrics_file[0], "log.metrics_file", "must name a file");
    NEED(c->grad_bucket_mb > 0, "dist.grad_bucket_mb", "must be > 0");
    NEED(c->collective_timeout_s > 0, "dist.collective_timeout_s", "must be > 0");
    NEED(c->checkpoint.every_n_iterations >= 0, "checkpoint.every_n_iterations", "must be >= 0 (0 = only at the end)");
    NEED(c->checkpoint.keep_last >= 1, "checkpoint.keep_last", "must be >= 1");
    return check_modules(c, err);
}
