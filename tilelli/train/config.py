"""Training settings and every check of them that needs no torch.

`tilelli train` builds a `TrainConfig` and calls `check_inputs()` before it imports the trainer
(and with it torch, seconds of start-up): a bad number, an unknown or mistyped --override, a
missing data dir or an output directory that cannot be written is reported at once, in one
line. The trainer (`tilelli.train.trainer.Trainer`, which re-exports this class) runs the same checks
for library callers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilelli.errors import TilelliError
from tilelli.limits import check_threads, seed_problem
from tilelli.model.checkpoint_files import list_checkpoints
from tilelli.model.config import ModelConfig, TernaryOptions, field_type_error, from_name
from tilelli.train.paths import check_writable_dir

OPTIMIZERS: tuple[str, ...] = ("adamw", "muon")  # tilelli.train.optim builds them
OVERRIDABLE = frozenset(set(ModelConfig.__dataclass_fields__) - {"ternary"} | set(TernaryOptions.__dataclass_fields__))


def _shown(value: Any) -> str:
    """A value as it was typed after FIELD= (JSON, or the plain string)."""
    return value if isinstance(value, str) else json.dumps(value)


def check_overrides(overrides: dict[str, Any]) -> None:
    """Unknown fields and values of the wrong type, named in the user's own terms
    (`--override d_model=abc: d_model takes an integer`), whatever the named config."""
    unknown = sorted(set(overrides) - OVERRIDABLE)
    if unknown:
        raise TilelliError(f"unknown model field {unknown[0]!r} in --override; known: {', '.join(sorted(OVERRIDABLE))}")
    for key, value in overrides.items():
        problem = field_type_error(key, value)
        if problem:
            raise TilelliError(f"--override {key}={_shown(value)}: {problem}")


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """The data dir's meta.json (what `tilelli prepare` recorded), {} when there is none; a damaged
    one is a one-line error here, before the run directory is made, not a traceback at step 0."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        meta = None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k, {}), dict) for k in ("train", "valid")):
        raise TilelliError(f"{path} is not the JSON object `tilelli prepare` writes; re-run `tilelli prepare` "
                           "(or remove the file)")
    return meta


def _check_bin(path: Path, min_bytes: int = 1, why: str = "") -> None:
    """A prepared .bin exists and is long enough (what tilelli.train.data checks when it opens one)."""
    if not path.is_file():
        raise TilelliError(f"no {path.name} in {path.parent}; run `tilelli prepare` first")
    size = path.stat().st_size
    if size == 0:
        raise TilelliError(f"{path} is empty (0 bytes); re-run `tilelli prepare` on non-empty input")
    if size < min_bytes:
        raise TilelliError(f"{path} has {size} bytes but {why}")


@dataclass
class TrainConfig:
    """Training settings (the model's architecture lives in `ModelConfig`).

    Defaults suit a laptop CPU. `overrides` changes fields of the named model config (tiny
    test models); `min_lr=None` means lr / 10; `eval_batches=0` evaluates the whole valid
    file; `threads=0` keeps torch's default.
    """

    model: str = "tilelli-lite-fp32"
    data: str = ""
    out: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 1e-3
    min_lr: float | None = None
    warmup: int = 100
    grad_clip: float = 1.0
    weight_decay: float = 0.1
    optimizer: str = "adamw"
    seed: int = 0
    device: str = "auto"
    dtype: str = "fp32"
    compile: bool = False
    threads: int = 0
    eval_every: int = 250
    eval_batches: int = 20
    ckpt_every: int = 500
    keep_last: int = 2
    resume: bool = False
    init_from: str = ""  # start from this checkpoint's weights (fresh optimizer and schedule)
    quiet: bool = False  # no progress bar or messages (smoke runs, tests)

    def __post_init__(self) -> None:
        at_least = {"steps": 1, "batch_size": 1, "seq_len": 1, "warmup": 0, "threads": 0, "eval_every": 0,
                    "eval_batches": 0, "ckpt_every": 0, "keep_last": 1}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise TilelliError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        if seed_problem(self.seed):
            raise TilelliError(f"--seed: {seed_problem(self.seed)}")
        check_threads(self.threads)
        for name in ("lr", "grad_clip", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise TilelliError(f"--{name.replace('_', '-')} must be a finite number "
                                   f"{'> 0' if name == 'lr' else '>= 0'}, got {value}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise TilelliError(f"--min-lr must be in [0, --lr={self.lr}], got {self.min_lr}")
        choices = {"optimizer": OPTIMIZERS, "device": ("auto", "cpu", "cuda"), "dtype": ("fp32", "bf16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TilelliError(f"--{name} {getattr(self, name)!r}; expected one of {', '.join(allowed)}")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def model_config(self) -> ModelConfig:
        """The named config with `overrides` applied (errors name the unknown field or model,
        or the field whose value has the wrong type)."""
        check_overrides(self.overrides)
        return from_name(self.model, **self.overrides)

    def check_inputs(self) -> ModelConfig:
        """Every check of the inputs that needs no torch, in the order a user would fix them;
        returns the model config. The data files must exist and hold one window; the output
        directory must be writable and hold a run exactly when `resume` is set."""
        if not self.data or not self.out:
            raise TilelliError("--data DIR and --out RUN_DIR are required (or use --smoke)")
        model_cfg = self.model_config()
        if self.seq_len > model_cfg.max_seq_len:
            raise TilelliError(f"--seq-len {self.seq_len} exceeds {self.model}'s max_seq_len "
                               f"{model_cfg.max_seq_len}; use a shorter --seq-len")
        data = Path(self.data)
        if data.is_file():
            raise TilelliError(f"--data {data} is a file; give the directory `tilelli prepare` wrote "
                               "(train.bin, valid.bin, meta.json)")
        if not data.is_dir():
            raise TilelliError(f"data dir {data} does not exist; make it with `tilelli prepare`")
        read_meta(data)
        _check_bin(data / "train.bin", self.seq_len + 1,
                   f"one window needs seq_len + 1 = {self.seq_len + 1}; use a shorter --seq-len or more data")
        if self.eval_every:
            _check_bin(data / "valid.bin")  # fail now, not at the first validation
        out = Path(self.out)
        check_writable_dir(out, "--out")
        existing = list_checkpoints(out)
        if self.resume and not existing:
            raise TilelliError(f"--resume but {out} holds no checkpoint; drop --resume to start a new run")
        if not self.resume and existing:
            raise TilelliError(f"{out} already holds a run (checkpoint {existing[-1].name}); "
                               "add --resume to continue it or choose another --out")
        if self.init_from and not Path(self.init_from).exists():
            raise TilelliError(f"--init-from {self.init_from}: no checkpoint there (the path does not exist)")
        return model_cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
