"""The chat format: three reserved control bytes around each turn, and nothing else.

A byte-level model has 256 symbols and no special tokens, so the turn markers are bytes that
never occur in text: 0xFD, 0xFE and 0xFF are invalid anywhere in UTF-8, so no prompt or reply
(always valid UTF-8 once it is a Python `str`) can contain them and nothing needs escaping.

    USER  user text  ASSISTANT  reply  END   USER  next user text  ASSISTANT  ...

A conversation is a run of such turns; the model's prompt for a new reply is the history plus
`USER text ASSISTANT`, and generation stops at END. Training puts the loss on the reply bytes
and on END (so the model learns to stop), never on the user's bytes or the markers it is
given. When a conversation outgrows the context, the oldest whole turns are dropped (the
caller is told how many), so the model always sees a prompt that starts at a USER byte, as in
training, where every window starts at one.
"""

from __future__ import annotations

from collections.abc import Sequence

from tilelli.errors import TilelliError

USER, ASSISTANT, END = 0xFE, 0xFD, 0xFF
USER_BYTE, ASSISTANT_BYTE, END_BYTE = bytes([USER]), bytes([ASSISTANT]), bytes([END])

# The one answer to a world-fact question (the original system's wording), and the one to text
# the model cannot read (gibberish, code, other languages; tilelli.chat.abstain). Both open with
# the same sentence, which is what `is_refusal` looks for.
REFUSAL = "I can't answer that. Facts like that are beyond a 10M model."
REFUSAL_UNREADABLE = "I can't answer that. I only understand simple English."


def turn(user: str, reply: str | None = None) -> bytes:
    """One turn's bytes; without a reply, the prompt the model completes."""
    head = USER_BYTE + user.encode("utf-8") + ASSISTANT_BYTE
    return head if reply is None else head + reply.encode("utf-8") + END_BYTE


def encode(turns: Sequence[tuple[str, str]]) -> tuple[bytes, bytes]:
    """A whole conversation as (bytes, mask): mask[i] = 1 where byte i is a training target
    (reply bytes and END), 0 elsewhere (user text and the USER/ASSISTANT markers)."""
    data, mask = bytearray(), bytearray()
    for user, reply in turns:
        head = turn(user)
        tail = reply.encode("utf-8") + END_BYTE
        data += head + tail
        mask += bytes(len(head)) + b"\x01" * len(tail)
    return bytes(data), bytes(mask)


def prompt(history: Sequence[tuple[str, str]], user: str, max_len: int, room: int) -> tuple[bytes, int]:
    """The prompt for the reply to `user` after `history`, and how many oldest turns were
    dropped so that the prompt plus `room` reply bytes fit in `max_len` positions."""
    new = turn(user)
    if len(new) + room > max_len:
        raise TilelliError(f"the message is {len(new) - 2} bytes; with {room} bytes for the reply it "
                           f"does not fit the model's context of {max_len}; shorten it")
    past = [turn(u, r) for u, r in history]
    dropped = 0
    while sum(map(len, past[dropped:])) + len(new) + room > max_len:
        dropped += 1
    return b"".join(past[dropped:]) + new, dropped


def is_refusal(reply: str) -> bool:
    """Whether a reply is an abstention (its first sentence, so a reply cut short still counts)."""
    return reply.strip().startswith(REFUSAL.split(".")[0])
