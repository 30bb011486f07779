"""Helpers of the export tests (test_runner.py, test_web.py): tiny checkpoints, the reference
outputs of `tilelli generate` and `tilelli chat`, and an export through the CLI."""

from __future__ import annotations

from pathlib import Path

from test_engine import saved

from tilelli.chat.abstain import AbstainRule
from tilelli.chat.session import ChatSession
from tilelli.cli import main
from tilelli.infer import load_decoder
from tilelli.infer.generate import SamplingConfig
from tilelli.model.checkpoint import SHIPPED_DIR

PROMPT = "Once upon a time"
# (named config, overrides, how it is stored): a ternary and an FP32 model
MODELS = {"ternary": ("tilelli-lite-ternary", {}, "packed"), "fp32": ("vanilla-fp32", {}, "bf16")}
SHIPPED = SHIPPED_DIR / "tilelli-lite-ternary"


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


def export(checkpoint: Path, out: Path, form: str) -> Path:
    """`tilelli export --checkpoint CHECKPOINT --FORM --out OUT`."""
    assert main(["export", "--checkpoint", str(checkpoint), f"--{form}", "--out", str(out)]) == 0
    return out


def generated(checkpoint: Path, capsysbinary, n: int = 64) -> bytes:
    """What `tilelli generate --temperature 0 --max-new-tokens N` prints for PROMPT."""
    capsysbinary.readouterr()
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", PROMPT, "--temperature", "0",
                 "--max-new-tokens", str(n), "--threads", "1"]) == 0
    return capsysbinary.readouterr().out


def chat_reply(checkpoint: Path, rule: AbstainRule, text: str, n: int = 40) -> tuple[str, bool]:
    """`tilelli chat`'s greedy reply to `text` (the session the chat command runs)."""
    session = ChatSession(load_decoder(checkpoint, "native", 1), SamplingConfig(max_new_tokens=n, temperature=0),
                          rule)
    r = session.reply(text)
    return r.text, r.abstained
