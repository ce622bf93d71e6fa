"""The FastAPI app: OCR API, model info and hot swap, the web page and the federation dashboard,
all from one process. The model is optional: `fedocr fl dashboard` serves the dashboard alone, and
the OCR routes then answer 503.

Heavy objects (the model slot, the cache, the worker limiter) are created once in `lifespan`
and reached through `Depends`. Recognition runs in worker threads (at most `workers` at a time)
so the event loop keeps answering while pages are recognised. Uploads stay in memory: the
multipart parser is told to keep parts up to the request limit in RAM, request bodies are
capped before they are read, and neither images nor file names are logged.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedocr import __version__
from fedocr.serve.cache import ResultCache, content_key
from fedocr.serve.engine import Engine, PageResult, Stop, Stopped, check_stop
from fedocr.serve.hotswap import ModelSlot, SwapResult, first_line
from fedocr.serve.images import MiB, BadImage, Limits, configure_pillow, decode_upload
from fedocr.serve.memory import MemoryTrimmer
from fedocr.serve.segment import Layout, SegmentConfig, TooManyLines
from fedocr.serve.schemas import (BatchItem, BatchResult, Error, Health, ModelDescription, OcrResult, Reloaded,
                                  Unprocessable)
from fedocr.serve.shared_model import SharedModel

log = logging.getLogger("fedocr.serve")
RETRY_AFTER_S = 1      # what a busy server asks a client to wait (Retry-After)
CLOSE = {"Connection": "close"}   # on refusing a body half read
WATCH_EVERY_S = 0.1    # how often a running recognition checks its budget and its client
MIN_BODY_RATE = 16 * 1024   # bytes/s a body must average once its first read_timeout_s is over
FOLLOW_EVERY_S = 0.5   # how soon the other processes of a server follow a model swap
STATIC = resources.files("fedocr.serve") / "static"


@dataclass(frozen=True)
class ServeConfig:
    model: Path | None                       # None: no OCR, only the dashboard (`fedocr fl dashboard`)
    token: str | None = None                 # bearer token for /api (health excepted); None: open
    limits: Limits = field(default_factory=Limits)
    cache_size: int = 256                    # results kept, by image hash
    workers: int = 2                         # recognitions running at once
    threads: int | None = None               # ONNX Runtime intra-op threads per engine
    watch_s: float = 0.0                     # poll the model file this often and reload on change; 0: off
    cors_origins: tuple[str, ...] = ()       # none unless asked for
    prefer_onnx: bool = True
    max_lines: int = SegmentConfig().max_lines   # lines per image; more is refused (422) before recognition
    runs: Path | None = None                 # the federation's run store: serves /dashboard and /api/runs
    trust: Path | None = None                # serve only model files signed by this Ed25519 public key
    queue: int = 32                          # requests that may wait for a worker; more answer 503 + Retry-After
    request_timeout_s: float = 60.0          # wait + recognition per image; past it the work stops (503)
    read_timeout_s: float = 10.0             # longest pause in a request body (408); headers: serve.connections
    shared_model: Path | None = None         # with several server processes: where swaps are announced


@dataclass
class State:
    config: ServeConfig
    slot: ModelSlot | None                   # None: a dashboard-only server
    cache: ResultCache[PageResult]
    limiter: anyio.CapacityLimiter
    started: float
    pending: int = 0                         # recognitions running or waiting for a worker
    trimmer: MemoryTrimmer = field(default_factory=MemoryTrimmer)   # keeps resident memory flat under load


class BodyLimit:
    """Refuse request bodies above the limit with 413, before the multipart parser reads them, and
    with 408 bodies that stall for longer than `read_timeout_s` between chunks or arrive slower
    than MIN_BODY_RATE on average after the first `read_timeout_s` (a client that sends a byte
    every few seconds must not hold a connection, and the upload's memory, for ever)."""

    def __init__(self, app: ASGIApp, limits: Limits, read_timeout_s: float = 10.0) -> None:
        self.app, self.limits, self.read_timeout_s = app, limits, read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.limits.body_limit(batch=scope["path"].endswith("/batch"))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(send, limit)
        seen = 0
        started = False
        more_body = True
        body_started = time.monotonic()

        async def counting_receive() -> Message:
            nonlocal seen, more_body
            if not more_body:   # after the body: disconnect checks, which may wait as long as they like
                return await receive()
            # the body so far may have taken read_timeout_s plus its size at MIN_BODY_RATE
            budget = body_started + self.read_timeout_s + seen / MIN_BODY_RATE - time.monotonic()
            try:
                with anyio.fail_after(max(0.0, min(self.read_timeout_s, budget))):
                    message = await receive()
            except TimeoutError:   # an HTTPException: FastAPI's body parsing passes those on, not others
                if budget >= self.read_timeout_s * 0.99:   # cut by the pause limit, not the rate
                    why = f"paused for over {self.read_timeout_s:g} s"
                else:
                    rate = seen / max(time.monotonic() - body_started, 1e-3) / 1024
                    why = (f"arrived at {rate:.1f} KiB/s; after its first {self.read_timeout_s:g} s a body must "
                           f"average {MIN_BODY_RATE // 1024} KiB/s")
                raise HTTPException(408, f"request body {why}", headers=CLOSE) from None
            more_body = message["type"] == "http.request" and message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > limit:   # the rest of the body is never read: the connection cannot be reused
                raise HTTPException(413, f"request body over {limit} bytes", headers=CLOSE)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except HTTPException as exc:  # raised by counting_receive outside FastAPI's handlers
            if exc.status_code not in (408, 413) or started:
                raise
            await (_too_large(send, limit) if exc.status_code == 413 else _refuse(send, 408, exc.detail))


async def _too_large(send: Send, limit: int) -> None:
    await _refuse(send, 413, f"request body over {limit} bytes; see the limits in /docs")


async def _refuse(send: Send, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers=CLOSE)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def get_state(request: Request) -> State:
    return request.app.state.fedocr


NO_MODEL = "this server serves no OCR model (started as a dashboard only); start `fedocr serve --model ...`"


def require_model(state: State) -> ModelSlot:
    """The model slot, or 503 on a dashboard-only server."""
    if state.slot is None:
        raise HTTPException(503, NO_MODEL)
    return state.slot


bearer = HTTPBearer(auto_error=False, description="only when the server was started with --token")


def require_token(state: Annotated[State, Depends(get_state)],
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    token = state.config.token
    if token is None:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "not an image, empty, damaged or truncated"},
    401: {"model": Error, "description": "bearer token required"},
    413: {"model": Error, "description": "too many bytes, pixels or files"},
    408: {"model": Error, "description": "the request body paused for longer than the read timeout, or arrived "
                                        "slower than 16 KiB/s on average after it"},
    503: {"model": Error, "description": "busy (queue full) or over the time budget per image, with Retry-After; "
                                        "or no OCR model on this server (a dashboard-only server)"},
    422: {"model": Unprocessable, "description": "a wrong or missing field, or more text lines in one image than the limit"},
}


def _capped(engine: Engine, max_lines: int) -> Engine:
    """The engine with the server's line limit (an engine a reload just built has the default one)."""
    if engine.segment.max_lines != max_lines:  # the same value from every thread: a benign race
        engine.segment = replace(engine.segment, max_lines=max_lines)
    return engine


def _recognise(state: State, data: bytes, name: str, layout: Layout = "auto", stop: Stop | None = None) -> OcrResult:
    """Decode and recognise one upload (runs in a worker thread; `stop` ends it early)."""
    check_stop(stop)   # its budget may have run out, or its client left, while it queued
    start = time.perf_counter()
    loaded = require_model(state).current   # this request keeps this model even if a reload happens now
    version = loaded.engine.info.version
    key = content_key(data, version, layout)
    cached = state.cache.get(key)
    if cached is not None:
        return OcrResult.from_page(cached, (time.perf_counter() - start) * 1000, version, True)
    engine = _capped(loaded.engine, state.config.max_lines)
    try:
        page = engine.ocr(decode_upload(data, state.config.limits, name), layout=layout, stop=stop)
    except TooManyLines as exc:  # found after segmentation, before any line was recognised
        raise BadImage(422, f"{name}: {exc}; split the image or ask for a higher --max-lines") from None
    finally:
        state.trimmer.after_work()   # a refused or stopped page freed as much as a read one
    state.cache.put(key, page)
    return OcrResult.from_page(page, (time.perf_counter() - start) * 1000, version, False)


def _release_model_memory(slot: ModelSlot | None) -> Callable[[], None] | None:
    """What the trimmer calls to hand back the live model's cached buffers (read at each trim, so
    a replaced model is never kept alive for it)."""
    if slot is None:
        return None

    def release() -> None:
        engine = slot.engine
        if engine.release_memory is not None:
            engine.release_memory()
    return release


async def _read(upload: UploadFile, limits: Limits) -> bytes:
    data = await upload.read(limits.max_bytes + 1)
    await upload.close()
    return data


def create_app(config: ServeConfig, slot: ModelSlot | None = None) -> FastAPI:
    """Build the app; `slot` lets tests inject a model slot, otherwise one is loaded from config.model."""
    limits = config.limits
    configure_pillow(limits)
    # Keep multipart parts in memory up to the request limit (Starlette spools to a temporary
    # file above 1 MiB by default, and uploads are sensitive documents).
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limits.body_limit(batch=True))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model = slot or (ModelSlot(config.model, config.threads, config.prefer_onnx, config.trust,
                                   SharedModel(config.shared_model) if config.shared_model else None)
                         if config.model else None)
        state = State(config, model, ResultCache(config.cache_size), anyio.CapacityLimiter(config.workers),
                      time.time(), trimmer=MemoryTrimmer(release=_release_model_memory(model)))
        app.state.fedocr = state
        pollers = []
        if model is not None and config.watch_s > 0:
            pollers.append(asyncio.create_task(_poll_swaps(state, config.watch_s, _reload_if_changed)))
        if model is not None and model.shared is not None:
            pollers.append(asyncio.create_task(_poll_swaps(state, FOLLOW_EVERY_S, ModelSlot.follow)))
        try:
            yield
        finally:
            for poller in pollers:
                poller.cancel()
            state.trimmer.close()

    # FastAPIOffline: /docs and /redoc with Swagger UI and ReDoc served by this app, not from a CDN.
    app = FastAPIOffline(title="fedocr", version=__version__, lifespan=lifespan,
                         description=api_description(limits, config.max_lines, config))
    protected = [Depends(require_token)]

    async def run(state: State, request: Request, data: bytes, name: str, layout: Layout) -> OcrResult:
        """One recognition in a worker thread, bounded three ways: a full queue answers 503 with
        Retry-After at once; past the time budget, or once the client has gone, a request still
        waiting for a worker leaves the queue, and a running one's thread is told to stop at its
        next batch of lines (a worker thread cannot be killed)."""
        if state.pending >= config.workers + config.queue:
            raise HTTPException(503, f"busy: {state.pending} recognitions running or queued; retry shortly",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        state.pending += 1
        stop, why = threading.Event(), []

        async def watch(work: anyio.CancelScope) -> None:
            deadline = time.monotonic() + config.request_timeout_s
            while not stop.is_set():
                if time.monotonic() > deadline:
                    why.append(f"over the {config.request_timeout_s:g} s budget per image")
                elif await request.is_disconnected():
                    why.append("the client disconnected")
                if why:
                    stop.set()
                    work.cancel()   # ends the wait for a worker; a running thread finishes via `stop`
                await anyio.sleep(WATCH_EVERY_S)

        result: OcrResult | None = None
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tasks:
                with anyio.CancelScope() as work:
                    tasks.start_soon(watch, work)
                    try:
                        result = await anyio.to_thread.run_sync(_recognise, state, data, name, layout, stop.is_set,
                                                                limiter=state.limiter)
                    except Exception as exc:  # raised below: the task group would wrap it in an ExceptionGroup
                        error = exc
                stop.set()
                tasks.cancel_scope.cancel()
        finally:
            state.pending -= 1
        if error is not None and not isinstance(error, Stopped):
            raise error
        if result is None:   # stopped in its thread, or while it waited for one
            log.warning("recognition stopped: %s", why[0] if why else "asked to")
            raise HTTPException(503, f"recognition stopped: {why[0] if why else 'asked to'}",
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return result

    @app.post("/api/ocr", response_model=OcrResult, responses=ERRORS, dependencies=protected,
              summary="Recognise the text of one image (a line or a whole page)")
    async def ocr(state: Annotated[State, Depends(get_state)], request: Request,
                  image: Annotated[UploadFile, File(description="PNG, JPEG, BMP, TIFF, WebP or GIF")],
                  layout: Annotated[Layout, Query(description="auto: one line or a page, decided per image; line: "
                                                              "the image is one text line; page: always split")]
                  = "auto") -> OcrResult:
        data = await _read(image, limits)
        try:
            return await run(state, request, data, "image", layout)
        except BadImage as exc:
            raise HTTPException(exc.status, exc.message) from None

    @app.post("/api/ocr/batch", response_model=BatchResult, responses=ERRORS, dependencies=protected,
              summary=f"Recognise up to {limits.max_files} images; each answers on its own")
    async def ocr_batch(state: Annotated[State, Depends(get_state)], request: Request,
                        images: Annotated[list[UploadFile], File(description="the images")],
                        layout: Annotated[Layout, Query(description="as for /api/ocr, for every image")]
                        = "auto") -> BatchResult:
        if len(images) > limits.max_files:
            raise HTTPException(413, f"too many files ({len(images)}); at most {limits.max_files} per request")
        start = time.perf_counter()
        items = []
        for index, upload in enumerate(images):
            data = await _read(upload, limits)
            try:
                items.append(BatchItem(index=index, status=200,
                                       result=await run(state, request, data, f"images[{index}]", layout)))
            except BadImage as exc:
                items.append(BatchItem(index=index, status=exc.status, error=exc.message))
            except HTTPException as exc:   # busy or stopped: this image only; the others keep their answers
                if exc.status_code != 503:
                    raise
                items.append(BatchItem(index=index, status=503, error=str(exc.detail)))
        return BatchResult(results=items, time_ms=round((time.perf_counter() - start) * 1000, 2))

    @app.get("/api/health", response_model=Health, summary="Liveness and the served model's version")
    async def health(state: Annotated[State, Depends(get_state)]) -> Health:
        loaded = state.slot.current if state.slot is not None else None
        info = loaded.engine.info if loaded else None
        return Health(status="ok", model=info.version if info else None, backend=info.backend if info else None,
                      charset_version=info.charset_version if info else None,
                      builtin_line_cer=round(loaded.smoke.cer, 4) if loaded else None, pid=os.getpid(),
                      uptime_s=round(time.time() - state.started, 1))

    @app.get("/api/model", response_model=ModelDescription, responses=ERRORS, dependencies=protected,
             summary="The served model: version, charset size, provenance (federated run and round)")
    async def model(state: Annotated[State, Depends(get_state)]) -> ModelDescription:
        loaded = require_model(state).current
        return ModelDescription.from_info(loaded.engine.info, loaded.loaded_at)

    @app.post("/api/model/reload", response_model=Reloaded, dependencies=protected,
              responses={**ERRORS, 409: {"model": Error, "description": "the new file cannot be used; the old model keeps serving"}},
              summary="Load the model file again (hot swap, no restart, in-flight requests unaffected)")
    async def reload(state: Annotated[State, Depends(get_state)],
                     force: Annotated[bool, Query(description="serve the file even if its vocabulary differs or it "
                                                              "reads the built-in line worse")] = False) -> Reloaded:
        slot = require_model(state)
        try:
            changed, loaded = await anyio.to_thread.run_sync(slot.reload, force)
        except Exception as exc:  # any load failure keeps the old model; report it to the operator
            raise HTTPException(409, f"reload failed, still serving {slot.engine.info.version}: "
                                     f"{first_line(exc)}") from None
        if changed:
            state.cache.clear()
        return Reloaded(changed=changed, model=ModelDescription.from_info(loaded.engine.info, loaded.loaded_at))

    @app.get("/", include_in_schema=False, response_model=None)
    async def page() -> FileResponse | RedirectResponse:
        if config.model is None and slot is None:
            return RedirectResponse("/dashboard")
        return FileResponse(str(STATIC / "index.html"), headers=PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:   # for clients that ask before reading the page's <link rel="icon">
        return FileResponse(str(STATIC / "favicon.svg"), media_type="image/svg+xml")

    if config.runs is not None:
        from fedocr.serve import dashboard   # imports this module's dependencies, so not at the top

        dashboard.install(app, protected, config.runs)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"])
    app.add_middleware(BodyLimit, limits=limits, read_timeout_s=config.read_timeout_s)
    return app


async def _poll_swaps(state: State, every_s: float, swap: Callable[[ModelSlot], SwapResult | None]) -> None:
    """Every `every_s`, run `swap` (in a thread: loading a model takes a while) and clear the cache
    when the served model changed. A file that cannot be loaded is logged; the old model keeps serving."""
    while True:
        await asyncio.sleep(every_s)
        slot = require_model(state)
        try:
            result = await anyio.to_thread.run_sync(swap, slot)
        except Exception as exc:  # a bad file must not stop the poller or the old model
            log.warning("cannot swap the model (%s); still serving %s",
                        first_line(exc), slot.engine.info.version)
            continue
        if result and result[0]:
            state.cache.clear()
            log.info("now serving model %s", result[1].engine.info.version)


def _reload_if_changed(slot: ModelSlot) -> SwapResult | None:
    """The watcher: reload when the model file changed (e.g. a federation published a new global
    model). Every process watches the file itself, so the swap is not announced to the others."""
    return slot.reload(announce=False) if slot.changed() else None


PAGE_HEADERS = {
    # The page loads nothing from elsewhere; the browser enforces it.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def api_description(limits: Limits, max_lines: int, config: ServeConfig | None = None) -> str:
    """The text at the top of /docs, with this server's limits."""
    return f"""\
Chinese + English OCR on CPU. `POST /api/ocr` with a multipart field `image` answers the
text of a line or a whole page (form, receipt, invoice, waybill), each line with its box and
confidence.

Limits: {limits.max_bytes / MiB:g} MiB and {limits.max_pixels:,} pixels ({limits.max_side:,} per side) per
image, at most {max_lines:,} text lines per image (more: 422, before any line is recognised);
{limits.max_files} images and {limits.max_batch_bytes / MiB:g} MiB per batch request. Uploads are kept in
memory only and never logged. When the server runs with a token, send
`Authorization: Bearer TOKEN` to every `/api` route except `/api/health`.
{_load_limits(config) if config else ""}"""


def _load_limits(config: ServeConfig) -> str:
    return (f"\nUnder load: {config.workers} recognitions at a time and {config.queue} waiting; more answer 503 with "
            f"Retry-After. An image gets {config.request_timeout_s:g} s (waiting included), then 503; work for a "
            f"client that disconnected stops. A request body that pauses for {config.read_timeout_s:g} s, or "
            f"averages under {MIN_BODY_RATE // 1024} KiB/s after its first {config.read_timeout_s:g} s: 408. These "
            f"limits are per server process (`fedocr serve --processes N`).\n")
