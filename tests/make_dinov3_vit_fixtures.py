#!/usr/bin/python3
"""Writes the DINOv3 ViT parity fixtures tests/fixtures/dinov3_vit_*.safetensors (read by
tests/test_dinov3_vit.c), and checks the transcription (tests/torch_ref/dinov3_vit.py) against the
official module (/work/ref/dinov3, imported side by side when present).

Run with Debian's interpreter:  /usr/bin/python3 tests/make_dinov3_vit_fixtures.py
Deterministic. The transcription runs in float64 on float32 weights and inputs; outputs, tables and
gradients are stored as float32.

Each dinov3_vit_<variant>.safetensors holds
  weights under the official names (cls_token, storage_tokens, blocks.0.mlp.w1.weight, ...)
  __metadata__: dim, depth, heads, patch, img_size, n_storage_tokens, ffn_layer, ffn_ratio, layerscale,
      qkv_bias, proj_bias, ffn_bias, mask_k_bias, untie_cls_and_patch_norms,
      untie_global_and_local_cls_norm, norm_layer, rope_base, rope_min_period, rope_max_period (0 = None),
      rope_normalize_coords, drop_path_rate, n_groups, g{k}.crop, g{k}.batch, g{k}.local, g{k}.subset_size
  per crop group k:
    in.g{k}.images   f32 [B,3,S,S]
    in.g{k}.masks    u8  [B*N]           (absent = no masking)
    in.g{k}.aug      f64 [depth,5]       (shift_y, shift_x, jitter_y, jitter_x, rescale per block; absent = none)
    in.g{k}.subsets  i32 [depth,2,Ssub]  (absent = no drop path)
    out.g{k}.rope_sin, out.g{k}.rope_cos  f32 [depth,N,Dh]
    out.g{k}.x_norm  f32 [B,T,D]
    in.g{k}.d_xnorm  f32 [B,T,D]
  grad.<param>: d/dparam of sum_k <x_norm_k, d_xnorm_k>.
"""
import math
import os
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "torch_ref"))
import st_oracle  # noqa: E402
from dinov3_vit import DinoVisionTransformer, randomize_weights, rope_sincos  # noqa: E402

OUT = os.path.join(HERE, "fixtures")
OFFICIAL = "/work/ref/dinov3"

VARIANTS = {
    # the released recipe's shape at tiny size: 2 storage tokens, SwiGLU64, masked k bias, untied local
    # CLS norm, layernormbf16, rescale augmentation 2 (drawn per block and group), iBOT masks on the globals
    "swiglu64_untied_rescale": dict(
        model=dict(patch=4, dim=32, depth=2, heads=2, ffn_layer="swiglu64", ffn_ratio=4.0, n_storage_tokens=2,
                   mask_k_bias=True, untie_global_and_local_cls_norm=True, norm_layer="layernormbf16"),
        rope=dict(rescale=2.0), img_size=16,
        groups=[dict(crop=16, batch=3, masked=True), dict(crop=8, batch=4, local=True)]),
    # patch 16, MLP at ffn_ratio 3, no qkv bias, periods from min/max, "max" coordinates, shift + jitter +
    # rescale, CLS/storage through cls_norm, no storage tokens
    "p16_mlp_minmax_shift_jitter": dict(
        model=dict(patch=16, dim=32, depth=2, heads=2, ffn_layer="mlp", ffn_ratio=3.0, n_storage_tokens=0,
                   qkv_bias=False, untie_cls_and_patch_norms=True, rope_base=None, rope_min_period=0.5,
                   rope_max_period=8.0, rope_normalize_coords="max"),
        rope=dict(shift=0.2, jitter=1.5, rescale=2.0), img_size=48,
        groups=[dict(crop=48, batch=2, masked=True), dict(crop=32, batch=3, local=True)]),
    # stochastic depth (explicit subsets) with RoPE, both norms untied, no augmentation (as the teacher)
    "droppath_both_untied": dict(
        model=dict(patch=4, dim=32, depth=2, heads=2, ffn_layer="swiglu32", ffn_ratio=4.0, n_storage_tokens=1,
                   mask_k_bias=True, untie_cls_and_patch_norms=True, untie_global_and_local_cls_norm=True),
        rope=None, img_size=16, drop_path_rate=0.4,
        groups=[dict(crop=16, batch=4, masked=True), dict(crop=12, batch=5, local=True)]),
}


def draw_aug(spec_rope, depth, n_groups, seed):
    """The official draws, replayed: per block, per crop group (forward_features_list's order), the
    RopePositionEmbedding's shift (2), jitter (2), rescale (1) from torch's generator in float64."""
    if spec_rope is None:
        return None
    torch.manual_seed(seed)
    aug = [[None] * depth for _ in range(n_groups)]
    for blk in range(depth):
        for g in range(n_groups):
            a = dict(shift=(0.0, 0.0), jitter=(1.0, 1.0), rescale=1.0)
            if "shift" in spec_rope:
                s = spec_rope["shift"]
                a["shift"] = tuple(torch.empty(2, dtype=torch.float64).uniform_(-s, s).tolist())
            if "jitter" in spec_rope:
                j = np.log(spec_rope["jitter"])
                a["jitter"] = tuple(torch.empty(2, dtype=torch.float64).uniform_(-j, j).exp().tolist())
            if "rescale" in spec_rope:
                r = np.log(spec_rope["rescale"])
                a["rescale"] = torch.empty(1, dtype=torch.float64).uniform_(-r, r).exp().item()
            aug[g][blk] = a
    return aug


def official_module():
    """The official dinov3 package under torch 1.13, or None when it is not there."""
    if not os.path.isdir(os.path.join(OFFICIAL, "dinov3")):
        return None
    torch._dynamo = types.SimpleNamespace(config=types.SimpleNamespace())
    torch.compiler = types.SimpleNamespace(allow_in_graph=lambda f: f)

    def sdpa(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v

    torch.nn.functional.scaled_dot_product_attention = sdpa
    sys.path.insert(0, OFFICIAL)
    import dinov3.models.vision_transformer as v  # noqa: E402
    return v


def check_against_official(v, spec, weights, inputs, seed, ours_x, ours_grads):
    m = spec["model"]
    rope = spec["rope"] or {}
    off = v.DinoVisionTransformer(
        img_size=spec["img_size"], patch_size=m["patch"], embed_dim=m["dim"], depth=m["depth"], num_heads=m["heads"],
        ffn_ratio=m.get("ffn_ratio", 4.0), qkv_bias=m.get("qkv_bias", True), layerscale_init=0.5,
        norm_layer=m.get("norm_layer", "layernorm"), ffn_layer=m["ffn_layer"],
        n_storage_tokens=m["n_storage_tokens"], mask_k_bias=m.get("mask_k_bias", False),
        untie_cls_and_patch_norms=m.get("untie_cls_and_patch_norms", False),
        untie_global_and_local_cls_norm=m.get("untie_global_and_local_cls_norm", False),
        pos_embed_rope_base=m.get("rope_base", 100.0), pos_embed_rope_min_period=m.get("rope_min_period"),
        pos_embed_rope_max_period=m.get("rope_max_period"),
        pos_embed_rope_normalize_coords=m.get("rope_normalize_coords", "separate"),
        pos_embed_rope_shift_coords=rope.get("shift"), pos_embed_rope_jitter_coords=rope.get("jitter"),
        pos_embed_rope_rescale_coords=rope.get("rescale"), pos_embed_rope_dtype="fp32")
    off.init_weights()  # sets the bias masks
    missing, unexpected = off.load_state_dict({k: torch.from_numpy(a) for k, a in weights.items()}, strict=False)
    assert not unexpected and all(k.endswith("periods") or k.endswith("bias_mask") for k in missing), (missing,
                                                                                                     unexpected)
    off = off.double().train()
    off.rope_embed.dtype = torch.float64
    off.rope_embed._init_weights()
    torch.manual_seed(seed)  # the same draws as draw_aug
    outs = off.forward_features_list([i["images"].double() for i in inputs],
                                     [None if i["masks"] is None else i["masks"].reshape(i["images"].shape[0], -1).bool()
                                      for i in inputs])
    loss, worst = 0, 0.0
    for o, i, x in zip(outs, inputs, ours_x):
        xo = torch.cat([o["x_norm_clstoken"][:, None], o["x_storage_tokens"], o["x_norm_patchtokens"]], dim=1)
        worst = max(worst, (xo - x).abs().max().item())
        loss = loss + (xo * i["d_xnorm"].double()).sum()
    loss.backward()
    for name, p in off.named_parameters():
        worst = max(worst, (p.grad - ours_grads[name]).abs().max().item())
    assert worst < 1e-9, f"the transcription differs from the official module by {worst}"
    return worst


def make_variant(name, spec, seed, official):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    m = dict(spec["model"])
    model = DinoVisionTransformer(layerscale=0.5, **m)
    randomize_weights(model)
    weights = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
    model = model.double().train()
    depth, groups, rate = m["depth"], spec["groups"], spec.get("drop_path_rate", 0.0)
    aug = draw_aug(spec["rope"], depth, len(groups), seed + 2000)
    out = dict(weights)
    meta = dict(dim=m["dim"], depth=depth, heads=m["heads"], patch=m["patch"], img_size=spec["img_size"],
                n_storage_tokens=m["n_storage_tokens"], ffn_layer=m["ffn_layer"], ffn_ratio=m["ffn_ratio"],
                layerscale=0.5, qkv_bias=int(m.get("qkv_bias", True)), proj_bias=1, ffn_bias=1,
                mask_k_bias=int(m.get("mask_k_bias", False)),
                untie_cls_and_patch_norms=int(m.get("untie_cls_and_patch_norms", False)),
                untie_global_and_local_cls_norm=int(m.get("untie_global_and_local_cls_norm", False)),
                norm_layer=m.get("norm_layer", "layernorm"), rope_base=m.get("rope_base", 100.0) or 0,
                rope_min_period=m.get("rope_min_period") or 0, rope_max_period=m.get("rope_max_period") or 0,
                rope_normalize_coords=m.get("rope_normalize_coords", "separate"), drop_path_rate=rate,
                n_groups=len(groups))
    loss, inputs, xs = 0, [], []
    for k, g in enumerate(groups):
        B, S = g["batch"], g["crop"]
        gs = S // m["patch"]
        N = gs * gs
        images = torch.randn(B, 3, S, S)
        masks = None
        if g.get("masked"):
            masks = torch.zeros(B, N, dtype=torch.uint8)
            for b in range(1, B):
                masks[b, torch.randperm(N, generator=gen)[:max(1, N // 3)]] = 1
        subsets, S_sub = None, B
        if rate > 0:
            S_sub = max(int(B * (1 - rate)), 1)
            subsets = torch.stack([torch.stack([torch.randperm(B, generator=gen)[:S_sub].sort().values
                                                for _ in range(2)]) for _ in range(depth)]).to(torch.int32)
        a = None if aug is None else aug[k]
        x = model(images.double(), masks, local=g.get("local", False), aug=a, subsets=subsets)
        d_xnorm = torch.randn(x.shape)
        loss = loss + (x * d_xnorm.double()).sum()
        sins, coss = zip(*[rope_sincos(gs, gs, model.periods, model.normalize_coords, None if a is None else a[i])
                           for i in range(depth)])
        out[f"in.g{k}.images"] = images.numpy()
        if masks is not None:
            out[f"in.g{k}.masks"] = masks.reshape(-1).numpy()
        if a is not None:
            out[f"in.g{k}.aug"] = np.array([[*t["shift"], *t["jitter"], t["rescale"]] for t in a], dtype=np.float64)
        if subsets is not None:
            out[f"in.g{k}.subsets"] = subsets.numpy()
        out[f"out.g{k}.rope_sin"] = torch.stack(sins).float().numpy()
        out[f"out.g{k}.rope_cos"] = torch.stack(coss).float().numpy()
        out[f"out.g{k}.x_norm"] = x.detach().float().numpy()
        out[f"in.g{k}.d_xnorm"] = d_xnorm.numpy()
        meta.update({f"g{k}.crop": S, f"g{k}.batch": B, f"g{k}.local": int(g.get("local", False)),
                     f"g{k}.subset_size": S_sub})
        inputs.append(dict(images=images, masks=masks, d_xnorm=d_xnorm))
        xs.append(x.detach())
    loss.backward()
    grads = {pname: p.grad.detach().clone() for pname, p in model.named_parameters()}
    for pname, gr in grads.items():
        out[f"grad.{pname}"] = gr.float().numpy()
    note = "official module not found: not compared"
    if official is not None and rate == 0:
        note = f"official module: max |difference| {check_against_official(official, spec, weights, inputs, seed + 2000, xs, grads):.3g}"
    path = os.path.join(OUT, f"dinov3_vit_{name}.safetensors")
    st_oracle.save(path, out, {k: str(v) for k, v in meta.items()})
    return path, note


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    official = official_module()
    for seed, (name, spec) in enumerate(VARIANTS.items()):
        path, note = make_variant(name, spec, 100 + seed, official)
        print(f"{path}: {os.path.getsize(path)} bytes; {note}")


if __name__ == "__main__":
    main()
