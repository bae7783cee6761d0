// Collapse diagnostics (issue #14; docs/training.md, "Reading the collapse diagnostics"). A DINO run can
// collapse in three ways the losses alone do not show:
//   head uniform     the teacher's targets are (near) uniform over the K prototypes: entropy ~ ln K, the
//                    DINO loss ~ ln K too, and the student learns nothing (margin ln K - entropy ~ 0);
//   one prototype    every image goes to the same prototype (usage ~ 1/K, targets sharp and identical);
//   backbone constant the teacher's features no longer vary across images (RankMe ~ 1, per-dim std ~ 0).
// The trainer feeds the tracker the per-step diagnostics (SslDiag) of the last few steps of each logging
// window and asks for a verdict at each log line.
#pragma once
#include <stdint.h>

// Thresholds (documented in docs/training.md): a verdict names a collapse only when the condition holds
// at COLLAPSE_PATIENCE log lines in a row, past the learning-rate warm-up.
#define COLLAPSE_MIN_MARGIN_FRAC 0.01 // margin below 1% of ln K: head uniform
#define COLLAPSE_MAX_PROTOTYPES 1     // distinct teacher argmax prototypes over the window: one prototype
#define COLLAPSE_MAX_TOP_SHARE 0.9    // or the most used prototype takes more than this share of the rows
#define COLLAPSE_MIN_RANKME 1.5       // teacher CLS RankMe below (and the std below): backbone constant
#define COLLAPSE_MIN_FEATURE_STD 1e-3 // mean per-dim std of the L2-normalised teacher CLS below: backbone constant
#define COLLAPSE_PATIENCE 3

typedef struct {
    int K, D, rows_per_step, max_steps; // window: the last max_steps diagnosed steps
    int *argmax;                        // [max_steps * rows_per_step] ring
    float *cls, *patch;                 // [max_steps * rows_per_step * D] rings
    int steps, next;                    // steps held (<= max_steps), next slot
    double agree_sum;
    int agree_n;
    int bad_in_row;                     // log lines in a row with a collapse condition
} CollapseTracker;

typedef struct {
    double margin;         // ln K - mean teacher entropy (DINO), nats; filled by the caller
    double ibot_margin;    // the same for iBOT (NaN when iBOT is off); filled by the caller
    double usage;          // distinct teacher argmax prototypes over the window / K
    int prototypes;        // distinct teacher argmax prototypes over the window
    double top_share;      // share of the window's rows whose argmax is the most used prototype
    double agreement;      // student-teacher argmax match over the window
    double rankme_cls, rankme_patch; // RankMe of the teacher's CLS and mean-patch features over the window
    double std_cls, std_patch;       // mean per-dim std of those features (L2-normalised)
    const char *collapse;  // NULL, or what collapsed now: "head uniform", "one prototype", "backbone constant"
    int confirmed;         // the condition held at COLLAPSE_PATIENCE log lines in a row
} CollapseReport;

void collapse_init(CollapseTracker *t, int K, int D, int rows_per_step, int max_steps);
void collapse_free(CollapseTracker *t);
// One diagnosed step's data (rows_per_step rows).
void collapse_add(CollapseTracker *t, const int *argmax, const float *cls, const float *patch, double agreement);
// The window's statistics and verdict; margin/ibot_margin come from the caller (the step's entropies).
// past_warmup = 0 never confirms (the head is near uniform at init). Resets the agreement average.
void collapse_report(CollapseTracker *t, double margin, double ibot_margin, int past_warmup, CollapseReport *r);

// RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of X [n,D]
// (1 = rank one, min(n, D) = all singular values equal). Scratch-free; O(min(n,D)^2 max(n,D)).
double collapse_rankme(const float *X, int n, int D);
// Mean over dimensions of the std over rows of the L2-normalised rows of X [n,D].
double collapse_feature_std(const float *X, int n, int D);
