"""Packing raw text into train.bin / valid.bin / meta.json (tilelli.train.prepare, `tilelli prepare`)."""

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest

import tilelli.train.prepare as prep
from tilelli.cli import main
from tilelli.errors import TilelliError
from tilelli.train.prepare import prepare, prepare_hf_tinystories

SEP = b"<|endoftext|>\n"
SHARED = Path(__file__).parents[2] / "shared" / "data" / "tinystories"


def docs(n: int, tag: str = "doc") -> list[bytes]:
    """Distinct documents, some multi-line and non-ASCII, so that a cut or a mix-up shows."""
    return [f"{tag} {i}: Once upon a time.\nThe cat sat — é {i * 7}.".encode() for i in range(n)]


def write_txt(path: Path, documents: list[bytes]) -> Path:
    # As in TinyStories: the delimiter on its own line, with stray whitespace around documents.
    path.write_bytes(b"".join(b"  " + d + b"\n<|endoftext|>\n" for d in documents))
    return path


def write_jsonl(path: Path, documents: list[bytes], field: str = "text") -> Path:
    lines = [json.dumps({"id": i, field: d.decode()}) for i, d in enumerate(documents)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def split_bin(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(SEP)
    return data[: -len(SEP)].split(SEP)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_txt_round_trip_with_explicit_valid(tmp_path):
    train, valid = docs(5), docs(2, "valid")
    inputs, valid_files = [write_txt(tmp_path / "a.txt", train)], [write_txt(tmp_path / "v.txt", valid)]
    meta = prepare(inputs, tmp_path / "out", valid=valid_files)
    out = tmp_path / "out"
    assert (out / "train.bin").read_bytes() == b"".join(d + SEP for d in train)
    assert (out / "valid.bin").read_bytes() == b"".join(d + SEP for d in valid)
    assert meta["split"]["rule"] == "explicit"
    assert (meta["train"]["documents"], meta["valid"]["documents"]) == (5, 2)
    assert json.loads((out / "meta.json").read_text()) == meta
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial files left


def test_jsonl_round_trip(tmp_path):
    train, valid = docs(4), docs(3, "valid")
    prepare([write_jsonl(tmp_path / "a.jsonl", train, "body")], tmp_path / "out",
            valid=[write_jsonl(tmp_path / "v.jsonl", valid, "body")], field="body")
    assert split_bin(tmp_path / "out" / "train.bin") == train
    assert split_bin(tmp_path / "out" / "valid.bin") == valid


def test_random_split_keeps_every_document_whole_in_one_split(tmp_path):
    a, b = docs(30, "a"), docs(20, "b")
    inputs = [write_txt(tmp_path / "a.txt", a), write_jsonl(tmp_path / "b.jsonl", b)]
    meta = prepare(inputs, tmp_path / "out", valid_fraction=0.2, seed=1)
    train, valid = split_bin(tmp_path / "out" / "train.bin"), split_bin(tmp_path / "out" / "valid.bin")
    assert len(valid) == 10 and len(train) == 40
    assert sorted(train + valid) == sorted(a + b)  # each document whole, exactly once
    order = {d: i for i, d in enumerate(a + b)}
    assert train == sorted(train, key=order.get) and valid == sorted(valid, key=order.get)
    assert meta["split"] == {"rule": "random-documents", "valid_fraction": 0.2, "seed": 1,
                             "valid_documents": 10, "paragraph_split": []}
    # The seed decides which documents: same seed same split, other seed another one.
    prepare(inputs, tmp_path / "same", valid_fraction=0.2, seed=1)
    prepare(inputs, tmp_path / "other", valid_fraction=0.2, seed=2)
    assert split_bin(tmp_path / "same" / "valid.bin") == valid
    assert split_bin(tmp_path / "other" / "valid.bin") != valid


def test_meta_hashes_and_sizes_are_right(tmp_path):
    a = write_txt(tmp_path / "a.txt", docs(40))
    meta = prepare([a], tmp_path / "out", valid_fraction=0.1)
    out = tmp_path / "out"
    for split in ("train", "valid"):
        assert meta[split]["sha256"] == sha256(out / f"{split}.bin")
        assert meta[split]["bytes"] == (out / f"{split}.bin").stat().st_size
    (source,) = meta["sources"]
    assert source == {"path": str(a), "format": "txt", "role": "split", "unit": "document",
                      "bytes": a.stat().st_size, "sha256": sha256(a), "documents": 40}
    assert meta["delimiter"] == "<|endoftext|>" and meta["vocab_size"] == 256
    assert {"tilelli_version", "created"} <= meta.keys()


def test_custom_delimiter(tmp_path):
    (tmp_path / "a.txt").write_text("one\n###\ntwo\n###\nthree\n")
    prepare([tmp_path / "a.txt"], tmp_path / "out", delimiter="###", valid_fraction=0.3, seed=0)
    got = (tmp_path / "out" / "train.bin").read_bytes() + (tmp_path / "out" / "valid.bin").read_bytes()
    assert sorted(got.split(b"###\n")) == [b"", b"one", b"three", b"two"]


def test_file_without_delimiter_is_split_by_paragraphs(tmp_path):
    (tmp_path / "a.txt").write_text("First one.\nstill first.\n\nSecond.\n  \n\n\nThird.\n\nFourth.\n")
    meta = prepare([tmp_path / "a.txt"], tmp_path / "out", valid_fraction=0.25)
    got = split_bin(tmp_path / "out" / "train.bin") + split_bin(tmp_path / "out" / "valid.bin")
    assert sorted(got) == sorted([b"First one.\nstill first.", b"Second.", b"Third.", b"Fourth."])
    assert meta["sources"][0]["unit"] == "paragraph"
    assert meta["split"]["paragraph_split"] == [str(tmp_path / "a.txt")]


def test_file_without_delimiter_as_valid_is_one_document(tmp_path):
    (tmp_path / "v.txt").write_text("Para one.\n\nPara two.\n")
    prepare([write_txt(tmp_path / "a.txt", docs(2))], tmp_path / "out", valid=[tmp_path / "v.txt"])
    assert (tmp_path / "out" / "valid.bin").read_bytes() == b"Para one.\n\nPara two." + SEP


@pytest.mark.parametrize("paragraphs", [False, True])
def test_tiny_read_chunks_give_the_same_documents(tmp_path, monkeypatch, paragraphs):
    text = b"\n\n".join(docs(12)) if paragraphs else write_txt(tmp_path / "x", docs(12)).read_bytes()
    (tmp_path / "a.txt").write_bytes(text)
    whole = list(prep.iter_documents(tmp_path / "a.txt", paragraphs=paragraphs))
    for chunk in (1, 2, 5, 13):  # separators straddle chunk ends in every possible way
        monkeypatch.setattr(prep, "CHUNK", chunk)
        assert list(prep.iter_documents(tmp_path / "a.txt", paragraphs=paragraphs)) == whole
    assert len(whole) == 12


def test_format_detection():
    assert prep.detect_format("x/TinyStories-valid.txt") == "tinystories"
    assert prep.detect_format("a.jsonl") == "jsonl"
    assert prep.detect_format("notes.md") == "txt"
    assert prep.detect_format("a.jsonl", "txt") == "txt"
    with pytest.raises(TilelliError, match=".jsonl"):
        prep.detect_format("a.json")


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit code 2 and exactly one error line on stderr; return it."""
    assert main(["prepare", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tilelli prepare: error: "), err
    return err


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "out")
    good = str(write_txt(tmp_path / "good.txt", docs(3)))
    (tmp_path / "empty.txt").write_text("\n  <|endoftext|>\n\n")
    (tmp_path / "one.txt").write_text("just one story\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    (tmp_path / "field.jsonl").write_text('{"text": "ok"}\n\n{"body": "x", "id": 3}\n')

    assert "no INPUT" in cli_error(capsys, ["--out", out])
    assert "not found" in cli_error(capsys, [str(tmp_path / "missing.txt"), "--out", out])
    assert "not a file" in cli_error(capsys, [str(tmp_path), "--out", out])
    assert "no documents" in cli_error(capsys, [good, "--valid", str(tmp_path / "empty.txt"), "--out", out])
    assert "bad.jsonl:2: not valid JSON" in cli_error(capsys, [str(tmp_path / "bad.jsonl"), "--out", out])
    err = cli_error(capsys, [str(tmp_path / "field.jsonl"), "--out", out])
    assert "field.jsonl:3: no field 'text'; fields there: 'body', 'id'" in err
    assert "train empty" in cli_error(capsys, [str(tmp_path / "one.txt"), "--out", out])
    assert "train empty" in cli_error(capsys, [good, "--valid-fraction", "0.9", "--out", out])
    assert "--valid-fraction" in cli_error(capsys, [good, "--valid-fraction", "0", "--out", out])
    assert "both an INPUT and a --valid" in cli_error(capsys, [good, "--valid", good, "--out", out])
    assert not any((tmp_path / "out").glob("*"))  # failed runs leave nothing behind

    assert main(["prepare", good, "--out", out]) == 0
    assert "already holds train.bin" in cli_error(capsys, [good, "--out", out])
    assert main(["prepare", good, "--out", out, "--force", "--seed", "1"]) == 0
    summary = capsys.readouterr().out
    assert "train.bin:" in summary and "valid.bin:" in summary and "1 document" in summary


def test_hf_tinystories_with_a_fake_download(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    files = {"TinyStories-train.txt": docs(6), "TinyStories-valid.txt": docs(2, "valid")}
    calls = []

    def fake_download(*, repo_id, repo_type, filename):
        calls.append((repo_id, repo_type, filename))
        return str(write_txt(cache / filename, files[filename]))

    meta = prepare_hf_tinystories(tmp_path / "out", download=fake_download)
    assert calls == [("roneneldan/TinyStories", "dataset", f) for f in files]
    assert split_bin(tmp_path / "out" / "train.bin") == files["TinyStories-train.txt"]
    assert split_bin(tmp_path / "out" / "valid.bin") == files["TinyStories-valid.txt"]
    assert meta["split"] == {"rule": "explicit", "valid_files": [str(cache / "TinyStories-valid.txt")]}


def test_hf_tinystories_cli(tmp_path, monkeypatch, capsys):
    def fake_download(*, repo_id, repo_type, filename):
        return str(write_txt(tmp_path / filename, docs(3, filename)))

    monkeypatch.setattr(prep, "hf_hub_download", fake_download)
    assert main(["prepare", "--hf-tinystories", "--out", str(tmp_path / "out")]) == 0
    assert "3 documents" in capsys.readouterr().out
    err = cli_error(capsys, ["--hf-tinystories", str(tmp_path / "x.txt"), "--out", str(tmp_path / "o2")])
    assert "drop INPUT" in err


def test_hf_tinystories_without_huggingface_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    err = cli_error(capsys, ["--hf-tinystories", "--out", str(tmp_path / "out")])
    assert "pip install huggingface_hub" in err


def test_hf_download_failure_is_a_user_error(tmp_path):
    def offline(**kwargs):
        raise ConnectionError("no route to host")

    with pytest.raises(TilelliError, match="could not download TinyStories-train.txt .*no route to host"):
        prepare_hf_tinystories(tmp_path / "out", download=offline)


def test_shared_tinystories_slice(tmp_path):
    train = SHARED / "TinyStories-train.head2MiB.txt"
    valid = SHARED / "TinyStories-valid.head800KB.no-story-delims.txt"
    if not (train.exists() and valid.exists()):
        pytest.skip("shared TinyStories slice not present")
    start = time.perf_counter()
    meta = prepare([train], tmp_path / "out", valid=[valid])
    assert time.perf_counter() - start < 5
    assert meta["train"]["documents"] == 2316  # as counted in shared/data/README.md
    assert meta["sources"][0]["sha256"].startswith("ba02237f5747a07d")
    train_bin = (tmp_path / "out" / "train.bin").read_bytes()
    assert train_bin.startswith(b"One day, a little girl named Lily found a needle in her room.")
    assert train_bin.count(SEP) == 2316
    assert meta["valid"]["documents"] == 1  # no delimiters: the whole valid slice is one document
    assert meta["valid"]["bytes"] == len(valid.read_bytes().strip()) + len(SEP)
