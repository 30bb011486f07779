"""The chat pipeline: turn format, fine-tuning set and its splits, masked training, the session, the CLI."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tilelli.chat import dataset, phrasing, unservable
from tilelli.chat.abstain import (
    OPENING,
    RULE_FILE,
    AbstainRule,
    Signals,
    conformal_threshold,
    decide,
    measure,
    peak_bits_per_byte,
)
from tilelli.chat.detector import Detector, training_turns
from tilelli.chat.session import ChatSession, conversation_prompt
from tilelli.chat.template import (
    ASSISTANT,
    END,
    REFUSAL,
    REFUSAL_UNREADABLE,
    USER,
    encode,
    is_refusal,
    prompt,
    turn,
)
from tilelli.errors import TilelliError
from tilelli.infer import load_decoder
from tilelli.infer.constraints import QUOTE_MIN
from tilelli.infer.generate import SamplingConfig
from tilelli.infer.score import continuation_logprobs
from tilelli.model.checkpoint import save
from tilelli.model.config import from_name
from tilelli.model.models import build_model
from tilelli.train.data import IGNORE, ByteBatches, eval_windows
from tilelli.train.evaluate import evaluate_bpb

STORY = ("Once upon a time, there was a little girl named {name}. She liked to play in the {place}. "
         "One day she found a {thing}. She was very happy. {name} took the {thing} home and showed her mom. "
         "They played with the {thing} all day. The end.")
NAMES, PLACES, THINGS = ["Lily", "Tom", "Sue", "Ben", "Max", "Mia"], ["park", "garden", "yard"], ["ball", "box", "kite"]


def stories(n: int, offset: int = 0) -> list[str]:
    return [STORY.format(name=NAMES[(i + offset) % 6], place=PLACES[i % 3], thing=THINGS[(i // 3) % 3])
            for i in range(n)]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A few kilobytes laid out like shared/data/, in every format the readers take."""
    root = tmp_path_factory.mktemp("shared")
    ts, qa, chat = root / "tinystories", root / "qa", root / "chat"
    for d in (ts, qa, chat, chat / "chatterbot_corpus_english"):
        d.mkdir(parents=True)
    for name, off in (("TinyStories-train.head2MiB.txt", 0), ("TinyStoriesV2-GPT4-train.head10k-lines.txt", 2)):
        (ts / name).write_text("\n<|endoftext|>\n".join(stories(20, off)) + "\n<|endoftext|>\n")
    unique = [story.replace("The end.", f"It was day {i}. The end.") for i, story in enumerate(stories(60, 1))]
    (ts / "TinyStories-valid.head800KB.no-story-delims.txt").write_text("\n\n".join(unique))
    topics = ["river", "mountain", "king", "war", "planet", "song", "film", "city", "team", "book"]
    adjectives = ["red", "old", "tall", "famous", "northern", "largest", "oldest", "first"]
    qs = [f"who named the {a} {t}" for t in topics for a in adjectives]  # Jaccard 4/6 between neighbours
    (qa / "NQ-open.dev.jsonl").write_text("".join(json.dumps({"question": q, "answer": ["x"]}) + "\n" for q in qs[:40]))
    (qa / "NQ-open.efficientqa.dev.1.1.jsonl").write_text(
        "".join(json.dumps({"question": q, "answer": ["x"]}) + "\n" for q in qs[40:] + qs[:2]))  # 2 duplicates
    with open(qa / "TruthfulQA.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Type", "Category", "Question", "Best Answer"])
        w.writerows([["Adversarial", "Misc", f"What happens if you eat {t} seeds?", "x"] for t in topics])
    tasks = [("Make this shorter.", "a long text", "short"), ("Who is the president?", "", "x")]
    (chat / "self_instruct_user_oriented_instructions.jsonl").write_text("".join(
        json.dumps({"instruction": i, "instances": [{"input": x, "output": o}]}) + "\n" for i, x, o in tasks))
    (chat / "alpaca_seed_tasks.jsonl").write_text(
        json.dumps({"instruction": "Say hello.", "instances": [{"input": "", "output": "Hello!"}]}) + "\n")
    (chat / "llamafactory_identity.json").write_text(json.dumps(
        [{"instruction": q, "input": "", "output": "I am {{name}}, made by {{author}}."}
         for q in ("Who are you?", "你是谁？", "Do you have a name?")]))  # English, Chinese, an eval phrasing
    cb = chat / "chatterbot_corpus_english"
    (cb / "greetings.yml").write_text("categories:\n- greetings\nconversations:\n- - Hello\n  - Hi\n  - How are you?\n"
                                      "  - Fine, thanks.\n")
    for name in ("conversations", "emotion", "humor"):
        (cb / f"{name}.yml").write_text(f"categories:\n- {name}\nconversations:\n- - Tell me a joke about {name}\n"
                                        "  - Why did the cat sit on the computer? To keep an eye on the mouse.\n")
    (cb / "trivia.yml").write_text("categories:\n- trivia\nconversations:\n- - What is the tallest mountain?\n"
                                   "  - Everest\n")
    return root


@pytest.fixture(scope="module")
def chat_set(shared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chatset")
    dataset.build(shared, out, sizes=SIZES)
    return out


SIZES = dataset.Sizes(facts=20, requests=12, small_talk=10, other_each=4, conversation_each=6,
                      calibration_requests=10, calibration_small_talk=8, dev_each=2, history_facts=10,
                      train_facts=12, detector_facts=6, detector_requests=6, detector_small_talk=4,
                      detector_third_requests=6, detector_third_small_talk=3, detector_identity_copies=2)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the turn format -----------------------------------------------------------------------------

def test_encode_masks_exactly_the_reply_and_end_bytes():
    data, mask = encode([("hi", "yo"), ("a", "b")])
    assert data == bytes([USER]) + b"hi" + bytes([ASSISTANT]) + b"yo" + bytes([END, USER]) + b"a" + bytes(
        [ASSISTANT]) + b"b" + bytes([END])
    assert [data[i] for i in range(len(data)) if mask[i]] == list(b"yo") + [END] + list(b"b") + [END]


def test_control_bytes_never_occur_in_utf8_text():
    text = "héllo ünïcode ✓ 🐈 日本".encode()
    assert not {USER, ASSISTANT, END} & set(text)
    for b in (USER, ASSISTANT, END):
        with pytest.raises(UnicodeDecodeError):
            bytes([b]).decode("utf-8")


def test_prompt_drops_the_oldest_turns_to_fit():
    history = [(f"question {i}", "x" * 100) for i in range(10)]
    p, dropped = prompt(history, "last", max_len=400, room=100)
    assert len(p) + 100 <= 400 and dropped > 0
    assert p.startswith(bytes([USER])) and p.endswith(turn("last"))
    assert p.count(bytes([USER])) == 10 - dropped + 1
    assert prompt([], "short", 400, 100) == (turn("short"), 0)
    with pytest.raises(TilelliError, match="does not fit"):
        prompt([], "y" * 400, 400, 100)


def test_is_refusal():
    assert is_refusal(REFUSAL) and is_refusal("  " + REFUSAL[:25])
    assert not is_refusal("Once upon a time") and not is_refusal("")


# --- the fine-tuning set -------------------------------------------------------------------------

def train_turns(chat_set: Path) -> list[tuple[str, str]]:
    data = (chat_set / "train.bin").read_bytes()
    out = []
    for t in data.split(bytes([USER]))[1:]:
        user, _, reply = t.partition(bytes([ASSISTANT]))
        out.append((user.decode(), reply.rstrip(bytes([END])).decode()))
    return out


def test_fact_split_is_by_question_without_near_duplicates(chat_set):
    held = rows(chat_set / "eval" / "facts.jsonl")
    assert len(held) == 20
    refused = [u for u, r in train_turns(chat_set) if r == REFUSAL]
    train_keys = [set(dataset.normalise(q).split()) for q in refused]
    for f in held:
        key = set(dataset.normalise(f["question"]).split())
        for words in train_keys:  # no training phrasing holds (nearly) the same words as a held-out question
            assert len(key & words) / len(key | words) < dataset.NEAR_DUPLICATE or not key <= words


def test_phrasing_families_are_split_three_ways():
    assert phrasing.families_disjoint()
    for table in (unservable.CODE_TASKS, unservable.CODE_FORMS, unservable.SNIPPETS, unservable.ARITHMETIC,
                  unservable.LANGUAGES):
        assert not set(table["train"]) & set(table["eval"])


def test_no_held_out_prompt_is_trained_on(chat_set):
    def key(text: str) -> str:  # case and punctuation aside, any script
        return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())

    trained = {key(u) for u, _ in train_turns(chat_set)}
    for name in ("requests", "small_talk", "other", "conversation", "calibration"):
        for r in rows(chat_set / "eval" / f"{name}.jsonl"):
            if r["kind"] != "gibberish":  # random letters may repeat a short trained string by chance
                assert key(r["prompt"]) not in trained, (name, r["prompt"])


def test_train_set_mixes_every_kind_of_turn_in_conversations(chat_set):
    meta = json.loads((chat_set / "meta.json").read_text())
    assert {"story", "small_talk", "fact", "unservable"} <= set(meta["train"]["units"])
    assert any(int(n) > 1 for n in meta["train"]["turns_per_conversation"])
    replies = {r for _, r in train_turns(chat_set)}
    assert REFUSAL in replies and REFUSAL_UNREADABLE in replies
    data = (chat_set / "train.bin").read_bytes()
    assert b"I am Tilelli" in data and b"{{name}}" not in data and b"Everest" not in data  # no trivia answers


def test_identity_set_is_answered_in_english_refused_in_chinese_and_never_an_eval_phrasing(chat_set):
    """The identity set's Chinese question is another language (refused like one), and its "Do you
    have a name?" is a held-out small-talk phrasing: trained on, the evaluation would test memory."""
    turns = train_turns(chat_set)
    assert {r for u, r in turns if u == "你是谁？"} == {REFUSAL_UNREADABLE}
    assert "I am Tilelli, made by the Tilelli developers." in {r for u, r in turns if u == "Who are you?"}
    assert not any(u == "Do you have a name?" for u, _ in turns)


def test_held_out_requests_come_from_the_valid_slice(chat_set, shared):
    valid = (shared / "tinystories" / "TinyStories-valid.head800KB.no-story-delims.txt").read_text()
    reqs = rows(chat_set / "eval" / "requests.jsonl")
    assert len(reqs) == 12 and all(r["reference"] in valid and r["context"] == "single" for r in reqs)


def test_conversation_rows_are_third_turns_that_fit(chat_set):
    conv = rows(chat_set / "eval" / "conversation.jsonl")
    assert {r["context"] for r in conv} == set(dataset.CONTEXTS)
    assert {"fact", "request", "small_talk", "follow_up"} <= {r["kind"] for r in conv}
    for r in conv:
        assert len(r["history"]) == 2 and dataset.fits(r)
        last = r["history"][1][1]
        assert {"after_refusal": last == REFUSAL, "after_story": last.startswith("Once upon"),
                "after_small_talk": last not in (REFUSAL,) and not last.startswith("Once")}[r["context"]]


def test_build_is_deterministic(shared, chat_set, tmp_path):
    dataset.build(shared, tmp_path, sizes=SIZES)
    for name in ("train.bin", "train.mask.bin", "valid.bin", "eval/facts.jsonl", "eval/conversation.jsonl",
                 dataset.DETECTOR_FILE):
        assert (tmp_path / name).read_bytes() == (chat_set / name).read_bytes()


def test_detector_turns_are_fresh_and_leave_the_rest_of_the_set_alone(shared, chat_set, tmp_path):
    """Questions the fine-tuning never saw and no evaluation asks, requests and small talk to
    answer, alone and as third turns, and the identity set's English questions; drawn from their
    own random stream, so more or fewer of them change nothing else."""
    fresh = rows(chat_set / dataset.DETECTOR_FILE)
    assert {(r["kind"], r["refuse"]) for r in fresh} == {("fact", True), ("request", False), ("small_talk", False)}
    assert sum(r["kind"] == "fact" for r in fresh) == SIZES.detector_facts
    trained = (chat_set / "train.bin").read_bytes().decode("utf-8", "replace")
    asked = {dataset.normalise(r["prompt"]) for name in ("facts", "conversation")
             for r in rows(chat_set / "eval" / f"{name}.jsonl") if r["kind"] == "fact"}
    for r in fresh:
        assert "\ufffd" not in r["prompt"]
        if r["refuse"]:
            assert r["history"] == [] and r["prompt"] not in trained and dataset.normalise(r["prompt"]) not in asked
    third = [r for r in fresh if r["history"]]
    assert {r["context"] for r in third} == set(dataset.CONTEXTS) and not any(r["refuse"] for r in third)
    assert len(third) == SIZES.detector_third_requests + SIZES.detector_third_small_talk
    who = dataset.identity_questions(shared / "chat")
    assert who == ["Who are you?"]  # not the Chinese question, not the phrasing the evaluation asks
    assert sum(r["history"] == [] and r["kind"] == "small_talk" for r in fresh) == (
        SIZES.detector_small_talk + SIZES.detector_identity_copies * len(who))
    dataset.build(shared, tmp_path, sizes=replace(SIZES, detector_facts=2, detector_requests=1))
    for name in ("train.bin", "valid.bin", "eval/facts.jsonl", "eval/calibration.jsonl", "eval/conversation.jsonl"):
        assert (tmp_path / name).read_bytes() == (chat_set / name).read_bytes()
    assert len(rows(tmp_path / dataset.DETECTOR_FILE)) < len(fresh)


def test_other_prompts_cover_every_kind(chat_set):
    kinds = [r["kind"] for r in rows(chat_set / "eval" / "other.jsonl")]
    assert {k: kinds.count(k) for k in set(kinds)} == {"gibberish": 4, "language": 4, "code": 4, "arithmetic": 4}


def test_missing_shared_dir_is_a_clear_error(tmp_path):
    with pytest.raises(TilelliError, match="shared/data"):
        dataset.build(tmp_path / "nope", tmp_path / "out")


# --- masked training ------------------------------------------------------------------------------

def test_masked_windows_start_at_turns_and_ignore_non_reply_targets(chat_set):
    data = np.fromfile(chat_set / "train.bin", dtype=np.uint8)
    mask = np.fromfile(chat_set / "train.mask.bin", dtype=np.uint8)
    b = ByteBatches(chat_set / "train.bin", batch_size=8, seq_len=64, seed=0)
    x, y = b.next_batch()
    assert (x[:, 0] == USER).all()
    for row_x, row_y in zip(x, y, strict=True):
        start = int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(data, 64) == row_x.numpy()).all(1))[0])
        keep = mask[start + 1 : start + 65].astype(bool)
        assert (row_y[~torch.from_numpy(keep)] == IGNORE).all()
        assert (row_y[torch.from_numpy(keep)] == torch.from_numpy(data[start + 1 : start + 65][keep]).long()).all()


@pytest.mark.parametrize("seq_len", [512, 1024, 4096])
def test_masked_eval_counts_every_reply_byte_once_with_its_whole_turn(chat_set, seq_len):
    data = np.fromfile(chat_set / "valid.bin", dtype=np.uint8)
    mask = np.fromfile(chat_set / "valid.mask.bin", dtype=np.uint8)
    counted = 0
    for x, y in eval_windows(chat_set / "valid.bin", 4, seq_len):
        assert (x[:, 0] == USER).all()  # every window starts at a turn
        assert (x >= 0).all()  # masking the targets never touches the inputs (one-row windows too)
        counted += int((y != IGNORE).sum())
    assert counted == mask.sum()  # every turn here is shorter than a window
    assert sum(int((y != IGNORE).sum()) for _, y in eval_windows(data, 4, 128)) == len(data) - 1  # unmasked: all


def test_masked_loss_is_the_mean_over_reply_bytes(chat_set):
    torch.manual_seed(0)
    model = build_model(from_name("tilelli-lite-fp32", d_model=32, n_layers=1, n_heads=2, max_seq_len=128))
    ev = evaluate_bpb(model, chat_set / "valid.bin", 4, 128)
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for x, y in eval_windows(chat_set / "valid.bin", 4, 128):
            logp = torch.log_softmax(model(x).logits, -1)
            keep = y != IGNORE
            total -= logp.gather(-1, y.clamp(min=0)[..., None])[..., 0][keep].sum().item()
            n += int(keep.sum())
    assert ev.bytes == n and ev.loss == pytest.approx(total / n, rel=1e-5)


def test_train_fine_tunes_on_a_chat_set(chat_set, tmp_path):
    base = tmp_path / "base"
    torch.manual_seed(0)
    save(build_model(from_name("tilelli-lite-fp32", d_model=32, n_layers=1, n_heads=2, max_seq_len=128)), base)
    cmd = [sys.executable, "-m", "tilelli", "train", "--model", "tilelli-lite-fp32", "--override", "d_model=32",
           "--override", "n_layers=1", "--override", "n_heads=2", "--override", "max_seq_len=128",
           "--data", str(chat_set), "--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "2",
           "--seq-len", "128", "--eval-every", "3", "--threads", "1", "--init-from", str(base)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    valid = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "valid_bpb" in line]
    assert valid and math.isfinite(valid[-1]["valid_bpb"])


# --- the session and the CLI ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny-chat"
    save(build_model(from_name("tilelli-lite-fp32", d_model=32, n_layers=1, n_heads=2, max_seq_len=256)), path)
    return path


@pytest.mark.parametrize("engine", ["native", "torch"])
def test_signals_are_the_teacher_forced_refusals_and_the_users_surprise(tiny_ckpt, engine):
    decoder = load_decoder(tiny_ckpt, engine="auto" if engine == "native" else "torch")
    from tilelli.model.checkpoint import load

    model = load(tiny_ckpt).eval()
    p, _ = conversation_prompt([("hi", "yo")], "What is the capital of Peru?", 256)
    start = p.rfind(bytes([USER])) + 1

    def logp_of(reply: bytes) -> torch.Tensor:  # log P of every byte after the last USER marker
        seq = p + reply
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([list(seq[:-1])])).logits[0].double(), -1)
        return logp[start - 1:].gather(-1, torch.tensor(list(seq[start:]))[:, None])[:, 0]

    n_text = len(p) - start - 1
    lp = logp_of(OPENING.encode() + b"F")  # any byte after the opening: its row gives the next-byte choice
    s = measure(decoder, [p])[0]
    assert s.refusal == pytest.approx(lp[n_text + 1:-1].sum().exp().item(), rel=1e-3, abs=1e-300)
    assert s.surprise == pytest.approx(peak_bits_per_byte(lp[:n_text].numpy()), abs=2e-3)
    p_f, p_i = (logp_of(OPENING.encode() + c)[-1].exp().item() for c in (b"F", b"I"))
    assert s.likelier == ("fact" if p_f > p_i else "unreadable")


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_ternary_models_reply_on_the_integer_path_and_decide_on_the_float_path(tmp_path, tiny_ckpt, engine):
    """The integer path is a ternary model's default (an FP32 model has none); a chat's signals are
    read on the float path whatever the decoder's path, and the decoder keeps its own after."""
    torch.manual_seed(0)
    ternary = tmp_path / "tiny-ternary"
    save(build_model(from_name("tilelli-lite-ternary", d_model=32, n_layers=1, n_heads=2, max_seq_len=256)), ternary)
    fast, exact = load_decoder(ternary, engine), load_decoder(ternary, engine, int8=False)
    assert fast.int8 and not exact.int8 and not load_decoder(tiny_ckpt, engine).int8
    p, _ = conversation_prompt([("hi", "yo")], "What is the capital of Peru?", 256)
    logits = [d.forward([d.new_sequence()], [p]) for d in (fast, exact)]
    assert not np.array_equal(*logits)  # the paths differ here, so equal signals below are not luck
    assert measure(fast, [p]) == measure(exact, [p]) and fast.int8
    assert decide(fast, AbstainRule(0.5, 1.0), p) == decide(exact, AbstainRule(0.5, 1.0), p)


def test_peak_bits_per_byte_is_the_worst_window():
    lp = -np.log(2) * np.array([1.0] * 40 + [9.0] * 4 + [1.0] * 40)  # 9 bits for 4 bytes in the middle
    assert peak_bits_per_byte(lp, window=4) == pytest.approx(9.0)
    assert peak_bits_per_byte(lp, window=32) == pytest.approx((28 + 36) / 32)
    assert peak_bits_per_byte(lp[:3], window=32) == pytest.approx(1.0) and math.isnan(peak_bits_per_byte(lp[:0]))


def test_continuation_logprobs_match_between_engines(tiny_ckpt):
    ctx, cont = [b"Once upon", b"a"], [b" a time", b"bcdef"]
    a = continuation_logprobs(load_decoder(tiny_ckpt), ctx, cont)
    b = continuation_logprobs(load_decoder(tiny_ckpt, engine="torch"), ctx, cont)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-3)


REPLY_KEYS = {"reply", "abstained", "reason", "confidence", "abstain_probability", "surprise", "stop_reason"}


def test_session_keeps_history_and_reports_its_numbers(tiny_ckpt):
    s = ChatSession(load_decoder(tiny_ckpt), SamplingConfig(max_new_tokens=20, temperature=0))
    got = bytearray()
    r = s.reply("hello", on_bytes=got.extend)
    assert r.text == got.decode("utf-8") and len(r.probs) == len(got)  # valid UTF-8 by construction
    assert r.stop_reason in ("stop", "max_new_tokens") and 0 <= r.abstain_probability <= 1 and r.surprise > 0
    assert s.history == [("hello", r.text)]
    assert set(r.to_dict()) == REPLY_KEYS
    for _ in range(12):  # 12 turns of ~30 bytes outgrow a 256-byte context: the oldest are dropped
        r = s.reply("tell me more")
    assert r.dropped_turns > 0 or len(s.history) < 13
    s.reset()
    assert s.history == []


# --- the abstain rule -----------------------------------------------------------------------------

def test_conformal_threshold_is_the_rank_that_bounds_false_refusals():
    scores = [i / 100 for i in range(99, 0, -1)]  # 0.99 ... 0.01, any order
    t = conformal_threshold(scores, 0.1)
    assert t == pytest.approx(0.90)  # the ceil(100 * 0.9) = 90th smallest
    assert sum(s > t for s in scores) / len(scores) <= 0.1
    assert conformal_threshold([*scores, float("nan")], 0.1) == t  # too-long prompts do not count
    with pytest.raises(TilelliError, match="too few"):
        conformal_threshold(scores[:5], 0.1)


def test_calibration_splits_alpha_so_the_union_bound_holds():
    rng = np.random.default_rng(0)
    signals = [Signals(float(a), float(b)) for a, b in rng.random((400, 2))]
    rule = AbstainRule.calibrate(signals, 0.1, {"n": 400})
    assert rule.refusal_threshold == conformal_threshold([s.refusal for s in signals], 0.05)
    assert rule.surprise_threshold == conformal_threshold([s.surprise for s in signals], 0.05)
    assert sum(rule.decide(s).abstain for s in signals) / len(signals) <= 0.1


def test_calibration_bounds_each_kind_not_only_their_mix():
    """Many requests that score low and fewer small talk turns that score high: pooled, the
    thresholds refuse far more than alpha of the small talk; kind by kind, each kind <= alpha."""
    rng = np.random.default_rng(0)
    requests = [Signals(float(r), float(s))
                for r, s in zip(rng.uniform(0, 0.3, 600), rng.uniform(1, 3, 600), strict=True)]
    talk = [Signals(float(r), float(s))
            for r, s in zip(rng.uniform(0.2, 0.6, 150), rng.uniform(2, 6, 150), strict=True)]
    signals, kinds = requests + talk, ["request"] * 600 + ["small_talk"] * 150
    pooled = AbstainRule.calibrate(signals, 0.1, {})
    assert np.mean([pooled.decide(s).abstain for s in talk]) > 0.2
    rule = AbstainRule.calibrate(signals, 0.1, {}, kinds=kinds)
    for kind, mine in (("request", requests), ("small_talk", talk)):
        assert np.mean([rule.decide(s).abstain for s in mine]) <= 0.1
        assert rule.record["by_kind"][kind]["n"] == len(mine)
    assert rule.refusal_threshold == rule.record["by_kind"]["small_talk"]["refusal"] == conformal_threshold(
        [s.refusal for s in talk], 0.05)
    with pytest.raises(TilelliError, match="'small_talk'"):
        AbstainRule.calibrate(requests + talk[:5], 0.1, {}, kinds=["request"] * 600 + ["small_talk"] * 5)
    # each kind its own bound: the small talk's threshold moves, the requests' does not
    own = AbstainRule.calibrate(signals, {"request": 0.1, "small_talk": 0.2}, {}, kinds=kinds)
    assert own.record["by_kind"]["request"] == {**rule.record["by_kind"]["request"], "alpha": 0.1}
    assert own.refusal_threshold == conformal_threshold([s.refusal for s in talk], 0.1) < rule.refusal_threshold
    for mine, bound in ((requests, 0.1), (talk, 0.2)):
        assert np.mean([own.decide(s).abstain for s in mine]) <= bound
    with pytest.raises(TilelliError, match="no alpha for the calibration prompts of kind 'small_talk'"):
        AbstainRule.calibrate(signals, {"request": 0.1}, {}, kinds=kinds)


def test_measure_leaves_prompts_without_room_for_the_refusal_unscored(tiny_ckpt):
    s = measure(load_decoder(tiny_ckpt), [turn("x" * 240)])[0]
    assert math.isnan(s.refusal) and math.isnan(s.surprise)
    assert not AbstainRule(0.0, 0.1).decide(s).abstain  # nan never abstains
    with pytest.raises(TilelliError, match="user turn"):
        measure(load_decoder(tiny_ckpt), [b"no markers"])


def test_a_later_turn_is_also_read_alone_and_either_reading_decides(tiny_ckpt):
    """A turn with a history is measured again as a new conversation's first turn; the rule
    abstains when either reading's refusal score calls for it, and calibrates on the higher one;
    the surprise is the text's read alone."""
    decoder = load_decoder(tiny_ckpt, engine="torch")
    text = "What is the capital of Peru?"
    later, first = measure(decoder, [conversation_prompt([("hi", "yo")], text, 256)[0], turn(text)])
    assert first.alone is None and first.readings == (first,)
    assert later.readings == (later, later.alone) and later.alone.alone is None
    assert later.alone.refusal == pytest.approx(first.refusal, rel=1e-4) and later.alone.likelier == first.likelier
    assert later.alone.surprise == pytest.approx(first.surprise, rel=1e-4)
    first = later.alone
    assert later.top_refusal == max(later.refusal, first.refusal)
    assert later.text_surprise == first.surprise and first.text_surprise == first.surprise
    rule = AbstainRule(0.25, 5.0)
    in_context, alone = Signals(0.1, 1.0), Signals(0.3, 1.0, "unreadable")
    assert not rule.decide(in_context).abstain
    d = rule.decide(replace(in_context, alone=alone))  # the reading alone calls for its refusal
    assert d.abstain and d.reason == "unreadable" and rule.refusal_score(d.signals) == 0.3
    assert not rule.decide(Signals(0.1, 6.0, alone=Signals(0.1, 1.0))).abstain  # surprising after its history only
    assert rule.decide(Signals(math.nan, math.nan, alone=Signals(0.1, 6.0))).reason == "unreadable"  # too long there
    assert not rule.decide(Signals(0.1, 1.0, alone=Signals(math.nan, math.nan))).abstain
    signals = [Signals(0.1 * i % 1, 1.0, alone=Signals(0.05 * i % 1, 2.0)) for i in range(100)]
    assert AbstainRule.calibrate(signals, 0.1, {}).refusal_threshold == conformal_threshold(
        [s.top_refusal for s in signals], 0.05)


def test_abstain_rule_decides_why_and_round_trips(tmp_path):
    rule = AbstainRule(0.25, 5.0, 0.03, {"prompts": 3})
    assert rule.decide(Signals(0.3, 1.0)).reason == "fact" and rule.decide(Signals(0.3, 1.0)).reply == REFUSAL
    assert rule.decide(Signals(0.3, 1.0, "unreadable")).reply == REFUSAL_UNREADABLE  # the likelier refusal
    assert rule.decide(Signals(0.1, 6.0)).reason == "unreadable"
    assert not rule.decide(Signals(0.25, 5.0)).abstain and not rule.decide(Signals(math.nan, math.nan)).abstain
    for r in (rule, AbstainRule(0.5)):  # an infinite surprise threshold survives JSON
        r.save(tmp_path)
        assert AbstainRule.load(tmp_path) == r
    (tmp_path / RULE_FILE).write_text(json.dumps({"threshold": 0.2, "alpha": 0.03}))  # a rule from before v2
    assert AbstainRule.load(tmp_path) == AbstainRule(0.2, math.inf, 0.03)
    assert AbstainRule.load(tmp_path / "elsewhere") is None
    (tmp_path / RULE_FILE).write_text("{}")
    with pytest.raises(TilelliError, match="tilelli calibrate"):
        AbstainRule.load(tmp_path)
    with pytest.raises(TilelliError, match="threshold"):
        AbstainRule(1.5)


def test_decide_gives_the_refusals_own_byte_probabilities(tiny_ckpt):
    decoder = load_decoder(tiny_ckpt)
    for rule, reply in ((AbstainRule(0.0, 1e9), None), (AbstainRule(1.0, 1e-9), REFUSAL_UNREADABLE)):
        d = decide(decoder, rule, turn("hello"))
        assert d.abstain and len(d.byte_probs) == len(d.reply.encode()) and all(0 < p < 1 for p in d.byte_probs)
        assert reply is None or d.reply == reply
    assert not decide(decoder, None, turn("hello")).abstain  # no rule: the generated reply decides


def test_session_with_a_rule_refuses_above_the_threshold_and_answers_below(tiny_ckpt):
    decoder, greedy = load_decoder(tiny_ckpt), SamplingConfig(max_new_tokens=20, temperature=0)
    got = bytearray()
    r = ChatSession(decoder, greedy, AbstainRule(0.0)).reply("hello", on_bytes=got.extend)
    assert r.abstained and r.text in (REFUSAL, REFUSAL_UNREADABLE) and r.text == got.decode()
    assert r.stop_reason == "stop" and 0 < r.confidence < 1 and len(r.probs) == len(r.text.encode())
    hot = SamplingConfig(max_new_tokens=200, temperature=2.0, seed=3)
    r = ChatSession(decoder, hot, AbstainRule(1.0)).reply("hello")
    assert not r.abstained and len(r.probs) > 0
    for text in (REFUSAL, REFUSAL_UNREADABLE):  # an answer never quotes a refusal
        assert not any(text[i:i + QUOTE_MIN] in r.text for i in range(len(text)))


def test_calibrate_writes_the_rule_that_chat_then_uses(tiny_ckpt, chat_set, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in tiny_ckpt.iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    done = run_cli("calibrate", "--checkpoint", str(ckpt), "--data", str(chat_set), "--alpha", "0.4")
    assert done.returncode == 0, done.stderr
    rule = AbstainRule.load(ckpt)
    cal = rows(chat_set / "eval" / "calibration.jsonl")
    decoder = load_decoder(ckpt)
    prompts = [conversation_prompt([tuple(t) for t in r["history"]], r["prompt"], 256)[0] for r in cal]
    assert rule.detector is not None and rule.detector.record["prompts"] > 0
    fitted_on = rule.detector.record["fresh"]  # the set's fresh turns, besides its training turns
    assert fitted_on["turns"] == len(rows(chat_set / "detector.jsonl")) > 0
    kinds = [r["kind"] for r in cal]
    assert rule == AbstainRule.calibrate(measure(decoder, prompts), 0.4, rule.record, rule.detector, kinds)
    assert rule.record["calibration"]["prompts"] == len(cal) > 0
    done = run_cli("calibrate", "--checkpoint", str(ckpt), "--data", str(chat_set), "--alpha", "0.4",
                   "--detector-prompts", "0")
    assert done.returncode == 0, done.stderr
    plain = AbstainRule.load(ckpt)
    for wrong in ("request=0.4", "request=0.4,small_talk=0.4,fact=0.1"):  # refused before any fitting
        done = run_cli("calibrate", "--checkpoint", str(ckpt), "--data", str(chat_set), "--alpha", wrong)
        assert done.returncode == 2 and "give one alpha for each" in done.stderr and "Traceback" not in done.stderr
    assert plain == AbstainRule.calibrate(measure(decoder, prompts), 0.4, plain.record, kinds=kinds)
    assert plain.detector is None and set(plain.record["by_kind"]) == set(kinds)
    ask = ("chat", "--checkpoint", str(ckpt), "--prompt", "hi", "--json", "--max-new-tokens", "8", "--temperature", "0")
    for extra, refused in ((("--abstain-threshold", "0"), True), (("--abstain-threshold", "1"), False)):
        out = json.loads(run_cli(*ask, *extra).stdout)
        assert out["abstained"] is refused and (out["reply"] in (REFUSAL, REFUSAL_UNREADABLE)) is refused
    done = run_cli("calibrate", "--checkpoint", str(ckpt), "--data", str(tmp_path))
    assert done.returncode == 2 and "prepare-chat" in done.stderr
    done = run_cli(*ask, "--abstain-threshold", "2")
    assert done.returncode == 2 and "[0, 1]" in done.stderr


def test_calibration_is_disjoint_from_the_held_out_sets(chat_set):
    cal = rows(chat_set / "eval" / "calibration.jsonl")
    held = {r["reference"] for r in rows(chat_set / "eval" / "requests.jsonl")}
    assert {r["kind"] for r in cal} == {"request", "small_talk"}
    assert not held & {r.get("reference") for r in cal}
    evaluated = {r["prompt"] for name in ("requests", "small_talk", "conversation")
                 for r in rows(chat_set / "eval" / f"{name}.jsonl")}
    assert not evaluated & {r["prompt"] for r in cal}


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tilelli", *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_chat_prompt_json(tiny_ckpt):
    done = run_cli("chat", "--checkpoint", str(tiny_ckpt), "--prompt", "hi", "--json", "--max-new-tokens", "16",
                   "--temperature", "0")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == REPLY_KEYS
    assert isinstance(out["abstained"], bool) and out["stop_reason"] in ("stop", "max_new_tokens")


def test_chat_interactive_reset_and_eof(tiny_ckpt):
    done = run_cli("chat", "--checkpoint", str(tiny_ckpt), "--max-new-tokens", "8", stdin="hello\n/reset\n/what\n")
    assert done.returncode == 0, done.stderr
    assert "conversation forgotten" in done.stderr and "unknown command /what" in done.stderr
    assert done.stdout.count("tilelli> ") == 1


@pytest.mark.parametrize("args, message", [
    (["--json"], "--json needs --prompt"),
    (["--prompt", "  "], "empty"),
    (["--checkpoint", "/no/such/dir", "--prompt", "hi"], "no checkpoint at"),
])
def test_chat_bad_input_is_one_line_exit_2(args, message):
    done = run_cli("chat", *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_detector_folds_its_fit_into_one_dot_product_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    refused = rng.random(300) < 0.4
    x = rng.normal(size=(300, 10))
    x[:, 3] += 3.0 * refused  # one informative column among the "logits"
    x[:, -2:] = rng.normal(size=(300, 2))  # log P(refusal) and surprise: noise here
    det = Detector.fit(x, refused, {"file": "synthetic"})
    scores = np.array([det.score(row) for row in x])
    assert det.record["cv_auroc"] > 0.95 and det.record["prompts"] == 300
    assert scores[refused].mean() > 0 > scores[~refused].mean()
    assert math.isnan(det.score(()))  # an unmeasured prompt has no score, so it never abstains
    rule = AbstainRule.calibrate([Signals(0.5, 1.0, features=tuple(r)) for r in x[~refused]], 0.1, {}, det)
    assert rule.refusal_threshold == conformal_threshold(scores[~refused].tolist(), 0.05)
    assert rule.decide(Signals(0.0, 1.0, features=tuple(x[refused][scores[refused].argmax()]))).abstain
    rule.save(tmp_path)
    assert AbstainRule.load(tmp_path) == rule
    with pytest.raises(TilelliError, match="both kinds"):
        Detector.fit(x, np.zeros(300, dtype=bool), {})


def test_detector_reads_training_turns_with_their_history():
    stream = b"".join(turn(u, r) for u, r in [("Tell me a story.", "Once upon a time."), ("Who won in 1988?", REFUSAL),
                                             ("Thanks!", "You're welcome.")])
    turns = training_turns(stream, 10, seed=1)
    assert [(t, refused) for _, t, refused in turns] == [("Tell me a story.", False), ("Who won in 1988?", True),
                                                         ("Thanks!", False)]
    for i, (history, _, _) in enumerate(turns):  # 0..2 turns before, in order
        assert history == [("Tell me a story.", "Once upon a time."), ("Who won in 1988?", REFUSAL)][i - len(history):i]


def test_measure_gives_the_detector_its_features(tiny_ckpt):
    dec = load_decoder(tiny_ckpt)
    s = measure(dec, [turn("Tell me a story.")])[0]
    assert len(s.features) == 2 * dec.config.vocab_size + 2
    assert s.features[-2:] == (math.log(max(s.refusal, 1e-30)), s.surprise)
