#!/usr/bin/python3
"""Checks DINOv3 exports (dinoexport / train/export_dir.h) against transformers' rules. Used by
tests/test_export_dinov3.c.

  export_v3_check.py names OURS.safetensors ORIGDIR HFDIR   (HFDIR "-": the official names only)
      OURS: our parameter table written as it is (the official names, under no prefix); ORIGDIR: the
      export in the official names; HFDIR: the Hugging Face export. Checks, independently of the C name
      map: ORIGDIR holds every tensor of OURS unchanged (a fused SwiGLU w12 split into w1 = the first
      half of the rows, w2 = the second), plus rope_embed.periods = base^(2i/(Dh/2)) (the official
      RopePositionEmbedding, from base or min/max periods in config.json) and, for a masked k bias, blocks.N.attn.qkv.bias_mask
      = ones with zeros on the k third, and nothing else; HFDIR's tensors are exactly
      official_to_hf(ORIGDIR) (transformers' convert_dinov3_vit_to_hf.py rules, tests/torch_ref/
      hf_dinov3_vit.py), names, shapes and values; HFDIR loads strictly into the DINOv3ViTModel
      transcription built from its config.json; config.json agrees with ORIGDIR's config.
  export_v3_check.py forward HFDIR IO.safetensors
      IO: "images" [B,3,H,W] and "x_norm" [B,T,C] from the C forward. last_hidden_state and pooler_output
      of the transcription must match with relative error <= 1e-4 (max |diff| / max |ref|).
  export_v3_check.py embed --crop C HFDIR FEATS IDS
      dinoembed's cls / mean_patch features (FEATS, tiles listed in IDS) against pooler_output and the
      mean of last_hidden_state[:, 1+R:] of the transcription on torchvision-preprocessed tiles
      (CenterCrop C, ToTensor, ImageNet Normalize), relative error <= 1e-4.
Several commands may be given, separated by "+". Prints one line per check; exit 0 iff all pass.
"""
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "torch_ref"))
import hf_dinov3_vit  # noqa: E402
import st_oracle  # noqa: E402

TOL = 1e-4


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def names(ours_path, orig_dir, hf_dir):
    ours, _ = st_oracle.load(ours_path)
    orig, _ = st_oracle.load(os.path.join(orig_dir, "model.safetensors"))
    ocfg = json.load(open(os.path.join(orig_dir, "config.json")))
    ok = True

    def check(cond, what):
        nonlocal ok
        if not cond:
            print("FAIL:", what)
            ok = False

    # ours -> official: identical, w12 split
    expect = {}
    for k, v in ours.items():
        if ".mlp.w12." in k:
            h = v.shape[0] // 2
            expect[k.replace("w12", "w1")], expect[k.replace("w12", "w2")] = v[:h], v[h:]
        else:
            expect[k] = v
    D, heads = ocfg["embed_dim"], ocfg["num_heads"]
    dh = D // heads
    theta = ocfg["pos_embed_rope_base"]
    if theta is not None:  # the official RopePositionEmbedding._init_weights
        periods = theta ** (2 * np.arange(dh // 4, dtype=np.float64) / (dh // 2))
    else:
        lo, hi = ocfg["pos_embed_rope_min_period"], ocfg["pos_embed_rope_max_period"]
        periods = (hi / lo) ** np.linspace(0, 1, dh // 4) / (hi / lo) * hi
    expect["rope_embed.periods"] = periods
    if ocfg["mask_k_bias"] and ocfg["qkv_bias"]:
        for k in list(ours):
            if k.endswith(".attn.qkv.bias"):
                m = np.ones(3 * D)
                m[D:2 * D] = 0
                expect[k + "_mask"] = m
    if ocfg["layerscale"] is False:
        for k in list(ours):
            if k.endswith(".norm1.weight"):
                blk = k[: -len("norm1.weight")]
                expect[blk + "ls1.gamma"] = np.ones(D)
                expect[blk + "ls2.gamma"] = np.ones(D)
    check(set(expect) == set(orig), f"official names: extra {sorted(set(orig) - set(expect))}, missing {sorted(set(expect) - set(orig))}")
    for k in set(expect) & set(orig):
        tol = 1e-6 if k == "rope_embed.periods" else 0
        check(orig[k].shape == expect[k].shape and rel(orig[k], expect[k]) <= tol, f"official names: {k} differs")
    # official -> HF by transformers' conversion rules
    if hf_dir == "-":  # a model transformers cannot express: the official names only
        print(f"{orig_dir}: names {'ok' if ok else 'FAIL'} ({len(orig)} official tensors)")
        return ok
    hf, meta = st_oracle.load(os.path.join(hf_dir, "model.safetensors"))
    hcfg = json.load(open(os.path.join(hf_dir, "config.json")))
    want = hf_dinov3_vit.official_to_hf(orig, D)
    check(set(want) == set(hf), f"HF names: extra {sorted(set(hf) - set(want))}, missing {sorted(set(want) - set(hf))}")
    for k in set(want) & set(hf):
        check(hf[k].shape == want[k].shape and np.array_equal(hf[k], want[k]), f"HF names: {k} differs {hf[k].shape} {want[k].shape}")
    check(meta.get("format") == "pt", "HF file: __metadata__.format is not pt")
    # the two configs describe the same model
    pairs = [("hidden_size", D), ("num_hidden_layers", ocfg["depth"]), ("num_attention_heads", heads),
             ("patch_size", ocfg["patch_size"]), ("image_size", ocfg["img_size"]),
             ("num_register_tokens", ocfg["n_storage_tokens"]), ("intermediate_size", ocfg["ffn_hidden"]),
             ("rope_theta", theta), ("layer_norm_eps", ocfg["layer_norm_eps"]),
             ("use_gated_mlp", ocfg["ffn_layer"] != "mlp"), ("hidden_act", "silu" if ocfg["ffn_layer"] != "mlp" else "gelu"),
             ("query_bias", ocfg["qkv_bias"]), ("key_bias", ocfg["qkv_bias"] and not ocfg["mask_k_bias"]),
             ("value_bias", ocfg["qkv_bias"]), ("proj_bias", ocfg["proj_bias"]), ("mlp_bias", ocfg["ffn_bias"]),
             ("model_type", "dinov3_vit"), ("architectures", ["DINOv3ViTModel"])]
    for key, v in pairs:
        check(hcfg.get(key) == v, f"config.json {key}: {hcfg.get(key)!r}, expected {v!r}")
    try:
        model, _ = hf_dinov3_vit.load(hf_dir)
        with torch.no_grad():
            last, pooled = model(torch.randn(2, 3, 2 * ocfg["patch_size"], 3 * ocfg["patch_size"]))
        R = ocfg["n_storage_tokens"]
        check(tuple(last.shape) == (2, 1 + R + 6, D) and torch.isfinite(last).all().item(), "forward shape/finite")
    except Exception as e:  # noqa: BLE001
        check(False, f"transcription load: {e}")
    print(f"{hf_dir}: names {'ok' if ok else 'FAIL'} ({len(hf)} HF tensors, {len(orig)} official)")
    return ok


def forward(hf_dir, io_path):
    io, _ = st_oracle.load(io_path)
    model, _ = hf_dinov3_vit.load(hf_dir)
    with torch.no_grad():
        last, pooled = model(torch.from_numpy(io["images"]))
    e1, e2 = rel(io["x_norm"], last.numpy()), rel(io["x_norm"][:, 0], pooled.numpy())
    good = e1 <= TOL and e2 <= TOL
    print(f"{hf_dir}: C forward vs transcription: last_hidden_state rel err {e1:.2e}, pooler_output {e2:.2e} {'ok' if good else 'FAIL'}")
    return good


def embed(crop, hf_dir, feats, ids):
    from PIL import Image
    import torchvision.transforms as T
    tf = T.Compose([T.CenterCrop(crop), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    paths = [l.rstrip("\n") for l in open(ids) if l.strip()]
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    model, c = hf_dinov3_vit.load(hf_dir)
    got, _ = st_oracle.load(feats)
    with torch.no_grad():
        last, pooled = model(x)
    e1 = rel(got["cls"], pooled.numpy())
    e2 = rel(got["mean_patch"], last[:, 1 + c.num_register_tokens:].mean(1).numpy())
    good = e1 <= TOL and e2 <= TOL
    print(f"{hf_dir}: dinoembed vs transcription: cls rel err {e1:.2e}, mean-patch {e2:.2e} {'ok' if good else 'FAIL'}")
    return good


def run_one(a):
    if a and a[0] == "names" and len(a) == 4:
        return names(*a[1:])
    if a and a[0] == "forward" and len(a) == 3:
        return forward(*a[1:])
    if a and a[0] == "embed" and len(a) == 6 and a[1] == "--crop":
        return embed(int(a[2]), *a[3:])
    print(__doc__)
    return False


def main():
    # several commands in one process (torch imports once): CMD ARGS... [+ CMD ARGS...]
    cmds, cur = [], []
    for x in sys.argv[1:]:
        if x == "+":
            cmds.append(cur)
            cur = []
        else:
            cur.append(x)
    cmds.append(cur)
    ok = True
    for c in cmds:
        ok &= run_one(c)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
