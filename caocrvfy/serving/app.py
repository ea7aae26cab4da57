"""Read captchas over HTTP: a FastAPI app around a `Predictor`, run by uvicorn.

    caocrvfy serve --model models/captcha-6x62 --host 127.0.0.1 --port 8000
    curl -F file=@a.png -F file=@b.png http://127.0.0.1:8000/predict
    curl -H 'content-type: application/json' -d '{"images": ["iVBORw0..."]}' http://127.0.0.1:8000/predict

`POST /predict` answers {"predictions": [{"index", "text", "confidence"[, "file"]}, ...]} in the
order sent; `GET /healthz`, `GET /model` (character set, input size, head, metrics.json),
OpenAPI docs at /docs. A request that cannot be read gets a 4xx answer {"error": "..."} naming
the problem and the image; the server goes on. Limits (body bytes, images per request, pixels
per image) are `Limits` fields and `caocrvfy serve` options.
"""

import json
import logging
import threading
from dataclasses import asdict

import numpy as np

from caocrvfy.inference.predictor import PREDICT_BATCH, Predictor, bucket, jax_backend
from caocrvfy.serving.batcher import MicroBatcher
from caocrvfy.serving.requests import IMAGE_FIELD, BodyLimit, Limits, RequestError, decode_upload, read_images

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


def create_app(predictor: Predictor, limits: Limits = Limits(), warmup: bool = True,
               batch_window_ms: float | None = 0.0):
    """The FastAPI app. Decoding runs in worker threads; the model reads the images of
    concurrent requests together (`MicroBatcher`, waiting up to `batch_window_ms` to gather
    them) or, with `batch_window_ms=None`, one request at a time behind a lock."""
    import asyncio
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException

    class PredictionOut(BaseModel):
        index: int
        text: str
        confidence: float
        file: str | None = None

    class PredictOut(BaseModel):
        predictions: list[PredictionOut]

    class ErrorOut(BaseModel):
        error: str

    model_lock = threading.Lock()

    def run_model(arrays: list[np.ndarray]):
        with model_lock:
            return predictor.predict_arrays(np.stack(arrays))

    if warmup:
        # The first call builds the graph, and a second batch size makes Keras trace it once more
        # for any batch size (its tf.function relaxes the shape): pay for both before the first
        # request, so that a batch of a size not seen yet is not held up by tracing.
        # On JAX every batch shape compiles once; `Predictor.outputs` pads batches to powers of two,
        # so warming up each of those up to the largest batch covers every request.
        blank = np.zeros((predictor.height, predictor.width, predictor.channels), np.uint8)
        sizes = [1 << i for i in range(bucket(PREDICT_BATCH).bit_length())] if jax_backend() else WARMUP_BATCHES
        for size in sizes:
            run_model([blank] * size)
    # The batcher thread only runs the model; each request turns its own outputs into text in a
    # worker thread, so the next model call need not wait for the decoding of the last one.
    batcher = None if batch_window_ms is None else MicroBatcher(
        predictor.outputs, max_batch=max(limits.max_images, PREDICT_BATCH), window_s=batch_window_ms / 1000)

    async def read(arrays: list[np.ndarray]):
        if batcher is None:
            return await run_in_threadpool(run_model, arrays)
        outputs = await asyncio.wrap_future(batcher.submit(arrays))
        return await run_in_threadpool(predictor.decode, outputs)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if batcher is not None:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="caocrvfy", version=_version(), description="Read text captchas with a trained model.",
                  lifespan=lifespan)
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

    errors = {code: {"model": ErrorOut} for code in (400, 413, 415)}

    @app.post("/predict", response_model=PredictOut, response_model_exclude_none=True, responses=errors,
              openapi_extra={"requestBody": _REQUEST_BODY})
    async def predict(request: Request):
        """Reads one or more captchas: multipart field `file` (repeated for a batch) or JSON
        {"images": [base64, ...]}; answers text and confidence per image, in order."""
        items = await read_images(request, limits)
        arrays = await run_in_threadpool(
            lambda: [decode_upload(data, label, predictor, limits.max_pixels) for label, _, data in items])
        results = await read(arrays)
        return {"predictions": [
            {"index": i, "text": p.text, "confidence": round(p.confidence, 6)} | ({"file": name} if name else {})
            for i, ((_, name, _), p) in enumerate(zip(items, results))]}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/model")
    async def model():
        """Character set, input size, head, limits and the model's metrics.json."""
        return info

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    return app


def _version() -> str:
    from caocrvfy import __version__

    return __version__


def run(predictor: Predictor, host: str, port: int, limits: Limits = Limits(), log_level: str = "info",
        batch_window_ms: float | None = 0.0) -> None:
    """Serves until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    app = create_app(predictor, limits, batch_window_ms=batch_window_ms)
    batching = "off" if batch_window_ms is None else f"on, window {batch_window_ms:g} ms"
    log.info(f"serving {predictor.path} on http://{host}:{port} (docs at /docs); server-side batching {batching}")
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
