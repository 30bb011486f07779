"""One trainer for every config: setup, train, cleanup.

A run directory holds everything needed to look at, continue or redo the run:

    RUN_DIR/run.json            command line, TrainConfig, ModelConfig, git hash, versions,
                                machine, data hashes, start time (and every resume)
    RUN_DIR/metrics.jsonl       one JSON object per step, plus one per validation
    RUN_DIR/checkpoints/step-0000500/
        config.json, model.safetensors   the model (`tilelli.load` opens this directory)
        trainer.pt                       optimiser states, data stream, RNG states, metrics
                                         position (plain tensors and containers:
                                         `torch.load(weights_only=True)` reads it)

Checkpoints are written to a hidden temporary directory, fsynced and renamed into place, so
a crash or a full disk at any moment leaves the previous checkpoint whole. `resume=True`
continues from the newest one; the learning rate is a function of the step and every
random stream is restored, so the resumed losses are bit-identical to an uninterrupted run.

Data parallel: under `torchrun`, every rank draws the same global batch and keeps its slice,
DDP averages the gradients, and only rank 0 writes files or prints.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from tilelli.errors import Interrupted, TilelliError
from tilelli.model import checkpoint
from tilelli.model.checkpoint_files import CHECKPOINTS, TEMPLATE_KEY, data_template, list_checkpoints
from tilelli.model.config import TRAINING_FIELDS, ModelConfig, list_configs
from tilelli.model.models import LM, build_model
from tilelli.model.ternary import latent_state_dict
from tilelli.train.config import TrainConfig, read_meta  # defined torch-free (the CLI checks it first)
from tilelli.train.data import ByteBatches, open_bin
from tilelli.train.evaluate import evaluate_bpb
from tilelli.train.optim import build_optimizers, lr_at, set_lr
from tilelli.train.runs import METRICS_FILE, RUN_FILE, read_metrics

STATE_FILE = "trainer.pt"


# --- one optimisation step -----------------------------------------------------------------

def grad_groups(model: LM) -> dict[str, list[nn.Parameter]]:
    """Parameters by component, each exactly once: every pathway (all layers and banks
    together) and the router of routed blocks, the attention and FFN of vanilla blocks, and
    "other" (embeddings, norms, unembedding). Their gradient norms show whether a pathway
    learns at all; the total norm is the root of their sum of squares."""
    groups: dict[str, list[nn.Parameter]] = {}
    for block in model.blocks:
        if hasattr(block, "paths"):
            parts = {**block.paths, "router": block.router}
        else:
            # parameterless children (dropout) are no component; their norm would read as "not learning"
            parts = {n: m for n, m in block.named_children()
                     if not isinstance(m, nn.LayerNorm) and any(True for _ in m.parameters())}
        for name, module in parts.items():
            groups.setdefault(name, []).extend(module.parameters())
    taken = {id(p) for ps in groups.values() for p in ps}
    groups["other"] = [p for p in model.parameters() if id(p) not in taken]
    return groups


@dataclass
class StepStats:
    """What one step measured; tensors so that the caller decides when to synchronise."""

    loss: torch.Tensor  # ce + aux, what was minimised
    ce: torch.Tensor  # nats per byte
    aux: torch.Tensor
    router_usage: torch.Tensor  # (routed layers, pathways): mean router weight; (0,) for vanilla
    grad_norm: torch.Tensor  # before clipping
    grad_norms: dict[str, torch.Tensor]  # per `grad_groups` component, before clipping


def train_step(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
               groups: dict[str, list[nn.Parameter]], x: torch.Tensor, y: torch.Tensor, lr: float,
               grad_clip: float, amp_dtype: torch.dtype | None = None) -> StepStats:
    """Forward, backward, clip, update: the step the trainer and the speed benchmark share.

    `model` may be wrapped (DDP, compile); `groups` are the unwrapped model's parameters. With
    DDP the gradients are averaged during backward, so the norm and the clipping act on the
    global gradient exactly as in one process with the whole batch.
    """
    set_lr(optimizers, lr)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        out = model(x, y)
    out.loss.backward()
    norms = {name: torch.nn.utils.get_total_norm([p.grad for p in ps if p.grad is not None])
             for name, ps in groups.items()}
    total = torch.stack(list(norms.values())).square().sum().sqrt()
    if grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_([p for ps in groups.values() for p in ps], grad_clip, total)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    usage = [p.detach().float().mean((0, 1)) for p in out.router_probs]  # (P,) per routed layer
    return StepStats(out.loss.detach(), out.ce_loss.detach(), out.aux_loss.detach(),
                     torch.stack(usage) if usage else out.loss.new_zeros(0), total, norms)


# --- distributed, device, provenance -------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """The layout torchrun announces in WORLD_SIZE / RANK / LOCAL_RANK (one process without)."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TilelliError("--device cuda but torch sees no CUDA GPU; use --device cpu or auto")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(Path(__file__).parent), *args], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the code that runs (None for both outside a git checkout)."""
    if _git("rev-parse", "--is-inside-work-tree") != "true":
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain")  # untracked, not ignored files count: they can be code
    return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def cpu_name() -> str:
    """The CPU model ("AMD EPYC 7B13"), which platform.processor() leaves empty on Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_info(cfg: TrainConfig, model_cfg: ModelConfig, params: int, device: torch.device,
             world_size: int) -> dict[str, Any]:
    """What run.json records: enough to redo the run and to know what it ran on."""
    import safetensors

    from tilelli import __version__

    meta = read_meta(cfg.data)
    return {
        "command": sys.argv,
        "python_executable": sys.executable,
        "cwd": os.getcwd(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train": cfg.to_dict(),
        "model": model_cfg.to_dict(),
        "params": params,
        "git": git_state(),
        "versions": {"tilelli": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "safetensors": safetensors.__version__, "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "processor": cpu_name(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": str(device), "world_size": world_size,
                    "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "data": {"dir": str(Path(cfg.data).resolve()),
                 "train_sha256": meta.get("train", {}).get("sha256"),
                 "valid_sha256": meta.get("valid", {}).get("sha256")},
    }


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- checkpoints -------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every global random stream, as plain containers and tensors (weights_only-loadable)."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    state = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = dict(state["numpy"])
    np_state["state"] = dict(np_state["state"], key=np.array(np_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_train_checkpoint(run_dir: Path, step: int, model: LM, state: dict[str, Any],
                          extra: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoints/step-N atomically, then drop all but the newest `keep_last`.

    Everything goes into a hidden temporary directory first (each file fsynced), which is
    renamed into place only when complete: a crash or a full disk leaves the older
    checkpoints exactly as they were and at most a `.tmp-*` directory, ignored and removed
    by the next save.
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint.save(model, tmp, extra=extra)
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(run_dir)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        fix = "free some disk space" if e.errno == errno.ENOSPC else "fix the problem"
        # --resume needs a checkpoint to continue from; without one, the same command starts over
        hint = f"{fix}, then rerun with --resume" if previous else f"{fix}, then run the same command again"
        raise TilelliError(f"could not write checkpoint {final} ({e.strerror or e}); {kept}; {hint}") from None
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class StopRequest:
    """Ctrl-C (SIGINT) during training, deferred to the end of the step it arrives in.

    A KeyboardInterrupt raised wherever Python happens to be would leave a step half done (the
    batch drawn, one optimiser stepped and not the other), and a checkpoint of that state would
    not resume bit-identically. So, while this is entered, the first SIGINT only sets
    `requested` and the trainer stops at the next step boundary; a second one interrupts at
    once, as usual. Only the main thread can take signals, and a handler someone else installed
    (or SIGINT ignored, as in a `nohup` run) is left alone.
    """

    def __init__(self) -> None:
        self.requested = False
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C stops at once

    def __enter__(self) -> StopRequest:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False


# --- the trainer -------------------------------------------------------------------------------

class Trainer:
    """Phases: `setup()` checks every input and builds (or restores) model, optimisers and
    data; `train()` runs steps to `cfg.steps` with logging, validation and checkpoints (and
    on Ctrl-C stops after the current step with a checkpoint of it, raising `Interrupted`);
    `cleanup()` closes files and the process group. `run()` does all three."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.dist = Dist.from_env()
        self.step = 0
        self.tokens = 0
        self.metrics: Any = None
        self.progress: Any = None
        self.last_valid: float | None = None
        self.last_checkpoint: Path | None = None
        self.stop = StopRequest()
        self.stop_agreed = False  # under DDP: some rank had a Ctrl-C by the last step's all-reduce

    @property
    def talk(self) -> bool:
        return self.dist.is_main and not self.cfg.quiet

    def _say(self, msg: str) -> None:
        if self.talk:
            print(msg, file=sys.stderr, flush=True)

    # -- setup ----------------------------------------------------------------------------

    def _check_inputs(self) -> None:
        cfg = self.cfg
        self.model_cfg = cfg.check_inputs()  # the torch-free checks the CLI ran before importing us
        self.data_dir = Path(cfg.data)
        self.batches = ByteBatches(self.data_dir / "train.bin", cfg.batch_size, cfg.seq_len, cfg.seed,
                                   self.dist.rank, self.dist.world_size)
        self.valid_path = self.data_dir / "valid.bin"
        if cfg.eval_every:
            open_bin(self.valid_path)  # fail now, not at the first validation
        self.out = Path(cfg.out)
        existing = list_checkpoints(self.out)
        self.resume_from = existing[-1] if cfg.resume else None
        self.init_ckpt = checkpoint.checkpoint_dir(cfg.init_from) if cfg.init_from else None

    def setup(self) -> None:
        cfg = self.cfg
        self._check_inputs()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.set_float32_matmul_precision("high")  # TF32 matmuls: fp32 accuracy is not the bottleneck
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.raw_model = build_model(self.model_cfg).to(self.device)
        if self.init_ckpt is not None and self.resume_from is None:
            self._init_weights(self.init_ckpt)
        self.groups = grad_groups(self.raw_model)
        self.optimizers = build_optimizers(self.raw_model, cfg.optimizer, cfg.lr, cfg.weight_decay,
                                           fused=self.device.type == "cuda")
        self.tokens_per_step = cfg.batch_size * cfg.seq_len * self.dist.world_size
        metrics_bytes = 0
        if self.resume_from is not None:
            metrics_bytes = self._restore(self.resume_from)
        if self.dist.world_size > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        model: nn.Module = self.raw_model
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.compile and self.device.type == "cuda":
            model = torch.compile(model)
        elif cfg.compile:
            self._say("tilelli train: --compile is ignored on CPU (compile time outweighs the gain here)")
        self.model = model
        self.amp_dtype = torch.bfloat16 if cfg.dtype == "bf16" else None
        if self.dist.is_main:
            self._open_logs(metrics_bytes)

    def _restore(self, ckpt: Path) -> int:
        """Load model, optimisers, data stream and RNG from `ckpt`; return the metrics length."""
        saved_model = ModelConfig.from_dict(checkpoint.read_config(ckpt)["model"])
        if saved_model != self.model_cfg:
            diff = _config_diff(saved_model.to_dict(), self.model_cfg.to_dict())
            raise TilelliError(f"{ckpt} was trained with another model config ({'; '.join(diff)}); "
                               "resume with the same --model/--override or choose another --out")
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        ours = self._resume_key()
        if state["resume_key"] != ours:
            diff = _config_diff(state["resume_key"], ours)
            raise TilelliError(f"{ckpt} cannot be continued by these settings ({'; '.join(diff)}); "
                               "resume with the same settings or choose another --out")
        self.raw_model.load_state_dict(checkpoint.load(ckpt).state_dict())
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.batches.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.last_valid = state["last_valid"]
        self.last_checkpoint = ckpt
        return state["metrics_bytes"]

    def _init_weights(self, ckpt: Path) -> None:
        """Copy the weights of `ckpt` into the new model. The architectures must match; the
        ternary options (and the loss weights and dropout) may differ, so an FP32 checkpoint continued with
        `quantize=True` is quantization-aware fine-tuning of the same weights, and a packed
        checkpoint continued with `quantize=True` starts from exactly its ternary model."""
        source = ModelConfig.from_dict(checkpoint.read_config(ckpt)["model"])
        same = {"ternary": self.model_cfg.ternary, **{f: getattr(self.model_cfg, f) for f in TRAINING_FIELDS}}
        diff = _config_diff(source.replace(**same).to_dict(), self.model_cfg.to_dict())
        if diff:
            raise TilelliError(f"--init-from {ckpt} has another architecture than {self.cfg.model} "
                               f"({'; '.join(diff)}); only the ternary options, loss weights and dropout may differ")
        try:  # a packed source continues from latent weights that quantize back to its trits
            self.raw_model.load_state_dict(latent_state_dict(checkpoint.load(ckpt)))
        except (RuntimeError, ValueError) as e:  # e.g. an LSQ scale on one side only
            first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
            raise TilelliError(f"--init-from {ckpt}: its weights do not fit {self.cfg.model} ({first}); "
                               "start from an unpacked checkpoint with the same ternary scale options") from None

    def _resume_key(self) -> dict[str, Any]:
        """Settings that must not change across a resume, or it would not continue the same run."""
        sha = read_meta(self.data_dir).get("train", {}).get("sha256")
        cfg = self.cfg
        return {"optimizer": cfg.optimizer, "global_batch": cfg.batch_size * self.dist.world_size,
                "seq_len": cfg.seq_len, "train_sha256": sha}

    def _open_logs(self, metrics_bytes: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out / METRICS_FILE
        if self.resume_from is not None:
            size = metrics_path.stat().st_size if metrics_path.exists() else 0
            if size < metrics_bytes:
                raise TilelliError(f"{metrics_path} has {size} bytes but checkpoint {self.resume_from.name} "
                                   f"logged {metrics_bytes}; restore the file or start a new run")
            os.truncate(metrics_path, metrics_bytes)  # forget steps logged after the checkpoint
        self.metrics = open(metrics_path, "ab" if self.resume_from is not None else "wb")  # tell() = bytes
        info = run_info(self.cfg, self.model_cfg, self.raw_model.num_params(), self.device,
                        self.dist.world_size)
        run_path = self.out / RUN_FILE
        if self.resume_from is not None and run_path.is_file():
            first = json.loads(run_path.read_text())
            first.setdefault("resumes", []).append({"from_step": self.step, **{
                k: info[k] for k in ("command", "started", "train", "git", "versions", "machine")}})
            info = first
        _write_json_atomic(run_path, info)
        if self.talk:
            from tqdm import tqdm

            verb = f"resuming at step {self.step}" if self.step else "training"
            self._say(f"{verb} {self.cfg.model} ({self.raw_model.num_params() / 1e6:.2f} M params) on "
                      f"{self.device} x{self.dist.world_size}, {self.tokens_per_step} tokens/step -> {self.out}")
            self.progress = tqdm(total=self.cfg.steps, initial=self.step, unit="step", dynamic_ncols=True)

    # -- train ----------------------------------------------------------------------------

    def train(self) -> dict[str, Any] | None:
        """Run steps until `cfg.steps`; returns the last step's metrics (None if none ran).

        Ctrl-C stops after the step it arrives in, which is checkpointed (see `_interrupted`)."""
        cfg = self.cfg
        record = None
        with self.stop:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                x, y = self.batches.next_batch()
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                lr = lr_at(self.step, cfg.lr, cfg.final_lr, cfg.warmup, cfg.steps)
                stats = train_step(self.model, self.optimizers, self.groups, x, y, lr, cfg.grad_clip,
                                   self.amp_dtype)
                self.step += 1
                self.tokens += self.tokens_per_step
                record = self._record(stats, lr, t0)
                if not math.isfinite(record["loss"]):
                    raise TilelliError(f"loss became {record['loss']} at step {self.step}; lower --lr or raise "
                                       "--warmup (checkpoints written so far are intact)")
                self._log(record)
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                    self._validate()
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step == cfg.steps:
                    self._checkpoint()
                stopping = self.stop.requested if self.dist.world_size == 1 else self.stop_agreed
                if stopping and self.step < cfg.steps:
                    raise self._interrupted()
        return record

    def _interrupted(self) -> Interrupted:
        """After a Ctrl-C: checkpoint the step just completed (unless the loop just did), so
        that `--resume` continues exactly from it, and say so in one line (main process only).
        Every rank takes the same decision (`_checkpoint` ends in a barrier under DDP)."""
        cfg = self.cfg
        if not (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
            self._checkpoint()
        if not self.dist.is_main:
            return Interrupted("")
        return Interrupted(f"interrupted at step {self.step}; checkpoint {self.last_checkpoint} written; "
                           "continue with --resume")

    def _record(self, stats: StepStats, lr: float, t0: float) -> dict[str, Any]:
        """The step's metrics line; under DDP the losses and router usage are averaged over ranks."""
        losses = torch.cat([torch.stack([stats.loss, stats.ce, stats.aux]).float(),
                            stats.router_usage.flatten()])
        if self.dist.world_size > 1:
            # a Ctrl-C flag rides on the step's all-reduce, so that every rank stops after the same step
            losses = torch.cat([losses, losses.new_tensor([float(self.stop.requested)])])
            dist.all_reduce(losses)
            losses /= self.dist.world_size
        values = losses.tolist()  # the one host sync of the step
        if self.dist.world_size > 1:
            self.stop_agreed = values.pop() > 0
        norms = torch.stack([stats.grad_norm, *stats.grad_norms.values()]).tolist()
        loss, ce, aux = values[:3]
        names, n = self.model_cfg.pathways, len(self.model_cfg.pathways)
        usage = [dict(zip(names, (round(u, 5) for u in values[3 + i * n:3 + (i + 1) * n]), strict=True))
                 for i in range(len(stats.router_usage))]
        return {"step": self.step, "tokens": self.tokens, "loss": loss, "ce": ce, "bpb": ce / math.log(2),
                "aux_loss": aux, "lr": lr, "grad_norm": norms[0],
                "grad_norms": {k: float(f"{v:.6g}") for k, v in zip(stats.grad_norms, norms[1:], strict=True)},
                "router_usage": usage,
                "tokens_per_s": round(self.tokens_per_step / (time.perf_counter() - t0), 1)}

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self._write_metrics(record)
        if self.progress is not None:
            post = {"loss": f"{record['loss']:.4f}", "bpb": f"{record['bpb']:.3f}",
                    "tok/s": f"{record['tokens_per_s']:.0f}"}
            if self.last_valid is not None:
                post["valid_bpb"] = f"{self.last_valid:.3f}"
            self.progress.set_postfix(post, refresh=False)
            self.progress.update(1)

    def _write_metrics(self, line: dict[str, Any]) -> None:
        self.metrics.write((json.dumps(line) + "\n").encode())
        self.metrics.flush()

    def _validate(self) -> None:
        """Rank 0 evaluates alone, in batches of the global batch size, so the validation
        windows (and the number) do not depend on how many processes train."""
        if not self.dist.is_main:
            return  # the others wait for rank 0 at the next gradient all-reduce
        cfg = self.cfg
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp_dtype is not None):
            result = evaluate_bpb(self.raw_model, self.valid_path, cfg.batch_size * self.dist.world_size,
                                  cfg.seq_len, cfg.eval_batches or None)
        self.last_valid = result.bpb
        self._write_metrics({"step": self.step, "tokens": self.tokens, "valid_loss": result.loss,
                             "valid_bpb": result.bpb})

    def _checkpoint(self) -> None:
        if self.dist.is_main:
            self.metrics.flush()
            os.fsync(self.metrics.fileno())
            state = {"step": self.step, "tokens": self.tokens, "resume_key": self._resume_key(),
                     "optimizers": [opt.state_dict() for opt in self.optimizers],
                     "data": self.batches.state_dict(), "rng": rng_state(),
                     "metrics_bytes": self.metrics.tell(), "last_valid": self.last_valid}
            extra = {"step": self.step, "tokens": self.tokens, "train": self.cfg.to_dict(),
                     TEMPLATE_KEY: data_template(read_meta(self.data_dir))}
            self.last_checkpoint = save_train_checkpoint(self.out, self.step, self.raw_model, state, extra,
                                                         self.cfg.keep_last)
        if self.dist.world_size > 1:
            dist.barrier()

    # -- cleanup --------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def run(self) -> dict[str, Any] | None:
        """setup, train, cleanup (cleanup also on errors); returns the last step's metrics."""
        try:
            self.setup()
            record = self.train()
        finally:
            self.cleanup()
        if record is not None:
            valid = f", valid {self.last_valid:.4f} bpb" if self.last_valid is not None else ""
            self._say(f"step {self.step}: loss {record['loss']:.4f} ({record['bpb']:.4f} bpb){valid}; "
                      f"checkpoint {self.last_checkpoint}")
        else:
            self._say(f"{self.out} is already at step {self.step} of --steps {self.cfg.steps}; nothing to do")
        return record


# --- smoke ---------------------------------------------------------------------------------------

def sample_text(n_bytes: int = 1 << 15, seed: int = 0) -> bytes:
    """Made-up little stories (plus some non-ASCII), enough for a few steps on any machine."""
    rng = random.Random(seed)
    who = ["the cat", "a small dog", "Lily", "Tom", "the old bird", "une fée", "the robot"]
    did = ["ran to", "looked at", "sang for", "found", "was happy with", "a vu", "shared"]
    what = ["the red ball", "a big tree", "her friend", "the sea", "a warm café", "the moon"]
    out = bytearray()
    while len(out) < n_bytes:
        story = " ".join(f"{rng.choice(who).capitalize()} {rng.choice(did)} {rng.choice(what)}."
                         for _ in range(rng.randint(2, 6)))
        out += story.encode() + b"\n<|endoftext|>\n"
    return bytes(out[:n_bytes])


@dataclass
class SmokeResult:
    model: str
    params: int
    losses: list[float]
    grad_norms: dict[str, float]  # last step's, per component
    bad: list[str]  # "step 3: router grad norm 0.0" for every zero or non-finite component norm

    @property
    def ok(self) -> bool:
        return not self.bad


def smoke(models: Sequence[str] | None = None, overrides: dict[str, Any] | None = None, steps: int = 5,
          batch_size: int = 2, seq_len: int = 64, report: Callable[[SmokeResult], None] | None = None,
          ) -> list[SmokeResult]:
    """A few real training steps of every named config on a built-in sample, checking that the
    gradient of every pathway, the router and the rest is non-zero and finite at every step.

    It goes through the same Trainer as a real run (data files, checkpoint included), so a
    passing smoke run means the whole path works, not just a forward pass.
    """
    results = []
    with tempfile.TemporaryDirectory(prefix="tilelli-smoke-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / "train.bin").write_bytes(sample_text(1 << 15, seed=0))
        (data / "valid.bin").write_bytes(sample_text(1 << 12, seed=1))
        for name in models or list_configs():
            run_dir = Path(tmp) / name
            cfg = TrainConfig(model=name, data=str(data), out=str(run_dir), overrides=dict(overrides or {}),
                              steps=steps, batch_size=batch_size, seq_len=seq_len, warmup=1, device="cpu",
                              eval_every=steps, eval_batches=1, ckpt_every=0, quiet=True)
            trainer = Trainer(cfg)
            trainer.run()
            records, _ = read_metrics(run_dir)
            bad = [f"step {r['step']}: {k} grad norm {v}" for r in records for k, v in r["grad_norms"].items()
                   if not (math.isfinite(v) and v > 0)]
            bad += [f"step {r['step']}: loss {r['loss']}" for r in records if not math.isfinite(r["loss"])]
            result = SmokeResult(name, trainer.raw_model.num_params(), [r["loss"] for r in records],
                                 records[-1]["grad_norms"], bad)
            results.append(result)
            if report is not None:
                report(result)
    return results
