"""How every study launches its training runs: each run is a plain `tilelli train` command.

Why a launcher at all: a study needs many runs with matched bytes, tokens and settings, resumed
across sessions and spread over CPU lanes. A study's `runs.py` is the single record of which
commands they were; each run's own run.json records its exact command line, git hash and data
hashes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from studies.common import ROOT
from tilelli.model.checkpoint_files import list_checkpoints
from tilelli.train.runs import METRICS_FILE, read_metrics

LITE, VANILLA = "tilelli-lite-fp32", "vanilla-fp32"


@dataclass(frozen=True)
class Run:
    name: str
    model: str
    optimizer: str
    lr: float
    seed: int = 0
    protocol: tuple[tuple[str, int], ...] = ()  # TrainConfig FIELD, VALUE pairs (steps is required)
    init_from: str = ""
    overrides: tuple[str, ...] = ()  # FIELD=VALUE changes of the model config

    def args(self, data: str, out: Path, threads: int) -> list[str]:
        args = ["--model", self.model, "--data", data, "--out", str(out), "--optimizer", self.optimizer,
                "--lr", f"{self.lr:g}", "--seed", str(self.seed), "--threads", str(threads)]
        for key, value in self.protocol:
            args += [f"--{key.replace('_', '-')}", str(value)]
        for item in self.overrides:
            args += ["--override", item]
        return args + (["--init-from", self.init_from] if self.init_from else [])

    @property
    def steps(self) -> int:
        return dict(self.protocol)["steps"]


def final_valid_bpb(run_dir: Path) -> float | None:
    """Valid bpb at the run's last step, or None while the run is unfinished."""
    if not (run_dir / METRICS_FILE).is_file():
        return None
    train, valid = read_metrics(run_dir)
    return valid[-1]["valid_bpb"] if valid and train and valid[-1]["step"] == train[-1]["step"] else None


def is_done(run: Run, run_dir: Path) -> bool:
    ckpts = list_checkpoints(run_dir)
    return bool(ckpts) and ckpts[-1].name == f"step-{run.steps:07d}" and final_valid_bpb(run_dir) is not None


def launch(run: Run, runs_dir: Path, data: str, threads: int, dry_run: bool) -> str:
    """Train `run` to completion (resuming it if it has checkpoints); one line on how it went."""
    run_dir = runs_dir / run.name
    if is_done(run, run_dir):
        return f"{run.name}: done, valid bpb {final_valid_bpb(run_dir):.4f}"
    exe = shutil.which("tilelli", path=str(Path(sys.executable).parent)) or "tilelli"
    cmd = [exe, "train", *run.args(data, run_dir, threads)] + (["--resume"] if list_checkpoints(run_dir) else [])
    if dry_run:
        return " ".join(cmd)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(runs_dir / f"{run.name}.log", "a", encoding="utf-8") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    took = (time.time() - start) / 60
    return f"{run.name}: exit {rc} after {took:.1f} min, valid bpb {final_valid_bpb(run_dir)}"


def launcher_parser(doc: str, runs_dir: str, data: str = "data/tinystories",
                    data_help: str = "`tilelli prepare` output") -> argparse.ArgumentParser:
    """The options every run launcher shares."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs-dir", default=runs_dir, type=Path, help="where run directories go")
    parser.add_argument("--data", default=data, help=data_help)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser
