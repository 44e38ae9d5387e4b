"""The ASGI application of ``loopline serve`` (FastAPI): /predict, /health, /ready, /metrics, /admin/reload.

Every path but /health (and /docs, /openapi.json when ``public_docs``) needs ``Authorization: Bearer <token>``;
a pure ASGI middleware checks it (constant-time) and times every request for /metrics. /predict reads the
body itself (size-limited), validates it against the served model's schema, scores the encoded matrix on the
booster, queues the capture and answers; the model reference is read once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from fastapi import FastAPI, Response
from pydantic import BaseModel, Field
from starlette.routing import Route

from ml.config import LooplineConfig, Paths
from ml.serve.capture import CaptureItem, CaptureWriter
from ml.serve.holder import ModelHolder, ServedModel
from ml.serve.metrics import ServeMetrics, SnapshotShare, render
from ml.serve.schema import PayloadError
from ml.serve.settings import ServeSettings, serve_dir, store_url_of
from ml.serve.store import now

log = logging.getLogger(__name__)

ENV_CONFIG = "LOOPLINE_SERVE_CONFIG"
ENV_CONFIG_PATH = "LOOPLINE_SERVE_CONFIG_PATH"
ENV_SETTINGS = "LOOPLINE_SERVE_SETTINGS"
ENV_SHARE_METRICS = "LOOPLINE_SERVE_SHARE_METRICS"
FIRST_LOAD_WAIT_SECONDS = 60.0  # a worker waits this long at most for its first champion before serving

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Prediction(BaseModel):
    """The answer for one record."""

    request_id: str
    model_name: str
    model_version: str = Field(description="The registry version that scored this record.")
    threshold: float
    score: float = Field(description="Probability of the positive class.")
    decision: bool = Field(description="score >= threshold.")
    entity_id: str | None = None
    warnings: list[str] = Field(
        default_factory=list, description="E.g. unknown categories (scored as missing)."
    )


class ScoredRecord(BaseModel):
    index: int
    score: float
    decision: bool
    entity_id: str | None = None
    warnings: list[str] = Field(default_factory=list)


class BatchPrediction(BaseModel):
    """The answer for a list of records, in the same order."""

    request_id: str
    model_name: str
    model_version: str
    threshold: float
    predictions: list[ScoredRecord]


class FieldProblem(BaseModel):
    loc: list[str | int]
    field: str
    record: int | None
    msg: str
    type: str


class ValidationProblem(BaseModel):
    detail: list[FieldProblem]
    error_count: int


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _BodyTooLarge
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


_encode = msgspec.json.Encoder().encode  # compact JSON, ~3-5x faster than json.dumps; same values


async def _respond(send: Send, status: int, payload: Any, *headers: tuple[bytes, bytes]) -> None:
    body = _encode(payload)
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class Scorer:
    """``POST /predict`` as a plain ASGI endpoint: validate, score, queue the capture, answer.

    The served model is read once, so the whole request is scored by one version and the answer names it.
    """

    def __init__(
        self,
        holder: ModelHolder,
        writer: CaptureWriter | None,
        metrics: ServeMetrics,
        settings: ServeSettings,
        threshold: float,
        model_name: str,
    ) -> None:
        self.holder = holder
        self.writer = writer
        self.metrics = metrics
        self.settings = settings
        self.threshold = threshold
        self.model_name = model_name
        # Request ids: 64 random bits per worker start and a counter (uuid4 costs a getrandom call each).
        self.id_prefix = secrets.token_hex(8)
        self.ids = itertools.count()
        self._waiting: list[tuple[ServedModel, np.ndarray, asyncio.Future[np.ndarray]]] = []

    async def _score(self, served: ServedModel, matrix: np.ndarray) -> np.ndarray:
        """Scores of ``matrix`` by ``served``; requests that arrive together share one booster call.

        A booster call has a fixed cost (~0.1-0.2 ms here) that dwarfs a row's; requests parsed in the same
        event-loop pass are stacked, scored by the model each of them holds, and split again. Rows are
        scored independently, so a request's scores are the same alone or stacked.
        """
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.append((served, matrix, future))
        if len(self._waiting) == 1:
            asyncio.get_running_loop().call_soon(self._score_waiting)
        return await future

    def _score_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        groups: dict[int, list[tuple[ServedModel, np.ndarray, asyncio.Future[np.ndarray]]]] = {}
        for entry in waiting:
            groups.setdefault(id(entry[0]), []).append(entry)
        for group in groups.values():
            try:
                if len(group) == 1:
                    results = [group[0][0].score(group[0][1])]
                else:
                    stacked = group[0][0].score(np.concatenate([matrix for _, matrix, _ in group]))
                    bounds = np.cumsum([len(matrix) for _, matrix, _ in group])[:-1]
                    results = np.split(stacked, bounds)
            except Exception as exc:
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        metrics, settings, threshold = self.metrics, self.settings, self.threshold
        served = self.holder.current
        if served is None:
            metrics.error("/predict", "not_ready")
            await _respond(send, 503, {"detail": f"no champion of {self.model_name} loaded yet"})
            return
        try:
            body = await _read_body(scope, receive, settings.max_body_bytes)
        except _Disconnected:
            return
        except _BodyTooLarge:
            metrics.error("/predict", "too_large")
            detail = f"body larger than {settings.max_body_bytes} bytes (serving.max_body_bytes)"
            await _respond(send, 413, {"detail": detail})
            return
        try:
            batch = served.schema.parse(body, settings.max_batch_size)
        except PayloadError as exc:
            metrics.error("/predict", "validation")
            await _respond(send, 422, exc.detail())
            return
        request_id = f"{self.id_prefix}{next(self.ids):016x}"
        try:
            scores = (await self._score(served, batch.matrix)).tolist()
        except Exception:
            metrics.error("/predict", "internal")
            log.exception("scoring failed (request %s, v%s)", request_id, served.version)
            await _respond(send, 500, {"detail": "scoring failed", "request_id": request_id})
            return
        decisions = [score >= threshold for score in scores]
        metrics.records_scored += len(scores)
        metrics.unknown_categories += batch.unknown_categories
        if self.writer is not None:
            item = CaptureItem(
                time.monotonic(),
                request_id,
                now(),
                batch.features,
                batch.entity_ids,
                batch.event_times,
                scores,
                decisions,
                threshold,
                served.name,
                served.version,
                (time.perf_counter() - started) * 1000,
                batch.warnings,
            )
            if await self.writer.submit(item) == "full":
                metrics.error("/predict", "capture_full")
                detail = {"detail": "the capture queue is full: retry later", "request_id": request_id}
                await _respond(send, 503, detail, (b"retry-after", b"1"))
                return
        head = {
            "request_id": request_id,
            "model_name": served.name,
            "model_version": served.version,
            "threshold": threshold,
        }
        if batch.single:
            payload = {
                **head,
                "score": scores[0],
                "decision": decisions[0],
                "entity_id": batch.entity_ids[0],
                "warnings": batch.warnings[0],
            }
        else:
            payload = {
                **head,
                "predictions": [
                    {"index": i, "score": score, "decision": decision, "entity_id": entity, "warnings": notes}
                    for i, score, decision, entity, notes in zip(
                        itertools.count(), scores, decisions, batch.entity_ids, batch.warnings
                    )
                ],
            }
        await _respond(send, 200, payload, (b"x-request-id", request_id.encode()))


class ServiceGate:
    """Pure ASGI middleware: bearer-token check and per-request metrics.

    ``direct`` maps a path to the endpoint that answers POSTs to it without Starlette's routing and
    middleware layers (the scoring hot path); other methods on it still go through the app (405).
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        open_paths: frozenset[str],
        metrics: ServeMetrics,
        direct: dict[str, ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths
        self.metrics = metrics
        self.direct = direct or {}

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        if path not in self.open_paths and not self._authorized(scope):
            self.metrics.error(path, "auth")
            body = b'{"detail":"missing or invalid bearer token"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b'Bearer realm="loopline"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            self.metrics.observe(path, 401, time.perf_counter() - started)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        endpoint = self.direct.get(path) if scope["method"] == "POST" else None
        try:
            await (endpoint or self.app)(scope, receive, send_and_note)
        finally:
            self.metrics.observe(path, status, time.perf_counter() - started)


def create_app(
    config: LooplineConfig,
    paths: Paths,
    settings: ServeSettings,
    token: str,
    *,
    share_metrics: bool = False,
) -> FastAPI:
    """The service for one dataset's champion."""
    metrics = ServeMetrics()
    run_dir = serve_dir(paths) / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    reload_file = run_dir / f"{settings.port}.reload"
    holder = ModelHolder(config, paths, settings.poll_interval_seconds, reload_file, counters=metrics)
    writer = (
        CaptureWriter(
            store_url_of(settings, paths),
            config.dataset.name,
            queue_size=settings.capture_queue_size,
            batch_rows=settings.capture_batch_rows,
            flush_interval=settings.capture_flush_interval_seconds,
            policy=settings.capture_full_policy,
            block_timeout=settings.capture_block_timeout_seconds,
            shutdown_timeout=settings.shutdown_timeout_seconds,
            spill_dir=serve_dir(paths) / "spill",
        )
        if settings.capture
        else None
    )
    share = SnapshotShare(serve_dir(paths) / "metrics" / str(settings.port)) if share_metrics else None
    threshold = config.gate.decision_threshold
    model_name = config.model_name
    metrics.gauges.append(lambda: {"model_version": holder.current.version if holder.current else None})
    if writer is not None:
        metrics.gauges.append(writer.gauges)

    async def share_loop() -> None:
        assert share is not None
        while True:
            await asyncio.sleep(1.0)
            try:
                share.write(metrics.snapshot())
            except OSError:
                log.exception("could not write the metrics snapshot")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if writer is not None:
            writer.start()
        holder.start()
        # Take connections once the champion is loaded: with several workers on one socket, a worker that is
        # still loading would answer 503 to connections the others could serve. Bounded, so a registry
        # that hangs at start-up still lets the worker answer /health (and 503 until it loads).
        if not await asyncio.to_thread(holder.first_check.wait, FIRST_LOAD_WAIT_SECONDS):
            log.warning(
                "worker %d: no champion check within %.0f s; serving 503 until one loads",
                os.getpid(),
                FIRST_LOAD_WAIT_SECONDS,
            )
        sharing = asyncio.create_task(share_loop()) if share is not None else None
        log.info("worker %d: serving %s@champion (threshold %.3g)", os.getpid(), model_name, threshold)
        try:
            yield
        finally:
            if sharing is not None:
                sharing.cancel()
            holder.stop()
            if writer is not None:
                await asyncio.to_thread(writer.close)
                log.info(
                    "worker %d: capture flushed (%d rows written, %d spilled, %d dropped)",
                    os.getpid(),
                    writer.rows_written,
                    writer.rows_spilled,
                    writer.dropped,
                )
            if share is not None:
                with contextlib.suppress(FileNotFoundError):
                    (share.folder / f"{os.getpid()}.json").unlink()

    app = FastAPI(
        title=f"Loopline scoring service: {config.dataset.name}",
        version="1",
        description=(
            f"Scores records with `models:/{model_name}@champion`. Every path but /health needs "
            "`Authorization: Bearer <token>`. The answer names the model version that scored it."
        ),
        lifespan=lifespan,
        redoc_url=None,
    )
    open_paths = {"/health"}
    if settings.public_docs:
        open_paths |= {"/docs", "/openapi.json", "/docs/oauth2-redirect"}
    # First in the routing table (the hot path; the gate calls it directly); documented by _document with the
    # served model's schema.
    scorer = Scorer(holder, writer, metrics, settings, threshold, model_name)
    app.router.routes.insert(0, Route("/predict", scorer, methods=["POST"], include_in_schema=False))
    app.add_middleware(
        ServiceGate,
        token=token,
        open_paths=frozenset(open_paths),
        metrics=metrics,
        direct={"/predict": scorer},
    )
    app.state.holder = holder
    app.state.writer = writer
    app.state.metrics = metrics

    @app.get("/health", summary="The process is up (no token needed)")
    async def health() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/ready", summary="A champion is loaded (503 until then)")
    async def ready() -> Response:
        served = holder.current
        capture_ok = writer is None or writer.alive
        body = {
            "ready": served is not None and capture_ok,
            "worker": os.getpid(),
            "model_name": model_name,
            "model_version": served.version if served else None,
            "loaded_at": served.loaded_at.isoformat() if served else None,
            "alias_version": holder.status.alias_version,
            "refused_versions": holder.status.refused,
            "registry_error": holder.status.error,
            "capture": writer.gauges() if writer else None,
        }
        if served is None:
            body["reason"] = holder.status.error or f"no champion of {model_name} loaded yet"
        elif not capture_ok:
            body["reason"] = "the capture writer has stopped"
        return _json(200 if body["ready"] else 503, body)

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def prometheus() -> Response:
        own = metrics.snapshot()
        snapshots = share.read_all(own) if share is not None else [own]
        return Response(render(snapshots, model_name), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/admin/reload", summary="Check the champion alias now (every worker follows within 0.25 s)")
    async def admin_reload() -> Response:
        result = await asyncio.to_thread(holder.refresh)
        reload_file.touch()  # the other workers check within 0.25 s
        return _json(200, result)

    _document(app, holder, settings)
    return app


def _document(app: FastAPI, holder: ModelHolder, settings: ServeSettings) -> None:
    """OpenAPI with the served model's request schema and the bearer scheme."""
    from fastapi.openapi.utils import get_openapi

    cache: dict[str | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        served = holder.current
        version = served.version if served else None
        if version in cache:
            return cache[version]
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        document.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        document["security"] = [{"bearer": []}]
        document["paths"]["/health"]["get"]["security"] = []
        schemas = document["components"].setdefault("schemas", {})
        for model in (Prediction, ScoredRecord, BatchPrediction, FieldProblem, ValidationProblem):
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            found.pop("$defs", None)
            schemas[model.__name__] = found

        def answer(description: str, model: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {"description": description}
            if model:
                out["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}
            return out

        record = (
            served.schema.json_schema(settings.max_batch_size) if served else {"type": ["object", "array"]}
        )
        scored = {
            "oneOf": [
                {"$ref": "#/components/schemas/Prediction"},
                {"$ref": "#/components/schemas/BatchPrediction"},
            ]
        }
        document["paths"]["/predict"] = {
            "post": {
                "summary": "Score one record (JSON object) or a list of records",
                "operationId": "predict",
                "description": (
                    f"Request schema of {served.name} v{served.version}."
                    if served
                    else "No champion loaded yet."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": record,
                            **({"example": served.schema.example()} if served else {}),
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "One answer per record, naming the model version that scored it",
                        "content": {"application/json": {"schema": scored}},
                    },
                    "401": answer("Missing or wrong bearer token"),
                    "413": answer("Body larger than serving.max_body_bytes"),
                    "422": answer("Each bad field and why", "ValidationProblem"),
                    "503": answer("No champion loaded yet, or the capture queue is full (block policy)"),
                },
            }
        }
        cache.clear()
        cache[version] = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """The factory uvicorn calls in each worker process (``ml.serve.run`` sets the environment)."""
    from ml.serve.auth import resolve_token

    # The capture writer thread runs Python too: hand the GIL back to the event loop every 1 ms, not 5 ms.
    sys.setswitchinterval(0.001)
    if not logging.getLogger().handlers:  # a spawned worker: log like the parent does
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ml").setLevel(logging.INFO)
    raw = json.loads(os.environ[ENV_CONFIG])
    config_path = os.environ.get(ENV_CONFIG_PATH)
    config = LooplineConfig.model_validate({**raw, "config_path": Path(config_path) if config_path else None})
    settings = ServeSettings.model_validate_json(os.environ[ENV_SETTINGS])
    paths = Paths.from_env()
    return create_app(
        config,
        paths,
        settings,
        resolve_token(settings, paths),
        share_metrics=os.environ.get(ENV_SHARE_METRICS) == "1",
    )
