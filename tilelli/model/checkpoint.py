"""Checkpoints: a directory with `config.json` (what the model is) and `model.safetensors`
(its weights). Loading never unpickles anything: JSON and safetensors only.

    config.json = {"format": "tilelli", "format_version": 1, "packed": bool,
                   "model": ModelConfig.to_dict(), "params": int, ...caller's metadata}

FP32 checkpoints hold the state_dict (latent weights). A *packed* checkpoint of a ternary
model stores every quantized `TernaryModule` as `<prefix>.trits` (uint8, five trits per byte,
see `tilelli.model.packing`) plus `<prefix>.scale` (float32, one per tensor or per row), with the
weight shapes in the safetensors metadata; norms, positional embedding, SSM scalars and
router stay FP32. Its config.json adds `ternary_weights`, `packed_bytes` and
`bits_per_weight` (trit + scale bytes per ternary weight, from the bytes really written).
Loading a packed checkpoint gives logits bit-identical to the latent model's quantized
forward, and the model holds int8 trits instead of FP32 latent weights.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save as safetensors_bytes

from tilelli.errors import TilelliError, shown
from tilelli.model.checkpoint_files import (  # noqa: F401  (re-exported: the torch-free half of this module)
    CONFIG_FILE,
    DEFAULT_MODEL,
    FORMAT,
    FORMAT_VERSION,
    SHIPPED_DIR,
    WEIGHTS_FILE,
    checkpoint_dir,
    default_checkpoint,
    model_config,
    read_config,
    read_weights,
)
from tilelli.model.config import ModelConfig
from tilelli.model.packing import pack_trits, packed_size, unpack_trits
from tilelli.model.ternary import TernaryModule

_META_SHAPES = "tilelli.packed_shapes"  # safetensors metadata: JSON {prefix: weight shape}
_META_ALIASES = "tilelli.aliases"  # JSON {name: name it shares storage with}; read_weights resolves it
_RESERVED = ("format", "format_version", "packed", "weights_dtype", "model", "params", "ternary_weights",
             "packed_bytes", "bits_per_weight", "file_bytes")
# tensors a TernaryModule owns itself; a packed checkpoint replaces them by .trits / .scale
_TERNARY_OWN = ("weight", "scale", "packed_trits", "packed_scale")


# --- save -------------------------------------------------------------------------------

def save(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None,
         packed: bool = False, bf16: bool = False) -> Path:
    """Write `model` to the directory `path` (created if needed); returns the directory.

    `packed=True` stores the quantized layers as trits (only for a ternary config).
    `bf16=True` stores the floating-point tensors of an unpacked checkpoint in bfloat16, half
    the bytes; loading casts them back to FP32 (`tilelli export --bf16` measures what that
    costs in bits per byte before it ships such a file).
    `extra` is JSON-serialisable metadata (step, command line, git hash, ...) added to
    config.json. Each file is written to a temporary name and then renamed into place.
    """
    config = _config_of(model)
    if packed and not config.ternary.quantize:
        raise TilelliError("packed export needs a ternary model (config ternary.quantize=True); "
                           "this model is FP32 — save it with packed=False")
    if packed and bf16:
        raise TilelliError("bf16 applies to unpacked checkpoints; a packed one keeps its few FP32 tensors exact")
    if not packed and _packed_modules(model, loaded_only=True):
        raise TilelliError("this model was loaded from a packed checkpoint and has no FP32 latent "
                           "weights left; save it with packed=True")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra metadata may not set {clash}: checkpoint.save writes those itself")

    tensors, metadata, stats = _packed_state(model) if packed else (_plain_state(model), {}, {})
    tensors, aliases = _dedupe(tensors)  # before any cast, which would hide shared storage
    if bf16:
        tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
    if aliases:
        metadata[_META_ALIASES] = json.dumps(aliases)
    blob = safetensors_bytes(tensors, metadata=metadata or None)
    params = model.num_params() if hasattr(model, "num_params") else _count_params(model)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "packed": bool(packed),
              "weights_dtype": "bfloat16" if bf16 else "float32",
              "model": config.to_dict(), "params": int(params), **stats,
              "file_bytes": len(blob), **extra}
    text = json.dumps(header, indent=2) + "\n"  # fails here, before anything is written

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TilelliError(f"cannot save a checkpoint to {path}: it is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)
    _write_atomic(path / WEIGHTS_FILE, blob)
    _write_atomic(path / CONFIG_FILE, text.encode())
    return path


def _config_of(model: nn.Module) -> ModelConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError("save() needs a tilelli model with a ModelConfig `.config`, "
                        f"got {type(model).__name__}")
    return config


def _packed_modules(model: nn.Module, loaded_only: bool = False) -> dict[str, TernaryModule]:
    """Every quantized ternary layer by its state_dict prefix (or only those holding trits)."""
    return {name: m for name, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, TernaryModule) and m.quantized
            and (not loaded_only or "packed_trits" in m._buffers)}


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def _packed_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    """(tensors, safetensors metadata, config.json stats) of a packed checkpoint."""
    mods = _packed_modules(model)
    own = {f"{prefix}.{name}" for prefix in mods for name in _TERNARY_OWN}
    tensors = {k: v for k, v in model.state_dict().items() if k not in own}
    shapes: dict[str, list[int]] = {}
    n_weights = trit_bytes = scale_bytes = 0
    for prefix, m in mods.items():
        codes, scale = m.export_trits()  # (rows, cols) int8, (rows,) or (1,) float32
        shape = list(m.packed_shape if "packed_trits" in m._buffers else m.weight.shape)
        trits = torch.from_numpy(pack_trits(codes))
        tensors[f"{prefix}.trits"] = trits
        tensors[f"{prefix}.scale"] = scale.detach().float().cpu().reshape(-1)
        shapes[prefix] = shape
        n_weights += codes.numel()
        trit_bytes += trits.numel()
        scale_bytes += tensors[f"{prefix}.scale"].numel() * 4
    stats = {"ternary_weights": n_weights, "packed_bytes": trit_bytes,
             "bits_per_weight": (trit_bytes + scale_bytes) * 8 / max(n_weights, 1)}
    return tensors, {_META_SHAPES: json.dumps(shapes)}, stats


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per shared tensor (tied weights) and record the others as aliases;
    every kept tensor becomes its own contiguous CPU copy, as safetensors requires."""
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        t = t.detach()
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
               t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        out[name] = t.to("cpu", copy=True).contiguous()
    return out, aliases


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- load -------------------------------------------------------------------------------

def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model described by `path/config.json` with the weights of
    `path/model.safetensors` (FP32 or packed) on `device`, in eval mode."""
    from tilelli.model.models import build_model, count_params  # models import the pathways; keep this module light

    ckpt = checkpoint_dir(path)
    cfg, config = read_config(ckpt), model_config(ckpt)
    arrays, metadata = read_weights(ckpt / WEIGHTS_FILE)
    stored = sum(a.nbytes for a in arrays.values())
    params = count_params(config)  # on the meta device: no memory
    if params > _MAX_PARAMS_PER_BYTE * stored + 1024:  # before building it allocates them
        raise TilelliError(_mismatch(ckpt, f"the config describes {params:,} parameters but the "
                                           f"weights hold only {stored:,} bytes"))
    tensors = {name: _tensor(a) for name, a in arrays.items()}

    model = build_model(config)
    if cfg["packed"]:
        if not config.ternary.quantize:
            raise TilelliError(f"{ckpt} says it is packed but its model config is FP32 "
                               "(ternary.quantize=False); config.json does not belong to these weights")
        _load_trits(model, tensors, metadata, ckpt)
    _load_state(model, tensors, ckpt)
    return model.to(device).eval()


# 5 trits per byte: no real checkpoint stores more parameters per byte than a packed one does
_MAX_PARAMS_PER_BYTE = 5


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A torch copy of an array `read_weights` gave (raw-uint16 bf16 back to bfloat16)."""
    if a.dtype == np.uint16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def _load_trits(model: nn.Module, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                ckpt: Path) -> None:
    """Unpack `<prefix>.trits` / `<prefix>.scale` into every quantized layer (popping them)."""
    where = ckpt / WEIGHTS_FILE
    try:
        shapes = json.loads(metadata[_META_SHAPES])
    except (KeyError, json.JSONDecodeError, RecursionError):
        shapes = None
    if not isinstance(shapes, dict):
        raise TilelliError(f"{where} has no packed weight shapes in its metadata although "
                           f"{CONFIG_FILE} says packed; re-save the checkpoint")
    mods = _packed_modules(model)
    for prefix in shapes:
        if prefix not in mods:
            raise TilelliError(_mismatch(ckpt, f"the weights have packed tensor {shown(prefix + '.trits')} that "
                                               "the model config has no quantized layer for"))
    for prefix, m in mods.items():
        name = f"{prefix}.trits"
        if prefix not in shapes or name not in tensors or f"{prefix}.scale" not in tensors:
            raise TilelliError(_mismatch(ckpt, f"the weights lack packed tensor '{name}'"))
        want = tuple(m.packed_shape if "packed_trits" in m._buffers else m.weight.shape)
        shape = tuple(shapes[prefix]) if isinstance(shapes[prefix], list) else None
        if shape != want:
            raise TilelliError(_mismatch(ckpt, f"'{name}' holds a weight of shape {shown(shapes[prefix], 40)} but "
                                               f"the model config needs {want}"))
        trits, scale = tensors.pop(name), tensors.pop(f"{prefix}.scale")
        n = math.prod(shape)
        if trits.dtype != torch.uint8 or trits.numel() != packed_size(n):
            raise TilelliError(f"{where} is corrupt: '{name}' has {trits.numel()} {trits.dtype} values, "
                               f"a {list(shape)} weight needs {packed_size(n)} bytes; re-save the checkpoint")
        if scale.numel() not in (1, shape[0]):
            raise TilelliError(_mismatch(ckpt, f"'{prefix}.scale' has {scale.numel()} values for "
                                               f"{shape[0]} rows"))
        try:
            codes = unpack_trits(trits.numpy(), n)
        except ValueError as e:
            raise TilelliError(f"{where}: '{name}': {e}; re-save the checkpoint") from None
        codes2d = torch.from_numpy(np.ascontiguousarray(codes)).reshape(shape[0], -1)
        m.load_trits(codes2d, scale.float())


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], ckpt: Path) -> None:
    """Strict load of everything but the trits (already in place): same keys, same shapes."""
    expected = model.state_dict()
    loaded_trits = {f"{p}.{n}" for p in _packed_modules(model, loaded_only=True)
                    for n in ("packed_trits", "packed_scale")}
    want = {k: v for k, v in expected.items() if k not in loaded_trits}
    missing = [k for k in want if k not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise TilelliError(_mismatch(ckpt, f"the weights lack tensor '{missing[0]}'{more}"))
    unexpected = [k for k in tensors if k not in want]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise TilelliError(_mismatch(ckpt, f"the weights have tensor {shown(unexpected[0])}{more} that the "
                                           "model config does not"))
    for k, v in want.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise TilelliError(_mismatch(ckpt, f"tensor '{k}' has shape {tuple(tensors[k].shape)} in "
                                               f"{WEIGHTS_FILE} but the model config needs {tuple(v.shape)}"))
    state = {k: expected[k] for k in loaded_trits}
    state.update(tensors)
    model.load_state_dict(state, strict=True)


def _mismatch(ckpt: Path, what: str) -> str:
    return (f"{ckpt}: {CONFIG_FILE} does not match {WEIGHTS_FILE}: {what}; "
            "was config.json edited or copied from another run?")
