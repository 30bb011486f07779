"""Inference: the native engine, the PyTorch reference decoder, and choosing between them.

`load_decoder(path)` is what `tilelli generate` (and chat, and the server) use: the native
engine when it can run the checkpoint (Lite and vanilla, FP32 or ternary, with a C compiler
present), else the PyTorch path, with one note on stderr saying why. Both give the same bytes.
"""

from __future__ import annotations

import os
from typing import Any

from tilelli.errors import TilelliError
from tilelli.limits import check_threads


def load_decoder(path: str | os.PathLike, engine: str = "auto", threads: int = 0, int8: bool = False) -> Any:
    """A generation `Decoder` for the checkpoint at `path`.

    engine: "auto" (native when possible, else PyTorch with a note), "native" (an error
    when impossible) or "torch" (the reference path). int8: the integer path (ternary layers
    take int8 inputs), in either engine.
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
            return NativeModel.load(path, threads=threads, int8=int8)
        if engine == "native":
            raise TilelliError(f"--engine native: {why}; use --engine auto or torch")
        note(f"{why}; generating with the PyTorch path (same bytes, slower)")
    import torch

    from tilelli.infer.torch_decoder import TorchDecoder
    from tilelli.model.checkpoint import load

    if threads:
        torch.set_num_threads(threads)
    model = load(path)
    if int8:
        from tilelli.model.ternary import use_int8_inputs

        use_int8_inputs(model)
    return TorchDecoder(model)
