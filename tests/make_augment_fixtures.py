#!/usr/bin/python3
"""Fixtures for tests/test_augment.c: torchvision 0.14 functional ops on PIL images with FIXED
parameters (what dinov2/data/augmentations.py runs), on small synthetic images.

Run with Debian's interpreter (it sees python3-torch / python3-torchvision / PIL):
    /usr/bin/python3 tests/make_augment_fixtures.py
Writes tests/fixtures/augment_ops.bin (raw little-endian arrays, each 8-byte aligned) and
tests/fixtures/augment_ops.txt (one line per array: name dtype ndim dims... byte_offset).
"""
import math
import os

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

assert torchvision.__version__.startswith("0.14"), torchvision.__version__
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")

arrays = []  # (name, np.ndarray)


def add(name, a):
    a = np.ascontiguousarray(a)
    assert a.dtype in (np.uint8, np.float32, np.float64, np.int32), a.dtype
    arrays.append((name, a))


def f32(x):  # the C side takes float32 factors (torch draws them in float32)
    return float(np.float32(x))


def make_image(w, h, seed):
    """Smooth colour gradients + blobs + noise: exercises every op (saturated and grey pixels)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    img[..., 0] = 128 + 100 * np.sin(x / 5.0 + seed)
    img[..., 1] = 128 + 90 * np.cos(y / 4.0 - x / 9.0)
    img[..., 2] = 255 * (x + y) / (w + h)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 9)
        m = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[m] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    img[:3, :3] = 127  # a grey patch (hue / saturation edge case)
    img[-2:, -4:] = [255, 255, 255]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def arr(im):
    return np.asarray(im, dtype=np.uint8)


src = make_image(48, 40, 1)
add("src", arr(src))

# resized_crop(top, left, height, width, size, BICUBIC): up-, down- (antialiased), mixed, identity
crops = [(3, 5, 16, 20, 29, 37), (0, 0, 40, 48, 17, 13), (2, 1, 37, 45, 11, 23), (10, 7, 21, 30, 21, 30),
         (5, 4, 30, 33, 64, 64), (1, 2, 38, 25, 24, 24)]
for i, (t, l, h, w, oh, ow) in enumerate(crops):
    out = F.resized_crop(src, t, l, h, w, [oh, ow], interpolation=T.InterpolationMode.BICUBIC)
    add(f"crop{i}_box", np.array([t, l, h, w, oh, ow], dtype=np.int32))
    add(f"crop{i}_out", arr(out))

add("hflip", arr(F.hflip(src)))
add("vflip", arr(F.vflip(src)))

for i, f in enumerate([0.6, 1.37, 0.83, 1.0]):
    add(f"brightness{i}_f", np.array([f32(f)]))
    add(f"brightness{i}_out", arr(F.adjust_brightness(src, f32(f))))
for i, f in enumerate([0.6, 1.4, 0.91]):
    add(f"contrast{i}_f", np.array([f32(f)]))
    add(f"contrast{i}_out", arr(F.adjust_contrast(src, f32(f))))
for i, f in enumerate([0.8, 1.2, 1.03]):
    add(f"saturation{i}_f", np.array([f32(f)]))
    add(f"saturation{i}_out", arr(F.adjust_saturation(src, f32(f))))
for i, f in enumerate([-0.1, 0.07, -0.013, 0.5, -0.5]):
    add(f"hue{i}_f", np.array([f32(f)]))
    add(f"hue{i}_out", arr(F.adjust_hue(src, f32(f))))
add("gray", arr(F.rgb_to_grayscale(src, num_output_channels=3)))
for i, s in enumerate([0.1, 0.7, 1.3, 2.0]):
    add(f"blur{i}_sigma", np.array([f32(s)]))
    add(f"blur{i}_out", arr(F.gaussian_blur(src, [9, 9], [f32(s), f32(s)])))
add("solarize", arr(F.solarize(src, 128)))
mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
add("normalize", F.normalize(F.to_tensor(src), mean, std).numpy().astype(np.float32))

# HED stain jitter (pathology option), numpy in float64: skimage's rgb2hed / hed2rgb conventions
# (Ruifrok-Johnston matrix, OD = log(max(v/255, 1e-6)) / log(1e-6)), negative stains not clipped.
rgb_from_hed = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
hed_from_rgb = np.linalg.inv(rgb_from_hed)
for i, (alpha, beta) in enumerate([((1.04, 0.97, 1.0), (0.01, -0.02, 0.0)), ((0.95, 1.05, 1.03), (-0.03, 0.04, 0.02))]):
    alpha, beta = [f32(a) for a in alpha], [f32(b) for b in beta]
    rgb = np.maximum(arr(src).astype(np.float64) / 255.0, 1e-6)
    stains = (np.log(rgb) / np.log(1e-6)) @ hed_from_rgb
    stains = stains * np.array(alpha) + np.array(beta)
    out = np.exp(-(stains * -np.log(1e-6)) @ rgb_from_hed)
    add(f"hed{i}_params", np.array(alpha + beta, dtype=np.float64))
    add(f"hed{i}_out", np.floor(np.clip(out, 0, 1) * 255.0 + 0.5).astype(np.uint8))

# The whole per-crop chain of DataAugmentationDINO with fixed decisions (order = torch.randperm(4)).
pipes = [  # (box, size, hflip, order, factors(b, c, s, h), gray, sigma or 0, solarize)
    ((4, 3, 33, 40), 56, 1, (2, 0, 3, 1), (1.21, 0.73, 0.91, 0.043), 0, 1.37, 1),
    ((10, 12, 20, 17), 25, 0, (3, 1, 0, 2), (0.77, 1.33, 1.12, -0.08), 1, 0.6, 0),
]
for i, (box, size, flip, order, fac, gray, sigma, sol) in enumerate(pipes):
    im = F.resized_crop(src, *box, [size, size], interpolation=T.InterpolationMode.BICUBIC)
    if flip:
        im = F.hflip(im)
    fac = [f32(v) for v in fac]
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    for o in order:
        im = ops[o](im, fac[o])
    if gray:
        im = F.rgb_to_grayscale(im, num_output_channels=3)
    if sigma:
        im = F.gaussian_blur(im, [9, 9], [f32(sigma), f32(sigma)])
    if sol:
        im = F.solarize(im, 128)
    t = F.normalize(F.to_tensor(im), mean, std)
    add(f"pipe{i}_params", np.array([*box, size, flip, *order, *fac, gray, f32(sigma), sol], dtype=np.float64))
    add(f"pipe{i}_out", t.numpy().astype(np.float32))


# RandomResizedCrop.get_params with torch's random draws replaced by a fixed list of uniforms.
class FixedDraws:
    def __init__(self, us):
        self.us, self.i = us, 0

    def next(self):
        u = self.us[self.i]
        self.i += 1
        return u


class FakeEmpty:
    def __init__(self, draws):
        self.draws = draws

    def uniform_(self, a, b):
        a, b = float(a), float(b)
        return torch.tensor([a + (b - a) * self.draws.next()], dtype=torch.float32)


def rrc_with(us, w, h, scale, ratio):
    draws = FixedDraws(us)
    real_empty, real_randint = torch.empty, torch.randint
    torch.empty = lambda *a, **k: FakeEmpty(draws)
    torch.randint = lambda lo, hi, size: torch.tensor([lo + int(math.floor(draws.next() * (hi - lo)))])
    try:
        img = Image.new("RGB", (w, h))
        return T.RandomResizedCrop.get_params(img, list(scale), list(ratio))
    finally:
        torch.empty, torch.randint = real_empty, real_randint


rs = np.random.RandomState(7)
rrc_cases = [(256, 256, (0.32, 1.0)), (256, 256, (0.05, 0.32)), (300, 50, (0.8, 1.0)), (40, 310, (0.8, 1.0)),
             (1024, 768, (0.32, 1.0)), (97, 113, (0.05, 0.32)), (60, 58, (0.9, 1.0)), (256, 256, (0.9, 1.0))]
for i, (w, h, scale) in enumerate(rrc_cases):
    us = rs.uniform(0, 1, 40)
    box = rrc_with(list(us), w, h, scale, (3.0 / 4.0, 4.0 / 3.0))
    add(f"rrc{i}_in", np.array([w, h, scale[0], scale[1]], dtype=np.float64))
    add(f"rrc{i}_u", us.astype(np.float64))
    add(f"rrc{i}_box", np.array(box, dtype=np.int32))

# torch.linspace(0.1, 0.5, n + 1) in float32 (the iBOT stratified mask ratios) for the C masking code
for n in [1, 2, 3, 7, 8, 31, 64, 128, 256]:
    add(f"linspace{n}", torch.linspace(0.1, 0.5, n + 1).numpy().astype(np.float32))

os.makedirs(OUT, exist_ok=True)
names = {np.uint8: "u8", np.float32: "f32", np.float64: "f64", np.int32: "i32"}
off = 0
with open(os.path.join(OUT, "augment_ops.bin"), "wb") as fb, open(os.path.join(OUT, "augment_ops.txt"), "w") as ft:
    ft.write("# name dtype ndim dims... byte_offset  (made by tests/make_augment_fixtures.py)\n")
    for name, a in arrays:
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        dims = " ".join(str(d) for d in a.shape)
        ft.write(f"{name} {names[a.dtype.type]} {a.ndim} {dims} {off}\n")
        fb.write(b)
        off += len(b)
        pad = -off % 8  # keep every array 8-byte aligned for the C reader
        fb.write(b"\0" * pad)
        off += pad
print(f"wrote {len(arrays)} arrays, {off} bytes")
