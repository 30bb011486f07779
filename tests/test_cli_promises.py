"""The CLI's promises, everywhere: it answers fast (no torch where none is needed), every error a
user can act on is one line `tilelli CMD: error: ...` with exit code 2 and no traceback, and it
is reported before torch loads; Ctrl-C in training saves and says how to resume; a failed
prepare leaves nothing behind; a kernel fallback is one note, not a Python warning."""

import errno
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import tilelli.kernels.topk_attention as topk_kernel
from tilelli.cli import main
from tilelli.errors import TilelliError
from tilelli.kernels import build
from tilelli.model.checkpoint_files import list_checkpoints
from tilelli.model.config import ModelConfig, from_name, list_configs
from tilelli.model.models import build_model, count_params
from tilelli.train.prepare import prepare
from tilelli.train.runs import read_metrics
from tilelli.train.trainer import TrainConfig, Trainer

# Runs CLI commands one after the other in one fresh interpreter (JSON list of argv on stdin) and
# reports, for each, the exit code, its stderr and whether torch had been imported by then.
PROBE = """import contextlib, io, json, sys
from tilelli.cli import main
results = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results.append([code, "torch" in sys.modules, err.getvalue()])
print(json.dumps(results))
"""
HAS_PROC = Path("/proc/self").is_dir()


def probe(commands: list[list[str]]) -> list[tuple[int, bool, str]]:
    """(exit code, whether torch was imported by then, stderr) of each `tilelli ARGS`, in one fresh process."""
    done = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(commands), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [tuple(r) for r in json.loads(done.stdout)]


def one_error_line(command: str, stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"tilelli {command}: error: "), stderr
    return lines[0]


# --- 1. `tilelli models` lists the built models' own counts ------------------------------------------

@pytest.mark.parametrize("variant", [{}, {"lsq": True, "per_row": True}], ids=["as-named", "lsq,per_row"])
def test_the_meta_device_count_is_the_real_models(config_name, variant):
    cfg = from_name(config_name).replace(**variant)
    assert count_params(cfg) == build_model(cfg).num_params()


def test_models_command_lists_the_computed_counts(capsys):
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"]: r["params"] for r in rows} == {n: count_params(from_name(n)) for n in list_configs()}


def test_the_modules_the_cli_checks_with_are_torch_free():
    mods = ("tilelli.model.config, tilelli.train.config, tilelli.train.paths, "
            "tilelli.train.runs, tilelli.train.prepare")
    code = f"import sys, {mods}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"


# --- 2, 3, 4. errors come first, as one line, before torch loads ------------------------------------

def _cases(data: Path, tmp: Path) -> list[tuple[list[str], str]]:
    afile = tmp / "afile"
    run = tmp / "run"
    train = ["train", "--data", str(data), "--out", str(run), "--model", "tilelli-lite-fp32"]
    cases = [
        (["train", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["train", "--lr", "0"], "--lr must be a finite number > 0"),
        (["train", "--data", str(tmp / "nope"), "--out", str(run)], f"data dir {tmp / 'nope'} does not exist"),
        ([*train, "--override", "d_model=abc"], "--override d_model=abc: d_model takes an integer"),
        ([*train, "--override", "d_model=6.5"], "--override d_model=6.5: d_model takes an integer"),
        ([*train, "--override", "skip_threshold=low"], "--override skip_threshold=low: skip_threshold takes a number"),
        ([*train, "--override", "quantize=1"], "--override quantize=1: quantize takes true or false"),
        ([*train, "--override", "skip_mode=fast"], "skip_mode takes one of 'per_call', 'per_token'"),
        ([*train, "--override", "n_heads=7"], "not divisible by n_heads=7"),
        ([*train, "--override", "d_modl=3"], "unknown model field 'd_modl'"),
        ([*train, "--override", "nonsense"], "expected FIELD=VALUE"),
        ([*train, "--seq-len", "4096"], "exceeds tilelli-lite-fp32's max_seq_len 2048"),
        ([*train, "--resume"], "holds no checkpoint"),
        ([*train, "--init-from", str(tmp / "nope")], "--init-from"),
        (["train", "--smoke", "--override", "d_model=abc"], "d_model takes an integer"),
        (["train", "--data", str(data), "--out", str(afile)], "is a file, not a directory"),
        (["train", "--data", str(data), "--out", str(afile / "run")], f"{afile} is a file, not a directory"),
        (["eval", "--data", str(tmp / "nope.txt")], "is not a file"),
        (["eval", "--data", str(afile), "--checkpoint", str(tmp / "nope")], "no checkpoint at"),
        (["export", "--checkpoint", str(tmp / "nope"), "--out", str(tmp / "ship")], "no checkpoint at"),
        (["export", "--checkpoint", str(tmp), "--out", str(afile)], "already exists"),
        (["export", "--checkpoint", str(tmp), "--out", str(afile / "ship")], f"{afile} is a file, not a directory"),
        (["export", "--checkpoint", str(tmp), "--out", str(tmp / "ship"), "--bf16"], "--bf16 needs --check-data"),
        (["export", "--checkpoint", str(tmp), "--out", str(tmp / "ship"), "--bf16", "--check-data",
          str(tmp / "nope")], "--check-data"),
        (["prepare", str(tmp / "nope.txt"), "--out", str(tmp / "bins")], "input not found"),
        (["prepare", str(afile), "--out", str(afile / "bins")], f"{afile} is a file, not a directory"),
        (["plot", str(tmp), "-o", str(tmp / "c.png")], "has no metrics.jsonl"),
        (["plot", str(tmp), "-o", str(afile / "c.png")], f"{afile} is a file, not a directory"),
        (["plot", str(tmp), "-o", str(tmp)], "is a directory; give a file path"),
    ]
    if HAS_PROC:  # a location nobody can create anything in, even root
        cases += [
            (["train", "--data", str(data), "--out", "/proc/tilelli-test"], "cannot create anything in /proc"),
            (["export", "--checkpoint", str(tmp), "--out", "/proc/tilelli-test"], "cannot create anything in /proc"),
            (["prepare", str(afile), "--out", "/proc/tilelli-test"], "cannot create anything in /proc"),
            (["plot", str(tmp), "-o", "/proc/tilelli-test.png"], "cannot create anything in /proc"),
        ]
    return cases


def test_every_argument_and_path_error_is_one_line_before_torch(data_dir, tmp_path):
    (tmp_path / "afile").write_text("a file where a directory should be\n")
    failures = []
    cases = _cases(data_dir, tmp_path)
    for (args, expect), (code, torch_loaded, err) in zip(cases, probe([a for a, _ in cases]), strict=True):
        line = err.strip().splitlines()[0] if err.strip() else ""
        ok = (code == 2 and not torch_loaded and expect in line and len(err.strip().splitlines()) == 1
              and line.startswith(f"tilelli {args[0]}: error: ") and "Traceback" not in err)
        if not ok:
            failures.append(f"{args}: exit {code}, torch {torch_loaded}, stderr {err!r}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "run").exists() and not (tmp_path / "bins").exists()  # nothing half-made
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tilelli")]  # the write probes are gone


def test_override_types_are_checked_in_the_library_too():
    with pytest.raises(TilelliError, match="--override d_model=abc: d_model takes an integer"):
        TrainConfig(overrides={"d_model": "abc"}).model_config()
    with pytest.raises(TilelliError, match="d_model='wide'; d_model takes an integer"):
        ModelConfig.from_dict({**from_name("tilelli-lite-fp32").to_dict(), "d_model": "wide"})
    with pytest.raises(TilelliError, match="quantize takes true or false"):
        from_name("tilelli-lite-fp32", quantize="yes")
    assert TrainConfig(overrides={"skip_threshold": 0, "quantize": True}).model_config().skip_threshold == 0


@pytest.mark.parametrize("err, expect", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out/c.png"), "check its permissions"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/c.png"), "read-only"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/c.png"), "free some disk space"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/afile/c.png"), "is a file, not a directory"),
    (FileExistsError(errno.EEXIST, "File exists", "/data/out"), "already exists"),
])
def test_os_errors_naming_a_path_are_one_line(monkeypatch, capsys, tmp_path, err, expect):
    """The safety net: whatever a command did not check beforehand still becomes one line."""
    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr("tilelli.commands.plot.plot_runs", fail)
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "c.png")]) == 2
    line = one_error_line("plot", capsys.readouterr().err)
    assert err.filename in line and err.strerror in line and expect in line


def test_os_errors_without_a_path_keep_their_traceback(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")  # not about a path the user gave: a bug

    monkeypatch.setattr("tilelli.commands.plot.plot_runs", fail)
    with pytest.raises(OSError, match="Input/output error"):
        main(["plot", str(tmp_path), "-o", str(tmp_path / "c.png")])


# --- 5. Ctrl-C in training: checkpoint the last completed step, say how to resume, exit 130 ------------

TINY_RUN = ["--model", "tilelli-lite-fp32", "--override", "d_model=32", "--override", "n_layers=1",
            "--override", "max_seq_len=64", "--seq-len", "32", "--batch-size", "2", "--threads", "1",
            "--warmup", "2", "--eval-every", "100", "--eval-batches", "1", "--ckpt-every", "0"]
STEPS = 300


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tilelli", "train", *TINY_RUN, "--data", str(data), "--out", str(out),
            "--steps", str(STEPS), *extra]


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    lines = text[: text.rfind("\n") + 1].splitlines()
    return max((json.loads(x)["step"] for x in lines), default=0)


def _logged(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in lines]


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # also when the tests run where SIGINT is ignored


def test_ctrl_c_checkpoints_the_last_step_and_resume_is_bit_identical(data_dir, tmp_path):
    """SIGINT lands wherever the run happens to be; the uninterrupted reference run proves that
    the checkpoint is of a whole step (a half-done step would not resume bit-identically)."""
    victim_dir, ref_dir = tmp_path / "victim", tmp_path / "ref"
    with open(tmp_path / "ref.log", "w") as ref_log, open(tmp_path / "victim.log", "w") as victim_log:
        ref = subprocess.Popen(_train(data_dir, ref_dir), stdout=ref_log, stderr=ref_log)
        victim = subprocess.Popen(_train(data_dir, victim_dir), stdout=subprocess.DEVNULL, stderr=victim_log,
                                  preexec_fn=_sigint_default)
        try:
            deadline = time.monotonic() + 240
            while _steps_logged(victim_dir) < 5:
                assert victim.poll() is None, (tmp_path / "victim.log").read_text()
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.005)
            victim.send_signal(signal.SIGINT)
            victim.wait(timeout=120)
            assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()
        finally:
            for p in (victim, ref):
                if p.poll() is None:
                    p.kill()
    err = (tmp_path / "victim.log").read_text()
    assert victim.returncode == 130, err
    assert "Traceback" not in err
    said = [line for line in re.split(r"[\r\n]", err) if "interrupted" in line]
    assert len(said) == 1, err
    m = re.fullmatch(r"tilelli train: interrupted at step (\d+); checkpoint (\S+) written; continue with --resume",
                     said[0].strip())
    assert m, said[0]
    step, ckpt = int(m.group(1)), Path(m.group(2))
    assert 5 <= step < STEPS and ckpt == victim_dir / "checkpoints" / f"step-{step:07d}"
    assert list_checkpoints(victim_dir) == [ckpt] and (ckpt / "trainer.pt").is_file()
    assert _steps_logged(victim_dir) == step  # nothing logged past the checkpoint

    resumed = subprocess.run(_train(data_dir, victim_dir, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    train, _ = read_metrics(victim_dir)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert _logged(victim_dir) == _logged(ref_dir), f"interrupted at step {step}"


@pytest.mark.parametrize("at, ckpt_every, kept", [(3, 0, ["step-0000003"]), (4, 2, ["step-0000002", "step-0000004"])])
def test_ctrl_c_stops_after_the_step_it_lands_in(data_dir, tmp_path, monkeypatch, capsys, at, ckpt_every, kept):
    """In-process, with the signal raised at a known step: the step completes, is checkpointed
    once (not twice when the loop just saved it), and the SIGINT handler is put back."""
    real_log = Trainer._log

    def log_then_ctrl_c(self, record):
        real_log(self, record)
        if record["step"] == at:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "_log", log_then_ctrl_c)
    out = tmp_path / "run"
    args = TINY_RUN[: TINY_RUN.index("--threads")]  # in-process: keep the test session's threads
    assert main(["train", *args, "--warmup", "2", "--ckpt-every", str(ckpt_every), "--eval-every", "0",
                 "--data", str(data_dir), "--out", str(out), "--steps", "10"]) == 130
    err = capsys.readouterr().err
    assert (f"tilelli train: interrupted at step {at}; checkpoint {out / 'checkpoints' / kept[-1]} written; "
            "continue with --resume") in err and "Traceback" not in err
    assert [p.name for p in list_checkpoints(out)] == kept and _steps_logged(out) == at
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- 6. a failed prepare leaves nothing behind ---------------------------------------------------------

def test_failed_prepare_removes_the_directories_it_made(tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n\n<|endoftext|>\n  \n")  # no documents: fails after the output dir is made
    good = tmp_path / "good.txt"
    good.write_text("Once upon a time.\n<|endoftext|>\n")
    with pytest.raises(TilelliError, match="no documents"):
        prepare([good], tmp_path / "new" / "deeper" / "bins", valid=[blank], progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt", "good.txt"]
    assert main(["prepare", str(good), "--valid", str(blank), "--out", str(tmp_path / "cli" / "bins")]) == 2
    assert "no documents" in one_error_line("prepare", capsys.readouterr().err)
    assert not (tmp_path / "cli").exists()


def test_failed_prepare_keeps_a_directory_that_was_there(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (keep, empty):
        with pytest.raises(TilelliError, match="no documents"):
            prepare([blank], out, valid_fraction=0.5, progress=False)
    assert [p.name for p in keep.iterdir()] == ["notes.txt"] and empty.is_dir() and not any(empty.iterdir())


# --- 7. a kernel fallback is one note on stderr, once ---------------------------------------------------

def test_missing_compiler_is_one_note_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TILELLI_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "COMPILER", "no-such-compiler-tilelli")
    monkeypatch.setattr(build, "_noted", set())
    source = Path(topk_kernel.__file__).with_name("topk_attention.c")
    libs = [build.NativeLibrary(f"k{i}", source, lambda lib: None, f"kernel {i}") for i in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not any(lib.available() for lib in libs)
        assert not libs[0].available()  # decided once
    err = capsys.readouterr().err
    assert not caught
    assert err == ("tilelli: note: native kernels unavailable (no C compiler 'no-such-compiler-tilelli'); "
                   "using the PyTorch paths (same results, slower)\n")


@pytest.mark.skipif(shutil.which("false") is None, reason="needs the `false` program as a failing compiler")
def test_failed_build_is_one_note_per_kernel(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TILELLI_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "COMPILER", "false")  # runs, and fails like a broken build
    monkeypatch.setattr(build, "_noted", set())
    source = Path(topk_kernel.__file__).with_name("topk_attention.c")
    lib = build.NativeLibrary("broken", source, lambda lib: None, "broken test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not lib.available() and not lib.available()
    assert not caught
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tilelli: note: broken test kernel unavailable (")
    assert lines[0].endswith("; using the PyTorch path (same results, slower)")


def test_a_reader_that_leaves_early_ends_generate_quietly():
    """`tilelli generate | head`: once the pipe is closed, no traceback, the exit a shell reports
    for a writer its pipe ended (128 + SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "tilelli", "generate", "--prompt", "Once upon a time",
                             "--max-new-tokens", "2000", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(20)
    proc.stdout.close()  # the reader leaves
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE and "Traceback" not in err, err
