#!/usr/bin/env python3
"""PyTorch baseline for tools/bench_step.c: the whole DINOv2 training step, as the reference's
SSLMetaArch.forward_backward plus the optimizer and EMA of its train loop (the step of
tests/make_objective_fixtures.py, the objective's parity reference), on one device:
  teacher backbone on the 2B global crops (no grad) -> CLS swapped [g2; g1] + masked patch tokens ->
  shared DINO/iBOT head -> softmax centering; student backbone on the global crops (iBOT block masks)
  and the local crops -> head on [local CLS; global CLS; masked patches] -> DINO local/global, iBOT,
  KoLeo losses -> backward -> clip_grad_norm_(3.0) per submodule -> AdamW on the reference's param
  groups (merged by multiplier, as the reference's fuse_params_groups) -> EMA teacher.

A strong baseline on a GPU: bf16 autocast (fp32 master weights, as ours), attention through
scaled_dot_product_attention where torch has it, AdamW with fused=True (foreach otherwise), the EMA with
torch._foreach ops, and torch.compile of the backbones and heads (mode "compile"); each mode is timed
and reported. On a CPU (Debian's torch 1.13, no SDPA) it runs the same step in fp32 eagerly, for the
CPU comparison in BENCHMARKS.md. Prints one line per measurement:
  RESULT impl=torch-step-eager arch=vit_large batch=32 img_per_s=... step_ms=... fwd_bwd_ms=... \
         update_ms=... model_tflops=... status=ok
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vit_small")
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--local", type=int, default=8)
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=98)
    ap.add_argument("--patch", type=int, default=14)
    ap.add_argument("--registers", type=int, default=0)
    ap.add_argument("--ffn", default="mlp", choices=["mlp", "swiglu"])
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--K", type=int, default=65536)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU: torch.set_num_threads (0 = leave it)")
    ap.add_argument("--modes", default="eager,compile", help="comma list of eager, compile")
    ap.add_argument("--peak-tflops", type=float, default=-1, help="MFU denominator (GPU); none when <= 0")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
        from dinov2_vit import vit_from_arch
        from make_objective_fixtures import DINOHead, ce_sum, koleo, make_masks, param_groups
    except Exception as e:  # noqa: BLE001
        print(f"RESULT impl=torch-step arch={args.arch} status=no-torch ({e})")
        return 3
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    has_sdpa = hasattr(F, "scaled_dot_product_attention")
    if has_sdpa:  # the reference's memory-efficient attention: swap in torch's fused kernel
        import dinov2_vit

        def sdpa_forward(self, x):
            B, T, D = x.shape
            qkv = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            return self.proj(o.transpose(1, 2).reshape(B, T, D))

        dinov2_vit.Attention.forward = sdpa_forward
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0) if cuda else 'cpu'} "
          f"(threads {torch.get_num_threads()}), attention {'SDPA' if has_sdpa else 'written out'}, "
          f"{'bf16 autocast' if cuda else 'fp32'}", flush=True)

    torch.manual_seed(0)
    def make_backbone():
        m = vit_from_arch(args.arch, args.patch, args.global_size, args.registers, args.ffn).init_weights()
        if args.depth > 0:  # fewer blocks (smoke tests)
            m.blocks = m.blocks[:args.depth]
        return m

    backbone = make_backbone()
    D = backbone.cfg["dim"]
    student = torch.nn.ModuleDict({"backbone": backbone, "dino_head": DINOHead(D, args.K, 2048, 256, 3)}).to(dev)
    teacher = torch.nn.ModuleDict({"backbone": make_backbone(), "dino_head": DINOHead(D, args.K, 2048, 256, 3)}).to(dev)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    nparams = sum(p.numel() for p in student.parameters())
    # the reference's param groups, merged by (lr, wd, last-layer) multipliers
    merged = {}
    for g in param_groups(student, 0.9, 0.2):
        key = (g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"])
        merged.setdefault(key, []).extend(g["params"])
    groups = [{"params": ps, "lr": 1e-4 * k[0], "weight_decay": 0.04 * k[1]} for k, ps in merged.items()]
    opt_kw = {}
    if cuda:
        opt_kw = {"fused": True}
    try:
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), **opt_kw)
    except TypeError:
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    s_params = list(student.parameters())
    t_params = list(teacher.parameters())
    center = torch.zeros(1, args.K, device=dev)
    center_i = torch.zeros(1, args.K, device=dev)

    nL, G, L, p = args.local, args.global_size, args.local_size, args.patch
    N = (G // p) ** 2
    R = args.registers
    dim, depth = D, len(backbone.blocks)
    hidden = backbone.cfg["ffn_hidden"]
    ffn_out = hidden if backbone.cfg["ffn"] == "mlp" else 2 * hidden

    def vit_fwd_flops(n, crop):  # forward only; tools/bench_step.c's count (model/vit.c vit_flops)
        Nn = (crop // p) ** 2
        T = 1 + R + Nn
        bw = 3 * dim * dim + dim * dim + dim * ffn_out + hidden * dim
        return n * (2 * bw * depth * T + 4 * depth * dim * T * T + 2 * Nn * 3 * p * p * dim)

    head_row = 2 * (D * 2048 + 2048 * 2048 + 2048 * 256 + 256 * args.K)

    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode == "eager":
            sb, tb, sh, th = student["backbone"], teacher["backbone"], student["dino_head"], teacher["dino_head"]
        elif mode == "compile":
            if not hasattr(torch, "compile"):
                print(f"RESULT impl=torch-step-{mode} arch={args.arch} status=no-torch.compile", flush=True)
                continue
            sb, tb = torch.compile(student["backbone"]), torch.compile(teacher["backbone"])
            sh, th = torch.compile(student["dino_head"]), torch.compile(teacher["dino_head"])
        else:
            print(f"unknown mode {mode}", file=sys.stderr)
            continue
        for B in args.batch:
            tag = f"impl=torch-step-{mode} arch={args.arch} batch={B}"
            try:
                gen = torch.Generator().manual_seed(1)
                gx = torch.randn(2 * B, 3, G, G, device=dev)
                lx = torch.randn(nL * B, 3, L, L, device=dev)
                t_fb = t_up = t_step = flops = 0.0
                autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
                for it in range(args.warmup + args.iters):
                    masks = make_masks(2 * B, N, gen).to(dev)
                    mask_idx = masks.flatten().nonzero().flatten()
                    n_m = mask_idx.numel()
                    masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
                    if cuda:
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    with autocast:
                        with torch.no_grad():
                            txn = tb(gx)
                            tcls = txn[:, 0].chunk(2)
                            tcls = torch.cat((tcls[1], tcls[0]))
                            tpatch = txn[:, 1 + R:].flatten(0, 1).index_select(0, mask_idx)
                            zz = th(torch.cat((tcls, tpatch))).float()
                            tz, tzi = zz[:2 * B], zz[2 * B:]
                            P = F.softmax((tz - center) / 0.04, dim=-1)
                            Pi = F.softmax((tzi - center_i) / 0.04, dim=-1)
                            center.mul_(0.9).add_(tz.mean(0, keepdim=True), alpha=0.1)
                            center_i.mul_(0.9).add_(tzi.mean(0, keepdim=True), alpha=0.1)
                        P_list = P.view(2, B, -1)
                        sxg = sb(gx, masks.to(torch.uint8))
                        sxl = sb(lx)
                        s_gcls, s_lcls = sxg[:, 0], sxl[:, 0]
                        s_patch = sxg[:, 1 + R:].flatten(0, 1).index_select(0, mask_idx)
                        zs = sh(torch.cat((s_lcls, s_gcls, s_patch))).float()
                        zs_l, zs_g, zs_m = zs[:nL * B], zs[nL * B:nL * B + 2 * B], zs[nL * B + 2 * B:]
                        n_terms = 2 + 2 * nL
                        local = 0
                        for sl in zs_l.chunk(nL):
                            for t in P_list:
                                local = local - ce_sum(sl, t, 0.1).mean()
                        local = local / n_terms
                        glob = -ce_sum(zs_g, P_list.flatten(0, 1), 0.1).mean() * 2 / n_terms
                        kl = 0.1 * sum(koleo(x.float()) for x in s_gcls.chunk(2))
                        ibot = -(ce_sum(zs_m, Pi, 0.1) * masks_weight).sum() / (2 * B)
                        total = local + glob + kl + ibot
                    total.backward()
                    if cuda:
                        torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    for sub in ("backbone", "dino_head"):
                        torch.nn.utils.clip_grad_norm_(student[sub].parameters(), 3.0)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        torch._foreach_mul_(t_params, 0.994)
                        torch._foreach_add_(t_params, s_params, alpha=1 - 0.994)
                    if cuda:
                        torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    if it == 0:
                        print(f"  {mode} batch {B}: first step {t2 - t0:.1f} s (incl. compilation), loss "
                              f"{total.item():.4f}", flush=True)
                    if it >= args.warmup:
                        t_fb += t1 - t0
                        t_up += t2 - t1
                        t_step += t2 - t0
                        rows_s, rows_t = nL * B + 2 * B + n_m, 2 * B + n_m
                        flops += (3 * (vit_fwd_flops(2 * B, G) + vit_fwd_flops(nL * B, L)) + vit_fwd_flops(2 * B, G)
                                  + 3 * head_row * rows_s + head_row * rows_t)
                n = args.iters
                t_fb, t_up, t_step, flops = t_fb / n, t_up / n, t_step / n, flops / n
                tfl = flops / t_step / 1e12
                mfu = tfl / args.peak_tflops if args.peak_tflops > 0 else -1
                mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else -1
                print(f"RESULT {tag} img_per_s={B / t_step:.2f} step_ms={1e3 * t_step:.2f} fwd_bwd_ms={1e3 * t_fb:.2f} "
                      f"update_ms={1e3 * t_up:.2f} model_tflops={tfl:.3f} peak_tflops={args.peak_tflops:.1f} "
                      f"mfu={mfu:.4f} max_mem_gib={mem:.1f} params_m={nparams / 1e6:.1f} status=ok", flush=True)
            except Exception as e:  # noqa: BLE001  an OOM or compile failure must not hide the others
                oom = "out of memory" in str(e).lower()
                msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
                print(f"RESULT {tag} status={'oom' if oom else 'error'} ({type(e).__name__}: {msg})", flush=True)
            finally:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
