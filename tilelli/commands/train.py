"""`tilelli train`: train a named config (see tilelli.train.trainer); `--smoke` checks every config.

Under `torchrun --nproc_per_node N -m tilelli train ...` it trains data-parallel, with
--batch-size per rank. Every argument and path is checked (tilelli.train.config) before the
trainer, and with it torch, is imported: a typo costs a fraction of a second, not the import.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from tilelli.commands.options import add_threads_argument, seed
from tilelli.errors import TilelliError
from tilelli.model.config import list_configs
from tilelli.train.config import OPTIMIZERS, TrainConfig, check_overrides

if TYPE_CHECKING:
    from tilelli.train.trainer import SmokeResult

_D = TrainConfig()  # the defaults shown in --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", default=_D.model, help=f"named config: {', '.join(list_configs())} (default {_D.model})")
    add("--override", action="append", default=[], metavar="FIELD=VALUE",
        help="change a field of the model config, e.g. --override d_model=64 (repeatable; JSON values)")
    add("--data", default="", metavar="DIR",
        help="the directory `tilelli prepare` wrote (train.bin, valid.bin, meta.json)")
    add("--out", default="", metavar="RUN_DIR", help="run directory: run.json, metrics.jsonl, checkpoints/")
    add("--steps", type=int, default=_D.steps, help=f"optimizer updates in all (default {_D.steps})")
    add("--batch-size", type=int, default=_D.batch_size,
        help=f"sequences per step, per process (default {_D.batch_size})")
    add("--seq-len", type=int, default=_D.seq_len, help=f"bytes per sequence (default {_D.seq_len})")
    add("--lr", type=float, default=_D.lr, help=f"peak learning rate (default {_D.lr})")
    add("--min-lr", type=float, default=None, help="learning rate at the end of the cosine (default lr/10)")
    add("--warmup", type=int, default=_D.warmup, help=f"linear warm-up steps (default {_D.warmup})")
    add("--grad-clip", type=float, default=_D.grad_clip,
        help=f"clip the global gradient norm to this; 0 = off (default {_D.grad_clip})")
    add("--weight-decay", type=float, default=_D.weight_decay,
        help=f"decoupled weight decay of 2-D weights (default {_D.weight_decay})")
    add("--optimizer", choices=OPTIMIZERS, default=_D.optimizer,
        help="adamw, or muon for the blocks' 2-D weights with AdamW for the rest (default adamw)")
    add("--seed", type=seed, default=_D.seed, help=f"model init and data order (default {_D.seed})")
    add("--device", choices=("auto", "cpu", "cuda"), default=_D.device, help="default auto: cuda if present")
    add("--dtype", choices=("fp32", "bf16"), default=_D.dtype, help="bf16 = bf16 autocast (default fp32)")
    add("--compile", action="store_true", help="torch.compile the model (CUDA only; ignored on CPU)")
    add_threads_argument(parser, default=_D.threads, zero="torch's default, per process")
    add("--eval-every", type=int, default=_D.eval_every,
        help=f"validate every N steps and at the end; 0 = never (default {_D.eval_every})")
    add("--eval-batches", type=int, default=_D.eval_batches,
        help=f"validation batches; 0 = the whole valid.bin (default {_D.eval_batches})")
    add("--ckpt-every", type=int, default=_D.ckpt_every,
        help=f"checkpoint every N steps (always at the end); 0 = only at the end (default {_D.ckpt_every})")
    add("--keep-last", type=int, default=_D.keep_last, help=f"checkpoints kept (default {_D.keep_last})")
    add("--resume", action="store_true",
        help="continue from the newest checkpoint in --out (same model, optimizer, global batch and "
             "seq-len; a larger --steps extends the schedule)")
    add("--init-from", default="", metavar="CHECKPOINT",
        help="start from the weights of this checkpoint or run dir, with a fresh optimizer and schedule; "
             "the architecture must match, ternary options may differ (FP32 -> ternary = quantization-aware "
             "fine-tuning)")
    add("--smoke", action="store_true",
        help="5 steps of every named config on a built-in sample; fails if any pathway gets no gradient")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """FIELD=VALUE pairs; VALUE is JSON (64, true, "per_token") or else a plain string. Unknown
    fields and values of the wrong type are refused here, naming the field and what it takes."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise TilelliError(f"--override {item!r}: expected FIELD=VALUE, e.g. d_model=64")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    check_overrides(out)
    return out


def _report(result: SmokeResult) -> None:
    norms = ", ".join(f"{k} {v:.2e}" for k, v in result.grad_norms.items())
    verdict = "ok" if result.ok else "FAIL: " + "; ".join(result.bad[:3])
    print(f"{result.model:<22} {result.params / 1e6:6.2f} M  loss {result.losses[0]:.3f} -> "
          f"{result.losses[-1]:.3f}  grad norms: {norms}  {verdict}", flush=True)


def run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.override)
    if args.smoke:
        from tilelli.train.trainer import smoke

        results = smoke(overrides=overrides, report=_report)
        failed = [r.model for r in results if not r.ok]
        if failed:
            print(f"smoke: zero or non-finite gradients in {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    fields = set(TrainConfig.__dataclass_fields__) - {"overrides", "quiet"}
    cfg = TrainConfig(overrides=overrides, **{k: getattr(args, k) for k in fields})
    cfg.check_inputs()  # before torch loads
    from tilelli.train.trainer import Trainer

    Trainer(cfg).run()
    return 0
