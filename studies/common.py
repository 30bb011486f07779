"""What every study shares: where the repository, the shared data and the published pages are,
and the one way a study script writes its result.

A result is two files: a JSON record in the study's own `results/` folder (every number, what
its check script re-measures) and a Markdown page in `docs/results/` (the table a reader opens).
Both places are options, so that a check script can re-run a benchmark into a temporary folder
without touching what is published.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DOCS = ROOT / "docs" / "results"
README = ROOT / "README.md"
VALID_TEXT = SHARED / "tinystories" / "TinyStories-valid.head800KB.no-story-delims.txt"


def results_dir(study_file: str) -> Path:
    """The `results/` folder next to a study's script (pass `__file__`)."""
    return Path(study_file).resolve().parent / "results"


def add_output_args(parser: argparse.ArgumentParser, results: Path) -> None:
    """`--out` (the JSON record) and `--docs` (the Markdown page), defaulting to the published places."""
    parser.add_argument("--out", type=Path, default=results,
                        help=f"where the JSON record goes (default {results.relative_to(ROOT)})")
    parser.add_argument("--docs", type=Path, default=DOCS, help="where the Markdown page goes (default docs/results)")


def publish(args: argparse.Namespace, stem: str, result: dict, markdown: str, indent: int = 1,
            ensure_ascii: bool = True) -> None:
    """Write `stem.json` under `args.out` and `stem.md` under `args.docs`."""
    args.out.mkdir(parents=True, exist_ok=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=indent, ensure_ascii=ensure_ascii) + "\n")
    (args.docs / f"{stem}.md").write_text(markdown)


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (so that a record is portable)."""
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def block_with(block: str, text: str, markers: tuple[str, str]) -> str:
    """`text` with what lies between the two marker lines replaced by `block`."""
    start, end = text.index(markers[0]) + len(markers[0]), text.index(markers[1])
    return text[:start] + "\n" + block + text[end:]


def rerun(module: str, *args: str, quiet: bool = True) -> None:
    """Run a study script (`studies.x.y`) in a fresh process from the repository root, as a
    check script re-measures: a fresh process, so that nothing this one loaded changes the timing."""
    subprocess.run([sys.executable, "-m", module, *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL if quiet else None)
