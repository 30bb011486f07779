"""The trainer: exact resume after SIGKILL, data parallel = one big batch, metrics and
run.json, the smoke run, and one-line errors that leave checkpoints intact."""

import errno
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tilelli
from tilelli.cli import main
from tilelli.model.checkpoint_files import list_checkpoints, read_config
from tilelli.train.runs import read_metrics
from tilelli.train.trainer import TrainConfig, Trainer

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_head": 8, "max_seq_len": 128}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--override", f"{k}={v}")]


def train_args(data: Path, out: Path, *extra: str, model: str = "tilelli-lite-fp32") -> list[str]:
    return ["train", "--model", model, *TINY_ARGS, "--data", str(data), "--out", str(out),
            "--batch-size", "4", "--seq-len", "32", "--warmup", "2", "--eval-batches", "2", *extra]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tilelli", *args]


def logged(run_dir: Path) -> list[dict]:
    """Every metrics line with the wall-clock field removed (the only one allowed to differ)."""
    path = run_dir / "metrics.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in lines]


def last_step(metrics: Path) -> int:
    text = metrics.read_text() if metrics.exists() else ""
    complete = text[: text.rfind("\n") + 1].splitlines()
    return json.loads(complete[-1])["step"] if complete else 0


def error_line(capsys) -> str:
    """The CLI's error: exactly one line on stderr names the problem, no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_sigkill_then_resume_gives_bit_identical_losses(data_dir, tmp_path):
    steps, every = 80, 10
    common = ["--steps", str(steps), "--ckpt-every", str(every), "--eval-every", "20", "--threads", "1"]
    with open(tmp_path / "ref.log", "w") as ref_log, open(tmp_path / "victim.log", "w") as log:
        ref = subprocess.Popen(cli(*train_args(data_dir, tmp_path / "ref", *common)), stderr=ref_log,
                               stdout=ref_log)
        victim = subprocess.Popen(cli(*train_args(data_dir, tmp_path / "victim", *common)), stderr=log,
                                  stdout=log)
        kill_at = random.randint(every + 5, steps - 25)  # after at least one checkpoint
        deadline = time.monotonic() + 90
        while last_step(tmp_path / "victim" / "metrics.jsonl") < kill_at:
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.002)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = last_step(tmp_path / "victim" / "metrics.jsonl")
        assert killed_at < steps and list_checkpoints(tmp_path / "victim")
        resumed = subprocess.run(cli(*train_args(data_dir, tmp_path / "victim", *common, "--resume")),
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert ref.wait(timeout=120) == 0, (tmp_path / "ref.log").read_text()
    expected, got = logged(tmp_path / "ref"), logged(tmp_path / "victim")
    assert [r["step"] for r in got] == [r["step"] for r in expected]  # no step logged twice
    assert got == expected, f"killed at step {killed_at} (wanted {kill_at})"
    info = json.loads((tmp_path / "victim" / "run.json").read_text())
    assert info["resumes"][0]["from_step"] % every == 0 and "--resume" in info["resumes"][0]["command"]


def test_two_ranks_match_one_process_with_the_same_global_batch(data_dir, tmp_path):
    """2 ranks x batch 2 vs 1 process x batch 4: same windows, gradients averaged by DDP.
    Tolerance 1e-5 relative on every logged loss and validation loss: the only difference is
    the order of float additions (all-reduce vs one batch) and the per-rank load-balance loss
    (computed on each rank's half of the batch, weight 0.01: ~1e-9 of the loss)."""
    common = ["--steps", "6", "--eval-every", "3", "--threads", "1", "--seq-len", "32"]
    two = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "tilelli", *train_args(data_dir, tmp_path / "two", *common, "--batch-size", "2")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        one = subprocess.run(cli(*train_args(data_dir, tmp_path / "one", *common, "--batch-size", "4")),
                             capture_output=True, text=True, timeout=120)
        out, _ = two.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # no rank left behind: the launcher and both workers go
        os.killpg(two.pid, signal.SIGKILL)
        pytest.fail(f"the two-rank run did not finish in time:\n{two.communicate()[0][-3000:]}")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, out
    a, b = logged(tmp_path / "one"), logged(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) == 8  # 6 steps + 2 validations
    for ra, rb in zip(a, b, strict=True):
        assert ra["tokens"] == rb["tokens"]
        for key in ("loss", "ce", "grad_norm", "valid_loss"):
            if key in ra:
                assert math.isclose(ra[key], rb[key], rel_tol=1e-5), (key, ra, rb)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["machine"]["world_size"] == 2


def test_metrics_run_json_and_checkpoints(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data_dir, out, "--steps", "30", "--eval-every", "10", "--ckpt-every", "10",
                           "--keep-last", "2", "--lr", "3e-3")) == 0
    train, valid = read_metrics(out)
    assert [r["step"] for r in train] == list(range(1, 31)) and [r["step"] for r in valid] == [10, 20, 30]
    first, last = train[0], train[-1]
    assert set(first) >= {"step", "tokens", "loss", "ce", "bpb", "lr", "grad_norm", "tokens_per_s", "aux_loss",
                          "router_usage", "grad_norms"}
    assert first["tokens"] == 4 * 32 and math.isclose(first["bpb"], first["ce"] / math.log(2))
    assert [list(layer) for layer in first["router_usage"]] == [["local", "sparse", "dense"]] * 2
    assert list(first["grad_norms"]) == ["local", "sparse", "dense", "router", "other"]
    assert last["loss"] < first["loss"] - 0.3  # it learns (5.5 -> ~5.0 nats on the sample)
    assert valid[-1]["valid_bpb"] < valid[0]["valid_bpb"]
    assert [p.name for p in list_checkpoints(out)] == ["step-0000020", "step-0000030"]
    model = tilelli.load(list_checkpoints(out)[-1])  # a training checkpoint is a model checkpoint
    assert model.config == TrainConfig(model="tilelli-lite-fp32", overrides=TINY).model_config()
    assert read_config(list_checkpoints(out)[-1])["template"] == "plain"  # what text it continues: its own record
    info = json.loads((out / "run.json").read_text())
    meta = json.loads((data_dir / "meta.json").read_text())
    assert info["data"]["train_sha256"] == meta["train"]["sha256"]
    assert info["data"]["valid_sha256"] == meta["valid"]["sha256"]
    assert info["train"]["lr"] == 3e-3 and info["model"]["d_model"] == 32 and info["params"] > 0
    assert set(info["git"]) == {"commit", "dirty"} and set(info["versions"]) >= {"torch", "numpy", "tilelli"}
    assert info["machine"]["cpu_count"] and info["command"] == sys.argv
    assert "step 30: loss" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["tilelli-ternary", "vanilla-fp32"])
def test_muon_and_bf16_run_every_arch(data_dir, tmp_path, model):
    cfg = TrainConfig(model=model, overrides=TINY, data=str(data_dir), out=str(tmp_path / "run"), steps=3,
                      batch_size=2, seq_len=32, optimizer="muon", dtype="bf16", eval_every=3, eval_batches=1,
                      quiet=True)
    record = Trainer(cfg).run()
    assert record is not None and math.isfinite(record["loss"]) and all(v > 0 for v in record["grad_norms"].values())


def test_smoke_reports_every_pathway_and_router(capsys):
    assert main(["train", "--smoke", *TINY_ARGS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(tilelli.list_configs()) and all(line.endswith("ok") for line in lines)
    parent = next(line for line in lines if line.startswith("tilelli-fp32 "))
    for name in ("local", "wide", "state", "sparse", "dense", "router"):
        assert f"{name} " in parent


def test_smoke_fails_when_a_pathway_gets_no_gradient(monkeypatch, capsys):
    from tilelli.model.pathways import Dense

    monkeypatch.setattr(Dense, "forward", lambda self, x, cache=None, pos=0: torch.zeros_like(x))
    assert main(["train", "--smoke", *TINY_ARGS]) == 1
    out = capsys.readouterr().out
    assert "tilelli-lite-fp32" in out and "FAIL: step 1: dense grad norm 0.0" in out


@pytest.mark.parametrize("case, expect", [
    ("missing-dir", "does not exist"),
    ("empty-dir", "no train.bin"),
    ("short-bin", "one window needs"),
    ("long-seq", "exceeds tilelli-lite-fp32's max_seq_len 128"),
    ("unknown-model", "unknown model 'tilelli-lit'"),
    ("bad-override", "unknown model field 'd_modl'"),
    ("bad-steps", "--steps must be >= 1"),
    ("resume-nothing", "holds no checkpoint"),
])
def test_bad_input_is_one_line_error(case, expect, data_dir, tmp_path, capsys):
    data, extra, model = data_dir, [], "tilelli-lite-fp32"
    if case == "missing-dir":
        data = tmp_path / "nope"
    elif case == "empty-dir":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "short-bin":
        data = tmp_path / "short"
        data.mkdir()
        (data / "train.bin").write_bytes(b"too short")
    elif case == "long-seq":
        extra = ["--seq-len", "256"]
    elif case == "unknown-model":
        model = "tilelli-lit"
    elif case == "bad-override":
        extra = ["--override", "d_modl=3"]
    elif case == "bad-steps":
        extra = ["--steps", "0"]
    elif case == "resume-nothing":
        extra = ["--resume"]
    assert main(train_args(data, tmp_path / "run", "--steps", "2", *extra, model=model)) == 2
    assert expect in error_line(capsys)
    assert not list_checkpoints(tmp_path / "run")


def test_resume_with_another_config_or_fresh_start_over_a_run_is_refused(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data_dir, out, "--steps", "2", "--eval-every", "0")) == 0
    before = (list_checkpoints(out)[-1] / "model.safetensors").read_bytes()
    assert main(train_args(data_dir, out, "--steps", "4", "--resume", "--override", "d_model=64")) == 2
    assert "another model config (d_model: 32 vs 64)" in error_line(capsys)
    assert main(train_args(data_dir, out, "--steps", "4", "--resume", "--batch-size", "8")) == 2
    assert "global_batch: 4 vs 8" in error_line(capsys)
    assert main(train_args(data_dir, out, "--steps", "4")) == 2
    assert "already holds a run" in error_line(capsys)
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002"]
    assert (list_checkpoints(out)[-1] / "model.safetensors").read_bytes() == before


def test_full_disk_during_checkpoint_keeps_the_previous_one(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def save_until_disk_full(obj, f, *args, **kwargs):
        if saves:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        saves.append(f)
        return real_save(obj, f, *args, **kwargs)

    args = train_args(data_dir, out, "--steps", "4", "--ckpt-every", "2", "--eval-every", "0")
    monkeypatch.setattr(torch, "save", save_until_disk_full)
    assert main(args) == 2
    line = error_line(capsys)
    assert "No space left on device" in line and "step-0000002 is intact" in line and "--resume" in line
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]  # no partial dir left
    tilelli.load(out / "checkpoints" / "step-0000002")
    monkeypatch.setattr(torch, "save", real_save)
    assert main([*args, "--resume"]) == 0  # and the run continues from it
    assert [r["step"] for r in read_metrics(out)[0]] == [1, 2, 3, 4]


def test_init_from_fp32_checkpoint_is_quantization_aware_fine_tuning(data_dir, tmp_path, capsys):
    """The "same checkpoint twice": FP32 weights continued with quantize=True start exactly
    from the FP32 weights, with a fresh optimizer and schedule (and may add dropout); another
    architecture is refused."""
    fp32 = tmp_path / "fp32"
    assert main(train_args(data_dir, fp32, "--steps", "4", "--eval-every", "0")) == 0
    source = tilelli.load(fp32)
    qat = tmp_path / "qat"
    cfg = TrainConfig(model="tilelli-lite-ternary", overrides={**TINY, "dropout": 0.1}, data=str(data_dir),
                      out=str(qat), steps=1,
                      batch_size=4, seq_len=32, lr=1e-9, warmup=0, eval_every=0, init_from=str(fp32), quiet=True)
    trainer = Trainer(cfg)
    trainer.setup()
    try:
        assert trainer.raw_model.config.ternary.quantize and trainer.raw_model.config.dropout == 0.1
        assert trainer.step == 0
        for (name, a), b in zip(trainer.raw_model.state_dict().items(), source.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        trainer.train()
    finally:
        trainer.cleanup()
    assert json.loads((qat / "run.json").read_text())["train"]["init_from"] == str(fp32)
    assert main(train_args(data_dir, tmp_path / "wide", "--steps", "1", "--init-from", str(fp32),
                           "--override", "d_model=64")) == 2
    assert "another architecture" in error_line(capsys) and not list_checkpoints(tmp_path / "wide")
