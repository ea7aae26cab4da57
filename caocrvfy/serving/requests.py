"""What a request may hold and how its images are read: limits, multipart and JSON bodies,
base64, the body-size middleware, and one-sentence errors that name the image."""

import base64
import binascii
import io
import json
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from caocrvfy.inference.predictor import Predictor

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
