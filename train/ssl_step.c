// One DINOv2 training step on a backend (see ssl_step.h).
#include "train/ssl_step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/clock.h"
#include "dist/dist.h"

void ssl_config_default(SslConfig *c, const VitConfig *vit) {
    memset(c, 0, sizeof *c);
    c->vit = *vit;
    c->dino_head = (HeadConfig){.in_dim = vit->dim, .hidden = 2048, .bottleneck = 256, .K = 65536, .nlayers = 3};
    c->ibot_head = c->dino_head;
    c->ibot_separate_head = 0;
    c->batch = 64;
    c->n_local = 8;
    c->global_crop = vit->img_size;
    c->local_crop = 96;
    c->centering = CENTERING_SOFTMAX;
    c->student_temp = 0.1f;
    c->center_momentum = 0.9f;
    c->dino_loss_weight = 1.0f;
    c->ibot_loss_weight = 1.0f;
    c->koleo_loss_weight = 0.1f;
    c->kde_loss_weight = 0.05f;
    c->kde_kappa = 5.0f;
    c->clip_grad = 3.0f;
    c->adamw_beta1 = 0.9f;
    c->adamw_beta2 = 0.999f;
    c->adamw_eps = 1e-8f;
    c->layerwise_decay = 0.9f;
    c->patch_embed_lr_mult = 0.2f;
}

// The Gram teacher's crop side of size pair k (SslConfig.pair_gram; pair 0 also gram_crop).
static int gram_side(const SslConfig *c, int k) {
    if (k == 0 && c->gram_crop) return c->gram_crop;
    if (c->pair_gram[k]) return c->pair_gram[k];
    return k == 0 && c->n_pairs <= 1 ? c->global_crop : c->pair_global[k];
}

int ssl_config_check(const SslConfig *c, char *err) {
    if (vit_config_check(&c->vit, err)) return -1;
    if (head_config_check(&c->dino_head, "dino head", err)) return -1;
    if (c->ibot_separate_head && head_config_check(&c->ibot_head, "ibot head", err)) return -1;
    if (c->dino_head.in_dim != c->vit.dim || (c->ibot_separate_head && c->ibot_head.in_dim != c->vit.dim)) {
        dino_seterr(err, "heads: in_dim must equal the backbone width %d", c->vit.dim);
        return -1;
    }
    if (c->batch < 1 || c->n_local < 0) {
        dino_seterr(err, "train: batch_size_per_gpu (%d) must be >= 1 and local_crops_number (%d) >= 0", c->batch,
                    c->n_local);
        return -1;
    }
    if (!c->use_kde && c->koleo_loss_weight > 0 && c->batch < 2) {
        dino_seterr(err, "train: batch_size_per_gpu is 1 but the KoLeo regularizer (dino.koleo_loss_weight %g) needs "
                         "at least 2 images per rank (its nearest neighbour is undefined with one); use a larger "
                         "batch or set dino.koleo_loss_weight: 0",
                    c->koleo_loss_weight);
        return -1;
    }
    if (c->use_kde && c->kde_loss_weight > 0 && !(c->kde_kappa > 0)) {
        dino_seterr(err, "train: KDE concentration (kappa) must be positive, got %g", c->kde_kappa);
        return -1;
    }
    // crops of any size: the ViT interpolates its pos-embed grid (img_size) to each
    if (vit_check_crop(&c->vit, c->global_crop, err) || (c->n_local > 0 && vit_check_crop(&c->vit, c->local_crop, err)))
        return -1;
    if (c->n_pairs > SSL_MAX_PAIRS) {
        dino_seterr(err, "crops: %d size pairs, at most %d", c->n_pairs, SSL_MAX_PAIRS);
        return -1;
    }
    for (int k = 0; k < c->n_pairs; k++)
        if (vit_check_crop(&c->vit, c->pair_global[k], err) ||
            (c->n_local > 0 && vit_check_crop(&c->vit, c->pair_local[k], err)))
            return -1;
    if (c->n_pairs > 1 && (c->pair_global[0] != c->global_crop || c->pair_local[0] != c->local_crop)) {
        dino_seterr(err, "crops: size pair 0 (%d, %d) must be (global_crop, local_crop) = (%d, %d)", c->pair_global[0],
                    c->pair_local[0], c->global_crop, c->local_crop);
        return -1;
    }
    if (c->zero_world > 1 && (c->zero_rank < 0 || c->zero_rank >= c->zero_world)) {
        dino_seterr(err, "ZeRO-1: rank %d outside a world of %d", c->zero_rank, c->zero_world);
        return -1;
    }
    if (c->gram) {
        if (c->gram_crop && c->pair_gram[0] && c->gram_crop != c->pair_gram[0]) {
            dino_seterr(err, "crops: gram_crop %d and pair_gram[0] %d differ", c->gram_crop, c->pair_gram[0]);
            return -1;
        }
        for (int k = 0; k < (c->n_pairs > 1 ? c->n_pairs : 1); k++) {
            const int gc = gram_side(c, k), glob = c->n_pairs > 1 ? c->pair_global[k] : c->global_crop;
            if (gc < glob || vit_check_crop(&c->vit, gc, err)) {
                if (gc < glob)
                    dino_seterr(err, "crops: gram_teacher_crops_size %d is smaller than global_crops_size %d (size pair %d)",
                                gc, glob, k);
                return -1;
            }
        }
        if (c->gram_neg_mode < 0 || c->gram_neg_mode > 2) {
            dino_seterr(err, "gram: negative-similarity mode %d unknown", c->gram_neg_mode);
            return -1;
        }
    }
    if (!(c->student_temp > 0) || !(c->center_momentum >= 0 && c->center_momentum <= 1)) {
        dino_seterr(err, "losses: student temperature %g must be > 0 and centre momentum %g in [0, 1]", c->student_temp,
                    c->center_momentum);
        return -1;
    }
    return 0;
}

// ---- working memory -------------------------------------------------------------------------------

// What the student's forward leaves for its backward and the statistics.
typedef struct {
    int n_m;                    // masked tokens (rows of w->idx_mask)
    const float *xg;            // backbone output on the global crops
    const float *zs_dino;       // DINO head logits [local CLS; global CLS]
    const float *zs_ibot;       // iBOT head logits [masked patch tokens]
    float *s_glob_cls;          // the global-crop CLS rows of the head input
    // DINO local / global and iBOT losses (read_back), and the divisors of their downloaded row sums
    double local, global, ibot, local_div, global_div, ibot_div;
    int n_reg;                  // KoLeo/KDE terms downloaded (crops), 0: none
    float reg_weight;           // ... and their weight
    double reg;                 // KoLeo/KDE (read_back)
} StudentPass;


typedef struct {
    int B, nL, Ng, Tg, Tl, D, Kd, Ki, max_masked, rows_cls, rows_head;
    int G, L, pair;                              // the current size pair: its sides (Ng, Tg, Tl follow them)
    int max_Ng;                                  // over the pairs: buffers are sized for the largest
    VitActs *s_glob, *s_loc, *t_glob;            // activations of the current pair
    HeadActs *s_dino, *s_ibot, *t_dino, *t_ibot; // *_ibot only with a separate head
    float *glob_img, *loc_img;                   // crops in backend memory (staging slot 0 when staged)
    // staging (cfg.staged_upload): two slots of device crops, page-locked host copies, host masks
    float *glob_slot[2], *loc_slot[2], *stage_host[2];
    uint8_t *stage_mask[2];
    int stage_has_mask[2], stage_ticket[2], stage_full[2], stage_pair[2], stage_next, stage_oldest;
    uint8_t *masks;                              // [2B*N]
    int *idx_tcls, *idx_gcls, *idx_lcls, *idx_mask; // gather indices (rows of D floats)
    float *mask_w;                               // [max_masked] 1/n_i per masked token
    float *t_in, *s_in, *ds_in;                  // head inputs [rows, D] and their gradient
    float *P_dino, *P_ibot;                      // teacher targets
    float *dz_dino, *dz_ibot;                    // d loss / d student logits: the logits' own buffers
    float *tsum, *row_loss, *scratch;
    // The step's read-backs (losses per row, entropies, KoLeo/KDE, Gram, the global CLS rows): downloaded
    // asynchronously into page-locked memory while the step is issued, then waited for once (read_back)
    // (and, after ssl_step_issue's update, the scalar block's `out` part: grad norms and the NaN flag)
    float *rb;                                   // host_alloc: the slots below
    size_t rb_local, rb_global, rb_ibot, rb_ibot_w, rb_cls, rb_out, rb_floats; // offsets of the slots in floats
    float *d_xg, *d_xl;                          // gradients w.r.t. the student backbone outputs
    int *sub_g, *sub_l;                          // host drop-path subsets
    // Gram anchoring (cfg.gram): Gram teacher activations on its crops (Gg px, Ngg patches), its crops
    // (two staging slots), patch-token gather indices, the patch features and the resampling matrix
    // (the current size pair's: gram_acts, Gg, Ngg, the indices and gram_resize; buffers for the largest)
    VitActs *gram_acts;
    int Gg, Ngg, max_Gg;
    float *gram_img, *gram_slot[2], *gram_host[2];
    int gram_ticket[2], gram_staged[2], gram_pair[2];
    int *idx_spatch, *idx_gpatch;                // [2B*Ng] student rows, [2B*Ngg] Gram teacher rows
    float *gram_s, *gram_t, *gram_traw, *gram_ds; // [2B*Ng,D] x3 (+ gram_traw [2B*Ngg,D] when resampled)
    float *gram_resize;                          // [Ng, Ngg] or NULL (same grid)
    uint8_t *mask_host;
    int *idx_host;
    float *w_host;
    // the step's scalar block (m->scalars): the host's copy of its `in` part, what the host believes the
    // device's AdamW count to be, the centres before the step (a NaN step reverts them), and whether an
    // update's statistics are still to be read (ssl_read_step_stats)
    DinoStepScalars scalars_host;
    long adam_step_device;
    float *center_save;
    int updates_unread; // updates whose statistics were not read yet (ssl_step_stats_from_block)
    // the forward pass issued and not yet summed (losses_finish): what the sums need
    struct {
        int issued;         // 1 between the issue and its finish
        int fb_rc;          // the issue's own verdict: -1 a bad batch (nothing downloaded; err in msg)
        int update_issued;  // ssl_step_issue: the block's `out` part is in rb too
        StudentPass sp;
        int n_m, do_gram;
        double local_w, gram_weight;
        char msg[DINO_ERRLEN];
    } pend;
} Work;

static float *falloc(Backend *be, size_t n) { return be->alloc(be, sizeof(float) * (n ? n : 1)); }

static int tokens_of(const SslConfig *c, int crop) { return 1 + c->vit.n_registers + (crop / c->vit.patch) * (crop / c->vit.patch); }

static void free_pair_acts(Backend *be, Work *w) {
    vit_acts_free(be, w->s_glob);
    vit_acts_free(be, w->s_loc);
    vit_acts_free(be, w->t_glob);
    w->s_glob = w->s_loc = w->t_glob = NULL;
    if (w->gram_acts) vit_acts_free(be, w->gram_acts);
    if (w->gram_resize) be->release(be, w->gram_resize);
    w->gram_acts = NULL, w->gram_resize = NULL;
}

// Gram anchoring at size pair k: the Gram teacher's activations on its crops (gram_side px), the patch-row
// gather indices of both token layouts and, when the grids differ, the resampling matrix to the
// student's grid (dinov3 SSLMetaArch: the Gram teacher's patch features interpolated to the global size).
static void make_pair_gram(SslModel *m, Backend *be, int k) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    const int B = w->B, R = c->vit.n_registers, p = c->vit.patch;
    const int Gg = gram_side(c, k), gs = Gg / p, ss = w->G / p;
    w->Gg = Gg;
    w->Ngg = gs * gs;
    w->gram_acts = vit_acts_new(be, &m->vit, 2 * B, Gg, VIT_ACTS_FORWARD_ONLY);
    int *ix = dino_malloc(sizeof(int) * (size_t)2 * B * (w->Ngg > w->Ng ? w->Ngg : w->Ng));
    const int Tgg = 1 + R + w->Ngg;
    for (int i = 0; i < 2 * B; i++)
        for (int n = 0; n < w->Ng; n++) ix[(size_t)i * w->Ng + n] = i * w->Tg + 1 + R + n;
    be->to_device(be, w->idx_spatch, ix, sizeof(int) * (size_t)2 * B * w->Ng);
    for (int i = 0; i < 2 * B; i++)
        for (int n = 0; n < w->Ngg; n++) ix[(size_t)i * w->Ngg + n] = i * Tgg + 1 + R + n;
    be->to_device(be, w->idx_gpatch, ix, sizeof(int) * (size_t)2 * B * w->Ngg);
    free(ix);
    if (gs != ss) { // torch interpolate(size=(ss, ss), bicubic, align_corners=False[, antialias]) as a matrix
        float *W = dino_malloc(sizeof(float) * (size_t)w->Ng * w->Ngg);
        vit_pos_interp_matrix(W, gs, ss, 0.0f, c->gram_resize_antialias);
        w->gram_resize = falloc(be, (size_t)w->Ng * w->Ngg);
        be->to_device(be, w->gram_resize, W, sizeof(float) * (size_t)w->Ng * w->Ngg);
        free(W);
    }
}

// The activations and token geometry of size pair k, and the gather indices that depend on them.
static void make_pair_acts(SslModel *m, Backend *be, int k) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    const int B = w->B, nL = w->nL, G = c->pair_global[k], L = c->pair_local[k];
    w->pair = k, w->G = G, w->L = L;
    w->Ng = (G / c->vit.patch) * (G / c->vit.patch);
    w->Tg = tokens_of(c, G);
    w->Tl = tokens_of(c, L);
    const VitActsMode smode = c->recompute_activations ? VIT_ACTS_RECOMPUTE : VIT_ACTS_STORE_ALL;
    // the two student crop groups run forward, then backward, one after the other: one set of backward
    // scratch serves both (the group with more rows allocates it)
    if (nL > 0 && (size_t)nL * B * w->Tl > (size_t)2 * B * w->Tg) {
        w->s_loc = vit_acts_new(be, &m->vit, nL * B, L, smode);
        w->s_glob = vit_acts_new_sharing(be, &m->vit, 2 * B, G, smode, w->s_loc);
    } else {
        w->s_glob = vit_acts_new(be, &m->vit, 2 * B, G, smode);
        if (nL > 0) w->s_loc = vit_acts_new_sharing(be, &m->vit, nL * B, L, smode, w->s_glob);
    }
    if (w->s_loc) vit_acts_set_local_crops(w->s_loc, 1); // DINOv3: local_cls_norm when untied
    if (!c->student_only) w->t_glob = vit_acts_new(be, &m->vit, 2 * B, G, VIT_ACTS_FORWARD_ONLY); // no backward
    // fixed gather indices: teacher CLS swapped [g2; g1], student global and local CLS
    for (int r = 0; r < 2 * B; r++) w->idx_host[r] = ((r + B) % (2 * B)) * w->Tg;
    be->to_device(be, w->idx_tcls, w->idx_host, sizeof(int) * 2 * B);
    for (int r = 0; r < 2 * B; r++) w->idx_host[r] = r * w->Tg;
    be->to_device(be, w->idx_gcls, w->idx_host, sizeof(int) * 2 * B);
    for (int r = 0; r < nL * B; r++) w->idx_host[r] = r * w->Tl;
    be->to_device(be, w->idx_lcls, w->idx_host, sizeof(int) * (size_t)nL * B);
    if (c->gram) make_pair_gram(m, be, k);
}

void ssl_use_pair(SslModel *m, Backend *be, int k) {
    Work *w = m->work;
    DINO_ASSERT(k >= 0 && k < m->cfg.n_pairs, "ssl_use_pair: pair %d of %d", k, m->cfg.n_pairs);
    if (k == w->pair && w->s_glob) return;
    free_pair_acts(be, w); // first: at most one pair's activations exist at any time
    make_pair_acts(m, be, k);
}

int ssl_model_init(SslModel *m, Backend *be, const SslConfig *cfg_in, uint64_t seed, char *err) {
    memset(m, 0, sizeof *m);
    SslConfig cfg = *cfg_in;
    if (cfg.n_pairs <= 1) { // one pair: (global_crop, local_crop)
        cfg.n_pairs = 1;
        cfg.pair_global[0] = cfg.global_crop;
        cfg.pair_local[0] = cfg.local_crop;
    }
    cfg.dino_head.in_dim = cfg.vit.dim;
    if (cfg.ibot_separate_head) cfg.ibot_head.in_dim = cfg.vit.dim;
    if (ssl_config_check(&cfg, err)) return -1;
    const int p = cfg.vit.patch, R = cfg.vit.n_registers;
    Work *w = dino_calloc(1, sizeof *w);
    w->B = cfg.batch;
    w->nL = cfg.n_local;
    // buffers for the largest sides of any pair
    int maxG = 0, maxL = 0;
    for (int k = 0; k < cfg.n_pairs; k++) {
        maxG = cfg.pair_global[k] > maxG ? cfg.pair_global[k] : maxG;
        maxL = cfg.pair_local[k] > maxL ? cfg.pair_local[k] : maxL;
    }
    (void)R;
    w->max_Ng = (maxG / p) * (maxG / p);
    const int maxTg = tokens_of(&cfg, maxG), maxTl = tokens_of(&cfg, maxL);
    w->D = cfg.vit.dim;
    w->Kd = cfg.dino_head.K;
    w->Ki = cfg.ibot_separate_head ? cfg.ibot_head.K : cfg.dino_head.K;
    if (cfg.max_masked <= 0) cfg.max_masked = w->B * w->max_Ng;
    if (cfg.ibot_loss_weight <= 0) cfg.max_masked = 0;
    w->max_masked = cfg.max_masked;
    m->cfg = cfg;

    param_table_init(&m->tab);
    vit_build(&m->vit, &cfg.vit, &m->tab, "backbone.");
    head_build(&m->dino_head, &cfg.dino_head, &m->tab, "dino_head.", PARAM_DINO_HEAD);
    if (cfg.ibot_separate_head) head_build(&m->ibot_head, &cfg.ibot_head, &m->tab, "ibot_head.", PARAM_IBOT_HEAD);
    optim_assign_param_groups(&m->tab, cfg.layerwise_decay, cfg.patch_embed_lr_mult);

    const size_t total = m->tab.total;
    m->buffer_floats = total;
    m->shard_begin = 0;
    m->shard_end = total;
    if (cfg.zero_world > 1) {
        DistShard sh = dist_shard(total, cfg.zero_world, cfg.zero_rank, PARAM_ALIGN);
        m->buffer_floats = sh.padded;
        m->shard_begin = sh.begin;
        m->shard_end = sh.end;
    }
    float *host = dino_calloc(total, sizeof(float));
    vit_init_weights(&m->vit, host, seed);
    head_init_weights(&m->dino_head, host, seed ^ 0xd1u);
    if (cfg.ibot_separate_head) head_init_weights(&m->ibot_head, host, seed ^ 0x1b07u);
    m->student = falloc(be, m->buffer_floats); // zeros past total (the backend's alloc clears)
    m->teacher = falloc(be, m->buffer_floats);
    m->grads = falloc(be, m->buffer_floats);
    // the GEMMs' bf16 copies of the weights (cuda; kept current by every write through the backend)
    m->weight_copy_bytes = be->param_copy_register(be, m->student, m->buffer_floats) +
                           be->param_copy_register(be, m->teacher, m->buffer_floats);
    be->to_device(be, m->student, host, sizeof(float) * total);
    be->to_device(be, m->teacher, host, sizeof(float) * total); // the teacher starts as the student
    free(host);
    adamw_init(&m->opt, be, m->shard_begin, m->shard_end, cfg.adamw_beta1, cfg.adamw_beta2, cfg.adamw_eps);
    teacher_center_init(be, &m->dino_center, w->Kd, cfg.center_momentum);
    teacher_center_init(be, &m->ibot_center, w->Ki, cfg.center_momentum);
    m->scalars = be->alloc(be, sizeof(DinoStepScalars));
    m->dino_center.ss = m->ibot_center.ss = m->scalars;
    w->center_save = falloc(be, (size_t)w->Kd + w->Ki);
    w->scalars_host.in.adam_step_set = -1;

    const int B = w->B, nL = w->nL, D = w->D, MM = w->max_masked;
    w->rows_cls = nL * B + 2 * B;
    w->rows_head = w->rows_cls + MM;
    if (cfg.ibot_separate_head) {
        w->s_dino = head_acts_new(be, &m->dino_head, w->rows_cls, 1);
        w->t_dino = head_acts_new(be, &m->dino_head, 2 * B, 0);
        w->s_ibot = head_acts_new(be, &m->ibot_head, MM, 1);
        w->t_ibot = head_acts_new(be, &m->ibot_head, MM, 0);
    } else {
        w->s_dino = head_acts_new(be, &m->dino_head, w->rows_head, 1);
        w->t_dino = head_acts_new(be, &m->dino_head, 2 * B + MM, 0);
    }
    const int G = maxG, L = maxL;
    w->glob_img = falloc(be, (size_t)2 * B * 3 * G * G);
    w->loc_img = falloc(be, (size_t)nL * B * 3 * L * L);
    if (cfg.staged_upload) {
        w->glob_slot[0] = w->glob_img, w->loc_slot[0] = w->loc_img;
        w->glob_slot[1] = falloc(be, (size_t)2 * B * 3 * G * G);
        w->loc_slot[1] = falloc(be, (size_t)nL * B * 3 * L * L);
        for (int s = 0; s < 2; s++) w->stage_mask[s] = dino_malloc((size_t)2 * B * w->max_Ng); // host: on first use
    }
    w->masks = be->alloc(be, (size_t)2 * B * w->max_Ng);
    w->idx_tcls = be->alloc(be, sizeof(int) * 2 * B);
    w->idx_gcls = be->alloc(be, sizeof(int) * 2 * B);
    w->idx_lcls = be->alloc(be, sizeof(int) * (size_t)(nL * B + 1));
    w->idx_mask = be->alloc(be, sizeof(int) * (size_t)(MM + 1));
    w->mask_w = falloc(be, (size_t)MM);
    w->t_in = falloc(be, (size_t)(2 * B + MM) * D);
    w->s_in = falloc(be, (size_t)w->rows_head * D);
    w->ds_in = falloc(be, (size_t)w->rows_head * D);
    w->P_dino = falloc(be, (size_t)2 * B * w->Kd);
    w->P_ibot = falloc(be, (size_t)MM * w->Ki);
    // The losses overwrite the student's logits with their gradient (softmax_ce in place: each row is
    // read once, by the call that writes it), so the gradient needs no buffer of its own: rows x K floats
    // saved, gigabytes at K = 131072 with thousands of masked tokens.
    w->dz_dino = head_acts_logits(w->s_dino);
    w->dz_ibot = cfg.ibot_separate_head ? head_acts_logits(w->s_ibot) : w->dz_dino + (size_t)w->rows_cls * w->Kd;
    w->tsum = falloc(be, (size_t)B * w->Kd);
    int rl = nL * B > MM ? nL * B : MM;
    w->row_loss = falloc(be, (size_t)(rl > 2 * B ? rl : 2 * B));
    w->scratch = falloc(be, 16);
    // read-back slots: entropies (2), Gram (1), KoLeo/KDE per crop (2) | local rows | global rows | iBOT rows,
    // their weights | global CLS rows
    w->rb_local = 8, w->rb_global = w->rb_local + (size_t)nL * B, w->rb_ibot = w->rb_global + (size_t)2 * B;
    w->rb_ibot_w = w->rb_ibot + (size_t)MM, w->rb_cls = w->rb_ibot_w + (size_t)MM;
    w->rb_out = (w->rb_cls + (size_t)2 * B * D + 1) / 2 * 2; // 8-byte aligned: doubles
    w->rb_floats = w->rb_out + (sizeof(((DinoStepScalars *)0)->out) + sizeof(float) - 1) / sizeof(float);
    w->rb = be->host_alloc(be, sizeof(float) * w->rb_floats);
    w->d_xg = falloc(be, (size_t)2 * B * maxTg * D);
    w->d_xl = falloc(be, (size_t)nL * B * maxTl * D);
    w->sub_g = dino_malloc(sizeof(int) * (size_t)cfg.vit.depth * 2 * 2 * B);
    w->sub_l = dino_malloc(sizeof(int) * (size_t)cfg.vit.depth * 2 * (nL * B + 1));
    w->mask_host = dino_malloc((size_t)2 * B * w->max_Ng);
    w->idx_host = dino_malloc(sizeof(int) * (size_t)(nL * B + 2 * B + MM + 1));
    w->w_host = dino_malloc(sizeof(float) * (size_t)(MM + 1));
    m->work = w;
    if (cfg.gram) { // buffers for the largest pair; the per-pair parts in make_pair_gram
        int maxGg = 0, any_resize = 0;
        for (int k = 0; k < cfg.n_pairs; k++) {
            const int gk = gram_side(&cfg, k);
            maxGg = gk > maxGg ? gk : maxGg;
            any_resize |= gk != cfg.pair_global[k];
        }
        const int max_Ngg = (maxGg / p) * (maxGg / p);
        w->max_Gg = maxGg;
        for (int i = 0; i < m->tab.n; i++) // the backbone's tensors come first in the buffer
            if (m->tab.t[i].group == PARAM_BACKBONE && m->tab.t[i].offset + m->tab.t[i].numel > m->backbone_floats)
                m->backbone_floats = m->tab.t[i].offset + m->tab.t[i].numel;
        m->gram_teacher = falloc(be, m->backbone_floats);
        m->weight_copy_bytes += be->param_copy_register(be, m->gram_teacher, m->backbone_floats);
        w->gram_img = w->gram_slot[0] = falloc(be, (size_t)2 * B * 3 * maxGg * maxGg);
        if (cfg.staged_upload) w->gram_slot[1] = falloc(be, (size_t)2 * B * 3 * maxGg * maxGg);
        w->idx_spatch = be->alloc(be, sizeof(int) * (size_t)2 * B * w->max_Ng);
        w->idx_gpatch = be->alloc(be, sizeof(int) * (size_t)2 * B * max_Ngg);
        w->gram_s = falloc(be, (size_t)2 * B * w->max_Ng * D);
        w->gram_t = falloc(be, (size_t)2 * B * w->max_Ng * D);
        w->gram_ds = falloc(be, (size_t)2 * B * w->max_Ng * D);
        if (any_resize) w->gram_traw = falloc(be, (size_t)2 * B * max_Ngg * D);
    }
    make_pair_acts(m, be, 0); // the other pairs' when a step needs them
    return 0;
}

void ssl_model_free(SslModel *m, Backend *be) {
    Work *w = m->work;
    if (w) {
        free_pair_acts(be, w);
        head_acts_free(be, w->s_dino);
        head_acts_free(be, w->t_dino);
        head_acts_free(be, w->s_ibot);
        head_acts_free(be, w->t_ibot);
        void *bufs[] = {w->glob_img, w->loc_img, w->masks, w->idx_tcls, w->idx_gcls, w->idx_lcls, w->idx_mask,
                        w->mask_w, w->t_in, w->s_in, w->ds_in, w->P_dino, w->P_ibot, w->tsum, w->row_loss, w->scratch, w->d_xg,
                        w->d_xl};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i]) be->release(be, bufs[i]);
        if (w->glob_slot[1]) be->release(be, w->glob_slot[1]);
        if (w->loc_slot[1]) be->release(be, w->loc_slot[1]);
        for (int s = 0; s < 2; s++) {
            if (w->stage_host[s]) be->host_free(be, w->stage_host[s]);
            free(w->stage_mask[s]);
        }
        free(w->sub_g), free(w->sub_l), free(w->mask_host), free(w->idx_host), free(w->w_host);
        be->release(be, w->center_save);
        void *gbufs[] = {w->gram_slot[0], w->gram_slot[1], w->idx_spatch, w->idx_gpatch, w->gram_s, w->gram_t,
                         w->gram_traw, w->gram_ds}; // gram_acts, gram_resize: free_pair_acts
        for (size_t i = 0; i < sizeof gbufs / sizeof gbufs[0]; i++)
            if (gbufs[i]) be->release(be, gbufs[i]);
        for (int s = 0; s < 2; s++)
            if (w->gram_host[s]) be->host_free(be, w->gram_host[s]);
        if (w->rb) be->host_free(be, w->rb);
        free(w);
    }
    be->release(be, m->student);
    be->release(be, m->teacher);
    be->release(be, m->grads);
    if (m->gram_teacher) be->release(be, m->gram_teacher);
    be->release(be, m->scalars);
    adamw_free(&m->opt, be);
    teacher_center_free(be, &m->dino_center);
    teacher_center_free(be, &m->ibot_center);
    vit_free(&m->vit);
    param_table_free(&m->tab);
    memset(m, 0, sizeof *m);
}

// ---- the step -------------------------------------------------------------------------------------

// The host's values of the step into the host copy of the scalar block's `in` part (sv NULL: the schedule
// values stay as they are; ssl_update brings them).
static void scalars_fill(SslModel *m, const ScheduleValues *sv, const SslBatch *b) {
    Work *w = m->work;
    DinoStepScalars *h = &w->scalars_host;
    if (sv) {
        h->in.lr = sv->lr, h->in.last_layer_lr = sv->last_layer_lr, h->in.wd = sv->wd;
        h->in.momentum = sv->momentum;
        h->in.teacher_temp = sv->teacher_temp;
    }
    adamw_fill_scalars(&m->opt, h, h->in.lr, h->in.last_layer_lr, h->in.wd); // the bias corrections
    if (b) {
        h->in.gram_weight = b->gram_weight;
        h->in.dino_local_weight = m->cfg.reweight_dino_local ? b->dino_local_weight : 1.0;
    }
    // a count the host set (a checkpoint) reaches the device; otherwise the device keeps its own
    // (the host takes the device to hold it once an update is issued: ssl_update_shard)
    h->in.adam_step_set = m->opt.step != w->adam_step_device ? (double)m->opt.step : -1.0;
}

// The start of a step: the block's `out` part zeroed (no NaN, no sums yet), its `in` part uploaded (one
// copy), the centres kept for a NaN step. Device work only: no host wait.
static void scalars_begin_step(SslModel *m, Backend *be, const ScheduleValues *sv, const SslBatch *b) {
    Work *w = m->work;
    scalars_fill(m, sv, b);
    // the upload first: the first staged copy of a graph-mode run allocates the staging (a pause), best
    // before any node of the step (else step 0 alone is cut there: another topology than the next steps)
    be->to_device(be, &m->scalars->in, &w->scalars_host.in, sizeof w->scalars_host.in);
    be->zero(be, &m->scalars->out, sizeof m->scalars->out);
    be->copy(be, w->center_save, m->dino_center.center, sizeof(float) * (size_t)w->Kd);
    be->copy(be, w->center_save + w->Kd, m->ibot_center.center, sizeof(float) * (size_t)w->Ki);
}

void ssl_mark_nonfinite(SslModel *m, Backend *be) {
    const int32_t one = 1;
    be->to_device(be, &m->scalars->out.nonfinite, &one, sizeof one);
}

int ssl_step_stats_from_block(SslModel *m, const DinoStepScalars *copy, SslStepStats *st) {
    Work *w = m->work;
    const int nonfinite = copy->out.nonfinite != 0;
    // a step not applied reports no norms, as when the trainer skipped its update
    for (int g = 0; g < 3; g++) st->grad_norm[g] = nonfinite ? 0.0 : sqrt(copy->out.grad_ss[g]);
    if (w->updates_unread > 0) {
        w->updates_unread--;
        if (nonfinite) { // the update was not applied: take back the host's count
            m->opt.step--;
            w->adam_step_device--;
        }
    }
    return nonfinite ? -1 : 0;
}

int ssl_read_step_stats(SslModel *m, Backend *be, SslStepStats *st) {
    DinoStepScalars h;
    be->to_host(be, &h.out, &m->scalars->out, sizeof h.out);
    return ssl_step_stats_from_block(m, &h, st);
}

// Mean over dims of the batch standard deviation of the L2-normalized rows of x[n,D] (host).
static double normalized_std(const float *x, int n, int D) {
    double *u = dino_malloc(sizeof(double) * (size_t)n * D);
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (double)x[(size_t)i * D + d] * x[(size_t)i * D + d];
        double inv = 1.0 / fmax(sqrt(ss), 1e-12);
        for (int d = 0; d < D; d++) u[(size_t)i * D + d] = x[(size_t)i * D + d] * inv;
    }
    double acc = 0;
    for (int d = 0; d < D; d++) {
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++) mean += u[(size_t)i * D + d];
        mean /= n;
        for (int i = 0; i < n; i++) var += (u[(size_t)i * D + d] - mean) * (u[(size_t)i * D + d] - mean);
        acc += sqrt(var / n);
    }
    free(u);
    return acc / D;
}

static int argmax_row(const float *v, int n) {
    int best = 0;
    for (int k = 1; k < n; k++)
        if (v[k] > v[best]) best = k;
    return best;
}

// ---- the student half, shared by the SSL step and distillation -------------------------------------

// The masked tokens' rows in the global-crop activations and their iBOT weights 1/(masked tokens of the
// crop), crop-major as the reference, uploaded to w->idx_mask and w->mask_w. Returns how many, or -1
// (err) when the batch has more than w->max_masked.
static int upload_masked_tokens(Work *w, Backend *be, const uint8_t *masks, int R, char *err) {
    const int Ng = w->Ng;
    int n_m = 0;
    for (int i = 0; i < 2 * w->B; i++) {
        int cnt = 0;
        for (int n = 0; n < Ng; n++) cnt += masks[(size_t)i * Ng + n] != 0;
        if (cnt == 0) continue;
        if (n_m + cnt > w->max_masked) {
            dino_seterr(err, "ssl_step: more than %d masked tokens in the batch (max_masked too small)", w->max_masked);
            return -1;
        }
        for (int n = 0; n < Ng; n++)
            if (masks[(size_t)i * Ng + n]) {
                w->idx_host[n_m] = i * w->Tg + 1 + R + n;
                w->w_host[n_m] = 1.0f / (float)cnt;
                n_m++;
            }
    }
    if (n_m) {
        be->to_device(be, w->idx_mask, w->idx_host, sizeof(int) * (size_t)n_m);
        be->to_device(be, w->mask_w, w->w_host, sizeof(float) * (size_t)n_m);
    }
    return n_m;
}

// Read-back slots of w->rb (the first 8 floats)
enum { RB_ENT_DINO, RB_ENT_IBOT, RB_GRAM, RB_REG };

// The mean entropies of the DINO and iBOT targets (w->P_dino, w->P_ibot), downloaded (read_back).
static void target_entropies(Work *w, Backend *be, int n_m) {
    be->entropy_mean(be, w->scratch, w->P_dino, 2 * w->B, w->Kd);
    be->download_async(be, w->rb + RB_ENT_DINO, w->scratch, sizeof(float));
    if (n_m) {
        be->entropy_mean(be, w->scratch, w->P_ibot, n_m, w->Ki);
        be->download_async(be, w->rb + RB_ENT_IBOT, w->scratch, sizeof(float));
    }
}

// The student's random draws for the batch: stochastic depth subsets (the batch's own, or drawn from its
// key) and the DINOv3 RoPE coordinate augmentation (the teacher is in eval mode: none), a draw per block
// and crop group, as the official ViT calls its RopePositionEmbedding in every block.
static void student_draws(SslModel *m, Backend *be, const SslBatch *b, const int **sub_g_out, const int **sub_l_out) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    const int B = w->B, nL = w->nL;
    const int *sub_g = b->drop_global, *sub_l = b->drop_local;
    if (c->vit.drop_path_rate > 0) {
        if (!sub_g) vit_draw_drop_subsets(&m->vit, 2 * B, rng_make(b->drop_key.state, 1, 0, 0), w->sub_g), sub_g = w->sub_g;
        if (!sub_l && nL > 0)
            vit_draw_drop_subsets(&m->vit, nL * B, rng_make(b->drop_key.state, 2, 0, 0), w->sub_l), sub_l = w->sub_l;
    } else {
        sub_g = sub_l = NULL;
    }
    const RopeConfig *rc = &c->vit.rope_cfg;
    if (c->vit.rope && (rc->shift > 0 || rc->jitter > 0 || rc->rescale > 0)) {
        RopeAug *aug = dino_malloc(sizeof(RopeAug) * (size_t)c->vit.depth);
        vit_draw_rope_aug(&m->vit, rng_make(b->drop_key.state, 3, 0, 0), aug);
        vit_acts_set_rope_aug(be, &m->vit, w->s_glob, aug);
        if (nL > 0) {
            vit_draw_rope_aug(&m->vit, rng_make(b->drop_key.state, 4, 0, 0), aug);
            vit_acts_set_rope_aug(be, &m->vit, w->s_loc, aug);
        }
        free(aug);
    }
    *sub_g_out = sub_g, *sub_l_out = sub_l;
}


// Student forward on both crop groups (global crops with masks_dev, NULL: unmasked), head input [local
// CLS; global CLS; masked patch tokens] -> head logits.
static void student_forward(SslModel *m, Backend *be, const float *glob_img, const float *loc_img,
                            const uint8_t *masks_dev, const int *sub_g, const int *sub_l, StudentPass *sp) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    const int B = w->B, nL = w->nL, D = w->D, Kd = w->Kd, n_m = sp->n_m;
    const float *xg = vit_forward(be, &m->vit, m->student, w->s_glob, glob_img, masks_dev, sub_g);
    const float *xl = nL > 0 ? vit_forward(be, &m->vit, m->student, w->s_loc, loc_img, NULL, sub_l) : NULL;
    float *s_loc_cls = w->s_in, *s_glob_cls = w->s_in + (size_t)nL * B * D;
    float *s_masked = w->s_in + (size_t)w->rows_cls * D;
    if (nL > 0) be->gather_rows(be, s_loc_cls, xl, w->idx_lcls, nL * B, (size_t)D);
    be->gather_rows(be, s_glob_cls, xg, w->idx_gcls, 2 * B, (size_t)D);
    if (n_m) be->gather_rows(be, s_masked, xg, w->idx_mask, n_m, (size_t)D);
    const float *zs_dino, *zs_ibot = NULL;
    if (c->ibot_separate_head) {
        zs_dino = head_forward(be, &m->dino_head, m->student, w->s_dino, w->s_in, w->rows_cls);
        if (n_m) zs_ibot = head_forward(be, &m->ibot_head, m->student, w->s_ibot, s_masked, n_m);
    } else {
        zs_dino = head_forward(be, &m->dino_head, m->student, w->s_dino, w->s_in, w->rows_cls + n_m);
        zs_ibot = zs_dino + (size_t)w->rows_cls * Kd;
    }
    sp->xg = xg, sp->zs_dino = zs_dino, sp->zs_ibot = zs_ibot, sp->s_glob_cls = s_glob_cls;
}

// The DINO and iBOT losses of the student's logits against w->P_dino / w->P_ibot, and their gradients
// w.r.t. the logits (w->dz_dino, w->dz_ibot). local_w scales the DINO local-crop loss; local_ss: it is
// the step's scalar block's in.dino_local_weight, read there by the op (a replayed graph takes a moving
// weight along), NULL: by value.
static void student_losses(SslModel *m, Backend *be, double local_w, const DinoStepScalars *local_ss, StudentPass *sp) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    const int B = w->B, nL = w->nL, Kd = w->Kd, Ki = w->Ki, n_m = sp->n_m;
    const float *zs_dino = sp->zs_dino;
    const float ts = c->student_temp;
    // the rows go to the host in stream order (row_loss is reused by the next loss); after each loss its rows
    // raise the step's NaN flag on the device (the update then does nothing)
    sp->local_div = local_ss ? dino_loss_local_rows_ss(be, zs_dino, nL, B, w->P_dino, Kd, ts, w->tsum, w->row_loss,
                                                       w->dz_dino, c->dino_loss_weight, local_ss)
                             : dino_loss_local_rows(be, zs_dino, nL, B, w->P_dino, Kd, ts, w->tsum, w->row_loss,
                                                    w->dz_dino, (float)(c->dino_loss_weight * local_w));
    if (nL > 0) {
        be->nonfinite_check_ss(be, w->row_loss, (size_t)nL * B, m->scalars);
        be->download_async(be, w->rb + w->rb_local, w->row_loss, sizeof(float) * (size_t)nL * B);
    }
    sp->global_div = dino_loss_global_rows(be, zs_dino + (size_t)nL * B * Kd, nL, B, w->P_dino, Kd, ts, w->row_loss,
                                           w->dz_dino + (size_t)nL * B * Kd, c->dino_loss_weight);
    be->nonfinite_check_ss(be, w->row_loss, (size_t)2 * B, m->scalars);
    be->download_async(be, w->rb + w->rb_global, w->row_loss, sizeof(float) * (size_t)2 * B);
    sp->ibot_div = 0;
    if (c->ibot_loss_weight > 0 && n_m) {
        sp->ibot_div = ibot_loss_rows(be, sp->zs_ibot, w->P_ibot, w->mask_w, n_m, 2 * B, Ki, ts, w->row_loss,
                                      w->dz_ibot, c->ibot_loss_weight);
        be->nonfinite_check_ss(be, w->row_loss, (size_t)n_m, m->scalars);
        be->download_async(be, w->rb + w->rb_ibot, w->row_loss, sizeof(float) * (size_t)n_m);
        be->download_async(be, w->rb + w->rb_ibot_w, w->mask_w, sizeof(float) * (size_t)n_m);
    }
}

// Student backward: heads -> head inputs (+ KoLeo/KDE on the global CLS, downloaded) -> backbone outputs
// (+ the Gram anchoring gradient w->gram_ds on the global patch tokens, with_gram) -> ViT, into m->grads.
static void student_backward(SslModel *m, Backend *be, StudentPass *sp, int with_gram) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    const int B = w->B, nL = w->nL, D = w->D, Ng = w->Ng, n_m = sp->n_m;
    be->zero(be, m->grads, sizeof(float) * m->tab.total);
    if (c->ibot_separate_head) {
        head_backward(be, &m->dino_head, m->student, m->grads, w->s_dino, w->dz_dino, w->ds_in);
        if (n_m) head_backward(be, &m->ibot_head, m->student, m->grads, w->s_ibot, w->dz_ibot, w->ds_in + (size_t)w->rows_cls * D);
    } else {
        head_backward(be, &m->dino_head, m->student, m->grads, w->s_dino, w->dz_dino, w->ds_in);
    }
    float *ds_glob_cls = w->ds_in + (size_t)nL * B * D;
    // KoLeo/KDE per global crop (as koleo_loss / kde_loss), each term downloaded
    sp->n_reg = 0;
    sp->reg_weight = c->use_kde ? c->kde_loss_weight : c->koleo_loss_weight;
    if (sp->reg_weight > 0) {
        sp->n_reg = 2;
        for (int g = 0; g < 2; g++) {
            const size_t off = (size_t)g * B * D;
            if (c->use_kde) be->kde(be, w->scratch, ds_glob_cls + off, sp->s_glob_cls + off, B, D, c->kde_kappa, sp->reg_weight);
            else be->koleo(be, w->scratch, ds_glob_cls + off, sp->s_glob_cls + off, B, D, sp->reg_weight);
            be->nonfinite_check_ss(be, w->scratch, 1, m->scalars); // each crop's value raises the NaN flag
            be->download_async(be, w->rb + RB_REG + g, w->scratch, sizeof(float));
        }
    }
    // the heads sit after the backbone in the buffer: their gradients are final now
    if (m->grad_ready) m->grad_ready(m->grad_ready_ctx, m->dino_head.w[0]);
    // backbone gradients are final only during the last crop group's backward
    vit_acts_set_grad_hook(w->s_glob, nL > 0 ? NULL : m->grad_ready, m->grad_ready_ctx);
    if (nL > 0) vit_acts_set_grad_hook(w->s_loc, m->grad_ready, m->grad_ready_ctx);
    be->zero(be, w->d_xg, sizeof(float) * (size_t)2 * B * w->Tg * D);
    be->scatter_add_rows(be, w->d_xg, ds_glob_cls, w->idx_gcls, 2 * B, (size_t)D);
    if (n_m) be->scatter_add_rows(be, w->d_xg, w->ds_in + (size_t)w->rows_cls * D, w->idx_mask, n_m, (size_t)D);
    if (with_gram) be->scatter_add_rows(be, w->d_xg, w->gram_ds, w->idx_spatch, 2 * B * Ng, (size_t)D);
    vit_backward(be, &m->vit, m->student, m->grads, w->s_glob, w->d_xg);
    if (nL > 0) {
        be->zero(be, w->d_xl, sizeof(float) * (size_t)nL * B * w->Tl * D);
        be->scatter_add_rows(be, w->d_xl, w->ds_in, w->idx_lcls, nL * B, (size_t)D);
        vit_backward(be, &m->vit, m->student, m->grads, w->s_loc, w->d_xl);
    }
}

// After the wait for the step's read-backs (download_wait): sums them on the host as the loss functions
// do (the same values as reading each back where it is computed): the losses into sp, KoLeo/KDE, the
// entropies, the Gram loss (with_gram), the global CLS spread. n_m: masked tokens.
static void read_back(SslModel *m, StudentPass *sp, int n_m, int with_gram, double *gram, SslStepStats *st) {
    const Work *w = m->work;
    const int B = w->B, nL = w->nL, D = w->D;
    const float *rb = w->rb;
    sp->local = nL > 0 ? loss_rows_sum(rb + w->rb_local, NULL, nL * B) / sp->local_div : 0;
    sp->global = loss_rows_sum(rb + w->rb_global, NULL, 2 * B) / sp->global_div;
    sp->ibot = sp->ibot_div ? loss_rows_sum(rb + w->rb_ibot, rb + w->rb_ibot_w, n_m) / sp->ibot_div : 0;
    double total = 0;
    for (int g = 0; g < sp->n_reg; g++) total += rb[RB_REG + g];
    sp->reg = sp->n_reg ? sp->reg_weight * total : 0;
    st->teacher_entropy = rb[RB_ENT_DINO];
    if (n_m) st->ibot_teacher_entropy = rb[RB_ENT_IBOT];
    if (with_gram) *gram = rb[RB_GRAM];
    st->student_cls_std = normalized_std(rb + w->rb_cls, 2 * B, D);
}

// What the reference logs. reg: KoLeo/KDE; gram (weighted by gram_weight) adds to the totals.
static void student_stats(SslModel *m, const StudentPass *sp, double local_w, double reg, double gram,
                          double gram_weight, SslStepStats *st) {
    const SslConfig *c = &m->cfg;
    st->dino_local_crops_loss = sp->local;
    st->dino_global_crops_loss = sp->global;
    st->koleo_loss = reg / 2;
    st->ibot_loss = sp->ibot / 2;
    st->gram_loss = gram;
    st->total_loss = sp->local + sp->global + reg / 2 + sp->ibot / 2 + gram_weight * gram;
    st->backprop_loss = c->dino_loss_weight * (local_w * sp->local + sp->global) + reg + c->ibot_loss_weight * sp->ibot +
                        gram_weight * gram;
}

static int forward_backward(SslModel *m, Backend *be, Collective *coll, const SslBatch *b, const ScheduleValues *sv,
                            SslStepStats *st, char *err) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    const int pair = b->staged ? w->stage_pair[w->stage_oldest] : b->pair;
    if (pair < 0 || pair >= c->n_pairs) {
        dino_seterr(err, "ssl_step: size pair %d, the model has %d", pair, c->n_pairs);
        return -1;
    }
    ssl_use_pair(m, be, pair);
    const int B = w->B, nL = w->nL, D = w->D, Ng = w->Ng, Kd = w->Kd, R = c->vit.n_registers;
    const int G = w->G, L = w->L;
    const int do_ibot = c->ibot_loss_weight > 0;
    const int do_gram = c->gram && b->gram_weight != 0;
    const double local_w = c->reweight_dino_local ? b->dino_local_weight : 1.0;
    memset(st, 0, sizeof *st);
    DINO_ASSERT(w->t_glob, "ssl_forward_backward on a student_only model (distillation: ssl_student_forward_backward)");
    st->dino_local_weight = local_w;
    if (b->gram_weight != 0 && !c->gram) {
        dino_seterr(err, "ssl_step: Gram weight %g on a model built without Gram anchoring", b->gram_weight);
        return -1;
    }
    if (do_gram && !m->gram_ready) {
        dino_seterr(err, "ssl_step: Gram weight %g but the Gram teacher was never set (gram.ckpt or "
                         "gram.it_load_ema_teacher)", b->gram_weight);
        return -1;
    }
    const float *gram_img = w->gram_img;

    // ---- inputs: crops, masks -> masked-token indices and weights (crop-major, as the reference)
    const uint8_t *masks = b->masks;
    const float *glob_img = w->glob_img, *loc_img = w->loc_img;
    if (b->staged) {
        const int s = w->stage_oldest;
        DINO_ASSERT(c->staged_upload && w->stage_full[s], "ssl_forward_backward: no staged batch");
        // (the upload was waited for before the step's first op: staged_inputs_wait)
        glob_img = w->glob_slot[s], loc_img = w->loc_slot[s];
        masks = w->stage_has_mask[s] ? w->stage_mask[s] : NULL;
        if (do_gram) {
            DINO_ASSERT(w->gram_staged[s], "ssl_forward_backward: Gram weight %g but no Gram crops staged", b->gram_weight);
            DINO_ASSERT(w->gram_pair[s] == pair, "ssl_forward_backward: Gram crops staged for size pair %d, the "
                        "batch is of pair %d", w->gram_pair[s], pair);
            gram_img = w->gram_slot[s];
        }
        w->gram_staged[s] = 0;
        // Free for ssl_stage_batch again once the step is finished: its read-back wait (losses_finish)
        // waits for the forward passes, the only readers of the crops.
        w->stage_full[s] = 0;
        w->stage_oldest ^= 1;
    } else {
        be->to_device(be, w->glob_img, b->global_crops, sizeof(float) * (size_t)2 * B * 3 * G * G);
        if (nL > 0) be->to_device(be, w->loc_img, b->local_crops, sizeof(float) * (size_t)nL * B * 3 * L * L);
        if (do_gram) {
            if (!b->gram_crops) {
                dino_seterr(err, "ssl_step: Gram weight %g but the batch has no Gram teacher crops", b->gram_weight);
                return -1;
            }
            be->to_device(be, w->gram_img, b->gram_crops, sizeof(float) * (size_t)2 * B * 3 * w->Gg * w->Gg);
        }
    }
    StudentPass sp = {0};
    const uint8_t *masks_dev = NULL;
    if (masks) {
        for (size_t i = 0; i < (size_t)2 * B * Ng; i++) w->mask_host[i] = masks[i] != 0;
        be->to_device(be, w->masks, w->mask_host, (size_t)2 * B * Ng);
        masks_dev = w->masks;
        if (do_ibot && (sp.n_m = upload_masked_tokens(w, be, masks, R, err)) < 0) return -1;
    }
    const int n_m = sp.n_m;
    st->n_masked = n_m;
    const int *sub_g, *sub_l;
    student_draws(m, be, b, &sub_g, &sub_l);

    // phase timing (m->profile_phases): synchronised marks between the phases, for benchmarks only
    double t_mark = 0;
#define PHASE(i)                                                                                   \
    do {                                                                                           \
        if (m->profile_phases) {                                                                   \
            be->sync(be);                                                                          \
            double t_ = dino_wall_s();                                                             \
            if ((i) >= 0) st->phase_s[(i)] = t_ - t_mark;                                          \
            t_mark = t_;                                                                           \
        }                                                                                          \
    } while (0)
    PHASE(-1);
    // ---- teacher: global crops, unmasked, no stochastic depth
    const float *xt = vit_forward(be, &m->vit, m->teacher, w->t_glob, glob_img, NULL, NULL);
    be->gather_rows(be, w->t_in, xt, w->idx_tcls, 2 * B, (size_t)D);
    if (n_m) be->gather_rows(be, w->t_in + (size_t)2 * B * D, xt, w->idx_mask, n_m, (size_t)D);
    const float *zt_dino, *zt_ibot = NULL;
    if (c->ibot_separate_head) {
        zt_dino = head_forward(be, &m->dino_head, m->teacher, w->t_dino, w->t_in, 2 * B);
        if (n_m) zt_ibot = head_forward(be, &m->ibot_head, m->teacher, w->t_ibot, w->t_in + (size_t)2 * B * D, n_m);
    } else {
        zt_dino = head_forward(be, &m->dino_head, m->teacher, w->t_dino, w->t_in, 2 * B + n_m);
        zt_ibot = zt_dino + (size_t)2 * B * Kd;
    }
    const float tt = (float)sv->teacher_temp;
    dino_teacher_targets(be, coll, c->centering, &m->dino_center, w->P_dino, zt_dino, 2 * B, tt);
    if (do_ibot) ibot_teacher_targets(be, coll, c->centering, &m->ibot_center, w->P_ibot, zt_ibot, n_m, tt);
    target_entropies(w, be, n_m);

    if (b->diag) { // collapse diagnostics: teacher argmax, CLS and mean patch features (host)
        const int Tg = w->Tg;
        float *P = dino_malloc(sizeof(float) * (size_t)2 * B * Kd);
        be->to_host(be, P, w->P_dino, sizeof(float) * (size_t)2 * B * Kd);
        for (int i = 0; i < 2 * B; i++) b->diag->teacher_argmax[i] = argmax_row(P + (size_t)i * Kd, Kd);
        free(P);
        float *tok = dino_malloc(sizeof(float) * (size_t)2 * B * Tg * D);
        be->to_host(be, tok, xt, sizeof(float) * (size_t)2 * B * Tg * D);
        for (int i = 0; i < 2 * B; i++) {
            const float *t = tok + (size_t)i * Tg * D;
            memcpy(b->diag->teacher_cls + (size_t)i * D, t, sizeof(float) * (size_t)D);
            float *pm = b->diag->teacher_patch + (size_t)i * D;
            for (int d = 0; d < D; d++) pm[d] = 0;
            for (int j = 1 + R; j < Tg; j++)
                for (int d = 0; d < D; d++) pm[d] += t[(size_t)j * D + d];
            for (int d = 0; d < D; d++) pm[d] /= (float)(Tg - 1 - R);
        }
        free(tok);
    }

    PHASE(0);
    // ---- student forward: both crop groups, head input [local CLS; global CLS; masked patch tokens]
    student_forward(m, be, glob_img, loc_img, masks_dev, sub_g, sub_l, &sp);
    const float *xg = sp.xg;

    if (b->diag) { // student-teacher agreement: global crop c of image i against the teacher on crop 1-c
        float *Z = dino_malloc(sizeof(float) * (size_t)2 * B * Kd);
        be->to_host(be, Z, sp.zs_dino + (size_t)nL * B * Kd, sizeof(float) * (size_t)2 * B * Kd);
        int agree = 0;
        for (int i = 0; i < 2 * B; i++) agree += argmax_row(Z + (size_t)i * Kd, Kd) == b->diag->teacher_argmax[(i + B) % (2 * B)];
        b->diag->agreement = (double)agree / (2 * B);
        free(Z);
    }

    // ---- Gram anchoring: the Gram teacher on its crops (unmasked, no stochastic depth); its patch tokens,
    // resampled to the student's grid, against the student's global-crop patch tokens
    if (do_gram) {
        const float *xgt = vit_forward(be, &m->vit, m->gram_teacher, w->gram_acts, gram_img, NULL, NULL);
        if (w->gram_resize) {
            be->gather_rows(be, w->gram_traw, xgt, w->idx_gpatch, 2 * B * w->Ngg, (size_t)D);
            for (int i = 0; i < 2 * B; i++)
                be->gemm(be, 0, 0, Ng, D, w->Ngg, 1.0f, w->gram_resize, w->Ngg, w->gram_traw + (size_t)i * w->Ngg * D, D,
                         0.0f, w->gram_t + (size_t)i * Ng * D, D);
        } else {
            be->gather_rows(be, w->gram_t, xgt, w->idx_gpatch, 2 * B * Ng, (size_t)D);
        }
        be->gather_rows(be, w->gram_s, xg, w->idx_spatch, 2 * B * Ng, (size_t)D);
        be->zero(be, w->gram_ds, sizeof(float) * (size_t)2 * B * Ng * D);
        const int gB = c->gram_img_level ? 2 * B : 1, gN = c->gram_img_level ? Ng : 2 * B * Ng;
        // the weight (float)b->gram_weight read from the step's scalar block (in.gram_weight)
        be->gram_loss_ss(be, w->scratch, w->gram_ds, w->gram_s, w->gram_t, gB, gN, D, c->gram_normalize,
                         c->gram_neg_mode, 1.0f, m->scalars);
        be->nonfinite_check_ss(be, w->scratch, 1, m->scalars);
        be->download_async(be, w->rb + RB_GRAM, w->scratch, sizeof(float));
    }

    // ---- losses and their gradients w.r.t. the student logits
    // the block's in.dino_local_weight is local_w (scalars_fill)
    student_losses(m, be, local_w, m->scalars, &sp);

    PHASE(1);
    // ---- backward: heads -> head inputs (+ KoLeo/KDE on the global CLS) -> backbone outputs -> ViT
    student_backward(m, be, &sp, do_gram);
    be->download_async(be, w->rb + w->rb_cls, sp.s_glob_cls, sizeof(float) * (size_t)2 * B * D);

    PHASE(2);
#undef PHASE
    // what the reference logs and the collapse guard: summed once the read-backs landed (losses_finish)
    w->pend.sp = sp, w->pend.n_m = n_m, w->pend.do_gram = do_gram;
    w->pend.local_w = local_w, w->pend.gram_weight = b->gram_weight;
    return 0;
}

// Before the step's first op: the staged batch's uploads (a wait on the copy queue ends a graph segment:
// here it comes before the step's segment, not inside it).
static void staged_inputs_wait(SslModel *m, Backend *be, const SslBatch *b) {
    Work *w = m->work;
    const int s = w->stage_oldest;
    if (!b->staged || !m->cfg.staged_upload || !w->stage_full[s]) return; // forward_backward reports it
    be->upload_wait(be, w->stage_ticket[s]); // the crops' copy, started while the last step ran
    if (m->cfg.gram && b->gram_weight != 0 && w->gram_staged[s]) be->upload_wait(be, w->gram_ticket[s]);
}

// The forward and backward pass issued (no host wait but the diagnostics' and bad input's): the losses
// are summed by losses_finish. Returns -1 only for a bad batch (err set, the NaN flag raised).
static int forward_backward_issue(SslModel *m, Backend *be, Collective *coll, const SslBatch *b,
                                  const ScheduleValues *sv, SslStepStats *st, char *err) {
    Work *w = m->work;
    DINO_ASSERT(!w->pend.issued, "ssl_step: a step was issued and not finished (ssl_step_finish)");
    staged_inputs_wait(m, be, b);
    scalars_begin_step(m, be, sv, b);
    const int rc = forward_backward(m, be, coll, b, sv, st, err);
    if (rc) ssl_mark_nonfinite(m, be); // a bad batch: the update must not apply
    w->pend.issued = 1, w->pend.fb_rc = rc, w->pend.update_issued = 0;
    if (rc) snprintf(w->pend.msg, sizeof w->pend.msg, "%s", err);
    return rc;
}

// The one wait for the issued step's read-backs, then the host's sums into st. Returns -1 with err set
// when the loss is not finite (or the batch was bad).
static int losses_finish(SslModel *m, Backend *be, SslStepStats *st, char *err) {
    Work *w = m->work;
    DINO_ASSERT(w->pend.issued, "ssl_step_finish: no step issued");
    w->pend.issued = 0;
    be->download_wait(be);
    if (w->pend.fb_rc) {
        dino_seterr(err, "%s", w->pend.msg);
        return -1;
    }
    StudentPass *sp = &w->pend.sp;
    double gram = 0;
    read_back(m, sp, w->pend.n_m, w->pend.do_gram, &gram, st);
    student_stats(m, sp, w->pend.local_w, sp->reg, gram, w->pend.gram_weight, st);
    st->n_masked = w->pend.n_m, st->dino_local_weight = w->pend.local_w;
    if (!isfinite(st->backprop_loss)) {
        dino_seterr(err, "ssl_step: NaN/inf loss (local %g, global %g, koleo/kde %g, ibot %g, gram %g)", sp->local,
                    sp->global, sp->reg, sp->ibot, gram);
        return -1;
    }
    return 0;
}

int ssl_forward_backward(SslModel *m, Backend *be, Collective *coll, const SslBatch *b, const ScheduleValues *sv,
                         SslStepStats *st, char *err) {
    const int bad_batch = forward_backward_issue(m, be, coll, b, sv, st, err);
    const int rc = losses_finish(m, be, st, err);
    if (rc && !bad_batch) ssl_mark_nonfinite(m, be); // found on the host: the update must not apply
    return rc;
}

int ssl_step_issue(SslModel *m, Backend *be, Collective *coll, const SslBatch *b, const ScheduleValues *sv,
                   SslStepStats *st, char *err) {
    Work *w = m->work;
    const int rc = forward_backward_issue(m, be, coll, b, sv, st, err);
    ssl_update(m, be, sv, st); // a no-op on the device when a loss is not finite (the block's flag)
    // the grad norms and the NaN flag come back with the losses: one wait (ssl_step_finish)
    be->download_async(be, w->rb + w->rb_out, &m->scalars->out, sizeof m->scalars->out);
    w->pend.update_issued = 1;
    return rc;
}

int ssl_step_finish(SslModel *m, Backend *be, SslStepStats *st, char *err) {
    Work *w = m->work;
    DINO_ASSERT(w->pend.issued && w->pend.update_issued, "ssl_step_finish without ssl_step_issue");
    int rc = losses_finish(m, be, st, err);
    DinoStepScalars copy;
    memcpy(&copy.out, w->rb + w->rb_out, sizeof copy.out);
    // the device's flag decided whether the update applied; it is raised by every loss row the host sums,
    // so it agrees with the host's verdict (a disagreement is reported, the device's state is as it says)
    if (ssl_step_stats_from_block(m, &copy, st) != 0 && rc == 0) {
        dino_seterr(err, "ssl_step: a non-finite value on the device (the step's NaN flag), update not applied");
        rc = -1;
    } else if (rc != 0 && copy.out.nonfinite == 0) {
        char e2[DINO_ERRLEN];
        snprintf(e2, sizeof e2, "%s", err);
        dino_seterr(err, "%s (the device's NaN flag was not raised: the update WAS applied)", e2);
    }
    return rc;
}

void ssl_update_shard(SslModel *m, Backend *be, const ScheduleValues *sv, SslSumF64 sum_f64, void *ctx,
                      SslStepStats *st) {
    (void)st; // the statistics come from ssl_read_step_stats
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    DinoStepScalars *ss = m->scalars, *h = &w->scalars_host;
    const size_t lo = m->shard_begin, hi = m->shard_end;
    // a caller whose forward knew no schedule (distillation) brings the values now: a second upload
    if (h->in.lr != sv->lr || h->in.last_layer_lr != sv->last_layer_lr || h->in.wd != sv->wd ||
        h->in.momentum != sv->momentum) {
        const double set = h->in.adam_step_set;
        scalars_fill(m, sv, NULL);
        h->in.adam_step_set = set; // the forward's decision stands (the counts have not moved since)
        be->to_device(be, &ss->in, &h->in, sizeof h->in);
    }
    // optimizer: clip per submodule (norms over the whole model), AdamW, EMA teacher; every value from the
    // block, no host wait (but for ZeRO-1's host sum over ranks)
    const ParamGroup groups[3] = {PARAM_BACKBONE, PARAM_DINO_HEAD, PARAM_IBOT_HEAD};
    if (c->clip_grad > 0) {
        for (int g = 0; g < 3; g++) grad_sum_squares_ss(be, &m->tab, m->grads, groups[g], lo, hi, g, ss);
        if (sum_f64) { // the host all-reduce of the dist layer: through the host (a read-back)
            double sums[3];
            be->to_host(be, sums, ss->out.grad_ss, sizeof sums);
            sum_f64(ctx, sums, 3);
            be->to_device(be, ss->out.grad_ss, sums, sizeof sums);
        }
    }
    be->update_prepare_ss(be, 3, c->clip_grad > 0 ? (double)c->clip_grad : 0.0, m->opt.beta1, m->opt.beta2, ss);
    if (c->clip_grad > 0)
        for (int g = 0; g < 3; g++) grad_clip_ss(be, &m->tab, m->grads, groups[g], lo, hi, g, ss);
    // update_prepare_ss took the forward's count, if it sent one (a step whose update is never issued, as
    // a skipped distillation step, leaves the device's count as it was: the next step sends it again)
    w->adam_step_device = m->opt.step;
    adamw_step_ss(&m->opt, be, &m->tab, m->student, m->grads, lo, hi, ss);
    w->adam_step_device++;
    ema_update_ss(be, &m->tab, m->teacher, m->student, lo, hi, ss);
    // the centres moved in the forward pass before the loss was known
    be->revert_if_nonfinite_ss(be, m->dino_center.center, w->center_save, (size_t)w->Kd, ss);
    be->revert_if_nonfinite_ss(be, m->ibot_center.center, w->center_save + w->Kd, (size_t)w->Ki, ss);
    w->updates_unread++;
}

void ssl_update(SslModel *m, Backend *be, const ScheduleValues *sv, SslStepStats *st) {
    DINO_ASSERT(m->cfg.zero_world <= 1, "ssl_update on a ZeRO-1 sharded model: use ssl_update_shard");
    ssl_update_shard(m, be, sv, NULL, NULL, st);
}

int ssl_step(SslModel *m, Backend *be, Collective *coll, const SslBatch *b, const ScheduleValues *sv,
             SslStepStats *st, char *err) {
    ssl_step_issue(m, be, coll, b, sv, st, err);
    return ssl_step_finish(m, be, st, err);
}

void ssl_stage_batch(SslModel *m, Backend *be, const float *global_crops, const float *local_crops,
                     const uint8_t *masks, int crops_pinned) {
    ssl_stage_batch_pair(m, be, 0, global_crops, local_crops, masks, crops_pinned);
}

void ssl_stage_batch_pair(SslModel *m, Backend *be, int pair, const float *global_crops, const float *local_crops,
                          const uint8_t *masks, int crops_pinned) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    const int s = w->stage_next;
    DINO_ASSERT(c->staged_upload, "ssl_stage_batch: the model was built without staged_upload");
    DINO_ASSERT(!w->stage_full[s], "ssl_stage_batch: two batches are staged already");
    DINO_ASSERT(pair >= 0 && pair < c->n_pairs, "ssl_stage_batch: pair %d of %d", pair, c->n_pairs);
    const int G = c->pair_global[pair], L = c->pair_local[pair], Ng = (G / c->vit.patch) * (G / c->vit.patch);
    const size_t ng = (size_t)2 * w->B * 3 * G * G;
    const size_t nl = (size_t)w->nL * w->B * 3 * L * L;
    // The slot's previous batch was consumed by an ssl_forward_backward that has returned: its upload
    // and its readers are done, so the host copy and the device slot may be overwritten.
    if (!crops_pinned) { // sized for the largest pair
        if (!w->stage_host[s]) {
            size_t cap = 0;
            for (int k = 0; k < c->n_pairs; k++) {
                size_t n = (size_t)w->B * 3 * (2 * (size_t)c->pair_global[k] * c->pair_global[k] +
                                               (size_t)w->nL * c->pair_local[k] * c->pair_local[k]);
                cap = n > cap ? n : cap;
            }
            w->stage_host[s] = be->host_alloc(be, sizeof(float) * cap);
        }
        memcpy(w->stage_host[s], global_crops, sizeof(float) * ng);
        if (nl) memcpy(w->stage_host[s] + ng, local_crops, sizeof(float) * nl);
        global_crops = w->stage_host[s];
        local_crops = w->stage_host[s] + ng;
    }
    w->stage_has_mask[s] = masks != NULL;
    w->stage_pair[s] = pair;
    if (masks) memcpy(w->stage_mask[s], masks, (size_t)2 * w->B * Ng);
    w->stage_ticket[s] = be->upload_async(be, w->glob_slot[s], global_crops, sizeof(float) * ng);
    if (nl) w->stage_ticket[s] = be->upload_async(be, w->loc_slot[s], local_crops, sizeof(float) * nl);
    w->stage_full[s] = 1;
    w->stage_next ^= 1;
}

void ssl_gram_from_teacher(SslModel *m, Backend *be) {
    DINO_ASSERT(m->cfg.gram, "ssl_gram_from_teacher: the model was built without Gram anchoring");
    be->copy(be, m->gram_teacher, m->teacher, sizeof(float) * m->backbone_floats);
    m->gram_ready = 1;
}

void ssl_stage_gram(SslModel *m, Backend *be, const float *gram_crops, int crops_pinned) {
    ssl_stage_gram_pair(m, be, 0, gram_crops, crops_pinned);
}

void ssl_stage_gram_pair(SslModel *m, Backend *be, int pair, const float *gram_crops, int crops_pinned) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    const int s = w->stage_next;
    DINO_ASSERT(c->staged_upload && c->gram, "ssl_stage_gram: the model was built without staging or Gram");
    DINO_ASSERT(!w->stage_full[s], "ssl_stage_gram: two batches are staged already");
    DINO_ASSERT(pair >= 0 && pair < c->n_pairs, "ssl_stage_gram: pair %d of %d", pair, c->n_pairs);
    const int Gg = gram_side(c, pair);
    const size_t n = (size_t)2 * w->B * 3 * Gg * Gg;
    if (!crops_pinned) { // sized for the largest pair
        if (!w->gram_host[s]) w->gram_host[s] = be->host_alloc(be, sizeof(float) * (size_t)2 * w->B * 3 * w->max_Gg * w->max_Gg);
        memcpy(w->gram_host[s], gram_crops, sizeof(float) * n);
        gram_crops = w->gram_host[s];
    }
    w->gram_ticket[s] = be->upload_async(be, w->gram_slot[s], gram_crops, sizeof(float) * n);
    w->gram_staged[s] = 1;
    w->gram_pair[s] = pair;
}

SslMemory ssl_memory(const SslModel *m) {
    const Work *w = m->work;
    SslMemory r = {0};
    r.weights = 2 * sizeof(float) * m->buffer_floats;
    r.grads = sizeof(float) * m->buffer_floats;
    r.optimizer = 2 * sizeof(float) * (m->shard_end - m->shard_begin);
    r.student_acts = vit_acts_bytes(w->s_glob) + (w->s_loc ? vit_acts_bytes(w->s_loc) : 0);
    r.teacher_acts = w->t_glob ? vit_acts_bytes(w->t_glob) : 0;
    if (m->gram_teacher) { // Gram anchoring: the Gram teacher's backbone and its forward activations
        r.weights += sizeof(float) * m->backbone_floats;
        r.teacher_acts += vit_acts_bytes(w->gram_acts);
    }
    r.weights += m->weight_copy_bytes;
    return r;
}

void ssl_embed(SslModel *m, Backend *be, int use_teacher, const float *images, int n, int crop, float *out) {
    const int D = m->cfg.vit.dim;
    VitActs *a = vit_acts_new(be, &m->vit, n, crop, VIT_ACTS_FORWARD_ONLY);
    float *img = falloc(be, (size_t)n * 3 * crop * crop);
    be->to_device(be, img, images, sizeof(float) * (size_t)n * 3 * crop * crop);
    const float *x = vit_forward(be, &m->vit, use_teacher ? m->teacher : m->student, a, img, NULL, NULL);
    const int T = vit_acts_tokens(a);
    float *row = dino_malloc(sizeof(float) * D);
    for (int i = 0; i < n; i++) {
        be->to_host(be, row, x + (size_t)i * T * D, sizeof(float) * D);
        memcpy(out + (size_t)i * D, row, sizeof(float) * D);
    }
    free(row);
    be->release(be, img);
    vit_acts_free(be, a);
}

// ---- distillation: the student half against given targets -----------------------------------------
// The same student draws, forward, losses and backward as ssl_forward_backward (the static functions
// above), with the targets uploaded instead of computed and the global crops unmasked.
static int student_forward_backward(SslModel *m, Backend *be, const SslBatch *b, const SslTargets *t,
                                    SslStepStats *st, char *err) {
    Work *w = m->work;
    const SslConfig *c = &m->cfg;
    DINO_ASSERT(!b->staged && !b->diag, "ssl_student_forward_backward: staged batches and diagnostics are not supported");
    if (b->pair < 0 || b->pair >= c->n_pairs) {
        dino_seterr(err, "ssl_step: size pair %d, the model has %d", b->pair, c->n_pairs);
        return -1;
    }
    ssl_use_pair(m, be, b->pair);
    const int B = w->B, nL = w->nL, Kd = w->Kd, Ki = w->Ki, G = w->G, L = w->L;
    memset(st, 0, sizeof *st);
    be->to_device(be, w->glob_img, b->global_crops, sizeof(float) * (size_t)2 * B * 3 * G * G);
    if (nL > 0) be->to_device(be, w->loc_img, b->local_crops, sizeof(float) * (size_t)nL * B * 3 * L * L);
    // the masks only pick the tokens the iBOT targets are for
    StudentPass sp = {0};
    if (b->masks && c->ibot_loss_weight > 0 && (sp.n_m = upload_masked_tokens(w, be, b->masks, c->vit.n_registers, err)) < 0)
        return -1;
    const int n_m = sp.n_m;
    if (n_m && !t->ibot) {
        dino_seterr(err, "ssl_student_forward_backward: %d masked tokens but no iBOT targets", n_m);
        return -1;
    }
    st->n_masked = n_m;
    be->to_device(be, w->P_dino, t->dino, sizeof(float) * (size_t)2 * B * Kd);
    if (n_m) be->to_device(be, w->P_ibot, t->ibot, sizeof(float) * (size_t)n_m * Ki);
    target_entropies(w, be, n_m);
    const int *sub_g, *sub_l;
    student_draws(m, be, b, &sub_g, &sub_l);

    student_forward(m, be, w->glob_img, w->loc_img, NULL, sub_g, sub_l, &sp);
    student_losses(m, be, 1.0, NULL, &sp);
    student_backward(m, be, &sp, 0);
    be->download_async(be, w->rb + w->rb_cls, sp.s_glob_cls, sizeof(float) * (size_t)2 * w->B * w->D);
    double no_gram = 0;
    be->download_wait(be);
    read_back(m, &sp, n_m, 0, &no_gram, st);
    student_stats(m, &sp, 1.0, sp.reg, 0, 0, st);
    if (!isfinite(st->backprop_loss)) {
        dino_seterr(err, "distillation step: NaN/inf loss (local %g, global %g, koleo/kde %g, ibot %g)", sp.local,
                    sp.global, sp.reg, sp.ibot);
        return -1;
    }
    return 0;
}

int ssl_student_forward_backward(SslModel *m, Backend *be, const SslBatch *b, const SslTargets *t, SslStepStats *st,
                                 char *err) {
    scalars_begin_step(m, be, NULL, b); // no schedule here: ssl_update brings it
    const int rc = student_forward_backward(m, be, b, t, st, err);
    if (rc) ssl_mark_nonfinite(m, be);
    return rc;
}
