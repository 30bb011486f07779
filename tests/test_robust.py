"""Robust at every door: each bad input of issue 24 is a regression test here, plus a property-based
fuzz of checkpoint files and config values, the native engine under AddressSanitizer on mutated
checkpoints, and disk-full failures injected into export, prepare and train.

The rule every case checks: a clean one-line error (exit code 2, no traceback, at most 300 bytes
beyond the paths it names) or a correct result; never a crash, a hang, an out-of-bounds read, a
500 or lost data.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny
from test_cli_promises import TINY_RUN, one_error_line, probe

import tilelli.train.trainer as trainer_mod
from tilelli.cli import main
from tilelli.commands import chat as chat_cmd
from tilelli.commands import options
from tilelli.errors import Interrupted, TilelliError
from tilelli.infer import load_decoder
from tilelli.infer.engine import NativeModel, library
from tilelli.infer.generate import SamplingConfig
from tilelli.limits import SEED_MAX, cpu_count, utf8
from tilelli.model import checkpoint
from tilelli.model.checkpoint import load, save
from tilelli.model.models import build_model
from tilelli.train.config import TrainConfig
from tilelli.train.runs import list_checkpoints

MAX_LINE = 300  # bytes an error may take beyond the paths it names


def short_enough(message: str, *paths: Path) -> bool:
    for p in paths:
        message = message.replace(str(p), "")
    return "\n" not in message and len(message.encode()) <= MAX_LINE


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny packed ternary Lite checkpoint (random weights): trits, scales and FP32 tensors."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("robust") / "tiny"
    save(build_model(tiny("tilelli-lite-ternary", d_model=16, n_layers=1, max_seq_len=64)), path, packed=True)
    return path


def variant(src: Path, dst: Path, model: dict | None = None, data: bytes | None = None) -> Path:
    """A copy of checkpoint `src` with config.json's model fields changed and/or other weight bytes."""
    shutil.copytree(src, dst)
    if model:
        cfg = json.loads((dst / "config.json").read_text())
        cfg["model"].update(model)
        (dst / "config.json").write_text(json.dumps(cfg))
    if data is not None:
        (dst / "model.safetensors").write_bytes(data)
    return dst


def header(path: Path) -> tuple[int, dict]:
    blob = (path / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    return n, json.loads(blob[8:8 + n])


# --- 1. numeric options: ranges checked while parsing, before torch -----------------------------------

def test_every_numeric_option_is_range_checked_before_torch(data_dir, tmp_path):
    ck = ["--checkpoint", str(tmp_path)]
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    cases = [
        (["generate", "--prompt", "a", "--threads", "-1"], "--threads"),
        (["generate", "--prompt", "a", "--seed", "-1"], "--seed"),
        (["generate", "--prompt", "a", "--seed", str(SEED_MAX + 1)], "--seed"),
        (["generate", "--prompt", "a", "--temperature", "inf"], "finite"),
        (["generate", "--prompt", "a", "--temperature", "nan"], "finite"),
        (["generate", "--prompt", "a", "--top-p", "nan"], "--top-p"),
        (["generate", "--prompt", "a", "--max-new-tokens", "-5"], "--max-new-tokens"),
        (["chat", "--prompt", "a", "--json", "--temperature", "inf"], "finite"),
        (["chat", "--prompt", "a", "--seed", "-1"], "--seed"),
        (["serve", "--seed", "-1"], "--seed"),
        (["serve", "--threads", "-1"], "--threads"),
        (["serve", "--port", "abc"], "--port"),
        (["eval", "--data", str(afile), "--threads", "-1"], "--threads"),
        (["eval", "--data", str(afile), "--bootstrap", "1"], "--bootstrap"),
        (["eval", "--data", str(afile), "--seed", "-1"], "--seed"),
        (["export", *ck, "--out", str(tmp_path / "o"), "--threads", "-1"], "--threads"),
        (["export", *ck, "--out", str(tmp_path / "o"), "--max-change", "nan"], "--max-change"),
        (["export", *ck, "--out", str(tmp_path / "o"), "--max-change", "inf"], "--max-change"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--threads", "-2"], "--threads"),
        (["train", "--data", str(afile), "--out", str(tmp_path / "run")], "is a file; give the directory"),
        (["prepare", str(afile), "--out", str(tmp_path / "b"), "--seed", "-1"], "--seed"),
        (["prepare", str(afile), "--out", str(tmp_path / "b"), "--valid-fraction", "nan"], "--valid-fraction"),
        (["bench", "--repeats", "0"], "--repeats"),
        (["bench", "--threads", "-1"], "--threads"),
        (["probe", "--threads", "x"], "--threads"),
    ]
    failures = []
    for (args, expect), (code, torch_loaded, err) in zip(cases, probe([a for a, _ in cases]), strict=True):
        lines = err.strip().splitlines()
        if not (code == 2 and not torch_loaded and len(lines) == 1 and expect in lines[0] and "Traceback" not in err):
            failures.append(f"{args}: exit {code}, torch {torch_loaded}, stderr {err!r}")
    assert not failures, "\n".join(failures)


def test_too_many_threads_are_clamped_with_a_note(capsys):
    assert options.threads("100000") == cpu_count()
    assert f"--threads 100000 is more than the {cpu_count()} CPUs" in capsys.readouterr().err
    assert options.threads("1") == 1 and options.threads("0") == 0


def test_the_library_refuses_what_the_cli_refuses(ckpt):
    for bad in (dict(seed=-1), dict(seed=SEED_MAX + 1), dict(temperature=float("inf")), dict(temperature=float("nan"))):
        with pytest.raises(TilelliError):
            SamplingConfig(**bad)
    with pytest.raises(TilelliError, match="--seed"):
        TrainConfig(seed=-1)
    with pytest.raises(TilelliError, match="threads"):
        TrainConfig(threads=100_000)
    for engine in ("auto", "torch"):
        with pytest.raises(TilelliError, match="threads"):
            load_decoder(ckpt, engine, threads=100_000)


def test_generate_with_too_many_threads_runs(ckpt, capsysbinary):
    assert main(["generate", "--checkpoint", str(ckpt), "--prompt", "Once", "--max-new-tokens", "4",
                 "--threads", "100000", "--temperature", "0"]) == 0
    assert capsysbinary.readouterr().out.startswith(b"Once")


# --- 2. checkpoints: one validated reading path ---------------------------------------------------------

ENGINES = ["native", "torch"]


def _generate(path: Path, engine: str, *extra: str) -> int:
    return main(["generate", "--checkpoint", str(path), "--prompt", "Once", "--max-new-tokens", "80",
                 "--engine", engine, "--temperature", "0", *extra])


@pytest.mark.parametrize("engine", ENGINES)
def test_a_config_longer_than_its_position_table_is_a_clean_error(ckpt, tmp_path, capsys, engine):
    if engine == "native" and not library.available():
        pytest.skip("no native engine here")
    bad = variant(ckpt, tmp_path / "long", {"max_seq_len": 4096})
    assert _generate(bad, engine) == 2
    out = capsys.readouterr()
    line = one_error_line("generate", out.err)
    assert ("pos_emb" in line or "parameters" in line) and short_enough(line, bad) and "\0" not in out.out


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("field, value", [("max_seq_len", "abc"), ("d_model", 16.5), ("ternary", 5),
                                          ("n_layers", None), ("n_heads", True)])
def test_config_values_of_the_wrong_type_are_clean_errors(ckpt, tmp_path, capsys, engine, field, value):
    bad = variant(ckpt, tmp_path / "typed", {field: value})
    assert _generate(bad, engine) == 2
    assert field in one_error_line("generate", capsys.readouterr().err)


def test_a_header_length_beyond_the_file_is_short_and_quotes_nothing(ckpt, tmp_path, capsys):
    blob = (ckpt / "model.safetensors").read_bytes()
    bad = variant(ckpt, tmp_path / "hdr", data=struct.pack("<Q", 10**12) + blob[8:])
    for run in (lambda: NativeModel.load(bad), lambda: load(bad)):
        with pytest.raises(TilelliError) as e:
            run()
        assert "1,000,000,000,000" in str(e.value) and short_enough(str(e.value), bad) and "dtype" not in str(e.value)
    assert main(["chat", "--checkpoint", str(bad), "--prompt", "hi"]) == 2
    assert short_enough(one_error_line("chat", capsys.readouterr().err), bad)


@pytest.mark.parametrize("command", ["generate", "chat", "eval"])
def test_corrupt_packed_trits_are_a_clean_error(ckpt, tmp_path, capsys, command):
    n, head = header(ckpt)
    blob = bytearray((ckpt / "model.safetensors").read_bytes())
    start, end = head["head.trits"]["data_offsets"]
    blob[8 + n + start:8 + n + end] = b"\xff" * (end - start)  # bytes no trit packing produces
    bad = variant(ckpt, tmp_path / "trits", data=bytes(blob))
    (tmp_path / "t.txt").write_text("Once upon a time " * 40)
    args = {"generate": ["--prompt", "Once"], "chat": ["--prompt", "hi"],
            "eval": ["--data", str(tmp_path / "t.txt"), "--seq-len", "32"]}[command]
    assert main([command, "--checkpoint", str(bad), *args]) == 2
    line = one_error_line(command, capsys.readouterr().err)
    assert "corrupt packed trits" in line and short_enough(line, bad)


# --- 3. fuzz: mutated files and config values load correctly or fail cleanly --------------------------

def _load_both(path: Path) -> None:
    """Every reader of a checkpoint: the native engine (with a forward step), torch's load."""
    for run in (lambda: NativeModel.load(path, threads=1) if library.available() else None, lambda: load(path)):
        try:
            model = run()
        except TilelliError as e:
            assert short_enough(str(e), path), str(e)[:500]
            continue
        if isinstance(model, NativeModel):
            seq = model.new_sequence()
            assert model.forward([seq], [b"Once upon"]).shape == (1, model.config.vocab_size)


def test_fuzz_checkpoint_bytes_and_config_values(ckpt, tmp_path):
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    blob = (ckpt / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    base_cfg = json.loads((ckpt / "config.json").read_text())
    counter = iter(range(10**6))
    values = st.one_of(st.integers(-2, 5000), st.floats(allow_nan=True), st.text(max_size=8), st.none(),
                       st.booleans(), st.lists(st.integers(), max_size=3))

    @hyp.given(where=st.integers(0, len(blob) - 1), what=st.binary(min_size=1, max_size=64),
               header_only=st.booleans(), field=st.sampled_from(sorted(base_cfg["model"])), value=values,
               change_config=st.booleans())
    @hyp.settings(max_examples=60, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(hyp.HealthCheck))
    def check(where, what, header_only, field, value, change_config):
        at = where % (8 + n) if header_only else where  # half the cases hit the length and JSON header
        data = blob[:at] + what + blob[at + len(what):]
        path = variant(ckpt, tmp_path / f"f{next(counter)}", {field: value} if change_config else None,
                       data=data[:len(blob)])
        _load_both(path)
        shutil.rmtree(path)

    check()


def test_fuzz_truncations(ckpt, tmp_path):
    blob = (ckpt / "model.safetensors").read_bytes()
    for i, cut in enumerate((0, 3, 8, 9, 100, len(blob) // 2, len(blob) - 1)):
        _load_both(variant(ckpt, tmp_path / f"cut{i}", data=blob[:cut]))


ASAN_SCRIPT = textwrap.dedent("""
    import json, shutil, struct, sys
    from pathlib import Path
    from tilelli.errors import TilelliError
    from tilelli.infer.engine import NativeModel, _declare
    from tilelli.kernels.build import NativeLibrary
    import tilelli.infer.engine as engine
    lib = NativeLibrary("engine-asan", Path(engine.__file__).with_name("engine.c"), _declare, "engine (asan)",
                        extra_flags=("-fsanitize=address", "-fno-omit-frame-pointer", "-O1"))
    outcomes = []
    for path in sys.argv[1:]:
        try:
            model = NativeModel.load(path, threads=2, lib=lib)
        except TilelliError as e:
            outcomes.append("error")
            continue
        seqs = [model.new_sequence(), model.new_sequence(8)]
        model.forward(seqs, [bytes(range(40, 40 + model.max_seq_len - 1)), b"abc"], all_logits=True)
        model.forward(seqs, [b"z", b"defg"])
        try:
            model.forward(seqs, [b"yy", b"h"])  # past the first sequence's context: refused, never run
        except TilelliError:
            outcomes.append("ran")
    print(json.dumps(outcomes))
""")


def test_the_engine_under_address_sanitizer_on_mutated_checkpoints(ckpt, tmp_path):
    """engine.c built with -fsanitize=address and loaded into a Python that preloads libasan: any
    out-of-bounds read or write on these checkpoints aborts the process with a report."""
    cc = shutil.which("gcc")
    if cc is None or not library.available():
        pytest.skip("needs gcc and the native engine")
    libasan = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan) or not Path(libasan).exists():
        pytest.skip("gcc has no AddressSanitizer runtime here")
    blob = (ckpt / "model.safetensors").read_bytes()
    n, head = header(ckpt)
    flipped = bytearray(blob)
    start, end = head["pos_emb"]["data_offsets"]
    flipped[8 + n + start:8 + n + start + 64] = b"\x7f" * 64  # huge position values: runs, garbage in
    cases = [variant(ckpt, tmp_path / "same", None),
             variant(ckpt, tmp_path / "flipped", data=bytes(flipped)),
             variant(ckpt, tmp_path / "long", {"max_seq_len": 4096}),
             variant(ckpt, tmp_path / "wide", {"d_model": 32}),
             variant(ckpt, tmp_path / "topk", {"top_k": 300}),
             variant(ckpt, tmp_path / "kernel", {"local_kernel": 9}),
             variant(ckpt, tmp_path / "vocab", {"vocab_size": 300}),
             variant(ckpt, tmp_path / "heads", {"n_heads": 2})]  # same tensor shapes: a valid other model
    env = {**os.environ, "LD_PRELOAD": libasan, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "TILELLI_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", ASAN_SCRIPT, *map(str, cases)], capture_output=True, text=True,
                          env=env, timeout=600)
    if done.returncode != 0 and "ERROR: AddressSanitizer" not in done.stderr and "engine (asan)" in done.stderr:
        pytest.skip(f"the ASan build failed here: {done.stderr.strip().splitlines()[-1][:200]}")
    assert done.returncode == 0 and "AddressSanitizer" not in done.stderr, done.stderr[-3000:]
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcomes == ["ran", "ran"] + ["error"] * (len(cases) - 3) + ["ran"], outcomes


# --- 4. text input: one rule for invalid UTF-8 and lone surrogates ---------------------------------------

def test_utf8_rule():
    assert utf8("héllo", "x") == "héllo".encode()
    assert utf8("h\udcc3\udca9", "x") == "hé".encode()  # bytes argv handed over as surrogates, valid together
    for bad, says in (("hi \udcff\udcfe", "byte 3 is 0xff"), ("a\ud800b", "U+D800"), (b"\xff", "byte 0")):
        with pytest.raises(TilelliError, match="not valid") as e:
            utf8(bad, "--prompt")
        assert says in str(e.value)


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_prompt_that_is_not_utf8_is_the_same_error_as_stdin(ckpt, command):
    cmd = [sys.executable, "-m", "tilelli", command, "--checkpoint", str(ckpt), "--max-new-tokens", "4"]
    done = subprocess.run([*cmd, "--prompt", os.fsdecode(b"hi \xff\xfe")], capture_output=True, timeout=120)
    assert done.returncode == 2 and b"--prompt is not valid UTF-8 (byte 3 is 0xff)" in done.stderr
    assert b"Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    if command == "generate":
        done = subprocess.run(cmd, input=b"hi \xff\xfe", capture_output=True, timeout=120)
        assert done.returncode == 2 and b"stdin is not valid UTF-8 (byte 3 is 0xff)" in done.stderr


def test_interactive_chat_keeps_the_conversation_after_a_bad_line(ckpt):
    done = subprocess.run([sys.executable, "-m", "tilelli", "chat", "--checkpoint", str(ckpt), "--max-new-tokens", "4",
                           "--temperature", "0"], input=b"hello\n\xff\xfe oops\nhello again\n", capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert b"that line is not valid UTF-8" in done.stderr and b"the conversation is kept" in done.stderr
    assert done.stdout.count(b"tilelli> ") == 2 and b"Traceback" not in done.stderr


# --- 6. disk full: atomic writes, cleanups that never raise ---------------------------------------------

def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/fake/disk")


def test_export_on_a_full_disk_leaves_no_out_and_a_retry_works(ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ship" / "model"
    monkeypatch.setattr(checkpoint, "_write_atomic", enospc)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--packed"]) == 2
    assert "No space left" in one_error_line("export", capsys.readouterr().err)
    assert not (tmp_path / "ship").exists()  # neither --out nor a hidden partial nor the parent it made
    monkeypatch.undo()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--packed"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in out.parent.iterdir()] == ["model"]


class _FullDisk:
    """A file whose writes fail once `room` bytes are used, and whose close (a flush) fails too."""

    def __init__(self, path, mode):
        self.f, self.room = open(path, mode), 100  # noqa: SIM115

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            enospc()
        return self.f.write(data)

    def close(self):
        self.f.close()
        enospc()


def test_prepare_on_a_full_disk_raises_the_disk_error_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import tilelli.train.prepare as prepare_mod

    src = tmp_path / "in.txt"
    src.write_text("".join(f"story {i} " * 20 + "\n<|endoftext|>\n" for i in range(20)))
    def full_disk_open(path, mode="r", *args, **kwargs):  # reading works; written files hit the full disk
        return _FullDisk(path, mode) if "w" in mode else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(prepare_mod, "open", full_disk_open, raising=False)
    assert main(["prepare", str(src), "--out", str(tmp_path / "bins")]) == 2
    assert "No space left" in one_error_line("prepare", capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # no bins dir, no hidden .partial


def test_train_failing_its_first_checkpoint_advises_what_works(data_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    argv = ["train", *TINY_RUN[:TINY_RUN.index("--threads")], "--data", str(data_dir), "--out", str(run),
            "--steps", "2"]
    monkeypatch.setattr(trainer_mod.checkpoint, "save", enospc)
    assert main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith("tilelli train: error: ") and "no earlier checkpoint exists" in line
    assert "run the same command again" in line and "--resume" not in line
    monkeypatch.undo()
    assert main(argv) == 0  # the advice works
    assert [p.name for p in list_checkpoints(run)] == ["step-0000002"]


def test_a_garbage_meta_json_is_one_line_and_makes_no_run_dir(data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "meta.json").write_text("{not json")
    assert main(["train", *TINY_RUN, "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1"]) == 2
    assert "meta.json is not the JSON object" in one_error_line("train", capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


# --- 7. smaller ones ---------------------------------------------------------------------------------------

class _Stopped:
    stop_reason = "interrupted"

    def to_dict(self) -> dict:
        return {"reply": "Once", "stop_reason": self.stop_reason}


class _Session:
    def reply(self, text, on_bytes=None):
        if on_bytes:
            on_bytes(b"Once")
        return _Stopped()


@pytest.mark.parametrize("as_json", [True, False])
def test_chat_prompt_ctrl_c_is_130_with_a_note_with_and_without_json(as_json, capsys):
    with pytest.raises(Interrupted, match="the reply so far is printed"):
        chat_cmd._one_shot(_Session(), "hi", as_json)
    out = capsys.readouterr().out
    assert (json.loads(out)["stop_reason"] == "interrupted") if as_json else out == "Once\n"


def test_server_seed_and_threads_flags_fail_before_listening():
    done = subprocess.run([sys.executable, "-m", "tilelli", "serve", "--seed", "-1", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--seed" in done.stderr and "Traceback" not in done.stderr

