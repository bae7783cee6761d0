// DINOv2's losses on the backend interface.
#include "model/loss.h"

#include <stdlib.h>

#include "common/check.h"

void teacher_center_init(Backend *be, TeacherCenter *c, int K, float momentum) {
    c->K = K;
    c->momentum = momentum;
    c->ss = NULL;
    c->center = be->alloc(be, sizeof(float) * (size_t)K);
    c->sum = be->alloc(be, sizeof(float) * (size_t)K);
}

void teacher_center_free(Backend *be, TeacherCenter *c) {
    if (c->center) be->release(be, c->center);
    if (c->sum) be->release(be, c->sum);
    c->center = c->sum = NULL;
}

void dino_teacher_targets(Backend *be, Collective *coll, Centering centering, TeacherCenter *c, float *P,
                          const float *z, int rows, float temp) {
    const int K = c->K, world = collective_world(coll);
    if (centering == CENTERING_SINKHORN) {
        be->sinkhorn(be, coll, P, z, rows, K, temp, SINKHORN_ITERATIONS, (float)rows * (float)world);
        return;
    }
    // softmax with the centre of the previous steps, then this step's update (applied from the next step)
    if (c->ss)
        be->softmax_center_ss(be, P, z, c->center, rows, K, c->ss);
    else
        be->softmax_center(be, P, z, c->center, rows, K, temp);
    be->col_sum(be, c->sum, z, rows, K);
    collective_sum_f32(coll, c->sum, (size_t)K);
    be->center_update(be, c->center, c->sum, K, 1.0f / ((float)rows * (float)world), c->momentum);
}

void ibot_teacher_targets(Backend *be, Collective *coll, Centering centering, TeacherCenter *c, float *P,
                          const float *z, int n_masked, float temp) {
    const int K = c->K, world = collective_world(coll);
    if (centering == CENTERING_SINKHORN) {
        // the count goes through backend memory like every other collective buffer (c->sum is free here)
        float n_global = (float)n_masked;
        be->to_device(be, c->sum, &n_global, sizeof(float));
        collective_sum_f32(coll, c->sum, 1);
        be->to_host(be, &n_global, c->sum, sizeof(float));
        // called even without masked tokens here: every rank joins the collectives
        be->sinkhorn(be, coll, P, z, n_masked, K, temp, SINKHORN_ITERATIONS, n_global);
        return;
    }
    if (n_masked > 0 && c->ss) be->softmax_center_ss(be, P, z, c->center, n_masked, K, c->ss);
    if (n_masked > 0 && !c->ss) be->softmax_center(be, P, z, c->center, n_masked, K, temp);
    // this rank's mean over its masked tokens, averaged over ranks
    be->col_sum(be, c->sum, z, n_masked, K);
    if (n_masked > 0) be->scale(be, c->sum, 1.0f / (float)n_masked, (size_t)K);
    collective_sum_f32(coll, c->sum, (size_t)K);
    be->center_update(be, c->center, c->sum, K, 1.0f / (float)world, c->momentum);
}

double loss_rows_sum(const float *h, const float *w, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)h[i] * (w ? w[i] : 1.0f);
    return s;
}

// Sum of n floats of backend memory, on the host in double.
static double sum_rows(Backend *be, const float *row_loss, int n, const float *w) {
    if (n <= 0) return 0;
    float *h = dino_malloc(sizeof(float) * (size_t)n);
    be->to_host(be, h, row_loss, sizeof(float) * (size_t)n);
    float *hw = NULL;
    if (w) {
        hw = dino_malloc(sizeof(float) * (size_t)n);
        be->to_host(be, hw, w, sizeof(float) * (size_t)n);
    }
    const double s = loss_rows_sum(h, hw, n);
    free(h);
    free(hw);
    return s;
}

double dino_loss_local_rows_ss(Backend *be, const float *s_local, int n_local, int B, const float *P, int K,
                               float student_temp, float *tsum, float *row_loss, float *ds_local, float weight,
                               const DinoStepScalars *ss) {
    if (n_local <= 0) return 0;
    const float n_terms = (float)(2 + 2 * n_local);
    // CE is linear in the target: both global-crop targets of an image at once
    be->copy(be, tsum, P, sizeof(float) * (size_t)B * K);
    be->axpy(be, tsum, 1.0f, P + (size_t)B * K, (size_t)B * K);
    const int rows = n_local * B;
    if (ss)
        be->softmax_ce_ss(be, row_loss, ds_local, s_local, tsum, NULL, rows, B, K, student_temp, weight,
                          (float)B * n_terms, ss);
    else
        be->softmax_ce(be, row_loss, ds_local, s_local, tsum, NULL, rows, B, K, student_temp,
                       weight / ((float)B * n_terms));
    return (double)B * n_terms;
}

double dino_loss_local_rows(Backend *be, const float *s_local, int n_local, int B, const float *P, int K,
                            float student_temp, float *tsum, float *row_loss, float *ds_local, float weight) {
    return dino_loss_local_rows_ss(be, s_local, n_local, B, P, K, student_temp, tsum, row_loss, ds_local, weight, NULL);
}

double dino_loss_local(Backend *be, const float *s_local, int n_local, int B, const float *P, int K,
                       float student_temp, float *tsum, float *row_loss, float *ds_local, float weight) {
    if (n_local <= 0) return 0;
    const double div = dino_loss_local_rows(be, s_local, n_local, B, P, K, student_temp, tsum, row_loss, ds_local, weight);
    return sum_rows(be, row_loss, n_local * B, NULL) / div;
}

double dino_loss_global_rows(Backend *be, const float *s_global, int n_local, int B, const float *P, int K,
                             float student_temp, float *row_loss, float *ds_global, float weight) {
    const float n_terms = (float)(2 + 2 * n_local);
    // 2 (loss_scales) * mean over 2B rows / n_terms = sum / (B n_terms)
    be->softmax_ce(be, row_loss, ds_global, s_global, P, NULL, 2 * B, 2 * B, K, student_temp,
                   weight / ((float)B * n_terms));
    return (double)B * n_terms;
}

double dino_loss_global(Backend *be, const float *s_global, int n_local, int B, const float *P, int K,
                        float student_temp, float *row_loss, float *ds_global, float weight) {
    const double div = dino_loss_global_rows(be, s_global, n_local, B, P, K, student_temp, row_loss, ds_global, weight);
    return sum_rows(be, row_loss, 2 * B, NULL) / div;
}

double ibot_loss_rows(Backend *be, const float *s, const float *P, const float *w, int n_masked, int n_images, int K,
                      float student_temp, float *row_loss, float *ds, float weight) {
    if (n_masked <= 0) return n_images;
    be->softmax_ce(be, row_loss, ds, s, P, w, n_masked, n_masked, K, student_temp, weight / (float)n_images);
    return n_images;
}

double ibot_loss(Backend *be, const float *s, const float *P, const float *w, int n_masked, int n_images, int K,
                 float student_temp, float *row_loss, float *ds, float weight) {
    if (n_masked <= 0) return 0;
    const double div = ibot_loss_rows(be, s, P, w, n_masked, n_images, K, student_temp, row_loss, ds, weight);
    return sum_rows(be, row_loss, n_masked, w) / div;
}

double koleo_loss(Backend *be, const float *cls, int n_crops, int B, int D, float weight, float *dcls_acc,
                  float *scratch) {
    double total = 0;
    for (int c = 0; c < n_crops; c++) {
        size_t off = (size_t)c * B * D;
        be->koleo(be, scratch, dcls_acc ? dcls_acc + off : NULL, cls + off, B, D, weight);
        float v;
        be->to_host(be, &v, scratch, sizeof v);
        total += v;
    }
    return weight * total;
}

double kde_loss(Backend *be, const float *cls, int n_crops, int B, int D, float kappa, float weight,
                float *dcls_acc, float *scratch) {
    double total = 0;
    for (int c = 0; c < n_crops; c++) {
        size_t off = (size_t)c * B * D;
        be->kde(be, scratch, dcls_acc ? dcls_acc + off : NULL, cls + off, B, D, kappa, weight);
        float v;
        be->to_host(be, &v, scratch, sizeof v);
        total += v;
    }
    return weight * total;
}
