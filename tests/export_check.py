#!/usr/bin/python3
"""Rebuilds exported backbones in PyTorch and compares their features with dinoembed's.

Used by tests/test_export.c. For every case (an export directory, dinoembed's safetensors features and
the tile-id list) the exported weights are loaded by an independent Python loader (HF, timm or original
names -> the original DINOv2 names, written here from export-formats.md, not from the C code) into the
reference ViT (tests/torch_ref/dinov2_vit.py), the tiles are preprocessed with torchvision as the
reference's inference transform (Resize bicubic -> CenterCrop -> ToTensor -> Normalize), and the CLS
and mean-patch features must match dinoembed's with relative error <= 1e-4 (max |diff| / max |ref|).

When `transformers` is importable, HF exports are also loaded with `AutoModel.from_pretrained(dir)` and
its pooler_output / last_hidden_state are compared the same way; when timm >= 1.0.20 is importable, timm
exports are loaded with `timm.create_model("local-dir:" + dir, pretrained=True)` and compared too.

usage: export_check.py --resize R --crop C DIR FEATS IDS [[--resize R2] [--crop C2] DIR FEATS IDS ...]
(--resize 0: no resize; options apply to the cases that follow them)
Exit 0 iff every comparison passes.
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "torch_ref"))
import st_oracle  # noqa: E402
from dinov2_vit import DinoVisionTransformer  # noqa: E402

TOL = 1e-4


def detect(sd):
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in sd):
        return "hf"
    if "reg_token" in sd or "mask_token" not in sd:
        return "timm"
    return "dinov2"


def hf_to_orig(sd):
    out = {}
    L = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    ren = {"embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
           "embeddings.position_embeddings": "pos_embed", "embeddings.register_tokens": "register_tokens",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    for k, v in ren.items():
        if k in sd:
            out[v] = sd[k]
    blk = {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
           "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3"}
    for i in range(L):
        h, o = f"encoder.layer.{i}.", f"blocks.{i}."
        for a, b in blk.items():
            for p in ("weight", "bias"):
                if h + a + "." + p in sd:
                    out[o + b + "." + p] = sd[h + a + "." + p]
        for p in ("weight", "bias"):
            q = [sd[h + f"attention.attention.{n}.{p}"] for n in ("query", "key", "value")]
            out[o + "attn.qkv." + p] = np.concatenate(q, axis=0)
        out[o + "ls1.gamma"] = sd[h + "layer_scale1.lambda1"]
        out[o + "ls2.gamma"] = sd[h + "layer_scale2.lambda1"]
    # every HF tensor has a place: 3 query/key/value pairs become one qkv pair per block
    assert len(out) == len(sd) - 4 * L, f"unmapped HF tensors: {len(sd)} in, {len(out)} out, {L} blocks"
    return out


def timm_to_orig(sd):
    """The inverse of timm's _convert_dinov2 (export-formats.md B.2)."""
    out = dict(sd)
    D = sd["cls_token"].shape[-1]
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        # no_embed_class: cls already holds cls + pos[0]; the class slot of pos_embed is zero
        out["pos_embed"] = np.concatenate([np.zeros((1, 1, D), np.float32), out["pos_embed"]], axis=1)
    if "mask_token" not in out:
        out["mask_token"] = np.zeros((1, D), np.float32)
    swiglu = sd["blocks.0.mlp.fc1.weight"].shape[0] == 2 * sd["blocks.0.mlp.fc2.weight"].shape[1]
    if swiglu:
        for k in list(out):
            if ".mlp.fc1." in k:
                out[k.replace(".mlp.fc1.", ".mlp.w12.")] = out.pop(k)
            elif ".mlp.fc2." in k:
                out[k.replace(".mlp.fc2.", ".mlp.w3.")] = out.pop(k)
    return out


def build_reference(d, naming, sd):
    cfg = json.load(open(os.path.join(d, "config.json")))
    if naming == "hf":
        dim, depth, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
        patch, img, R = cfg["patch_size"], cfg["image_size"], cfg.get("num_register_tokens", 0)
        assert cfg["layer_norm_eps"] == 1e-6
        assert cfg["model_type"] == ("dinov2_with_registers" if R else "dinov2")
        hidden = int(dim * cfg["mlp_ratio"])  # as transformers computes it
        if cfg["use_swiglu_ffn"]:
            ffn, hidden = "swiglu", (int(hidden * 2 / 3) + 7) // 8 * 8
        else:
            ffn = "mlp"
    elif naming == "timm":
        a = cfg["model_args"]
        dim, depth, heads, patch, img, R = a["embed_dim"], a["depth"], a["num_heads"], a["patch_size"], a["img_size"], a["reg_tokens"]
        hidden = int(dim * a["mlp_ratio"])  # as timm computes it; GluMlp halves it
        ffn = "swiglu" if "giant" in cfg["architecture"] else "mlp"
        if ffn == "swiglu":
            hidden //= 2
        assert a["no_embed_class"] == (R > 0)
    else:
        dim, depth, heads, patch, img, R = cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["patch_size"], cfg["img_size"], cfg["num_register_tokens"]
        ffn, hidden = ("swiglu" if cfg["ffn_layer"].startswith("swiglu") else "mlp"), cfg["ffn_hidden"]
    m = DinoVisionTransformer(img_size=img, patch=patch, dim=dim, depth=depth, heads=heads, ffn=ffn, ffn_hidden=hidden,
                              n_registers=R, layerscale=1.0, interpolate_offset=0.0)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    m.load_state_dict(state, strict=True)
    return m.eval(), R


def preprocess(paths, resize, crop):
    from PIL import Image
    import torchvision.transforms as T
    tf = [T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC)] if resize > 0 else []
    tf += [T.CenterCrop(crop), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    tf = T.Compose(tf)
    return torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def main():
    # options apply to the cases after them: --resize R --crop C DIR FEATS IDS [--crop C2 DIR FEATS IDS ...]
    args, cases, resize, crop = sys.argv[1:], [], None, None
    while args:
        if args[0] == "--resize":
            resize, args = int(args[1]), args[2:]
        elif args[0] == "--crop":
            crop, args = int(args[1]), args[2:]
        else:
            assert len(args) >= 3 and resize is not None and crop is not None, __doc__
            cases.append((args[0], args[1], args[2], resize, crop))
            args = args[3:]
    assert cases, __doc__
    try:
        import transformers  # noqa: F401
        have_hf = True
    except Exception:
        have_hf = False
    try:
        import timm  # noqa: F401
        have_timm = hasattr(timm, "__version__") and tuple(int(v) for v in timm.__version__.split(".")[:3] if v.isdigit()) >= (1, 0, 20)
    except Exception:
        have_timm = False
    ok = True
    for d, feats, ids, resize, crop in cases:
        sd, _ = st_oracle.load(os.path.join(d, "model.safetensors"))
        naming = detect(sd)
        orig = hf_to_orig(sd) if naming == "hf" else timm_to_orig(sd) if naming == "timm" else sd
        model, R = build_reference(d, naming, orig)
        paths = [l.rstrip("\n") for l in open(ids) if l.strip()]
        x = preprocess(paths, resize, crop)
        got, _ = st_oracle.load(feats)
        with torch.no_grad():
            out = model.forward_features(x)
        e_cls = rel(got["cls"], out["x_norm_clstoken"].numpy())
        e_mp = rel(got["mean_patch"], out["x_norm_patchtokens"].mean(1).numpy())
        good = e_cls <= TOL and e_mp <= TOL
        print(f"{d} [{naming}, {R} registers]: reference ViT  cls rel err {e_cls:.2e}, mean-patch {e_mp:.2e} {'ok' if good else 'FAIL'}")
        ok &= good
        if naming == "hf" and have_hf:
            from transformers import AutoModel
            hf = AutoModel.from_pretrained(d).eval()
            with torch.no_grad():
                o = hf(pixel_values=x)
            e_cls = rel(got["cls"], o.pooler_output.numpy())
            e_mp = rel(got["mean_patch"], o.last_hidden_state[:, 1 + R:].mean(1).numpy())
            good = e_cls <= TOL and e_mp <= TOL
            print(f"{d} [{type(hf).__name__}]: transformers  cls rel err {e_cls:.2e}, mean-patch {e_mp:.2e} {'ok' if good else 'FAIL'}")
            ok &= good
        if naming == "timm" and have_timm:  # timm >= 1.0.20 loads local directories ("local-dir:")
            import timm
            tm = timm.create_model("local-dir:" + os.path.abspath(d), pretrained=True).eval()
            with torch.no_grad():
                ff = tm.forward_features(x)
                pooled = tm(x)
            e_cls = max(rel(got["cls"], ff[:, 0].numpy()), rel(got["cls"], pooled.numpy()))
            e_mp = rel(got["mean_patch"], ff[:, tm.num_prefix_tokens:].mean(1).numpy())
            good = e_cls <= TOL and e_mp <= TOL
            print(f"{d} [timm {tm.default_cfg.get('architecture', '')}]: timm  cls rel err {e_cls:.2e}, mean-patch {e_mp:.2e} {'ok' if good else 'FAIL'}")
            ok &= good
    print("transformers:", "used" if have_hf else "not installed (reference ViT only)")
    print("timm:", "used" if have_timm else "not installed (>= 1.0.20 needed for local-dir)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
