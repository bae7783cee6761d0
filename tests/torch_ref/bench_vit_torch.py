#!/usr/bin/python3
"""The PyTorch side of tools/bench_vit.sh: forward + backward of the same ViT (tests/torch_ref/dinov2_vit.py,
the reference's semantics) on one step's crops, fp32 on the CPU, with the same thread count.

  /usr/bin/python3 tests/torch_ref/bench_vit_torch.py --batch 8 --threads 2
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dinov2_vit import vit_from_arch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--drop-path", type=float, default=0.0)
    ap.add_argument("--arch", default="vit_small")
    ap.add_argument("--patch", type=int, default=14)
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=98)
    ap.add_argument("--n-global", type=int, default=2)
    ap.add_argument("--n-local", type=int, default=8)
    ap.add_argument("--registers", type=int, default=0)
    ap.add_argument("--ffn", default="mlp")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = vit_from_arch(a.arch, patch=a.patch, img_size=a.global_size, n_registers=a.registers, ffn=a.ffn,
                          drop_path_rate=a.drop_path).init_weights().train()
    B = a.batch
    groups = [(a.n_global * B, a.global_size)] + ([(a.n_local * B, a.local_size)] if a.n_local > 0 else [])
    imgs = [torch.randn(n, 3, s, s) for n, s in groups]
    with torch.no_grad():
        dxn = [torch.randn_like(model(x)) for x in imgs]
    tokens = sum(d.shape[0] * d.shape[1] for d in dxn)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"bench_vit_torch: {a.arch}/{a.patch} {a.ffn}, B={B} images x ({a.n_global} x {a.global_size}px + "
          f"{a.n_local} x {a.local_size}px), {tokens} tokens/step, drop_path {a.drop_path:.2f}, "
          f"{torch.get_num_threads()} threads, {nparams} params, torch {torch.__version__}")
    total, best, cpu_total = 0.0, float("inf"), 0.0
    for it in range(a.warmup + a.iters):
        t0, c0 = time.perf_counter(), time.process_time()  # process_time: CPU time of all threads
        model.zero_grad(set_to_none=False)
        loss = sum((model(x) * d).sum() for x, d in zip(imgs, dxn))
        loss.backward()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        print(f"  iter {it}{' (warmup)' if it < a.warmup else ''}: {1e3 * dt:.1f} ms", flush=True)
        if it >= a.warmup:
            total += dt
            cpu_total += dc
            best = min(best, dt)  # the least disturbed by other load on a shared machine
    ms = 1e3 * total / a.iters
    print(f"RESULT impl=torch ms_per_iter={ms:.1f} images_per_s={B / (ms / 1e3):.3f} best_ms={1e3 * best:.1f} "
          f"best_images_per_s={B / best:.3f} cpu_ms={1e3 * cpu_total / a.iters:.1f}")


if __name__ == "__main__":
    main()
