#!/usr/bin/python3
"""Writes tests/fixtures/schedules_dinov3.txt (read by tests/test_schedule.c) from the transcription of
DINOv3's schedulers (tests/torch_ref/dinov3_schedules.py).

Run with Debian's interpreter:  /usr/bin/python3 tests/make_schedule_fixtures.py

Lines (values printed with 17 significant digits, so they read back exactly):
  W start peak end warmup total cosine      linear_warmup_cosine_decay (cosine -1 = None)
  C base final total warmup start_warmup freeze trunc_extra    CosineScheduler
  v it value                                a value of the last W or C at iteration it
  R world key=value key=value ...           build_schedulers_v2 of the config these overrides give
  r it lr wd momentum teacher_temp last_layer_lr
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "torch_ref"))
from dinov3_schedules import CosineScheduler, build_schedulers_v2, linear_warmup_cosine_decay  # noqa: E402

OUT = os.path.join(HERE, "fixtures", "schedules_dinov3.txt")


def g(x):
    return "%.17g" % x


def sample(total):
    """Every iteration of a short schedule; for a long one the edges of each part and a spread between."""
    if total <= 64:
        return list(range(total + 2))
    its = set(range(0, 5)) | set(range(total - 3, total + 2)) | set(range(0, total, max(1, total // 37)))
    return sorted(its)


def main():
    lines = []
    # linear warm-up, cosine, constant tail: (start, peak, end, warmup, total, cosine)
    for start, peak, end, warmup, total, cosine in [
        (0.0, 1e-3, 1e-6, 10, 50, None),       # warm-up then cosine to the end
        (0.2, 1.0, 0.1, 4, 20, 9),            # constant tail after a shorter cosine
        (0.04, 0.07, 0.07, 7, 30, None),      # teacher temperature style
        (0.5, 0.5, 0.5, 0, 12, 0),            # local_loss_weight_schedule of the high-res config: constant
        (1.0, 1.0, 0.5, 5, 9, 1),             # gram-anchor style: a one-iteration cosine is the peak
        (0.0, 0.0, 1.25e-5, 0, 30000, 10000),  # high-res lr: cosine *up* from 0, then constant
        (0.0, 5e-5, 5e-5, 100000, 1000000, None),  # 7B pretrain lr
    ]:
        lines.append("W %s %s %s %d %d %d" % (g(start), g(peak), g(end), warmup, total, -1 if cosine is None else cosine))
        sched = linear_warmup_cosine_decay(start, peak, end, warmup, total, cosine)
        for it in sample(total):
            if it < total:  # the official array ends there (an index past it is an error)
                lines.append("v %d %s" % (it, g(sched[it])))
    # DINOv3's CosineScheduler (schedules v1), with trunc_extra
    for base, final, total, warmup, start_warmup, freeze, trunc in [
        (1.0, 0.1, 10, 4, 0.2, 0, 0.0),
        (1.0, 0.0, 6, 2, 0.5, 2, 0.0),
        (1e-3, 1e-6, 40, 8, 0.0, 0, 0.25),
        (0.04, 0.4, 33, 0, 0.0, 0, 0.25),
        (0.992, 1.0, 125000, 0, 0.0, 0, 0.25),
        (2e-3, 1e-6, 1000, 100, 0.0, 3, 1.0),
    ]:
        lines.append("C %s %s %d %d %s %d %s" % (g(base), g(final), total, warmup, g(start_warmup), freeze, g(trunc)))
        s = CosineScheduler(base, final, total, warmup, start_warmup, freeze, trunc)
        for it in sample(total):
            lines.append("v %d %s" % (it, g(s[it])))
    # build_schedulers_v2 on whole configs (the YAML given as overrides, read by the C config loader)
    runs = [
        (4, dict(train=dict(OFFICIAL_EPOCH_LENGTH=10, batch_size_per_gpu=8), optim=dict(epochs=6, scaling_rule="sqrt_wrt_1024"),
                 schedules=dict(lr=dict(start=0.0, peak=0.0, end=1.25e-5, warmup_epochs=0, freeze_last_layer_epochs=0, cosine_epochs=2),
                                weight_decay=dict(start=0.04, peak=0.04, end=0.04, warmup_epochs=0),
                                teacher_temp=dict(start=0.07, peak=0.07, end=0.07, warmup_epochs=0),
                                momentum=dict(start=0.999, peak=0.999, end=0.999, warmup_epochs=0)))),
        (3, dict(train=dict(OFFICIAL_EPOCH_LENGTH=7, batch_size_per_gpu=16), optim=dict(epochs=10, scaling_rule="sqrt_wrt_1024"),
                 schedules=dict(lr=dict(start=0.0, peak=5e-5, end=5e-5, warmup_epochs=3, freeze_last_layer_epochs=2),
                                weight_decay=dict(start=0.04, peak=0.04, end=0.2, warmup_epochs=0),
                                teacher_temp=dict(start=0.04, peak=0.07, end=0.07, warmup_epochs=3),
                                momentum=dict(start=0.994, peak=0.994, end=1.0, warmup_epochs=1, cosine_epochs=5)))),
        (2, dict(train=dict(OFFICIAL_EPOCH_LENGTH=5, batch_size_per_gpu=64), optim=dict(epochs=8, scaling_rule="linear_wrt_256"),
                 schedules=dict(lr=dict(start=1e-4, peak=1e-3, end=1e-6, warmup_epochs=2, freeze_last_layer_epochs=1),
                                weight_decay=dict(start=0.01, peak=0.04, end=0.4, warmup_epochs=1),
                                teacher_temp=dict(start=0.04, peak=0.07, end=0.06, warmup_epochs=2, cosine_epochs=4),
                                momentum=dict(start=0.99, peak=0.992, end=1.0, warmup_epochs=0)))),
        (1, dict(train=dict(OFFICIAL_EPOCH_LENGTH=4, batch_size_per_gpu=32), optim=dict(epochs=5, scaling_rule="none"),
                 schedules=dict(lr=dict(start=0.0, peak=2e-3, end=1e-6, warmup_epochs=1, freeze_last_layer_epochs=1),
                                weight_decay=dict(start=0.04, peak=0.04, end=0.04, warmup_epochs=0),
                                teacher_temp=dict(start=0.04, peak=0.07, end=0.07, warmup_epochs=2),
                                momentum=dict(start=0.996, peak=0.996, end=1.0, warmup_epochs=0)))),
    ]
    for world, cfg in runs:
        kv = []
        for sec, d in cfg.items():
            for k, v in d.items():
                if isinstance(v, dict):
                    kv += ["%s.%s.%s=%s" % (sec, k, kk, vv) for kk, vv in v.items()]
                else:
                    kv.append("%s.%s=%s" % (sec, k, v))
        lines.append("R %d %s" % (world, " ".join(kv)))
        lr, wd, mom, tt, lll = build_schedulers_v2(cfg, world)
        for it in range(len(lr)):
            lines.append("r %d %s %s %s %s %s" % (it, g(lr[it]), g(wd[it]), g(mom[it]), g(tt[it]), g(lll[it])))
    with open(OUT, "w") as f:
        f.write("# written by tests/make_schedule_fixtures.py from tests/torch_ref/dinov3_schedules.py\n")
        f.write("\n".join(lines) + "\n")
    print("wrote", OUT, len(lines), "lines")


if __name__ == "__main__":
    main()
