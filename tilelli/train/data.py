"""Reading packed byte data: random training windows and exact evaluation windows.

A data dir (written by `tilelli prepare`) holds `train.bin` and `valid.bin`, flat uint8 arrays
of UTF-8 text, plus `meta.json`. Tokens are the raw bytes (vocabulary 256), so a batch is just
windows of the file.

A *masked* source (written by `tilelli prepare-chat`) adds, beside `NAME.bin`, `NAME.mask.bin`
(one uint8 per byte: 1 where that byte is a training target) and `NAME.starts.npy` (the offsets
where a window may start). Targets outside the mask become -1, which the loss ignores, and
windows start only at those offsets: supervised fine-tuning is the same trainer on another
source, with the loss on the reply bytes and every window starting at a turn.

The files are read through a memory map, indexed per window and mapped
afresh for every batch, so a multi-GB bin costs only the pages one batch touches, never the
whole file in RAM.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from tilelli.errors import TilelliError

VOCAB_SIZE = 256
IGNORE = -1  # a target the loss skips (outside a masked source's mask)


def mask_path(path: str | Path) -> Path:
    """`train.bin` -> `train.mask.bin`: which bytes of a masked source are training targets."""
    path = Path(path)
    return path.with_name(path.stem + ".mask.bin")


def starts_path(path: str | Path) -> Path:
    """`train.bin` -> `train.starts.npy`: where the windows of a masked source may start."""
    path = Path(path)
    return path.with_name(path.stem + ".starts.npy")


def open_bin(path: str | Path) -> np.memmap:
    """Memory-map a packed `.bin` file read-only, with errors a user can act on.

    Mapping (not reading) keeps memory flat whatever the file size; the OS pages in only the
    windows that are actually sliced.
    """
    path = Path(path)
    if not path.is_file():
        raise TilelliError(f"no {path.name} in {path.parent}; run `tilelli prepare` first")
    size = path.stat().st_size
    if size == 0:
        raise TilelliError(f"{path} is empty (0 bytes); re-run `tilelli prepare` on non-empty input")
    return np.memmap(path, dtype=np.uint8, mode="r")


class _Bytes:
    """The bytes windows are cut from: a whole `.bin` file mapped afresh per batch, or an array.

    A memory map kept for the whole run holds every page it ever touched in the process's RSS
    (measured: 3.7 GB after 2,000 random batches of 64 x 513 on a 4 GB file); unmapping after each
    batch gives them back to the page cache and costs one mmap call (nanoGPT does the same).
    A path, or a memmap of a whole file, gets that treatment; any other uint8 array is used as is.
    """

    def __init__(self, data: np.ndarray | str | Path) -> None:
        if isinstance(data, (str, Path)):
            data = open_bin(data)
        filename = getattr(data, "filename", None)
        self.name = str(filename or "<array>")
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TilelliError(f"{self.name}: expected a flat uint8 array, got {data.dtype} {data.shape}")
        self.size = len(data)
        whole_file = (filename is not None and data.offset == 0 and data.strides == (1,)
                      and self.size == os.path.getsize(filename))
        self.path = Path(filename) if whole_file else None
        self.array = None if whole_file else data

    def view(self) -> np.ndarray:
        """The bytes to slice now: a fresh read-only map of the file, or the array itself."""
        if self.path is None:
            return self.array
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.size,))


class _Source:
    """A `.bin` and, when it is a masked source, its mask and allowed window starts."""

    def __init__(self, data: np.ndarray | str | Path) -> None:
        self.bytes = _Bytes(data)
        self.mask: _Bytes | None = None
        self.starts: np.ndarray | None = None
        if self.bytes.path is not None and mask_path(self.bytes.path).is_file():
            self.mask = _Bytes(mask_path(self.bytes.path))
            where = starts_path(self.bytes.path)
            if self.mask.size != self.bytes.size or not where.is_file():
                raise TilelliError(f"{self.mask.name} does not match {self.bytes.name} (or {where.name} is "
                                   "missing); re-run `tilelli prepare-chat`")
            self.starts = np.load(where)

    def windows(self, starts: Sequence[int], length: int, ends: Sequence[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather `length + 1`-byte windows at `starts` into (x, y) int64 tensors, y = x shifted by
        one, with the targets outside the mask (if any) and at or past `ends[i]` (if given) set
        to IGNORE."""
        data = self.bytes.view()
        rows = np.stack([data[s : s + length + 1] for s in starts])  # (B, length+1); reads only those pages
        chunk = torch.from_numpy(rows.astype(np.int64))
        # clones, not views: for one row `contiguous()` would return views of one buffer, and
        # masking y below would then write -1 into x
        x, y = chunk[:, :-1].clone(), chunk[:, 1:].clone()  # (B, length), (B, length)
        if self.mask is not None:
            m = self.mask.view()
            keep = torch.from_numpy(np.stack([m[s + 1 : s + length + 1] for s in starts]).astype(bool))
            y[~keep] = IGNORE
        if ends is not None:
            room = torch.tensor([e - s for s, e in zip(starts, ends, strict=True)])  # (B,) targets s+1 .. e-1
            y[torch.arange(length)[None, :] + 1 >= room[:, None]] = IGNORE
        return x, y


class ByteBatches:
    """Random training windows of `seq_len + 1` bytes, reproducible and resumable.

    The generator is its own `numpy.random.Generator(PCG64(seed))`, never the global RNG, so
    batches do not depend on what else the program draws. For data-parallel training every rank
    draws the same *global* batch of `batch_size * world_size` offsets and keeps its own slice
    `[rank * batch_size:(rank + 1) * batch_size]`: N ranks with batch b see exactly the windows
    one process with batch N*b sees, and all ranks stay in step without communicating.
    """

    def __init__(
        self,
        data: np.ndarray | str | Path,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise TilelliError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise TilelliError(f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}")
        self.source = _Source(data)
        self.bytes = self.source.bytes
        if self.bytes.size < seq_len + 1:
            raise TilelliError(
                f"{self.bytes.name} has {self.bytes.size} bytes but one window needs seq_len + 1 = "
                f"{seq_len + 1}; use a shorter --seq-len or more data"
            )
        self.allowed = None  # window starts of a masked source that leave room for a whole window
        if self.source.starts is not None:
            self.allowed = self.source.starts[self.source.starts <= self.bytes.size - seq_len - 1]
            if not len(self.allowed):
                raise TilelliError(f"{self.bytes.name}: no turn starts a whole window of {seq_len + 1} bytes; "
                                   "use a shorter --seq-len or more data")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.batches_drawn = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x, y), each int64 of shape (batch_size, seq_len), on the CPU; y[:, t] = x[:, t + 1]."""
        n = self.batch_size * self.world_size  # the global batch
        if self.allowed is None:
            high = self.bytes.size - self.seq_len  # the last start that fits is size - (seq_len + 1)
            starts = self.rng.integers(0, high, size=n)
        else:
            starts = self.allowed[self.rng.integers(0, len(self.allowed), size=n)]
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        self.batches_drawn += 1
        return self.source.windows(mine, self.seq_len)

    def state_dict(self) -> dict:
        """A JSON-serialisable snapshot; `load_state_dict` of it makes the following batches bit-identical."""
        return {
            "bit_generator": self.rng.bit_generator.state,
            "batches_drawn": self.batches_drawn,
            "global_batch_size": self.batch_size * self.world_size,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream where `state` left it.

        The global batch size and seq_len must match the saved ones: with other shapes the same
        generator state would give a different stream, so "resume exactly" would silently fail.
        (world_size may change as long as batch_size * world_size does not.)
        """
        saved = (state["global_batch_size"], state["seq_len"])
        ours = (self.batch_size * self.world_size, self.seq_len)
        if saved != ours:
            raise TilelliError(
                f"data state was saved with global batch {saved[0]} and seq_len {saved[1]}, "
                f"this run has {ours[0]} and {ours[1]}; resume with the same shapes or start fresh"
            )
        self.rng.bit_generator.state = state["bit_generator"]
        self.batches_drawn = int(state["batches_drawn"])


def eval_windows(
    data: np.ndarray | str | Path,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
    max_bytes: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic windows that predict every byte of the file after the first exactly once.

    Window i covers bytes [i*seq_len, i*seq_len + seq_len], so targets never overlap and, when
    `max_batches` is None, the batches hold exactly `len(data) - 1` target bytes in all: summing
    the per-byte loss over every batch gives an exact per-byte figure. Full windows come in batches
    of up to `batch_size` rows (the last batch may have fewer); the leftover shorter than seq_len,
    if any, comes last as its own (1, rest) batch so nothing is dropped. Each window starts with
    empty context, as in training.

    A masked source is cut into windows of whole turns instead: each starts at a turn and
    counts the targets (inside the mask) up to the last turn boundary that fits, and the next
    window starts there; so every reply byte counts exactly once and always with its whole turn
    as context (a turn longer than a window counts only what fits).

    `max_bytes` makes the file end after its first `max_bytes` predictions (bytes 1..max_bytes),
    exactly: the last window is cut short rather than the count rounded to whole batches.
    """
    if batch_size < 1 or seq_len < 1:
        raise TilelliError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    source = _Source(data)
    size = source.bytes.size
    if size < 2:
        raise TilelliError(f"{source.bytes.name} has {size} byte(s); evaluation needs at least 2")
    if max_bytes is not None:
        if max_bytes < 1:
            raise TilelliError(f"max_bytes={max_bytes} must be >= 1")
        size = min(size, max_bytes + 1)
    spans = _eval_spans(source.starts, size, seq_len)
    full = [(s, e) for s, e in spans if s + seq_len + 1 <= size]
    last = [(s, e) for s, e in spans if s + seq_len + 1 > size]  # at most one: it reaches the end of the file
    ends = None if source.starts is None else [e for _, e in full]
    yielded = 0
    for first in range(0, len(full), batch_size):
        if max_batches is not None and yielded >= max_batches:
            return
        rows = full[first : first + batch_size]
        yield source.windows([s for s, _ in rows], seq_len, ends and ends[first : first + batch_size])
        yielded += 1
    if last and (max_batches is None or yielded < max_batches):
        s, e = last[0]
        yield source.windows([s], size - 1 - s, None if ends is None else [e])


def _eval_spans(allowed: np.ndarray | None, size: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, end) of every evaluation window: its targets are the bytes start+1 .. end-1."""
    if allowed is None:
        return [(s, min(s + seq_len, size - 1) + 1) for s in range(0, size - 1, seq_len)]
    spans, i = [], 0
    while i < len(allowed) and allowed[i] < size - 1:
        start, limit = int(allowed[i]), int(allowed[i]) + seq_len
        j = int(np.searchsorted(allowed, limit, side="right")) - 1  # the last turn start that fits
        if size <= limit + 1:
            spans.append((start, size))
            break
        if j > i:
            spans.append((start, int(allowed[j])))
            i = j
        else:  # one turn longer than a window
            spans.append((start, limit + 1))
            i += 1
    return spans
