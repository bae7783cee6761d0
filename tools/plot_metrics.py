#!/usr/bin/env python3
"""Render a dinotrain metrics file (JSON lines, one object per logged iteration) to PNG curves.

    /usr/bin/python3 tools/plot_metrics.py out/demo/run/training_metrics.jsonl [-o curves.png]

Panels: losses (every key containing "loss" plus dino_*, ibot, koleo, kde), schedules (lr and wd on the left
axis, teacher momentum and temperature on the right), throughput (images/s and data-wait share), and, when
the run logged them, the collapse diagnostics (docs/training.md, "Reading the collapse diagnostics"): the
head (entropy margins ln K - H on the left, prototype usage and student-teacher agreement on the right) and
the backbone (teacher RankMe of CLS and mean patch, its value at init dashed, on the left; per-dimension
feature std and k-NN accuracy, init dashed, on the right). Log lines where a collapse was named are
marked in red on both.
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
HEAD_KEYS = {"dino_margin": "tab:blue", "ibot_margin": "tab:cyan"}
HEAD_SHARE_KEYS = {"prototype_usage": "tab:orange", "agreement": "tab:green"}
RANK_KEYS = {"rankme_cls": "tab:blue", "rankme_patch": "tab:cyan"}
STD_KEYS = {"feature_std_cls": "tab:orange", "feature_std_patch": "tab:olive", "knn_top1_k20": "tab:red"}


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

    diag = any(k in keys for k in HEAD_KEYS)
    if diag:
        fig, (ax_loss, ax_sched, ax_speed, ax_head, ax_rank) = plt.subplots(5, 1, figsize=(10, 17), sharex=True)
    else:
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
    panels = [(ax_loss, None), (ax_sched, right), (ax_speed, wait)]

    if diag:  # collapse diagnostics
        share = ax_head.twinx()
        for k, color in HEAD_KEYS.items():
            xs, ys = series(rows, k)
            if xs:
                ax_head.plot(xs, ys, label=k + " (ln K - H)", color=color)
        for k, color in HEAD_SHARE_KEYS.items():
            xs, ys = series(rows, k)
            if xs:
                share.plot(xs, ys, "--", label=k, color=color)
        ax_head.set_ylabel("entropy margin (nats)")
        share.set_ylabel("usage / agreement")
        share.set_ylim(0, 1.05)
        right2 = ax_rank.twinx()
        for k, color in RANK_KEYS.items():
            xs, ys = series(rows, k)
            if xs:
                ax_rank.plot(xs, ys, label=k, color=color)
        for r in rows:
            if isinstance(r.get("rankme_cls_init"), (int, float)):
                ax_rank.axhline(r["rankme_cls_init"], ls="--", color="tab:blue", lw=0.8, label="rankme_cls at init")
            if isinstance(r.get("knn_top1_k20_init"), (int, float)):
                right2.axhline(r["knn_top1_k20_init"], ls="--", color="tab:red", lw=0.8, label="k-NN at init")
        for k, color in STD_KEYS.items():
            xs, ys = series(rows, k)
            if xs:
                right2.plot(xs, ys, ":" if k.startswith("feature") else "-o", ms=3, label=k, color=color)
        ax_rank.set_ylabel("teacher RankMe")
        right2.set_ylabel("feature std / k-NN top-1")
        ax_rank.set_xlabel("iteration")
        bad = [r["iteration"] for r in rows if r.get("collapse") and "iteration" in r]
        for ax in (ax_head, ax_rank):
            for x in bad:
                ax.axvline(x, color="red", alpha=0.15, lw=2)
        if bad:
            ax_head.set_title("collapse named at %d log line(s): %s" % (
                len(bad), ", ".join(sorted({r["collapse"] for r in rows if r.get("collapse")}))), color="red")
        panels += [(ax_head, share), (ax_rank, right2)]

    for ax, other in panels:
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
