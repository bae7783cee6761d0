// DINOv2's losses (dinov2/loss/*.py and SSLMetaArch.forward_backward), on head logits and backbone
// CLS tokens, each with its backward. Batch layouts are crop-major ([crop][image]) as the reference.
//
//   DINO:  n_terms = 2 + 2 n_local. Teacher targets P[2B,K] in the swapped order [g2; g1].
//          local  = sum_{l,g} mean_b CE(P_g[b], s_l[b]) / n_terms
//          global = 2 mean_{2B rows} CE(P_swapped[r], s_glob[r]) / n_terms
//   iBOT:  sum_j w_j CE(P_j, s_j) / n_images,  w_j = 1 / (masked tokens of j's image), n_images = 2B
//          (the reference's forward_masked * 2 * 1/2)
//   KoLeo: weight * sum over the 2 global crops of KoLeo(CLS of that crop) (per rank, B >= 2)
//   KDE:   weight * sum over the 2 global crops of the vMF kernel-density regularizer (in KoLeo's place)
// CE(t, s) = -sum_k t_k log softmax(s / student_temp)_k. Each function returns the loss value; when its
// gradient pointer is not NULL it also writes d(loss)/d(input) (overwritten, or accumulated for *_acc).
#pragma once
#include "model/backend.h"
#include "model/collective.h"

typedef enum { CENTERING_SOFTMAX = 0, CENTERING_SINKHORN = 1 } Centering;

#define SINKHORN_ITERATIONS 3

// The running centre of softmax centering (the reference's dino_loss.center / ibot_patch_loss.center).
typedef struct {
    int K;
    float momentum; // 0.9
    float *center;  // [K] backend memory, 0 at start; part of the training state (checkpoint it)
    float *sum;     // [K] scratch
    // The step's scalar block (model/step_scalars.h) or NULL: with it, softmax centering takes the
    // teacher temperature from ss->in.teacher_temp (softmax_center_ss) and ignores the `temp` argument.
    const DinoStepScalars *ss;
} TeacherCenter;

void teacher_center_init(Backend *be, TeacherCenter *c, int K, float momentum);
void teacher_center_free(Backend *be, TeacherCenter *c);

// DINO teacher targets P[rows,K] from teacher head logits z[rows,K] (rows = 2B on this rank).
// Softmax centering: P = softmax((z - c) / temp), then c <- m c + (1 - m) mean of z over all rows of all
// ranks: the centre used at step t is the one updated after step t-1 (the reference's delayed update;
// the first step uses c = 0). Sinkhorn-Knopp: 3 iterations over rows * world samples; no centre.
void dino_teacher_targets(Backend *be, Collective *coll, Centering centering, TeacherCenter *c, float *P,
                          const float *z, int rows, float temp);
// iBOT teacher targets P[n_masked,K] for this rank's masked tokens. Softmax centering: the centre moves
// towards the mean over this rank's masked tokens, averaged over ranks (a rank without masked tokens
// contributes 0, where the reference would produce NaN). Sinkhorn-Knopp: n_global = total masked tokens
// over ranks (summed through the collective).
void ibot_teacher_targets(Backend *be, Collective *coll, Centering centering, TeacherCenter *c, float *P,
                          const float *z, int n_masked, float temp);

// DINO loss of the local crops: s_local[n_local*B,K]; P[2B,K]; tsum[B,K] and row_loss[n_local*B] scratch
// (backend memory); ds_local = weight * d(local)/d(s_local) when not NULL.
double dino_loss_local(Backend *be, const float *s_local, int n_local, int B, const float *P, int K,
                       float student_temp, float *tsum, float *row_loss, float *ds_local, float weight);
// DINO loss of the global crops: s_global[2B,K] (crop-major [g1; g2]) against P[2B,K] ([g2; g1]).
double dino_loss_global(Backend *be, const float *s_global, int n_local, int B, const float *P, int K,
                        float student_temp, float *row_loss, float *ds_global, float weight);
// iBOT loss: s[n_masked,K] student logits of the masked tokens, P[n_masked,K], w[n_masked] = 1/n_i.
double ibot_loss(Backend *be, const float *s, const float *P, const float *w, int n_masked, int n_images, int K,
                 float student_temp, float *row_loss, float *ds, float weight);
// The three losses above without their read-back: the same ops, the per-row losses left in row_loss
// (rows: n_local*B, 2B, n_masked); each returns the divisor: loss = loss_rows_sum(rows, w) / divisor,
// with rows (and the iBOT weights w) copied to the host by the caller (a step downloads them
// asynchronously). dino_loss_local_rows returns 0 (and enqueues nothing) without local crops.
double dino_loss_local_rows(Backend *be, const float *s_local, int n_local, int B, const float *P, int K,
                            float student_temp, float *tsum, float *row_loss, float *ds_local, float weight);
double dino_loss_global_rows(Backend *be, const float *s_global, int n_local, int B, const float *P, int K,
                             float student_temp, float *row_loss, float *ds_global, float weight);
// dino_loss_local_rows with the weight (float)(weight * ss->in.dino_local_weight) read from the step's
// scalar block (softmax_ce_ss; ss NULL: weight as given): the same bits as the by-value weight.
double dino_loss_local_rows_ss(Backend *be, const float *s_local, int n_local, int B, const float *P, int K,
                               float student_temp, float *tsum, float *row_loss, float *ds_local, float weight,
                               const DinoStepScalars *ss);
double ibot_loss_rows(Backend *be, const float *s, const float *P, const float *w, int n_masked, int n_images, int K,
                      float student_temp, float *row_loss, float *ds, float weight);
// Sum over the n host rows h (times w[i] when w is not NULL), in double, in order.
double loss_rows_sum(const float *h, const float *w, int n);
// KoLeo on cls[n_crops*B, D] (crop-major), per crop; dcls_acc += d(loss)/d(cls) when not NULL.
// scratch: 1 float of backend memory. Returns weight * sum over crops.
double koleo_loss(Backend *be, const float *cls, int n_crops, int B, int D, float weight, float *dcls_acc,
                  float *scratch);
// KDE regularizer (von Mises-Fisher kernel, concentration kappa), same layout and conventions.
double kde_loss(Backend *be, const float *cls, int n_crops, int B, int D, float kappa, float weight,
                float *dcls_acc, float *scratch);
