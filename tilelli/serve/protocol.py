"""OpenAI's request and response shapes, checked by hand so every bad field is a clear 400.

Why not pydantic models: FastAPI turns their failures into 422 responses in its own shape;
OpenAI clients expect 400 with `{"error": {"message", "type", "param", "code"}}`, naming the
field. Parsing a dict by hand keeps every message in one place and in the project's voice
("max_tokens must be ..., got ...; what to do").

What is read (everything else a client sends, such as `user`, is ignored):
  both:  model, max_tokens, temperature, top_p, top_k (extra), seed, stop, stream,
         stream_options.include_usage, n (1 only), confidences (extra)
  completions: prompt (a string, or a list of one string), logprobs (0-5 alternatives)
  chat:  messages, max_completion_tokens (newer name of max_tokens), logprobs, top_logprobs (0-20),
         abstain_probability (extra)
Refused with a 400 rather than silently ignored: n > 1, echo, best_of > 1, tools.

Tokens are bytes. In logprobs a byte's `token` is its character when it is one (ASCII), else its
escape ("\\xe2"), and `bytes` always holds the byte itself: a multi-byte character is several
tokens whose `bytes` concatenate to its UTF-8. A logprob is the model's own log probability
(softmax at temperature 1, before top-k / top-p), as OpenAI reports it.

Chat messages become the chat template's turns: system (and developer) messages are joined
and put before the first user message, separated by a blank line (the model was trained on
user/assistant turns only); consecutive messages of one role are joined with a newline; the
first turn must be the user's and so must the last (the message to reply to).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tilelli.chat.session import conversation_prompt
from tilelli.chat.template import END_BYTE, USER_BYTE
from tilelli.errors import TilelliError
from tilelli.infer.generate import GeneratedByte, SamplingConfig
from tilelli.limits import SEED_MAX, utf8


class ApiError(Exception):
    """An error response in OpenAI's shape; `status` is the HTTP status."""

    TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
             429: "rate_limit_error", 503: "server_error", 500: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    """A checked request: the prompt bytes the model sees and how to answer."""

    chat: bool
    prompt: bytes
    cfg: SamplingConfig
    stream: bool
    include_usage: bool
    confidences: bool
    abstain_probability: bool
    dropped_turns: int = 0  # chat: oldest turns left out to fit the context
    logprobs: bool = False  # report each token's logprob (and cfg.top_logprobs alternatives)


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


def typename(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


def _text(text: str, param: str) -> bytes:
    """A string field's UTF-8 bytes; a lone surrogate ("\\udcff" in the JSON) is a 400, as
    invalid text is at every other door (tilelli.limits.utf8)."""
    try:
        return utf8(text, param)
    except TilelliError as e:
        raise bad(str(e), param) from None


def _int(body: dict, key: str, lo: int | None = None, hi: int | None = None, hint: str = "") -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{key} must be an integer, got {typename(v)}", key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad(f"{key} must be {span}{hint}; got {v}", key)
    return v


def _number(body: dict, key: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise bad(f"{key} must be a number, got {typename(v) if not isinstance(v, float) else v}", key)
    if v < lo or v > hi or (lo_open and v == lo):
        raise bad(f"{key} must be in {'(' if lo_open else '['}{lo}, {hi}]; got {v}", key)
    return float(v)


def _bool(body: dict, key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(f"{key} must be true or false, got {typename(v)}", key)
    return v


def check_model(body: dict, served: str) -> None:
    """`model` may be left out (the one served model); another name is a 404, as OpenAI does."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise bad(f"model must be a string, got {typename(model)}", "model")
    if model != served:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {served!r} "
                            "(GET /v1/models)", "model", "model_not_found")


def _refuse_unsupported(body: dict) -> None:
    n = _int(body, "n", lo=1)
    if n is not None and n != 1:
        raise bad(f"n={n}: this server returns one choice per request; send {n} requests", "n")
    best_of = _int(body, "best_of", lo=1)
    if best_of is not None and best_of != 1:
        raise bad("best_of is not supported; send several requests", "best_of")
    if body.get("echo") not in (None, False):
        raise bad("echo is not supported; the prompt is yours already", "echo")
    for key in ("tools", "functions"):
        if body.get(key):
            raise bad(f"{key} (function calling) is not supported by this model", key)


def _stops(body: dict) -> tuple[bytes, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad(f"stop must be a string or a list of strings, got {typename(v)}", "stop")
    if len(items) > 4:
        raise bad(f"stop takes at most 4 sequences, got {len(items)}", "stop")
    if any(s == "" for s in items):
        raise bad("a stop sequence is empty", "stop")
    return tuple(_text(s, "stop") for s in items)


def _logprobs(body: dict, chat: bool) -> tuple[bool, int]:
    """(report logprobs, alternatives per token): chat's `logprobs` (true/false) and
    `top_logprobs` (0-20), or the completions endpoint's `logprobs` (0-5, the alternatives)."""
    if not chat:
        if body.get("logprobs") is None or body.get("logprobs") is False:  # (0 == False: 0 asks for them)
            return False, 0
        return True, _int(body, "logprobs", lo=0, hi=5)
    wanted = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", lo=0, hi=20)
    if top is not None and not wanted:
        raise bad("top_logprobs needs \"logprobs\": true", "top_logprobs")
    return wanted, top or 0


def _common(body: dict, defaults: SamplingConfig, cap: int, chat: bool) -> tuple[SamplingConfig, bool, bool, bool]:
    """The sampling settings and the stream, include_usage and logprobs flags of both endpoints."""
    _refuse_unsupported(body)
    hint = f" (this server's cap, tilelli serve --max-new-tokens {cap})"
    max_tokens = _int(body, "max_tokens", lo=0, hi=cap, hint=hint)
    if chat:
        newer = _int(body, "max_completion_tokens", lo=0, hi=cap, hint=hint)
        max_tokens = newer if newer is not None else max_tokens
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    top_k = _int(body, "top_k", lo=0, hi=256)
    seed = _int(body, "seed", lo=0, hi=SEED_MAX, hint=" (leave it out for a random one)")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad(f"stream_options must be an object, got {typename(options)}", "stream_options")
    include_usage = _bool(options or {}, "include_usage")
    if options and not stream:
        raise bad("stream_options needs \"stream\": true", "stream_options")
    stop = _stops(body) + ((END_BYTE, USER_BYTE) if chat else ())
    logprobs, top_logprobs = _logprobs(body, chat)
    try:  # the checks above are the API's; SamplingConfig's own are the library's, and a 400 too
        cfg = SamplingConfig(
            max_new_tokens=cap if max_tokens is None else max_tokens,
            temperature=defaults.temperature if temperature is None else temperature,
            top_k=defaults.top_k if top_k is None else top_k,
            top_p=defaults.top_p if top_p is None else top_p,
            seed=defaults.seed if seed is None else seed,
            stop=stop,
            top_logprobs=top_logprobs)
    except TilelliError as e:
        raise bad(str(e)) from None
    return cfg, stream, include_usage, logprobs


def parse_completion(body: dict, defaults: SamplingConfig, cap: int, context: int) -> GenerationRequest:
    """POST /v1/completions: the prompt's UTF-8 bytes, as they are (no chat template)."""
    cfg, stream, usage, logprobs = _common(body, defaults, cap, chat=False)
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, list) and all(isinstance(x, str) for x in p):
        raise bad(f"prompt is a list of {len(p)} strings; send one prompt per request", "prompt")
    if not isinstance(p, str):
        raise bad(f"prompt must be a string, got {typename(p)}", "prompt")
    data = _text(p, "prompt")
    if not data:
        raise bad("prompt is empty; give at least one character", "prompt")
    if len(data) > context:
        raise bad(f"prompt is {len(data)} bytes but the model's context is {context}; shorten it", "prompt",
                  "context_length_exceeded")
    return GenerationRequest(False, data, cfg, stream, usage, _bool(body, "confidences"), False,
                             logprobs=logprobs)


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        _text(c, f"messages[{i}].content")
        return c
    if isinstance(c, list):  # content parts: only text parts make sense for a text model
        texts = []
        for part in c:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad(f"messages[{i}].content: only text parts {{\"type\": \"text\", \"text\": ...}} "
                          "are supported", f"messages[{i}].content")
            _text(part["text"], f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"messages[{i}].content must be a string, got {typename(c)}", f"messages[{i}].content")


def chat_turns(messages: Any) -> tuple[list[tuple[str, str]], str]:
    """OpenAI messages -> (history of (user, assistant) pairs, the user message to answer);
    the rules are in the module doc."""
    if not isinstance(messages, list):
        raise bad(f"messages must be a list of {{\"role\", \"content\"}} objects, got {typename(messages)}",
                  "messages")
    if not messages:
        raise bad("messages is empty; send at least one user message", "messages")
    system: list[str] = []
    turns: list[list[str]] = []  # [role, text], consecutive roles merged
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object with role and content, got {typename(m)}",
                      f"messages[{i}]")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise bad(f"messages[{i}].role must be system, user or assistant, got {role!r}", f"messages[{i}].role")
        text = _content(m, i)
        if role in ("system", "developer"):
            system.append(text)
        elif turns and turns[-1][0] == role:
            turns[-1][1] += "\n" + text
        else:
            turns.append([role, text])
    if not turns or turns[0][0] != "user":
        raise bad("the first non-system message must be the user's", "messages")
    if turns[-1][0] != "user":
        raise bad("the last message must be the user's (the one to reply to)", "messages")
    if not turns[-1][1].strip():
        raise bad("the last user message is empty", "messages")
    if system and any(s.strip() for s in system):
        turns[0][1] = "\n".join(s for s in system if s.strip()) + "\n\n" + turns[0][1]
    history = [(turns[j][1], turns[j + 1][1]) for j in range(0, len(turns) - 1, 2)]
    return history, turns[-1][1]


def parse_chat(body: dict, defaults: SamplingConfig, cap: int, context: int) -> GenerationRequest:
    """POST /v1/chat/completions: messages through the chat template; generation stops at the
    end of the assistant's turn."""
    cfg, stream, usage, logprobs = _common(body, defaults, cap, chat=True)
    history, user = chat_turns(body.get("messages"))
    try:  # the prompt `tilelli chat` would build: the same room for the reply, the same dropped turns
        data, dropped = conversation_prompt(history, user, context, cfg)
    except TilelliError as e:
        raise bad(str(e), "messages", "context_length_exceeded") from None
    return GenerationRequest(True, data, cfg, stream, usage, _bool(body, "confidences"),
                             _bool(body, "abstain_probability"), dropped, logprobs=logprobs)


FINISH = {"stop": "stop", "max_new_tokens": "length", "context": "length"}


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def usage(prompt_bytes: int, generated: int) -> dict[str, int]:
    """Tokens are bytes for a byte-level model."""
    return {"prompt_tokens": prompt_bytes, "completion_tokens": generated, "total_tokens": prompt_bytes + generated}


def rounded(probs: list[float]) -> list[float]:
    return [round(p, 6) for p in probs]


def finite(x: float) -> float | None:
    """A number for JSON: rounded, or null when it is nan or infinite (JSON has neither)."""
    return round(x, 6) if math.isfinite(x) else None


def token(byte: int) -> str:
    """A byte as a logprobs `token`: its character when it is a whole one (ASCII), else "\\xNN"."""
    return bytes([byte]).decode("utf-8", "backslashreplace")


def logprob(p: float) -> float:
    """log p, with OpenAI's -9999.0 for a probability that underflowed to 0 (JSON has no -inf)."""
    return math.log(p) if p > 0 else -9999.0


def _entry(byte: int, p: float) -> dict[str, Any]:
    return {"token": token(byte), "logprob": logprob(p), "bytes": [byte]}


def chat_logprobs(tokens: list[GeneratedByte]) -> dict[str, Any]:
    """A chat choice's `logprobs`: one entry per generated byte, each with its alternatives."""
    return {"content": [{**_entry(t.byte, t.prob), "top_logprobs": [_entry(b, p) for b, p in t.top]}
                        for t in tokens], "refusal": None}


def completion_logprobs(tokens: list[GeneratedByte], offsets: list[int]) -> dict[str, Any]:
    """A completion choice's (legacy) `logprobs`; offsets[i]: where token i's character starts
    in the prompt + completion text, in characters."""
    return {"tokens": [token(t.byte) for t in tokens], "token_logprobs": [logprob(t.prob) for t in tokens],
            "top_logprobs": [{token(b): logprob(p) for b, p in t.top} for t in tokens], "text_offset": offsets}
