"""`tilelli export`: turn a training checkpoint into a checkpoint that ships.

A shipped checkpoint is a directory with the model (`config.json`, `model.safetensors`) plus
the `run.json` and `metrics.jsonl` of the run it came from, so anyone can see how it was made.
Ternary models ship as packed trits; FP32 ones may ship in bf16, but only after this command
has measured that bf16 moves bits per byte on validation data by less than a threshold.

Two more forms need no Python to run (both read the model from one `model.tlm` file,
`tilelli.infer.model_file`): `--web`, a static site that runs the model in a browser tab
(`tilelli.web.site`), and `--native`, the standalone runner binary (`tilelli.infer.runner`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tilelli.commands.options import add_threads_argument, float_range
from tilelli.errors import TilelliError
from tilelli.train.paths import check_writable_dir, created_dirs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint, or a run dir (its newest)")
    parser.add_argument("--best", action="store_true",
                        help="with a run dir: the kept checkpoint with the lowest valid bpb instead of the newest")
    parser.add_argument("--out", required=True, type=Path, help="directory to write; must not exist yet")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--packed", action="store_true", help="store ternary layers as trits (ternary models)")
    form.add_argument("--bf16", action="store_true", help="store weights in bfloat16 (needs --check-data)")
    form.add_argument("--web", action="store_true",
                      help="a static site (index.html, engine.wasm, model.tlm) that chats in the browser tab")
    form.add_argument("--native", action="store_true",
                      help="a standalone runner binary (tilelli-run) and its model.tlm, no Python needed")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                        help="with --web: the page runs the integer path (ternary layers take int8 inputs; "
                             "faster, docs/engine.md gives its bpb cost): the default for ternary models, "
                             "--no-int8 for the exact float path; the runner takes --int8 / --no-int8 itself")
    parser.add_argument("--check-data", default=None,
                        help="valid data (file or prepared dir) on which --bf16 must keep bpb within --max-change")
    parser.add_argument("--max-change", type=float_range(0.0, lo_open=True), default=0.002,
                        help="largest |bpb(bf16) - bpb(fp32)| accepted, a finite number > 0 (default 0.002)")
    add_threads_argument(parser, zero="torch's default")


def _bpb(model: Any, data: Path) -> tuple[float, int]:
    from tilelli.train.evaluate import evaluate_bpb

    result = evaluate_bpb(model, data, batch_size=16, seq_len=min(256, model.config.max_seq_len))
    return result.bpb, result.bytes


def _source_dir(args: argparse.Namespace) -> Path:
    from tilelli.model.checkpoint import checkpoint_dir
    from tilelli.model.checkpoint_files import list_checkpoints
    from tilelli.train.runs import best_checkpoint

    source = Path(args.checkpoint)
    if args.best:
        if not list_checkpoints(source):
            raise TilelliError(f"--best needs a training run dir; {source} holds no checkpoints/")
        return best_checkpoint(source)
    return checkpoint_dir(source)


def _check_args(args: argparse.Namespace) -> None:
    """What can be checked before torch loads: the paths given and the options that go together."""
    if args.out.exists():
        raise TilelliError(f"{args.out} already exists; shipped checkpoints are written once, choose another --out")
    check_writable_dir(args.out, "--out")
    if not Path(args.checkpoint).exists():
        raise TilelliError(f"no checkpoint at {args.checkpoint}: the directory does not exist")
    if args.int8 is not None and not args.web:
        raise TilelliError("--int8 / --no-int8 go with --web (tilelli-run takes them when it runs; generate, chat "
                           "and serve take them too)")
    if args.bf16 and not args.check_data:
        raise TilelliError("--bf16 needs --check-data (valid data to measure what bf16 costs in bpb)")
    if args.check_data:
        data = Path(args.check_data)
        if not (data / "valid.bin" if data.is_dir() else data).is_file():
            raise TilelliError(f"--check-data {args.check_data}: no such file or prepared data dir")


def _write_whole(out: Path, fill: Callable[[Path], None]) -> None:
    """`fill(tmp)` into a hidden directory beside `out`, renamed to `out` when complete: a failure
    (a full disk included) leaves no --out, empty or half-written, that a retry would then refuse
    as existing."""
    with created_dirs(out.parent):
        tmp = out.parent / f".{out.name}.{os.getpid()}.partial"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run with our pid: never anyone else's
        tmp.mkdir()
        try:
            fill(tmp)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _write_shipped(model: Any, source: Path, args: argparse.Namespace, extra: dict[str, Any]) -> None:
    from tilelli.model.checkpoint import save

    def fill(tmp: Path) -> None:
        save(model, tmp, extra=extra, packed=args.packed, bf16=args.bf16)
        run_dir = source.parent.parent  # RUN/checkpoints/step-N
        for name in ("run.json", "metrics.jsonl"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)

    _write_whole(args.out, fill)


def _export_runnable(args: argparse.Namespace) -> int:
    """--web or --native: the model file plus the program that reads it (torch-free)."""
    from tilelli.infer.engine import unsupported
    from tilelli.infer.model_file import MODEL_FILE, settings_of, write_model_file
    from tilelli.infer.weights import engine_tensors, read_checkpoint

    source = _source_dir(args)
    config, weights = read_checkpoint(source)
    why = unsupported(config)
    if why:
        raise TilelliError(f"only the native engine's models export with --{'web' if args.web else 'native'}: {why}")
    tensors, settings = engine_tensors(config, weights), settings_of(source)
    if args.web:
        from tilelli.web.site import write_site

        def program(tmp: Path) -> None:
            write_site(tmp, config.ternary.quantize if args.int8 is None else args.int8)
    else:
        from tilelli.infer.runner import RUNNER, build_runner

        runner = build_runner()

        def program(tmp: Path) -> None:
            shutil.copyfile(runner, tmp / RUNNER)
            (tmp / RUNNER).chmod(0o755)

    def fill(tmp: Path) -> None:
        program(tmp)
        write_model_file(tmp / MODEL_FILE, config, tensors, settings)

    _write_whole(args.out, fill)
    files = ", ".join(f"{p.name} {p.stat().st_size / 1024:,.0f} KB" for p in sorted(args.out.iterdir()))
    kind = "chat model" if settings.chat else "text model"
    print(f"{args.out}: {files} ({kind}, from {source})")
    if args.web:
        print(f"serve it with any static file server, e.g. python3 -m http.server -d {args.out}")
    else:
        print(f"run it: {args.out / RUNNER} {args.out / MODEL_FILE} --help")
    return 0


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.web or args.native:
        return _export_runnable(args)

    import torch

    from tilelli.model.checkpoint import load, read_config
    from tilelli.model.checkpoint_files import TEMPLATE_KEY

    if args.threads:
        torch.set_num_threads(args.threads)
    source = _source_dir(args)
    src_cfg = read_config(source)
    model = load(source)
    extra: dict[str, Any] = {k: src_cfg[k] for k in ("step", "tokens", "train", TEMPLATE_KEY) if k in src_cfg}
    extra["exported_from"] = str(source)
    init_from = src_cfg.get("train", {}).get("init_from")
    if init_from:  # fine-tuned from another checkpoint: record what that one had seen
        init_cfg = read_config(init_from)
        extra["init"] = {"checkpoint": str(init_from), **{k: init_cfg[k] for k in ("step", "tokens") if k in init_cfg}}
    if args.bf16:
        data = Path(args.check_data)
        data = data / "valid.bin" if data.is_dir() else data
        if not data.is_file():
            raise TilelliError(f"--check-data {args.check_data}: no such file or prepared data dir")
        fp32_bpb, n_bytes = _bpb(model, data)
        rounded = load(source)
        with torch.no_grad():
            for t in rounded.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.to(torch.bfloat16))  # what loading the bf16 file will give
        bf16_bpb, _ = _bpb(rounded, data)
        change = bf16_bpb - fp32_bpb
        extra["bf16_check"] = {"data": str(data), "bytes": n_bytes, "fp32_bpb": fp32_bpb, "bf16_bpb": bf16_bpb,
                               "change": change, "max_change": args.max_change}
        print(f"bf16 check on {data}: {fp32_bpb:.5f} -> {bf16_bpb:.5f} bpb (change {change:+.5f})")
        if not math.isfinite(change) or abs(change) >= args.max_change:
            raise TilelliError(f"bf16 changes valid bpb by {change:+.5f} (limit {args.max_change}); "
                               "export without --bf16")
    _write_shipped(model, source, args, extra)
    header = json.loads((args.out / "config.json").read_text())
    kind = "packed trits" if args.packed else header["weights_dtype"]
    bits = f", {header['bits_per_weight']:.3f} bits/ternary weight" if args.packed else ""
    print(f"{args.out}: {kind}, {header['file_bytes'] / 1024:,.0f} KB{bits} (from {source})")
    return 0
