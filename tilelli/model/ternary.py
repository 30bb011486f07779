"""Ternary {-1, 0, +1} x scale weights, trained with a straight-through estimator.

One code path for FP32 and ternary: every ternary-capable layer owns a latent FP32 weight and
asks `TernaryModule.effective_weight()` what to multiply by. With `quantize=False` that is the
latent weight itself (the plain FP32 layer, same parameters); with `quantize=True` it is
`alpha * clamp(round(w / alpha), -1, 1)`, whose backward passes the gradient straight through
to the latent weight. After `load_trits(...)` a layer holds its weights as int8 trits plus
scales (what a packed checkpoint stores) and gives bit-identical effective weights.

Weights are viewed as 2-D (rows = output units, cols = the rest): `per_row` gives one scale
per row, and `hadamard` rotates the cols dimension by a block-diagonal orthonormal Hadamard
transform H before quantizing and back after (W_eff = q(W H) H^T), which is the same as
rotating the layer's input features and the weight; in FP32 it leaves outputs unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tilelli.model.config import TernaryOptions
from tilelli.model.quantizer import absmean_scale, learned_scale, trits_of


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized tensor, exactly. Backward: the gradient unchanged.

    A custom Function rather than `w + (q - w).detach()`, because that expression is not
    bit-equal to q in floating point, and packed checkpoints must reproduce logits exactly.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return q

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient multiplied by `g` (LSQ's step-size gradient scale)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: float) -> torch.Tensor:
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.g, None


def ternarize(w: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """alpha * clamp(round(w / alpha), -1, 1) with alpha = mean|w|, straight-through gradient."""
    w2d = w.reshape(w.shape[0], -1)
    with torch.no_grad():
        scale = absmean_scale(w2d, per_row)
        q = scale * trits_of(w2d, scale)
    return _StraightThrough.apply(w2d, q).reshape(w.shape)


def hadamard_block(n: int) -> int:
    """Largest power of two dividing n: the block size of the block-diagonal rotation."""
    return n & -n


@cache
def _hadamard(size: int) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix; symmetric, so it is its own inverse."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(size)).float()


def hadamard_rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotate the last dimension by block-diagonal H (blocks of `hadamard_block(n)`)."""
    n = x.shape[-1]
    b = hadamard_block(n)
    if b == 1:
        return x
    h = _hadamard(b).to(device=x.device, dtype=x.dtype)
    return (x.reshape(*x.shape[:-1], n // b, b) @ h).reshape(x.shape)  # (..., n)


class TernaryModule(nn.Module):
    """Base of every ternary-capable layer: owns `weight` (latent FP32), optional LSQ `scale`.

    Subclasses define `forward` in terms of `self.effective_weight()`. In inference
    (no grad) the effective weight is cached until the latent weight changes, so generation
    pays for quantization once, not per token.
    """

    def __init__(self, shape: tuple[int, ...], opts: TernaryOptions, std: float):
        super().__init__()
        self.opts = opts
        self.weight = nn.Parameter(torch.randn(shape) * std)
        if opts.lsq:
            with torch.no_grad():
                w2d = self._rotated(self.weight.reshape(shape[0], -1))
                self.scale = nn.Parameter(absmean_scale(w2d, opts.per_row).clone())
        self._cache: dict[str, tuple[tuple, Any]] = {}  # what `_cached` keeps, by name

    @property
    def quantized(self) -> bool:
        return self.opts.quantize

    def _rotated(self, w2d: torch.Tensor) -> torch.Tensor:
        return hadamard_rotate(w2d) if self.opts.hadamard else w2d

    def _scale_and_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rotated latent weight, scale, codes) of the quantizer; codes carry no gradient."""
        w2d = self._rotated(self.weight.reshape(self.weight.shape[0], -1))
        if self.opts.lsq:
            scale = learned_scale(self.scale)
        else:
            scale = absmean_scale(w2d.detach(), self.opts.per_row)
        return w2d, scale, trits_of(w2d.detach(), scale.detach())

    def _compute(self) -> torch.Tensor:
        if "packed_trits" in self._buffers:  # loaded from a packed checkpoint
            q = self.packed_scale * self.packed_trits.float()
            shape = self.packed_shape
        else:
            shape = self.weight.shape
            if not self.opts.quantize:
                q = self._rotated(self.weight.reshape(shape[0], -1))
            elif self.opts.lsq:
                w2d, scale, _ = self._scale_and_codes()
                g = 1.0 / math.sqrt(w2d.numel())
                s = _ScaleGrad.apply(scale, g)
                codes = torch.clamp(w2d / s, -1.0, 1.0)
                q = s * _StraightThrough.apply(codes, torch.round(codes.detach()))
            else:
                w2d, scale, codes = self._scale_and_codes()
                q = _StraightThrough.apply(w2d, scale * codes)
        if self.opts.hadamard:
            q = hadamard_rotate(q)  # H is its own inverse
        return q.reshape(shape)

    def _cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """compute(), kept under `name` in inference (no grad) until the weights change, so that
        generation pays for quantizing once, not per token."""
        if torch.is_grad_enabled():
            self._cache.pop(name, None)
            return compute()
        src = self.packed_trits if "packed_trits" in self._buffers else self.weight
        extra = self.scale if self.opts.lsq and "packed_trits" not in self._buffers else src
        key = (src.data_ptr(), src._version, extra._version, src.device, src.dtype)
        if name not in self._cache or self._cache[name][0] != key:
            self._cache[name] = (key, compute())
        return self._cache[name][1]

    def effective_weight(self) -> torch.Tensor:
        """What the layer multiplies by: latent (FP32), quantized (STE), or unpacked trits."""
        return self._cached("effective", self._compute)

    # --- packed storage ---------------------------------------------------------------

    @torch.no_grad()
    def export_trits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int8 (rows, cols) in {-1,0,1}, scales float32 (rows,) or (1,))."""
        if "packed_trits" in self._buffers:
            return self.packed_trits.clone(), self.packed_scale.reshape(-1).clone()
        if not self.opts.quantize:
            raise ValueError("export_trits needs a quantized layer (quantize=True)")
        _, scale, codes = self._scale_and_codes()
        return codes.to(torch.int8), scale.reshape(-1).float().clone()

    @torch.no_grad()
    def load_trits(self, codes: torch.Tensor, scale: torch.Tensor) -> None:
        """Replace the latent weight by frozen trits + scales (a packed checkpoint)."""
        shape = tuple(self.weight.shape) if "weight" in self._parameters else self.packed_shape
        rows = shape[0]
        cols = math.prod(shape[1:])
        if tuple(codes.shape) != (rows, cols):
            raise ValueError(f"trits of shape {tuple(codes.shape)} do not fit weight {shape}")
        if scale.numel() not in (1, rows):
            raise ValueError(f"{scale.numel()} scales do not fit {rows} rows")
        device = self.weight.device if "weight" in self._parameters else self.packed_trits.device
        self._parameters.pop("weight", None)
        self._parameters.pop("scale", None)
        self.packed_shape = shape
        self.register_buffer("packed_trits", codes.to(device=device, dtype=torch.int8))
        self.register_buffer("packed_scale", scale.reshape(-1, 1).to(device=device, dtype=torch.float32))
        self._cache.clear()


    @torch.no_grad()
    def latent_from_trits(self) -> dict[str, torch.Tensor]:
        """Latent tensors ("weight", and "scale" under LSQ) that quantize back to exactly the
        packed trits and scales, so quantization-aware training can continue from a packed
        checkpoint. Under absmean scaling the latent weight is trits x scale / mean|trits| (per
        tensor or per row): its absmean is the scale, and every nonzero code divided by it
        rounds back to +-1 (a mean |code| is at most 1)."""
        if "packed_trits" not in self._buffers:
            raise ValueError("this layer holds latent weights already")
        if self.opts.hadamard:
            raise ValueError("a packed Hadamard-rotated layer has no latent form here; start from its latent weights")
        t = self.packed_trits.float()  # (rows, cols)
        if self.opts.lsq:
            return {"weight": (t * self.packed_scale).reshape(self.packed_shape),
                    "scale": self.packed_scale.reshape(-1, 1).clone() if self.opts.per_row
                    else self.packed_scale.reshape(1, 1).clone()}
        frac = t.abs().mean(dim=1, keepdim=True) if self.opts.per_row else t.abs().mean().reshape(1, 1)
        return {"weight": (t * self.packed_scale / frac.clamp_min(1e-8)).reshape(self.packed_shape)}


def latent_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every packed ternary layer replaced by its latent form
    (`TernaryModule.latent_from_trits`): what `--init-from` a packed checkpoint loads."""
    state = model.state_dict()
    for name, m in model.named_modules():
        if isinstance(m, TernaryModule) and "packed_trits" in m._buffers:
            prefix = f"{name}." if name else ""
            del state[prefix + "packed_trits"], state[prefix + "packed_scale"]
            state.update({prefix + k: v for k, v in m.latent_from_trits().items()})
    return state


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of x (..., n) as int8 values (held in float32) and its scale (..., 1):
    q = rint(x * (127 / m)), m = max|x| (at least 1e-30, so a zero row gives zeros), scale m / 127.
    The native engine's integer path (engine.c, `quantize_int8`) computes exactly this."""
    m = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.round(x * (127.0 / m)).clamp(-127.0, 127.0), m / 127.0


def int8_product(x: torch.Tensor, trits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (..., cols) times ternary weights trits (rows, cols) x scale ((rows,) or (1,)) on the
    integer path: (q @ trits^T) * (x's scale * scale). The integer sums stay below 2^24, so
    float32 holds them exactly, in any order: the same numbers as the engine's int32 sums."""
    q, sx = quantize_int8(x)
    return F.linear(q, trits) * (sx * scale.reshape(-1))  # (..., rows)


class TernaryLinear(TernaryModule):
    """y = x W^T with W ternary-capable; no bias (ternary layers carry none). With
    `int8_inputs` (`use_int8_inputs`) a quantized layer takes int8 inputs (`int8_product`)."""

    int8_inputs = False

    def __init__(self, in_features: int, out_features: int, opts: TernaryOptions, std: float = 0.02):
        super().__init__((out_features, in_features), opts, std)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8_inputs:
            trits, scale = self._cached("int8", lambda: tuple(t.float() for t in self.export_trits()))
            return int8_product(x, trits.to(x.dtype), scale)  # (..., in) -> (..., out)
        return F.linear(x, self.effective_weight())  # (..., in) -> (..., out)


def use_int8_inputs(model: nn.Module, on: bool = True) -> int:
    """Put every quantized TernaryLinear of `model` on the integer path (or back): the option the
    engine's `int8` gives, for `tilelli eval --int8` and the PyTorch fallback. How many layers."""
    layers = [m for m in model.modules() if isinstance(m, TernaryLinear) and m.quantized]
    if on and any(m.opts.hadamard for m in layers):
        raise ValueError("the integer path does not take Hadamard-rotated layers")
    for m in layers:
        m.int8_inputs = on
    return len(layers)


class TernaryEmbedding(TernaryModule):
    """Lookup table quantized at forward time (rows = vocabulary entries)."""

    def __init__(self, num_embeddings: int, dim: int, opts: TernaryOptions, std: float):
        super().__init__((num_embeddings, dim), opts, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.effective_weight())  # (B, T) -> (B, T, dim)
