"""The server's contract, machine-checked: /openapi.json documents every endpoint and field, a
bounded schemathesis run finds no 5xx and no response that breaks the documented schema, and
the bad requests that once gave a 500 (or held a socket) are regression tests.

Loopback only (uvicorn on 127.0.0.1 in a thread, a scripted fake decoder), fixed examples.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from test_serve import ScriptDecoder, fake_app, serving

from tilelli.serve.connection import HEAD_TIMEOUT

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")


@pytest.fixture(scope="module")
def base():
    with serving(fake_app(ScriptDecoder(b"hi there"), cap=16)) as url:
        yield url


def test_openapi_documents_every_endpoint_and_request_field(base):
    spec = httpx.get(base + "/openapi.json", timeout=10).json()
    assert {"/", "/health", "/v1/models", "/v1/models/{name}", "/v1/completions",
            "/v1/chat/completions"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    for path, model in (("/v1/completions", "CompletionRequest"), ("/v1/chat/completions", "ChatCompletionRequest")):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert {"400", "404", "413", "429", "503"} <= set(spec["paths"][path]["post"]["responses"])
    fields = set(schemas["CompletionRequest"]["properties"]) | set(schemas["ChatCompletionRequest"]["properties"])
    assert {"prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
            "stop", "stream", "stream_options", "n", "confidences", "abstain_probability", "model"} <= fields
    seed = schemas["CompletionRequest"]["properties"]["seed"]
    assert any(s.get("minimum") == 0 for s in seed["anyOf"])  # "seed": -1 is documented as bad


@pytest.mark.parametrize("path, body, message", [
    ("/v1/completions", {"prompt": "a", "seed": -1}, "seed must be between 0 and"),
    ("/v1/completions", {"prompt": "a", "seed": 2**64}, "seed must be between 0 and"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\udcffb"}]}, "not valid UTF-8"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     "lone surrogate"),
    ("/v1/completions", {"prompt": "a\ud800"}, "lone surrogate"),
    ("/v1/completions", {"prompt": "a", "stop": ["\udcff"]}, "not valid UTF-8"),
])
def test_bad_values_are_400_not_500(base, path, body, message):
    r = httpx.post(base + path, content=json.dumps(body).encode(), headers={"content-type": "application/json"},
                   timeout=10)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_deeply_nested_json_is_400(base):
    r = httpx.post(base + "/v1/completions", content=b"[" * 10_000 + b"]" * 10_000, timeout=10)
    assert r.status_code == 400 and "nests" in r.json()["error"]["message"]
    r = httpx.post(base + "/v1/completions", content=b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
                   timeout=10)
    assert r.status_code == 400


def test_a_tiny_temperature_is_its_greedy_limit(base):
    r = httpx.post(base + "/v1/completions", json={"prompt": "a", "temperature": 1e-300, "max_tokens": 4}, timeout=10)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "hi t"


def test_405_names_the_allowed_methods(base):
    r = httpx.get(base + "/v1/completions", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "takes POST" in r.json()["error"]["message"]
    r = httpx.delete(base + "/health", timeout=10)
    assert r.status_code == 405 and "GET" in r.headers["allow"]


def test_a_client_that_never_finishes_its_headers_is_dropped(base):
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        s.settimeout(HEAD_TIMEOUT + 10)
        t0 = time.monotonic()
        assert s.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < HEAD_TIMEOUT + 3
    with socket.create_connection((host, int(port))) as s:  # trickling bytes does not extend the deadline
        s.settimeout(1)
        t0 = time.monotonic()
        closed = False
        for ch in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            try:
                s.sendall(bytes([ch]))
                if s.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - t0 < HEAD_TIMEOUT + 3
    assert httpx.get(base + "/health", timeout=10).status_code == 200  # and the server serves on


def test_schemathesis_finds_no_5xx_and_no_schema_violation(base):
    """A bounded run: every operation, a fixed number of generated requests, derandomized."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks
    from schemathesis.specs.openapi import checks as openapi_checks

    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    wanted = [checks.not_a_server_error, openapi_checks.status_code_conformance,
              openapi_checks.content_type_conformance, openapi_checks.response_schema_conformance]
    failures = []
    deadline = time.monotonic() + 90  # a time bound on a busy machine: later cases are skipped, not failed
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=15, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            if time.monotonic() > deadline:
                return
            response = case.call(base_url=base, timeout=10)
            try:
                case.validate_response(response, checks=wanted)
            except AssertionError as e:  # schemathesis' failures are AssertionErrors; collect them all
                failures.append(f"{case.operation.label}: {str(e)[:300]}")

        run()
    assert not failures, "\n".join(failures[:5])
