import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny

import tilelli
from tilelli.cli import main
from tilelli.model.checkpoint import save
from tilelli.model.models import build_model
from tilelli.train.evaluate import bootstrap_ci, evaluate_bpb, window_losses


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = build_model(tiny("tilelli-lite-fp32", max_seq_len=64)).eval()
    save(model, tmp / "ckpt")
    text = tmp / "text.txt"
    text.write_bytes(bytes(np.random.default_rng(0).integers(32, 127, 3000, dtype=np.uint8)))
    return model, tmp / "ckpt", text


def test_window_losses_match_a_direct_computation(setup):
    model, _, text = setup
    data = text.read_bytes()
    sums, counts = window_losses(model, text, batch_size=4, seq_len=32)
    assert counts.sum() == len(data) - 1  # every byte after the first is a target once
    x = torch.tensor(list(data[:33]))[None]
    with torch.no_grad():
        first = F.cross_entropy(model(x[:, :32]).logits[0], x[0, 1:33], reduction="sum")
    assert sums[0] == pytest.approx(first.item(), rel=1e-5)
    ev = evaluate_bpb(model, text, 4, 32)
    assert ev.loss == pytest.approx(sums.sum() / counts.sum()) and ev.bpb == pytest.approx(ev.loss / math.log(2))


def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    sums, counts = rng.normal(100, 10, 400), np.full(400, 64)
    lo, hi = bootstrap_ci(sums, counts)
    assert lo < sums.sum() / counts.sum() < hi
    lo4, hi4 = bootstrap_ci(np.tile(sums, 4), np.tile(counts, 4))
    assert (hi4 - lo4) < 0.7 * (hi - lo)


def test_eval_cli_json(setup, capsys):
    model, ckpt, text = setup
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(text), "--seq-len", "32", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"nats_per_byte", "bpb", "bpb_ci", "bytes"}
    assert res["bpb_ci"][0] < res["bpb"] < res["bpb_ci"][1] and res["bytes"] == 2999
    assert res["nats_per_byte"] == pytest.approx(evaluate_bpb(model, text, 16, 32).loss, rel=1e-6)


@pytest.mark.parametrize("max_bytes", [1, 100, 1000, 2999, 10_000])
def test_eval_cli_honours_max_bytes_exactly(setup, capsys, max_bytes):
    """Not rounded to whole batches of windows: exactly the first N predictions, the last window cut."""
    model, ckpt, text = setup
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(text), "--seq-len", "32", "--batch-size", "4",
                 "--max-bytes", str(max_bytes), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bytes"] == min(max_bytes, 2999)
    head = text.parent / f"head-{max_bytes}.txt"
    head.write_bytes(text.read_bytes()[:max_bytes + 1])  # the same bytes as a file of their own
    assert res["nats_per_byte"] == pytest.approx(evaluate_bpb(model, head, 4, 32).loss, rel=1e-6)


def test_eval_progress_bar_only_on_a_terminal(setup, capsys, monkeypatch):
    _, ckpt, text = setup
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(text), "--seq-len", "32", "--batch-size", "4"]
    assert main(args) == 0
    assert "eval" not in capsys.readouterr().err  # stderr is not a terminal here: no bar
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)  # as if on a terminal
    from tqdm import tqdm

    seen = []
    real_init = tqdm.__init__

    def spy(self, *a, **kw):  # what the command asks of tqdm; shown at once (no 1 s delay)
        seen.append(kw)
        real_init(self, *a, **{**kw, "delay": 0})

    monkeypatch.setattr(tqdm, "__init__", spy)
    assert main(args) == 0
    assert seen[-1]["total"] == 2999 and not seen[-1]["disable"] and "eval" in capsys.readouterr().err
    assert main([*args, "--no-progress"]) == 0 and seen[-1]["disable"]


def test_eval_cli_errors(setup, capsys):
    _, ckpt, text = setup
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "/no/such/file"]) == 2
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(text), "--seq-len", "65"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "is not a file" in err[0] and "exceeds the model's context 64" in err[1]


def test_load_accepts_a_run_directory(tmp_path):
    torch.manual_seed(0)
    for step in (1, 12):
        model = build_model(tiny("vanilla-fp32"))
        save(model, tmp_path / "run" / "checkpoints" / f"step-{step:07d}")
    loaded = tilelli.load(tmp_path / "run")  # the newest checkpoint
    assert torch.equal(loaded.pos_emb, model.pos_emb)
