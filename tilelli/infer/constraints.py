"""Bytes a generated sequence may not take next: valid UTF-8, and no quoting of given texts.

A byte-level model can emit any of 256 bytes, so nothing but the decoding step stops it from
writing half a character (a Japanese prompt got replies full of U+FFFD) or from drifting into
a sentence it was trained to say elsewhere (a story that ends "... Facts like that are beyond a
10M model."). Both are rules about the *next* byte given the bytes so far, so they are enforced
where the byte is chosen (`tilelli.infer.generate.Batch.step`): banned bytes get probability 0
and the model picks among the rest. Decisions by construction, not by luck.

- `utf8_banned`: after a lead byte only the continuation bytes that UTF-8 allows there (the
  narrower second-byte ranges of E0, ED, F0 and F4 included); at a character boundary no stray
  continuation byte, no C0/C1/F5-FF, and no lead byte whose character cannot be finished within
  the bytes left. Stop bytes are allowed only at a boundary, so a stop never cuts a character.
- `quote_banned`: no run of `min_len` bytes of any avoided text, anywhere in the output, and
  the output may not open with `start_len` or more bytes of one (so an answer cannot start "I
  can'" and turn into the refusal, while "I can tell you a story" is fine).
"""

from __future__ import annotations

from collections.abc import Sequence

QUOTE_MIN = 12  # the longest run of an avoided text an output may hold is QUOTE_MIN - 1 bytes
QUOTE_START_MIN = 6  # ... and at its start, QUOTE_START_MIN - 1 bytes


def _char_length(lead: int) -> int:
    """Bytes in a character that starts with `lead` (0 for a byte that cannot start one)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


_LENGTHS = tuple(_char_length(b) for b in range(256))  # per byte, looked up at every constrained step


def _second_byte_range(lead: int) -> tuple[int, int]:
    return {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(lead, (0x80, 0xBF))


def pending_char(out: bytes) -> tuple[int, int] | None:
    """(lead byte, bytes of its character already written) when `out` ends inside a character."""
    for back in range(1, min(4, len(out)) + 1):
        b = out[-back]
        if 0x80 <= b <= 0xBF:
            continue
        return (b, back) if _LENGTHS[b] > back else None
    return None


def utf8_banned(out: bytes, left: int, stop_bytes: frozenset[int] = frozenset()) -> list[int]:
    """Bytes that would make `out` + byte invalid UTF-8, or start a character that the `left`
    bytes still allowed (this one included) cannot finish. `stop_bytes` (the first bytes of the
    stop sequences) are allowed at a character boundary."""
    p = pending_char(out)
    if p is not None:
        lead, have = p
        lo, hi = _second_byte_range(lead) if have == 1 else (0x80, 0xBF)
        return [b for b in range(256) if not lo <= b <= hi]
    return [b for b, n in enumerate(_LENGTHS) if b not in stop_bytes and not 1 <= n <= left]


def quote_banned(out: bytes, texts: Sequence[bytes], min_len: int = QUOTE_MIN,
                 start_len: int = QUOTE_START_MIN) -> set[int]:
    """Bytes that would complete `min_len` bytes of a text in `texts` at the end of `out`, or
    `start_len` bytes of a text's opening at the start of the output."""
    banned: set[int] = set()
    k = min_len - 1
    tail = out[-k:] if len(out) >= k else None
    for text in texts:
        if tail is not None:
            at = text.find(tail)
            while 0 <= at and at + k < len(text):
                banned.add(text[at + k])
                at = text.find(tail, at + 1)
        if start_len - 1 <= len(out) < len(text) and text.startswith(out):
            banned.add(text[len(out)])
    return banned
