"""A PyTorch (1.13, CPU) transcription of Hugging Face transformers' DINOv3ViTModel, inference only.

Transcribes src/transformers/models/dinov3_vit/modeling_dinov3_vit.py and configuration_dinov3_vit.py
(huggingface/transformers, commits 015e6876 and fd302075 of the modeling file, 1505215d of the config;
model_type "dinov3_vit", the names written by convert_dinov3_vit_to_hf.py at a77460f2): the classes
DINOv3ViTEmbeddings, DINOv3ViTRopePositionEmbedding (+ get_patches_center_coordinates), rotate_half,
apply_rotary_pos_emb, DINOv3ViTAttention (eager_attention_forward), DINOv3ViTLayerScale, DINOv3ViTMLP,
DINOv3ViTGatedMLP, DINOv3ViTLayer and DINOv3ViTModel.forward, with HF's module names, so that the
state-dict names are exactly the ones `DINOv3ViTModel.from_pretrained(dir)` reads:

  embeddings.cls_token (1,1,C)  embeddings.mask_token (1,1,C)  embeddings.register_tokens (1,R,C)
  embeddings.patch_embeddings.{weight,bias}          (a Conv2d, kernel = stride = patch_size)
  layer.N.norm1.*  layer.N.attention.{q,k,v,o}_proj.weight (+ .bias when query/key/value/proj_bias)
  layer.N.layer_scale{1,2}.lambda1  layer.N.norm2.*
  layer.N.mlp.{up,down}_proj.*  (use_gated_mlp: mlp.{gate,up,down}_proj.*)   norm.*
  (rope_embeddings.inv_freq is a non-persistent buffer: never in the file)

Forward (eval mode: no RoPE coordinate augmentation, no drop path):
  x = [CLS, reg_1..reg_R, patches] (no absolute position embedding)
  RoPE on patch tokens only: coords of patch centres in [-1, 1] per axis (y, x), inv_freq =
  1/theta^(4i/head_dim), angles = 2 pi coord * inv_freq -> [HW, head_dim/2] (y block, x block) -> tiled
  twice; q, k of patch tokens: q*cos + rotate_half(q)*sin
  block: x += ls1 * o_proj(attn(norm1(x)));  x += ls2 * mlp(norm2(x))      (LayerNorm eps from config)
  last_hidden_state = norm(x);  pooler_output = last_hidden_state[:, 0]

Loading: `load(dir)` reads config.json and model.safetensors (tests/st_oracle.py, no `safetensors`
package needed) and loads the weights strictly: every tensor the module has must be in the file with its
shape, and every tensor in the file must have a place (transformers itself only warns about missing or
unexpected keys; a silent warning is a failure here). Only hidden_act "gelu" (exact erf, HF's
GELUActivation) and "silu" are accepted.

How it was checked: read line by line against the HF files above; and (by hand, 2026-12-05) against the
official model, facebookresearch/dinov3 dinov3/models/vision_transformer.py DinoVisionTransformer
(imported from /work/ref/dinov3 with torch._dynamo and scaled_dot_product_attention shimmed for torch
1.13), with random weights (random biases, LayerScale, k bias masked, MLP and SwiGLU, 0 and 4 storage
tokens, non-square 48x32 px input) converted from the official names by HF's own rules
(convert_dinov3_vit_to_hf.py: split_qkv, the key-mapping regexes, k bias / bias_mask / local_cls_norm /
rope periods dropped, mask_token unsqueezed): `x_norm_clstoken` vs pooler_output and
cat(x_storage_tokens, x_norm_patchtokens) vs last_hidden_state[:, 1:] agree to max |diff| <= 2.4e-6 (values up to 5) (see
tests/torch_ref/check_hf_dinov3_vs_official.py, which needs that checkout and is not run by ctest).
In CI, `hf_dinov3_vit.py --self-check` (ctest export_dinov3.dinov3_transcription_self_check) repeats the
comparison against the independent float64 transcription of the official model, tests/torch_ref/
dinov3_vit.py (itself checked against the official module): relative error <= 1e-5 required, ~5e-7 seen.
transformers itself cannot run DINOv3 here: DINOv3ViTModel first shipped in transformers 4.56, and the
transformers releases since well before that disable PyTorch below a minimum version (is_torch_available:
"Disabling PyTorch because PyTorch >= 2.x is required", 2.1 and later 2.4 / 2.5), far above Debian's 1.13;
tests/make_hf_venv.sh's venv (transformers 4.48.3) therefore stays DINOv2-only.

Use (python3 hf_dinov3_vit.py --self-check runs the self-check):
    sys.path.insert(0, "<repo>/tests/torch_ref")
    import hf_dinov3_vit
    model, cfg = hf_dinov3_vit.load("out/export-dir")
    with torch.no_grad():
        last_hidden_state, pooler_output = model(pixel_values)     # [B, 1+R+HW, C], [B, C]
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

# DINOv3ViTConfig's defaults (configuration_dinov3_vit.py): what a config.json without the key means.
CONFIG_DEFAULTS = {
    "patch_size": 16, "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12,
    "num_attention_heads": 6, "hidden_act": "gelu", "attention_dropout": 0.0, "initializer_range": 0.02,
    "layer_norm_eps": 1e-5, "rope_theta": 100.0, "image_size": 224, "num_channels": 3, "query_bias": True,
    "key_bias": False, "value_bias": True, "proj_bias": True, "mlp_bias": True, "layerscale_value": 1.0,
    "drop_path_rate": 0.0, "use_gated_mlp": False, "num_register_tokens": 0, "pos_embed_shift": None,
    "pos_embed_jitter": None, "pos_embed_rescale": 2.0,
}

ACT = {"gelu": lambda x: F.gelu(x), "silu": F.silu}


class Config:
    def __init__(self, d):
        for k, v in CONFIG_DEFAULTS.items():
            setattr(self, k, d.get(k, v))
        if self.hidden_act not in ACT:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not transcribed (gelu, silu)")


class Embeddings(nn.Module):  # DINOv3ViTEmbeddings
    def __init__(self, c):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.register_tokens = nn.Parameter(torch.zeros(1, c.num_register_tokens, c.hidden_size))
        self.patch_embeddings = nn.Conv2d(c.num_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)

    def forward(self, pixel_values, bool_masked_pos=None):
        B = pixel_values.shape[0]
        p = self.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)
        if bool_masked_pos is not None:
            p = torch.where(bool_masked_pos.unsqueeze(-1), self.mask_token.to(p.dtype), p)
        return torch.cat([self.cls_token.expand(B, -1, -1), self.register_tokens.expand(B, -1, -1), p], dim=1)


def patch_center_coordinates(h, w, dtype):  # get_patches_center_coordinates
    ch = torch.arange(0.5, h, dtype=dtype) / h
    cw = torch.arange(0.5, w, dtype=dtype) / w
    coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), dim=-1).flatten(0, 1)
    return 2.0 * coords - 1.0


class RopePositionEmbedding(nn.Module):  # DINOv3ViTRopePositionEmbedding (eval mode)
    def __init__(self, c):
        super().__init__()
        self.patch_size = c.patch_size
        head_dim = c.hidden_size // c.num_attention_heads
        inv_freq = 1 / c.rope_theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)  # (head_dim/4,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, pixel_values):
        _, _, H, W = pixel_values.shape
        coords = patch_center_coordinates(H // self.patch_size, W // self.patch_size, torch.float32)
        angles = 2 * math.pi * coords[:, :, None] * self.inv_freq[None, None, :]  # [HW, 2, head_dim/4]
        angles = angles.flatten(1, 2).tile(2)                                      # [HW, head_dim]
        return torch.cos(angles).to(pixel_values.dtype), torch.sin(angles).to(pixel_values.dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    n_prefix = q.shape[-2] - sin.shape[-2]  # CLS + registers: no rotation
    qp, qx = q.split((n_prefix, sin.shape[-2]), dim=-2)
    kp, kx = k.split((n_prefix, sin.shape[-2]), dim=-2)
    qx = qx * cos + rotate_half(qx) * sin
    kx = kx * cos + rotate_half(kx) * sin
    return torch.cat((qp, qx), dim=-2), torch.cat((kp, kx), dim=-2)


class Attention(nn.Module):  # DINOv3ViTAttention with eager_attention_forward
    def __init__(self, c):
        super().__init__()
        D = c.hidden_size
        self.heads, self.head_dim = c.num_attention_heads, D // c.num_attention_heads
        self.scaling = self.head_dim ** -0.5
        self.k_proj = nn.Linear(D, D, bias=c.key_bias)
        self.v_proj = nn.Linear(D, D, bias=c.value_bias)
        self.q_proj = nn.Linear(D, D, bias=c.query_bias)
        self.o_proj = nn.Linear(D, D, bias=c.proj_bias)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = (p(x).view(B, T, self.heads, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        w = torch.matmul(q, k.transpose(-1, -2)) * self.scaling
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(w, v).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(o)


class LayerScale(nn.Module):  # DINOv3ViTLayerScale
    def __init__(self, c):
        super().__init__()
        self.lambda1 = nn.Parameter(c.layerscale_value * torch.ones(c.hidden_size))

    def forward(self, x):
        return x * self.lambda1


class MLP(nn.Module):  # DINOv3ViTMLP
    def __init__(self, c):
        super().__init__()
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act = ACT[c.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act(self.up_proj(x)))


class GatedMLP(nn.Module):  # DINOv3ViTGatedMLP
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act = ACT[c.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):  # DINOv3ViTLayer (eval: drop path is the identity)
    def __init__(self, c):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.attention = Attention(c)
        self.layer_scale1 = LayerScale(c)
        self.norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = GatedMLP(c) if c.use_gated_mlp else MLP(c)
        self.layer_scale2 = LayerScale(c)

    def forward(self, x, cos, sin):
        x = self.layer_scale1(self.attention(self.norm1(x), cos, sin)) + x
        return self.layer_scale2(self.mlp(self.norm2(x))) + x


class DINOv3ViTModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.rope_embeddings = RopePositionEmbedding(c)
        self.layer = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, pixel_values, bool_masked_pos=None):
        """Returns (last_hidden_state [B, 1+R+HW, C], pooler_output [B, C])."""
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.weight.dtype)
        x = self.embeddings(pixel_values, bool_masked_pos)
        cos, sin = self.rope_embeddings(pixel_values)
        for layer in self.layer:
            x = layer(x, cos, sin)
        x = self.norm(x)
        return x, x[:, 0, :]


def official_to_hf(sd, dim=None):
    """Official dinov3 state-dict names -> DINOv3ViTModel names, by the rules of transformers'
    convert_dinov3_vit_to_hf.py: qkv split into q/k/v_proj by rows (torch.chunk(3)); the masked k bias,
    bias_mask buffers, local_cls_norm and rope_embed.periods dropped (a k bias without a bias_mask is
    kept: key_bias true); cls_token, mask_token (unsqueezed to (1,1,C)), storage_tokens
    (-> register_tokens) and patch_embed.proj go under embeddings.; blocks.N -> layer.N; attn.proj ->
    attention.o_proj; lsK.gamma -> layer_scaleK.lambda1; mlp.fc1/fc2 -> up/down_proj; SwiGLU w1/w2/w3 ->
    gate/up/down_proj. sd: name -> numpy array; returns the same. With dim, an empty (1,0,C)
    register_tokens is added when there are no storage tokens (the module always has the parameter)."""
    masked = {k[: -len(".bias_mask")] for k in sd if k.endswith(".bias_mask")}
    out = {}
    for k, v in sd.items():
        if k.endswith("bias_mask") or k.startswith("local_cls_norm.") or k.startswith("rope_embed."):
            continue
        if ".attn.qkv." in k:
            for part, name in zip(np.split(np.asarray(v), 3, axis=0), ("q_proj", "k_proj", "v_proj")):
                if name == "k_proj" and k.endswith("bias") and k[: -len(".bias")] in masked:
                    continue
                out[k.replace("qkv", name)] = part
            continue
        out[k] = np.asarray(v)
    emb = [("cls_token", "embeddings.cls_token"), ("mask_token", "embeddings.mask_token"),
           ("storage_tokens", "embeddings.register_tokens"), ("patch_embed.proj.", "embeddings.patch_embeddings.")]
    blk = [("attn.proj.", "attention.o_proj."), ("attn.", "attention."), ("ls1.gamma", "layer_scale1.lambda1"),
           ("ls2.gamma", "layer_scale2.lambda1"), ("mlp.fc1.", "mlp.up_proj."), ("mlp.fc2.", "mlp.down_proj."),
           ("mlp.w1.", "mlp.gate_proj."), ("mlp.w2.", "mlp.up_proj."), ("mlp.w3.", "mlp.down_proj.")]
    res = {}
    for k, v in out.items():
        for a, b in emb:
            if k.startswith(a):
                k = b + k[len(a):]
        if k.startswith("blocks."):
            _, n, rest = k.split(".", 2)
            for a, b in blk:
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            k = f"layer.{n}.{rest}"
        if k == "embeddings.mask_token":
            v = v.reshape(1, 1, -1)
        res[k] = v
    if dim is not None and "embeddings.register_tokens" not in res:
        res["embeddings.register_tokens"] = np.zeros((1, 0, dim), np.float32)
    return res


def load(d):
    """Builds the model of directory d (config.json + model.safetensors) and loads it strictly."""
    sys.path.insert(0, os.path.dirname(HERE))
    import st_oracle

    cfg = json.load(open(os.path.join(d, "config.json")))
    if cfg.get("model_type") != "dinov3_vit":
        raise ValueError(f"{d}/config.json: model_type is {cfg.get('model_type')!r}, not 'dinov3_vit'")
    c = Config(cfg)
    model = DINOv3ViTModel(c).eval()
    sd, meta = st_oracle.load(os.path.join(d, "model.safetensors"))
    if meta and meta.get("format", "pt") not in ("pt", "tf", "flax", "mlx"):
        raise ValueError(f"{d}/model.safetensors: __metadata__.format {meta['format']!r} is refused by transformers")
    want = model.state_dict()
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    if missing or unexpected:
        raise ValueError(f"{d}: missing tensors {missing}, unexpected tensors {unexpected}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ValueError(f"{d}: tensor {k} has shape {tuple(v.shape)}, the config implies {tuple(want[k].shape)}")
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in sd.items()}, strict=True)
    return model, c


def self_check():
    """This transcription and transformers' conversion rules against the independent transcription of the
    official model (tests/torch_ref/dinov3_vit.py, checked there against the official module): random
    weights in the official names -> official_to_hf -> config.json + model.safetensors -> load() ->
    forward, vs the official forward (float64), on a non-square input; MLP and SwiGLU64, 0 and 4 storage
    tokens, masked and unmasked k bias, eps 1e-5 and 1e-6, RoPE base 100 and 7. Returns True iff every
    case agrees to 1e-5 relative (max |diff| / max |ref|); prints one line per case."""
    import tempfile

    import st_oracle
    from dinov3_vit import DinoVisionTransformer, randomize_weights

    ok = True
    cases = [dict(ffn_layer="mlp", n_storage_tokens=4, mask_k_bias=True, norm_layer="layernormbf16", rope_base=100.0),
             dict(ffn_layer="swiglu64", n_storage_tokens=0, mask_k_bias=False, norm_layer="layernorm", rope_base=7.0)]
    for i, kw in enumerate(cases):
        torch.manual_seed(i)
        ref = DinoVisionTransformer(patch=8, dim=64, depth=2, heads=4, **kw).double().eval()
        randomize_weights(ref)
        sd = {k: v.numpy() for k, v in ref.state_dict().items()}
        if kw["mask_k_bias"]:  # the official module's buffer, which tells the conversion to drop the k bias
            for k in list(sd):
                if k.endswith(".attn.qkv.bias"):
                    sd[k + "_mask"] = np.ones_like(sd[k])
        hf = {k: v.astype(np.float32) for k, v in official_to_hf(sd, 64).items()}
        swiglu = kw["ffn_layer"] != "mlp"
        cfg = {"model_type": "dinov3_vit", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": int(sd["blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]),
               "patch_size": 8, "image_size": 32, "num_register_tokens": kw["n_storage_tokens"],
               "layer_norm_eps": 1e-5 if kw["norm_layer"] == "layernormbf16" else 1e-6, "rope_theta": kw["rope_base"],
               "key_bias": not kw["mask_k_bias"], "use_gated_mlp": swiglu, "hidden_act": "silu" if swiglu else "gelu"}
        d = tempfile.mkdtemp()
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        st_oracle.save(os.path.join(d, "model.safetensors"), hf, {"format": "pt"})
        model, _ = load(d)
        x = torch.randn(2, 3, 40, 24, dtype=torch.float64)  # 5 x 3 patches
        with torch.no_grad():
            want = ref(x)
            last, pooled = model(x.float())
        scale = want.abs().max().item()
        e1 = (last.double() - want).abs().max().item() / scale
        e2 = (pooled.double() - want[:, 0]).abs().max().item() / scale
        good = max(e1, e2) <= 1e-5
        ok &= good
        print(f"self-check {kw}: last_hidden_state rel err {e1:.2e}, pooler_output {e2:.2e} {'ok' if good else 'FAIL'}")
    return ok


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-check"]:
        sys.path.insert(0, os.path.dirname(HERE))
        sys.exit(0 if self_check() else 1)
    print(__doc__)
    sys.exit(2)
