"""Inference: the native engine, the PyTorch reference decoder, and choosing between them.

`load_decoder(path)` is what `tilelli generate` (and chat, and the server) use: the native
engine when it can run the checkpoint (Lite and vanilla, FP32 or ternary, with a C compiler
present), else the PyTorch path, with one note on stderr saying why. Both give the same bytes.

Ternary models run on the integer path by default (int8 inputs, exact int32 sums: 0.02 % bpb,
docs/results/int8.md, for 1.4-1.7x the speed); `float_path` is where the exact float path is
kept whatever the default: a chat's answer-or-abstain decision is read there, so that the
integer path never changes one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tilelli.errors import TilelliError
from tilelli.limits import check_threads


def load_decoder(path: str | os.PathLike, engine: str = "auto", threads: int = 0, int8: bool | None = None) -> Any:
    """A generation `Decoder` for the checkpoint at `path`.

    engine: "auto" (native when possible, else PyTorch with a note), "native" (an error
    when impossible) or "torch" (the reference path). int8: the integer path (ternary layers
    take int8 inputs), in either engine; None: on for a ternary model, off otherwise.
    """
    if engine not in ("auto", "native", "torch"):
        raise TilelliError(f"engine {engine!r}; expected auto, native or torch")
    check_threads(threads)
    if engine != "torch":
        from tilelli.infer.engine import NativeModel, library, unsupported
        from tilelli.kernels.build import enabled, note
        from tilelli.model.checkpoint_files import model_config

        why = unsupported(model_config(path))
        if why is None and not enabled():
            why = "native kernels are turned off (TILELLI_NO_KERNEL)"
        if why is None and library.load() is None:
            why = "the native engine could not be built"
        if why is None:
            return on_its_path(NativeModel.load(path, threads=threads), int8)
        if engine == "native":
            raise TilelliError(f"--engine native: {why}; use --engine auto or torch")
        note(f"{why}; generating with the PyTorch path (same bytes, slower)")
    import torch

    from tilelli.infer.torch_decoder import TorchDecoder
    from tilelli.model.checkpoint import load

    if threads:
        torch.set_num_threads(threads)
    return on_its_path(TorchDecoder(load(path)), int8)


def on_its_path(decoder: Any, int8: bool | None) -> Any:
    """`decoder` on the integer path when `int8`, on the float path when not, and when None on
    the integer path if it is a ternary model."""
    decoder.int8 = decoder.ternary if int8 is None else int8
    return decoder


@contextmanager
def float_path(decoder: Any) -> Iterator[Any]:
    """`decoder` on the exact float path inside the block, on its own path again after it (a
    decoder with no integer path, such as a test's stand-in, is left as it is)."""
    if not hasattr(decoder, "int8"):
        yield decoder
        return
    was = decoder.int8
    decoder.int8 = False
    try:
        yield decoder
    finally:
        decoder.int8 = was
