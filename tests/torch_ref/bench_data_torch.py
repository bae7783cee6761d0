#!/usr/bin/python3
"""The reference DINOv2 data pipeline in Python, for tools/bench_data.sh: PIL decode + torchvision
transforms exactly as dinov2/data/augmentations.py (DataAugmentationDINO), dinov2/data/masking.py
(MaskingGenerator) and dinov2/data/collate.py (collate_data_and_cast), single process,
torch.set_num_threads(1). Reports images per second (one core).

    /usr/bin/python3 tests/torch_ref/bench_data_torch.py DIR [--seconds 10] [--batch 32]
"""
import argparse
import io
import math
import os
import random
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms


class GaussianBlur(transforms.RandomApply):  # dinov2/data/transforms.py (with its inverted p)
    def __init__(self, *, p=0.5, radius_min=0.1, radius_max=2.0):
        keep_p = 1 - p
        transform = transforms.GaussianBlur(kernel_size=9, sigma=(radius_min, radius_max))
        super().__init__(transforms=[transform], p=keep_p)


class DataAugmentationDINO:  # dinov2/data/augmentations.py
    def __init__(self, global_crops_scale, local_crops_scale, local_crops_number, global_crops_size=224,
                 local_crops_size=96):
        self.local_crops_number = local_crops_number
        self.geometric_augmentation_global = transforms.Compose([
            transforms.RandomResizedCrop(global_crops_size, scale=global_crops_scale,
                                         interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(p=0.5)])
        self.geometric_augmentation_local = transforms.Compose([
            transforms.RandomResizedCrop(local_crops_size, scale=local_crops_scale,
                                         interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(p=0.5)])
        color_jittering = transforms.Compose([
            transforms.RandomApply([transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)],
                                   p=0.8),
            transforms.RandomGrayscale(p=0.2)])
        global_transfo1_extra = GaussianBlur(p=1.0)
        global_transfo2_extra = transforms.Compose([GaussianBlur(p=0.1),
                                                    transforms.RandomSolarize(threshold=128, p=0.2)])
        local_transfo_extra = GaussianBlur(p=0.5)
        self.normalize = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])
        self.global_transfo1 = transforms.Compose([color_jittering, global_transfo1_extra, self.normalize])
        self.global_transfo2 = transforms.Compose([color_jittering, global_transfo2_extra, self.normalize])
        self.local_transfo = transforms.Compose([color_jittering, local_transfo_extra, self.normalize])

    def __call__(self, image):
        output = {}
        im1_base = self.geometric_augmentation_global(image)
        global_crop_1 = self.global_transfo1(im1_base)
        im2_base = self.geometric_augmentation_global(image)
        global_crop_2 = self.global_transfo2(im2_base)
        output["global_crops"] = [global_crop_1, global_crop_2]
        output["global_crops_teacher"] = [global_crop_1, global_crop_2]
        output["local_crops"] = [self.local_transfo(self.geometric_augmentation_local(image))
                                 for _ in range(self.local_crops_number)]
        output["offsets"] = ()
        return output


class MaskingGenerator:  # dinov2/data/masking.py
    def __init__(self, input_size, num_masking_patches=None, min_num_patches=4, max_num_patches=None,
                 min_aspect=0.3, max_aspect=None):
        self.height, self.width = input_size
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for _ in range(10):
            target_area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches=0):
        mask = np.zeros(shape=(self.height, self.width), dtype=bool)
        mask_count = 0
        while mask_count < num_masking_patches:
            max_mask_patches = min(num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            mask_count += delta
        return mask


def collate_data_and_cast(samples_list, mask_ratio_tuple, mask_probability, dtype, n_tokens, mask_generator):
    n_global_crops = len(samples_list[0][0]["global_crops"])
    n_local_crops = len(samples_list[0][0]["local_crops"])
    collated_global_crops = torch.stack([s[0]["global_crops"][i] for i in range(n_global_crops) for s in samples_list])
    collated_local_crops = torch.stack([s[0]["local_crops"][i] for i in range(n_local_crops) for s in samples_list])
    B = len(collated_global_crops)
    N = n_tokens
    n_samples_masked = int(B * mask_probability)
    probs = torch.linspace(*mask_ratio_tuple, n_samples_masked + 1)
    upperbound = 0
    masks_list = []
    for i in range(0, n_samples_masked):
        prob_min, prob_max = probs[i], probs[i + 1]
        masks_list.append(torch.BoolTensor(mask_generator(int(N * random.uniform(prob_min, prob_max)))))
        upperbound += int(N * prob_max)
    for i in range(n_samples_masked, B):
        masks_list.append(torch.BoolTensor(mask_generator(0)))
    random.shuffle(masks_list)
    collated_masks = torch.stack(masks_list).flatten(1)
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    masks_weight = (1 / collated_masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(collated_masks)[collated_masks]
    return {
        "collated_global_crops": collated_global_crops.to(dtype),
        "collated_local_crops": collated_local_crops.to(dtype),
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices_list.shape[0], dtype=torch.long),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--local-size", type=int, default=98)
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = sorted(n for n in os.listdir(args.dir) if n.endswith((".jpg", ".jpeg")))
    blobs = [open(os.path.join(args.dir, n), "rb").read() for n in names]
    aug = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 8, 224, args.local_size)
    patch = 16
    gen = MaskingGenerator((224 // patch, 224 // patch), max_num_patches=0.5 * 224 // patch * 224 // patch)
    order = list(range(len(blobs)))

    def batch(k):
        samples = []
        for j in range(args.batch):
            im = Image.open(io.BytesIO(blobs[order[(k * args.batch + j) % len(order)]])).convert("RGB")
            samples.append((aug(im), None))
        return collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.half, (224 // patch) ** 2, gen)

    batch(0)  # warm-up
    # CPU time of this process: a per-core figure that other jobs on a shared machine do not skew
    t0, c0, images, k = time.time(), time.process_time(), 0, 1
    while time.process_time() - c0 < args.seconds:
        batch(k)
        images += args.batch
        k += 1
    dt, cpu = time.time() - t0, time.process_time() - c0
    print(f"Python reference: {len(blobs)} tiles, batch {args.batch}, 2x224 + 8x{args.local_size} crops, "
          f"{images} images, {dt:.1f} s wall, {cpu:.1f} s CPU: {images / cpu:.1f} images/s per core (per CPU second)")


if __name__ == "__main__":
    main()
