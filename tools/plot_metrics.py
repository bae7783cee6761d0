#!/usr/bin/env python3
"""Render a dinotrain metrics file (JSON lines, one object per logged iteration) to PNG curves.

    /usr/bin/python3 tools/plot_metrics.py out/demo/run/training_metrics.jsonl [-o curves.png]

Three panels: losses (every key containing "loss" plus dino_*, ibot, koleo, kde), schedules (lr and wd on
the left axis, teacher momentum and temperature on the right), throughput (images/s and data-wait share).
Keys that are absent or always null are skipped. Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json
import math
import sys


def read_records(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:  # a torn last line of a killed run
                print(f"plot_metrics: {path}:{n}: skipping unreadable record ({e})", file=sys.stderr)
    return rows


def series(rows, key):
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and "iteration" in r:
            xs.append(r["iteration"])
            ys.append(v)
    return xs, ys


LOSS_KEYS = ("dino_local", "dino_global", "ibot", "koleo", "kde")
LR_KEYS = {"lr": "tab:blue", "last_layer_lr": "tab:cyan", "wd": "tab:orange"}
TEACHER_KEYS = {"momentum": "tab:purple", "mom": "tab:purple", "teacher_temp": "tab:brown"}
SPEED_KEYS = ("images_per_s",)
WAIT_KEYS = ("data_wait_share",)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", help="JSON-lines metrics file written by dinotrain")
    ap.add_argument("-o", "--output", help="PNG path (default: the metrics path with .png)")
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_metrics: matplotlib is not installed (Debian: apt-get install python3-matplotlib)", file=sys.stderr)
        return 2
    rows = read_records(args.metrics)
    if not rows:
        print(f"plot_metrics: {args.metrics} holds no records", file=sys.stderr)
        return 1
    keys = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    out = args.output or (args.metrics.rsplit(".", 1)[0] + ".png")

    fig, (ax_loss, ax_sched, ax_speed) = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    for k in keys:
        if "loss" in k or k in LOSS_KEYS:
            xs, ys = series(rows, k)
            if xs:
                ax_loss.plot(xs, ys, label=k, lw=1.2 if k in ("loss", "total_loss") else 0.9)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(args.metrics)

    right = ax_sched.twinx()
    for k, color in LR_KEYS.items():
        xs, ys = series(rows, k)
        if xs:
            ax_sched.plot(xs, ys, label=k, color=color)
    for k, color in TEACHER_KEYS.items():
        xs, ys = series(rows, k)
        if xs:
            right.plot(xs, ys, "--", label=k, color=color)
    ax_sched.set_ylabel("lr / wd")
    right.set_ylabel("teacher momentum / temperature")

    wait = ax_speed.twinx()
    for k in SPEED_KEYS:
        xs, ys = series(rows, k)
        if xs:
            ax_speed.plot(xs, ys, label=k, color="tab:green")
    for k in WAIT_KEYS:
        xs, ys = series(rows, k)
        if xs:
            wait.plot(xs, ys, ":", label=k, color="tab:red")
    ax_speed.set_ylabel("images / s")
    wait.set_ylabel("data-wait share")
    wait.set_ylim(0, 1)
    ax_speed.set_xlabel("iteration")

    for ax, other in ((ax_loss, None), (ax_sched, right), (ax_speed, wait)):
        handles, labels = ax.get_legend_handles_labels()
        if other is not None:
            h2, l2 = other.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            ax.legend(handles, labels, loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"plot_metrics: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
