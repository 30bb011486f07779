"""The chat's sampling defaults, in one place for `tilelli chat`, `tilelli serve` and the tests.

720 reply bytes: the chat set's story replies are at most 700 bytes (tilelli.chat.dataset), so a
story normally ends with the END byte before the limit; a session keeps up to half of the
1,024-byte context (512 bytes) for history, dropping the oldest turns beyond it. Temperature
0.7 with top-p 0.9: varied stories, few broken words. Every chat reply is valid UTF-8
(tilelli.chat.abstain.answer_sampling).
"""

from __future__ import annotations

from tilelli.chat.template import END_BYTE, USER_BYTE
from tilelli.infer.generate import SamplingConfig

CHAT_SAMPLING = SamplingConfig(max_new_tokens=720, temperature=0.7, top_p=0.9, stop=(END_BYTE, USER_BYTE),
                               valid_utf8=True)
