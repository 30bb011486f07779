"""The byte constraints of generation: UTF-8 validity and never quoting a text."""

from __future__ import annotations

import itertools
import random

from tilelli.infer.constraints import QUOTE_MIN, QUOTE_START_MIN, pending_char, quote_banned, utf8_banned


def allowed(out: bytes, left: int = 100, stops: frozenset[int] = frozenset()) -> set[int]:
    return set(range(256)) - set(utf8_banned(out, left, stops))


def test_utf8_at_a_boundary_allows_exactly_the_lead_bytes():
    assert allowed(b"abc") == set(range(0x80)) | set(range(0xC2, 0xF5))
    assert allowed(b"") == allowed("é".encode())
    assert allowed(b"a", stops=frozenset({0xFF})) == allowed(b"a") | {0xFF}  # a stop byte only at a boundary
    assert 0xFF not in allowed(b"\xe6", stops=frozenset({0xFF}))


def test_utf8_continuations_follow_the_standard_ranges():
    assert allowed(b"\xc3") == set(range(0x80, 0xC0))
    assert allowed(b"\xe0") == set(range(0xA0, 0xC0))  # no overlong 3-byte forms
    assert allowed(b"\xed") == set(range(0x80, 0xA0))  # no surrogates
    assert allowed(b"\xf0") == set(range(0x90, 0xC0)) and allowed(b"\xf4") == set(range(0x80, 0x90))
    assert allowed(b"\xe6\x97") == set(range(0x80, 0xC0)) and pending_char(b"\xe6\x97") == (0xE6, 2)
    assert pending_char("日".encode()) is None


def test_a_character_that_cannot_finish_is_not_started():
    assert allowed(b"x", left=1) == set(range(0x80))
    assert allowed(b"x", left=2) == set(range(0x80)) | set(range(0xC2, 0xE0))
    assert allowed(b"x", left=3) == set(range(0x80)) | set(range(0xC2, 0xF0))


def test_every_byte_sequence_the_rule_allows_decodes():
    rng = random.Random(0)
    for _ in range(300):
        out = b""
        for left in range(12, 0, -1):
            out += bytes([rng.choice(sorted(allowed(out, left)))])
        out.decode("utf-8")


def test_quote_banned_stops_a_run_one_byte_before_it_is_long_enough():
    text = b"I can't answer that. Facts like that are beyond a 10M model."
    run = text[20:20 + QUOTE_MIN - 1]
    assert quote_banned(b"story. " + run, [text]) == {text[20 + QUOTE_MIN - 1]}
    assert quote_banned(b"storyX" + run[1:], [text]) == set()
    assert quote_banned(b"I can", [text]) == {ord("'")}  # the opening: QUOTE_START_MIN - 1 bytes at most
    assert quote_banned(b"I ca", [text]) == set() and len(b"I can") == QUOTE_START_MIN - 1
    assert quote_banned(b"I can tell", [text]) == set()
    thats = quote_banned(b"xx answer that", [text, b"she said answer that was"])  # every text, every place
    assert thats >= {ord(".")}


def test_no_allowed_continuation_ever_completes_a_quote():
    text = b"abcabcabdabcxyz0123456789"
    for out in (bytes(p) for p in itertools.product(b"abcdxyz", repeat=4)):
        for b in set(range(256)) - quote_banned(out, [text], min_len=4, start_len=3):
            new = out + bytes([b])
            assert new[-4:] not in text
