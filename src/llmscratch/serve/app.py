"""The FastAPI app: SageMaker's /ping and /invocations, OpenAI's /v1 routes, the chat page, errors as JSON.

Generation runs on the engine's thread: the event loop only parses, queues, and writes text out, so /ping is
answered at once while the model works. The model loads on a background thread after the server starts:
/ping answers 503 until it is ready.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmscratch.chat import chat_prompt_ids, end_of_turn_ids
from llmscratch.generate import check_fits, row_seed, with_eos
from llmscratch.serve import protocol
from llmscratch.serve.config import ServeConfig
from llmscratch.serve.errors import TYPES, APIError, bad_request
from llmscratch.serve.protocol import SSE_DONE, Choice, Job, sse
from llmscratch.serve.text import Generation
from llmscratch.tokenizer import encode_prompt
from llmscratch.utils import UserError

STATIC = Path(__file__).parent / "static"
CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
log = logging.getLogger("llmscratch.serve")


def make_engine(model, config: ServeConfig):
    """The engine `config` asks for: continuous batching, or one request at a time (batching off)."""
    from llmscratch.serve.engine import Engine, SerialEngine

    ctx = model.config.context_length
    if config.max_len is not None and config.max_len > ctx:
        raise UserError(f"max_len={config.max_len} is more than the model's context length ({ctx})",
                        params="max_len")
    if config.batching:
        return Engine(model, max_batch=config.max_batch, max_queue=config.max_queue, max_len=config.max_len)
    return SerialEngine(model, max_queue=config.max_queue, max_len=config.max_len)


@dataclasses.dataclass
class ServerState:
    """What the routes share: the loaded model and engine, readiness, requests in flight, draining."""

    config: ServeConfig
    loaded: Any = None  # llmscratch.weights.LoadedModel, once loaded
    engine: Any = None
    template: str | None = None
    ready: bool = False
    load_error: BaseException | None = None
    draining: bool = False  # SIGTERM: requests in flight finish, new ones get 503
    inflight: int = 0  # HTTP requests being answered (streams included)

    @property
    def model_id(self) -> str:
        """The model's id in answers and /v1/models: --model as given (a registered name, a Hub id), or for a file
        or folder the name the model carries."""
        given = self.config.model
        return self.loaded.name if not given or Path(given).exists() else given

    def load(self, loader: Callable[[], Any], on_error: Callable[[BaseException], None] | None = None) -> None:
        """Load the model and start its engine (on the calling thread); /ping turns 200 after."""
        try:
            loaded = loader()
            if loaded.tokenizer is None:
                raise UserError(f"model {loaded.name!r} has no tokenizer, so it cannot read text prompts")
            template = loaded.chat_template
            if self.config.chat_template:
                template = Path(self.config.chat_template).read_text(encoding="utf-8")
            engine = make_engine(loaded.model, self.config)
            engine.start()
            self.loaded, self.template, self.engine = loaded, template, engine
            self.ready = True
            log.info("model %s loaded; serving", loaded.name)
        except BaseException as e:  # reported to whoever runs the server (the CLI prints it and exits)
            self.load_error = e
            if on_error is not None:
                on_error(e)
            else:
                raise


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class ServeMiddleware:
    """Counts requests in flight, refuses new ones with 503 while draining, echoes SageMaker's custom attributes."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.state.draining:
            e = APIError(503, "the server is shutting down", "service_unavailable", None, "shutting_down",
                         {"Connection": "close"})
            return await error_response(e)(scope, receive, send)
        echo = [(k, v) for k, v in scope.get("headers", []) if k.lower() == CUSTOM_ATTRIBUTES.encode()]

        async def send_with_echo(message):
            if message["type"] == "http.response.start" and echo:
                message = {**message, "headers": [*message.get("headers", []), *echo[:1]]}
            await send(message)

        self.state.inflight += 1
        try:
            await self.app(scope, receive, send_with_echo)
        finally:
            self.state.inflight -= 1


class SSEResponse(StreamingResponse):
    """Server-sent events; `on_close` runs when the response ends, also when the client went away."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def create_app(config: ServeConfig, loader: Callable[[], Any] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The server's app. `loader()` returns a LoadedModel (llmscratch.weights); it runs on a background thread
    when the app starts (default: load `config.model`)."""
    state = ServerState(config)

    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, args=(loader or (lambda: load_served_model(config)), on_load_error),
                         name="llmscratch-load", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.stop(drain=False)

    app = FastAPI(title="llmscratch", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    app.add_middleware(ServeMiddleware, state=state)
    _error_handlers(app)
    _routes(app, state)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def need_key(state: ServerState, request: Request) -> None:
    """401 unless the request carries the server's API key as a bearer token (when the server has one)."""
    key = state.config.resolved_api_key()
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "a valid API key is required: send it as 'Authorization: Bearer KEY'",
                       "authentication_error", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})


def need_ready(state: ServerState) -> ServerState:
    """503 while the model loads."""
    if not state.ready:
        raise APIError(503, "the model is still loading; try again shortly", "service_unavailable", None,
                       "loading", {"Retry-After": "5"})
    return state


def _routes(app: FastAPI, state: ServerState) -> None:
    config = state.config

    async def body_of(request: Request) -> dict:
        return protocol.parse_json(await read_body(request, config.max_body_bytes))

    @app.api_route("/ping", methods=["GET", "HEAD"])
    async def ping():
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.post("/invocations")
    async def invocations(request: Request):
        st = need_ready(state)
        return await run_job(st, protocol.parse_invocation(await body_of(request), config.max_n, _ctx(st),
                                                           _vocab(st)), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        need_key(state, request)
        st = need_ready(state)
        return await run_job(st, protocol.parse_chat(await body_of(request), config.max_n, _ctx(st)), request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        need_key(state, request)
        st = need_ready(state)
        return await run_job(st, protocol.parse_completion(await body_of(request), config.max_n, _ctx(st),
                                                           _vocab(st)), request)

    @app.get("/v1/models")
    async def models(request: Request):
        need_key(state, request)
        st = need_ready(state)
        return {"object": "list", "data": [{"id": st.model_id, "object": "model", "created": 0,
                                            "owned_by": "llmscratch", "context_length": _ctx(st),
                                            "chat": st.template is not None}]}

    @app.api_route("/", methods=["GET", "HEAD"])
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")


def load_served_model(config: ServeConfig):
    """The model `config.model` names, on `config.device` in `config.dtype`, quantized as `config.quantize` says."""
    import torch

    from llmscratch.model.base import move_to_huge_pages
    from llmscratch.model.quant_kernel import prepare_decoding
    from llmscratch.utils import pick_device
    from llmscratch.weights import load_model

    device = pick_device(config.device)
    loaded = load_model(config.model, device=device, dtype=getattr(torch, config.dtype),
                        quantize=getattr(config, "quantize", None))
    prepare_decoding(device)  # kernels built; the weights keep torch's layout (a server multiplies batches)
    if device.type == "cpu":
        move_to_huge_pages(loaded.model)  # a server decodes for a long time: weights on 2 MB pages
    return loaded


def _ctx(state: ServerState) -> int:
    """The most tokens (prompt + new) a request may have: the engine's row length."""
    return state.engine.max_len


def _vocab(state: ServerState) -> int:
    return state.loaded.model.config.vocab_size


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(e)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        return error_response(user_bad_request(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif e.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(e.detail)
        err = APIError(e.status_code, message, TYPES.get(e.status_code, "invalid_request_error"), None,
                       {404: "not_found", 405: "method_not_allowed"}.get(e.status_code), dict(e.headers or {}))
        return error_response(err)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        log.exception("error answering %s %s", request.method, request.url.path)
        return error_response(APIError(500, "internal server error", "server_error", None, None))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (checked before reading when the length is given)."""
    too_large = APIError(413, f"the request body is larger than the server's limit of {limit:,} bytes",
                         "invalid_request_error", None, "payload_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for c in request.stream():
        size += len(c)
        if size > limit:
            raise too_large
        chunks.append(c)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------- running a job


def prepare(state: ServerState, job: Job) -> tuple[list[list[int]], list[str], int]:
    """(prompt ids per prompt, prompt texts, max new tokens): templates rendered, texts encoded, sizes checked."""
    tok, model = state.loaded.tokenizer, state.loaded.model
    if job.kind == "chat":
        if not state.template:
            raise bad_request("this model has no chat template: use /v1/completions, or start the server with one "
                              "(`llmscratch serve --chat-template FILE`)", "messages", "no_chat_template")
        ids = [chat_prompt_ids(tok, state.template, job.prompts[0])]
        texts = [tok.decode(ids[0])]
    else:
        # text prompts get BOS first for models that expect it (Gemma); id prompts are taken as given
        ids = [list(p) if isinstance(p, list) else encode_prompt(tok, p) for p in job.prompts]
        texts = [p if isinstance(p, str) else tok.decode(p) for p in job.prompts]
    longest = max(len(p) for p in ids)
    ctx = _ctx(state)
    max_new = job.max_tokens or max(1, min(state.config.default_max_tokens, ctx - longest))
    try:
        check_fits(model, longest, max_new, ctx, "parameters.max_new_tokens" if job.kind == "hf" else "max_tokens")
    except UserError as e:
        raise bad_request(str(e), "messages" if job.kind == "chat" else "prompt", "context_length_exceeded") from None
    return ids, texts, max_new


def sampling_for(state: ServerState, job: Job, max_new: int, choice: int):
    """The engine's SamplingConfig for one choice: stop ids (end of turn / EOS), its own seed."""
    tok = state.loaded.tokenizer
    cfg = dataclasses.replace(job.sampling, max_new_tokens=max_new, stop_strings=())
    if job.sampling.seed is not None:
        cfg = dataclasses.replace(cfg, seed=row_seed(job.sampling.seed, choice))
    if job.ignore_eos:
        return cfg
    if job.kind == "chat":
        return dataclasses.replace(cfg, stop_ids=tuple(end_of_turn_ids(tok)))
    return with_eos(cfg, tok)


async def run_job(state: ServerState, job: Job, request: Request | None = None) -> Response:
    """Generate what `job` asks for: a JSON answer, or a stream of server-sent events. When `request`'s client
    goes away, generation stops (streams: at the next token; JSON answers: within a second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.config.request_timeout
    ids, texts, max_new = await run_in_threadpool(prepare, state, job)
    capacity = state.engine.max_batch + state.engine.max_queue
    if len(ids) * job.n > capacity:  # could never be taken whole: a 400, not a 429 to retry in vain
        raise bad_request(f"this request asks for {len(ids) * job.n} sequences ({len(ids)} prompt(s) x n={job.n}); "
                          f"this server takes at most {capacity} at a time (its max_batch + max_queue)",
                          "n" if job.n > 1 else "prompt", "too_many_sequences")
    gens: list[Generation] = []
    try:
        for p in ids:
            for k in range(job.n):
                g = Generation(loop, state.loaded.tokenizer, job.sampling.stop_strings)
                g.submit(state.engine, p, sampling_for(state, job, max_new, k))
                gens.append(g)
    except BaseException as e:
        for g in gens:
            g.cancel()
        raise _submit_error(e) from None
    prompt_tokens = sum(len(p) for p in ids)
    rid, model = protocol.new_id(job.kind), state.model_id
    if job.stream:
        return SSEResponse(_events(job, gens, rid, model, prompt_tokens, texts, deadline),
                           on_close=lambda: [g.cancel() for g in gens])
    try:
        outs = await _unless_gone(request, asyncio.gather(*(g.collect(deadline) for g in gens)))
    finally:
        for g in gens:
            g.cancel()
    choices = [Choice(i, t, g.finish_reason, g.completion_tokens, g.stop_sequence)
               for i, (t, g) in enumerate(zip(outs, gens))]
    return JSONResponse(protocol.answer(job, rid, model, choices, prompt_tokens, texts))


async def _unless_gone(request: Request | None, work: asyncio.Future) -> Any:
    """The result of `work`; if the client disconnects first, cancel it (its `finally` frees the rows)."""
    task = asyncio.ensure_future(work)
    while request is not None:
        done, _ = await asyncio.wait({task}, timeout=1.0)
        if done:
            break
        if await request.is_disconnected():
            task.cancel()
            raise APIError(499, "the client closed the connection", "invalid_request_error", None, "client_gone")
    return await task


def _submit_error(e: BaseException) -> BaseException:
    from llmscratch.serve.engine import EngineStopped, QueueFull

    if isinstance(e, QueueFull):
        retry = max(1, math.ceil(e.retry_after))
        return APIError(429, f"the server is busy: {e}", "rate_limit_error", None, "queue_full",
                        {"Retry-After": str(retry)})
    if isinstance(e, EngineStopped):
        return APIError(503, str(e), "service_unavailable", None, "shutting_down")
    if isinstance(e, UserError):
        return user_bad_request(e)
    return e


def user_bad_request(e: UserError) -> APIError:
    """A 400 for a library check that failed on a request's values (sampling settings, the context length): the
    parameter it names, when it names one."""
    if "context length" in str(e):
        return bad_request(str(e), None, "context_length_exceeded")
    return bad_request(str(e), e.params[0] if e.params else None, "invalid_value" if e.params else None)


async def _events(job: Job, gens: list[Generation], rid: str, model: str, prompt_tokens: int,
                  texts: list[str], deadline: float) -> AsyncIterator[bytes]:
    """The stream: OpenAI chunks then [DONE], or TGI's token events; an error event if the request fails."""
    try:
        if job.kind == "hf":  # each piece one event behind, so that the last one goes out with the final event
            g, pieces, held = gens[0], [], None
            async for piece in g.pieces(deadline):
                if held is not None:
                    yield sse(protocol.hf_token_event(*held))
                held = (g.last_token, piece)
                pieces.append(piece)
            full = (texts[0] if job.return_full_text else "") + "".join(pieces)
            last_id, last = held if held is not None else (g.last_token, "")
            yield sse(protocol.hf_final_event(last_id, last, full, g.finish_reason, g.completion_tokens,
                                              g.stop_sequence))
            return
        if job.kind == "chat":
            for i in range(len(gens)):
                yield sse(protocol.chunk(job, rid, model, i, None, first=True))
        async for i, piece, finish in _merged(gens, deadline):
            yield sse(protocol.chunk(job, rid, model, i, piece, finish))
        if job.include_usage:
            yield sse(protocol.usage_chunk(job, rid, model, prompt_tokens, sum(g.completion_tokens for g in gens)))
        yield SSE_DONE
    except APIError as e:
        yield sse(e.body())


async def _merged(gens: list[Generation], deadline: float) -> AsyncIterator[tuple[int, str | None, str | None]]:
    """(choice index, text, finish reason) from all choices as they come; finish reason only on a last event."""
    if len(gens) == 1:  # the usual case: no tasks needed
        async for piece in gens[0].pieces(deadline):
            yield 0, piece, None
        yield 0, None, gens[0].finish_reason
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, g: Generation) -> None:
        try:
            async for piece in g.pieces(deadline):
                queue.put_nowait((i, piece, None))
            queue.put_nowait((i, None, g.finish_reason))
        except APIError as e:
            queue.put_nowait(e)

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    finished = 0
    try:
        while finished < len(gens):
            item = await queue.get()
            if isinstance(item, APIError):
                raise item
            yield item
            finished += item[2] is not None
    finally:
        for t in tasks:
            t.cancel()
