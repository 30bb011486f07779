"""`tilelli export` and the default checkpoint: what ships is packed or bf16-checked, carries
its run's records, and `generate`/`eval` find it without --checkpoint."""

import json
from pathlib import Path

import pytest

from tilelli.cli import main
from tilelli.model import checkpoint, checkpoint_files
from tilelli.model.checkpoint_files import list_checkpoints
from tilelli.train.runs import read_metrics

TINY_ARGS = [a for k, v in {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_head": 8, "max_seq_len": 64}.items()
             for a in ("--override", f"{k}={v}")]


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for model in ("tilelli-lite-ternary", "tilelli-lite-fp32"):
        out[model] = root / model
        assert main(["train", "--model", model, *TINY_ARGS, "--data", str(data_dir), "--out", str(out[model]),
                     "--steps", "6", "--batch-size", "4", "--seq-len", "32", "--warmup", "1", "--lr", "3e-3",
                     "--eval-every", "2", "--eval-batches", "2", "--ckpt-every", "2", "--keep-last", "5"]) == 0
    return out


def test_packed_export_carries_the_run_and_is_the_default_model(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ship"
    assert main(["export", "--checkpoint", str(runs["tilelli-lite-ternary"]), "--out", str(out), "--packed"]) == 0
    cfg = checkpoint.read_config(out)
    assert cfg["packed"] and cfg["bits_per_weight"] <= 1.7 and cfg["step"] == 6
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors", "run.json"]
    assert json.loads((out / "run.json").read_text())["train"]["steps"] == 6
    monkeypatch.setattr(checkpoint_files, "SHIPPED_DIR", tmp_path)
    monkeypatch.setattr(checkpoint_files, "DEFAULT_MODEL", "ship")
    monkeypatch.delenv("TILELLI_CHECKPOINT", raising=False)
    capsys.readouterr()
    assert main(["generate", "--prompt", "Once", "--max-new-tokens", "5", "--seed", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt"] == "Once" and len(result["confidence"]) == 5
    assert main(["export", "--checkpoint", str(runs["tilelli-lite-ternary"]), "--out", str(out), "--packed"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_missing_default_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint_files, "SHIPPED_DIR", tmp_path)
    monkeypatch.delenv("TILELLI_CHECKPOINT", raising=False)
    assert main(["generate", "--prompt", "Once"]) == 2
    err = capsys.readouterr().err
    assert "no --checkpoint given" in err and "Traceback" not in err


def test_bf16_export_measures_the_bpb_change_and_refuses_a_large_one(runs, data_dir, tmp_path, capsys):
    source = runs["tilelli-lite-fp32"]
    out = tmp_path / "bf"
    assert main(["export", "--checkpoint", str(source), "--out", str(out), "--bf16",
                 "--check-data", str(data_dir)]) == 0
    check = checkpoint.read_config(out)["bf16_check"]
    assert abs(check["change"]) < 0.002 and check["bytes"] > 0 and check["fp32_bpb"] != check["bf16_bpb"]
    assert checkpoint.read_config(out)["weights_dtype"] == "bfloat16"
    strict = tmp_path / "strict"
    assert main(["export", "--checkpoint", str(source), "--out", str(strict), "--bf16", "--check-data",
                 str(data_dir), "--max-change", "1e-12"]) == 2
    assert "export without --bf16" in capsys.readouterr().err and not strict.exists()
    assert main(["export", "--checkpoint", str(source), "--out", str(strict), "--bf16"]) == 2
    assert main(["export", "--checkpoint", str(source), "--out", str(strict), "--packed"]) == 2  # FP32 model
    assert "ternary" in capsys.readouterr().err


def test_best_picks_the_lowest_validated_step(runs, tmp_path):
    run = runs["tilelli-lite-fp32"]
    _, valid = read_metrics(run)
    best = min(valid, key=lambda r: r["valid_bpb"])["step"]
    assert main(["export", "--checkpoint", str(run), "--best", "--out", str(tmp_path / "b")]) == 0
    cfg = checkpoint.read_config(tmp_path / "b")
    assert cfg["step"] == best and cfg["exported_from"] == str(list_checkpoints(run)[best // 2 - 1])


def test_export_of_a_fine_tuned_run_records_what_its_start_had_seen(runs, data_dir, tmp_path):
    qat = tmp_path / "qat"
    assert main(["train", "--model", "tilelli-lite-ternary", *TINY_ARGS, "--data", str(data_dir), "--out", str(qat),
                 "--steps", "2", "--batch-size", "4", "--seq-len", "32", "--warmup", "0", "--eval-every", "0",
                 "--init-from", str(runs["tilelli-lite-fp32"])]) == 0
    assert main(["export", "--checkpoint", str(qat), "--out", str(tmp_path / "ship"), "--packed"]) == 0
    cfg = checkpoint.read_config(tmp_path / "ship")
    assert cfg["tokens"] == 2 * 4 * 32 and cfg["init"]["step"] == 6 and cfg["init"]["tokens"] == 6 * 4 * 32
