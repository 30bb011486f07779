"""Pack raw text (txt, jsonl, TinyStories) into `train.bin` / `valid.bin` + `meta.json`.

Every document is written as its UTF-8 bytes followed by the delimiter and a newline
(`<|endoftext|>\\n` by default), so the model sees and learns the boundary. The train/valid split
works on whole documents, never cutting one in two: either explicit `--valid` files, or a seeded
random choice of `round(fraction * n)` documents. Inputs are streamed in 1 MiB chunks and outputs
written incrementally, so memory holds about one document at a time, not the input. A random
split reads the inputs twice (count, then write) so that the valid set has an exact size.

`meta.json` records what is needed to redo the data: source paths, sizes and sha256s, the split
rule, the sha256 of both bins, the tilelli version and the time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tilelli.errors import TilelliError
from tilelli.train.paths import check_writable_dir, created_dirs

DEFAULT_DELIMITER = "<|endoftext|>"
FORMATS = ("auto", "txt", "jsonl", "tinystories")
TINYSTORIES_REPO = "roneneldan/TinyStories"
TINYSTORIES_FILES = ("TinyStories-train.txt", "TinyStories-valid.txt")
OUTPUT_FILES = ("train.bin", "valid.bin", "meta.json")
CHUNK = 1 << 20
PROGRESS_MIN_BYTES = 32 << 20  # smaller inputs finish before a bar would be worth showing

_PARAGRAPH = re.compile(rb"\n\s*\n")  # a blank line (possibly holding spaces) ends a paragraph
_WHITESPACE = frozenset(b" \t\n\r\f\v")


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """Resolve `auto` from the name: `.jsonl` -> jsonl, a name with "TinyStories" -> tinystories, else txt."""
    if fmt not in FORMATS:
        raise TilelliError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    if path.suffix.lower() == ".json":
        raise TilelliError(f"{path}: .json is not supported; convert it to .jsonl (one object per line)")
    if "tinystories" in path.name.lower():
        return "tinystories"
    return "txt"


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise TilelliError(f"cannot read {path}: {e.strerror}") from e


def _read_chunks(path: Path, on_bytes: Callable[[bytes], None]) -> Iterator[bytes]:
    with _open(path) as f:
        while chunk := f.read(CHUNK):
            on_bytes(chunk)
            yield chunk


def _contains(path: Path, needle: bytes) -> bool:
    """Whether the file holds `needle` anywhere; reads only until the first hit."""
    tail = b""
    with _open(path) as f:
        while chunk := f.read(CHUNK):
            if needle in tail + chunk:
                return True
            tail = chunk[-(len(needle) - 1) :] if len(needle) > 1 else b""
    return False


def _split_stream(chunks: Iterable[bytes], sep: bytes | None) -> Iterator[bytes]:
    """Split a byte stream on `sep` (or on blank lines when None); yield stripped, non-empty pieces.

    Only the unsplit tail is kept, and each new chunk is searched from just before where the last
    search ended, so a long document costs linear time.
    """
    pattern = _PARAGRAPH if sep is None else re.compile(re.escape(sep))
    buf = bytearray()
    for chunk in chunks:
        resume = len(buf)  # nothing before here matched; a match may straddle the old end
        if sep is None:
            while resume > 0 and buf[resume - 1] in _WHITESPACE:
                resume -= 1
        else:
            resume = max(0, resume - len(sep) + 1)
        buf += chunk
        last = 0
        pieces = []
        for m in pattern.finditer(buf, resume):
            pieces.append(bytes(buf[last : m.start()]))
            last = m.end()
        del buf[:last]
        for piece in pieces:
            if piece := piece.strip():
                yield piece
    if piece := bytes(buf).strip():
        yield piece


def _jsonl_documents(path: Path, field: str, on_bytes: Callable[[bytes], None]) -> Iterator[bytes]:
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            on_bytes(line)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                raise TilelliError(f"{path}:{lineno}: not valid JSON ({e})") from e
            if not isinstance(obj, dict):
                raise TilelliError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if field not in obj:
                fields = ", ".join(map(repr, obj)) or "none"
                raise TilelliError(
                    f"{path}:{lineno}: no field {field!r}; fields there: {fields}; choose one with --field"
                )
            text = obj[field]
            if not isinstance(text, str):
                kind = type(text).__name__
                raise TilelliError(f"{path}:{lineno}: field {field!r} is {kind}, expected a string")
            try:
                doc = text.encode("utf-8").strip()
            except UnicodeEncodeError as e:
                raise TilelliError(f"{path}:{lineno}: field {field!r} is not encodable as UTF-8 ({e})") from e
            if doc:
                yield doc


def iter_documents(
    path: str | Path,
    fmt: str = "auto",
    delimiter: str = DEFAULT_DELIMITER,
    field: str = "text",
    paragraphs: bool = False,
    on_bytes: Callable[[bytes], None] | None = None,
) -> Iterator[bytes]:
    """Stream the documents of one input file as stripped, non-empty UTF-8 bytes.

    txt splits on `delimiter` (a txt without it is one document, or its paragraphs when
    `paragraphs`); tinystories is txt split on `<|endoftext|>`; jsonl takes `field` of each line.
    `on_bytes` sees every raw chunk read, for hashing and progress. Memory holds one document
    at a time, so a huge delimiter-less file read as a single document is held whole.
    """
    path, fmt = Path(path), detect_format(path, fmt)
    on_bytes = on_bytes or (lambda chunk: None)
    if fmt == "jsonl":
        return _jsonl_documents(path, field, on_bytes)
    sep = None if paragraphs else _split_delimiter(fmt, delimiter).encode()
    return _split_stream(_read_chunks(path, on_bytes), sep)


def _split_delimiter(fmt: str, delimiter: str) -> str:
    return DEFAULT_DELIMITER if fmt == "tinystories" else delimiter


@dataclass
class _Source:
    path: Path
    fmt: str
    role: str  # "train" or "valid" (explicit split), "split" (random document split)
    unit: str = "document"  # "paragraph": a delimiter-less txt split on blank lines
    bytes: int = 0
    sha256: str = ""
    documents: int = 0

    def meta(self) -> dict:
        return {"path": str(self.path), "format": self.fmt, "role": self.role, "unit": self.unit,
                "bytes": self.bytes, "sha256": self.sha256, "documents": self.documents}


def _check_input(path: str | Path, role: str, fmt: str) -> _Source:
    path = Path(path)
    if not path.exists():
        raise TilelliError(f"input not found: {path}")
    if not path.is_file():
        raise TilelliError(f"input is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise TilelliError(f"cannot read {path}: permission denied")
    return _Source(path, detect_format(path, fmt), role, bytes=path.stat().st_size)


def _check_out_dir(out_dir: str | Path, force: bool) -> Path:
    """The output directory, checked (not yet created): writable, and not holding bins unless `force`."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TilelliError(f"--out {out} exists and is not a directory")
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not force:
        raise TilelliError(
            f"{out} already holds {', '.join(existing)}; pass --force to overwrite or choose another --out"
        )
    check_writable_dir(out, "--out")
    return out


class _BinWriter:
    """Appends documents + separator to a hidden partial file; `commit` renames it into place."""

    def __init__(self, path: Path, sep: bytes) -> None:
        self.path, self.sep = path, sep
        self.partial = path.with_name(f".{path.name}.partial")
        self.file = open(self.partial, "wb", buffering=CHUNK)
        self.hash = hashlib.sha256()
        self.bytes = self.documents = 0

    def write(self, doc: bytes) -> None:
        for part in (doc, self.sep):
            self.file.write(part)
            self.hash.update(part)
        self.bytes += len(doc) + len(self.sep)
        self.documents += 1

    def stats(self) -> dict:
        return {"file": self.path.name, "bytes": self.bytes, "documents": self.documents,
                "sha256": self.hash.hexdigest()}

    def commit(self) -> None:
        self.file.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        """Remove the partial file. Called while an error propagates, so it never raises: closing
        flushes the buffer, which fails again on a full disk."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.partial.unlink(missing_ok=True)


def _scan(src: _Source, delimiter: str, field: str, progress) -> Iterator[bytes]:
    """Documents of one source; records its sha256 and document count, refuses an empty one."""
    h = hashlib.sha256()

    def on_bytes(chunk: bytes) -> None:
        h.update(chunk)
        progress.update(len(chunk))

    n = 0
    for doc in iter_documents(src.path, src.fmt, delimiter, field, src.unit == "paragraph", on_bytes):
        n += 1
        yield doc
    if n == 0:
        raise TilelliError(f"no documents in {src.path} (empty or only whitespace/delimiters)")
    src.sha256, src.documents = h.hexdigest(), n


def _choose_valid(n: int, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask over n documents marking exactly max(1, round(fraction * n)) as valid."""
    n_valid = max(1, round(fraction * n))
    if n_valid >= n:
        raise TilelliError(
            f"splitting {n} document(s) with --valid-fraction {fraction} would leave train empty; "
            "add more data or pass --valid FILE"
        )
    mask = np.zeros(n, dtype=bool)
    mask[np.random.Generator(np.random.PCG64(seed)).choice(n, n_valid, replace=False)] = True
    return mask


def _progress_bar(total: int, progress: bool | None):
    from tqdm import tqdm

    if progress is None:
        progress = sys.stderr.isatty() and total >= PROGRESS_MIN_BYTES
    return tqdm(total=total, unit="B", unit_scale=True, desc="prepare", file=sys.stderr, disable=not progress)


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    valid: Sequence[str | Path] = (),
    valid_fraction: float = 0.05,
    fmt: str = "auto",
    delimiter: str = DEFAULT_DELIMITER,
    field: str = "text",
    seed: int = 0,
    force: bool = False,
    progress: bool | None = None,
) -> dict:
    """Pack `inputs` into out_dir/{train.bin, valid.bin, meta.json} and return the meta dict.

    With `valid` files, inputs become train.bin and those files valid.bin. Without, a seeded
    random choice of whole documents (`valid_fraction` of them) goes to valid.bin; a txt input
    with no delimiter at all is then split on blank lines (recorded as unit "paragraph"), since
    one document per file could not be split. Nothing is left if it fails: no partial file,
    and no directory that this call created.
    """
    if not inputs:
        raise TilelliError("no INPUT given; pass .txt/.jsonl files (before --valid) or --hf-tinystories")
    if not delimiter:
        raise TilelliError("--delimiter must not be empty")
    explicit = bool(valid)
    if not explicit and not 0 < valid_fraction < 1:
        raise TilelliError(f"--valid-fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
    train_src = [_check_input(p, "train" if explicit else "split", fmt) for p in inputs]
    valid_src = [_check_input(p, "valid", fmt) for p in valid]
    both = {s.path.resolve() for s in train_src} & {s.path.resolve() for s in valid_src}
    if both:
        raise TilelliError(f"{sorted(both)[0]} is both an INPUT and a --valid file; use different files")
    out = _check_out_dir(out_dir, force)
    if not explicit:
        for s in train_src:
            if s.fmt != "jsonl" and not _contains(s.path, _split_delimiter(s.fmt, delimiter).encode()):
                s.unit = "paragraph"

    sep = delimiter.encode("utf-8") + b"\n"
    sources = train_src + valid_src
    total = sum(s.bytes for s in sources) * (1 if explicit else 2)
    with created_dirs(out):  # on failure, the directories made here go again (only those)
        writers: dict[str, _BinWriter] = {}
        meta_partial = out / ".meta.json.partial"
        try:
            for name in ("train", "valid"):
                writers[name] = _BinWriter(out / f"{name}.bin", sep)
            with _progress_bar(total, progress) as bar:
                if explicit:
                    for s in train_src:
                        for doc in _scan(s, delimiter, field, bar):
                            writers["train"].write(doc)
                    for s in valid_src:
                        for doc in _scan(s, delimiter, field, bar):
                            writers["valid"].write(doc)
                    split = {"rule": "explicit", "valid_files": [str(s.path) for s in valid_src]}
                else:
                    n = sum(1 for s in train_src for _ in _scan(s, delimiter, field, bar))
                    is_valid = _choose_valid(n, valid_fraction, seed)
                    i = 0
                    for s in train_src:
                        for doc in _scan(s, delimiter, field, bar):
                            writers["valid" if is_valid[i] else "train"].write(doc)
                            i += 1
                    if i != n:
                        raise TilelliError(f"inputs changed while being read ({n} then {i} documents); run again")
                    split = {"rule": "random-documents", "valid_fraction": valid_fraction, "seed": seed,
                             "valid_documents": int(is_valid.sum()),
                             "paragraph_split": [str(s.path) for s in train_src if s.unit == "paragraph"]}
            from tilelli import __version__

            meta = {
                "format": "tilelli-bytes",
                "format_version": 1,
                "vocab_size": 256,
                "dtype": "uint8",
                "delimiter": delimiter,
                "document_separator": sep.decode("utf-8"),
                "sources": [s.meta() for s in sources],
                "split": split,
                "train": writers["train"].stats(),
                "valid": writers["valid"].stats(),
                "tilelli_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            meta_partial.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            for w in writers.values():
                w.commit()
            os.replace(meta_partial, out / "meta.json")
        except BaseException:
            for w in writers.values():
                w.discard()
            with contextlib.suppress(OSError):
                meta_partial.unlink(missing_ok=True)
            raise
    return meta


def hf_hub_download(**kwargs) -> str:
    """The real downloader (`huggingface_hub.hf_hub_download`), imported only when it is needed."""
    try:
        from huggingface_hub import hf_hub_download as download
    except ImportError as e:
        raise TilelliError("--hf-tinystories needs huggingface_hub: pip install huggingface_hub") from e
    return download(**kwargs)


def download_tinystories(download: Callable[..., str | Path] | None = None) -> tuple[Path, Path]:
    """Fetch TinyStories train and valid txt files; return their local paths.

    `download` has `hf_hub_download`'s keyword signature (repo_id, repo_type, filename), so tests
    can pass a fake that returns local files and the network is touched only here.
    """
    download = download or hf_hub_download
    paths = []
    for filename in TINYSTORIES_FILES:
        try:
            paths.append(Path(download(repo_id=TINYSTORIES_REPO, repo_type="dataset", filename=filename)))
        except TilelliError:
            raise
        except Exception as e:  # network, auth, disk: say what failed and how to get around it
            raise TilelliError(
                f"could not download {filename} from {TINYSTORIES_REPO} ({type(e).__name__}: {e}); "
                "check the network, or download it yourself and pass it as INPUT / --valid"
            ) from e
    return paths[0], paths[1]


def prepare_hf_tinystories(
    out_dir: str | Path, download: Callable[..., str | Path] | None = None, **kwargs
) -> dict:
    """Download TinyStories from Hugging Face and pack it, with its own valid file as valid.bin."""
    train, valid = download_tinystories(download)
    return prepare([train], out_dir, valid=[valid], fmt="tinystories", **kwargs)


def summary(meta: dict, out_dir: str | Path) -> str:
    """A few lines for the terminal: where the bins went, their sizes and document counts."""
    lines = [f"prepared {out_dir}"]
    for split in ("train", "valid"):
        s = meta[split]
        lines.append(f"  {s['file']}: {s['bytes']:,} bytes, {_count(s['documents'], 'document')}")
    rule = meta["split"]
    if rule["rule"] == "explicit":
        lines.append("  split: explicit --valid files")
    else:
        lines.append(f"  split: random documents, fraction {rule['valid_fraction']}, seed {rule['seed']}")
        for path in rule["paragraph_split"]:
            lines.append(f"  note: no delimiter in {path}; split it on blank lines (paragraphs)")
    for s in meta["sources"]:
        count = _count(s["documents"], s["unit"])
        lines.append(f"  source: {s['path']} ({s['format']}, {s['bytes']:,} bytes, {count})")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
