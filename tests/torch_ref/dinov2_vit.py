"""A hand-written PyTorch (1.13, CPU) reference of DINOv2's DinoVisionTransformer backbone.

Semantics follow /work/shared/docs/dinov2-reference.md section 4 (facebookresearch/dinov2,
dinov2/models/vision_transformer.py and dinov2/layers/*), written independently:

  tokens  [CLS, reg_1..reg_R, patch_1..patch_N]
  x = patch_embed(img) (Conv2d k=s=p) -> mask_token where masked -> prepend CLS -> + pos_embed
      (bicubic-interpolated to the crop's grid) -> insert registers after CLS (no pos-embed)
  block:  x += LS1(attn(LN1(x)));  x += LS2(ffn(LN2(x)))   (LN eps 1e-6, exact-erf GELU)
  x_norm = LN(x) on all tokens

State-dict names equal the reference's, so weights can be exchanged with it and with the C model.
Attention is written out by hand (torch 1.13 has no scaled_dot_product_attention).

Stochastic depth is the reference's "sample-subset" form. Subsets can be passed explicitly
(subsets[block][branch] = LongTensor of kept image indices; branch 0 = attention, 1 = ffn), so that
another implementation can be fed the same draw; when absent and the module is training with
drop_path_rate > 0 they are drawn with torch.randperm like the reference.

The whole module works in float64 too (`.double()`), which the fixture script uses to get a reference
free of float32 rounding; position embeddings are interpolated in the module's dtype (the reference
casts them to float32, which is the same thing in float32).

Use from another script (run with /usr/bin/python3):
    sys.path.insert(0, "<repo>/tests/torch_ref")
    from dinov2_vit import DinoVisionTransformer, vit_from_arch
    vit = DinoVisionTransformer(img_size=16, patch=4, dim=32, depth=2, heads=2, n_registers=4)
    x_norm = vit(images, masks=None, subsets=None)          # [B, 1+R+N, D]
    feats = vit.forward_features(images)                   # the reference's output dict
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-6

# arch -> (embed_dim, depth, num_heads), as the reference's vit_small/vit_base/vit_large/vit_giant2
ARCHS = {
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_giant2": (1536, 40, 24),
}


def swiglu_hidden(mlp_hidden):
    """Hidden width of each SwiGLU half for an MLP hidden width, rounded like SwiGLUFFNFused."""
    return (int(mlp_hidden * 2 / 3) + 7) // 8 * 8


def drop_subset_size(batch, rate):
    """Images kept per residual branch by sample-subset stochastic depth."""
    return max(int(batch * (1 - rate)), 1) if rate > 0 else batch


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim, in_chans=3):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, img):  # [B,C,H,W] -> [B,N,D]
        return self.proj(img).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True, proj_bias=True):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} not divisible by heads {heads}"
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):  # [B,T,D]
        B, T, D = x.shape
        Dh = D // self.heads
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, Dh).permute(2, 0, 3, 1, 4)  # 3,B,H,T,Dh
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q * Dh ** -0.5) @ k.transpose(-2, -1)  # B,H,T,T
        probs = scores.softmax(dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(B, T, D)  # heads concatenated
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim, hidden, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU


class SwiGLU(nn.Module):
    """hidden is the width of each half (already rounded)."""

    def __init__(self, dim, hidden, bias=True):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim, init):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim, heads, ffn, ffn_hidden, layerscale, qkv_bias, proj_bias, ffn_bias, drop_path_rate):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads, qkv_bias, proj_bias)
        self.ls1 = LayerScale(dim, layerscale) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, ffn_hidden, ffn_bias) if ffn == "mlp" else SwiGLU(dim, ffn_hidden, ffn_bias)
        self.ls2 = LayerScale(dim, layerscale) if layerscale else nn.Identity()
        self.drop_path_rate = drop_path_rate

    def _branch(self, i, x):
        if i == 0:
            return self.ls1(self.attn(self.norm1(x)))
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x, subsets=None):
        """subsets: None (every image runs both branches) or a pair of LongTensors of kept images."""
        B = x.shape[0]
        for i in range(2):
            if subsets is None:
                x = x + self._branch(i, x)
                continue
            keep = subsets[i]
            S = keep.numel()
            # gather the kept images, run the branch on them, add back scaled by B/S (LayerScale inside)
            br = self._branch(i, x[keep])
            x = torch.index_add(x.flatten(1), 0, keep, br.flatten(1), alpha=B / S).view_as(x)
        return x


def pos_embed_interpolate(patch_pos, M, g, offset, antialias):
    """patch_pos [M*M, D] -> [g*g, D]: bicubic (A=-0.75, align_corners=False) as the reference.
    offset > 0: scale_factor (g+offset)/M (which also sets the source coordinates); else size g."""
    D = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, M, M, D).permute(0, 3, 1, 2)
    if offset:
        s = float(g + offset) / M
        out = F.interpolate(grid, scale_factor=(s, s), mode="bicubic", align_corners=False, antialias=antialias)
    else:
        out = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False, antialias=antialias)
    assert out.shape[-2:] == (g, g), f"interpolation gave {tuple(out.shape[-2:])}, wanted {g}x{g}"
    return out.permute(0, 2, 3, 1).reshape(g * g, D)


def pos_interp_matrix(M, g, offset, antialias, dtype=torch.float64):
    """The interpolation as a dense matrix W[g*g, M*M] (pos' = W pos), from the identity basis."""
    eye = torch.eye(M * M, dtype=dtype)
    return pos_embed_interpolate(eye, M, g, offset, antialias)  # [g*g, M*M]: column j = image of e_j


class DinoVisionTransformer(nn.Module):
    def __init__(self, img_size=224, patch=14, dim=384, depth=12, heads=6, ffn="mlp", mlp_ratio=4.0,
                 ffn_hidden=None, n_registers=0, layerscale=1e-5, drop_path_rate=0.0,
                 interpolate_offset=0.1, interpolate_antialias=False, qkv_bias=True, proj_bias=True,
                 ffn_bias=True):
        super().__init__()
        assert ffn in ("mlp", "swiglu", "swiglufused"), f"unknown ffn layer {ffn}"
        assert img_size % patch == 0, f"img_size {img_size} not a multiple of patch {patch}"
        ffn = "mlp" if ffn == "mlp" else "swiglu"
        if ffn_hidden is None:
            ffn_hidden = int(dim * mlp_ratio)
            if ffn == "swiglu":
                ffn_hidden = swiglu_hidden(ffn_hidden)
        self.cfg = dict(img_size=img_size, patch=patch, dim=dim, depth=depth, heads=heads, ffn=ffn,
                        ffn_hidden=ffn_hidden, n_registers=n_registers, layerscale=layerscale,
                        drop_path_rate=drop_path_rate, interpolate_offset=interpolate_offset,
                        interpolate_antialias=int(bool(interpolate_antialias)))
        self.patch = patch
        self.grid = img_size // patch
        self.n_registers = n_registers
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = bool(interpolate_antialias)
        self.drop_path_rate = drop_path_rate

        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, n_registers, dim)) if n_registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, ffn, ffn_hidden, layerscale, qkv_bias, proj_bias, ffn_bias, drop_path_rate)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    # ---- initialisation (the reference's init_weights) ------------------------------------------------
    @torch.no_grad()
    def init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        self.mask_token.zero_()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    m.bias.zero_()
        # Conv2d, LayerNorm and LayerScale keep their constructor defaults, as the reference
        return self

    # ---- forward --------------------------------------------------------------------------------------
    def interpolate_pos_encoding(self, g):
        """Position embeddings [1, 1+g*g, D] for a g x g patch grid."""
        if g == self.grid:
            return self.pos_embed
        patch_pos = pos_embed_interpolate(self.pos_embed[0, 1:], self.grid, g, self.interpolate_offset,
                                          self.interpolate_antialias)
        return torch.cat((self.pos_embed[:, :1], patch_pos.unsqueeze(0)), dim=1)

    def prepare_tokens(self, images, masks=None):
        B, _, H, W = images.shape
        assert H == W and H % self.patch == 0, f"crop {H}x{W} must be square and a multiple of {self.patch}"
        x = self.patch_embed(images)  # B,N,D
        if masks is not None:  # mask token replaces the patch embedding before pos-embed
            x = torch.where(masks.reshape(B, -1, 1).bool(), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(H // self.patch)
        if self.register_tokens is not None:  # registers go in after the pos-embed add
            x = torch.cat((x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]), dim=1)
        return x

    def draw_subsets(self, B, generator=None):
        """Reference-style draw: per block and branch, a random subset (sorted) of kept images."""
        S = drop_subset_size(B, self.drop_path_rate)
        return [[torch.randperm(B, generator=generator)[:S].sort().values for _ in range(2)]
                for _ in self.blocks]

    def forward_prenorm(self, images, masks=None, subsets=None):
        """subsets: None, or per block a pair of LongTensors (or an int array [depth,2,S])."""
        if subsets is None and self.training and self.drop_path_rate > 0:
            subsets = self.draw_subsets(images.shape[0])
        x = self.prepare_tokens(images, masks)
        for i, blk in enumerate(self.blocks):
            sub = None
            if subsets is not None:
                sub = [torch.as_tensor(subsets[i][j], dtype=torch.long) for j in range(2)]
            x = blk(x, sub)
        return x

    def forward(self, images, masks=None, subsets=None):
        """x_norm [B, T, D]: the final LayerNorm of every token."""
        return self.norm(self.forward_prenorm(images, masks, subsets))

    def forward_features(self, images, masks=None, subsets=None):
        """The reference's output dictionary."""
        x = self.forward_prenorm(images, masks, subsets)
        xn = self.norm(x)
        R = self.n_registers
        return {"x_norm_clstoken": xn[:, 0], "x_norm_regtokens": xn[:, 1:R + 1],
                "x_norm_patchtokens": xn[:, R + 1:], "x_prenorm": x, "masks": masks}


def vit_from_arch(arch, patch=14, img_size=224, n_registers=0, ffn="mlp", **kw):
    dim, depth, heads = ARCHS[arch]
    return DinoVisionTransformer(img_size=img_size, patch=patch, dim=dim, depth=depth, heads=heads, ffn=ffn,
                                 n_registers=n_registers, **kw)


@torch.no_grad()
def randomize_weights(model):
    """Random weights at a realistic scale for test fixtures (not the reference's init): LayerScale
    gammas near 0.5 and unit-variance linear outputs, so every block and every gradient is visible."""
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.copy_(0.5 + 0.1 * torch.randn_like(p))
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn_like(p))
        elif name.endswith("weight"):  # Linear / Conv2d
            p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
        else:  # cls_token, pos_embed, register_tokens, mask_token
            p.copy_(0.5 * torch.randn_like(p))
