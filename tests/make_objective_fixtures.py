#!/usr/bin/python3
"""Writes the DINOv2 objective parity fixtures tests/fixtures/objective_<variant>.safetensors (read by
tests/test_objective_parity.c): three complete training steps of a tiny student/teacher pair in PyTorch.

Run with Debian's interpreter:  /usr/bin/python3 tests/make_objective_fixtures.py

The step follows the reference (facebookresearch/dinov2: train/ssl_meta_arch.py forward_backward,
loss/dino_clstoken_loss.py, loss/ibot_patch_loss.py, loss/koleo_loss.py, layers/dino_head.py,
utils/param_groups.py, train/train.py), written independently on top of the hand-written ViT
reference tests/torch_ref/dinov2_vit.py, and runs in float64 on float32 starting values:
  teacher: backbone(global crops) -> CLS chunked and concatenated in reverse [g2; g1] + masked patch
           tokens (index_select on the flattened patch tokens) -> head(s) -> softmax centering with the
           delayed centre update, or Sinkhorn-Knopp (3 iterations, iBOT B = number of masked tokens)
  student: backbone([global crops (masked), local crops]) with fixed drop-path subsets -> head input
           [local CLS; global CLS; masked patch tokens] -> DINO local/global losses / n_terms, KoLeo
           (0.1, per global crop), iBOT forward_masked * 2 * 1/2
  backward -> clip_grad_norm_(3.0) per student submodule -> torch.optim.AdamW on the reference's param
  groups (layer-wise decay, patch-embed multiplier, no wd on bias/norm/gamma, last-layer lr) -> EMA.

Variant "gram" is a DINOv3 step with Gram anchoring active, on the DINOv3 ViT (tests/torch_ref/dinov3_vit.py:
RoPE base 100, one storage token, untied local-crop CLS norm, masked k bias; no RoPE augmentation) (tests/torch_ref/dinov3_gram.py transcribes the
official pieces): a given Gram teacher backbone (init.gram_teacher.*) on its own crops (42 px, patch tokens
resampled bicubically 6x6 -> 4x4 to the student's grid), GramLoss (normalized, img_level) on the student's
masked global crops' final-norm patch tokens, the losses as SSLMetaArch.compute_losses (DINOLoss with
ignore_diagonal, iBOT forward_masked, KoLeo scale, the local-crop weight of dino.reweight_dino_local_loss,
the Gram weight), weights per step from linear_warmup_cosine_decay; Sinkhorn-Knopp, separate iBOT head.
Extra tensors: init.gram_teacher.<backbone name>, step{s}.gram_crops f32 [2B,3,Gg,Gg],
step{s}.gram_weight / .dino_local_weight / .gram_loss / .backprop_loss (the loss_accumulator) f64 [1].

Usage: make_objective_fixtures.py [variant ...]   (default: every variant)

Each fixture holds
  __metadata__: the model/objective config and n_steps
  init.student.<name>              f32   student = teacher parameters before step 0
  step{s}.global_crops / local_crops  f32 [2B,3,G,G] / [nL*B,3,L,L] (crop-major)
  step{s}.masks                    u8  [2B*N]
  step{s}.drop_global / drop_local i32 [depth,2,S] kept images per block and branch
  step{s}.lr, .wd, .momentum, .teacher_temp, .last_layer_lr          f64 [1]
  step{s}.dino_local_crops_loss, .dino_global_crops_loss, .koleo_loss, .ibot_loss, .total_loss  f64 [1]
                                   (as the reference logs them)
  student.<name>, teacher.<name>   f32 parameters after the last step (reference names, e.g.
                                   student.backbone.blocks.0.attn.qkv.weight, teacher.dino_head.mlp.0.weight)
  dino_loss.center, ibot_patch_loss.center   f32 [K] the reference buffers after the last step (softmax
                                   centering only; their update from the last step is still pending)
  dino_loss.pending_center, ibot_patch_loss.pending_center   f32 [K] with that update applied: what the
                                   C step holds (it applies the update at once, same numbers)
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "torch_ref"))
import st_oracle  # noqa: E402
from dinov2_vit import DinoVisionTransformer, drop_subset_size, randomize_weights  # noqa: E402
import dinov3_gram  # noqa: E402
import dinov3_vit  # noqa: E402


class DinoV3Backbone(dinov3_vit.DinoVisionTransformer):
    """The DINOv3 ViT transcription (tests/torch_ref/dinov3_vit.py) with the DINOv2 reference's calling
    convention here: forward(images, masks, subsets, local) and draw_subsets (no RoPE augmentation: none
    configured, as the teacher in eval mode)."""

    def __init__(self, drop_path_rate, **kw):
        super().__init__(**kw)
        self.drop_path_rate = drop_path_rate

    def draw_subsets(self, B, generator=None):
        S = drop_subset_size(B, self.drop_path_rate)
        return [[torch.randperm(B, generator=generator)[:S].sort().values for _ in range(2)]
                for _ in self.blocks]

    def forward(self, images, masks=None, subsets=None, local=False):
        return super().forward(images, masks, local=local, aug=None, subsets=subsets)

OUT = os.path.join(HERE, "fixtures")

BASE = dict(
    vit=dict(img_size=28, patch=7, dim=32, depth=2, heads=2, ffn="mlp", ffn_hidden=64, layerscale=0.5,
             drop_path_rate=0.3, interpolate_offset=0.1, interpolate_antialias=False),
    head=dict(hidden=48, bottleneck=16, K=64, nlayers=3),
    ibot_head=dict(hidden=40, bottleneck=12, K=48, nlayers=2),
    batch=2, n_local=4, global_crop=28, local_crop=14, student_temp=0.1, center_momentum=0.9,
    koleo=0.1, clip_grad=3.0, layerwise_decay=0.9, patch_embed_lr_mult=0.2, n_steps=3,
)

VARIANTS = {
    "centering": dict(centering="centering", separate_head=False, n_registers=0),
    "sinkhorn": dict(centering="sinkhorn_knopp", separate_head=True, n_registers=1),
    # the DINOv3 ViT (RoPE base 100, a storage token, untied local CLS norm, masked k bias) with Gram anchoring
    "gram": dict(centering="sinkhorn_knopp", separate_head=True, n_registers=1,
                 v3=dict(ffn_layer="mlp", ffn_ratio=2.0, qkv_bias=True, proj_bias=True, ffn_bias=True, mask_k_bias=True,
                         untie_cls_and_patch_norms=False, untie_global_and_local_cls_norm=True,
                         norm_layer="layernorm", rope_base=100.0),
                 gram=dict(crop=42, normalized=True, img_level=True, remove_neg=False, remove_only_teacher_neg=False,
                           antialias=False)),
}

# DINOv3 per-step weights (variant gram): the official schedule function over 3 iterations
GRAM_WEIGHTS = dinov3_gram.linear_warmup_cosine_decay(0.5, 1.0, 2.0, 1, 3, 2)    # 0.5, 1.0, 2.0
LOCAL_WEIGHTS = dinov3_gram.linear_warmup_cosine_decay(1.0, 1.0, 0.5, 1, 3, 2)   # 1.0, 1.0, 0.5

# schedule values per step (last layer frozen in step 0 as during the reference's first epoch)
SCHEDULE = [
    dict(lr=2e-3, wd=0.04, momentum=0.9, teacher_temp=0.04, last_layer_lr=0.0),
    dict(lr=3e-3, wd=0.05, momentum=0.95, teacher_temp=0.05, last_layer_lr=3e-3),
    dict(lr=4e-3, wd=0.06, momentum=0.97, teacher_temp=0.06, last_layer_lr=4e-3),
]


class DINOHead(nn.Module):
    """MLP -> L2 normalize -> weight-normed linear to K prototypes (the reference's DINOHead)."""

    def __init__(self, in_dim, K, hidden, bottleneck, nlayers):
        super().__init__()
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck)
        else:
            layers = [nn.Linear(in_dim, hidden), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden, hidden), nn.GELU()]
            layers.append(nn.Linear(hidden, bottleneck))
            self.mlp = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # created after the init: default Linear init for v, g filled with 1 (trainable)
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, K, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x):
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return self.last_layer(F.normalize(x, dim=-1, p=2, eps=eps))


class Center:
    """Softmax centering with the reference's delayed update (applied at the next call)."""

    def __init__(self, K, momentum, per_token_mean):
        self.center = torch.zeros(K, dtype=torch.float64)
        self.momentum = momentum
        self.pending = None
        self.per_token_mean = per_token_mean

    def targets(self, z, temp):
        if self.pending is not None:
            self.center = self.center * self.momentum + self.pending * (1 - self.momentum)
            self.pending = None
        P = F.softmax((z - self.center) / temp, dim=-1)
        # DINO: sum over rows / (rows * world); iBOT: mean over masked tokens, / world (world = 1)
        self.pending = z.sum(0) / len(z) if not self.per_token_mean else z.mean(0)
        return P


def sinkhorn(z, temp, n_samples, iters=3):
    Q = torch.exp(z / temp).t()  # K x B
    K = Q.shape[0]
    Q = Q / Q.sum()
    for _ in range(iters):
        Q = Q / Q.sum(dim=1, keepdim=True)
        Q = Q / K
        Q = Q / Q.sum(dim=0, keepdim=True)
        Q = Q / n_samples
    return (Q * n_samples).t()


def koleo(x, eps=1e-8):
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    dots = x @ x.t()
    n = x.shape[0]
    dots.view(-1)[:: n + 1].fill_(-1)
    nn_idx = dots.max(dim=1).indices
    d = nn.PairwiseDistance(2, eps=eps)(x, x[nn_idx])
    return -torch.log(d + eps).mean()


def ce_sum(s, t, temp):
    """sum_k t log softmax(s / temp) per row (the reference's lossfunc)."""
    return torch.sum(t * F.log_softmax(s / temp, dim=-1), dim=-1)


def param_groups(student, decay, pe_mult):
    groups = []
    for sub, module in student.items():
        n_blocks = len(module.blocks) if hasattr(module, "blocks") else 0
        for name, p in module.named_parameters():
            layer_id = n_blocks + 1
            if n_blocks > 0:
                if any(k in name for k in ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens",
                                           "storage_tokens")):
                    layer_id = 0
                elif "blocks." in name:
                    layer_id = int(name[name.find("blocks."):].split(".")[1]) + 1
            lr_mult = decay ** (n_blocks + 1 - layer_id)
            wd_mult = 0.0 if (name.endswith(".bias") or "norm" in name or "gamma" in name) else 1.0
            if "patch_embed" in name:
                lr_mult *= pe_mult
            groups.append({"params": [p], "lr_multiplier": lr_mult, "wd_multiplier": wd_mult,
                           "is_last_layer": "last_layer" in name, "sub": sub})
    return groups


def make_masks(twoB, N, gen):
    """Half the global-crop images masked (ratios in [0.1, 0.5]), shuffled, as the reference's collate."""
    masks = torch.zeros(twoB, N, dtype=torch.bool)
    n_masked_imgs = twoB // 2
    order = torch.randperm(twoB, generator=gen)
    for i in range(n_masked_imgs):
        k = max(1, int(N * (0.1 + 0.4 * torch.rand(1, generator=gen).item())))
        masks[order[i], torch.randperm(N, generator=gen)[:k]] = True
    return masks


def dino_local_scale(nL, n_global=2):
    """compute_losses' dino_local_scale with ignore_diagonal: the DINOv2 logged value / the DINOv3 mean."""
    g, l = n_global * (n_global - 1), n_global * nL
    return l / (g + l)


def ssl_update(total, student, teacher, opt, clip_grad, momentum):
    """The step after the losses: backward, gradient clipping per submodule, AdamW, the EMA teacher."""
    total.backward()
    for sub, module in student.items():
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip_grad)
    opt.step()
    with torch.no_grad():
        for ps, pt in zip(student.parameters(), teacher.parameters()):
            pt.mul_(momentum).add_(ps, alpha=1 - momentum)


def make_variant(name, var, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 77)
    c = BASE
    B, nL, G, L = c["batch"], c["n_local"], c["global_crop"], c["local_crop"]
    vit_cfg = dict(c["vit"], n_registers=var["n_registers"])
    D = vit_cfg["dim"]
    h = c["head"]

    v3 = var.get("v3")

    def backbone():
        if not v3:
            return DinoVisionTransformer(**vit_cfg)
        return DinoV3Backbone(vit_cfg["drop_path_rate"], patch=vit_cfg["patch"], dim=D, depth=vit_cfg["depth"],
                              heads=vit_cfg["heads"], layerscale=vit_cfg["layerscale"],
                              n_storage_tokens=var["n_registers"], **v3)

    randomize = dinov3_vit.randomize_weights if v3 else randomize_weights

    def build():
        m = nn.ModuleDict()
        m["backbone"] = backbone()
        m["dino_head"] = DINOHead(D, h["K"], h["hidden"], h["bottleneck"], h["nlayers"])
        if var["separate_head"]:
            hi = c["ibot_head"]
            m["ibot_head"] = DINOHead(D, hi["K"], hi["hidden"], hi["bottleneck"], hi["nlayers"])
        return m

    student = build()
    randomize(student["backbone"])
    gv = var.get("gram")
    if gv:  # the Gram teacher: a backbone of its own (as loaded from gram.ckpt), frozen
        gram_teacher = nn.ModuleDict({"backbone": backbone()})
        randomize(gram_teacher["backbone"])
        # a teacher near the student, as an earlier EMA teacher would be
        with torch.no_grad():
            for pg, ps in zip(gram_teacher.parameters(), student["backbone"].parameters()):
                pg.mul_(0.3).add_(ps, alpha=0.7)
        gram_init = {f"init.gram_teacher.{k}": v.detach().float().clone().numpy()
                     for k, v in gram_teacher.state_dict().items()}
        gram_teacher = gram_teacher.double().eval()
        for p_ in gram_teacher.parameters():
            p_.requires_grad = False
        gram_loss = dinov3_gram.GramLoss(apply_norm=gv["normalized"], img_level=gv["img_level"],
                                         remove_neg=gv["remove_neg"],
                                         remove_only_teacher_neg=gv["remove_only_teacher_neg"])
    init = {f"init.student.{k}": v.detach().float().clone().numpy() for k, v in student.state_dict().items()}
    student = student.double().train()
    teacher = build().double()
    teacher.load_state_dict(student.state_dict())  # as prepare_for_distributed_training
    for p in teacher.parameters():
        p.requires_grad = False
    teacher.eval()

    groups = param_groups(student, c["layerwise_decay"], c["patch_embed_lr_mult"])
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    K_d = h["K"]
    K_i = c["ibot_head"]["K"] if var["separate_head"] else K_d
    dino_center = Center(K_d, c["center_momentum"], False)
    ibot_center = Center(K_i, c["center_momentum"], True)
    p = vit_cfg["patch"]
    N = (G // p) ** 2
    R = var["n_registers"]
    rate = vit_cfg["drop_path_rate"]
    n_terms = 2 + 2 * nL

    out = dict(init)
    if gv:
        out.update(gram_init)
    for s, sched in enumerate(SCHEDULE):
        gcrops = torch.randn(2 * B, 3, G, G)
        lcrops = torch.randn(nL * B, 3, L, L)
        masks = make_masks(2 * B, N, gen)
        sub_g = torch.stack([torch.stack(pr) for pr in student["backbone"].draw_subsets(2 * B, gen)]).to(torch.int32)
        sub_l = torch.stack([torch.stack(pr) for pr in student["backbone"].draw_subsets(nL * B, gen)]).to(torch.int32)
        assert sub_g.shape[-1] == drop_subset_size(2 * B, rate)
        out[f"step{s}.global_crops"] = gcrops.numpy()
        out[f"step{s}.local_crops"] = lcrops.numpy()
        out[f"step{s}.masks"] = masks.reshape(-1).numpy().astype(np.uint8)
        out[f"step{s}.drop_global"] = sub_g.numpy()
        out[f"step{s}.drop_local"] = sub_l.numpy()
        for k, v in sched.items():
            out[f"step{s}.{k}"] = np.array([v], dtype=np.float64)
        if gv:
            Gg = gv["crop"]
            gram_crops = torch.randn(2 * B, 3, Gg, Gg)
            out[f"step{s}.gram_crops"] = gram_crops.numpy()
            out[f"step{s}.gram_weight"] = np.array([GRAM_WEIGHTS[s]], dtype=np.float64)
            out[f"step{s}.dino_local_weight"] = np.array([LOCAL_WEIGHTS[s]], dtype=np.float64)
        gx, lx = gcrops.double(), lcrops.double()
        mask_idx = masks.flatten().nonzero().flatten()
        n_m = mask_idx.numel()
        masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks].double()

        # schedules into the param groups, as apply_optim_scheduler
        for g in opt.param_groups:
            g["weight_decay"] = sched["wd"] * g["wd_multiplier"]
            g["lr"] = (sched["last_layer_lr"] if g["is_last_layer"] else sched["lr"]) * g["lr_multiplier"]
        opt.zero_grad(set_to_none=True)
        temp = sched["teacher_temp"]

        # teacher
        with torch.no_grad():
            txn = teacher["backbone"](gx)
            tcls = txn[:, 0].chunk(2)
            tcls = torch.cat((tcls[1], tcls[0]))
            tpatch = txn[:, 1 + R:].flatten(0, 1).index_select(0, mask_idx)
            if var["separate_head"]:
                tz = teacher["dino_head"](tcls)
                tzi = teacher["ibot_head"](tpatch)
            else:
                zz = teacher["dino_head"](torch.cat((tcls, tpatch)))
                tz, tzi = zz[:2 * B], zz[2 * B:]
            if var["centering"] == "centering":
                P = dino_center.targets(tz, temp)
                Pi = ibot_center.targets(tzi, temp)
            else:
                P = sinkhorn(tz, temp, 2 * B)
                Pi = sinkhorn(tzi, temp, n_m)
        P_list = P.view(2, B, -1)

        # student
        sxg = student["backbone"](gx, masks.to(torch.uint8), sub_g)
        sxl = student["backbone"](lx, None, sub_l, local=True) if v3 else student["backbone"](lx, None, sub_l)
        s_gcls, s_lcls = sxg[:, 0], sxl[:, 0]
        s_patch = sxg[:, 1 + R:].flatten(0, 1).index_select(0, mask_idx)
        if var["separate_head"]:
            zs = student["dino_head"](torch.cat((s_lcls, s_gcls)))
            zs_l, zs_g = zs[:nL * B], zs[nL * B:]
            zs_m = student["ibot_head"](s_patch)
        else:
            zs = student["dino_head"](torch.cat((s_lcls, s_gcls, s_patch)))
            zs_l, zs_g, zs_m = zs[:nL * B], zs[nL * B:nL * B + 2 * B], zs[nL * B + 2 * B:]
        ts = c["student_temp"]
        if gv:  # DINOv3: SSLMetaArch.get_teacher_output / get_gram_teacher_output / compute_losses
            with torch.no_grad():
                tz3 = teacher["dino_head"](txn[:, 0])  # natural crop order [g1; g2]
                P3 = sinkhorn(tz3, temp, 2 * B).view(2, B, -1)
                gx_g = gram_crops.double()
                gout = gram_teacher["backbone"](gx_g)
                t_patches = dinov3_gram.gram_teacher_patches(gout[:, 1 + R:], sxg[:, 1 + R:], gx_g.shape[-1], p, G,
                                                             antialias=gv["antialias"])
            total, ld = dinov3_gram.compute_losses(
                student_local_cls_after_head=zs_l.view(nL, B, -1), student_global_cls_after_head=zs_g.view(2, B, -1),
                teacher_cls_centered=P3, student_global_cls_pre_head=s_gcls.view(2, B, -1),
                student_masked_patch_after_head=zs_m, teacher_masked_patch_centered=Pi, masks=masks,
                masks_weight=masks_weight, student_temp=ts, dino_loss_weight=1.0, koleo_loss_weight=c["koleo"],
                ibot_loss_weight=1.0, ignore_diagonal=True, local_weight=float(LOCAL_WEIGHTS[s]), gram_loss=gram_loss,
                gram_student=sxg[:, 1 + R:], gram_teacher=t_patches, gram_img_level=gv["img_level"],
                gram_loss_weight=float(GRAM_WEIGHTS[s]))
            ssl_update(total, student, teacher, opt, c["clip_grad"], sched["momentum"])
            # logged as the C step reports them (koleo and ibot halved as DINOv2's log; total = their sum +
            # the weighted Gram loss)
            logged = dict(dino_local_crops_loss=ld["dino_local_crops_loss"].item() * dino_local_scale(nL),
                          dino_global_crops_loss=ld["dino_global_crops_loss"].item() * (1 - dino_local_scale(nL)),
                          koleo_loss=c["koleo"] * ld["koleo_loss"].item(), ibot_loss=ld["ibot_loss"].item() / 2)
            logged["total_loss"] = sum(logged.values()) + GRAM_WEIGHTS[s] * ld["gram_loss"].item()
            logged["gram_loss"] = ld["gram_loss"].item()
            logged["backprop_loss"] = total.item()  # SSLMetaArch's loss_accumulator
            for k, v in logged.items():
                out[f"step{s}.{k}"] = np.array([v], dtype=np.float64)
            print(f"{name} step {s}: " + " ".join(f"{k} {v:.6f}" for k, v in logged.items()) + f" n_masked {n_m}"
                  f" accumulator {total.item():.6f}")
            continue
        local = 0
        for sl in zs_l.chunk(nL):
            for t in P_list:
                local = local - ce_sum(sl, t, ts).mean()
        local = local / n_terms
        glob = -ce_sum(zs_g, P_list.flatten(0, 1), ts).mean() * 2 / n_terms
        kl = c["koleo"] * sum(koleo(x) for x in s_gcls.chunk(2))
        ibot = -(ce_sum(zs_m, Pi, ts) * masks_weight).sum() / (2 * B) * 2 * 0.5
        total = local + glob + kl + ibot
        ssl_update(total, student, teacher, opt, c["clip_grad"], sched["momentum"])
        logged = dict(dino_local_crops_loss=local.item(), dino_global_crops_loss=glob.item(), koleo_loss=kl.item() / 2,
                      ibot_loss=ibot.item() / 2)
        logged["total_loss"] = sum(logged.values())
        for k, v in logged.items():
            out[f"step{s}.{k}"] = np.array([v], dtype=np.float64)
        print(f"{name} step {s}: " + " ".join(f"{k} {v:.6f}" for k, v in logged.items()) + f" n_masked {n_m}")

    for k, v in student.state_dict().items():
        out[f"student.{k}"] = v.float().numpy()
    for k, v in teacher.state_dict().items():
        out[f"teacher.{k}"] = v.float().numpy()
    if var["centering"] == "centering":  # the buffers as a checkpoint after the step holds them
        out["dino_loss.center"] = dino_center.center.float().numpy()
        out["ibot_patch_loss.center"] = ibot_center.center.float().numpy()
        out["dino_loss.pending_center"] = (dino_center.center * 0.9 + dino_center.pending * 0.1).float().numpy()
        out["ibot_patch_loss.pending_center"] = (ibot_center.center * 0.9 + ibot_center.pending * 0.1).float().numpy()
    v = c["vit"]
    meta = dict(dim=v["dim"], depth=v["depth"], heads=v["heads"], patch=v["patch"], img_size=v["img_size"],
                ffn=v["ffn"], ffn_hidden=v["ffn_hidden"], layerscale=v["layerscale"],
                drop_path_rate=v["drop_path_rate"], n_registers=var["n_registers"],
                head_hidden=h["hidden"], head_bottleneck=h["bottleneck"], head_K=h["K"], head_nlayers=h["nlayers"],
                ibot_separate_head=int(var["separate_head"]), ibot_hidden=c["ibot_head"]["hidden"],
                ibot_bottleneck=c["ibot_head"]["bottleneck"], ibot_K=c["ibot_head"]["K"],
                ibot_nlayers=c["ibot_head"]["nlayers"], batch=B, n_local=nL, global_crop=G, local_crop=L,
                centering=var["centering"], student_temp=c["student_temp"], center_momentum=c["center_momentum"],
                koleo_loss_weight=c["koleo"], clip_grad=c["clip_grad"], layerwise_decay=c["layerwise_decay"],
                patch_embed_lr_mult=c["patch_embed_lr_mult"], n_steps=len(SCHEDULE))
    if gv:
        meta.update(gram_crop=gv["crop"], gram_normalized=int(gv["normalized"]), gram_img_level=int(gv["img_level"]),
                    gram_remove_neg=int(gv["remove_neg"]),
                    gram_remove_only_teacher_neg=int(gv["remove_only_teacher_neg"]),
                    gram_antialias=int(gv["antialias"]), reweight_dino_local=1)
    if v3:
        meta.update(rope=1, rope_base=v3["rope_base"], mask_k_bias=int(v3["mask_k_bias"]),
                    untie_cls_and_patch_norms=int(v3["untie_cls_and_patch_norms"]),
                    untie_global_and_local_cls_norm=int(v3["untie_global_and_local_cls_norm"]),
                    ffn_ratio=v3["ffn_ratio"], ffn_layer=v3["ffn_layer"])
    path = os.path.join(OUT, f"objective_{name}.safetensors")
    st_oracle.save(path, out, {k: str(x) for k, x in meta.items()})
    return path


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    wanted = sys.argv[1:] or list(VARIANTS)
    for seed, (name, var) in enumerate(VARIANTS.items()):
        if name not in wanted:
            continue
        path = make_variant(name, var, 100 + seed)
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
