#!/usr/bin/python3
"""By-hand check (not run by ctest): the Gram transcription (tests/torch_ref/dinov3_gram.py) side by side
with the official code, on random inputs.

Needs a checkout of facebookresearch/dinov3 (default /work/ref/dinov3; argument 1 overrides).
  GramLoss              the official dinov3/loss/gram_loss.py, loaded from its file (importing the package
                        dinov3.loss would pull in every loss and its dependencies; this file needs torch only)
  gram_teacher_patches  the official SSLMetaArch.get_gram_teacher_output (dinov3/train/ssl_meta_arch.py):
                        its source is taken from the file with ast and run verbatim on a stub `self` (the
                        module needs omegaconf and FSDP, which the torch 1.13 here lacks); the stub's Gram
                        teacher backbone returns the given patch tokens
Cases: every GramLoss option (apply_norm, img_level, remove_neg, remove_only_teacher_neg: the configs use
normalized true, img_level true, no negative removal), loss and the gradients w.r.t. both inputs; float32
inputs (exactly the official's arithmetic: equal to the last bit) and float64 inputs (the official casts
to float32, the transcription stays in float64: the fixtures' precision). The resampling at the Gram sizes
of the configs (1.5x: 12 -> 8 and 15 -> 10 patches per side; 2x: 6 -> 3; 42 / 28 px of the step fixture:
6 -> 4), bicubic, antialias off and on. Exit 0 iff every case agrees (float32 exactly; float64 to 1e-6
relative).
"""
import ast
import importlib.util
import os
import sys
import types

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dinov3_gram  # noqa: E402

REF = sys.argv[1] if len(sys.argv) > 1 else "/work/ref/dinov3"


def load_official_gram_loss():
    spec = importlib.util.spec_from_file_location("official_gram_loss", os.path.join(REF, "dinov3/loss/gram_loss.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.GramLoss


def load_official_method(path, cls, name):
    src = open(os.path.join(REF, path)).read()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == name:
                    ns = {"torch": torch}
                    exec(compile(ast.Module(body=[f], type_ignores=[]), path, "exec"), ns)
                    return ns[name]
    raise SystemExit(f"{cls}.{name} not found in {path}")


def rel(a, b):
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


def main():
    OfficialGramLoss = load_official_gram_loss()
    official_gram_teacher_output = load_official_method("dinov3/train/ssl_meta_arch.py", "SSLMetaArch",
                                                        "get_gram_teacher_output")
    fails, worst64 = 0, 0.0
    n = 0
    for dtype in (torch.float32, torch.float64):
        for apply_norm in (True, False):
            for img_level in (True, False):
                for neg in ("none", "remove_neg", "remove_only_teacher_neg"):
                    g = torch.Generator().manual_seed(n)
                    s = torch.randn(4, 9, 16, generator=g, dtype=dtype)
                    t = torch.randn(4, 9, 16, generator=g, dtype=dtype)
                    kw = dict(apply_norm=apply_norm, remove_neg=neg == "remove_neg",
                              remove_only_teacher_neg=neg == "remove_only_teacher_neg")
                    out = []
                    for Loss in (OfficialGramLoss, dinov3_gram.GramLoss):
                        si, ti = s.clone().requires_grad_(), t.clone().requires_grad_()
                        loss = Loss(**kw)(si, ti, img_level=img_level)
                        loss.backward()
                        out.append((loss.detach(), si.grad, ti.grad))
                    (lo, gso, gto), (lt, gst, gtt) = out
                    if dtype == torch.float32:
                        ok = torch.equal(lo, lt) and torch.equal(gso, gst) and torch.equal(gto, gtt)
                        d = max(rel(lt, lo), rel(gst, gso), rel(gtt, gto))
                    else:
                        d = max(rel(lt.float(), lo), rel(gst.float(), gso.float()), rel(gtt.float(), gto.float()))
                        worst64 = max(worst64, d)
                        ok = d < 1e-6
                    fails += not ok
                    print(f"{'ok  ' if ok else 'FAIL'} GramLoss {str(dtype)[6:]:8s} norm={int(apply_norm)} "
                          f"img_level={int(img_level)} {neg:24s} loss {lo.item():.9g} / {lt.item():.9g}, "
                          f"max rel diff (loss, d student, d teacher) {d:.2e}")
                    n += 1
    # the Gram teacher's patch tokens resampled to the student's grid, per size pair
    for (N, Ns, p) in ((12, 8, 16), (15, 10, 16), (6, 3, 16), (6, 4, 7)):
        for antialias in (False, True):
            g = torch.Generator().manual_seed(100 + N * 10 + Ns)
            B2, D = 4, 8
            tp = torch.randn(B2, N * N, D, generator=g, dtype=torch.float64)
            sp = torch.randn(B2, Ns * Ns, D, generator=g, dtype=torch.float64)
            stub = types.SimpleNamespace(
                gram_ema_teacher=False, gram_teacher_initialized=True,
                gram_teacher=types.SimpleNamespace(backbone=lambda images, is_training: {"x_norm_patchtokens": tp}),
                cfg=types.SimpleNamespace(student=types.SimpleNamespace(patch_size=p)),
                gram_global_teacher_resize_method="bicubic", gram_global_teacher_resize_antialias=antialias,
                gram_tokens_used="all")
            images = torch.zeros(2, B2 // 2, 3, N * p, N * p, dtype=torch.float64)
            official = official_gram_teacher_output(stub, images, masks=None, teacher_global=None,
                                                    student_global={"patch_pre_head": sp.unflatten(0, (2, B2 // 2))},
                                                    student_global_crops_size=Ns * p)["teacher_patches"]
            ours = dinov3_gram.gram_teacher_patches(tp, sp, N * p, p, Ns * p, antialias=antialias)
            ok = torch.equal(official, ours)
            fails += not ok
            print(f"{'ok  ' if ok else 'FAIL'} get_gram_teacher_output {N}x{N} -> {Ns}x{Ns} patches "
                  f"(Gram crop {N * p} px, student {Ns * p} px, patch {p}) antialias={int(antialias)}: "
                  f"max abs diff {(official - ours).abs().max().item():.2e}")
    print(f"{'PASS' if not fails else 'FAIL'}: {fails} case(s) differ; float64 worst relative difference "
          f"{worst64:.2e} (the official computes in float32)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
