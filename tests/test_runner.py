"""The standalone runner (`tilelli export --native`): the same greedy bytes as `tilelli generate`,
the same chat replies and abstentions as `tilelli chat`, and a loader that refuses any damaged
model file with one line and exit code 2."""

from __future__ import annotations

import math
import struct
import subprocess
from pathlib import Path

import pytest
from exported import (
    PROMPT,
    SHIPPED,
    SHIPPED_CHAT,
    chat_replies,
    chat_reply,
    detector_rule,
    export,
    generated,
    tiny_checkpoint,
)

from tilelli.chat.abstain import AbstainRule, measure
from tilelli.chat.session import conversation_prompt
from tilelli.chat.template import REFUSAL_UNREADABLE
from tilelli.infer import load_decoder
from tilelli.infer.engine import library
from tilelli.infer.model_file import ENTRY, HEADER, MODEL_FILE
from tilelli.infer.runner import RUNNER

pytestmark = pytest.mark.skipif(library.load() is None, reason="no C compiler: the runner cannot be built")


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(out / RUNNER), str(out / MODEL_FILE), *args], capture_output=True, timeout=60)


@pytest.mark.parametrize("kind", ["ternary", "fp32"])
def test_greedy_output_is_tilelli_generates(tmp_path, capsysbinary, kind):
    """By default and on the float path; a ternary model's default is the integer path (on this
    random model the two paths part within 64 bytes)."""
    ckpt = tiny_checkpoint(tmp_path, kind)
    out = export(ckpt, tmp_path / "native", "native")
    got, exact = (run(out, "-p", PROMPT, "-n", "64", "--temperature", "0", "-t", "1", *o) for o in ((), ("--no-int8",)))
    assert got.returncode == 0, got.stderr
    assert got.stdout == generated(ckpt, capsysbinary)
    assert exact.stdout == generated(ckpt, capsysbinary, 64, "--no-int8")
    assert (got.stdout != exact.stdout) == (kind == "ternary")


def test_shipped_default_model(tmp_path, capsysbinary):
    """On each path (the integer path, a ternary model's default, and the float path), the
    bytes `tilelli generate` gives on it."""
    out = export(SHIPPED, tmp_path / "native", "native")
    for options in ((), ("--int8",), ("--no-int8",)):
        got = run(out, "-p", PROMPT, "-n", "64", "--temperature", "0", *options)
        assert got.returncode == 0 and got.stdout == generated(SHIPPED, capsysbinary, 64, *options), options


@pytest.mark.parametrize("surprise", [1e9, 1.0], ids=["answers", "abstains"])
def test_chat_reply_and_decision_are_tilelli_chats(tmp_path, surprise):
    rule = AbstainRule(0.5, surprise)
    ckpt = tiny_checkpoint(tmp_path, "ternary", rule)
    out = export(ckpt, tmp_path / "native", "native")
    text = "Tell me a story about a cat."
    reply, abstained = chat_reply(ckpt, rule, text)
    assert abstained == (surprise < 10) and (reply == REFUSAL_UNREADABLE) == abstained
    got = run(out, "--chat", "-p", text, "-n", "40", "--temperature", "0")
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode() == reply + "\n"


@pytest.mark.parametrize("answers", [True, False], ids=["answers", "abstains"])
def test_chat_decision_with_a_refusal_detector_is_tilelli_chats(tmp_path, answers):
    """The detector's log-odds decide in C as in Python: the decision flips where the threshold
    passes Python's score (1e-6 either side), and a conversation's later turns agree too."""
    text = "Tell me a story about a cat."
    ckpt = tiny_checkpoint(tmp_path, "ternary", AbstainRule(0.5))
    rule, refusal = detector_rule(ckpt, text, answers)
    rule.save(ckpt)
    rule = AbstainRule.load(ckpt)  # what the export reads
    out = export(ckpt, tmp_path / "native", "native")
    reply, abstained = chat_reply(ckpt, rule, text)
    assert abstained == (not answers) and (reply == refusal) == abstained
    got = run(out, "--chat", "-p", text, "-n", "40", "--temperature", "0")
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode() == reply + "\n"
    texts = [text, "What is the capital of Peru?", text]
    got = subprocess.run([str(out / RUNNER), str(out / MODEL_FILE), "-n", "40", "--temperature", "0"],
                         input="\n".join(texts).encode() + b"\n", capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode() == "".join(r + "\n" for r, _ in chat_replies(ckpt, rule, texts))


def test_a_later_turn_is_unreadable_by_its_own_surprise_in_c_as_in_python(tmp_path):
    """The surprise that decides is the last turn's read alone (`Signals.text_surprise`), not the
    one its history gives it: with the threshold between the two, both answer."""
    first, never = "Tell me a story about a cat.", AbstainRule(1.0)  # P(refusal) > 1: never
    ckpt = tiny_checkpoint(tmp_path, "ternary", never)
    [(reply, _)] = chat_replies(ckpt, never, [first])
    decoder = load_decoder(ckpt, "native", 1)

    def readings(text: str) -> tuple[float, float]:
        s = measure(decoder, [conversation_prompt([(first, reply)], text, decoder.max_seq_len)[0]])[0]
        return s.surprise, s.alone.surprise

    text, (in_context, alone) = max(((t, readings(t)) for t in ("Hi!", "ok", "Thank you!", "zzz", "Who are you?")),
                                    key=lambda t: t[1][0] - t[1][1])
    assert in_context > alone + 1e-3, (in_context, alone)  # far apart beside C and Python's 1e-5
    rule = AbstainRule(1.0, (in_context + alone) / 2)
    rule.save(ckpt)
    replies = chat_replies(ckpt, rule, [first, text])
    assert not replies[1][1]  # answered: only its history made it surprising
    out = export(ckpt, tmp_path / "native", "native")
    got = subprocess.run([str(out / RUNNER), str(out / MODEL_FILE), "-n", "40", "--temperature", "0"],
                         input=f"{first}\n{text}\n".encode(), capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode() == "".join(r + "\n" for r, _ in replies)


def test_shipped_chat_model_decides_as_tilelli_chat(tmp_path):
    """Its rule (a refusal detector's log-odds, or P(refusal) in rules without one) refuses the
    fact question and answers the story request, in C as in Python."""
    out = export(SHIPPED_CHAT, tmp_path / "native", "native")
    rule = AbstainRule.load(SHIPPED_CHAT)
    for text, refuses in (("What is the capital of Peru?", True), ("Tell me a story about a cat.", False)):
        reply, abstained = chat_reply(SHIPPED_CHAT, rule, text)
        assert abstained == refuses
        got = run(out, "--chat", "-p", text, "-n", "40", "--temperature", "0")
        assert got.returncode == 0 and got.stdout.decode() == reply + "\n", (text, got)


def _entry_field(entry: int, field: int) -> int:
    return HEADER.size + entry * ENTRY.size + 8 * field


# (what is damaged, byte offset, new bytes)
DAMAGE = [("magic", 0, b"XXXX"), ("version", 4, b"\x01"), ("d_model", 16, b"\xff\xff"),
          ("n_tensors", 144, b"\x07"), ("rows of tok", _entry_field(0, 1), b"\x05"),
          ("offset past the end", _entry_field(7, 4) + 5, b"\x7f"), ("misaligned offset", _entry_field(7, 4), b"\x01"),
          ("byte count", _entry_field(8, 5), b"\x03"), ("kind", _entry_field(0, 0), b"\x07"),
          ("scale count", _entry_field(12, 7), b"\x09"), ("temperature", 128, b"\xff" * 8),
          ("P(refusal) threshold above 1", 112, struct.pack("<d", 1.5)), ("a detector of 3 weights", 152, b"\x03"),
          ("detector bias without a detector", 168, struct.pack("<d", 0.5))]
# the same, of a model whose rule has a detector (its weights are the first data after the table)
DETECTOR_DAMAGE = [("detector count", 152, b"\x03\x01"), ("detector offset past the end", 160 + 5, b"\x7f"),
                   ("misaligned detector", 160, b"\x08"), ("threshold not a number", 112, struct.pack("<d", math.nan)),
                   ("bias not a number", 168, struct.pack("<d", math.inf))]


@pytest.mark.parametrize("detector", [False, True], ids=["no-detector", "detector"])
def test_damaged_or_truncated_model_files_are_refused(tmp_path, detector):
    ckpt = tiny_checkpoint(tmp_path, "ternary", AbstainRule(0.5) if detector else None)
    if detector:
        detector_rule(ckpt, "Hello", True)[0].save(ckpt)
    out = export(ckpt, tmp_path / "native", "native")
    good = (out / MODEL_FILE).read_bytes()
    cases = [(f"truncated to {n}", good[:n]) for n in (0, 3, 100, 151, HEADER.size + 10, len(good) // 2,
                                                       len(good) - 1)]
    for what, at, new in DETECTOR_DAMAGE if detector else DAMAGE:
        cases.append((what, good[:at] + new + good[at + len(new):]))
    if detector:  # a weight that is not a number
        at = struct.unpack_from("<q", good, 160)[0] + 8 * 300
        cases.append(("weight not a number", good[:at] + struct.pack("<d", math.nan) + good[at + 8:]))
    for what, data in cases:
        (out / MODEL_FILE).write_bytes(data)
        got = run(out, "-p", PROMPT, "-n", "4")
        lines = got.stderr.decode().splitlines()
        assert got.returncode == 2 and len(lines) == 1 and "tilelli-run: error:" in lines[0], (what, got)


@pytest.mark.parametrize("args", [["-n", "x"], ["--top-p", "2"], ["--bogus"], ["-p"], ["-t", "0"], []])
def test_bad_options_are_one_line_and_exit_2(tmp_path, args):
    out = export(tiny_checkpoint(tmp_path, "ternary"), tmp_path / "native", "native")
    got = run(out, *args)
    assert got.returncode == 2 and got.stderr.decode().count("\n") == 1, got
    assert b"usage:" in run(out, "--help").stdout
