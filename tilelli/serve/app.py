"""The HTTP app: OpenAI-compatible completions and chat, server-sent events, the chat page.

Why FastAPI on uvicorn: both are widely used and well maintained, async from end to end (a
stream is an async generator that waits on its request's events while the loop serves every
other client), speak HTTP/1.1 with chunked streaming out of the box, and are what people who
deploy an "OpenAI-compatible server" already run. Everything model-related stays outside the
framework: `tilelli.serve.protocol` checks requests, `tilelli.serve.worker` decodes, and this
module only wires them to routes.

    POST /v1/completions        raw prompt, no chat template
    POST /v1/chat/completions   messages through the chat template
    GET  /v1/models             the one model: the checkpoint directory's name
    GET  /health                503 while the model loads (or if it failed to), 200 after
    GET  /                      the web chat page (tilelli/serve/static/index.html)

Both POST endpoints stream with "stream": true (OpenAI's chunk format, ending with
`data: [DONE]`). Every error is OpenAI's `{"error": {"message", "type", "param", "code"}}`.
A streaming client that disconnects has its stream cancelled in the worker at once; so does
one that waits for a whole (non-streamed) reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tilelli import __version__
from tilelli.chat.defaults import CHAT_SAMPLING
from tilelli.infer.generate import Decoder, SamplingConfig
from tilelli.serve import protocol, schema
from tilelli.serve.protocol import ApiError, GenerationRequest
from tilelli.serve.text import Piece, Utf8Text
from tilelli.serve.worker import DecodeWorker, Job, QueueFull, ShuttingDown

log = logging.getLogger("tilelli.serve")


@dataclass(frozen=True)
class Limits:
    """What one server accepts: request body size, streams decoded together, requests waiting."""

    max_body_bytes: int = 1 << 20
    max_batch: int = 16
    max_queue: int = 64


class ServeState:
    """The model's life in the server: loading (in a thread, so /health answers at once), ready
    (a running `DecodeWorker`) or failed (`error` says why; `on_failure` is called)."""

    def __init__(self, load: Callable[[], Decoder], model: str, defaults: SamplingConfig, limits: Limits,
                 on_failure: Callable[[str], None] | None = None, rule: Any = None) -> None:
        self.load, self.model, self.defaults, self.limits = load, model, defaults, limits
        self.rule = rule  # the chat endpoint's AbstainRule (None: the generated reply decides)
        self.on_failure = on_failure
        self.status = "loading"
        self.error: str | None = None
        self.worker: DecodeWorker | None = None
        self.context = 0  # the model's context in bytes, once loaded

    def start(self) -> None:
        threading.Thread(target=self._load, name="tilelli-load", daemon=True).start()

    def _load(self) -> None:
        try:
            decoder = self.load()
            worker = DecodeWorker(decoder, self.limits.max_batch, self.limits.max_queue)
            worker.start()
        except Exception as e:  # shown by /health and the CLI, not a traceback in a thread
            log.exception("loading the model failed")
            self.status, self.error = "failed", str(e) or type(e).__name__
            if self.on_failure is not None:
                self.on_failure(self.error)
            return
        self.context, self.worker = decoder.max_seq_len, worker
        self.status = "ready"

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def ready_worker(self) -> DecodeWorker:
        if self.worker is None:
            why = "the model is still loading; retry in a moment (GET /health says when it is ready)" \
                if self.status == "loading" else f"the model failed to load: {self.error}"
            raise ApiError(503, why, None, "model_not_ready")
        return self.worker


class _Channel:
    """A job's events, handed from the worker thread to the request's asyncio loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def deliver(self, event: tuple[str, Any]) -> None:  # on the worker thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """("piece", Piece), ("decision", Decision), then ("done", (stop_reason, n)) or ("error", (status, msg))."""
        text = Utf8Text()
        while True:
            kind, value = await self.queue.get()
            if kind == "bytes":
                piece = text.feed(value)
                if piece.text:
                    yield "piece", piece
                continue
            if kind == "done":
                tail = text.flush()
                if tail.text:
                    yield "piece", tail
            yield kind, value
            if kind in ("done", "error"):
                return


class _EventStream(StreamingResponse):
    """A streaming response that runs `on_close` however it ends: finished, failed, or the
    client went away (Starlette cancels the body iterator on http.disconnect; a body iterator
    that never started would not run its own `finally`)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def prompt_chars(req: GenerationRequest) -> int:
    """Where the reply starts in prompt + reply, in characters (logprobs' text_offset)."""
    return len(req.prompt.decode("utf-8", "replace"))


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, or the ApiError that says what is wrong with it."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is {int(length):,} bytes; this server takes at most {limit:,} "
                            "(tilelli serve --max-body-bytes)", None, "request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is over {limit:,} bytes, this server's limit "
                                "(tilelli serve --max-body-bytes)", None, "request_too_large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise protocol.bad(f"the request body is not valid UTF-8 (byte {e.start}); send UTF-8 JSON") from None

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        data = json.loads(text, parse_constant=no_constant) if text.strip() else None
    except RecursionError:  # Python's parser recurses once per level: 10,000 "[" are not a 500
        raise protocol.bad("the request body nests arrays or objects too deeply to be a request") from None
    except (json.JSONDecodeError, ValueError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise protocol.bad(f"the request body is not valid JSON: {msg}{where}") from None
    if not isinstance(data, dict):
        got = "an empty body" if data is None else protocol.typename(data)
        raise protocol.bad(f"the request body must be a JSON object, got {got}")
    return data


def create_app(load: Callable[[], Decoder], model: str, defaults: SamplingConfig | None = None,
               limits: Limits | None = None, on_failure: Callable[[str], None] | None = None,
               rule: Any = None) -> FastAPI:
    """The server for one model. `load` builds its decoder (called once, in a thread, at start-up);
    `model` is the name clients send; `defaults` hold the sampling settings a request leaves out,
    and `defaults.max_new_tokens` is both the default and the cap of a request's max_tokens;
    `rule` is the chat endpoint's `AbstainRule` (tilelli.chat.abstain), as in `tilelli chat`."""
    state = ServeState(load, model, defaults or CHAT_SAMPLING,
                       limits or Limits(), on_failure, rule)
    page = resources.files("tilelli.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        yield
        await asyncio.to_thread(state.stop)

    app = FastAPI(title="tilelli serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="An OpenAI-compatible API for one small byte-level model (docs/serve.md).")
    app.state.serve = state
    schema.install_openapi(app)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = f"no such endpoint: {request.method} {request.url.path}; see GET /v1/models, " \
                  "POST /v1/completions, POST /v1/chat/completions" if e.status_code in (404, 405) else str(e.detail)
        if e.status_code == 405 and e.headers:
            message += f" ({request.url.path} takes {e.headers.get('Allow', '')})"
        body = ApiError(e.status_code, message, None, "not_found" if e.status_code == 404 else None).body()
        return JSONResponse(body, status_code=e.status_code, headers=e.headers)  # 405 keeps its Allow header

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(ApiError(500, f"internal error: {type(e).__name__}: {e}").body(), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", response_model=None, responses={200: {"model": schema.Health, "description": "ready"},
                                                         503: {"model": schema.Health,
                                                               "description": "loading, or failed to load"}})
    async def health() -> JSONResponse:
        body: dict[str, Any] = {"status": {"ready": "ok"}.get(state.status, state.status), "model": model,
                                "max_tokens": state.defaults.max_new_tokens}
        if state.worker is not None:
            body.update(state.worker.counts(), context=state.context)
        if state.error:
            body["error"] = state.error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    model_card = {"id": model, "object": "model", "created": protocol.now(), "owned_by": "tilelli"}

    @app.get("/v1/models", response_model=schema.ModelList)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{name:path}", response_model=schema.ModelCard, responses=schema.errors(400, 404))
    async def one_model(name: str) -> dict[str, Any]:
        protocol.check_model({"model": name}, model)
        return model_card

    @app.post("/v1/completions", response_model=None, openapi_extra=schema.request_body(schema.CompletionRequest),
              responses=schema.generation_responses(schema.Completion))
    async def completions(request: Request) -> Response:
        return await _generate(request, chat=False)

    @app.post("/v1/chat/completions", response_model=None,
              openapi_extra=schema.request_body(schema.ChatCompletionRequest),
              responses=schema.generation_responses(schema.ChatCompletion))
    async def chat_completions(request: Request) -> Response:
        return await _generate(request, chat=True)

    async def _generate(request: Request, chat: bool) -> Response:
        worker = state.ready_worker()
        body = await read_json(request, state.limits.max_body_bytes)
        protocol.check_model(body, model)
        parse = protocol.parse_chat if chat else protocol.parse_completion
        req = parse(body, state.defaults, state.defaults.max_new_tokens, state.context)
        channel = _Channel()
        job = Job(req.prompt, req.cfg, channel.deliver, chat=chat, rule=state.rule if chat else None)
        try:
            worker.submit(job)
        except QueueFull as e:
            raise ApiError(429, str(e), None, "queue_full") from None
        except ShuttingDown as e:
            raise ApiError(503, str(e), None, "shutting_down") from None
        if req.stream:
            return _EventStream(_stream(req, channel), on_close=lambda: worker.cancel(job))
        try:
            return await _whole(request, req, channel)
        finally:
            worker.cancel(job)  # a no-op when it finished; else the client left or the server is stopping

    def _extras(req: GenerationRequest, piece: Piece, offset: int) -> dict[str, Any]:
        """A choice's logprobs (OpenAI's shape) and char_confidences (ours: OpenAI has no per-character
        probability) for `piece`; `offset`: characters of prompt and reply before it (completions)."""
        out: dict[str, Any] = {}
        if req.logprobs:
            out["logprobs"] = protocol.chat_logprobs(piece.tokens) if req.chat else \
                protocol.completion_logprobs(piece.tokens, [offset + c for c in piece.char_of])
        if req.confidences:
            out["char_confidences"] = protocol.rounded(piece.char_probs)
        return out

    def _final_extras(req: GenerationRequest, text: str, decision: Any) -> dict[str, Any]:
        """The chat decision's fields (tilelli.chat.abstain): abstained, why, and on request its signals."""
        if not req.chat or decision is None:
            return {}
        out: dict[str, Any] = {"abstained": decision.abstained(text), "abstain_reason": decision.reason,
                               "dropped_turns": req.dropped_turns}
        if req.abstain_probability:
            out["abstain_probability"] = protocol.finite(decision.signals.top_refusal)
            out["surprise"] = protocol.finite(decision.signals.text_surprise)
        return out

    async def _whole(request: Request, req: GenerationRequest, channel: _Channel) -> Response:
        """Collect the reply; stop early (and free the slot) when the client disconnects."""
        async def collect() -> tuple[Piece, float | None, tuple[str, Any]]:
            whole, decision = Piece(), None
            async for kind, value in channel.events():
                if kind == "piece":
                    whole.extend(value)
                elif kind == "decision":
                    decision = value
                else:
                    return whole, decision, (kind, value)
            raise AssertionError("the event stream ended without done or error")

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, watch = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not work.done():
            work.cancel()
            return Response(status_code=499)  # nobody reads it: the client has gone
        whole, decision, (kind, value) = work.result()
        if kind == "error":
            raise ApiError(value[0], value[1])
        reason, generated = value
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": protocol.FINISH.get(reason, reason)}
        if req.chat:
            choice["message"] = {"role": "assistant", "content": whole.text}
        else:
            choice["text"] = whole.text
        choice.update(_extras(req, whole, prompt_chars(req)), **_final_extras(req, whole.text, decision))
        return JSONResponse({"id": protocol.new_id(req.chat), "object": "chat.completion" if req.chat
                             else "text_completion", "created": protocol.now(), "model": model,
                             "choices": [choice], "usage": protocol.usage(len(req.prompt), generated)})

    async def _stream(req: GenerationRequest, channel: _Channel) -> AsyncIterator[str]:
        """OpenAI's chunks: (chat) a first chunk with the role, one chunk per piece of text, a last
        chunk with finish_reason, (include_usage) a usage chunk, then [DONE]."""
        head = {"id": protocol.new_id(req.chat), "object": "chat.completion.chunk" if req.chat
                else "text_completion", "created": protocol.now(), "model": model}
        if req.include_usage:
            head["usage"] = None

        def chunk(choice: dict[str, Any]) -> str:
            return _sse({**head, "choices": [{"index": 0, "logprobs": None, "finish_reason": None, **choice}]})

        if req.chat:
            yield chunk({"delta": {"role": "assistant", "content": ""}})
        text, decision, offset = [], None, prompt_chars(req)
        async for kind, value in channel.events():
            if kind == "piece":
                text.append(value.text)
                body = {"delta": {"content": value.text}} if req.chat else {"text": value.text}
                yield chunk({**body, **_extras(req, value, offset)})
                offset += len(value.text)
            elif kind == "decision":
                decision = value
            elif kind == "error":
                status, message = value
                yield _sse(ApiError(status, message).body())
                yield "data: [DONE]\n\n"
                return
            else:
                reason, generated = value
                body = {"delta": {}} if req.chat else {"text": ""}
                yield chunk({**body, "finish_reason": protocol.FINISH.get(reason, reason),
                             **_final_extras(req, "".join(text), decision)})
                if req.include_usage:
                    yield _sse({**head, "choices": [], "usage": protocol.usage(len(req.prompt), generated)})
                yield "data: [DONE]\n\n"
                return

    return app
