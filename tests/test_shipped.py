"""The checkpoints that ship under checkpoints/: each one loads, records how it was made, is the
step its run validated best, and has learned TinyStories; the default command uses the packed
Lite ternary one. These read the committed files, so they fail when a shipped file is damaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from tilelli.model import checkpoint
from tilelli.model.config import from_name
from tilelli.model.models import build_model
from tilelli.train.evaluate import evaluate_bpb
from tilelli.train.runs import read_metrics

# shipped name -> (named config, how the weights are stored)
SHIPPED = {"tilelli-lite-ternary": ("tilelli-lite-ternary", "packed trits"),
           "tilelli-lite-fp32": ("tilelli-lite-fp32", "bfloat16"),
           "vanilla-fp32": ("vanilla-fp32", "bfloat16")}
VALID = SHARED_DATA / "tinystories" / "TinyStories-valid.head800KB.no-story-delims.txt"


@pytest.fixture(params=sorted(SHIPPED))
def name(request) -> str:
    return request.param


def test_the_models_ship_and_the_default_is_the_fp32_checkpoint_continued_as_ternary():
    assert set(SHIPPED) <= {p.name for p in checkpoint.SHIPPED_DIR.iterdir() if (p / "config.json").is_file()}
    assert checkpoint.DEFAULT_MODEL == "tilelli-lite-ternary"
    twin = checkpoint.read_config(checkpoint.SHIPPED_DIR / "tilelli-lite-ternary")
    fp32 = checkpoint.read_config(checkpoint.SHIPPED_DIR / "tilelli-lite-fp32")
    # "the same checkpoint twice": the twin's QAT started from the shipped FP32 checkpoint itself
    assert Path(twin["init"]["checkpoint"]).name == Path(twin["train"]["init_from"]).name == "tilelli-lite-fp32"
    assert (twin["init"]["step"], twin["init"]["tokens"]) == (fp32["step"], fp32["tokens"])


def test_shipped_checkpoint_records_how_it_was_made(name):
    ckpt = checkpoint.SHIPPED_DIR / name
    cfg = checkpoint.read_config(ckpt)
    run = json.loads((ckpt / "run.json").read_text())
    assert cfg["train"]["model"] == SHIPPED[name][0] == run["train"]["model"]
    assert run["command"][1] == "train" and "--model" in run["command"]
    assert len(run["git"]["commit"]) == 40 and run["machine"]["device"]
    assert all(len(run["data"][k]) == 64 for k in ("train_sha256", "valid_sha256"))
    train, valid = read_metrics(ckpt)
    assert train and valid
    assert cfg["step"] == min(valid, key=lambda r: r["valid_bpb"])["step"]  # exported with --best


def test_shipped_weights_are_stored_as_claimed(name):
    ckpt = checkpoint.SHIPPED_DIR / name
    cfg = checkpoint.read_config(ckpt)
    assert cfg["file_bytes"] == (ckpt / "model.safetensors").stat().st_size
    if SHIPPED[name][1] == "packed trits":
        assert cfg["packed"] and cfg["bits_per_weight"] <= 1.7
        assert cfg["file_bytes"] < 6 * 1024 * 1024
    else:
        assert cfg["weights_dtype"] == "bfloat16" and not cfg["packed"]
        check = cfg["bf16_check"]
        assert abs(check["bf16_bpb"] - check["fp32_bpb"]) < 0.002 and check["bytes"] >= 200_000  # 200 KB of valid


def test_shipped_model_loads_with_its_named_architecture(name):
    model = checkpoint.load(checkpoint.SHIPPED_DIR / name)
    run = json.loads((checkpoint.SHIPPED_DIR / name / "run.json").read_text())
    assert model.config.max_seq_len == run["train"]["seq_len"]  # it claims the context it was trained on
    assert model.config == from_name(SHIPPED[name][0], max_seq_len=run["train"]["seq_len"])
    named = build_model(model.config).num_params()
    assert checkpoint.read_config(checkpoint.SHIPPED_DIR / name)["params"] == named


@pytest.mark.skipif(not VALID.is_file(), reason="needs ../shared/data/tinystories")
def test_shipped_model_has_learned_tinystories(name, tmp_path):
    """bpb on the first 16 KB of the valid slice: far below the 8 bits of a uniform byte."""
    (tmp_path / "v.txt").write_bytes(VALID.read_bytes()[: 16 * 1024])
    torch.manual_seed(0)
    result = evaluate_bpb(checkpoint.load(checkpoint.SHIPPED_DIR / name), tmp_path / "v.txt", 4, 256)
    assert result.bytes > 16_000 and result.bpb < 2.3


def test_default_command_generates_with_the_shipped_ternary_model():
    env = {k: v for k, v in os.environ.items() if k != "TILELLI_CHECKPOINT"}
    proc = subprocess.run([sys.executable, "-m", "tilelli", "generate", "--prompt", "Once upon a time",
                           "--max-new-tokens", "40", "--seed", "0", "--json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=Path.home())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["prompt"] == "Once upon a time" and len(result["confidence"]) == 40
    assert sum(c > 0.5 for c in result["confidence"]) > 10  # a trained model is mostly sure of the next byte


# --- the chat models ------------------------------------------------------------------------------

CHAT = {"tilelli-chat-lite-ternary": ("tilelli-lite-ternary", "packed trits"),
        "tilelli-chat-lite-fp32": ("tilelli-lite-fp32", "bfloat16")}


@pytest.mark.parametrize("chat_name", sorted(CHAT))
def test_shipped_chat_model_records_its_fine_tuning(chat_name):
    ckpt = checkpoint.SHIPPED_DIR / chat_name
    cfg = checkpoint.read_config(ckpt)
    run = json.loads((ckpt / "run.json").read_text())
    assert cfg["train"]["model"] == CHAT[chat_name][0] and cfg["train"]["init_from"]
    assert cfg["packed"] == (CHAT[chat_name][1] == "packed trits")
    assert run["command"][1] == "train" and len(run["data"]["train_sha256"]) == 64
    assert checkpoint.load(ckpt).config.max_seq_len == run["train"]["seq_len"] == 1024


def chat(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TILELLI_CHAT_CHECKPOINT"}
    proc = subprocess.run([sys.executable, "-m", "tilelli", "chat", *args, "--json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=Path.home())
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_default_chat_tells_a_story_and_refuses_a_world_fact():
    """The issue's promise, with the default (packed ternary) chat model: a story with the chat's
    default sampling (seeded), a refusal greedy."""
    story = chat("--prompt", "Tell me a story about a cat", "--max-new-tokens", "200", "--seed", "0")
    assert not story["abstained"] and len(story["reply"]) > 100 and story["abstain_probability"] < 0.5
    fact = chat("--prompt", "What is the capital of Peru?", "--temperature", "0")
    assert fact["abstained"] and fact["stop_reason"] == "stop"
    assert fact["abstain_probability"] > 10 * story["abstain_probability"]  # the model itself leans to refusing
