"""The torch-free half of checkpoints: find a checkpoint directory, read its config.json and its
model.safetensors, checking both.

Kept apart from `tilelli.model.checkpoint` (which imports torch to build models) so that the native
inference path and the CLI's argument checks can open a checkpoint in milliseconds. This is the
one reading path of every command (eval, generate, chat, serve, export) and of the native engine:
a damaged or hostile file becomes a `TilelliError` of one short line that never quotes the file,
whatever is wrong with it (a header length beyond the file, a tensor whose bytes run past the end,
a config value of the wrong type).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from tilelli.errors import TilelliError, shown
from tilelli.model.config import ModelConfig

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
    _model_config(cfg, cfg_path)  # every field type- and range-checked, before anyone compares one
    return cfg


def _model_config(cfg: dict[str, Any], cfg_path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(cfg["model"])
    except TilelliError as e:
        raise TilelliError(f"{cfg_path}: {e}; the checkpoint is damaged, re-save it") from None
    except TypeError as e:  # a required field missing
        raise TilelliError(f"{cfg_path}: bad model config ({shown(str(e), 120)}); re-save the checkpoint") from None


def model_config(path: str | os.PathLike) -> ModelConfig:
    """The checked `ModelConfig` of the checkpoint at `path`."""
    ckpt = checkpoint_dir(path)
    return _model_config(read_config(ckpt), ckpt / CONFIG_FILE)


# --- model.safetensors ----------------------------------------------------------------------

# safetensors dtype -> numpy dtype; BF16 stays raw uint16 (numpy has no bfloat16; see as_float32)
DTYPES: dict[str, Any] = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
                          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                          "BOOL": np.bool_}
MAX_HEADER = 100 << 20  # the safetensors reference reader's own limit on the JSON header
ALIASES = "tilelli.aliases"  # safetensors metadata: JSON {name: name it shares storage with}


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_weights(file: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> read-only array over a memory map, metadata) of a safetensors file, every entry
    checked against the file: the header length against the file size, each tensor's dtype,
    shape and byte range against the data it claims (aliases resolved). BF16 comes as uint16."""
    def corrupt(what: str) -> TilelliError:
        return TilelliError(f"{file} is truncated or corrupt: {what}; re-save or re-download the checkpoint")

    if not file.is_file():
        raise TilelliError(f"{file} is missing; the checkpoint is incomplete, re-save it")
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise corrupt(f"{size} bytes, less than the 8-byte header length")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise TilelliError(f"cannot read {file} ({e.strerror or e}); the checkpoint is incomplete, "
                           "re-save it") from None
    n = int.from_bytes(buf[:8], "little")
    if n > size - 8 or n > MAX_HEADER:
        raise corrupt(f"its header claims {n:,} bytes but the file has {size - 8:,} after the length")
    try:
        header = json.loads(bytes(buf[8:8 + n]).decode("utf-8"))
    except UnicodeDecodeError as e:
        raise corrupt(f"its header is not UTF-8 (byte {8 + e.start})") from None
    except json.JSONDecodeError as e:
        raise corrupt(f"its header is not JSON ({e.msg} at byte {8 + e.pos})") from None
    except RecursionError:
        raise corrupt("its header nests too deeply") from None
    if not isinstance(header, dict):
        raise corrupt("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt("its __metadata__ is not an object of strings")
    data = size - 8 - n
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        where = f"tensor {shown(name)}"
        if not isinstance(info, dict) or info.get("dtype") not in DTYPES:
            raise corrupt(f"{where} has no known dtype")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise corrupt(f"{where} has no valid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
                and offsets[0] <= offsets[1] <= data):
            raise corrupt(f"{where}'s data offsets are not inside the file's {data:,} data bytes")
        dtype = np.dtype(DTYPES[info["dtype"]])
        count = math.prod(shape)
        if offsets[1] - offsets[0] != count * dtype.itemsize:
            raise corrupt(f"{where} holds {offsets[1] - offsets[0]:,} bytes, its {info['dtype']} shape "
                          f"{shown(shape, 40)} needs {count * dtype.itemsize:,}")
        tensors[name] = np.frombuffer(buf, dtype=dtype, count=count, offset=8 + n + offsets[0]).reshape(shape)
    try:
        aliases = json.loads(metadata.get(ALIASES, "{}"))
    except (json.JSONDecodeError, RecursionError):
        aliases = None
    if not isinstance(aliases, dict):
        raise corrupt(f"its {ALIASES} metadata is not a JSON object")
    for name, target in aliases.items():
        if not isinstance(target, str) or target not in tensors:
            raise corrupt(f"tensor {shown(name)} aliases the missing {shown(target)}")
        tensors[name] = tensors[target]
    return tensors, metadata


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
