"""Model configs: one architecture-only dataclass and a registry of named configs.

Training settings (steps, learning rate, ...) live in the trainer's own dataclass; a
`ModelConfig` says only what the network is, so it can be saved next to the weights as
`config.json` and rebuilt exactly from it.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from tilelli.errors import TilelliError, shown

Arch = Literal["lite", "parent", "vanilla"]
SkipMode = Literal["per_call", "per_token"]

PARENT_PATHWAYS = {3: ("local", "state", "sparse"), 5: ("local", "wide", "state", "sparse", "dense")}
LITE_PATHWAYS = ("local", "sparse", "dense")


@dataclass(frozen=True)
class TernaryOptions:
    """How the ternary-capable layers quantize. `quantize=False` gives the plain FP32 model
    with exactly the same parameters, so one checkpoint can be continued either way."""

    quantize: bool = False
    per_row: bool = False  # one scale per output row instead of per tensor
    hadamard: bool = False  # rotate by an orthonormal Hadamard transform before quantizing
    lsq: bool = False  # learned step size: the scale is a trained parameter
    fp_attention: bool = False  # keep the attention Q/K/V projections in FP32

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem = field_type_error(f.name, getattr(self, f.name))
            if problem:
                raise TilelliError(f"invalid ternary options: {f.name}={shown(getattr(self, f.name))}; {problem}")


# How a model is trained, not what it is: loss weights and dropout. `--init-from` may change them.
TRAINING_FIELDS = ("balance_weight", "bank_balance_weight", "router_entropy_weight", "dropout")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one byte-level LM. `arch` picks the block:

    - "lite": router over (local conv, sparse top-k multi-head attention, dense FFN).
    - "parent": router over 3 (local, state, sparse) or 5 (local, wide, state, sparse, dense)
      pathways, with weight banks, top-k routing and inference-time skipping.
    - "vanilla": pre-norm GPT block (causal attention, then FFN), the A/B baseline.
    """

    arch: Arch
    d_model: int
    n_layers: int
    vocab_size: int = 256
    max_seq_len: int = 2048
    ternary: TernaryOptions = field(default_factory=TernaryOptions)
    # attention: heads of width d_head (0 = d_model // n_heads); top_k 0 = dense causal
    n_heads: int = 8
    d_head: int = 0
    top_k: int = 16
    # convolution kernels and FFN width
    local_kernel: int = 5
    wide_kernel: int = 21
    expand: int = 4
    # routed blocks (the Lite registry configs use no banks, top-k routing or skipping)
    n_pathways: int = 5
    n_banks: int = 1
    top_k_routing: int = 0
    skip_threshold: float = 0.05
    skip_mode: SkipMode = "per_call"
    # auxiliary load-balance losses (router over pathways, and over banks)
    balance_weight: float = 0.01
    bank_balance_weight: float = 0.01
    # the original's "metacognition" loss: this weight x the mean per-token router entropy
    # (nats), minimised on in-domain training text so routing is sharp where the model knows the
    # data and, the hope goes, stays uncertain where it does not; 0 = off (issue 13 measures it)
    router_entropy_weight: float = 0.0
    # dropout on the embeddings and on every residual branch's output, in training only (nanoGPT's
    # placement, less its attention-weight dropout): the regulariser for several epochs of small data
    dropout: float = 0.0

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise TilelliError(f"invalid model config: {msg}")

        for f in dataclasses.fields(self):  # a wrong type first: the range checks below would fail on it
            problem = field_type_error(f.name, getattr(self, f.name))
            if problem:
                bad(f"{f.name}={shown(getattr(self, f.name))}; {problem}")
        if self.arch not in ("lite", "parent", "vanilla"):
            bad(f"arch {self.arch!r}; expected 'lite', 'parent' or 'vanilla'")
        for name in ("d_model", "n_layers", "vocab_size", "max_seq_len", "n_heads", "expand",
                     "local_kernel", "wide_kernel", "n_banks"):
            if getattr(self, name) < 1:
                bad(f"{name}={getattr(self, name)} must be >= 1")
        if self.d_head < 0 or self.top_k < 0 or self.top_k_routing < 0:
            bad("d_head, top_k and top_k_routing must be >= 0")
        if self.d_head == 0 and self.d_model % self.n_heads:
            bad(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "pick another n_heads or set d_head")
        if self.arch == "parent" and self.n_pathways not in PARENT_PATHWAYS:
            bad(f"n_pathways={self.n_pathways}; the parent block has 3 or 5")
        if self.skip_mode not in ("per_call", "per_token"):
            bad(f"skip_mode {self.skip_mode!r}; expected 'per_call' or 'per_token'")
        if not 0.0 <= self.skip_threshold < 1.0:
            bad(f"skip_threshold={self.skip_threshold} must be in [0, 1)")
        if self.arch == "vanilla" and (self.n_banks != 1 or self.top_k_routing or self.router_entropy_weight):
            bad("n_banks, top_k_routing and router_entropy_weight need a routed block (arch 'lite' or 'parent')")
        if self.router_entropy_weight < 0:
            bad(f"router_entropy_weight={self.router_entropy_weight} must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout={self.dropout} must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    @property
    def pathways(self) -> tuple[str, ...]:
        """Router output order."""
        if self.arch == "lite":
            return LITE_PATHWAYS
        if self.arch == "parent":
            return PARENT_PATHWAYS[self.n_pathways]
        return ()

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed; `quantize=...` etc. reach into `ternary`."""
        tern = {k: changes.pop(k) for k in list(changes) if k in TernaryOptions.__dataclass_fields__}
        if tern:
            changes["ternary"] = dataclasses.replace(self.ternary, **tern)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise TilelliError(f"config has unknown fields {shown(sorted(unknown))}; "
                               "was it written by a newer tilelli?")
        d = dict(d)
        tern = d.pop("ternary", {}) or {}
        if not isinstance(tern, dict):
            raise TilelliError(f"config field ternary takes an object of ternary options, got {type(tern).__name__}")
        unknown_t = set(tern) - set(TernaryOptions.__dataclass_fields__)
        if unknown_t:
            raise TilelliError(f"config has unknown ternary fields {shown(sorted(unknown_t))}")
        return cls(ternary=TernaryOptions(**tern), **d)


@functools.cache
def _field_types() -> dict[str, Any]:
    """Field name -> declared type, for ModelConfig and (by their own names) TernaryOptions."""
    return {**typing.get_type_hints(TernaryOptions), **typing.get_type_hints(ModelConfig)}


def field_type_error(name: str, value: Any) -> str | None:
    """None when `value` has the type field `name` declares, else what the field takes
    ("d_model takes an integer"). A config field must be checked before it is compared or
    multiplied, or a wrong type surfaces as an internal message ("'<' not supported ...").
    Ints pass for float fields; bools do not pass for numbers (JSON true is not 1)."""
    declared = _field_types().get(name)
    if declared is None:
        return None
    if typing.get_origin(declared) is Literal:
        choices = typing.get_args(declared)
        if value in choices and isinstance(value, str):
            return None
        return f"{name} takes one of {', '.join(map(repr, choices))}"
    if declared is bool:
        return None if isinstance(value, bool) else f"{name} takes true or false"
    if declared is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"{name} takes an integer"
    if declared is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{name} takes a number"
    if declared is TernaryOptions:
        return None if isinstance(value, TernaryOptions) else f"{name} takes a TernaryOptions"
    return None


# ---------------------------------------------------------------------------------------
# Named configs (the trainer's --model). Shapes are chosen so that every model is ~10 M
# parameters and the vanilla baseline is within 2 % of the Lite models (tests pin counts).
# Lite uses a standard multi-head layout (concatenated d_head-wide values + one d x d
# projection) instead of the original's per-head d-wide values, which cost H times more
# attention compute; the freed parameters go into width (d=320 rather than 256).

_LITE = ModelConfig(arch="lite", d_model=320, n_layers=8, n_heads=8, top_k=16, local_kernel=5, expand=4,
                    skip_threshold=0.0)
_PARENT = ModelConfig(arch="parent", d_model=512, n_layers=7, n_pathways=5, n_heads=1, d_head=32,
                      top_k=8, local_kernel=5, wide_kernel=21, expand=2)
_VANILLA = ModelConfig(arch="vanilla", d_model=320, n_layers=8, n_heads=5, top_k=0, expand=4)

_REGISTRY: dict[str, ModelConfig] = {
    "tilelli-lite-fp32": _LITE,
    "tilelli-lite-ternary": _LITE.replace(quantize=True),
    "tilelli-fp32": _PARENT,
    "tilelli-ternary": _PARENT.replace(quantize=True),
    "vanilla-fp32": _VANILLA,
}


def list_configs() -> list[str]:
    return list(_REGISTRY)


def from_name(name: str, **overrides: Any) -> ModelConfig:
    """The named config, optionally with fields changed (e.g. a tiny variant for tests)."""
    if name not in _REGISTRY:
        raise TilelliError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}")
    cfg = _REGISTRY[name]
    return cfg.replace(**overrides) if overrides else cfg
