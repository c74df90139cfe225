"""Structured pruning of the inner (expanded) channels of EfficientNet-Lite0's MBConv blocks.

For every block with an expansion conv, sequentially from input to output:
  1. score each inner channel c by  var(a_c) * ||W_proj[:, c]||^2  on calibration images, where
     a_c is the channel's activation after the depthwise conv + ReLU6 (inputs from the
     already-pruned network);
  2. drop the lowest-scoring channels (expand conv rows, depthwise filters, projection columns);
  3. fold the dropped channels' mean activation into the projection bias and refit the projection
     (weights + bias) by ridge-regularised least squares so that the block output matches the
     full model's block output (this also corrects the error accumulated upstream).
The shipped recipe (build.py) uses greedy OBS selection + refit (`obs_select`) on the calib images
and their mirror images after a MAC-aware allocation (`allocate`), then a function-matching
distillation from the full model (`mimic`). Options, measured in README.md: random resized crops
(`_rrc`) in the refit, an allocation from each block's measured KL sensitivity
(`sensitivities` + `allocate_kl`), dropping whole residual blocks (`Dropped`), and a short logit
distillation (`distill`).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from net import Block, LiteNet, PConv


def _round8(n: int) -> int:
    return max(8, int(round(n / 8.0)) * 8)


def _run_chunks(fn, x, chunk=50):
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def _sample_rows(t: torch.Tensor, n_rows: int, gen: torch.Generator) -> torch.Tensor:
    """N x C x H x W -> (rows, C): all positions, randomly subsampled to n_rows."""
    flat = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    if flat.shape[0] <= n_rows:
        return flat
    idx = torch.randperm(flat.shape[0], generator=gen)[:n_rows]
    return flat[idx]


def _sample_pairs(a: torch.Tensor, t: torch.Tensor, n_rows: int, gen: torch.Generator):
    """`_sample_rows` of `a` and `t` at the same positions (inputs and targets of a regression)."""
    gen_state = gen.get_state()
    A = _sample_rows(a, n_rows, gen)
    gen.set_state(gen_state)
    return A, _sample_rows(t, n_rows, gen)


def _slice_conv(conv: PConv, out_idx=None, in_idx=None, depthwise=False) -> PConv:
    new = copy.deepcopy(conv)
    w, b = conv.weight.data, conv.bias.data
    if out_idx is not None:
        w, b = w[out_idx], b[out_idx]
    if in_idx is not None and not depthwise:
        w = w[:, in_idx]
    new.weight = torch.nn.Parameter(w.clone())
    new.bias = torch.nn.Parameter(b.clone())
    if depthwise:
        new.groups = w.shape[0]
    return new


def _install(pruned: LiteNet, bi: int, blk, keep_idx, W: torch.Tensor):
    """Put block `bi` of `pruned` together from the unpruned `blk`: its kept inner channels
    `keep_idx` and the refitted projection `W` ([weight | bias], Cout x (Cin + 1))."""
    new_blk = pruned.blocks[bi]
    new_blk.expand = _slice_conv(blk.expand, out_idx=keep_idx)
    new_blk.dw = _slice_conv(blk.dw, out_idx=keep_idx, depthwise=True)
    proj = _slice_conv(blk.project, in_idx=keep_idx)
    proj.weight = torch.nn.Parameter(W[:, :-1, None, None].contiguous())
    proj.bias = torch.nn.Parameter(W[:, -1].contiguous())
    new_blk.project = proj
    return new_blk


class Dropped(torch.nn.Module):
    """A residual block with all its inner channels removed: the skip path plus a constant."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = torch.nn.Parameter(bias.clone())
        self.expand, self.skip = None, True

    def forward(self, x):
        return x + self.bias[None, :, None, None]


def block_keep_counts(model: LiteNet, ratio) -> list[int | None]:
    """Number of inner channels kept per block (None: block without expansion, untouched)."""
    ratios = ratio if isinstance(ratio, (list, tuple)) else [ratio] * len(model.blocks)
    out = []
    for blk, r in zip(model.blocks, ratios):
        if blk.expand is None or r <= 0:
            out.append(None)
        else:
            c = blk.dw.weight.shape[0]
            out.append(min(c, _round8(c * (1.0 - r))))
    return out


@torch.no_grad()
def obs_select(A: torch.Tensor, T: torch.Tensor, W0: torch.Tensor, keep: int, ridge: float):
    """Greedy Optimal-Brain-Surgeon channel removal for a linear layer  T ~ [A 1] W.

    A: rows x C activations, T: rows x Cout targets, W0: (C+1) x Cout prior (last row = bias).
    Starts from the ridge LS solution on all channels, then removes one input channel at a time,
    always the one whose removal (with optimal refit of all the others and the bias) increases the
    squared error least: ||W_j||^2 / [H^-1]_jj, with rank-1 updates of W and H^-1.
    Returns (kept channel indices, (keep+1) x Cout refitted weights).
    """
    Ab = torch.cat([A, torch.ones(A.shape[0], 1, dtype=A.dtype)], 1).double()
    H = Ab.t() @ Ab
    lam = ridge * torch.trace(H) / H.shape[0]
    H += lam * torch.eye(H.shape[0], dtype=H.dtype)
    W = torch.linalg.solve(H, Ab.t() @ T.double() + lam * W0.double())
    Hinv = torch.linalg.inv(H)
    C = A.shape[1]
    alive = torch.ones(C + 1, dtype=torch.bool)
    costs = []
    for _ in range(C - keep):
        d = torch.diagonal(Hinv)
        cost = W.pow(2).sum(1) / d
        cost[~alive] = float("inf")
        cost[C] = float("inf")  # never remove the bias
        j = int(torch.argmin(cost))
        costs.append(float(cost[j]))
        W -= torch.outer(Hinv[:, j], W[j]) / Hinv[j, j]
        Hinv -= torch.outer(Hinv[:, j], Hinv[j]) / Hinv[j, j]
        W[j] = 0
        Hinv[j, :] = 0
        Hinv[:, j] = 0
        Hinv[j, j] = 1.0  # keeps the removed index inert (cost is inf anyway)
        alive[j] = False
    keep_idx = torch.nonzero(alive[:C]).flatten()
    obs_select.last_costs = costs
    return keep_idx, torch.cat([W[keep_idx], W[C:]], 0).float()


def _total_macs(model: LiteNet) -> int:
    """MACs of the convs and the classifier at batch 1, 224x224."""
    macs = [model.fc.weight.numel()]

    def hook(mod, inp, o):
        macs[0] += mod.weight[0].numel() * o.shape[1] * o.shape[2] * o.shape[3]

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, PConv)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in hs:
        h.remove()
    return macs[0]


def _inner_channel_macs(model: LiteNet) -> list[int | None]:
    """MACs (batch 1, 224x224) that one inner channel of each block costs."""
    out = []
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        x = model.embed(x)
        for blk in model.blocks:
            a = blk.inner(x)
            if blk.expand is None:
                out.append(None)
            else:
                k = blk.dw.weight.shape[-1]
                hw_in, hw = x.shape[2] * x.shape[3], a.shape[2] * a.shape[3]
                out.append(hw_in * x.shape[1] + hw * (k * k + blk.project.weight.shape[0]))
            x = blk(x)
    return out


@torch.no_grad()
def allocate(model: LiteNet, xs: torch.Tensor, macs_fraction_removed, max_ratio: float = 0.75,
             n_rows: int = 30000, ridge: float = 1e-3, seed: int = 0, norm: str = "stream",
             drop: tuple[int, ...] = ()) -> list[int | None]:
    """Per-block number of inner channels to keep (0: block dropped) so that the pruned blocks save
    `macs_fraction_removed` of the full model's MACs, spending removals where they hurt least.

    The residual blocks in `drop` lose all their inner channels (their MACs count towards the
    target); for every other block (on the unpruned network) the greedy OBS path gives the error
    added by each successive channel removal; normalised by the energy of the block's output
    (residual stream) and divided by the MACs one channel costs, the cheapest removals over all
    blocks are taken. norm: "stream" normalises by the energy of the block output incl. the skip
    path, "block" by the energy of the projection output alone.
    """
    costs = removal_costs(model, xs, max_ratio, n_rows, ridge, seed, norm)
    if isinstance(macs_fraction_removed, (list, tuple)):
        return [take(model, costs, f, drop) for f in macs_fraction_removed]
    return take(model, costs, macs_fraction_removed, drop)


def _projection_problem(blk: Block, x: torch.Tensor, n_rows: int, gen: torch.Generator):
    """The unpruned block's projection as a regression on its inputs `x`: sampled inner activations
    A, the projection's outputs T at the same positions, its whole output, and its weights as the
    prior W0 ((Cin + 1) x Cout, last row the bias). `gen` is left as it was before sampling T."""
    a = _run_chunks(blk.inner, x)
    tgt = _run_chunks(blk.project, a)
    gen_state = gen.get_state()
    A, T = _sample_pairs(a, tgt, n_rows, gen)
    gen.set_state(gen_state)
    wp = blk.project.weight.data[:, :, 0, 0]
    return A, T, tgt, torch.cat([wp, blk.project.bias.data[:, None]], 1).t()


@torch.no_grad()
def removal_costs(model: LiteNet, xs: torch.Tensor, max_ratio: float = 0.75, n_rows: int = 30000,
                  ridge: float = 1e-3, seed: int = 0, norm: str = "stream"):
    """(sorted [(normalised cost per MAC, block, k-th removal)], MACs per inner channel, total MACs)."""
    gen = torch.Generator().manual_seed(seed)
    per_ch = _inner_channel_macs(model)
    total = _total_macs(model)
    items = []
    x = _run_chunks(model.embed, xs)
    for bi, blk in enumerate(model.blocks):
        x_next = _run_chunks(blk, x)
        if per_ch[bi] is not None:
            A, T, tgt, W0 = _projection_problem(blk, x, n_rows, gen)
            ref = x_next if norm == "stream" else tgt  # residual stream, or the block's own output
            energy = float(_sample_rows(ref, n_rows, gen).double().pow(2).sum())
            del tgt
            C = A.shape[1]
            obs_select(A, T, W0, int(C * (1 - max_ratio)), ridge)
            running = 0.0
            for k, c in enumerate(obs_select.last_costs):
                running = max(running, c)  # monotone within a block
                items.append((running / energy / per_ch[bi], bi, k))
        x = x_next
    items.sort()
    return items, per_ch, total


LEVELS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


@torch.no_grad()
def sensitivities(model: LiteNet, xs: torch.Tensor, xs_eval: torch.Tensor, levels=LEVELS, n_rows: int = 60000,
                  ridge: float = 1e-3, seed: int = 0, log=print) -> dict[tuple[int, int], float]:
    """How much pruning each block alone costs at the output: {(block, inner channels kept): KL}.

    For every block with an expansion conv and every fraction in `levels` of its inner channels
    (rounded to multiples of 8; 1.0, i.e. dropping the block, only where it has a skip path), only
    that block is pruned (greedy OBS + refit on `xs`, as in `prune`), and the KL divergence of
    the full model's softmax from the pruned model's is measured on `xs_eval`: other inputs than
    the refit's (random resized crops), so a refit that only fits its own inputs scores badly.
    """
    gen = torch.Generator().manual_seed(seed)
    ref = model(xs_eval).log_softmax(1)
    x, e = _run_chunks(model.embed, xs), _run_chunks(model.embed, xs_eval)
    out = {}
    for bi, blk in enumerate(model.blocks):
        if blk.expand is not None:
            A, T, tgt, W0 = _projection_problem(blk, x, n_rows, gen)
            C = blk.dw.weight.shape[0]
            for lv in levels:
                keep = 0 if lv >= 1.0 else int(math.ceil((C - round(C * lv)) / 8.0)) * 8
                if keep == C or (keep == 0 and not blk.skip) or (bi, keep) in out:
                    continue
                pruned = copy.deepcopy(model)
                if keep == 0:
                    pruned.blocks[bi] = Dropped(tgt.mean(dim=(0, 2, 3)))
                else:
                    keep_idx, W = obs_select(A, T, W0, keep, ridge)
                    _install(pruned, bi, blk, keep_idx, W.t())
                y = e
                for b in pruned.blocks[bi:]:
                    y = _run_chunks(b, y)
                logits = pruned.fc(F.adaptive_avg_pool2d(_run_chunks(pruned.head, y), 1).flatten(1))
                out[(bi, keep)] = float(F.kl_div(logits.log_softmax(1), ref, log_target=True, reduction="batchmean"))
                log(f"  block {bi}: keep {keep}/{C} inner channels -> KL {out[(bi, keep)]:.4f}")
            del tgt
        x, e = _run_chunks(blk, x), _run_chunks(blk, e)
    return out


def allocate_kl(model: LiteNet, sens: dict[tuple[int, int], float], macs_fraction_removed: float,
                unit: int = 100_000) -> list[int | None]:
    """Kept inner channels per block (None: untouched, 0: dropped) that save at least
    `macs_fraction_removed` of the full model's MACs with the smallest sum of the blocks'
    `sensitivities`: a multiple-choice knapsack, solved exactly by dynamic programming over the
    saved MACs in units of `unit`."""
    per_ch = _inner_channel_macs(model)
    total = _total_macs(model)
    need = int(math.ceil(macs_fraction_removed * total / unit))
    options = {}
    for (bi, keep), kl in sorted(sens.items()):
        options.setdefault(bi, [(model.blocks[bi].dw.weight.shape[0], 0.0)]).append((keep, kl))
    best = {0: (0.0, ())}  # saved units (capped at need) -> (summed KL, choices)
    for bi, opts in sorted(options.items()):
        C = model.blocks[bi].dw.weight.shape[0]
        nxt = {}
        for saved, (cost, chosen) in best.items():
            for keep, kl in opts:
                s = min(need, saved + (C - keep) * per_ch[bi] // unit)
                if s not in nxt or cost + kl < nxt[s][0]:
                    nxt[s] = (cost + kl, chosen + ((bi, keep),))
        best = nxt
    if need not in best:
        raise ValueError(f"cannot save {macs_fraction_removed:.0%} of the MACs at the measured levels")
    chosen = dict(best[need][1])
    return [chosen.get(bi) for bi in range(len(model.blocks))]


def take(model, costs, macs_fraction_removed: float, drop=()) -> list[int | None]:
    """Kept inner channels per block for one MAC target, from `removal_costs`."""
    items, per_ch, total = costs
    macs_to_save = macs_fraction_removed * total
    removed = [0] * len(model.blocks)
    saved = sum(per_ch[bi] * model.blocks[bi].dw.weight.shape[0] for bi in drop)
    for _, bi, k in items:
        if bi in drop:
            continue
        if saved >= macs_to_save:
            break
        if k == removed[bi]:
            removed[bi] += 1
            saved += per_ch[bi]
    keeps = []
    for bi, blk in enumerate(model.blocks):
        if bi in drop:
            keeps.append(0)
        elif per_ch[bi] is None:
            keeps.append(None)
        else:
            C = blk.dw.weight.shape[0]
            keeps.append(min(C, max(8, int(math.ceil((C - removed[bi]) / 8.0)) * 8)))
    return keeps


@torch.no_grad()
def prune(model: LiteNet, xs: torch.Tensor, ratio, n_rows: int = 60000, ridge: float = 1e-3,
          seed: int = 0, target: str = "global", refit: bool = True, select: str = "obs",
          keeps: list[int | None] | None = None) -> LiteNet:
    """Returns a pruned copy of `model`. xs: calibration inputs (N x 3 x 224 x 224).

    ratio: fraction of inner channels removed (one float, or one per block); or explicit `keeps`
    (inner channels kept per block, None for untouched blocks) e.g. from `allocate`.
    select: "obs" (greedy Optimal Brain Surgeon, with refit) or "score" (var x column norm, then
    mean folding + ridge LS refit). target: "global" (match the full model's block output, which
    also corrects upstream error) or "local" (match the unpruned projection of the same inputs).
    """
    gen = torch.Generator().manual_seed(seed)
    model = model.eval()
    pruned = copy.deepcopy(model)
    keeps = keeps or block_keep_counts(model, ratio)
    x_full = _run_chunks(model.embed, xs)
    x_pr = x_full  # shared until the first pruned block (saves memory with many inputs)
    for bi, (blk, keep) in enumerate(zip(model.blocks, keeps)):
        x_full_next = _run_chunks(blk, x_full)
        if keep is None:
            x_pr = x_full_next if x_pr is x_full else _run_chunks(pruned.blocks[bi], x_pr)
            x_full = x_full_next
            continue
        if keep == 0:  # drop the whole block: keep its skip path and the mean of its target
            assert blk.skip, f"block {bi} has no skip path and cannot be dropped"
            pruned.blocks[bi] = Dropped((x_full_next - x_pr).mean(dim=(0, 2, 3)))
            x_pr = _run_chunks(pruned.blocks[bi], x_pr)
            x_full = x_full_next
            continue
        a = _run_chunks(blk.inner, x_pr)  # inner activations of the pruned net, all channels
        wp = blk.project.weight.data[:, :, 0, 0]  # Cout x Cin
        if select == "obs":
            if target == "global":
                tgt = x_full_next - x_pr if blk.skip else x_full_next
            else:
                tgt = _run_chunks(blk.project, a)
            A, T = _sample_pairs(a, tgt, n_rows, gen)
            del tgt, a
            W0 = torch.cat([wp, blk.project.bias.data[:, None]], 1).t()
            keep_idx, W = obs_select(A, T, W0, keep, ridge)
            W = W.t()
            x_pr = _run_chunks(_install(pruned, bi, blk, keep_idx, W), x_pr)
            x_full = x_full_next
            continue
        var = a.var(dim=(0, 2, 3))
        score = var * wp.pow(2).sum(0)
        keep_idx = torch.sort(torch.argsort(score, descending=True)[:keep]).values
        drop_idx = torch.tensor(sorted(set(range(a.shape[1])) - set(keep_idx.tolist())), dtype=torch.long)
        # target for the projection output: what the full block outputs, minus our own skip input
        if target == "global":
            tgt = x_full_next - x_pr if blk.skip else x_full_next
        else:  # local: the unpruned projection applied to this block's own (pruned-net) activations
            tgt = _run_chunks(blk.project, a)
        A, T = _sample_pairs(a[:, keep_idx], tgt, n_rows, gen)
        del tgt
        A_drop_mean = a[:, drop_idx].mean(dim=(0, 2, 3))
        del a
        # initial guess: kept columns, bias absorbing the dropped channels' mean contribution
        w0 = wp[:, keep_idx]
        b0 = blk.project.bias.data + wp[:, drop_idx] @ A_drop_mean
        # ridge LS towards the initial guess:  min ||[A 1] W - T||^2 + lam ||W - W0||^2
        Ab = torch.cat([A, torch.ones(A.shape[0], 1)], 1).double()
        W0 = torch.cat([w0, b0[:, None]], 1).t().double()  # (Cin+1) x Cout
        G = Ab.t() @ Ab
        lam = ridge * torch.trace(G) / G.shape[0]
        G += lam * torch.eye(G.shape[0], dtype=G.dtype)
        if refit:
            W = torch.linalg.solve(G, Ab.t() @ T.double() + lam * W0).t().float()
        else:
            W = W0.t().float()
        x_pr = _run_chunks(_install(pruned, bi, blk, keep_idx, W), x_pr)
        x_full = x_full_next
    return pruned.eval()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flip + random resized crop (scale 0.35..1) back to 224, on normalised tensors."""
    n = x.shape[0]
    out = torch.empty_like(x)
    for i in range(n):
        img = x[i : i + 1]
        if torch.rand(1, generator=gen).item() < 0.5:
            img = img.flip(3)
        s = math.sqrt(0.35 + 0.65 * torch.rand(1, generator=gen).item())
        ar = math.exp((torch.rand(1, generator=gen).item() - 0.5) * 0.5)
        h = min(224, int(224 * s / math.sqrt(ar)))
        w = min(224, int(224 * s * math.sqrt(ar)))
        top = int(torch.randint(0, 224 - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, 224 - w + 1, (1,), generator=gen))
        crop = img[:, :, top : top + h, left : left + w]
        out[i : i + 1] = F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False)
    return out


def distill(student: LiteNet, teacher: LiteNet, xs: torch.Tensor, epochs: int = 6, batch: int = 25,
            lr: float = 2e-5, temperature: float = 2.0, seed: int = 0, log=print) -> LiteNet:
    """Logit distillation (KL at temperature T + MSE on logits) on augmented calibration images."""
    gen = torch.Generator().manual_seed(seed)
    teacher.eval()
    student = copy.deepcopy(student).train()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    steps = epochs * math.ceil(len(xs) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for ep in range(epochs):
        perm = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for i in range(0, len(xs), batch):
            xb = augment(xs[perm[i : i + batch]], gen)
            with torch.no_grad():
                tl = teacher(xb)
            sl = student(xb)
            t = temperature
            loss = F.kl_div(F.log_softmax(sl / t, 1), F.log_softmax(tl / t, 1), log_target=True,
                            reduction="batchmean") * t * t
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(xb)
        log(f"  distill epoch {ep + 1}/{epochs}: loss {total / len(xs):.4f}")
    return student.eval()


# ---------------------------------------------------------------- feature-mimicking distillation

def _taps(model: LiteNet, x: torch.Tensor):
    """Block outputs (residual stream after every MBConv block), pre-pooling features, logits."""
    feats = []
    x = model.embed(x)
    for b in model.blocks:
        x = b(x)
        feats.append(x)
    h = model.head(x)
    feats.append(h)
    return feats, model.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _rrc(img: torch.Tensor, gen: torch.Generator, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), size=224):
    """Random resized crop (Inception style) of one 3 x H x W image, bilinear antialiased, + flip."""
    _, H, W = img.shape
    area = H * W
    for _ in range(10):
        s = scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item()
        lr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(1, generator=gen).item()
        ar = math.exp(lr)
        w = int(round(math.sqrt(area * s * ar)))
        h = int(round(math.sqrt(area * s / ar)))
        if 0 < w <= W and 0 < h <= H:
            break
    else:
        h = w = min(H, W)
    top = int(torch.randint(0, H - h + 1, (1,), generator=gen))
    left = int(torch.randint(0, W - w + 1, (1,), generator=gen))
    crop = img[None, :, top : top + h, left : left + w]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    if torch.rand(1, generator=gen).item() < 0.5:
        out = out.flip(2)
    return out


def mix_batch(imgs: list[torch.Tensor], n: int, gen: torch.Generator, scale=(0.25, 1.0),
              p_mix: float = 0.5) -> torch.Tensor:
    """n fresh training inputs: random resized crops + flips of randomly drawn images, then with
    probability p_mix per batch mixup (lambda ~ U(0,1)) or cutmix between pairs of the batch."""
    idx = torch.randint(0, len(imgs), (n,), generator=gen)
    x = torch.stack([_rrc(imgs[int(i)], gen, scale) for i in idx])
    u = torch.rand(1, generator=gen).item()
    if u < p_mix / 2:  # mixup
        lam = torch.rand(n, 1, 1, 1, generator=gen)
        x = lam * x + (1 - lam) * x[torch.randperm(n, generator=gen)]
    elif u < p_mix:  # cutmix
        other = x[torch.randperm(n, generator=gen)]
        x = x.clone()
        for i in range(n):
            lam = torch.rand(1, generator=gen).item()
            ch, cw = int(224 * math.sqrt(1 - lam)), int(224 * math.sqrt(1 - lam))
            cy = int(torch.randint(0, 224, (1,), generator=gen))
            cx = int(torch.randint(0, 224, (1,), generator=gen))
            y0, y1 = max(0, cy - ch // 2), min(224, cy + ch // 2)
            x0, x1 = max(0, cx - cw // 2), min(224, cx + cw // 2)
            x[i, :, y0:y1, x0:x1] = other[i, :, y0:y1, x0:x1]
    return x


def mimic(student: LiteNet, teacher: LiteNet, imgs: list[torch.Tensor], steps: int = 600, batch: int = 32,
          lr: float = 5e-4, wd: float = 1e-5, temperature: float = 3.0, w_feat: float = 1.0,
          w_kl: float = 1.0, scale=(0.25, 1.0), p_mix: float = 0.5, seed: int = 0, log=print,
          eval_fn=None, eval_every: int = 0, relative_lr: bool = False,
          feat_teacher: LiteNet | None = None) -> LiteNet:
    """Function-matching distillation of the pruned student from the full teacher.

    Every step draws a fresh batch (random resized crops + flips + mixup/cutmix of `imgs`, the
    calibration images resized to shorter side 256, uncropped); the teacher sees exactly the same
    inputs. Loss: for every MBConv block output and the pre-pooling features, the MSE between
    student and teacher normalised by the teacher tensor's mean square, averaged over the taps
    (weight w_feat), + KL(teacher || student) of the logits at `temperature` x T^2 (weight w_kl).
    AdamW, linear warm-up (5 %) then cosine decay to 0. relative_lr: the learning rate of every
    tensor is `lr` times its RMS, so a step changes small and large weights alike in relative terms.
    feat_teacher: the model whose taps the student's are matched to, when the student runs at
    another resolution than `teacher` (the unpruned model at the student's `size`); the logits
    still come from `teacher`.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in (teacher, feat_teacher):
        for p in m.eval().parameters() if m is not None else ():
            p.requires_grad_(False)
    student = copy.deepcopy(student).train()
    params = list(student.parameters())
    if relative_lr:  # one group per tensor, lr scaled by the tensor's RMS (BN-folded weights differ in scale)
        groups = [dict(params=[p], lr=lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-3)),
                       weight_decay=wd if p.dim() > 1 else 0.0) for p in params]
    else:
        groups = [dict(params=[p for p in params if p.dim() > 1], weight_decay=wd),
                  dict(params=[p for p in params if p.dim() <= 1], weight_decay=0.0)]
    opt = torch.optim.AdamW(groups, lr=lr)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))
    t = temperature
    run = None
    for step in range(steps):
        xb = mix_batch(imgs, batch, gen, scale, p_mix)
        with torch.no_grad():
            if feat_teacher is None:
                tf, tl = _taps(teacher, xb)
            else:
                tf, tl = _taps(feat_teacher, xb)[0], teacher(xb)
        sf, sl = _taps(student, xb)
        lf = sum(F.mse_loss(s, q) / q.pow(2).mean().clamp_min(1e-6) for s, q in zip(sf, tf)) / len(sf)
        lk = F.kl_div(F.log_softmax(sl / t, 1), F.log_softmax(tl / t, 1), log_target=True,
                      reduction="batchmean") * t * t
        loss = w_feat * lf + w_kl * lk
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        cur = (loss.item(), lf.item(), lk.item())
        run = cur if run is None else tuple(0.95 * a + 0.05 * b for a, b in zip(run, cur))
        if (step + 1) % 10 == 0 or step == 0:
            log(f"  mimic step {step + 1}/{steps}: loss {run[0]:.4f} (feat {run[1]:.4f}, kl {run[2]:.4f}) "
                f"lr {sched.get_last_lr()[0]:.2e}")
        if eval_fn is not None and eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            student.eval()
            eval_fn(student, step + 1)
            student.train()
    return student.eval()
