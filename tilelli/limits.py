"""What every door (command line, stdin, the interactive chat, the HTTP server, library calls)
accepts alike: seed and thread ranges, and the one rule for input text.

Kept in one torch-free module so that `tilelli generate --seed`, the server's `"seed"` field and
`SamplingConfig(seed=...)` cannot drift apart, nor `--prompt`, stdin and a JSON "content".
"""

from __future__ import annotations

import os

from tilelli.errors import TilelliError

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
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= cpu_count():
        raise TilelliError(f"threads={n!r}: give 0 (automatic) or 1..{cpu_count()}, the CPUs of this machine")
    return n


def utf8(text: str | bytes, what: str) -> bytes:
    """The UTF-8 bytes of input text, or a one-line error naming `what` and the first bad byte.

    The rule, everywhere: input text must be valid UTF-8; nothing is silently replaced (a prompt
    the model sees is exactly what was typed, or an error says why not). A str may carry bytes
    that were not UTF-8 the way Python hands them over from argv and terminals (U+DC80..U+DCFF,
    "surrogateescape"); those, and a JSON string's lone surrogates, are refused like raw bytes."""
    data = text
    if isinstance(text, str):
        try:
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            raise TilelliError(f"{what} is not valid text: character {e.start} is U+{ord(text[e.start]):04X}, a lone "
                               "surrogate; send UTF-8 text") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TilelliError(f"{what} is not valid UTF-8 (byte {e.start} is 0x{data[e.start]:02x}); convert it to "
                           "UTF-8 first, e.g. with iconv") from None
    return data
