"""The federation dashboard: read-only JSON over the run store, a live event stream, the page, and
the operator's "make this round live" through the model slot's hot swap.

Every request opens its own read-only connection (the federation keeps writing the store in WAL
mode, and a reader never blocks it). A store that is missing, locked, corrupt or not a run store
answers 503 with one line saying so; an unknown run or round is 404.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from fedocr.federated.runs.reader import RunReader, StoreUnavailable, round_model, saved_rounds
from fedocr.serve.app import ERRORS, PAGE_HEADERS, STATIC, State, get_state, require_model
from fedocr.serve.dashboard_cache import RunCache
from fedocr.serve.dashboard_schemas import (ContributionPanel, RoundDetail, RoundSummary, RunDetail, RunList,
                                            RunSummary, UseRound)
from fedocr.serve.hotswap import first_line
from fedocr.serve.schemas import Error, ModelDescription, Reloaded

POLL_S = 1.0            # how often an open event stream looks for new rounds
KEEPALIVE_S = 15.0      # a comment line this often keeps proxies from closing a quiet stream
STORE_ERRORS: dict[int | str, dict[str, Any]] = {
    **{k: v for k, v in ERRORS.items() if k in (401, 422)},
    404: {"model": Error, "description": "no such run or round"},
    503: {"model": Error, "description": "the run store is missing, locked, damaged or not a run store"},
}


def runs_path(state: Annotated[State, Depends(get_state)]) -> Path:
    if state.config.runs is None:   # only reachable when the router is mounted by hand
        raise HTTPException(503, "this server was started without a run store (--runs)")
    return state.config.runs


def open_reader(path: Annotated[Path, Depends(runs_path)]) -> Iterator[RunReader]:
    try:
        reader = RunReader(path)
    except StoreUnavailable as exc:
        raise HTTPException(503, str(exc)) from None
    with reader:
        yield reader


Reader = Annotated[RunReader, Depends(open_reader)]


def _run_or_404(reader: RunReader, run_id: str) -> dict[str, Any]:
    run = reader.run(run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id!r} in {reader.path.name}")
    return run


def chain_of(config: dict[str, Any] | None) -> str | None:
    """The step chains the run's config builds (as `fedocr fl steps` prints them); None when the
    config is from a version whose steps this one cannot rebuild."""
    from fedocr.federated.pipeline.build import describe

    if not isinstance(config, dict):
        return None
    steps = config.get("steps")
    rc = {"aggregate": config.get("aggregate", "all"), **(steps if isinstance(steps, dict) else {})}
    try:
        return describe(rc)
    except Exception:  # noqa: BLE001 - an old or foreign config: the panel says it cannot be shown
        return None


def run_detail(reader: RunReader, run_id: str, cache: RunCache) -> RunDetail:
    """Everything the run page shows at first, with per-client rows only as totals (one round's rows
    come from /rounds/{round}), so a 1,000-round run stays small."""
    run = _run_or_404(reader, run_id)
    totals, rounds = cache.snapshot(reader, run_id, run["created"])
    return RunDetail(run=RunSummary(**run), out_dir=run.get("out_dir"), config=run["config"],
                     chain=chain_of(run["config"]), final=run["final"], audit=run["audit"],
                     flower_run_ids=run["flower_run_ids"], rounds=rounds, clients=totals.client_totals(),
                     rejections=totals.rejections, steps=dict(sorted(totals.steps.items())),
                     privacy=totals.privacy_spent(), anomaly_totals=totals.anomaly_totals(), anomalies=totals.flagged,
                     contribution=ContributionPanel(clients=totals.contributions(), server=totals.contribution_server),
                     saved_rounds=saved_rounds(run.get("out_dir")))


def round_detail(reader: RunReader, run_id: str, round_no: int) -> RoundDetail:
    found = reader.rounds(run_id, after=round_no - 1, upto=round_no)
    if not found:
        raise HTTPException(404, f"run {run_id!r} has no round {round_no}")
    return RoundDetail(summary=RoundSummary(**found[0]), clients=reader.round_clients(run_id, round_no),
                       steps=reader.round_steps(run_id, round_no))


def _event(kind: str, payload: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def round_events(path: Path, run_id: str, after: int, max_seconds: float,
                       request: Request) -> AsyncIterator[str]:
    """Server-sent events: `round` for each new or rewritten round, `run` when the run's status
    changes, `problem` while the store cannot be read. Polls SQLite's data_version, which moves only
    when the federation commits, so an idle stream costs one tiny query per second."""
    try:
        reader = await anyio.to_thread.run_sync(RunReader, path)
    except StoreUnavailable as exc:   # gone between the request's check and the stream's start
        yield _event("problem", {"detail": str(exc)})
        return
    seen: dict[int, dict[str, Any]] = {}
    version, status, quiet_since = None, None, time.monotonic()
    deadline = time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline and not await request.is_disconnected():
            try:
                now = await anyio.to_thread.run_sync(reader.data_version)
                if now != version:
                    version = now
                    since = max(seen) - 1 if seen else after   # the last round may be rewritten after a restart
                    for row in await anyio.to_thread.run_sync(reader.rounds, run_id, since):
                        if seen.get(row["round"]) != row:
                            seen[row["round"]] = row
                            quiet_since = time.monotonic()
                            yield _event("round", RoundSummary(**row).model_dump())
                    run = await anyio.to_thread.run_sync(reader.run, run_id)
                    if run is not None and run["status"] != status:
                        status = run["status"]
                        yield _event("run", RunSummary(**run).model_dump())
            except StoreUnavailable as exc:
                yield _event("problem", {"detail": str(exc)})
            if time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(POLL_S)
    finally:
        reader.close()


def create_router(cache: RunCache) -> APIRouter:
    """The dashboard's routes; `install` mounts them with the server's token check."""
    router = APIRouter(tags=["dashboard"])

    @router.get("/api/runs", response_model=RunList, responses=STORE_ERRORS,
                summary="The runs in the run store, newest first")
    def runs(reader: Reader) -> RunList:
        return RunList(store=reader.path.name, runs=reader.runs())

    @router.get("/api/runs/{run_id}", response_model=RunDetail, responses=STORE_ERRORS,
                summary="One run: config, step chain, per-round summaries, per-client totals, privacy, "
                        "anomalies, contribution")
    def run(reader: Reader, run_id: str) -> RunDetail:
        return run_detail(reader, run_id, cache)

    @router.get("/api/runs/{run_id}/rounds", response_model=list[RoundSummary], responses=STORE_ERRORS,
                summary="Round summaries after a round (polling instead of the event stream)")
    def rounds(reader: Reader, run_id: str,
               after: Annotated[int, Query(ge=0, description="only rounds after this one")] = 0) -> list[RoundSummary]:
        _run_or_404(reader, run_id)
        return [RoundSummary(**r) for r in reader.rounds(run_id, after)]

    @router.get("/api/runs/{run_id}/rounds/{round_no}", response_model=RoundDetail, responses=STORE_ERRORS,
                summary="One round: every client's row (accepted, rejected or dropped, and why) and step records")
    def one_round(reader: Reader, run_id: str, round_no: int) -> RoundDetail:
        _run_or_404(reader, run_id)
        return round_detail(reader, run_id, round_no)

    @router.get("/api/runs/{run_id}/events", responses={**STORE_ERRORS, 200: {
        "content": {"text/event-stream": {}},
        "description": "`event: round` with a RoundSummary per new or rewritten round; `event: run` with a "
                       "RunSummary when the status changes; `event: problem` while the store cannot be read"}},
                summary="Live rounds as server-sent events", response_class=StreamingResponse)
    def events(reader: Reader, run_id: str, request: Request,
               after: Annotated[int, Query(ge=0, description="send rounds after this one")] = 0,
               max_seconds: Annotated[float, Query(gt=0, le=3600, description="close the stream after this long "
                                                                               "(the page reconnects)")] = 600
               ) -> StreamingResponse:
        _run_or_404(reader, run_id)   # a 404 or 503 answers as JSON before the stream starts
        return StreamingResponse(round_events(reader.path, run_id, after, max_seconds, request),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @router.post("/api/model/use", response_model=Reloaded, summary="Serve a chosen round of a run (hot swap)",
                 responses={**STORE_ERRORS, 400: {"model": Error, "description": "the body is not JSON"},
                            409: {"model": Error, "description": "the file cannot be used; the old "
                                                                                 "model keeps serving"}})
    async def use_round(state: Annotated[State, Depends(get_state)], choice: UseRound,
                        path: Annotated[Path, Depends(runs_path)]) -> Reloaded:
        slot = require_model(state)

        def find() -> Path:
            try:
                with RunReader(path) as reader:
                    return round_model(_run_or_404(reader, choice.run_id).get("out_dir"), choice.round)
            except FileNotFoundError as exc:
                raise HTTPException(404, f"run {choice.run_id!r}, round {choice.round}: {exc}") from None
            except StoreUnavailable as exc:
                raise HTTPException(503, str(exc)) from None

        model = await anyio.to_thread.run_sync(find)
        try:
            changed, loaded = await anyio.to_thread.run_sync(slot.switch, model)
        except Exception as exc:  # any load failure keeps the old model serving
            raise HTTPException(409, f"cannot serve {model.name}, still serving {slot.engine.info.version}: "
                                     f"{first_line(exc)}") from None
        if changed:
            state.cache.clear()
        return Reloaded(changed=changed, model=ModelDescription.from_info(loaded.engine.info, loaded.loaded_at))

    return router


def prewarm(path: Path, cache: RunCache, runs: int = 3) -> None:
    """Total the newest runs once in the background, so the first page load is as fast as the next."""
    try:
        with RunReader(path) as reader:
            for run in reader.runs()[:runs]:
                cache.snapshot(reader, run["run_id"], run["created"])
    except (StoreUnavailable, OSError):
        pass   # the page will say why when it is opened


def install(app: FastAPI, dependencies: list[Any], runs: Path) -> None:
    """Mount the dashboard on the app: the API behind the server's token check (the page itself is
    static and asks for the token when the API answers 401)."""
    cache = RunCache()
    app.include_router(create_router(cache), dependencies=dependencies)
    threading.Thread(target=prewarm, args=(runs, cache), name="dashboard-prewarm", daemon=True).start()

    @app.get("/dashboard", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "dashboard.html"), headers=PAGE_HEADERS)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:   # found mid-request
        return JSONResponse({"detail": str(exc)}, status_code=503)
