// Parity of the C ViT (model/vit.c on the CPU backend) with the PyTorch reference
// (tests/torch_ref/dinov2_vit.py, itself checked against facebookresearch/dinov2), through the fixtures
// written by tests/make_vit_fixtures.py. Each fixture: a tiny ViT with random weights under the
// reference's names, several crop groups (images, iBOT masks, stochastic-depth subsets), the reference
// x_norm per group and the gradient of sum_k <x_norm_k, d_xnorm_k> w.r.t. every parameter.
//
// Metric: for each tensor, max|c - ref| / max|ref| (error relative to the tensor's largest magnitude),
// required <= 1e-4. The reference ran in float64, so the figure is the C side's own float32 error.
#include <stdint.h>
#include <string.h>

#include "common/check.h"
#include "common/safetensors.h"
#include "model/backend.h"
#include "model/params.h"
#include "model/vit.h"
#include "tests/fixture_util.h"
#include "tests/harness.h"

#define PARITY_TOL 1e-4

static void config_from_fixture(const StFile *f, VitConfig *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->arch, sizeof c->arch, "%s", meta_req(f, "arch"));
    c->dim = meta_int(f, "dim");
    c->depth = meta_int(f, "depth");
    c->heads = meta_int(f, "heads");
    c->patch = meta_int(f, "patch");
    c->img_size = meta_int(f, "img_size");
    c->n_registers = meta_int(f, "n_registers");
    c->ffn = strcmp(meta_req(f, "ffn"), "mlp") == 0 ? VIT_FFN_MLP : VIT_FFN_SWIGLU;
    c->ffn_hidden = meta_int(f, "ffn_hidden");
    c->layerscale = meta_float(f, "layerscale");
    c->drop_path_rate = meta_double(f, "drop_path_rate");
    c->interpolate_offset = meta_float(f, "interpolate_offset");
    c->interpolate_antialias = meta_int(f, "interpolate_antialias");
    c->qkv_bias = meta_int(f, "qkv_bias");
    c->proj_bias = meta_int(f, "proj_bias");
    c->ffn_bias = meta_int(f, "ffn_bias");
}

static void run_fixture(const char *name) {
    char path[256], err[DINO_ERRLEN] = "";
    snprintf(path, sizeof path, "tests/fixtures/vit_%s.safetensors", name);
    StFile f;
    VitConfig cfg;
    ParamTable tab;
    Vit vit;
    Backend *be = vit_fixture_open(path, config_from_fixture, &f, &cfg, &tab, &vit);
    if (!be) return;
    float *P = fixture_weights(&f, &tab);

    float *dP = be->alloc(be, sizeof(float) * tab.total);
    float *dG = be->alloc(be, sizeof(float) * tab.total);
    be->to_device(be, dP, P, sizeof(float) * tab.total);
    be->zero(be, dG, sizeof(float) * tab.total);

    const int n_groups = meta_int(&f, "n_groups");
    VitActs *acts[8] = {0};
    float *d_img[8] = {0}, *d_dx[8] = {0};
    uint8_t *d_mask[8] = {0};
    CHECK(n_groups >= 1 && n_groups <= 8, "bad n_groups %d", n_groups);
    double worst_x = 0;
    for (int k = 0; k < n_groups && k < 8; k++) {
        char key[64];
        snprintf(key, sizeof key, "g%d.batch", k);
        const int B = meta_int(&f, key);
        snprintf(key, sizeof key, "g%d.crop", k);
        const int crop = meta_int(&f, key);
        CHECK(vit_check_crop(&cfg, crop, err) == 0, "group %d crop %d refused: %s", k, crop, err);
        const int g = crop / cfg.patch, N = g * g, T = 1 + cfg.n_registers + N, D = cfg.dim;
        const size_t nimg = (size_t)B * 3 * crop * crop, nx = (size_t)B * T * D;

        snprintf(key, sizeof key, "in.g%d.images", k);
        const StTensor *img = fixture_f32(&f, key, nimg);
        snprintf(key, sizeof key, "out.g%d.x_norm", k);
        const StTensor *xref = fixture_f32(&f, key, nx);
        snprintf(key, sizeof key, "in.g%d.d_xnorm", k);
        const StTensor *dxn = fixture_f32(&f, key, nx);
        if (!img || !xref || !dxn) goto done;
        snprintf(key, sizeof key, "in.g%d.masks", k);
        const StTensor *mask = st_get(&f, key);
        snprintf(key, sizeof key, "in.g%d.subsets", k);
        const StTensor *sub = st_get(&f, key);

        acts[k] = vit_acts_new(be, &vit, B, crop, VIT_ACTS_STORE_ALL);
        CHECK(vit_acts_tokens(acts[k]) == T, "group %d: %d tokens, expected %d", k, vit_acts_tokens(acts[k]), T);
        d_img[k] = be->alloc(be, img->nbytes);
        be->to_device(be, d_img[k], img->data, img->nbytes);
        if (mask) {
            CHECK(mask->dtype == ST_U8 && mask->nbytes == (size_t)B * N, "group %d: masks must be u8 [B*N]", k);
            d_mask[k] = be->alloc(be, mask->nbytes);
            be->to_device(be, d_mask[k], mask->data, mask->nbytes);
        }
        const int *subsets = NULL;
        if (sub) {
            const int S = vit_drop_subset_size(&vit, B);
            snprintf(key, sizeof key, "g%d.subset_size", k);
            CHECK(S == meta_int(&f, key), "group %d: C keeps %d of %d images per branch, the reference %d", k, S, B,
                  meta_int(&f, key));
            CHECK(sub->dtype == ST_I32 && sub->nbytes == sizeof(int) * (size_t)cfg.depth * 2 * S,
                  "group %d: subsets must be i32 [depth,2,%d]", k, S);
            if (S != meta_int(&f, key) || sub->nbytes != sizeof(int) * (size_t)cfg.depth * 2 * S) goto done;
            subsets = sub->data;
        }
        const float *out = vit_forward(be, &vit, dP, acts[k], d_img[k], d_mask[k], subsets);
        float *xh = dino_malloc(sizeof(float) * nx);
        be->to_host(be, xh, out, sizeof(float) * nx);
        double maxabs, e = rel_err(xh, xref->data, nx, &maxabs);
        printf("  %-20s group %d (B=%d crop=%d%s%s): x_norm rel err %.2e (max|ref| %.3g)\n", name, k, B, crop,
               mask ? " masked" : "", sub ? " drop-path" : "", e, maxabs);
        CHECK(e <= PARITY_TOL, "%s group %d: x_norm rel err %.3e > %.0e", name, k, e, PARITY_TOL);
        if (!(e <= worst_x)) worst_x = e;
        free(xh);
        d_dx[k] = be->alloc(be, dxn->nbytes);
        be->to_device(be, d_dx[k], dxn->data, dxn->nbytes);
    }
    // backward of every group after all forwards (as the trainer does), into one gradient buffer
    for (int k = 0; k < n_groups && k < 8; k++) vit_backward(be, &vit, dP, dG, acts[k], d_dx[k]);
    float *G = dino_malloc(sizeof(float) * tab.total);
    be->to_host(be, G, dG, sizeof(float) * tab.total);
    const char *worst_name;
    double worst_g = fixture_check_grads(&f, &tab, G, name, PARITY_TOL, &worst_name);
    printf("  %-20s worst x_norm rel err %.2e; worst gradient rel err %.2e (%s) over %d tensors\n", name, worst_x,
           worst_g, worst_name, tab.n);
    free(G);
done:
    for (int k = 0; k < 8; k++) {
        if (acts[k]) vit_acts_free(be, acts[k]);
        if (d_img[k]) be->release(be, d_img[k]);
        if (d_mask[k]) be->release(be, d_mask[k]);
        if (d_dx[k]) be->release(be, d_dx[k]);
    }
    be->release(be, dP);
    be->release(be, dG);
    free(P);
    vit_fixture_close(be, &f, &tab, &vit);
}

// MLP, 4 registers, drop path 0.3 with explicit subsets, iBOT masks, 16/8/12 px crops, offset 0.1
TEST(parity_mlp_reg4_droppath) { run_fixture("mlp_reg4_droppath"); }
// SwiGLU (hidden 88 = the reference's rounding of 128), no registers, no drop path
TEST(parity_swiglu) { run_fixture("swiglu"); }
// size-based interpolation with antialias, 1 register, drop path 0.4, 16/8/12/20 px crops
TEST(parity_aa_offset0) { run_fixture("aa_offset0"); }

TEST(pos_interp_matrix_matches_torch) {
    StFile f;
    char err[DINO_ERRLEN] = "";
    if (st_open(&f, test_src_path("tests/fixtures/vit_pos_interp.safetensors"), err) != 0) {
        CHECK(0, "%s", err);
        return;
    }
    int n = 0;
    for (int i = 0; i < f.n; i++) {
        const StTensor *t = &f.t[i];
        int M, g, aa, used = 0;
        if (sscanf(t->name, "pos_interp.M%d.g%d.off%n", &M, &g, &used) != 2 || used == 0) continue;
        char *end;
        float off = strtof(t->name + used, &end);
        if (sscanf(end, ".aa%d", &aa) != 1) {
            CHECK(0, "cannot parse %s", t->name);
            continue;
        }
        const size_t numel = (size_t)g * g * M * M;
        CHECK(t->dtype == ST_F32 && t->nbytes == numel * sizeof(float), "%s: bad shape", t->name);
        float *W = dino_malloc(sizeof(float) * numel);
        vit_pos_interp_matrix(W, M, g, off, aa);
        double maxabs, e = rel_err(W, t->data, numel, &maxabs);
        CHECK(e <= 1e-5, "%s: rel err %.3e", t->name, e);
        if (!(e <= 1e-5)) printf("  %s: rel err %.3e\n", t->name, e);
        free(W);
        n++;
    }
    CHECK(n == 20, "expected 20 interpolation matrices, found %d", n);
    st_close(&f);
}

// ---- configurations that cannot work are refused with a message -------------------------------------

TEST(bad_configs_refused) {
    VitConfig c;
    char err[DINO_ERRLEN] = "";
    CHECK(vit_config_from_arch(&c, "vit_small", 14, 224, 4, "mlp", err) == 0, "vit_small refused: %s", err);
    VitConfig bad = c;
    bad.dim = 390; // 390 % 6 == 0 but 390 % 4 != 0
    bad.heads = 4;
    err[0] = 0;
    CHECK(vit_config_check(&bad, err) != 0, "dim 390 with 4 heads accepted");
    CHECK(strstr(err, "390") != NULL && strstr(err, "4") != NULL, "message should name dim and heads: '%s'", err);
    err[0] = 0;
    CHECK(vit_check_crop(&c, 100, err) != 0, "crop 100 with patch 14 accepted");
    CHECK(strstr(err, "100") != NULL && strstr(err, "14") != NULL, "message should name crop and patch: '%s'", err);
    CHECK(vit_check_crop(&c, 98, err) == 0 && vit_check_crop(&c, 224, err) == 0, "valid crops refused: %s", err);
    err[0] = 0;
    CHECK(vit_config_from_arch(&c, "vit_huge", 14, 224, 0, "mlp", err) != 0, "unknown arch accepted");
    CHECK(strstr(err, "vit_huge") != NULL, "message should name the arch: '%s'", err);
    err[0] = 0;
    CHECK(vit_config_from_arch(&c, "vit_small", 14, 224, 0, "moe", err) != 0, "unknown ffn layer accepted");
    CHECK(strstr(err, "moe") != NULL, "message should name the ffn layer: '%s'", err);
    err[0] = 0;
    CHECK(vit_config_from_arch(&c, "vit_small", 14, 100, 0, "mlp", err) != 0, "img_size 100 / patch 14 accepted");
    CHECK(err[0] != 0, "no message for img_size 100 / patch 14");
}

TEST(arch_table_matches_reference) {
    struct { const char *arch, *ffn; int dim, depth, heads, hidden; } want[] = {
        {"vit_small", "mlp", 384, 12, 6, 1536},     {"vit_base", "mlp", 768, 12, 12, 3072},
        {"vit_large", "mlp", 1024, 24, 16, 4096},   {"vit_large", "swiglufused", 1024, 24, 16, 2736},
        {"vit_giant2", "swiglufused", 1536, 40, 24, 4096},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        VitConfig c;
        char err[DINO_ERRLEN] = "";
        CHECK(vit_config_from_arch(&c, want[i].arch, 14, 224, 0, want[i].ffn, err) == 0, "%s: %s", want[i].arch, err);
        CHECK(c.dim == want[i].dim && c.depth == want[i].depth && c.heads == want[i].heads &&
                  c.ffn_hidden == want[i].hidden,
              "%s/%s: dim %d depth %d heads %d hidden %d", want[i].arch, want[i].ffn, c.dim, c.depth, c.heads,
              c.ffn_hidden);
    }
}

// The reference's subset size, max(int(b * (1 - sample_drop_ratio)), 1), evaluated as Python does:
// the rate a double, 1 - r in double, int() truncating toward zero.
static int python_subset_size(int b, double r) {
    double kept = trunc((double)b * (1.0 - r));
    return kept < 1 ? 1 : (int)kept;
}

TEST(drop_subset_size_matches_python) {
    VitConfig c;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&c, "vit_test", 4, 16, 0, "mlp", err) == 0, "%s", err);
    const double rates[] = {0.1, 0.2, 0.3, 0.4, 0.5};
    int n_bad = 0, n_float = 0;
    for (int k = 0; k < 5; k++) {
        c.drop_path_rate = rates[k];
        ParamTable tab;
        param_table_init(&tab);
        Vit vit;
        vit_build(&vit, &c, &tab, "");
        int n_float_r = 0;
        for (int B = 1; B <= 2048; B++) {
            const int S = vit_drop_subset_size(&vit, B), want = python_subset_size(B, rates[k]);
            if (S != want && n_bad++ < 5) CHECK(0, "rate %g B %d: S = %d, Python keeps %d", rates[k], B, S, want);
            n_float_r += python_subset_size(B, (float)rates[k]) != want; // the rate narrowed to float
        }
        printf("rate %g: %d of 2048 batch sizes would differ with the rate narrowed to float\n", rates[k], n_float_r);
        n_float += n_float_r;
        if (rates[k] == 0.3) CHECK(vit_drop_subset_size(&vit, 10) == 7, "B 10 at 0.3 keeps %d, Python 7",
                                   vit_drop_subset_size(&vit, 10));
        vit_free(&vit);
        param_table_free(&tab);
    }
    CHECK(n_bad == 0, "%d (B, rate) pairs differ from the reference", n_bad);
    printf("float-rate formula: %d of %d (B, rate) pairs differ\n", n_float, 5 * 2048);
}

TEST(drop_subsets_size_and_draw) {
    VitConfig c;
    char err[DINO_ERRLEN];
    CHECK(vit_config_from_arch(&c, "vit_test", 4, 16, 0, "mlp", err) == 0, "%s", err);
    struct { double rate; int B, S; } cases[] = {{0.3, 128, 89}, {0.4, 32, 19}, {0.3, 1, 1}, {0.4, 2, 1},
                                                 {0.0, 7, 7},    {0.3, 6, 4},   {0.3, 10, 7}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        c.drop_path_rate = cases[i].rate;
        ParamTable tab;
        param_table_init(&tab);
        Vit vit;
        vit_build(&vit, &c, &tab, "");
        int S = vit_drop_subset_size(&vit, cases[i].B);
        CHECK(S == cases[i].S, "rate %g B %d: S = %d, expected %d", cases[i].rate, cases[i].B, S, cases[i].S);
        if (cases[i].rate > 0 && S == cases[i].S) {
            int *a = dino_malloc(sizeof(int) * 2 * 2 * S), *b = dino_malloc(sizeof(int) * 2 * 2 * S);
            vit_draw_drop_subsets(&vit, cases[i].B, rng_make(5, 1, 2, 3), a);
            vit_draw_drop_subsets(&vit, cases[i].B, rng_make(5, 1, 2, 3), b);
            CHECK(memcmp(a, b, sizeof(int) * 4 * S) == 0, "same key gave different subsets");
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < S; j++) {
                    int v = a[r * S + j];
                    CHECK(v >= 0 && v < cases[i].B && (j == 0 || v > a[r * S + j - 1]),
                          "subset %d not sorted distinct in [0,%d)", r, cases[i].B);
                }
            free(a);
            free(b);
        }
        vit_free(&vit);
        param_table_free(&tab);
    }
}
