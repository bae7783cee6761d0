"""A float64 PyTorch (1.13, CPU) transcription of DINOv3's DinoVisionTransformer backbone.

Transcribes, from facebookresearch/dinov3 (unpacked at /work/ref/dinov3):
  dinov3/models/vision_transformer.py   DinoVisionTransformer (prepare_tokens_with_masks,
                                        forward_features_list: rope per block, untied CLS norms)
  dinov3/layers/rope_position_encoding.py  RopePositionEmbedding (periods, coords, augmentation)
  dinov3/layers/attention.py            SelfAttention.compute_attention, apply_rope, rope_apply,
                                        rope_rotate_half, LinearKMaskedBias
  dinov3/layers/block.py                SelfAttentionBlock._forward / _forward_list (sample subsets)
  dinov3/layers/ffn_layers.py           Mlp, SwiGLUFFN (align_to)
  dinov3/layers/layer_scale.py, patch_embed.py
State-dict names equal the official ones (cls_token, storage_tokens, mask_token, patch_embed.proj.*,
blocks.N.norm1/attn.qkv/attn.proj/ls1.gamma/norm2/mlp.(fc1,fc2 | w1,w2,w3)/ls2.gamma, norm, cls_norm,
local_cls_norm); the official buffers rope_embed.periods and attn.qkv.bias_mask are computed, not stored.

How it was checked against the official code: the official module itself, imported side by side under
torch 1.13 (tests/make_dinov3_vit_fixtures.py: torch._dynamo and torch.compiler stubbed, the missing
F.scaled_dot_product_attention supplied by hand, the model in float64 with its rope dtype set to
float64), on the fixtures' weights and inputs, with the same coordinate augmentation draws (replayed
from the same torch seed): forward outputs and every parameter gradient agree to ~1e-12 (the script
asserts 1e-9 and prints the largest difference). Stochastic-depth subsets are not compared that way
(the official draws them with randperm inside the block); the transcription takes them explicitly.

Differences from the official module, all deliberate:
  - coordinate augmentation values are passed in (aug[block] = dict(shift=(sy, sx), jitter=(jy, jx),
    rescale=r)) instead of drawn inside the forward, so another implementation can use the same draw;
  - stochastic-depth subsets are passed in (subsets[block][branch] = kept image indices);
  - everything in float64 (the official rope runs in bf16/fp32, its pos_embed_rope_dtype).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

NORM_EPS = {"layernorm": 1e-6, "layernormbf16": 1e-5}
SWIGLU_ALIGN = {"swiglu": 8, "swiglu32": 32, "swiglu64": 64, "swiglu128": 128}


def ffn_hidden(ffn_layer, dim, ffn_ratio):
    """Hidden width as SelfAttentionBlock (int(dim * ffn_ratio)) and SwiGLUFFN (2/3, align_to)."""
    h = int(dim * ffn_ratio)
    if ffn_layer == "mlp":
        return h
    d = int(h * 2 / 3)
    return d + (-d % SWIGLU_ALIGN[ffn_layer])


def rope_periods(D_head, base=100.0, min_period=None, max_period=None, dtype=torch.float64):
    """RopePositionEmbedding._init_weights."""
    if base is not None:
        return base ** (2 * torch.arange(D_head // 4, dtype=dtype) / (D_head // 2))
    ratio = max_period / min_period
    exponents = torch.linspace(0, 1, D_head // 4, dtype=dtype)
    return ratio ** exponents / ratio * max_period


def rope_sincos(H, W, periods, normalize_coords="separate", aug=None, dtype=torch.float64):
    """RopePositionEmbedding.forward with the augmentation given: (sin, cos), each [H*W, D_head]."""
    dd = dict(dtype=dtype)
    if normalize_coords == "max":
        coords_h, coords_w = torch.arange(0.5, H, **dd) / max(H, W), torch.arange(0.5, W, **dd) / max(H, W)
    elif normalize_coords == "min":
        coords_h, coords_w = torch.arange(0.5, H, **dd) / min(H, W), torch.arange(0.5, W, **dd) / min(H, W)
    else:
        coords_h, coords_w = torch.arange(0.5, H, **dd) / H, torch.arange(0.5, W, **dd) / W
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)  # [HW, 2]
    coords = 2.0 * coords - 1.0
    if aug is not None:
        coords = coords + torch.tensor(aug["shift"], **dd)[None, :]
        coords = coords * torch.tensor(aug["jitter"], **dd)[None, :]
        coords = coords * aug["rescale"]
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]  # [HW, 2, D//4]
    angles = angles.flatten(1, 2).tile(2)  # [HW, D]
    return torch.sin(angles), torch.cos(angles)


def rope_rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_apply(x, sin, cos):
    return (x * cos) + (rope_rotate_half(x) * sin)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, qkv_bias, proj_bias, mask_k_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.mask_k_bias = mask_k_bias

    def forward(self, x, rope):
        B, N, C = x.shape
        bias = self.qkv.bias
        if bias is not None and self.mask_k_bias:  # LinearKMaskedBias: bias * bias_mask, k third 0
            mask = torch.ones_like(bias)
            mask[C:2 * C] = 0
            bias = bias * mask
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.heads, C // self.heads)
        q, k, v = [t.transpose(1, 2) for t in torch.unbind(qkv, 2)]
        if rope is not None:  # apply_rope: the last HW tokens only
            sin, cos = rope
            prefix = N - sin.shape[-2]
            q = torch.cat((q[:, :, :prefix], rope_apply(q[:, :, prefix:], sin, cos)), dim=-2)
            k = torch.cat((k[:, :, :prefix], rope_apply(k[:, :, prefix:], sin, cos)), dim=-2)
        # scaled_dot_product_attention (torch 1.13 has none): softmax(q k^T / sqrt(Dh)) v
        att = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, bias):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    def __init__(self, dim, hidden, bias):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    def __init__(self, dim, init):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim, heads, ffn_layer, hidden, layerscale, qkv_bias, proj_bias, ffn_bias, mask_k_bias, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads, qkv_bias, proj_bias, mask_k_bias)
        self.ls1 = LayerScale(dim, layerscale) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, ffn_bias) if ffn_layer == "mlp" else SwiGLUFFN(dim, hidden, ffn_bias)
        self.ls2 = LayerScale(dim, layerscale) if layerscale else nn.Identity()

    def forward(self, x, rope, subsets=None):
        """SelfAttentionBlock._forward; the rope has no batch dimension, so subsets do not index it."""
        if subsets is None:
            x = x + self.ls1(self.attn(self.norm1(x), rope))
            return x + self.ls2(self.mlp(self.norm2(x)))
        B = x.shape[0]
        keep = subsets[0]
        x = torch.index_add(x, 0, keep, self.ls1(self.attn(self.norm1(x[keep]), rope)), alpha=B / keep.numel())
        keep = subsets[1]
        return torch.index_add(x, 0, keep, self.ls2(self.mlp(self.norm2(x[keep]))), alpha=B / keep.numel())


class DinoVisionTransformer(nn.Module):
    def __init__(self, patch=16, dim=384, depth=12, heads=6, ffn_layer="mlp", ffn_ratio=4.0, layerscale=1e-5,
                 qkv_bias=True, proj_bias=True, ffn_bias=True, n_storage_tokens=0, mask_k_bias=False,
                 untie_cls_and_patch_norms=False, untie_global_and_local_cls_norm=False, norm_layer="layernorm",
                 rope_base=100.0, rope_min_period=None, rope_max_period=None, rope_normalize_coords="separate"):
        super().__init__()
        eps = NORM_EPS[norm_layer]
        self.patch, self.dim, self.heads, self.R = patch, dim, heads, n_storage_tokens
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if n_storage_tokens > 0:
            self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.periods = rope_periods(dim // heads, rope_base, rope_min_period, rope_max_period)  # not a parameter
        self.normalize_coords = rope_normalize_coords
        hidden = ffn_hidden(ffn_layer, dim, ffn_ratio)
        self.blocks = nn.ModuleList([Block(dim, heads, ffn_layer, hidden, layerscale, qkv_bias, proj_bias, ffn_bias,
                                           mask_k_bias, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.cls_norm = nn.LayerNorm(dim, eps=eps) if untie_cls_and_patch_norms else None
        self.local_cls_norm = nn.LayerNorm(dim, eps=eps) if untie_global_and_local_cls_norm else None

    def prepare_tokens(self, images, masks=None):
        x = self.patch_embed.proj(images)
        B, _, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)
        if masks is not None:
            x = torch.where(masks.reshape(B, -1).bool().unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        parts = [self.cls_token.expand(B, -1, -1)]
        if self.R > 0:
            parts.append(self.storage_tokens.expand(B, -1, -1))
        return torch.cat(parts + [x], dim=1), (H, W)

    def forward(self, images, masks=None, local=False, aug=None, subsets=None):
        """x_norm [B, 1+R+N, D]. local: the crop group is the official list's second (local crops, in
        training); aug: None or per block the augmentation dict; subsets: None or [depth][2] indices."""
        x, (H, W) = self.prepare_tokens(images, masks)
        for i, blk in enumerate(self.blocks):
            rope = rope_sincos(H, W, self.periods.to(x.dtype), self.normalize_coords,
                               None if aug is None else aug[i], x.dtype)
            sub = None if subsets is None else [torch.as_tensor(subsets[i][j], dtype=torch.long) for j in range(2)]
            x = blk(x, rope, sub)
        n = self.R + 1
        if self.cls_norm is None and self.local_cls_norm is None:
            return self.norm(x)
        if self.local_cls_norm is not None and local:
            cls = self.local_cls_norm(x[:, :n])
        elif self.cls_norm is not None:
            cls = self.cls_norm(x[:, :n])
        else:
            cls = self.norm(x[:, :n])
        return torch.cat([cls, self.norm(x[:, n:])], dim=1)


@torch.no_grad()
def randomize_weights(model):
    """Random weights at a realistic scale (not the official init), every gradient visible."""
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.copy_(0.5 + 0.1 * torch.randn_like(p))
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn_like(p))
        elif name.endswith("weight"):
            p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
        else:  # cls_token, storage_tokens, mask_token
            p.copy_(0.5 * torch.randn_like(p))
