// The run configuration: the reference DINOv2 keys (dinov2/configs/ssl_default_config.yaml) with their
// defaults, plus dinotrain's own sections (data, augment, log, checkpoint, backend, dist).
//
// A config is a YAML file read with libyaml. It may name a base config (`base: vitl14.yaml`, relative
// to the file; recursive; cycles refused) whose values it overrides. Command-line overrides
// `section.key=value` (lists as `[a,b]`) come last, as the reference's OmegaConf dotlist. Unknown keys
// (with the nearest valid key suggested), wrong types and impossible values are refused, naming the key
// and the file that set it. Every key is described once, in the table in config.c; docs/configuration.md
// is the user-facing reference of the same table.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data/loader.h"
#include "data/tissue.h"
#include "model/vit.h"
#include "train/schedule.h"
#include "train/ssl_step.h"

#define CFG_STR 1024        // paths and source specs
#define CFG_NAME 32         // enum-like names (arch, ffn_layer, ...)
#define CFG_MAX_SOURCES 16  // data.sources entries
#define CFG_MAX_FILES 16    // config files in one base chain
#define CFG_MAX_KEYS 224
#define CFG_MAX_PAIRS 8     // crop size pairs of a high-resolution phase

// A key that takes one value or a list of them (crops.global_crops_size: 224, or [512, 768, 768]).
typedef struct {
    int n;
    int v[CFG_MAX_PAIRS];
} CfgIntList;
typedef struct {
    int n;
    double v[CFG_MAX_PAIRS];
} CfgF64List;

typedef struct {
    char arch[CFG_NAME];      // vit_test | vit_tiny | vit_small | vit_base | vit_large | vit_giant2
    int patch_size;
    double drop_path_rate;
    bool drop_path_uniform;
    double layerscale;        // LayerScale init; 0 disables
    int num_register_tokens;
    char ffn_layer[CFG_NAME]; // mlp | swiglu | swiglufused
    bool qkv_bias, proj_bias, ffn_bias;
    double interpolate_offset;
    bool interpolate_antialias;
    char pretrained_weights[CFG_STR];
    int block_chunks;         // accepted for reference configs; FSDP-only, no effect here
    int img_size;             // ours: pos-embed grid side in pixels; 0 = the (largest) global crop size
    int embed_dim, depth, num_heads; // ours: 0 = the arch's value (tiny demo/test models set them)
    double ffn_ratio;
    char norm_layer[CFG_NAME];          // layernorm | layernormbf16
    // the DINOv3 ViT (pos_embed_type rope); nullable numbers are 0 when null
    char pos_embed_type[CFG_NAME];      // learned | rope | ropenew
    double pos_embed_rope_base, pos_embed_rope_min_period, pos_embed_rope_max_period;
    char pos_embed_rope_normalize_coords[CFG_NAME]; // separate | min | max
    double pos_embed_rope_shift_coords, pos_embed_rope_jitter_coords, pos_embed_rope_rescale_coords;
    char pos_embed_rope_dtype[CFG_NAME];
    int n_storage_tokens;
    bool untie_cls_and_patch_norms, untie_global_and_local_cls_norm, mask_k_bias;
} CfgStudent;

typedef struct {
    double loss_weight;
    int head_n_prototypes, head_bottleneck_dim, head_nlayers, head_hidden_dim;
    double koleo_loss_weight;
    char regularizer[CFG_NAME]; // koleo | kde (Virchow2/Midnight)
    double kde_weight, kde_concentration;
    bool global_ignore_diagonal;        // DINOv3 key; must be true (the step compares crop 1 with crop 2 only)
    bool reweight_dino_local_loss;      // DINOv3: the local-crop DINO loss weighted by local_loss_weight_schedule
    ScheduleSpec local_loss_weight_schedule; // start/peak/end NaN (null): no schedule
} CfgDino;

typedef struct {
    double loss_weight;
    double mask_sample_probability;
    double mask_ratio_min_max[2];
    bool separate_head;
    int head_n_prototypes, head_bottleneck_dim, head_nlayers, head_hidden_dim;
} CfgIbot;

typedef struct {
    int epochs;
    double base_lr;
    double lr; // computed by config_apply_lr_scaling (the reference overwrites it the same way)
    int warmup_epochs;
    double min_lr, weight_decay, weight_decay_end, layerwise_decay, patch_embed_lr_mult, clip_grad;
    int freeze_last_layer_epochs;
    char scaling_rule[CFG_NAME]; // sqrt_wrt_1024 | linear_wrt_256 | none
    double adamw_beta1, adamw_beta2, adamw_eps;
    double schedule_trunc_extra; // DINOv3: the cosine of lr/wd/momentum computed (1 + x) times longer, cut
} CfgOptim;

// DINOv3's `schedules:` section (build_schedulers_v2): when enabled it replaces the DINOv2 cosine schedules
// of lr, weight decay, teacher momentum and teacher temperature. Setting any of its keys enables it,
// unless the same file (or the command line) sets schedules.enabled itself.
typedef struct {
    bool enabled;
    ScheduleSpec lr, weight_decay, momentum, teacher_temp;
    int lr_freeze_last_layer_epochs;
} CfgSchedules;

typedef struct {
    double momentum_teacher, final_momentum_teacher;
    double warmup_teacher_temp, teacher_temp;
    int warmup_teacher_temp_epochs;
} CfgTeacher;

typedef struct {
    double global_crops_scale[2];
    int local_crops_number;
    double local_crops_scale[2];
    // One (global, local) size pair, or several (the high-resolution phase, docs/high-resolution.md): pair k
    // is (global_crops_size.v[k], local_crops_size.v[k]), drawn for each iteration with weight
    // global_local_crop_pairs_ratios.v[k].
    CfgIntList global_crops_size, local_crops_size;
    CfgF64List global_local_crop_pairs_ratios;
    bool extended_context;  // Virchow2 ECT: crops translated inside a larger region (data/augment.h)
    double context_factor;  // region side / tile size read by online slide sources (392/224 = 1.75)
    double ect_scale[2];    // ECT box area / crop area
    double ect_ratio[2];    // ECT box aspect range
    int gram_teacher_crops_size;      // DINOv3 Gram anchoring: -1 (null) = the global crop size
    bool gram_teacher_no_distortions; // the Gram teacher's crops without colour distortion
} CfgCrops;

// DINOv3's high-resolution adaptation: start from the weights of an earlier run.
typedef struct {
    char checkpoint_path[CFG_STR]; // a checkpoint directory, or an earlier run's output_dir (its newest)
} CfgHrft;

// DINOv3 Gram anchoring (dinov3/configs/ssl_default_config.yaml `gram:`), docs/gram-anchoring.md.
typedef struct {
    bool use_loss, compute_stats;
    double loss_weight;               // used when loss_weight_schedule is null
    bool ema_teacher;                 // must be false (a separate Gram teacher)
    char ckpt[CFG_STR];               // checkpoint dir / safetensors to start the Gram teacher from; '' = none
    int it_load_ema_teacher;          // the EMA teacher is copied into the Gram teacher before this iteration; -1 = never
    bool rep_update;                  // refresh from the EMA teacher every update_frequency iterations ...
    int update_frequency, it_first_update;
    int max_updates;                  // ... at most this many times (-1, null: unlimited)
    bool normalized, img_level, remove_neg, remove_only_teacher_neg;
    char tokens_used[CFG_NAME];       // all (masked / unmasked: not implemented)
    char global_teacher_resize_method[CFG_NAME]; // bicubic
    bool global_teacher_resize_antialias;
    ScheduleSpec loss_weight_schedule; // start/peak/end NaN (null): no schedule, loss_weight
} CfgGram;

typedef struct {
    int batch_size_per_gpu;
    int OFFICIAL_EPOCH_LENGTH;
    char output_dir[CFG_STR];
    int64_t seed;
    char centering[CFG_NAME]; // centering | sinkhorn_knopp
    int num_workers;
    bool stop_on_collapse;    // stop when the collapse diagnostics confirm a collapse (train/collapse.h)
} CfgTrain;

typedef struct {
    char sources[CFG_MAX_SOURCES][CFG_STR]; // specs for data/source.h source_open
    int n_sources;
    double max_corrupt_fraction;
    int64_t corrupt_min_reads; // the fraction is enforced once this many tiles were read
    int prefetch;              // batches built ahead of the step
    int64_t max_image_pixels;  // decode budget: a tile whose header declares more pixels is corrupt
    double hsv_min_fraction;   // Midnight's per-tile HSV filter on online slide tiles; 0 = off
    double hsv_hue[2], hsv_saturation[2], hsv_value[2]; // OpenCV 8-bit HSV ranges (data/tissue.h)
} CfgData;

typedef struct {
    double blur_p_global1, blur_p_global2, blur_p_local; // apply probabilities
    double blur_sigma[2];
    int blur_kernel;
    double solarize_p; // global crop 2 only
    int solarize_threshold;
    double hflip_p;
    double ratio[2];   // RandomResizedCrop aspect range
    double color_jitter_p, brightness, contrast, saturation, hue, grayscale_p;
    double mean[3], std[3];
    double vflip_p;             // pathology: flips/rotations are label-free for tissue
    bool rot90;
    double hed_p, hed_scale, hed_shift; // HED stain jitter: probability, factor U[1-s,1+s], offset U[-s,s]
    bool crop_without_resize;   // ECT-like: crop at the target size instead of RandomResizedCrop
} CfgAugment;

typedef struct {
    int every_n_iterations;
    char metrics_file[CFG_STR]; // relative paths are inside train.output_dir
} CfgLog;

typedef struct {
    int every_n_iterations;
    int keep_last;
} CfgCheckpoint;

typedef struct {
    int eval_period_iterations;
    char knn_train[CFG_STR], knn_test[CFG_STR]; // labeled tile sets for periodic k-NN; '' = off
} CfgEvaluation;

// Distillation from a frozen teacher (dinov3's `distillation` section): the teacher's config and weights.
typedef struct {
    bool enabled;
    char full_cfg_path[CFG_STR];   // the teacher's config (architecture, heads), a normal config file
    char checkpoint_path[CFG_STR]; // its weights: a training output dir / checkpoint dir, or a weights file
} CfgDistillation;

// Several students trained at once from one teacher (dinov3's `multidistillation` section), each on its
// own ranks [ranks_range[0], ranks_range[1]).
#define CFG_MAX_STUDENTS 8
typedef struct {
    char name[CFG_NAME];       // its output goes to <train.output_dir>/<name>
    char config_path[CFG_STR]; // a normal config file (base: inheritance works)
    int ranks_range[2];
} CfgStudentRef;
typedef struct {
    bool enabled;
    int global_batch_size;     // images per iteration; every student sees all of them
    CfgStudentRef students[CFG_MAX_STUDENTS];
    int n_students;
} CfgMultiDistillation;

// Where each value came from, for error messages: files[0] is "defaults", then each config file in
// the order read, then "the command line".
typedef struct {
    char files[CFG_MAX_FILES + 2][CFG_STR];
    int n_files;
    unsigned char of_key[CFG_MAX_KEYS]; // index into files
} CfgOrigins;

typedef struct {
    CfgStudent student;
    CfgDino dino;
    CfgIbot ibot;
    CfgOptim optim;
    CfgTeacher teacher;
    CfgCrops crops;
    CfgTrain train;
    CfgSchedules schedules;
    CfgHrft hrft;
    CfgGram gram;
    char param_dtype[CFG_NAME]; // compute_precision.param_dtype: auto | fp32 | bf16 (auto resolved at load)
    bool recompute_activations; // compute_precision.recompute_activations: student blocks recomputed in backward
    bool cuda_graphs;           // compute_precision.cuda_graphs: backend cuda launches its work as CUDA graphs
    CfgEvaluation evaluation;
    CfgDistillation distillation;
    CfgMultiDistillation multidistillation;
    CfgData data;
    CfgAugment augment;
    CfgLog log;
    CfgCheckpoint checkpoint;
    char backend[CFG_NAME]; // cpu | cuda
    bool zero1;             // dist.zero1: shard AdamW moments over ranks
    double grad_bucket_mb;  // dist.grad_bucket_mb: gradient bucket size
    double collective_timeout_s; // dist.collective_timeout_s: a collective hung longer ends the job
    CfgOrigins origin;      // not a setting: bookkeeping for messages (ignored by config_equal)
} Config;

// The reference defaults (and ours for our sections).
void config_defaults(Config *cfg);
// Reads path (following `base:`), applies the overrides ("a.b=value"), resolves param_dtype=auto,
// then validates. Returns 0, or -1 with err naming the key, the file and the problem.
int config_load(Config *cfg, const char *path, int n_overrides, char *const *overrides, char *err);
// The same from YAML text (e.g. the resolved config a checkpoint keeps); `name` stands for the text in
// messages; a `base:` in it is a path relative to the current directory.
int config_load_string(Config *cfg, const char *yaml, const char *name, int n_overrides, char *const *overrides,
                       char *err);
// Applies one "key=value" override to a loaded config (does not validate).
int config_override(Config *cfg, const char *kv, char *err);
// Checks values and their combinations. data.sources may be empty here (recipes leave the data to the
// site); the trainer refuses to start without a source. Returns 0, or -1 with err set.
int config_validate(const Config *cfg, char *err);

// dinov3's multidistillation merge (default <- student file <- main file <- command line): copies into dst
// every key that src's own top file (not its bases) or src's command line set. Returns the number of keys.
int config_apply_own_keys(Config *dst, const Config *src);

// The resolved config as YAML (malloc'd, caller frees); reading it back gives an equal Config.
char *config_to_yaml(const Config *cfg);
// Writes config_to_yaml atomically (tmp + fsync + rename). Returns 0, or -1 with err set.
int config_write(const Config *cfg, const char *path, char *err);
// 1 when every key holds the same value; else 0 and, if diff_key is given, the first differing key.
int config_equal(const Config *a, const Config *b, const char **diff_key);

// lr for a world size under optim.scaling_rule: sqrt_wrt_1024: base_lr*sqrt(batch*world/1024);
// linear_wrt_256: base_lr*batch*world/256; none: base_lr.
double config_scaled_lr(const Config *cfg, int world_size);
void config_apply_lr_scaling(Config *cfg, int world_size); // sets optim.lr
int64_t config_total_iterations(const Config *cfg);         // optim.epochs * OFFICIAL_EPOCH_LENGTH
// The crop size pairs: their number, and the largest global / local side over them.
int config_n_pairs(const Config *cfg);
int config_max_global_crop(const Config *cfg);
int config_max_local_crop(const Config *cfg);
// The model's img_size (pos-embed grid): student.img_size, else the largest global crop (as the official).
int config_img_size(const Config *cfg);
// The backbone's width/depth/heads: the arch's, with student.embed_dim/depth/num_heads when set.
void config_arch_dims(const Config *cfg, int *dim, int *depth, int *heads);

// The student/teacher backbone described by the config (arch with the student.embed_dim/depth/num_heads
// overrides, patch, global crop size as img_size, registers, ffn, LayerScale, drop path, biases,
// pos-embed interpolation). Returns 0, or -1 with err set.
int config_to_vit(const Config *cfg, VitConfig *out, char *err);
// The other modules' settings, from the config (one place maps keys to fields):
// the model/loss/optimizer step (ends with ssl_config_check; 0 or -1 with err set) ...
int config_to_ssl(const Config *cfg, SslConfig *out, char *err);
// ... the schedules, with optim.lr scaled for world_size ranks by optim.scaling_rule ...
ScheduleConfig config_to_schedule(const Config *cfg, int world_size);
// ... and the data loader with its augmentation and iBOT masking, for one rank.
void config_to_loader(const Config *cfg, int rank, int world_size, LoaderConfig *out);
// data.hsv_* as the tile filter of data/tissue.h (min_fraction 0: off).
void config_to_hsv_filter(const Config *cfg, HsvFilter *out);
// DINOv3 per-iteration loss weights: the Gram loss weight (0 when gram.use_loss is false; the schedule, or
// gram.loss_weight without one) and the local-crop DINO loss weight (1 unless dino.reweight_dino_local_loss).
double config_gram_weight_at(const Config *cfg, long it);
double config_dino_local_weight_at(const Config *cfg, long it);
// path = train.output_dir/rel, or rel itself when it is absolute (e.g. log.metrics_file).
void config_output_path(const Config *cfg, const char *rel, char *path, size_t cap);
// Creates train.output_dir if needed and writes the resolved config to <output_dir>/config.yaml.
int config_save_resolved(const Config *cfg, char *err);

// Key table access (for docs, help and tools).
int config_n_keys(void);
const char *config_key_name(int i);
const char *config_key_doc(int i);
const char *config_key_default(int i);
const char *config_key_choices(int i); // "a|b|c" for names with fixed choices, else NULL
// Levenshtein distance between two strings (used for "did you mean").
int config_edit_distance(const char *a, const char *b);
