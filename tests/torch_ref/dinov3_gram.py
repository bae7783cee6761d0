"""PyTorch transcription (for tests only) of the DINOv3 pieces of a training step with Gram anchoring,
written from the official code (facebookresearch/dinov3), for tests/make_objective_fixtures.py:

  GramLoss                  dinov3/loss/gram_loss.py GramLoss (every option: apply_norm, img_level,
                            remove_neg, remove_only_teacher_neg)
  gram_teacher_patches      dinov3/train/ssl_meta_arch.py SSLMetaArch.get_gram_teacher_output: the Gram
                            teacher's final-norm patch tokens, resampled with F.interpolate (bicubic,
                            align_corners=False, antialias per gram.global_teacher_resize_antialias) to the
                            student's grid when its crops are larger; tokens_used "all"
  dino_loss                 dinov3/loss/dino_clstoken_loss.py DINOLoss.forward (ignore_diagonal)
  ibot_forward_masked       dinov3/loss/ibot_patch_loss.py iBOTPatchLoss.forward_masked
  koleo                     dinov3/loss/koleo_loss.py KoLeoLoss.forward
  compute_losses            dinov3/train/ssl_meta_arch.py SSLMetaArch.compute_losses (the loss scales,
                            dino.reweight_dino_local_loss's local weight, the KoLeo scale, iBOT, the Gram
                            loss times its weight; no distillation)
  linear_warmup_cosine_decay  dinov3/train/cosine_lr_scheduler.py (the weight schedules), re-exported from
                            the schedules' transcription (tests/torch_ref/dinov3_schedules.py)
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from dinov3_schedules import linear_warmup_cosine_decay  # noqa: F401 (re-exported)


class GramLoss(nn.Module):
    def __init__(self, apply_norm=True, img_level=True, remove_neg=True, remove_only_teacher_neg=False):
        super().__init__()
        self.mse_loss = torch.nn.MSELoss()
        self.apply_norm = apply_norm
        self.remove_neg = remove_neg
        self.remove_only_teacher_neg = remove_only_teacher_neg
        if self.remove_neg or self.remove_only_teacher_neg:
            assert self.remove_neg != self.remove_only_teacher_neg

    def forward(self, output_feats, target_feats, img_level=True):
        if img_level:
            assert len(target_feats.shape) == 3 and len(output_feats.shape) == 3
        # (the official casts to float32 here; the fixtures run in float64 throughout)
        if self.apply_norm:
            target_feats = F.normalize(target_feats, dim=-1)
        if not img_level and len(target_feats.shape) == 3:
            target_feats = target_feats.flatten(0, 1)
        target_sim = torch.matmul(target_feats, target_feats.transpose(-1, -2))
        if self.apply_norm:
            output_feats = F.normalize(output_feats, dim=-1)
        if not img_level and len(output_feats.shape) == 3:
            output_feats = output_feats.flatten(0, 1)
        student_sim = torch.matmul(output_feats, output_feats.transpose(-1, -2))
        if self.remove_neg:
            target_sim[target_sim < 0] = 0.0
            student_sim[student_sim < 0] = 0.0
        elif self.remove_only_teacher_neg:
            target_sim[target_sim < 0] = 0.0
            student_sim[(student_sim < 0) & (target_sim < 0)] = 0.0
        return self.mse_loss(student_sim, target_sim)


def gram_teacher_patches(gram_backbone_out_patches, student_patches, H, patch_size, student_crop,
                         method="bicubic", antialias=False):
    """teacher_patches [n_crops*B, P_T, D] -> [n_crops*B, P, D] as get_gram_teacher_output."""
    teacher_patches = gram_backbone_out_patches
    if teacher_patches.shape[1] != student_patches.shape[1]:
        N = H // patch_size
        assert teacher_patches.shape[1] == N**2
        N_student = student_crop // patch_size
        assert student_patches.shape[1] == N_student**2
        patches_hw = teacher_patches.transpose(-2, -1).unflatten(-1, (N, N))
        patches_hw = F.interpolate(patches_hw, size=(N_student, N_student), mode=method, align_corners=False,
                                   antialias=antialias)
        teacher_patches = patches_hw.flatten(-2, -1).transpose(-2, -1)
        assert teacher_patches.shape == student_patches.shape
    return teacher_patches


def dino_loss(student_logits, teacher_probs, student_temp, ignore_diagonal=False):
    student_crops, B, K = student_logits.shape
    teacher_crops, _, _ = teacher_probs.shape
    student_logits = F.log_softmax(student_logits / student_temp, dim=-1)
    if not ignore_diagonal:
        loss = -torch.einsum("s b k, t b k -> ", student_logits, teacher_probs)
        return loss / (B * student_crops * teacher_crops)
    loss = -torch.einsum("s b k, t b k -> s t", student_logits, teacher_probs)
    min_st = min(student_crops, teacher_crops)
    loss = torch.diagonal_scatter(loss, loss.new_zeros(min_st))
    return loss.sum() / (B * student_crops * teacher_crops - B * min_st)


def ibot_forward_masked(s, t, student_masks_flat, student_temp, masks_weight):
    loss = torch.sum(t * F.log_softmax(s / student_temp, dim=-1), dim=-1)
    loss = loss * masks_weight
    return -loss.sum() / student_masks_flat.shape[0]


def koleo(x, eps=1e-8):
    x = F.normalize(x, eps=eps, p=2, dim=-1)
    dots = torch.mm(x, x.t())
    n = x.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)
    _, indices = torch.max(dots, dim=1)
    distances = nn.PairwiseDistance(2, eps=eps)(x, x[indices])
    return -torch.log(distances + eps).mean()


def compute_losses(*, student_local_cls_after_head, student_global_cls_after_head, teacher_cls_centered,
                   student_global_cls_pre_head, student_masked_patch_after_head, teacher_masked_patch_centered,
                   masks, masks_weight, student_temp, dino_loss_weight, koleo_loss_weight, ibot_loss_weight,
                   ignore_diagonal, local_weight, gram_loss=None, gram_student=None, gram_teacher=None,
                   gram_img_level=True, gram_loss_weight=0.0):
    """SSLMetaArch.compute_losses; *_after_head [crops, B, K], teacher_cls_centered [2, B, K] (crop c = the
    teacher's targets for global crop c), cls_pre_head [2, B, D]. Returns (loss_accumulator, loss_dict)."""
    n_global_crops = student_global_cls_after_head.shape[0]
    n_local_crops = student_local_cls_after_head.shape[0]
    loss_dict = {}
    loss_accumulator = 0.0
    dino_global_terms = n_global_crops * (n_global_crops - 1) if ignore_diagonal else n_global_crops**2
    dino_local_terms = n_global_crops * n_local_crops
    dino_global_scale = dino_global_terms / (dino_global_terms + dino_local_terms)
    dino_local_scale = dino_local_terms / (dino_global_terms + dino_local_terms)
    koleo_scale = n_global_crops

    dino_local_crops_loss = dino_loss(student_local_cls_after_head, teacher_cls_centered, student_temp)
    loss_dict["dino_local_crops_loss"] = dino_local_crops_loss
    loss_dict["dino_local_loss_weight"] = local_weight
    loss_accumulator += dino_loss_weight * dino_local_scale * local_weight * dino_local_crops_loss

    dino_global_crops_loss = dino_loss(student_global_cls_after_head, teacher_cls_centered, student_temp,
                                       ignore_diagonal=ignore_diagonal)
    loss_dict["dino_global_crops_loss"] = dino_global_crops_loss
    loss_accumulator += dino_loss_weight * dino_global_scale * dino_global_crops_loss

    koleo_loss = sum(koleo(x) for x in student_global_cls_pre_head) / n_global_crops
    loss_dict["koleo_loss"] = koleo_loss
    loss_accumulator += koleo_loss_weight * koleo_scale * koleo_loss

    ibot_patch_loss = ibot_forward_masked(student_masked_patch_after_head, teacher_masked_patch_centered, masks,
                                          student_temp, masks_weight)
    loss_dict["ibot_loss"] = ibot_patch_loss
    loss_accumulator += ibot_loss_weight * ibot_patch_loss

    if gram_loss is not None:
        g = gram_loss(gram_student, gram_teacher, img_level=gram_img_level)
        loss_dict["gram_loss_weight"] = gram_loss_weight
        loss_accumulator += g * gram_loss_weight
        loss_dict["gram_loss"] = g
    return loss_accumulator, loss_dict
