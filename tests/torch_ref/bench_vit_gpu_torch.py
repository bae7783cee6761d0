#!/usr/bin/env python3
"""PyTorch baseline for tools/bench_vit_gpu.c: the same DINOv2 ViT, the same multi-crop batch
(per image 2 x 224 px + 8 x 98 px crops by default), forward + backward of the student backbone from
a fixed output gradient, no head, no stochastic depth, no teacher.

A strong baseline, not a weak one: bf16 autocast (fp32 master weights, as ours), attention through
torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels), fused AdamW is
not involved (no optimizer step in either benchmark), TF32 allowed for any fp32 matmul left, and
torch.compile of the model (mode "default" and, when asked, "max-autotune-no-cudagraphs") where it
helps: every mode is timed and each is reported, so the best one is the baseline.

Written for a recent PyTorch (>= 2.1) on a CUDA GPU; it will not run on the build machines (Debian's
torch 1.13 has no scaled_dot_product_attention and no GPU). Prints one machine-readable line per
measurement:
  RESULT impl=torch-eager arch=vit_large batch=32 img_per_s=... step_ms=... fwd_ms=... bwd_ms=... \
         model_tflops=... peak_tflops=... mfu=... status=ok
"""
import argparse
import math
import sys
import time

ARCHS = {  # dim, depth, heads (the reference's vit_small ... vit_giant2)
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_giant2": (1536, 40, 24),
}


def build_model(torch, arch, patch, img_size, registers, ffn):
    nn = torch.nn
    F = torch.nn.functional
    dim, depth, heads = ARCHS[arch]
    hidden = 4 * dim if ffn == "mlp" else (4 * dim * 2 // 3 + 7) // 8 * 8

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            B, T, _ = x.shape
            qkv = self.qkv(x).reshape(B, T, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            return self.proj(o.transpose(1, 2).reshape(B, T, dim))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x)))

    class SwiGLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.w12 = nn.Linear(dim, 2 * hidden)
            self.w3 = nn.Linear(hidden, dim)

        def forward(self, x):
            a, g = self.w12(x).chunk(2, dim=-1)
            return self.w3(F.silu(a) * g)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention()
            self.ls1 = nn.Parameter(torch.full((dim,), 0.1))
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp() if ffn == "mlp" else SwiGLU()
            self.ls2 = nn.Parameter(torch.full((dim,), 0.1))

        def forward(self, x):
            x = x + self.ls1 * self.attn(self.norm1(x))
            return x + self.ls2 * self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.grid = img_size // patch
            self.patch_embed = nn.Conv2d(3, dim, patch, patch)
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
            self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid * self.grid, dim) * 0.02)
            self.register_tokens = nn.Parameter(torch.randn(1, registers, dim) * 1e-6) if registers else None
            self.blocks = nn.ModuleList([Block() for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)

        def pos(self, g):
            if g == self.grid:
                return self.pos_embed
            p = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
            sf = (g + 0.1) / self.grid  # the reference's interpolate_offset 0.1
            p = F.interpolate(p.float(), scale_factor=(sf, sf), mode="bicubic", align_corners=False)
            p = p.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, g * g, dim)
            return torch.cat([self.pos_embed[:, :1], p], dim=1)

        def forward(self, img):
            B = img.shape[0]
            g = img.shape[-1] // patch
            x = self.patch_embed(img).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.pos(g)
            if self.register_tokens is not None:
                x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
            for blk in self.blocks:
                x = blk(x)
            return self.norm(x)

    return ViT()


def step_flops(arch, patch, registers, ffn, n, crop):
    """Same count as tools/bench_vit_gpu.c (vit_step_flops)."""
    dim, depth, _ = ARCHS[arch]
    hidden = 4 * dim if ffn == "mlp" else (4 * dim * 2 // 3 + 7) // 8 * 8
    ffn_out = hidden if ffn == "mlp" else 2 * hidden
    N = (crop // patch) ** 2
    T = 1 + registers + N
    block_w = 3 * dim * dim + dim * dim + dim * ffn_out + hidden * dim
    f = 6.0 * block_w * depth * T + 12.0 * depth * dim * T * T + 4.0 * N * 3 * patch * patch * dim
    return f * n


def measure_peak(torch, n=8192, iters=20):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(iters):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        a @ b
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
    ts.sort()
    return 2.0 * n ** 3 / (ts[len(ts) // 2] * 1e-3) / 1e12


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_small", choices=sorted(ARCHS))
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--global-crops", type=int, default=2)
    ap.add_argument("--local-crops", type=int, default=8)
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=98)
    ap.add_argument("--patch", type=int, default=14)
    ap.add_argument("--registers", type=int, default=0)
    ap.add_argument("--ffn", default="mlp", choices=["mlp", "swiglu"])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", default="eager,compile",
                    help="comma list of eager, compile (torch.compile default), compile-max (max-autotune-no-cudagraphs)")
    ap.add_argument("--peak-tflops", type=float, default=-1, help="MFU denominator; measured here when <= 0")
    args = ap.parse_args()

    try:
        import torch
    except Exception as e:  # noqa: BLE001
        print(f"RESULT impl=torch arch={args.arch} status=no-torch ({e})")
        return 3
    if not torch.cuda.is_available():
        print(f"RESULT impl=torch arch={args.arch} status=no-cuda torch={torch.__version__}")
        return 3
    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        print(f"RESULT impl=torch arch={args.arch} status=torch-too-old torch={torch.__version__}")
        return 3
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.cuda.get_device_name(0)
    peak = args.peak_tflops if args.peak_tflops > 0 else measure_peak(torch)
    print(f"torch {torch.__version__} on {dev}: bf16 matmul {peak:.1f} TFLOP/s", flush=True)

    torch.manual_seed(0)
    model = build_model(torch, args.arch, args.patch, args.global_size, args.registers, args.ffn).cuda()
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{args.arch}/{args.patch}: {nparams / 1e6:.1f}M params", flush=True)

    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode == "eager":
            fwd = model
        elif mode in ("compile", "compile-max"):
            if not hasattr(torch, "compile"):
                print(f"RESULT impl=torch-{mode} arch={args.arch} status=no-torch.compile")
                continue
            kw = {"mode": "max-autotune-no-cudagraphs"} if mode == "compile-max" else {}
            fwd = torch.compile(model, dynamic=False, **kw)
        else:
            print(f"unknown mode {mode}", file=sys.stderr)
            continue
        for B in args.batch:
            groups = [(B * args.global_crops, args.global_size), (B * args.local_crops, args.local_size)]
            groups = [(n, s) for n, s in groups if n > 0]
            flops = sum(step_flops(args.arch, args.patch, args.registers, args.ffn, n, s) for n, s in groups)
            tag = f"impl=torch-{mode} arch={args.arch} batch={B}"
            try:
                imgs = [torch.randn(n, 3, s, s, device="cuda") for n, s in groups]
                T = [1 + args.registers + (s // args.patch) ** 2 for _, s in groups]
                dim = ARCHS[args.arch][0]
                douts = [1e-3 * torch.randn(n, t, dim, device="cuda") for (n, _), t in zip(groups, T)]
                t_fwd = t_bwd = t_step = 0.0
                t_compile = time.perf_counter()
                for it in range(args.warmup + args.iters):
                    model.zero_grad(set_to_none=False)
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        outs = [fwd(x) for x in imgs]
                    torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    torch.autograd.backward([o.float() for o in outs], douts)
                    torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    if it == args.warmup - 1:
                        print(f"  {mode} batch {B}: warm-up (incl. compilation) {t2 - t_compile:.1f} s", flush=True)
                    if it >= args.warmup:
                        t_fwd += t1 - t0
                        t_bwd += t2 - t1
                        t_step += t2 - t0
                    del outs
                n = args.iters
                t_fwd, t_bwd, t_step = t_fwd / n, t_bwd / n, t_step / n
                tfl = flops / t_step / 1e12
                print(f"RESULT {tag} img_per_s={B / t_step:.2f} step_ms={1e3 * t_step:.2f} fwd_ms={1e3 * t_fwd:.2f} "
                      f"bwd_ms={1e3 * t_bwd:.2f} model_tflops={tfl:.2f} peak_tflops={peak:.1f} mfu={tfl / peak:.4f} "
                      f"max_mem_gib={torch.cuda.max_memory_allocated() / 2**30:.1f} status=ok", flush=True)
            except torch.cuda.OutOfMemoryError:
                print(f"RESULT {tag} status=oom", flush=True)
            except Exception as e:  # noqa: BLE001  a compile failure must not hide the other measurements
                msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
                print(f"RESULT {tag} status=error ({type(e).__name__}: {msg})", flush=True)
            finally:
                imgs = douts = None
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
