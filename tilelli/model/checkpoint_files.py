"""The torch-free half of checkpoints: find a checkpoint directory and read its config.json.

Kept apart from `tilelli.model.checkpoint` (which imports torch to build models) so that the native
inference path and the CLI's argument checks can open a checkpoint in milliseconds.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tilelli.errors import TilelliError

FORMAT = "tilelli"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# checkpoints that ship with the repository; `tilelli generate` without --checkpoint uses DEFAULT_MODEL
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "checkpoints"
DEFAULT_MODEL = "tilelli-lite-ternary"
CHAT_PREFIX = "tilelli-chat-"  # shipped chat models: tilelli-chat-<base>
DEFAULT_CHAT_MODEL = "tilelli-chat-lite-ternary"  # `tilelli chat` and `tilelli serve` without --checkpoint
# What text a model was trained to continue: config.json's "template" is "chat" (the turn format
# of tilelli.chat.template) for a model trained on a `tilelli prepare-chat` set, else "plain".
TEMPLATE_KEY = "template"
# a training run directory keeps its checkpoints as CHECKPOINTS/step-NNNNNNN/
CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"step-(\d+)")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are never listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory `path` names: itself, the directory of a file inside it, or a
    training run's newest checkpoint; a clear error when there is none."""
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent  # the user pointed at a file inside the checkpoint: fine
    if not path.exists():
        raise TilelliError(f"no checkpoint at {path}: the directory does not exist")
    if not path.is_dir():
        raise TilelliError(f"{path} is not a checkpoint directory (expected a directory holding "
                           f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    if not (path / CONFIG_FILE).is_file() and list_checkpoints(path):
        path = list_checkpoints(path)[-1]  # a training run directory: its newest checkpoint
    if not (path / CONFIG_FILE).is_file():
        raise TilelliError(f"{path} is not a tilelli checkpoint: it has no {CONFIG_FILE} "
                           f"(a checkpoint directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    return path


def data_template(meta: dict[str, Any]) -> str:
    """The template of a prepared data directory, from its meta.json: a `tilelli prepare-chat` set
    names the chat format ("tilelli chat v1: ..."), a `tilelli prepare` set "tilelli-bytes"."""
    return "chat" if str(meta.get("format", "")).startswith("tilelli chat") else "plain"


def is_chat_checkpoint(path: str | os.PathLike) -> bool:
    """Whether prompts go to this checkpoint in the chat template: what its own config.json says
    it was trained on (not its name: a chat model may be called anything)."""
    return read_config(path).get(TEMPLATE_KEY) == "chat"


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of a checkpoint's config.json (format and version verified)."""
    ckpt = checkpoint_dir(path)
    cfg_path = ckpt / CONFIG_FILE
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TilelliError(f"{cfg_path} is not valid JSON ({e}); the checkpoint is damaged, "
                           "re-save it or restore config.json") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise TilelliError(f"{cfg_path} is not a tilelli checkpoint config (format={got!r}, "
                           f"expected {FORMAT!r})")
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade tilelli" if isinstance(version, int) and version > FORMAT_VERSION else \
            "re-save the checkpoint with this tilelli"
        raise TilelliError(f"{ckpt} was written by tilelli format {version}; this tilelli reads "
                           f"{FORMAT_VERSION} ({hint})")
    if not isinstance(cfg.get("model"), dict) or not isinstance(cfg.get("packed"), bool):
        raise TilelliError(f"{cfg_path} lacks a 'model' config object or a boolean 'packed' flag; "
                           "the checkpoint is damaged, re-save it")
    return cfg


def shipped_base_checkpoints() -> list[Path]:
    """The shipped language models (not the chat models fine-tuned from them), sorted by name."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p for p in SHIPPED_DIR.iterdir()
                  if (p / CONFIG_FILE).is_file() and not p.name.startswith(CHAT_PREFIX))


def default_checkpoint(model: str | None = None, variable: str = "TILELLI_CHECKPOINT") -> Path:
    """$`variable` if set, else the shipped checkpoint `model` (default DEFAULT_MODEL) of a checkout."""
    env = os.environ.get(variable)
    path = Path(env) if env else SHIPPED_DIR / (model or DEFAULT_MODEL)
    if not env and not (path / CONFIG_FILE).is_file():
        raise TilelliError(f"no --checkpoint given and the shipped model is not at {path} (it comes with a clone "
                           "of the repository, installed with pip install -e .); pass --checkpoint DIR")
    return path
