"""What a request may hold and how its images are read: limits, multipart and JSON bodies,
base64, the body middleware (size and time), the API key middleware, and one-sentence errors
that name the image."""

import asyncio
import base64
import binascii
import hmac
import io
import json
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from caocrvfy.data.charset import parse_charset
from caocrvfy.errors import DataError
from caocrvfy.inference.decoding import Constraint
from caocrvfy.inference.predictor import Predictor

log = logging.getLogger(__name__)

IMAGE_FIELD = "file"
API_KEY_ENV = "CAOCRVFY_API_KEY"  # `caocrvfy serve` reads the key from it when --api-key is not given


@dataclass(frozen=True)
class Limits:
    """What one request may hold and how long a client may take. A larger request is refused
    with 413 before the model runs; a client that stalls is dropped, so that stalled clients
    cannot hold the server's connections."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_images: int = 64
    max_pixels: int = 4_000_000  # per image, read from the header before decoding
    header_timeout: float = 10.0  # s to send a whole request header, from connecting or the first byte after an answer
    body_timeout: float = 30.0  # s to send the whole body once the header is in; then 408
    keep_alive_timeout: float = 5.0  # s an idle connection stays open after an answer
    max_connections: int = 100  # open connections served at once; a request on one more gets 503


class RequestError(Exception):
    """A request the client can fix; becomes a JSON error with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


CONSTRAINT_FIELDS = ("length", "min_length", "max_length", "allowed", "solve")
_YES, _NO = ("1", "true", "yes"), ("0", "false", "no")


def constraint_of_query(query, predictor: Predictor) -> Constraint | None:
    """The request's `length`, `min_length`, `max_length`, `allowed` and `solve` query parameters
    as a Constraint (None without them; `solve=1`: an arithmetic expression, its `expression`); a
    400 naming the parameter when one is wrong."""
    unknown = sorted(set(query) - set(CONSTRAINT_FIELDS))
    if unknown:
        raise RequestError(400, f"unknown query parameter(s) {', '.join(unknown)}: /predict takes "
                                f"{', '.join(CONSTRAINT_FIELDS)}.")
    numbers = {}
    for name in CONSTRAINT_FIELDS[:3]:
        if name in query:
            text = query[name]
            if not text.isdigit() or len(text) > 4:
                raise RequestError(400, f"{name} must be a whole number of characters, not {text[:20]!r}.")
            numbers[name] = int(text)
    solve = query.get("solve", "0").lower()
    if solve not in _YES + _NO:
        raise RequestError(400, f"solve must be 1 or 0 (true or false), not {solve[:20]!r}.")
    try:
        allowed = parse_charset(query["allowed"]) if "allowed" in query else None
        constraint = Constraint.of(numbers.get("length"), numbers.get("min_length"), numbers.get("max_length"),
                                   allowed, expression=solve in _YES)
        if constraint is not None:
            predictor.check(constraint)
    except (ValueError, DataError) as exc:
        raise RequestError(400, str(exc)) from exc
    return constraint


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
        except RecursionError as exc:  # json stops at Python's recursion limit (about 1,000 levels)
            raise RequestError(400, 'the JSON is nested too deeply to read: send {"images": [base64 strings]}.') \
                from exc
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


async def send_error(send, status: int, message: str, headers: tuple = ()) -> None:
    """Answers {"error": message} from ASGI middleware and closes the connection."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: reads the whole body, answering 413 as soon as it passes `max_bytes`
    (or the Content-Length says it will) and 408 when it is not complete `timeout` seconds
    after the header, then replays it to the app."""

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def _refuse(self, send, size: str) -> None:
        log.info(f"refused a request body of {size} bytes (limit {self.max_bytes})")
        await send_error(send, 413, f"the request body is {size} bytes, over the limit of {self.max_bytes}: "
                                    "send fewer or smaller images.")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, declared.decode())
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.timeout):  # for the whole body: a trickle is no better than a stall
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away
                        return
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_bytes or not message.get("more_body"):
                        break
        except TimeoutError:
            of = f" of {declared.decode()}" if declared else ""
            log.info(f"dropped a request whose body stalled at {size}{of} bytes")
            return await send_error(send, 408, f"the request body was not complete {self.timeout:g} s after its header "
                                               f"({size}{of} bytes came): send the whole body at once.")
        if size > self.max_bytes:
            return await self._refuse(send, f"more than {size}")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class ApiKey:
    """ASGI middleware: every path but `open_paths` needs `Authorization: Bearer KEY` or
    `X-API-Key: KEY`; any other request gets 401 before its body is read."""

    def __init__(self, app, key: str, open_paths: tuple[str, ...] = ("/healthz",)):
        self.app, self.key, self.open_paths = app, key.strip().encode(), frozenset(open_paths)

    def _allowed(self, headers) -> bool:
        sent = []
        for name, value in headers:
            if name == b"x-api-key":
                sent.append(value.strip())
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                sent.append(value[7:].strip())
        # compare_digest takes as long for a near miss as for a wild guess: no timing hints
        return any(hmac.compare_digest(candidate, self.key) for candidate in sent)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._allowed(scope["headers"]):
            return await self.app(scope, receive, send)
        log.info(f"{scope['method']} {scope['path']}: 401, no valid API key")
        await send_error(send, 401, "no valid API key: send the header `Authorization: Bearer KEY` or "
                                    "`X-API-Key: KEY`.", headers=((b"www-authenticate", b"Bearer"),))
