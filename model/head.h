// DINOv2's projection head (dinov2/layers/dino_head.py), for the DINO loss on CLS tokens and the iBOT
// loss on masked patch tokens:
//   Linear(in, hidden) GELU [Linear(hidden, hidden) GELU]* Linear(hidden, bottleneck)   (nlayers linears)
//   -> L2 normalize (eps 1e-12) -> weight-normed Linear(bottleneck, K, no bias), W = g v / ||v|| per row.
// Parameters are registered as the reference names them under a prefix ("dino_head." / "ibot_head."):
// mlp.0.weight, mlp.0.bias, mlp.2.*, mlp.4.* (mlp.weight/bias when nlayers == 1), last_layer.weight_g
// [K,1] and last_layer.weight_v [K,bottleneck] (is_last_layer set).
#pragma once
#include <stdint.h>

#include "model/backend.h"
#include "model/params.h"

#define HEAD_MAX_LAYERS 8
#define HEAD_L2_EPS 1e-12f // the reference's fp32 eps

typedef struct {
    int in_dim, hidden, bottleneck, K, nlayers; // reference defaults: hidden 2048, bottleneck 256, 3 layers
} HeadConfig;

typedef struct {
    HeadConfig cfg;
    int n_lin;                                     // = nlayers
    int lin_in[HEAD_MAX_LAYERS], lin_out[HEAD_MAX_LAYERS];
    size_t w[HEAD_MAX_LAYERS], b[HEAD_MAX_LAYERS]; // offsets of the MLP linears
    size_t g, v;                                   // last_layer.weight_g, last_layer.weight_v
} Head;

// Checks a configuration; returns 0 or -1 with err naming the problem (`what` names the head).
int head_config_check(const HeadConfig *cfg, const char *what, char *err);
// Registers the head's tensors under prefix (e.g. "dino_head.") in group (PARAM_DINO_HEAD/PARAM_IBOT_HEAD).
void head_build(Head *h, const HeadConfig *cfg, ParamTable *tab, const char *prefix, ParamGroup group);
// The reference's init: MLP weights N(0, 0.02) (trunc_normal +-2 absolute), biases 0; weight_v as torch's
// default Linear init (kaiming_uniform a=sqrt(5): U(+-1/sqrt(bottleneck))); weight_g = 1.
void head_init_weights(const Head *h, float *params_host, uint64_t seed);

// Activations for up to max_rows input rows. with_grad = 0 for a teacher (forward only).
typedef struct HeadActs HeadActs;
HeadActs *head_acts_new(Backend *be, const Head *h, int max_rows, int with_grad);
void head_acts_free(Backend *be, HeadActs *a);

// logits[rows,K] (backend memory owned by acts) of x[rows,in_dim].
const float *head_forward(Backend *be, const Head *h, const float *params, HeadActs *a, const float *x, int rows);
// head_forward in two halves, forward only (dinov3's no_last_layer / only_last_layer: distillation ships
// the teacher's normalised bottleneck between ranks, not K-wide logits):
//   the MLP and the L2 normalisation -> [rows, bottleneck] (backend memory owned by acts) ...
const float *head_forward_bottleneck(Backend *be, const Head *h, const float *params, HeadActs *a, const float *x,
                                     int rows);
//   ... and the weight-normed last layer on normalised rows znorm[rows, bottleneck] -> logits [rows, K] (acts').
// head_forward_last_layer(head_forward_bottleneck(x)) computes what head_forward(x) does, op for op.
const float *head_forward_last_layer(Backend *be, const Head *h, const float *params, HeadActs *a, const float *znorm,
                                     int rows);
// The logits buffer [max_rows, K] itself: a caller whose loss turns the logits into their gradient in
// place (softmax_ce with ds == s) passes it back to head_backward, which never reads the logits.
float *head_acts_logits(HeadActs *a);
// Backward of the last forward: grads (same layout as params) accumulate; dx[rows,in_dim] overwritten
// (skipped when NULL).
void head_backward(Backend *be, const Head *h, const float *params, float *grads, HeadActs *a, const float *dlogits,
                   float *dx);
