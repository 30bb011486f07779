"""Helpers of the export tests (test_runner.py, test_web.py): tiny checkpoints, the reference
outputs of `tilelli generate` and `tilelli chat`, and an export through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_engine import saved

from tilelli.chat.abstain import REASONS, AbstainRule, measure
from tilelli.chat.detector import Detector
from tilelli.chat.session import ChatSession
from tilelli.chat.template import turn
from tilelli.cli import main
from tilelli.infer import load_decoder
from tilelli.infer.generate import SamplingConfig
from tilelli.model.checkpoint import SHIPPED_DIR

PROMPT = "Once upon a time"
# (named config, overrides, how it is stored): a ternary and an FP32 model
MODELS = {"ternary": ("tilelli-lite-ternary", {}, "packed"), "fp32": ("vanilla-fp32", {}, "bf16")}
SHIPPED = SHIPPED_DIR / "tilelli-lite-ternary"
SHIPPED_CHAT = SHIPPED_DIR / "tilelli-chat-lite-ternary"


def tiny_checkpoint(tmp_path: Path, kind: str, chat_rule: AbstainRule | None = None) -> Path:
    """A tiny checkpoint; with `chat_rule`, a chat model (template "chat") with that rule."""
    name, kw, how = MODELS[kind]
    path = saved(tmp_path, name, kw, how)
    if chat_rule is not None:
        import json

        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**cfg, "template": "chat"}))
        chat_rule.save(path)
    return path


def export(checkpoint: Path, out: Path, form: str, *options: str) -> Path:
    """`tilelli export --checkpoint CHECKPOINT --FORM --out OUT [OPTIONS]`."""
    assert main(["export", "--checkpoint", str(checkpoint), f"--{form}", "--out", str(out), *options]) == 0
    return out


def generated(checkpoint: Path, capsysbinary, n: int = 64, *options: str) -> bytes:
    """What `tilelli generate --temperature 0 --max-new-tokens N [OPTIONS]` prints for PROMPT."""
    capsysbinary.readouterr()
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", PROMPT, "--temperature", "0",
                 "--max-new-tokens", str(n), "--threads", "1", *options]) == 0
    return capsysbinary.readouterr().out


def chat_reply(checkpoint: Path, rule: AbstainRule, text: str, n: int = 40) -> tuple[str, bool]:
    """`tilelli chat`'s greedy reply to `text` (the session the chat command runs)."""
    return chat_replies(checkpoint, rule, [text], n)[0]


def chat_replies(checkpoint: Path, rule: AbstainRule, texts: list[str], n: int = 40) -> list[tuple[str, bool]]:
    """`tilelli chat`'s greedy replies to `texts`, one conversation."""
    session = ChatSession(load_decoder(checkpoint, "native", 1), SamplingConfig(max_new_tokens=n, temperature=0),
                          rule)
    return [(r.text, r.abstained) for r in map(session.reply, texts)]


def detector_rule(checkpoint: Path, text: str, answers: bool, margin: float = 1e-6) -> tuple[AbstainRule, str]:
    """A rule with a random refusal detector whose threshold lies `margin` above (the rule answers
    `text`) or below (it abstains) the detector's log-odds for `text` as Python measures it, and
    the refusal it abstains with. The surprise never decides (its threshold is out of reach)."""
    rng = np.random.default_rng(0)
    detector = Detector(tuple(rng.normal(0.0, 0.1, 2 * 256 + 2).tolist()), float(rng.normal()))
    s = measure(load_decoder(checkpoint, "native", 1), [turn(text)])[0]
    score = detector.score(s.features)
    assert np.isfinite(score)
    return AbstainRule(score + (margin if answers else -margin), 1e9, detector=detector), REASONS[s.likelier]
