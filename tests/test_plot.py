"""`tilelli plot`: overlay of train/valid bpb curves, with clear errors."""

import json
import sys

from tilelli.cli import main
from tilelli.train.plot import run_label, smooth


def fake_run(path, model="tilelli-lite-fp32", steps=20, offset=0.0):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"train": {"model": model}}))
    lines = [{"step": s, "tokens": s * 64, "loss": 3.0 - s * 0.05 + offset, "ce": 3.0, "bpb": 4.3 - s * 0.07 + offset}
             for s in range(1, steps + 1)]
    lines += [{"step": s, "tokens": s * 64, "valid_loss": 2.9, "valid_bpb": 4.2 - s * 0.07} for s in (10, 20)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_plot_writes_a_png_of_several_runs(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", model="vanilla-fp32", offset=0.2)
    assert run_label(b) == "b (vanilla-fp32)"
    out = tmp_path / "plots" / "curves.png"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert capsys.readouterr().out.strip() == str(out)


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_not_a_run_dir_is_one_line_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "c.png")]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert main(["plot", str(fake_run(tmp_path / "a")), "-o", str(tmp_path / "c.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
