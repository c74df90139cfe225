"""Resolution rungs: EfficientNet-Lite0 run at a lower side than the shared 224 crop.

A rung is a model file plus the side it runs at: the server puts a bilinear `Resize` (half-pixel,
no antialiasing, constant scales) in front of the file's graph at load (`resize` in
variants.toml, `src/engine/rescale.rs`), so several rungs share one file and one preprocessing.
`common.with_resize` builds the same graph, for the measurements and the reference logits.

Levers measured on calib/ (two folds: fit on one half, score on the other; README.md):
- the side alone, no retraining (`full` at 192, 160, 128);
- BatchNorm statistics re-estimated at the rung's side on calib/ (worse: 73 % vs 81 % at 192);
- antialiased resizing, and a tighter crop before resizing (both worse at 160);
- `distill_multires`: logit distillation from full at 224 of a copy of full that sees each
  batch at a side drawn from LOWRES_SIZES; one file then serves every low side.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

import common
import net
import prune


class MultiRes(net.LiteNet):
    """A LiteNet that, while training, resizes every batch to a side drawn from `sizes`."""

    def __init__(self, base: net.LiteNet, sizes, seed: int):
        super().__init__(base.stem, list(base.blocks), base.head, base.fc, size=None)
        self.sizes = list(sizes)
        self.gen = torch.Generator().manual_seed(seed)

    def embed(self, x):
        if self.training:
            size = self.sizes[int(torch.randint(0, len(self.sizes), (1,), generator=self.gen))]
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return super().embed(x)

    def plain(self) -> net.LiteNet:
        return net.LiteNet(self.stem, list(self.blocks), self.head, self.fc).eval()


def distill_multires(full: net.LiteNet, imgs: list[torch.Tensor], sizes, steps: int, batch: int,
                     lr: float, seed: int, log=print) -> net.LiteNet:
    """Logit distillation (KL at T = 1) from `full` at 224 on random resized crops + flips (+ mixup /
    cutmix on half of the batches) of `imgs`, the student seeing each batch at a side from `sizes`.
    AdamW without weight decay, every tensor's learning rate `lr` x its RMS (BN-folded weights
    differ in scale by orders of magnitude), 5 % warm-up, cosine decay."""
    gen = torch.Generator().manual_seed(seed)
    teacher = full.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = MultiRes(copy.deepcopy(full), sizes, seed).train()
    for p in student.parameters():
        p.requires_grad_(True)
    groups = [dict(params=[p], lr=lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-3)), weight_decay=0.0)
              for p in student.parameters()]
    opt = torch.optim.AdamW(groups, lr=lr)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))
    run = None
    for step in range(steps):
        xb = prune.mix_batch(imgs, batch, gen)
        with torch.no_grad():
            tl = teacher(xb)
        sl = student(xb)
        loss = F.kl_div(F.log_softmax(sl, 1), F.log_softmax(tl, 1), log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run = loss.item() if run is None else 0.95 * run + 0.05 * loss.item()
        if (step + 1) % 50 == 0 or step == 0:
            log(f"  multi-res distillation step {step + 1}/{steps}: kl {run:.4f}")
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval().plain()


@torch.no_grad()
def logits_at(model: net.LiteNet, xs: torch.Tensor, size: int) -> torch.Tensor:
    """The model's logits for 224 crops resized to `size` as the server's graph does."""
    out = []
    for i in range(0, len(xs), 50):
        x = xs[i : i + 50]
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out.append(model(x))
    return torch.cat(out)
