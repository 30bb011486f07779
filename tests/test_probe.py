"""The uncertainty probe: its prompt sets, AUROC and intervals, the detector, the signals of a tiny model, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, tiny

from tilelli.cli import main
from tilelli.infer import load_decoder
from tilelli.infer.generate import SamplingConfig, generate_batch
from tilelli.model.checkpoint import save
from tilelli.model.checkpoint_files import (
    DEFAULT_CHAT_MODEL,
    DEFAULT_MODEL,
    SHIPPED_DIR,
    TEMPLATE_KEY,
    data_template,
    is_chat_checkpoint,
)
from tilelli.model.models import build_model
from tilelli.probe import checkpoint_label
from tilelli.probe.detector import fit_detector, fit_logistic, log_loss
from tilelli.probe.metrics import auroc, auroc_ci, auroc_difference_ci, rates_at, roc_curve
from tilelli.probe.report import OOD, evaluate, markdown, transfer
from tilelli.probe.sets import IN_DOMAIN, REGIMES, build_sets, held_out_facts, make_sets, open_sets, read_set
from tilelli.probe.signals import GEN_BYTES, encode_prompts, measure

needs_shared = pytest.mark.skipif(not (SHARED_DATA / "tinystories").is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def facts() -> list[str]:
    return held_out_facts(SHARED_DATA)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, facts) -> Path:
    out = tmp_path_factory.mktemp("probe-sets")
    build_sets(SHARED_DATA, out, facts=facts)
    return out


# --- the sets -------------------------------------------------------------------------------------

@needs_shared
def test_sets_are_deterministic_sized_and_disjoint(sets, facts):
    meta = open_sets(sets)
    assert meta["counts"]["probe"] == dict.fromkeys(REGIMES, 30)
    assert meta["counts"]["train"] == {r: 120 if r == IN_DOMAIN else 40 for r in REGIMES}
    again = make_sets(SHARED_DATA, facts=facts)
    assert again == {"probe": read_set(sets / "probe.jsonl"), "train": read_set(sets / "train.jsonl")}
    assert make_sets(SHARED_DATA, seed=1, facts=facts) != again
    probe, train = ({r["text"] for r in again[s]} for s in ("probe", "train"))
    assert len(probe) == 210 and len(train) == 360 and not probe & train
    story_heads = [{r["text"][:150] for r in again[s] if r["regime"] == IN_DOMAIN and len(r["text"]) > 200}
                   for s in ("probe", "train")]
    assert not story_heads[0] & story_heads[1]  # no story opens prompts in both (60 bytes can be the same)
    questions = [r["text"] for s in again.values() for r in s if r["regime"] == "world_knowledge"]
    assert set(questions) <= set(facts)  # only questions the chat model never trained on
    assert all(len(r["text"].encode()) <= 900 for s in again.values() for r in s)
    assert len(read_set(sets / "probe.jsonl", limit=5)) == 35


@needs_shared
def test_edited_sets_are_refused(sets, tmp_path):
    for name in ("probe.jsonl", "train.jsonl", "meta.json"):
        (tmp_path / name).write_bytes((sets / name).read_bytes())
    (tmp_path / "probe.jsonl").write_text((sets / "probe.jsonl").read_text().replace("Once", "Twice", 1))
    with pytest.raises(Exception, match="does not hash"):
        open_sets(tmp_path)


# --- AUROC, intervals, ROC ----------------------------------------------------------------------

def test_auroc_hand_cases():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5
    assert auroc([1, 2, 3], [2, 0]) == pytest.approx(4.5 / 6)  # one tie counted half
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40), rng.integers(0, 5, 30)  # many ties
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(pos, neg) == pytest.approx(brute)
    with pytest.raises(ValueError):
        auroc([1.0, np.nan], [0.0])


def test_bootstrap_interval_contains_the_estimate():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1, 1, 30), rng.normal(0, 1, 30)
    lo, hi = auroc_ci(pos, neg)
    assert lo < auroc(pos, neg) < hi and hi - lo < 0.5
    assert auroc_ci([3, 4], [0, 1]) == (1.0, 1.0)
    assert auroc_difference_ci(pos, neg, pos, neg) == (0.0, 0.0)  # paired: the same scores differ by nothing
    lo, hi = auroc_difference_ci(pos, neg, -pos, -neg)
    assert lo > 0


def test_roc_curve_and_rates():
    fpr, tpr = roc_curve([2, 3], [0, 1])
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(1.0)
    assert rates_at(1.5, [2, 3], [0, 1, 2]) == {"tpr": 1.0, "fpr": pytest.approx(1 / 3)}


# --- the detector --------------------------------------------------------------------------------

def test_logistic_probe_separates_a_separable_problem():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40), np.ones(120)]  # unbalanced, like the training split
    signals = np.c_[rng.normal(0, 1, 160) + 4 * y]  # (N, 1)
    hidden = rng.normal(0, 1, (160, 200))  # more dimensions than prompts, one of them informative
    hidden[:, 7] += 3 * y
    det = fit_detector(signals, hidden, y, ["s"])
    assert det.basis.shape == (200, 64) and det.cv_auroc > 0.95
    test_y = np.r_[np.zeros(50), np.ones(50)]
    ts, th = np.c_[rng.normal(0, 1, 100) + 4 * test_y], rng.normal(0, 1, (100, 200))
    th[:, 7] += 3 * test_y
    s = det.score(ts, th)
    assert auroc(s[test_y == 1], s[test_y == 0]) > 0.97
    t = det.threshold_at_fpr(0.05)
    assert (det.oof_scores[y == 0] > t).mean() <= 0.05 + 1e-9
    x = np.c_[signals]
    theta = fit_logistic(x, y, 0.01)
    assert log_loss(x @ theta[:-1] + theta[-1], y) < log_loss(np.zeros(160), y) / 5
    only = fit_detector(signals, np.zeros((160, 0)), y, ["s"])  # signals alone: no hidden block
    assert only.score(ts, np.zeros((100, 0))).shape == (100,)


# --- signals of a tiny model ---------------------------------------------------------------------

def _tiny(tmp_path_factory, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    path = tmp_path_factory.mktemp("tiny") / name
    save(build_model(tiny(name, max_seq_len=1024)), path)
    return path


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "tilelli-lite-fp32", 0)


@pytest.fixture(scope="module")
def lite_twin(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "tilelli-lite-fp32", 1)


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "vanilla-fp32", 0)


def toy_rows(n: int, split: str) -> list[dict]:
    rng = np.random.default_rng(0 if split == "probe" else 1)
    rows = []
    for regime in REGIMES:
        for i in range(n):
            text = {"in_domain": "Once upon a time there was a cat.", "gibberish": "qz xv kpw", "language": "Wie spät?",
                    "code": "def f(x):\n    return x", "world_knowledge": "Who wrote Hamlet?", "arithmetic": "12 + 7 =",
                    "recall": "The word is blue. " + "The dog ran. " * 20 + "What was the word?"}[regime]
            rows.append({"id": f"{split}-{regime}-{i}", "regime": regime, "text": text + " " * int(rng.integers(0, 4))})
    return rows


def test_signals_of_a_tiny_model_have_the_right_shapes_and_ranges(lite):
    rows = toy_rows(2, "probe")
    m = measure(lite, rows, chat=False)
    n = len(rows)
    assert m.hidden.shape == m.hidden_last.shape == (n, 32) and m.prompt_bytes.shape == (n,)
    assert set(m.signals) == {"max_softmax", "entropy", "prompt_bpb", "prompt_bpb_peak", "router_entropy",
                              "router_entropy_l0", "router_entropy_l1"}
    assert all(np.isfinite(v).all() and v.shape == (n,) for v in m.signals.values())
    assert np.all((m.signals["max_softmax"] > 0) & (m.signals["max_softmax"] <= 1))
    assert np.all((m.signals["entropy"] >= 0) & (m.signals["entropy"] <= 8))
    bpb = m.signals["prompt_bpb"]
    assert np.all(bpb > 0) and np.all(m.signals["prompt_bpb_peak"] >= bpb - 1e-9)
    assert np.all((m.signals["router_entropy"] >= 0) & (m.signals["router_entropy"] <= np.log(3) + 1e-6))
    assert m.refused is None and all(len(g.encode("utf-8", "surrogateescape")) >= 1 for g in m.generated)
    # the torch pass's max-softmax is the confidence the engine reported while generating greedily
    prompts, _ = encode_prompts([r["text"] for r in rows], chat=False)
    outs = generate_batch(load_decoder(lite), prompts, SamplingConfig(max_new_tokens=GEN_BYTES, temperature=0))
    np.testing.assert_allclose(m.signals["max_softmax"], [np.mean(p) for _, p, _ in outs], atol=1e-3)


def test_chat_signals_and_a_model_without_router(vanilla):
    rows = toy_rows(1, "probe")
    m = measure(vanilla, rows, chat=True)
    assert "router_entropy" not in m.signals and m.refused is not None and m.refused.dtype == bool
    p = m.signals["abstain_probability"]
    assert np.all((p >= 0) & (p <= 1))
    prompts, spans = encode_prompts(["hi"], chat=True)
    assert prompts[0][spans[0][0]:spans[0][1]] == b"hi"


def test_evaluate_and_transfer_on_a_tiny_model(lite, lite_twin, vanilla):
    probe, train = measure(lite, toy_rows(5, "probe"), False), measure(lite, toy_rows(5, "train"), False)
    result = evaluate(probe, train)
    assert set(result["signals"]["max_softmax"]["auroc"]) == {"all", *OOD}
    for table in (result["detectors"]["hidden+signals"]["auroc"], result["signals"]["prompt_bpb"]["auroc"]):
        assert all(0 <= c["auroc"] <= 1 and c["ci"][0] <= c["auroc"] <= c["ci"][1] for c in table.values())
    assert set(result["leave_one_regime_out"]) == set(OOD) and result["n1"]["of"] == 6
    assert len(result["prompts"]) == 35 and "detector" in result["prompts"][0]
    assert "leave-one-regime-out" in markdown("tiny", result)
    moved = transfer(train, probe, measure(lite_twin, toy_rows(5, "probe"), False))
    assert 0 <= moved["target"]["fpr"] <= 1 and "router_entropy" in moved["signals_used"]
    plain = measure(vanilla, toy_rows(5, "probe"), False)
    assert "router_entropy" not in transfer(train, probe, plain)["signals_used"]


def test_checkpoint_names(tmp_path):
    run = tmp_path / "chat-lite" / "checkpoints" / "step-0000050"
    assert checkpoint_label(run) == "chat-lite/step-0000050"
    assert checkpoint_label(tmp_path / "tilelli-lite-fp32") == "tilelli-lite-fp32"


def test_chat_ness_is_the_checkpoints_own_record(tmp_path):
    """Read from config.json, not guessed from a name: a chat model may be called anything."""
    model = build_model(tiny("tilelli-lite-fp32"))
    plain = save(model, tmp_path / "chat-named-but-plain")
    chat = save(model, tmp_path / "plainly-named", extra={TEMPLATE_KEY: "chat"})
    assert not is_chat_checkpoint(plain) and is_chat_checkpoint(chat)
    assert is_chat_checkpoint(SHIPPED_DIR / DEFAULT_CHAT_MODEL) and not is_chat_checkpoint(SHIPPED_DIR / DEFAULT_MODEL)
    assert data_template({"format": "tilelli-bytes"}) == "plain" and data_template({}) == "plain"
    assert data_template({"format": "tilelli chat v1: 0xFE user 0xFD reply 0xFF (tilelli.chat.template)"}) == "chat"


# --- the CLI -------------------------------------------------------------------------------------

def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@needs_shared
def test_cli_json(capsys, lite, sets, tmp_path):
    code, out, err = run_cli(capsys, "probe", "--checkpoint", str(lite), "--sets", str(sets), "--limit", "5",
                             "--out", str(tmp_path), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["template"] == "plain" and result["limit"] == 5 and result["arch"] == "lite"
    assert 0 <= result["detectors"]["hidden+signals"]["auroc"]["all"]["auroc"] <= 1
    assert json.loads((tmp_path / "probe.json").read_text()) == result
    assert (tmp_path / "probe.md").read_text().startswith(f"**`{lite.name}`**")


@pytest.mark.parametrize("args,msg", [
    (["--limit", "3"], "--limit 3 is too few"),
    (["--sets", "/no/such/sets"], "lacks probe.jsonl"),
    (["--checkpoint", "/no/such/ckpt", "--sets", "SETS"], "no checkpoint at /no/such/ckpt"),
    (["--shared", "/no/such/shared"], "--shared /no/such/shared does not exist"),
    (["--template", "both"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, msg):
    (tmp_path / "sets").mkdir()
    for name in ("probe.jsonl", "train.jsonl", "meta.json"):
        (tmp_path / "sets" / name).write_text("{}")
    args = [str(tmp_path / "sets") if a == "SETS" else a for a in args]
    code, _, err = run_cli(capsys, "probe", "--out", str(tmp_path / "out"), *args)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
