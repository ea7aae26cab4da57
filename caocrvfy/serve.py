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

import base64
import binascii
import concurrent.futures
import io
import json
import logging
import queue
import threading
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from caocrvfy.predict import PREDICT_BATCH, Predictor, bucket, jax_backend

log = logging.getLogger(__name__)

IMAGE_FIELD = "file"


@dataclass(frozen=True)
class Limits:
    """What one request may hold; anything larger is refused with 413 before the model runs."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_images: int = 64
    max_pixels: int = 4_000_000  # per image, read from the header before decoding


class RequestError(Exception):
    """A request the client can fix; becomes a JSON error with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, label: str, predictor: Predictor, max_pixels: int) -> np.ndarray:
    """Checks the header's pixel count, then decodes to the model's uint8 input."""
    if not data:
        raise RequestError(400, f"{label} is empty: send the image file's bytes.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(413, f"{label} is too large to decode ({exc}).") from exc
    except UnidentifiedImageError as exc:
        raise RequestError(400, f"{label} is not an image (PNG, JPEG, GIF, BMP, WebP or TIFF expected).") from exc
    except Exception as exc:
        raise RequestError(400, f"{label} cannot be read as an image ({type(exc).__name__}: {exc}).") from exc
    if width * height > max_pixels:
        raise RequestError(413, f"{label} is {width}x{height} = {width * height} pixels, over the limit of "
                                f"{max_pixels}; send a smaller image.")
    try:
        return predictor.prepare(data)
    except Exception as exc:  # Pillow raises many types for broken files
        raise RequestError(400, f"{label} cannot be decoded, it may be truncated or corrupt "
                                f"({type(exc).__name__}: {exc}).") from exc


def _from_base64(item, label: str) -> bytes:
    if not isinstance(item, str):
        raise RequestError(400, f"{label} is a JSON {type(item).__name__}, not a base64 string.")
    if item.startswith("data:") and "," in item:  # a data URL: data:image/png;base64,....
        item = item.split(",", 1)[1]
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{label} is not valid base64 ({exc}).") from exc


async def read_images(request, limits: Limits) -> list[tuple[str, str | None, bytes]]:
    """(label, file name, bytes) for each image in a multipart or JSON request."""
    from starlette.exceptions import HTTPException

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    items: list[tuple[str, str | None, bytes]] = []
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=limits.max_images, max_fields=limits.max_images)
        except HTTPException as exc:
            if "Too many" in str(exc.detail):
                raise RequestError(413, f"more than {limits.max_images} images in one request: "
                                        "send them in smaller batches.") from exc
            reason = str(exc.detail).rstrip(".")
            raise RequestError(400, f"the multipart body cannot be parsed ({reason}).") from exc
        try:
            other = sorted(set(form.keys()) - {IMAGE_FIELD})
            for i, upload in enumerate(form.getlist(IMAGE_FIELD)):
                if isinstance(upload, str):
                    raise RequestError(400, f"field `{IMAGE_FIELD}` #{i} is text, not a file upload.")
                name = upload.filename or None
                items.append((f"file {name!r}" if name else f"file #{i}", name, await upload.read()))
        finally:
            await form.close()
        if not items and other:
            raise RequestError(400, f"no field `{IMAGE_FIELD}` in the form (found {', '.join(other)}): "
                                    f"send each image as a `{IMAGE_FIELD}` part.")
    elif content_type == "application/json":
        body = await request.body()
        if not body.strip():
            raise RequestError(400, 'the body is empty: send JSON {"images": [base64 strings]}.')
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not valid JSON ({exc}).") from exc
        images = payload.get("images") if isinstance(payload, dict) else None
        if not isinstance(images, list):
            raise RequestError(400, 'the JSON must be an object {"images": [base64 strings]}.')
        if len(images) > limits.max_images:
            raise RequestError(413, f"{len(images)} images in one request, over the limit of "
                                    f"{limits.max_images}: send them in smaller batches.")
        items = [(f"images[{i}]", None, _from_base64(item, f"images[{i}]")) for i, item in enumerate(images)]
    elif not await request.body():
        raise RequestError(400, f"the body is empty: send images as multipart/form-data field `{IMAGE_FIELD}` "
                                'or JSON {"images": [base64 strings]}.')
    else:
        raise RequestError(415, f"content type {content_type or 'none'!r} is not accepted: send multipart/form-data "
                                f'with the field `{IMAGE_FIELD}`, or application/json {{"images": [...]}}.')
    if not items:
        raise RequestError(400, f"no images in the request: send one or more `{IMAGE_FIELD}` parts "
                                'or JSON {"images": [base64 strings]}.')
    if len(items) > limits.max_images:
        raise RequestError(413, f"{len(items)} images in one request, over the limit of {limits.max_images}.")
    return items


class BodyLimit:
    """ASGI middleware: reads the whole body, answering 413 as soon as it passes `max_bytes`
    (or the Content-Length says it will), then replays it to the app."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send, size: str) -> None:
        log.info(f"refused a request body of {size} bytes (limit {self.max_bytes})")
        body = json.dumps({"error": f"the request body is {size} bytes, over the limit of {self.max_bytes}: "
                                    "send fewer or smaller images."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, declared.decode())
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send, f"more than {size}")
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class MicroBatcher:
    """Runs the model for many requests at once: one thread takes the images of every request
    waiting (up to `max_batch`, and for up to `window_s` after the first), reads them in one
    model call and hands each request its share. With `window_s` 0 nothing waits on purpose:
    requests that arrive while the model is busy are read together in its next call.
    """

    def __init__(self, predict_arrays, max_batch: int = 256, window_s: float = 0.0):
        self.predict_arrays, self.max_batch, self.window_s = predict_arrays, max_batch, window_s
        self.jobs: queue.Queue = queue.Queue()
        self.calls = self.images = 0  # model calls and images read, for /model and tests
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="caocrvfy-batcher", daemon=True)
        self.thread.start()

    def submit(self, arrays: list[np.ndarray]) -> concurrent.futures.Future:
        if self.closed:
            raise RuntimeError("the server is shutting down")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.jobs.put((arrays, future))
        return future

    def close(self) -> None:
        self.closed = True
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def _take(self) -> list | None:
        first = self.jobs.get()
        if first is None:
            return None
        taken, size = [first], len(first[0])
        deadline = time.monotonic() + self.window_s
        while size < self.max_batch:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic())) if self.window_s \
                    else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # stop after this batch
                break
            taken.append(job)
            size += len(job[0])
        return taken

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            # A request that went away (its future cancelled) is not read.
            taken = [(arrays, future) for arrays, future in taken if future.set_running_or_notify_cancel()]
            if not taken:
                continue
            arrays = [a for job_arrays, _ in taken for a in job_arrays]
            try:
                results = self.predict_arrays(np.stack(arrays))
            except Exception as exc:  # every waiting request gets the error; the thread goes on
                for _, future in taken:
                    future.set_exception(exc)
                continue
            self.calls, self.images = self.calls + 1, self.images + len(arrays)
            start = 0
            for job_arrays, future in taken:
                future.set_result(results[start : start + len(job_arrays)])
                start += len(job_arrays)


def model_info(predictor: Predictor, limits: Limits) -> dict:
    """What /model answers: how the model reads, and its metrics.json when there is one."""
    path = predictor.path
    metrics_path = path.parent / "metrics.json" if path else None
    metrics = json.loads(metrics_path.read_text()) if metrics_path and metrics_path.exists() else None
    resolved = predictor.config["resolved"]
    return {
        "model": str(path.name) if path else None,
        "format": getattr(predictor.model, "format", "keras"),
        "charset": predictor.charset,
        "head": predictor.head,
        "max_length": resolved.get("max_length"),
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
        predictor.outputs, max_batch=max(limits.max_images, 256), window_s=batch_window_ms / 1000)

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
