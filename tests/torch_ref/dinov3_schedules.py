"""DINOv3's schedules, transcribed for the fixtures of tests/test_schedule.c.

Transcribes dinov3/train/cosine_lr_scheduler.py (CosineScheduler with trunc_extra, and
linear_warmup_cosine_decay) and dinov3/train/train.py build_schedulers_v2 (the `schedules:` section:
lr / weight_decay / momentum / teacher_temp, the lr scaling rules applied to lr peak and end, the
last-layer lr zeroed for freeze_last_layer_epochs). numpy only, float64, as the official code.
"""
import math

import numpy as np


class CosineScheduler:
    """dinov3/train/cosine_lr_scheduler.py CosineScheduler."""

    def __init__(self, base_value, final_value, total_iters, warmup_iters=0, start_warmup_value=0,
                 freeze_iters=0, trunc_extra=0.0):
        self.final_value = np.float64(final_value)
        self.total_iters = total_iters
        freeze_schedule = np.zeros((freeze_iters))
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
        if trunc_extra == 0.0:
            iters = np.arange(total_iters - warmup_iters - freeze_iters)
            schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
        else:
            cosine_steps = total_iters - warmup_iters - freeze_iters
            iters = np.linspace(0, np.pi, int((1 + trunc_extra) * cosine_steps))[:cosine_steps]
            schedule = np.cos(iters)
            schedule = (schedule + 1) / 2
            schedule = (schedule - schedule[-1]) / (1 - schedule[-1])
            schedule = schedule * (base_value - final_value) + final_value
        self.schedule = np.concatenate((freeze_schedule, warmup_schedule, schedule), dtype=np.float64)
        assert len(self.schedule) == self.total_iters

    def __getitem__(self, it):
        if it >= self.total_iters:
            return self.final_value
        return self.schedule[it]


def linear_warmup_cosine_decay(start, peak, end, warmup_iterations, total_iterations, cosine_iterations=None):
    """dinov3/train/cosine_lr_scheduler.py linear_warmup_cosine_decay."""
    linear = np.linspace(start, peak, warmup_iterations, endpoint=False)
    if cosine_iterations is None:
        cosine_iterations = total_iterations - warmup_iterations
    cosine = np.cos(np.linspace(0, np.pi, cosine_iterations))
    cosine = (cosine + 1) / 2
    cosine = (peak - end) * cosine + end
    remaining_iterations = total_iterations - cosine_iterations - warmup_iterations
    assert remaining_iterations >= 0
    constant = np.full((remaining_iterations,), fill_value=end)
    return np.concatenate([linear, cosine, constant])


def build_schedulers_v2(cfg, world_size):
    """dinov3/train/train.py build_schedulers_v2; cfg is a dict of dicts (the YAML), world_size the ranks."""
    iter_per_epoch = cfg["train"]["OFFICIAL_EPOCH_LENGTH"]
    total_iterations = iter_per_epoch * cfg["optim"]["epochs"]
    s = cfg["schedules"]
    lr_peak, lr_end = s["lr"]["peak"], s["lr"]["end"]
    global_batch = cfg["train"]["batch_size_per_gpu"] * world_size
    if cfg["optim"]["scaling_rule"] == "linear_wrt_256":
        lr_peak *= global_batch / 256.0
        lr_end *= global_batch / 256.0
    elif cfg["optim"]["scaling_rule"] == "sqrt_wrt_1024":
        lr_peak *= 4 * math.sqrt(global_batch / 1024.0)
        lr_end *= 4 * math.sqrt(global_batch / 1024.0)

    def one(name, peak=None, end=None):
        c = s[name]
        return linear_warmup_cosine_decay(
            start=c["start"], peak=c["peak"] if peak is None else peak, end=c["end"] if end is None else end,
            warmup_iterations=iter_per_epoch * c["warmup_epochs"], total_iterations=total_iterations,
            cosine_iterations=iter_per_epoch * c["cosine_epochs"] if "cosine_epochs" in c else None)

    lr = one("lr", lr_peak, lr_end)
    last_layer_lr = lr.copy()
    last_layer_lr[: iter_per_epoch * s["lr"]["freeze_last_layer_epochs"]] = 0
    return lr, one("weight_decay"), one("momentum"), one("teacher_temp"), last_layer_lr
