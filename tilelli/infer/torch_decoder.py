"""The PyTorch reference decoder: a `tilelli.model.models.LM` behind the generation loop's interface.

It runs every model (the parent blocks too) and is what the native engine is checked
against. Each sequence is its own `InferenceState` of batch size 1, so sequences of different
lengths share a `Batch` simply; a call loops over them (the reference is about exactness, the
engine about speed). The model's train/eval mode is left as it was: generation switches to eval
mode for the call and restores the previous mode.
"""

from __future__ import annotations

import numpy as np
import torch

from tilelli.model.models import LM, InferenceState
from tilelli.model.ternary import use_int8_inputs


class TorchDecoder:
    def __init__(self, model: LM):
        self.model = model
        self.config = model.config
        self.max_seq_len = model.config.max_seq_len

    @property
    def int8(self) -> bool:
        """The integer path (`use_int8_inputs`), as the native engine's; settable between calls."""
        return any(getattr(m, "int8_inputs", False) for m in self.model.modules())

    @int8.setter
    def int8(self, on: bool) -> None:
        use_int8_inputs(self.model, on)

    @property
    def ternary(self) -> bool:
        return self.config.ternary.quantize

    def new_sequence(self, max_len: int | None = None) -> InferenceState:
        return self.model.init_state(1, max_len or self.max_seq_len)

    def forward(self, seqs: list[InferenceState], chunks: list[bytes], all_logits: bool = False) -> np.ndarray:
        """Feed chunks[i] to seqs[i]; float32 logits (len(seqs), vocab) of each chunk's last
        byte, or (total bytes, vocab) with `all_logits`."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                rows = []
                for state, chunk in zip(seqs, chunks, strict=True):
                    idx = torch.tensor([list(chunk)], dtype=torch.long, device=self.model.device)  # (1, T)
                    logits = self.model(idx, state=state).logits[0].float()  # (T, V)
                    rows.append(logits if all_logits else logits[-1:])
        finally:
            self.model.train(was_training)
        return torch.cat(rows).cpu().numpy()
