// The step's scalar block (model/step_scalars.h) on the cpu backend: the NaN guard keeps the whole state
// bit for bit (read at once or late), the device-side check raises the flag by itself, and the update's
// preparation (clip coefficients, AdamW's count and bias corrections) computes what the host did.
// (That the block changes no bit of a normal step is what the existing step, optimizer and trainer
// tests check: they pass unchanged; train.resume_is_bit_exact covers a count set from a checkpoint.)
#include "tests/step_scalars_check.h"

#include "model/backend.h"
#include "train/optim.h"

TEST(nan_steps_leave_the_state_bit_identical) {
    Backend *be = backend_cpu_new();
    ss_nan_steps_leave_state(be, 0);
    backend_free(be);
}

TEST(nan_steps_read_late_leave_the_state_bit_identical) {
    Backend *be = backend_cpu_new();
    ss_nan_steps_leave_state(be, 1);
    backend_free(be);
}

// The loss checks on the device raise the flag on their own: with the host's own upload of the flag
// dropped, a NaN batch still leaves the update a no-op.
static void *g_flag;
static void (*g_to_device)(Backend *, void *, const void *, size_t);
static void to_device_without_flag(Backend *be, void *dst, const void *src, size_t bytes) {
    if (dst != g_flag) g_to_device(be, dst, src, bytes);
}

TEST(the_device_raises_the_nan_flag_by_itself) {
    Backend *be = backend_cpu_new();
    char err[DINO_ERRLEN];
    SslConfig cfg;
    ss_small_config(&cfg);
    SslModel m;
    CHECK(ssl_model_init(&m, be, &cfg, 7, err) == 0, "%s", err);
    SsBatch b0 = ss_batch(&cfg, 0, 0), bn = ss_batch(&cfg, 1, 1);
    SslStepStats st;
    CHECK(ssl_step(&m, be, NULL, &b0.b, &b0.sv, &st, err) == 0, "%s", err);
    SsState before = ss_state_read(&m, be);
    g_flag = &m.scalars->out.nonfinite, g_to_device = be->to_device, be->to_device = to_device_without_flag;
    CHECK(ssl_forward_backward(&m, be, NULL, &bn.b, &bn.sv, &st, err) != 0, "a NaN batch passed");
    CHECK(m.scalars->out.nonfinite == 1, "the device's loss checks did not raise the NaN flag");
    ssl_update(&m, be, &bn.sv, &st);
    CHECK(ssl_read_step_stats(&m, be, &st) != 0, "the NaN step read as applied");
    be->to_device = g_to_device;
    SsState after = ss_state_read(&m, be);
    ss_state_check_same(&m, &before, &after, "a NaN step flagged by the device only");
    ss_state_free(&before), ss_state_free(&after), ss_batch_free(&b0), ss_batch_free(&bn);
    ssl_model_free(&m, be);
    backend_free(be);
}

// update_prepare_ss: clip_coef of train/optim.c per group; AdamW's count advances unless the step is not
// finite, takes a count the host sets, and the bias corrections are the host's pow whether the step is in
// the host's window or not.
TEST(update_prepare_computes_what_the_host_did) {
    Backend *be = backend_cpu_new();
    DinoStepScalars *ss = be->alloc(be, sizeof *ss);
    AdamW opt = {.beta1 = 0.9f, .beta2 = 0.999f, .step = 6};
    adamw_fill_scalars(&opt, ss, 1e-3, 1e-3, 0.04);
    ss->in.adam_step_set = -1;
    ss->state.adam_step = 6;
    const double sums[3] = {25.0, 1e-4, 0};
    for (int g = 0; g < 3; g++) ss->out.grad_ss[g] = sums[g];
    be->update_prepare_ss(be, 3, 3.0, opt.beta1, opt.beta2, ss);
    for (int g = 0; g < 3; g++)
        CHECK(ss->out.clip_coef[g] == clip_coef(sqrt(sums[g]), 3.0), "group %d: clip coefficient %.17g, host %.17g", g,
              ss->out.clip_coef[g], clip_coef(sqrt(sums[g]), 3.0));
    CHECK(ss->out.clip_coef[0] < 1 && ss->out.clip_coef[1] == 1, "a norm of 5 is clipped to 3, one of 0.01 is not");
    CHECK(ss->state.adam_step == 7 && ss->out.bias1 == 1.0 - pow(0.9f, 7.0) && ss->out.bias2 == 1.0 - pow(0.999f, 7.0),
          "step 7: count %g, bias corrections %.17g %.17g", ss->state.adam_step, ss->out.bias1, ss->out.bias2);
    // the device behind the host's window (more skipped steps than it holds): pow on the device, same bits
    ss->state.adam_step = 1;
    be->update_prepare_ss(be, 3, 3.0, opt.beta1, opt.beta2, ss);
    CHECK(ss->state.adam_step == 2 && ss->out.bias1 == 1.0 - pow(0.9f, 2.0) && ss->out.bias2 == 1.0 - pow(0.999f, 2.0),
          "step 2 outside the window: count %g, bias corrections %.17g %.17g", ss->state.adam_step, ss->out.bias1,
          ss->out.bias2);
    // a count set by the host (a checkpoint), and a step not applied
    ss->in.adam_step_set = 4;
    be->update_prepare_ss(be, 3, 3.0, opt.beta1, opt.beta2, ss);
    CHECK(ss->state.adam_step == 5 && ss->out.bias1 == 1.0 - pow(0.9f, 5.0), "count set to 4: now %g",
          ss->state.adam_step);
    ss->out.nonfinite = 1, ss->in.adam_step_set = -1;
    be->update_prepare_ss(be, 3, 0.0, opt.beta1, opt.beta2, ss);
    CHECK(ss->state.adam_step == 5, "a step not applied advanced the count to %g", ss->state.adam_step);
    CHECK(ss->out.clip_coef[0] == 1.0, "clipping off (max_norm 0): coefficient %g", ss->out.clip_coef[0]);
    be->release(be, ss);
    backend_free(be);
}

// A count the host sets (a resumed checkpoint: opt.step = 5 while the device block still says 0) reaches
// the device even when that first step is skipped, with its update issued (the trainer) or never issued (a
// skipped distillation step): the next good step is AdamW's step 6 on both sides and gives the bits of a
// model that took the good step right after the resume. (Before: the device kept 0 and counted 1, 2, ...,
// AdamW's bias correction restarting as for a fresh optimizer.)
TEST(a_resumed_count_survives_a_skipped_first_step) {
    char err[DINO_ERRLEN];
    SslConfig cfg;
    ss_small_config(&cfg);
    for (int issued = 0; issued < 2; issued++) {
        Backend *be = backend_cpu_new();
        SslModel a, b;
        CHECK(ssl_model_init(&a, be, &cfg, 7, err) == 0 && ssl_model_init(&b, be, &cfg, 7, err) == 0, "%s", err);
        a.opt.step = b.opt.step = 5; // as a checkpoint's adamw.step sets it
        SsBatch bn = ss_batch(&cfg, 1, 1), b2 = ss_batch(&cfg, 2, 0);
        SslStepStats st;
        if (issued) {
            CHECK(ssl_step(&a, be, NULL, &bn.b, &bn.sv, &st, err) != 0, "a NaN batch passed");
        } else { // distillation skips the update: the student's state is as before (restored here: the SSL
                 // forward moved the centres, which the update's revert would have put back)
            SsState before = ss_state_read(&a, be);
            CHECK(ssl_forward_backward(&a, be, NULL, &bn.b, &bn.sv, &st, err) != 0, "a NaN batch passed");
            ss_state_write(&a, be, &before);
            ss_state_free(&before);
        }
        CHECK(ssl_step(&a, be, NULL, &b2.b, &b2.sv, &st, err) == 0, "%s", err);
        CHECK(ssl_step(&b, be, NULL, &b2.b, &b2.sv, &st, err) == 0, "%s", err);
        SsState sa = ss_state_read(&a, be), sb = ss_state_read(&b, be);
        CHECK(sa.step == 6 && sa.block.state.adam_step == 6 && sb.block.state.adam_step == 6,
              "update %s: AdamW's count %ld on the host, %g on the device (6 expected)", issued ? "issued" : "not issued",
              sa.step, sa.block.state.adam_step);
        ss_state_check_same(&a, &sb, &sa, issued ? "a skipped first step after a resume, then a good step"
                                                 : "a first step without an update after a resume, then a good step");
        ss_state_free(&sa), ss_state_free(&sb);
        ss_batch_free(&bn), ss_batch_free(&b2);
        ssl_model_free(&a, be), ssl_model_free(&b, be);
        backend_free(be);
    }
}
