"""The ternary quantizer, written once for torch tensors and numpy arrays alike.

Training (`tilelli.model.ternary`, torch) and the native engine's loader (`tilelli.infer.weights`,
numpy, without torch) must turn a latent weight into the same trits and scales, or an unpacked
ternary checkpoint would decode differently from the model it was saved from. Both call these
functions, which use only what numpy arrays and torch tensors share: abs, mean, round (halves to
even in both) and clip. (numpy and torch sum a mean in different orders, so a scale computed by
both may differ in its last bits; the trits do not, and packed checkpoints store both exactly.)
"""

from __future__ import annotations

from typing import TypeVar

Array = TypeVar("Array")  # a torch.Tensor or a numpy.ndarray; the result is of the same kind
EPS = 1e-8  # the smallest scale: an all-zero weight quantizes to zeros, not to NaN


def absmean_scale(w2d: Array, per_row: bool) -> Array:
    """alpha = mean(|w|), per tensor (1, 1) or per row (rows, 1); never below EPS."""
    a = abs(w2d).mean(axis=1, keepdims=True) if per_row else abs(w2d).mean().reshape(1, 1)
    return a.clip(min=EPS)


def learned_scale(scale: Array) -> Array:
    """A learned (LSQ) scale as the quantizer uses it: its magnitude, never below EPS."""
    return abs(scale).clip(min=EPS)


def trits_of(w2d: Array, scale: Array) -> Array:
    """The ternary codes clamp(round(w / scale), -1, 1), as floats in {-1, 0, 1}."""
    return (w2d / scale).round().clip(-1, 1)
