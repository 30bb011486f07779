"""The standalone runner (`tilelli export --native`): the same greedy bytes as `tilelli generate`,
the same chat replies and abstentions as `tilelli chat`, and a loader that refuses any damaged
model file with one line and exit code 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from exported import PROMPT, SHIPPED, chat_reply, export, generated, tiny_checkpoint

from tilelli.chat.abstain import AbstainRule
from tilelli.chat.template import REFUSAL_UNREADABLE
from tilelli.infer.engine import library
from tilelli.infer.model_file import ENTRY, HEADER, MODEL_FILE
from tilelli.infer.runner import RUNNER

pytestmark = pytest.mark.skipif(library.load() is None, reason="no C compiler: the runner cannot be built")


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(out / RUNNER), str(out / MODEL_FILE), *args], capture_output=True, timeout=60)


@pytest.mark.parametrize("kind", ["ternary", "fp32"])
def test_greedy_output_is_tilelli_generates(tmp_path, capsysbinary, kind):
    ckpt = tiny_checkpoint(tmp_path, kind)
    out = export(ckpt, tmp_path / "native", "native")
    got = run(out, "-p", PROMPT, "-n", "64", "--temperature", "0", "-t", "1")
    assert got.returncode == 0, got.stderr
    assert got.stdout == generated(ckpt, capsysbinary)


def test_shipped_default_model(tmp_path, capsysbinary):
    out = export(SHIPPED, tmp_path / "native", "native")
    assert run(out, "-p", PROMPT, "-n", "64", "--temperature", "0").stdout == generated(SHIPPED, capsysbinary)


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


def _entry_field(entry: int, field: int) -> int:
    return HEADER.size + entry * ENTRY.size + 8 * field


# (what is damaged, byte offset, new bytes)
DAMAGE = [("magic", 0, b"XXXX"), ("version", 4, b"\x09"), ("d_model", 16, b"\xff\xff"),
          ("n_tensors", 144, b"\x07"), ("rows of tok", _entry_field(0, 1), b"\x05"),
          ("offset past the end", _entry_field(7, 4) + 5, b"\x7f"), ("misaligned offset", _entry_field(7, 4), b"\x01"),
          ("byte count", _entry_field(8, 5), b"\x03"), ("kind", _entry_field(0, 0), b"\x07"),
          ("scale count", _entry_field(12, 7), b"\x09"), ("temperature", 128, b"\xff" * 8)]


def test_damaged_or_truncated_model_files_are_refused(tmp_path):
    out = export(tiny_checkpoint(tmp_path, "ternary"), tmp_path / "native", "native")
    good = (out / MODEL_FILE).read_bytes()
    cases = [(f"truncated to {n}", good[:n]) for n in (0, 3, 100, 151, HEADER.size + 10, len(good) // 2,
                                                       len(good) - 1)]
    for what, at, new in DAMAGE:
        cases.append((what, good[:at] + new + good[at + len(new):]))
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
