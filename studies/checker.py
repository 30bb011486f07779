"""The one way a reproduce script compares a published number with a re-measured one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from studies.common import DOCS


class Checker:
    """Prints a line per number (ok / FAIL, published, measured, tolerance) and remembers the
    failures; `finish()` is the script's exit code: 1 when anything did not reproduce."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, what: str, published: Any, measured: Any, tolerance: float | None = None,
              absolute: bool = False) -> bool:
        """Exact comparison when `tolerance` is None, else relative: |measured - published| <= tol * |published|,
        or with `absolute`, |measured - published| <= tol (for rates near 0, where relative is meaningless)."""
        if tolerance is None:
            ok, tol = measured == published, "exact"
        elif absolute:
            ok = measured is not None and abs(measured - published) <= tolerance
            tol = f"±{tolerance:g}"
        else:
            ok = measured is not None and abs(measured - published) <= tolerance * abs(published)
            tol = f"±{tolerance:.0%}"
        pub, got = (f"{v:.4g}" if isinstance(v, float) else str(v) for v in (published, measured))
        print(f"{'ok' if ok else 'FAIL':4} {what:52} published {pub:>10}  measured {got:>10}  ({tol})")
        if not ok:
            self.failures.append(what)
        return ok

    def target(self, what: str, measured: float, minimum: float, claimed: bool) -> bool:
        """A ratio against its target (measured >= minimum). Only a target the README claims is met
        can fail the check; one it does not claim prints 'not reached' and leaves the exit code alone,
        so that an honest 'not yet' stays a passing record on any machine."""
        reached = measured >= minimum
        status = "ok" if reached else "FAIL" if claimed else "not reached"
        note = "README claims it" if claimed else "README does not claim it"
        print(f"{status:4} {what:52} measured {measured:>9.2f}x  target >= {minimum:g}x  ({note})")
        if claimed and not reached:
            self.failures.append(what)
        return reached

    def same_cpu(self, published: dict, measured: dict) -> bool:
        """Whether exact published figures can be compared: only on the CPU that produced them
        (`machine` entries of two speed records, see tilelli.infer.bench.cpu_identity)."""
        from tilelli.infer.bench import cpu_line, same_cpu

        same = same_cpu(published, measured)
        if not same:
            print(f"other CPU: exact figures not compared (published on {cpu_line(published)}, "
                  f"measured on {cpu_line(measured)})")
        return same

    def check_json(self, published: dict, recomputed: dict, tolerance: float) -> None:
        """Every number of a published JSON result against the same path of its recomputation,
        to a relative `tolerance`; a key in one but not the other, or a changed string, fails."""
        published_leaves = leaves(published)
        now = leaves(json.loads(json.dumps(recomputed)))  # through JSON: tuples become lists
        for key in sorted(set(published_leaves) | set(now)):
            pub, got = published_leaves.get(key), now.get(key)
            numeric = isinstance(pub, float) and isinstance(got, float)
            if numeric or pub != got:
                self.check(key, pub, got, tolerance if numeric else None)

    def page(self, stem: str, rendered: str, docs: Path = DOCS) -> bool:
        """The published Markdown page `stem.md` must be exactly what its JSON record renders to."""
        return self.check(f"{stem}.md = {stem}.json", True, (docs / f"{stem}.md").read_text() == rendered)

    def finish(self, subject: str) -> int:
        if self.failures:
            print(f"{len(self.failures)} number(s) did not reproduce: {', '.join(self.failures)}", file=sys.stderr)
            return 1
        print(f"all {subject} numbers reproduce")
        return 0


def leaves(obj: object, prefix: str = "") -> dict[str, object]:
    """Every number and string in a nested JSON value, keyed by its path."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in leaves(val, f"{prefix}{key}.").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in leaves(val, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}
