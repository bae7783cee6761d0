#!/usr/bin/python3
"""Writes the ViT parity fixtures tests/fixtures/vit_*.safetensors (read by tests/test_vit_parity.c).

Run with Debian's interpreter:  /usr/bin/python3 tests/make_vit_fixtures.py
Deterministic (torch.manual_seed per variant). The reference (tests/torch_ref/dinov2_vit.py) is run in
float64 on float32 weights and inputs, then outputs and gradients are stored as float32, so the
fixtures carry no float32 rounding of their own.

Each vit_<variant>.safetensors holds
  weights under the reference names (cls_token, pos_embed, blocks.0.attn.qkv.weight, ...)
  __metadata__: the model config (dim, depth, heads, patch, img_size, n_registers, ffn, ffn_hidden,
      layerscale, drop_path_rate, interpolate_offset, interpolate_antialias, qkv_bias, proj_bias,
      ffn_bias) and n_groups, g{k}.crop, g{k}.batch, g{k}.subset_size
  per crop group k:
    in.g{k}.images   f32 [B,3,S,S]
    in.g{k}.masks    u8  [B*N]           (iBOT masks; absent = no masking)
    in.g{k}.subsets  i32 [depth,2,Ssub]  (kept images per block and branch; absent = no drop path)
    out.g{k}.x_norm  f32 [B,T,D]
    in.g{k}.d_xnorm  f32 [B,T,D]         (upstream gradient)
  grad.<param>: d/dparam of sum_k <x_norm_k, d_xnorm_k> (groups share the parameters).
vit_pos_interp.safetensors holds pos_interp.M{M}.g{g}.off{offset:.2f}.aa{0|1} = W[g*g, M*M].
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "torch_ref"))
import st_oracle  # noqa: E402
from dinov2_vit import (  # noqa: E402
    DinoVisionTransformer, drop_subset_size, pos_interp_matrix, randomize_weights, swiglu_hidden)

OUT = os.path.join(HERE, "fixtures")

# A tiny ViT: dim 32, 2 blocks, 2 heads, patch 4, img_size 16 -> pos-embed grid 4x4.
BASE = dict(img_size=16, patch=4, dim=32, depth=2, heads=2)

VARIANTS = {
    # MLP, 4 registers, sample-subset drop path 0.3, iBOT masks on the global crops, legacy +0.1 offset
    "mlp_reg4_droppath": dict(
        model=dict(ffn="mlp", ffn_hidden=128, n_registers=4, drop_path_rate=0.3, interpolate_offset=0.1,
                   interpolate_antialias=False),
        groups=[dict(crop=16, batch=4, masked=True), dict(crop=8, batch=6), dict(crop=12, batch=3)]),
    # SwiGLU (hidden rounded as the reference), no registers, no drop path
    "swiglu": dict(
        model=dict(ffn="swiglu", ffn_hidden=swiglu_hidden(128), n_registers=0, drop_path_rate=0.0,
                   interpolate_offset=0.1, interpolate_antialias=False),
        groups=[dict(crop=16, batch=4, masked=True), dict(crop=8, batch=4)]),
    # size-based interpolation with antialias (the reg4 models' setting), an odd MLP width, one
    # register, drop path 0.4 (subsets of 1 of 2 images), and an upsampled 20 px crop
    "aa_offset0": dict(
        model=dict(ffn="mlp", ffn_hidden=96, n_registers=1, drop_path_rate=0.4, interpolate_offset=0.0,
                   interpolate_antialias=True),
        groups=[dict(crop=16, batch=2, masked=True), dict(crop=8, batch=4), dict(crop=12, batch=2),
                dict(crop=20, batch=2)]),
}


def make_masks(B, N, gen):
    """iBOT-like masks: the first image unmasked, the others with a random ratio in [0.1, 0.5]."""
    m = torch.zeros(B, N, dtype=torch.uint8)
    for b in range(1, B):
        k = max(1, int(N * (0.1 + 0.4 * torch.rand(1, generator=gen).item())))
        m[b, torch.randperm(N, generator=gen)[:k]] = 1
    return m


def make_variant(name, spec, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    cfg = dict(BASE, **spec["model"], layerscale=0.5)
    model = DinoVisionTransformer(**cfg)
    randomize_weights(model)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}  # float32 originals
    model = model.double().train()

    out = {k: v.numpy() for k, v in weights.items()}
    meta = {k: str(int(v) if isinstance(v, bool) else v) for k, v in model.cfg.items()}
    meta.update(arch="vit_test", qkv_bias="1", proj_bias="1", ffn_bias="1", n_groups=str(len(spec["groups"])))
    rate = cfg["drop_path_rate"]
    loss = 0
    for k, g in enumerate(spec["groups"]):
        B, S = g["batch"], g["crop"]
        N = (S // cfg["patch"]) ** 2
        images = torch.randn(B, 3, S, S)
        masks = make_masks(B, N, gen) if g.get("masked") else None
        subsets = None
        if rate > 0:
            subsets = torch.stack([torch.stack(pair) for pair in model.draw_subsets(B, gen)]).to(torch.int32)
            assert subsets.shape[-1] == drop_subset_size(B, rate)
        x_norm = model(images.double(), masks, subsets)
        d_xnorm = torch.randn(x_norm.shape)
        loss = loss + (x_norm * d_xnorm.double()).sum()
        out[f"in.g{k}.images"] = images.numpy()
        if masks is not None:
            out[f"in.g{k}.masks"] = masks.reshape(-1).numpy()
        if subsets is not None:
            out[f"in.g{k}.subsets"] = subsets.numpy()
        out[f"out.g{k}.x_norm"] = x_norm.detach().float().numpy()
        out[f"in.g{k}.d_xnorm"] = d_xnorm.numpy()
        meta.update({f"g{k}.crop": str(S), f"g{k}.batch": str(B),
                     f"g{k}.subset_size": str(drop_subset_size(B, rate))})
    loss.backward()
    for pname, p in model.named_parameters():
        out[f"grad.{pname}"] = p.grad.float().numpy()
    path = os.path.join(OUT, f"vit_{name}.safetensors")
    st_oracle.save(path, out, meta)
    return path


def make_pos_interp():
    out = {}
    cases = [(4, g, off, aa) for g in (2, 3, 5, 7) for off in (0.1, 0.0) for aa in (0, 1)]
    cases += [(16, 7, 0.1, 0), (16, 7, 0.0, 1), (8, 3, 0.0, 1), (8, 3, 0.1, 0)]
    for M, g, off, aa in cases:
        W = pos_interp_matrix(M, g, off, bool(aa))
        out[f"pos_interp.M{M}.g{g}.off{off:.2f}.aa{aa}"] = W.float().numpy()
    path = os.path.join(OUT, "vit_pos_interp.safetensors")
    st_oracle.save(path, out, {"layout": "W[g*g, M*M]: pos_out = W @ pos_in (row-major grids)"})
    return path


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    paths = [make_variant(name, spec, seed) for seed, (name, spec) in enumerate(VARIANTS.items())]
    paths.append(make_pos_interp())
    for p in paths:
        print(f"{p}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
