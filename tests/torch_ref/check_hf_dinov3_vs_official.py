#!/usr/bin/python3
"""By-hand check (not run by ctest): hf_dinov3_vit.py against the official DINOv3 ViT.

Needs a checkout of facebookresearch/dinov3 (default /work/ref/dinov3; argument 1 overrides). Builds the
official DinoVisionTransformer (dinov3/models/vision_transformer.py) with random weights, converts its
state dict to Hugging Face names by the rules of transformers' convert_dinov3_vit_to_hf.py
(hf_dinov3_vit.official_to_hf), writes config.json + model.safetensors, loads them with
hf_dinov3_vit.load and compares the outputs. torch 1.13 lacks torch._dynamo and
scaled_dot_product_attention: both are shimmed (the shim is the textbook softmax(qk^T/sqrt(d))v).
Exit 0 iff every case agrees to 1e-5 relative.
"""
import json
import math
import os
import sys
import tempfile
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import hf_dinov3_vit  # noqa: E402
import st_oracle  # noqa: E402

REF = sys.argv[1] if len(sys.argv) > 1 else "/work/ref/dinov3"
sys.path.insert(0, REF)
if not hasattr(torch, "_dynamo"):
    torch._dynamo = types.SimpleNamespace(config=types.SimpleNamespace())
if not hasattr(torch, "compiler"):
    torch.compiler = types.SimpleNamespace(allow_in_graph=lambda f: f, disable=lambda f=None, **k: f or (lambda g: g))
if not hasattr(F, "scaled_dot_product_attention"):
    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return w @ v
    F.scaled_dot_product_attention = sdpa
from dinov3.models.vision_transformer import DinoVisionTransformer  # noqa: E402


def case(R, ffn, seed):
    torch.manual_seed(seed)
    D, heads, depth = 64, 4, 2
    m = DinoVisionTransformer(img_size=32, patch_size=16, embed_dim=D, depth=depth, num_heads=heads, ffn_ratio=4.0,
                              ffn_layer=ffn, n_storage_tokens=R, layerscale_init=1e-5, mask_k_bias=True,
                              norm_layer="layernormbf16", pos_embed_rope_dtype="fp32",
                              untie_global_and_local_cls_norm=True, qkv_bias=True)
    m.init_weights()
    with torch.no_grad():
        for n, p in m.named_parameters():  # random everywhere (LayerScale 1e-5 and zero biases hide mistakes)
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if ("norm" in n and n.endswith("weight")) or "gamma" in n else 0.0))
    m.eval()
    sd = m.state_dict()
    hf = {k: v.astype(np.float32) for k, v in hf_dinov3_vit.official_to_hf({k: v.numpy() for k, v in sd.items()}, D).items()}
    swiglu = ffn != "mlp"
    inter = sd["blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    cfg = {"model_type": "dinov3_vit", "hidden_size": D, "num_hidden_layers": depth, "num_attention_heads": heads,
           "intermediate_size": inter, "patch_size": 16, "image_size": 32, "num_register_tokens": R,
           "layer_norm_eps": 1e-5, "rope_theta": 100.0, "key_bias": False, "use_gated_mlp": swiglu,
           "hidden_act": "silu" if swiglu else "gelu", "layerscale_value": 1.0}
    d = tempfile.mkdtemp()
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    st_oracle.save(os.path.join(d, "model.safetensors"), hf, {"format": "pt"})
    model, _ = hf_dinov3_vit.load(d)
    x = torch.randn(3, 3, 48, 32)  # non-square: 3 x 2 patches
    with torch.no_grad():
        ref = m.forward_features(x)
        last, pooled = model(x)
    e1 = (pooled - ref["x_norm_clstoken"]).abs().max().item()
    rest = torch.cat([ref["x_storage_tokens"], ref["x_norm_patchtokens"]], dim=1)
    e2 = (last[:, 1:] - rest).abs().max().item()
    scale = max(rest.abs().max().item(), 1e-12)
    ok = max(e1, e2) <= 1e-5 * scale
    print(f"R={R} ffn={ffn}: pooler vs x_norm_clstoken {e1:.2e}, tokens {e2:.2e} (max |ref| {scale:.2f}) {'ok' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    ok = all([case(0, "mlp", 1), case(4, "mlp", 2), case(4, "swiglu", 3), case(0, "swiglu64", 4)])
    sys.exit(0 if ok else 1)
