import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny

from tilelli.cli import main
from tilelli.model.checkpoint import save
from tilelli.model.config import list_configs
from tilelli.model.models import build_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save(build_model(tiny("tilelli-lite-ternary", max_seq_len=64)), path, packed=True)
    return path


def run_cli(capsysbinary, *args):
    """Run the CLI in-process; argparse's own exits count as return codes. Output is bytes
    (a tiny random model writes any byte), decoded leniently."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsysbinary.readouterr()
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def test_models_table_lists_every_config_in_range(capsysbinary):
    code, out, _ = run_cli(capsysbinary, "models", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["name"] for r in rows] == list_configs()
    assert all(9.5e6 <= r["params"] <= 11e6 for r in rows)
    code, out, _ = run_cli(capsysbinary, "models")
    assert code == 0 and "tilelli-lite-ternary" in out and "10.68M" in out


def test_generate_json(capsysbinary, ckpt):
    code, out, _ = run_cli(capsysbinary, "generate", "--checkpoint", str(ckpt), "--prompt", "Once",
                           "--max-new-tokens", "7", "--temperature", "0", "--json")
    res = json.loads(out)
    assert code == 0 and len(res["confidence"]) == 7 and res["stop_reason"] == "max_new_tokens"


def test_generate_streams_prompt_and_bytes(capsysbinary, ckpt):
    code, out, err = run_cli(capsysbinary, "generate", "--checkpoint", str(ckpt), "--prompt", "Hi",
                             "--max-new-tokens", "5", "--seed", "1", "--show-confidence")
    assert code == 0 and out.startswith("Hi") and "confidence: mean" in err


def test_generate_reports_full_context(capsysbinary, ckpt):
    code, _, err = run_cli(capsysbinary, "generate", "--checkpoint", str(ckpt), "--prompt", "x" * 60,
                           "--max-new-tokens", "50", "--temperature", "0")
    assert code == 0 and "context of 64 bytes is full" in err


@pytest.mark.parametrize("args,msg", [
    (["nope"], "unknown command 'nope'"),
    (["generate", "--checkpoint", "/no/such/dir", "--prompt", "a"], "/no/such/dir"),
    (["generate", "--checkpoint", "CKPT", "--prompt", "x" * 65], "context is 64"),
    (["generate", "--checkpoint", "CKPT", "--prompt", "a", "--max-new-tokens", "-1"], "must be >= 0"),
    (["generate", "--checkpoint", "CKPT", "--prompt", "a", "--temperature", "-1"], "finite number >= 0"),
    (["generate", "--checkpoint", "CKPT", "--prompt", "a", "--top-p", "2"], "top-p"),
    (["calibrate", "--checkpoint", "CKPT", "--data", "CKPT", "--alpha", "request=0.03,small_talk=5"], "(0, 1)"),
    (["calibrate", "--checkpoint", "CKPT", "--data", "CKPT", "--alpha", "small"], "'small' is not a number"),
    (["calibrate", "--checkpoint", "CKPT", "--data", "CKPT", "--alpha", "request=0.1,=0.2"], "KIND=ALPHA pairs"),
])
def test_bad_input_is_one_line_exit_2(capsysbinary, ckpt, args, msg):
    code, _, err = run_cli(capsysbinary, *[str(ckpt) if a == "CKPT" else a for a in args])
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_real_console_script_stdin_and_non_utf8(ckpt):
    cmd = [sys.executable, "-m", "tilelli", "generate", "--checkpoint", str(ckpt), "--max-new-tokens", "4",
           "--temperature", "0"]
    ok = subprocess.run(cmd, input=b"Once upon", capture_output=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith(b"Once upon") and len(ok.stdout) == 9 + 4 + 1
    bad = subprocess.run(cmd, input=b"\xff\xfe bad", capture_output=True, timeout=120)
    assert bad.returncode == 2 and b"not valid UTF-8" in bad.stderr and b"Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
