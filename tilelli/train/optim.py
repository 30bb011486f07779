"""Optimisers and the learning-rate schedule.

Parameters fall into three roles, decided by the layer that owns them:

- **matrix**: 2-D weights of the blocks' linear layers (pathway projections, FFN, attention;
  the latent FP32 weight of a ternary layer). Muon orthogonalises their updates; under AdamW
  they get weight decay.
- **decay**: the other 2-D weights (byte embedding, positional embedding, unembedding,
  router). Always AdamW with weight decay: Muon is meant for hidden matrices, and an
  embedding row or a router column should move independently of the rest.
- **no_decay**: everything else (norm gains, biases, SSM scalars, 3-D conv kernels, LSQ
  scales). AdamW without weight decay: shrinking a gain or a learned step size towards zero
  is not regularisation, it breaks the layer.

Muon runs with `adjust_lr_fn="match_rms_adamw"`, which scales its orthogonalised update to
the RMS of an AdamW update, so one `--lr` (and one schedule) drives both optimisers. It is
`torch.optim.Muon` with one change (see `Muon`): the orthogonalisation runs in FP32 on CPUs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

from tilelli.model.ternary import TernaryModule
from tilelli.train.config import OPTIMIZERS  # the names, torch-free, for the CLI's checks

OptimizerName = Literal["adamw", "muon"]
ADAMW_BETAS = (0.9, 0.95)


def param_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Every trainable parameter exactly once, under "matrix", "decay" or "no_decay" (see module doc)."""
    blocks = getattr(model, "blocks", None)
    in_blocks = {id(m) for m in blocks.modules()} if blocks is not None else set()
    routers = {id(b.router) for b in blocks if hasattr(b, "router")} if blocks is not None else set()
    roles: dict[str, list[nn.Parameter]] = {"matrix": [], "decay": [], "no_decay": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            is_weight = name == "weight" or (name == "pos_emb" and module is model)
            lsq_scale = isinstance(module, TernaryModule) and name == "scale"
            if p.ndim != 2 or not is_weight or lsq_scale:
                roles["no_decay"].append(p)
            elif id(module) in in_blocks and id(module) not in routers:
                roles["matrix"].append(p)
            else:
                roles["decay"].append(p)
    return roles


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Approximately orthogonalise the 2-D update `g` (U S V^T -> about U V^T) by the quintic
    Newton-Schulz iteration of Muon, computed in `dtype`; returns `dtype`."""
    a, b, c = coefficients
    x = g.to(dtype)
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # iterate on the short side: (rows, cols) with rows <= cols
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T  # (rows, rows)
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


class Muon(torch.optim.Muon):
    """`torch.optim.Muon`, same update rule and state, with the Newton-Schulz iteration in FP32
    on CPU. torch computes it in bf16, which suits GPUs; on a CPU without bf16 matrix units a
    bf16 matmul is many times slower than FP32. On CUDA it stays bf16, as upstream."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, params, grads, bufs)
            lr, momentum = group["lr"], group["momentum"]
            for param, grad, buf in zip(params, grads, bufs, strict=True):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                dtype = torch.bfloat16 if param.is_cuda else torch.float32
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                scale = 0.2 * math.sqrt(max(param.shape[:2]))  # adjust_lr_fn="match_rms_adamw"
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-lr * scale)
        return loss


def build_optimizers(model: nn.Module, name: str, lr: float, weight_decay: float,
                     fused: bool = False) -> list[torch.optim.Optimizer]:
    """AdamW over everything, or Muon over the block matrices plus AdamW over the rest.

    A list, because Muon only accepts 2-D parameters: the trainer steps, schedules and
    checkpoints each optimiser in turn. `fused` selects AdamW's fused kernel (CUDA).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    roles = param_roles(model)
    decayed = roles["decay"] + (roles["matrix"] if name == "adamw" else [])
    groups = [{"params": decayed, "weight_decay": weight_decay},
              {"params": roles["no_decay"], "weight_decay": 0.0}]
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=ADAMW_BETAS,
                              fused=fused or None)
    if name == "adamw" or not roles["matrix"]:
        return [adamw]
    muon = Muon(roles["matrix"], lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    return [muon, adamw]


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Learning rate for optimizer update number `step` (0-based): linear warm-up to `lr`
    over `warmup` updates, then a cosine from `lr` down to `min_lr` at update `total - 1`.

    A pure function of the step, so a resumed run needs only the step to continue exactly.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(total - 1 - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
