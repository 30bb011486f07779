"""The user's alternative, for speed comparisons: a plain PyTorch-eager GPT of our size.

What someone who wants a fast small byte-level model would write first (nanoGPT-style):
byte embedding + learned positions, pre-norm blocks of causal self-attention and a 4x GELU
MLP, a final norm and an unembedding; d=320, 8 layers, 5 heads of 64, 256 symbols (our
vanilla baseline's shape). Decoding uses a preallocated KV cache and one `forward` call per
byte, all in eager PyTorch. Weights are random: only its speed is measured.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Block(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None, pos: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if cache is not None:
            cache[0][:, :, pos:pos + T] = k
            cache[1][:, :, pos:pos + T] = v
            k, v = cache[0][:, :, :pos + T], cache[1][:, :, :pos + T]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)  # a prompt from position 0, or one byte
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, d: int = 320, n_layers: int = 8, n_heads: int = 5, vocab: int = 256, max_len: int = 2048):
        super().__init__()
        self.d, self.n_heads, self.max_len = d, n_heads, max_len
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)
        self.blocks = nn.ModuleList([_Block(d, n_heads) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def new_cache(self, batch: int, max_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (batch, self.n_heads, max_len, self.d // self.n_heads)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in self.blocks]

    def forward(self, idx: torch.Tensor, cache: list | None = None, pos: int = 0) -> torch.Tensor:
        """Logits (B, T, vocab) of idx (B, T) at positions pos..pos+T-1 (cache=None: from 0)."""
        x = self.tok(idx) + self.pos[pos:pos + idx.shape[1]]
        for i, block in enumerate(self.blocks):
            x = block(x, cache[i] if cache is not None else None, pos)
        return self.head(self.ln_f(x))

    @torch.inference_mode()
    def greedy(self, prompt: list[int], n: int, use_cache: bool = True) -> list[int]:
        """n greedy bytes after `prompt`: with the KV cache one byte per call, without it the
        whole sequence again per byte."""
        seq = list(prompt)
        if not use_cache:
            for _ in range(n):
                seq.append(int(self(torch.tensor([seq]))[0, -1].argmax()))
            return seq[len(prompt):]
        cache = self.new_cache(1, len(prompt) + n)
        logits = self(torch.tensor([seq]), cache, 0)[0, -1]
        for i in range(n):
            seq.append(int(logits.argmax()))
            if i + 1 < n:
                logits = self(torch.tensor([[seq[-1]]]), cache, len(seq) - 1)[0, -1]
        return seq[len(prompt):]
