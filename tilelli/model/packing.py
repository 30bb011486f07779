"""Trits {-1, 0, +1} <-> bytes, five trits per byte (3^5 = 243 <= 256): 1.6 bits per weight.

A group of five codes c0..c4 becomes the base-3 number with c0 as the *least* significant
digit, digits d = c + 1 in {0, 1, 2}:

    byte = d0 + 3*d1 + 9*d2 + 27*d3 + 81*d4          (0 .. 242)

Codes are flattened in C order; a length that is not a multiple of five is padded with
zero trits (digit 1), so the padding is checkable on the way back. Byte values 243..255 never
occur and mark a corrupt buffer. Everything is vectorised numpy: a 10 M-weight model packs
and unpacks in tens of milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TRITS_PER_BYTE = 5
_POWERS = np.array([1, 3, 9, 27, 81], dtype=np.uint8)
_MAX_BYTE = 242  # 3^5 - 1

# _DIGITS[b] = the five codes in byte b, least significant first (rows 243..255 unused).
_DIGITS = (np.arange(243)[:, None] // _POWERS.astype(np.int64) % 3 - 1).astype(np.int8)  # (243, 5)


def packed_size(n: int) -> int:
    """Bytes that hold n trits."""
    return -(-n // TRITS_PER_BYTE)


def _numpy(a: Any) -> np.ndarray:
    """A numpy view of an array or a torch tensor, without importing torch (the inference path is torch-free)."""
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def pack_trits(codes: Any) -> np.ndarray:
    """Any-shape codes in {-1, 0, 1} (numpy array or torch tensor) -> uint8 array of ceil(n / 5)
    bytes (C-order flatten)."""
    codes = _numpy(codes)
    flat = np.asarray(codes).reshape(-1)
    if flat.size == 0:
        raise ValueError("nothing to pack: the codes are empty")
    with np.errstate(invalid="ignore"):  # NaN / inf cast to garbage here, caught just below
        small = flat if flat.dtype == np.int8 else flat.astype(np.int8)
        bad = (small < -1) | (small > 1)
        if small is not flat:
            bad |= small.astype(flat.dtype) != flat
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"trits must be -1, 0 or 1; got {flat[i].item()!r} at flat index {i}")
    n = flat.size
    digits = np.ones(packed_size(n) * TRITS_PER_BYTE, dtype=np.uint8)  # padding = trit 0
    digits[:n] = small.view(np.uint8) + 1  # -1 -> 255 + 1 wraps to 0
    digits = digits.reshape(-1, TRITS_PER_BYTE)  # (bytes, 5)
    out = digits[:, 0].copy()
    for j in range(1, TRITS_PER_BYTE):  # five column ops, not a loop over elements
        out += digits[:, j] * _POWERS[j]
    return out


def unpack_trits(packed: Any, n: int) -> np.ndarray:
    """The first n trits of a `pack_trits` buffer, as a flat int8 array in {-1, 0, 1}."""
    buf = _numpy(packed)
    if buf.dtype != np.uint8:
        raise ValueError(f"packed trits must be uint8 bytes, got dtype {buf.dtype}")
    buf = buf.reshape(-1)
    n = int(n)
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    need = packed_size(n)
    if buf.size < need:
        raise ValueError(f"corrupt packed trits: {buf.size} bytes hold at most "
                         f"{buf.size * TRITS_PER_BYTE} trits, {n} were asked for ({need} bytes)")
    buf = buf[:need]
    if buf.size and int(buf.max()) > _MAX_BYTE:
        i = int(np.flatnonzero(buf > _MAX_BYTE)[0])
        raise ValueError(f"corrupt packed trits: byte {i} is {int(buf[i])}, above the largest "
                         f"valid value {_MAX_BYTE}")
    trits = _DIGITS[buf].reshape(-1)  # (need * 5,)
    if trits[n:].any():
        raise ValueError(f"corrupt packed trits: the padding after trit {n} is not zero; "
                         "was the buffer written for a different length?")
    return trits[:n]
