"""The ranges that every door (command line, HTTP server, library call) enforces alike.

Kept in one torch-free module so that `tilelli generate --seed`, the server's `"seed"` field and
`SamplingConfig(seed=...)` cannot drift apart.
"""

from __future__ import annotations

import os

# Seeds are 0 .. 2**32 - 1: numpy's legacy global generator (seeded by training) takes no more,
# and one range for every command is easier to state than one per generator. There is no
# "-1 = random": leave the seed out of a sampling request for a fresh one.
SEED_MAX = 2**32 - 1


def cpu_count() -> int:
    """The most threads any pool is given: an OpenMP pool far above the cores is a crash
    (100,000 threads killed `generate` with a segfault), never a speed-up."""
    return os.cpu_count() or 1


def seed_problem(value: object) -> str | None:
    """None when `value` is a usable seed, else what a seed must be (for an error message)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX:
        return None
    return f"a seed is an integer in 0..{SEED_MAX} (leave it out for a random one), got {value!r}"


def check_threads(n: int) -> int:
    """`n` when it is a usable thread count (0 = automatic, else 1 .. `cpu_count()`), else the
    one-line error. The CLI clamps `--threads` before this; library callers get the error."""
    from tilelli.errors import TilelliError

    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= cpu_count():
        raise TilelliError(f"threads={n!r}: give 0 (automatic) or 1..{cpu_count()}, the CPUs of this machine")
    return n
