"""`tilelli serve`: OpenAI's wire format, bad inputs, UTF-8 streaming, batching, disconnects, the CLI.

Every server here is real (uvicorn on 127.0.0.1, a free port, in a thread) and every request
is bounded: tiny models or a scripted fake decoder, a few requests, short replies.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from conftest import tiny

from tilelli.chat.abstain import AbstainRule
from tilelli.chat.template import END, REFUSAL
from tilelli.infer import load_decoder
from tilelli.infer.generate import GeneratedByte, SamplingConfig
from tilelli.model.checkpoint import save
from tilelli.model.models import build_model
from tilelli.serve.app import Limits, create_app
from tilelli.serve.connection import server_config
from tilelli.serve.protocol import ApiError, chat_turns
from tilelli.serve.text import Utf8Text

uvicorn = pytest.importorskip("uvicorn")

GREEDY = SamplingConfig(max_new_tokens=64, temperature=0.0)


class ScriptDecoder:
    """A fake `Decoder` that says `reply(prompt)` byte by byte (then repeats it), with a
    probability that varies per byte, optionally sleeping per step to make streams last."""

    def __init__(self, reply: Callable[[bytes], bytes] | bytes = b"ok", delay: float = 0.0, max_seq_len: int = 256):
        self.reply = reply if callable(reply) else (lambda _prompt, r=reply: r)
        self.delay, self.max_seq_len = delay, max_seq_len
        self.steps = 0  # forward calls so far
        self.rows: list[int] = []  # sequences per forward call

    def new_sequence(self, max_len: int | None = None) -> dict:
        return {"prompt": b"", "n": 0}

    def forward(self, seqs: list[dict], chunks: list[bytes], all_logits: bool = False) -> np.ndarray:
        self.steps += 1
        self.rows.append(len(seqs))
        if self.delay:
            time.sleep(self.delay)
        if all_logits:  # teacher forcing (abstain probability): flat predictions, one row per byte
            return np.zeros((sum(map(len, chunks)), 256), dtype=np.float32)
        out = np.zeros((len(seqs), 256), dtype=np.float32)
        for i, (s, chunk) in enumerate(zip(seqs, chunks, strict=True)):
            if s["n"] == 0:
                s["prompt"] = chunk
            script = self.reply(s["prompt"])
            out[i, script[s["n"] % len(script)]] = 5.0 + 4.0 * math.sin(s["n"])  # p from 0.01 to 0.98
            s["n"] += 1
        return out


@contextlib.contextmanager
def serving(app, wait: bool = True) -> Iterator[str]:
    """Run `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(base + "/health", timeout=2)
                if not wait or r.status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("the server did not become ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def fake_app(decoder: ScriptDecoder, limits: Limits | None = None, cap: int = 64):
    return create_app(lambda: decoder, "fake", SamplingConfig(max_new_tokens=cap, temperature=0.0), limits)


def sse(lines: Iterator[str]) -> list:
    """The `data:` payloads of a server-sent event stream: JSON objects, and "[DONE]"."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected line in the event stream: {line!r}"
    return out


def stream(base: str, path: str, body: dict) -> list:
    with httpx.stream("POST", base + path, json={**body, "stream": True}, timeout=20) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse(r.iter_lines())


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny packed ternary chat-shaped checkpoint (random weights) named tiny-chat."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("serve") / "tiny-chat"
    save(build_model(tiny("tilelli-lite-ternary", max_seq_len=128)), path, packed=True)
    return path


@pytest.fixture(scope="module")
def real(ckpt) -> Iterator[str]:
    """A server on the tiny checkpoint, through the native engine when it builds (1 thread)."""
    app = create_app(lambda: load_decoder(ckpt, threads=1), ckpt.name, GREEDY, Limits(max_batch=8))
    with serving(app) as base:
        yield base


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with serving(fake_app(ScriptDecoder("Hé€😀!".encode()))) as base:
        yield base


# --- text: never half a character --------------------------------------------------------------

def test_utf8_text_holds_back_split_characters_and_replaces_invalid_bytes():
    data = "aé€😀".encode() + b"\xc3A\xff" + "ß".encode() + b"\xe2\x82"  # invalid tail: cut mid-character
    probs = [0.5 + i / 100 for i in range(len(data))]
    text, pieces = Utf8Text(), []
    for b, p in zip(data, probs, strict=True):
        pieces.append(text.feed([GeneratedByte(b, p)]))
    pieces.append(text.flush())
    assert "".join(p.text for p in pieces) == data.decode("utf-8", "replace") == "aé€😀\ufffdA\ufffdß\ufffd"
    assert [p.text for p in pieces[1:3]] == ["", "é"]  # é's first byte is held back
    assert sum((p.byte_probs for p in pieces), []) == probs  # every byte once, in order
    for p in pieces:
        assert len(p.char_probs) == len(p.text)
    chars = sum((p.char_probs for p in pieces), [])
    assert chars[1] == pytest.approx(probs[1] * probs[2])  # é: the product of its two bytes
    assert chars[3] == pytest.approx(math.prod(probs[6:10]))  # 😀: four bytes
    assert chars[4] == pytest.approx(probs[10]) and chars[5] == pytest.approx(probs[11])  # \xc3 -> U+FFFD, then A


def test_stream_never_cuts_a_character(fake):
    """The fake says Hé€😀! one byte per step: the multi-byte characters span steps."""
    events = stream(fake, "/v1/completions", {"prompt": "x", "max_tokens": 20, "confidences": True, "logprobs": 2})
    chunks = [e for e in events[:-1] if e["choices"][0]["text"]]
    texts = [c["choices"][0]["text"] for c in chunks]
    full = ("Hé€😀!".encode() * 3)[:20].decode("utf-8", "replace")
    assert "".join(texts) == full
    assert all(t in ("H", "é", "€", "😀", "!") for t in texts[:-1])  # whole characters, one per chunk
    for c in chunks:
        choice = c["choices"][0]
        assert len(choice["char_confidences"]) == len(choice["text"])
        assert all(lp <= 0 for lp in choice["logprobs"]["token_logprobs"])
    assert sum(len(c["choices"][0]["logprobs"]["tokens"]) for c in chunks) == 20  # every byte once


def test_logprobs_are_openais_shapes_with_bytes_for_partial_characters(fake):
    """Each byte is a token: ASCII as itself, a byte of a multi-byte character as its escape, with
    `bytes` holding it; greedy, the first alternative is the byte chosen."""
    whole = httpx.post(fake + "/v1/chat/completions", json={"messages": chat("hi"), "max_tokens": 6,
                                                           "logprobs": True, "top_logprobs": 3}).json()
    content = whole["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["H", "\\xc3", "\\xa9", "\\xe2", "\\x82", "\\xac"]
    assert b"".join(bytes(t["bytes"]) for t in content) == "Hé€".encode() == whole["choices"][0]["message"][
        "content"].encode()
    for t in content:
        assert len(t["top_logprobs"]) == 3 and t["top_logprobs"][0]["bytes"] == t["bytes"]
        assert t["top_logprobs"][0]["logprob"] == t["logprob"] <= 0
        assert t["top_logprobs"][1]["logprob"] <= t["top_logprobs"][0]["logprob"]
    streamed = stream(fake, "/v1/chat/completions", {"messages": chat("hi"), "max_tokens": 6, "logprobs": True,
                                                     "top_logprobs": 3})
    pieces = [c["choices"][0] for c in streamed[:-1] if c["choices"][0]["delta"].get("content")]
    assert [[t["token"] for t in p["logprobs"]["content"]] for p in pieces] == [["H"], ["\\xc3", "\\xa9"],
                                                                              ["\\xe2", "\\x82", "\\xac"]]
    assert sum((p["logprobs"]["content"] for p in pieces), []) == content
    plain = httpx.post(fake + "/v1/completions", json={"prompt": "xy", "max_tokens": 3, "logprobs": 0}).json()
    legacy = plain["choices"][0]["logprobs"]
    assert legacy["tokens"] == ["H", "\\xc3", "\\xa9"] and legacy["text_offset"] == [2, 3, 3]
    assert legacy["top_logprobs"] == [{}, {}, {}] and len(legacy["token_logprobs"]) == 3
    assert httpx.post(fake + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).json()["choices"][0][
        "logprobs"] is None  # not asked for: null, as OpenAI


def test_invalid_bytes_become_replacement_characters():
    with serving(fake_app(ScriptDecoder(b"a\x80b\xc3"))) as base:
        r = httpx.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 4}).json()
        assert r["choices"][0]["text"] == "a\ufffdb\ufffd"
        assert r["choices"][0]["finish_reason"] == "length"


# --- the wire format -------------------------------------------------------------------------

def test_chat_stream_format_role_first_finish_last_usage_done(fake):
    body = {"messages": chat("hi"), "max_tokens": 7, "stream_options": {"include_usage": True}}
    events = stream(fake, "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    first, *middle, last, usage = events[:-1]
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["choices"][0]["finish_reason"] is None and "role" not in e["choices"][0]["delta"] for e in middle)
    # 7 bytes: 😀's four do not fit after "Hé€", so a chat reply (always valid UTF-8) takes another byte
    assert "".join(e["choices"][0]["delta"]["content"] for e in middle) == "Hé€\x00"
    assert last["choices"][0]["finish_reason"] == "length" and last["choices"][0]["delta"] == {}
    assert last["choices"][0]["abstained"] is False
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 7,
                                                        "total_tokens": 11}
    assert len({e["id"] for e in events[:-1]}) == 1
    assert all(e["usage"] is None for e in events[:-2])
    whole = httpx.post(fake + "/v1/chat/completions", json={"messages": chat("hi"), "max_tokens": 7}).json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["content"] == "".join(e["choices"][0]["delta"]["content"] for e in middle)


def test_completion_stream_without_usage_ends_with_finish_and_done(fake):
    events = stream(fake, "/v1/completions", {"prompt": "x", "max_tokens": 3})
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events[:-1])
    assert all(e["object"] == "text_completion" for e in events[:-1])


def test_chat_stops_at_the_end_of_turn_and_marks_abstention():
    refuse = ScriptDecoder(lambda p: REFUSAL.encode() + bytes([END]) if b"capital" in p else b"Hi!" + bytes([END]))
    with serving(fake_app(refuse, cap=100)) as base:
        r = httpx.post(base + "/v1/chat/completions", json={"messages": chat("What is the capital of Peru?"),
                                                            "abstain_probability": True}).json()
        choice = r["choices"][0]
        assert choice["message"]["content"] == REFUSAL and choice["finish_reason"] == "stop"
        assert choice["abstained"] is True and 0 <= choice["abstain_probability"] <= 1
        events = stream(base, "/v1/chat/completions", {"messages": chat("hello")})
        assert events[-2]["choices"][0]["abstained"] is False and events[-2]["choices"][0]["finish_reason"] == "stop"
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Hi!"


def test_an_abstain_rule_decides_chat_replies_but_not_completions():
    decoder = ScriptDecoder(b"Hi!" + bytes([END]))
    app = create_app(lambda: decoder, "fake", SamplingConfig(max_new_tokens=100, temperature=0.0),
                     rule=AbstainRule(0.0))  # every prompt's refusal probability is above 0
    with serving(app) as base:
        steps = decoder.steps
        choice = httpx.post(base + "/v1/chat/completions", json={"messages": chat("hello")}).json()["choices"][0]
        # (the fake's uniform predictions tie after the refusals' opening: the facts refusal, listed first)
        assert choice["message"]["content"] == REFUSAL and choice["abstained"] is True
        assert choice["abstain_reason"] == "fact"
        assert choice["finish_reason"] == "stop" and decoder.steps == steps + 2  # two scoring passes, no decoding
        events = stream(base, "/v1/chat/completions", {"messages": chat("hello"), "max_tokens": 5})
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == REFUSAL[:5]
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        text = httpx.post(base + "/v1/completions", json={"prompt": "hello", "max_tokens": 3}).json()
        assert text["choices"][0]["text"] == "Hi!"


def test_models_health_and_page(real, ckpt):
    models = httpx.get(real + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [ckpt.name]
    assert httpx.get(real + f"/v1/models/{ckpt.name}").json()["id"] == ckpt.name
    assert httpx.get(real + "/v1/models/gpt-4").status_code == 404
    health = httpx.get(real + "/health").json()
    assert health["status"] == "ok" and health["context"] == 128 and health["active"] == 0
    page = httpx.get(real + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<script>" in page.text and "<style>" in page.text  # inline: nothing to fetch
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)  # no CDN, works offline


def test_health_is_503_while_loading_then_200():
    gate = threading.Event()

    def load():
        gate.wait(120)  # long, so that a starved test process still sees the loading state
        return ScriptDecoder()

    with serving(create_app(load, "slow"), wait=False) as base:
        r = httpx.get(base + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = httpx.post(base + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        gate.set()
        deadline = time.monotonic() + 60
        while httpx.get(base + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_a_model_that_fails_to_load_says_why():
    def load():
        raise OSError("weights are damaged")

    failures = []
    app = create_app(load, "broken", on_failure=failures.append)
    with serving(app, wait=False) as base:
        deadline = time.monotonic() + 60
        while httpx.get(base + "/health").json()["status"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = httpx.post(base + "/v1/chat/completions", json={"messages": chat("hi")})
        assert r.status_code == 503 and "weights are damaged" in r.json()["error"]["message"]
    assert failures == ["weights are damaged"]


# --- bad inputs: a clear 4xx in OpenAI's shape, and the server goes on ---------------------------

BAD = [
    ("/v1/completions", b"{\"prompt\": ", 400, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, "must be a JSON object"),
    ("/v1/completions", b"", 400, "must be a JSON object"),
    ("/v1/completions", b"{\"prompt\": \"\xff\xfe\"}", 400, "not valid UTF-8"),
    ("/v1/completions", b"{\"prompt\": NaN}", 400, "not valid JSON"),
    ("/v1/completions", {"prompt": 42}, 400, "prompt must be a string, got an integer"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt per request"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt is empty"),
    ("/v1/completions", {"prompt": "x" * 300}, 400, "the model's context is 256"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens must be between 0 and 64"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10 ** 9}, 400, "max_tokens must be between 0 and 64"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "10"}, 400, "max_tokens must be an integer, got a string"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature must be a number"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p must be in (0.0, 1.0]"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream must be true or false"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", 1]}, 400, "stop must be a string or a list of strings"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "one choice per request"),
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, 400, "logprobs must be between 0 and 5"),
    ("/v1/chat/completions", {"messages": chat("hi"), "top_logprobs": 2}, 400, "top_logprobs needs \"logprobs\""),
    ("/v1/chat/completions", {"messages": chat("hi"), "logprobs": True, "top_logprobs": 21}, 400,
     "top_logprobs must be between 0 and 20"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model 'gpt-4' is not served here"),
    ("/v1/completions", {"prompt": "x", "model": 7}, 400, "model must be a string"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages is empty"),
    ("/v1/chat/completions", {}, 400, "messages must be a list"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages must be a list"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role must be system, user"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "content must be a string"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "  "}]}, 400, "last user message is empty"),
    ("/v1/chat/completions", {"messages": [*chat("hi"), {"role": "assistant", "content": "yo"}]}, 400,
     "last message must be the user's"),
    ("/v1/chat/completions", {"messages": chat("x" * 250)}, 400, "does not fit the model's context"),
    ("/v1/chat/completions", {"messages": chat("hi"), "max_completion_tokens": 65}, 400, "between 0 and 64"),
    ("/v1/completions", b"x" * (10 << 20), 413, "this server takes at most 1,048,576"),
    ("/v2/completions", {"prompt": "x"}, 404, "no such endpoint"),
]


@pytest.mark.parametrize("path,body,status,message", BAD, ids=[f"{i}-{b[3][:24]}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_clear_error_and_the_server_goes_on(fake, path, body, status, message):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(fake + path, headers={"Content-Type": "application/json"}, timeout=20, **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    ok = httpx.post(fake + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "H"


def test_a_chunked_body_over_the_limit_is_413():
    with serving(fake_app(ScriptDecoder(), Limits(max_body_bytes=1000))) as base:
        def parts():
            for _ in range(20):
                yield b"x" * 100

        r = httpx.post(base + "/v1/completions", content=parts())  # no Content-Length: counted as it comes
        assert r.status_code == 413 and "over 1,000 bytes" in r.json()["error"]["message"]


def test_chat_messages_become_turns():
    history, user = chat_turns([{"role": "system", "content": "Be brief."}, *chat("hi"),
                                {"role": "assistant", "content": "Hello!"}, *chat("a"), *chat("b")])
    assert history == [("Be brief.\n\nhi", "Hello!")] and user == "a\nb"
    assert chat_turns([{"role": "user", "content": [{"type": "text", "text": "x"}]}]) == ([], "x")
    with pytest.raises(ApiError, match="first non-system message must be the user's"):
        chat_turns([{"role": "assistant", "content": "x"}, *chat("y")])


# --- concurrency, queue, disconnects ---------------------------------------------------------------

def test_concurrent_requests_get_the_same_greedy_bytes_as_alone(real):
    prompts = ["Once upon a time", "Tom had a", "The sun", "Lily and the big"]

    def ask(p: str) -> str:
        r = httpx.post(real + "/v1/completions", json={"prompt": p, "max_tokens": 24, "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts * 2))
    assert together == alone * 2


def test_concurrent_streams_share_forward_calls():
    decoder = ScriptDecoder(b"abc", delay=0.005)
    with serving(fake_app(decoder)) as base:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: stream(base, "/v1/completions", {"prompt": "x", "max_tokens": 30}),
                                    range(4)))
        for events in results:
            assert "".join(e["choices"][0]["text"] for e in events[:-1]) == ("abc" * 10)
        assert max(decoder.rows) > 1  # several streams in one forward call


def wait_for(base: str, **want) -> dict:
    deadline = time.monotonic() + 60
    while True:
        h = httpx.get(base + "/health").json()
        if all(h[k] == v for k, v in want.items()):
            return h
        assert time.monotonic() < deadline, f"health stayed {h}, wanted {want}"
        time.sleep(0.01)


def test_a_client_that_disconnects_mid_stream_frees_its_slot():
    decoder = ScriptDecoder(b"slow ", delay=0.02)  # 64 bytes would take over a second
    with serving(fake_app(decoder, Limits(max_batch=1, max_queue=1))) as base:
        with httpx.Client(timeout=10) as client, client.stream(
                "POST", base + "/v1/completions", json={"prompt": "x", "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the stream is running
            assert httpx.get(base + "/health").json()["active"] == 1
        # the connection is closed here, after a few bytes of 64
        wait_for(base, active=0, queued=0)
        steps = decoder.steps
        time.sleep(0.1)
        assert decoder.steps == steps  # nothing decodes for the departed client
        r = httpx.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "slo"


def test_a_client_that_gives_up_on_a_whole_reply_frees_its_slot():
    decoder = ScriptDecoder(b"slow ", delay=0.02)
    with serving(fake_app(decoder, Limits(max_batch=1, max_queue=1))) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + "/v1/completions", json={"prompt": "x"}, timeout=0.3)
        wait_for(base, active=0, queued=0)


def test_a_full_queue_is_429_and_the_server_recovers():
    decoder = ScriptDecoder(b"slow ", delay=0.02)
    with serving(fake_app(decoder, Limits(max_batch=1, max_queue=1))) as base, httpx.Client(timeout=10) as client:
        body = {"prompt": "x", "stream": True}
        with client.stream("POST", base + "/v1/completions", json=body) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            with client.stream("POST", base + "/v1/completions", json=body):
                wait_for(base, active=1, queued=1)
                r = httpx.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
                assert r.status_code == 429
                error = r.json()["error"]
                assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
        wait_for(base, active=0, queued=0)
        assert httpx.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


# --- the openai client against a real server ---------------------------------------------------------

def test_openai_client_completion_chat_and_stream(real, ckpt):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=real + "/v1", api_key="unused", max_retries=0, timeout=30)
    [model] = [m.id for m in client.models.list()]
    assert model == ckpt.name
    done = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 12
    answer = client.chat.completions.create(model=model, messages=chat("Hello!"), max_tokens=12, temperature=0)
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].finish_reason in ("stop", "length")
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].model_extra["abstained"] in (True, False)  # the extra fields, as docs/serve.md says
    parts = list(client.chat.completions.create(model=model, messages=chat("Hello!"), max_tokens=12, temperature=0,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_body={"confidences": True}))
    content = [p.choices[0] for p in parts if p.choices and p.choices[0].delta.content]
    assert all(len(c.model_extra["char_confidences"]) == len(c.delta.content) for c in content)
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == answer.choices[0].message.content
    assert parts[-1].usage.completion_tokens == answer.usage.completion_tokens
    text = "".join(p.choices[0].text for p in client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True))
    assert text == done.choices[0].text
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)


def test_openai_client_reads_logprobs(real):
    """What a tool that reads OpenAI logprobs gets: the typed objects of the official client."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=real + "/v1", api_key="unused", max_retries=0, timeout=30)
    model = client.models.list().data[0].id
    ask = {"model": model, "messages": chat("Hello!"), "max_tokens": 12, "temperature": 0, "logprobs": True,
           "top_logprobs": 4}
    answer = client.chat.completions.create(**ask)
    content = answer.choices[0].logprobs.content
    assert b"".join(bytes(t.bytes) for t in content).decode("utf-8") == answer.choices[0].message.content
    assert answer.usage.completion_tokens == len(content)  # a token is a byte
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 4
        # greedy: the likeliest byte, unless a chat constraint (valid UTF-8, no refusal quoted) banned it; the
        # alternatives are the model's own distribution, bans not applied
        assert t.top_logprobs[0].logprob >= t.logprob - 1e-9
        assert sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-6
    parts = list(client.chat.completions.create(**ask, stream=True))
    streamed = [t for p in parts if p.choices and p.choices[0].logprobs for t in p.choices[0].logprobs.content]
    assert [(t.bytes, t.logprob) for t in streamed] == [(t.bytes, t.logprob) for t in content]
    done = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2)
    legacy = done.choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs) == 8
    assert all(len(alternatives) == 2 for alternatives in legacy.top_logprobs)
    assert legacy.text_offset[0] == len("Once upon a time")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=model, prompt="x", max_tokens=10_000)


# --- the command ---------------------------------------------------------------------------------

def test_cli_serves_until_interrupted(ckpt):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tilelli", "serve", "--checkpoint", str(ckpt), "--port", "0", "--threads", "1",
           "--log-level", "warning", "--max-new-tokens", "16"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        assert f"tilelli serve: {ckpt.name} at http://127.0.0.1:" in line, line
        base = line.split(" at ")[1].split("/ ")[0]
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/health").status_code == 200:
                    break
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        r = httpx.post(base + "/v1/chat/completions", json={"messages": chat("hi")})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 16
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130  # Ctrl-C: a clean shutdown, the CLI's usual exit code
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def test_cli_bad_arguments_are_one_line(tmp_path, capsys):
    from tilelli.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "70000"])
    assert e.value.code == 2


def test_cli_port_in_use_is_one_line(ckpt, capsys):
    from tilelli.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        assert main(["serve", "--checkpoint", str(ckpt), "--port", str(taken.getsockname()[1])]) == 2
        assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
    finally:
        taken.close()
