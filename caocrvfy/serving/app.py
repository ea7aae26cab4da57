"""Read captchas over HTTP: a FastAPI app around a `Predictor`, run by uvicorn.

    caocrvfy serve --model models/captcha-6x62 --host 127.0.0.1 --port 8000
    curl -F file=@a.png -F file=@b.png http://127.0.0.1:8000/predict
    curl -H 'content-type: application/json' -d '{"images": ["iVBORw0..."]}' http://127.0.0.1:8000/predict

`POST /predict` answers {"predictions": [{"index", "text", "confidence"[, "file"]}, ...]} in the
order sent; `GET /healthz`, `GET /model` (character set, input size, head, metrics.json), the
OpenAPI schema at /openapi.json (no /docs page: FastAPI's loads its scripts from a CDN). A
request that cannot be read gets a 4xx answer {"error": "..."} naming the problem and the
image; the server goes on. Limits (body bytes, images per request, pixels per image, header
and body timeouts, keep-alive, open connections) are `Limits` fields and `caocrvfy serve`
options; with an API key every endpoint but /healthz needs it.
"""

import asyncio
import functools
import gc
import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import asdict

import numpy as np
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from caocrvfy.errors import DataError
from caocrvfy.inference.arithmetic import answer_or_error
from caocrvfy.inference.decoding import Constraint
from caocrvfy.inference.predictor import PREDICT_BATCH, Predictor, bucket, jax_backend
from caocrvfy.serving.batcher import MicroBatcher
from caocrvfy.serving.requests import (API_KEY_ENV, IMAGE_FIELD, ApiKey, BodyLimit, Limits, RequestError,
                                       constraint_of_query, decode_upload, read_images)

log = logging.getLogger(__name__)


def model_info(predictor: Predictor, limits: Limits) -> dict:
    """What /model answers: how the model reads, and its metrics.json when there is one."""
    path = predictor.path
    metrics_path = path.parent / "metrics.json" if path else None
    metrics = json.loads(metrics_path.read_text()) if metrics_path and metrics_path.exists() else None
    return {
        "model": str(path.name) if path else None,
        "format": getattr(predictor.model, "format", "keras"),
        "charset": predictor.charset,
        "head": predictor.head,
        "max_length": predictor.model_config.max_length,
        "input": {"height": predictor.height, "width": predictor.width, "channels": predictor.channels},
        "ignore_case": predictor.ignore_case,
        "limits": asdict(limits),
        "metrics": metrics,
    }


_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            IMAGE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "one part per image, same field name repeated"}}}},
        "application/json": {"schema": {"type": "object", "required": ["images"], "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "byte"},
                       "description": "base64 image files (a data: URL prefix is allowed)"}}}},
    },
}


WARMUP_BATCHES = (1, 2, 3)
WARMUP_PADDED = 32  # a TFLite model is warmed up on every power of two up to this batch size


def create_app(predictor: Predictor, limits: Limits = Limits(), warmup: bool = True,
               batch_window_ms: float | None = 0.0, api_key: str | None = None):
    """The FastAPI app. Decoding runs in worker threads; the model reads the images of
    concurrent requests together (`MicroBatcher`, waiting up to `batch_window_ms` to gather
    them) or, with `batch_window_ms=None`, one request at a time behind a lock. With `api_key`,
    every endpoint but /healthz answers 401 unless the request carries the key."""
    import contextlib

    import anyio.to_thread
    from fastapi import FastAPI, Request, Response
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException

    if api_key is not None and not api_key.strip():
        raise DataError(f"the API key is empty (--api-key or ${API_KEY_ENV}): give a key, or unset it to serve "
                        "without one.")

    class PredictionOut(BaseModel):
        index: int
        text: str
        confidence: float
        file: str | None = None
        answer: str | None = None  # with ?solve=1: the answer of an arithmetic reading
        error: str | None = None  # with ?solve=1: why the reading has no answer

    class PredictOut(BaseModel):
        predictions: list[PredictionOut]

    class ErrorOut(BaseModel):
        error: str

    model_lock = threading.Lock()
    # Decoding uploads and turning outputs into text hold the GIL: run as many at a time as there
    # are cores, first come first served, rather than one thread per waiting request sharing it.
    cpu_work = anyio.CapacityLimiter(os.cpu_count() or 1)

    async def in_thread(fn, *args):
        return await anyio.to_thread.run_sync(fn, *args, limiter=cpu_work)

    def run_model(arrays: list[np.ndarray], constraint: Constraint | None = None):
        with model_lock:
            return predictor.predict_arrays(np.stack(arrays), constraint=constraint)

    if warmup:
        # The first call builds the graph, and a second batch size makes Keras trace it once more
        # for any batch size (its tf.function relaxes the shape): pay for both before the first
        # request, so that a batch of a size not seen yet is not held up by tracing.
        # On JAX every batch shape compiles once; `Predictor.outputs` pads batches to powers of two,
        # so warming up each of those up to the largest batch covers every request.
        # A TFLite file keeps an interpreter for each padded size, made on its first batch: those up
        # to WARMUP_PADDED are made here (each costs about 70 ms and 30 MB; larger ones on demand).
        blank = np.zeros((predictor.height, predictor.width, predictor.channels), np.uint8)
        if jax_backend():
            sizes = [1 << i for i in range(bucket(PREDICT_BATCH).bit_length())]
        elif getattr(predictor.model, "format", None) == "tflite":
            sizes = [1 << i for i in range(WARMUP_PADDED.bit_length())]
        else:
            sizes = WARMUP_BATCHES
        for size in sizes:
            run_model([blank] * size)
    # The batcher thread only runs the model; each request turns its own outputs into text in a
    # worker thread, so the next model call need not wait for the decoding of the last one.
    batcher = None if batch_window_ms is None else MicroBatcher(
        predictor.outputs, max_batch=max(limits.max_images, PREDICT_BATCH), window_s=batch_window_ms / 1000)

    async def read(arrays: list[np.ndarray], constraint: Constraint | None, timing: dict):
        if batcher is None:
            started = time.perf_counter()
            results = await anyio.to_thread.run_sync(run_model, arrays, constraint)
            timing["model"] = time.perf_counter() - started  # the lock's wait included
            return results
        future = batcher.submit(arrays)
        outputs = await asyncio.wrap_future(future)
        timing["queue"], timing["model"], timing["batch"] = future.timing
        started = time.perf_counter()
        results = await in_thread(predictor.decode, outputs, constraint)
        timing["text"] = time.perf_counter() - started
        return results

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # What start-up made (TensorFlow's modules, the model, the warmed-up interpreters) lives as
        # long as the server: frozen out of the collector, whose full collections of it stopped
        # every thread for about 200 ms (BENCHMARKS.md, "HTTP service under load").
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if batcher is not None:
                await asyncio.to_thread(batcher.close)

    # FastAPI's /docs and /redoc pages load their scripts and styles from a CDN, so they are blank
    # offline and no dependency ships them: the schema stays at /openapi.json for any viewer.
    about = "Read text captchas with a trained model." + (
        " Send the API key as `Authorization: Bearer KEY` or `X-API-Key: KEY`." if api_key else "")
    app = FastAPI(title="caocrvfy", version=_version(), description=about, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    info = model_info(predictor, limits)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        log.info(f"{request.method} {request.url.path}: {exc.status} {exc}")
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception(f"{request.method} {request.url.path} failed")
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server logged it."},
                            status_code=500)

    errors = {code: {"model": ErrorOut} for code in (400, 401, 408, 413, 415)}

    @app.post("/predict", response_model=PredictOut, response_model_exclude_none=True, responses=errors,
              openapi_extra={"requestBody": _REQUEST_BODY})
    async def predict(request: Request, response: Response):
        """Reads one or more captchas: multipart field `file` (repeated for a batch) or JSON
        {"images": [base64, ...]}; answers text and confidence per image, in order. Query
        parameters `length`, `min_length`, `max_length` and `allowed` hold every reading of the
        request to a length and an alphabet (`?length=5&allowed=0-9`); `solve=1` reads arithmetic
        captchas as expressions and adds each one's `answer` (or an `error` saying why none). The Server-Timing header
        says where the time went (milliseconds): body, decode, queue, model, text, and the
        images of the model call as batch."""
        constraint = constraint_of_query(request.query_params, predictor)
        timing, started = {}, time.perf_counter()
        items = await read_images(request, limits)
        timing["body"], started = time.perf_counter() - started, time.perf_counter()
        arrays = await in_thread(
            lambda: [decode_upload(data, label, predictor, limits.max_pixels) for label, _, data in items])
        timing["decode"] = time.perf_counter() - started
        results = await read(arrays, constraint, timing)
        response.headers["Server-Timing"] = server_timing(timing)
        solving = constraint is not None and constraint.expression
        return {"predictions": [
            {"index": i, "text": p.text, "confidence": round(p.confidence, 6)} | ({"file": name} if name else {})
            | (answer_or_error(p.text) if solving else {})
            for i, ((_, name, _), p) in enumerate(zip(items, results))]}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/model")
    async def model():
        """Character set, input size, head, limits and the model's metrics.json."""
        return info

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout=limits.body_timeout)
    if api_key:  # added last, so it runs first: a caller without the key is refused before its body is read
        app.add_middleware(ApiKey, key=api_key)
    return app


def server_timing(timing: dict) -> str:
    """{"body": 0.0004, ..., "batch": 12} -> 'body;dur=0.4, ..., batch;desc="12 images"' (durations in ms)."""
    parts = [f"{name};dur={1000 * value:.1f}" for name, value in timing.items() if name != "batch"]
    if "batch" in timing:
        parts.append(f'batch;desc="{timing["batch"]} images"')
    return ", ".join(parts)


def _version() -> str:
    from caocrvfy import __version__

    return __version__


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request header is not complete
    `header_timeout` seconds after connecting, or after the first byte that follows an answer.
    uvicorn times out idle keep-alive connections but not a header sent in part, so without
    this a client that sends half a header and then nothing holds a connection for ever.
    Only public attributes of `H11Protocol` are used (`cycle`, `transport`, `loop`, `client`)."""

    def __init__(self, *args, header_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_timer()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        between_requests = cycle is None or cycle.response_complete
        super().data_received(data)
        if self.cycle is not cycle:  # h11 read a whole header and a request began
            self._stop_timer()
        elif between_requests and self.header_timer is None:  # the first bytes of the next request
            self._start_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _start_timer(self) -> None:
        self.header_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _stop_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _timed_out(self) -> None:
        self.header_timer = None
        if not self.transport.is_closing():
            log.debug(f"closed a connection from {self.client}: no whole request header in {self.header_timeout:g} s")
            self.transport.close()


def server_config(app, host: str, port: int, limits: Limits = Limits(), log_level: str = "info"):
    """uvicorn's configuration for the app: the header timeout (our protocol), the keep-alive
    timeout and the bound on open connections from `limits`."""
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
        http=functools.partial(HeaderTimeoutProtocol, header_timeout=limits.header_timeout),
        timeout_keep_alive=limits.keep_alive_timeout,
        # uvicorn answers 503 when the open connections, the new one counted, reach its limit
        limit_concurrency=limits.max_connections + 1)


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def run(predictor: Predictor, host: str, port: int, limits: Limits = Limits(), log_level: str = "info",
        batch_window_ms: float | None = 0.0, api_key: str | None = None) -> None:
    """Serves until interrupted (Ctrl-C or SIGTERM)."""
    app = create_app(predictor, limits, batch_window_ms=batch_window_ms, api_key=api_key)
    batching = "off" if batch_window_ms is None else f"on, window {batch_window_ms:g} ms"
    log.info(f"serving {predictor.path} on http://{host}:{port} (schema at /openapi.json); "
             f"server-side batching {batching}; API key {'required' if api_key else 'off'}")
    if not _loopback(host):
        log.warning(f"{host} is reachable from other machines, and this server has no TLS"
                    f"{' and no API key' if not api_key else ''}: put it behind a reverse proxy with TLS, "
                    "authentication and rate limits (docs/serving.md).")
    uvicorn.Server(server_config(app, host, port, limits, log_level)).run()
