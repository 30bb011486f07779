"""The server's contract as typed pydantic models: every request body, response and error.

FastAPI builds /openapi.json from these (see `install_openapi`), so a client, a code
generator or schemathesis (tests/test_serve_contract.py runs it) can read every endpoint and
field. Requests are *checked* by `tilelli.serve.protocol`, by hand, because OpenAI clients expect
a 400 in OpenAI's error shape naming the field, not FastAPI's 422; these models state the same
rules (types, ranges, which fields exist) for machines, and the schemathesis test holds the two
together: any body these models allow gets a 200 or a documented 4xx, never a 5xx.

Unknown request fields are allowed (OpenAI clients send `user`, `metadata`, ...) and ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from tilelli.limits import SEED_MAX

_OPEN = ConfigDict(extra="allow")


class StreamOptions(BaseModel):
    model_config = _OPEN
    include_usage: bool | None = Field(None, description="with stream: a last chunk with the token usage")


class _Sampling(BaseModel):
    """Fields both generation endpoints read."""

    model_config = _OPEN
    model: str | None = Field(None, description="the served model's name (GET /v1/models); may be left out")
    max_tokens: int | None = Field(None, ge=0, description="bytes to generate at most; at most the server's cap "
                                                           "(tilelli serve --max-new-tokens), which is the default")
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass")
    top_k: int | None = Field(None, ge=0, le=256, description="sample among the k likeliest bytes; 0 = off "
                                                              "(not in OpenAI's API)")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="for reproducible sampling; leave it out for a "
                                                                  "random one")
    stop: str | list[str] | None = Field(None, description="up to 4 non-empty stop sequences, not returned")
    stream: bool | None = Field(None, description="answer with server-sent events (OpenAI's chunk format)")
    stream_options: StreamOptions | None = Field(None, description="only with stream: true")
    n: Literal[1] | None = Field(None, description="one choice per request")
    best_of: Literal[1] | None = None
    echo: Literal[False] | None = None
    confidences: bool | None = Field(None, description="add the model's probability of every character "
                                                       "(char_confidences; not in OpenAI's API)")


class CompletionRequest(_Sampling):
    """POST /v1/completions: a raw prompt, no chat template."""

    prompt: str | list[str] = Field(description="UTF-8 text (no lone surrogates), or a list of one string; "
                                                 "at most the model's context in bytes")
    logprobs: int | None = Field(None, ge=0, le=5, description="report every token's (byte's) logprob and this "
                                                               "many likeliest alternatives")


class TextPart(BaseModel):
    model_config = _OPEN
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _OPEN
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = Field(None, description="UTF-8 text, or text parts")


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions: messages through the chat template. The first non-system message
    and the last one are the user's."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0, description="newer name of max_tokens")
    logprobs: bool | None = Field(None, description="report every token's (byte's) logprob")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="with logprobs: true, this many likeliest "
                                                                   "alternatives of every token")
    abstain_probability: bool | None = Field(None, description="add the chat decision's signals, "
                                                               "abstain_probability and surprise "
                                                               "(not in OpenAI's API)")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str = Field(description="the byte's character when it is a whole one (ASCII), else its escape \\xNN")
    logprob: float = Field(description="natural log; -9999.0 when the probability underflowed to 0")
    bytes: list[int] = Field(description="the byte itself")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int] = Field(description="where each token's character starts in prompt + completion, "
                                               "in characters")


class _Choice(BaseModel):
    model_config = _OPEN
    index: int
    finish_reason: str | None
    char_confidences: list[float] | None = None


class CompletionChoice(_Choice):
    text: str
    logprobs: CompletionLogprobs | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Choice):
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    abstained: bool | None = None
    abstain_reason: str | None = Field(None, description="why the decision abstained: \"fact\" (a refusal "
                                                         "is likely) or \"unreadable\" (the text surprises the "
                                                         "model); null when it answered")
    dropped_turns: int | None = Field(None, description="oldest turns left out to fit the model's context")
    abstain_probability: float | None = Field(None, description="the model's probability of refusing; null if "
                                                                "not a finite number")
    surprise: float | None = Field(None, description="the last user turn's surprise in bits per byte; null if not "
                                                     "a finite number")


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    model_config = _OPEN
    status: str = Field(description="ok, loading or failed")
    model: str
    max_tokens: int
    error: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    why = {400: "a bad request (the message names the field)", 404: "no such model or endpoint",
           405: "the path exists but takes another method (see Allow)", 413: "the body is over the server's limit",
           429: "every decode slot and queue place is taken; retry later",
           503: "the model is loading, failed to load, or the server is stopping"}
    return {s: {"model": ErrorResponse, "description": why[s]} for s in statuses}


def generation_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a generation endpoint: the reply as JSON, or as server-sent events."""
    events = {"text/event-stream": {"schema": {"type": "string"}}}
    return {200: {"model": model, "description": "the reply; with stream: true, server-sent events",
                  "content": events}, **errors(400, 404, 413, 429, 503)}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` that documents `model` as the JSON request body (protocol.py parses it)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


REQUEST_MODELS: tuple[type[BaseModel], ...] = (CompletionRequest, ChatCompletionRequest)


def install_openapi(app: FastAPI) -> None:
    """Serve /openapi.json with the request models as components (FastAPI adds only the models
    it validates itself, and the request bodies are parsed by hand; see module doc)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in REQUEST_MODELS:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
