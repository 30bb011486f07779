"""Parameter counts from a `ModelConfig`'s shapes alone, without building (or importing) torch.

`tilelli models` lists every named config with its size; building the models to count them
costs the torch import (seconds) for a table that is pure arithmetic. Each function below
mirrors the constructor it names (tilelli.model.models, tilelli.model.blocks, tilelli.model.pathways,
tilelli.model.ternary), and a test pins `count_params(cfg) == build_model(cfg).num_params()` for
every named config and for variants that switch on each shape option, so the two cannot drift.
"""

from __future__ import annotations

from tilelli.model.config import ModelConfig, TernaryOptions


def ternary_weight(rows: int, cols: int, opts: TernaryOptions) -> int:
    """A ternary-capable layer (TernaryModule): its latent (rows, cols) weight, plus the learned
    LSQ scale (one per row with `per_row`, else one) whenever `lsq` is set."""
    return rows * cols + ((rows if opts.per_row else 1) if opts.lsq else 0)


def layer_norm(d: int) -> int:
    return 2 * d  # weight and bias


def attention(cfg: ModelConfig, v_head: int, out_proj: bool) -> int:
    """CausalAttention: one fused QKV projection (Q, K of head_dim, V of v_head per head) and an
    optional d x d output projection. `fp_attention` changes how QKV quantizes, not its size."""
    d, h, dk = cfg.d_model, cfg.n_heads, cfg.head_dim
    n = ternary_weight(h * (2 * dk + v_head), d, cfg.ternary)
    if out_proj:
        n += ternary_weight(d, h * v_head, cfg.ternary)
    return n


def dense(cfg: ModelConfig) -> int:
    """Dense: d -> expand*d -> d, no biases."""
    d, wide = cfg.d_model, cfg.expand * cfg.d_model
    return ternary_weight(wide, d, cfg.ternary) + ternary_weight(d, wide, cfg.ternary)


def pathway(name: str, cfg: ModelConfig) -> int:
    """One bank of the pathway `name`, as `tilelli.model.blocks.make_pathway` builds it."""
    d = cfg.d_model
    if name == "local":
        return ternary_weight(d, cfg.local_kernel, cfg.ternary)  # depthwise conv (C, 1, k)
    if name == "wide":
        return ternary_weight(d, cfg.wide_kernel, cfg.ternary)
    if name == "state":
        return 3 * d  # a_raw, b, c
    if name == "sparse":
        if cfg.arch == "lite":
            return attention(cfg, cfg.head_dim, out_proj=True)
        return attention(cfg, d // cfg.n_heads, out_proj=False)
    if name == "dense":
        return dense(cfg)
    raise ValueError(f"unknown pathway {name!r}")


def block(cfg: ModelConfig) -> int:
    """One block: routed (norm, router over pathway x bank, every bank of every pathway) or vanilla."""
    d = cfg.d_model
    if cfg.arch == "vanilla":
        return 2 * layer_norm(d) + attention(cfg, cfg.head_dim, out_proj=True) + dense(cfg)
    routes = len(cfg.pathways) * cfg.n_banks
    router = d * routes + routes  # FP32 nn.Linear with bias
    return layer_norm(d) + router + cfg.n_banks * sum(pathway(n, cfg) for n in cfg.pathways)


def count_params(cfg: ModelConfig) -> int:
    """Parameters of `build_model(cfg)` as trained: embedding, positions, blocks, final norm, head."""
    d = cfg.d_model
    embed = ternary_weight(cfg.vocab_size, d, cfg.ternary)
    head = ternary_weight(cfg.vocab_size, d, cfg.ternary)  # not tied to the embedding
    return embed + cfg.max_seq_len * d + cfg.n_layers * block(cfg) + layer_norm(d) + head
