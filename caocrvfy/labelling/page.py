"""The labelling page: a FastAPI app over a `LabelStore`, a `Suggester` and a `TrainJob`.

    caocrvfy label data/site-captchas                   # http://127.0.0.1:8600
    caocrvfy label data/site-captchas --print-next 20    # the same queue, without the page

GET / is the page (static/label.html, .css, .js: no build step, nothing from a CDN).
GET /image/NAME answers only the folder's own image files, looked up by name in its listing,
so any other path, traversal included, is 404. The JSON API under /api: `queue` (unlabelled
images least confident first, with suggestions), `status` (progress, training, accuracy
figure), and POST `label`, `unreadable`, `undo`, `train`. Request bodies are limited to
MAX_BODY_BYTES; labels to what `check_label` allows.
"""

import asyncio
import contextlib
import logging
import threading
from importlib import resources
from pathlib import Path

from caocrvfy.labelling.jobs import TrainJob
from caocrvfy.labelling.store import LabelError, LabelStore
from caocrvfy.labelling.suggestions import Suggester, Suggestion, latest_model, least_sure_first

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024  # a label request is a file name and a few characters
STATIC = {"label.html": "text/html", "label.css": "text/css", "label.js": "text/javascript"}
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".bmp": "image/bmp", ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff"}


class Labeller:
    """The page's state: the store, the current model's suggestions, the training job."""

    def __init__(self, store: LabelStore, model: str | Path | None = None, train_minutes: float | None = None):
        self.store = store
        self.lock = threading.Lock()
        self.suggester: Suggester | None = None
        self.suggestions: dict[str, Suggestion] = {}
        self.unreadable_files: list[tuple[str, str]] = []
        self.use_model(Path(model) if model else latest_model(store.root))
        kwargs = {} if train_minutes is None else {"minutes": train_minutes}
        self.job = TrainJob(store, self.use_model, **kwargs)

    def use_model(self, model: Path) -> None:
        """Loads `model` and reads every image not labelled yet with it."""
        suggester = Suggester(model)
        pending = {name: self.store.images[name] for name in self.store.unlabelled()}
        found, failed = suggester.read(pending)
        log.info(f"{suggester.name}: read {len(found)} image(s) to label" + (f", {len(failed)} cannot be decoded"
                                                                              if failed else ""))
        with self.lock:
            self.suggester, self.suggestions = suggester, {**self.suggestions, **found}
            self.unreadable_files = sorted(set(self.unreadable_files) | set(failed))

    def queue(self) -> list[dict]:
        with self.lock:
            suggestions = dict(self.suggestions)
        pending = set(self.store.unlabelled())
        order = least_sure_first({n: s for n, s in suggestions.items() if n in pending})
        return [{"file": n, "suggestion": suggestions[n].text, "confidence": round(suggestions[n].confidence, 4)}
                for n in order]

    def suggestion(self, name: str) -> Suggestion | None:
        with self.lock:
            return self.suggestions.get(name)

    def status(self) -> dict:
        return {"progress": self.store.progress(), "model": self.suggester.name, "training": self.job.status(),
                "curve": self.store.curve(),
                "skipped": [{"file": n, "reason": r} for n, r in self.store.skipped + self.unreadable_files]}


def create_app(labeller: Labeller):
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, Field

    from caocrvfy.serving.requests import BodyLimit

    store = labeller.store

    class Answer(BaseModel):
        file: str = Field(max_length=255)
        label: str = Field(max_length=256)

    class Item(BaseModel):
        file: str = Field(max_length=255)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(labeller.job.stop)

    app = FastAPI(title="caocrvfy label", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(LabelError)
    async def _label_error(request: Request, exc: LabelError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    def static(name: str) -> Response:
        text = resources.files("caocrvfy.labelling").joinpath("static", name).read_text(encoding="utf-8")
        return Response(text, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/")
    async def page():
        return static("label.html")

    @app.get("/static/{name}")
    async def static_file(name: str):
        if name not in STATIC:
            return JSONResponse({"error": "not found"}, status_code=404)
        return static(name)

    @app.get("/image/{name:path}")
    async def image(name: str):
        path = store.path_of(name)
        if path is None:
            return JSONResponse({"error": f"{name!r} is not an image of the folder"}, status_code=404)
        data = await run_in_threadpool(path.read_bytes)
        return Response(data, media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                        headers={"Cache-Control": "no-cache"})

    @app.get("/api/queue")
    async def queue():
        return {"items": labeller.queue(), "labels": store.labelled()} | labeller.status()

    @app.get("/api/status")
    async def status():
        return labeller.status()

    @app.post("/api/label")
    async def label(answer: Answer):
        suggestion = labeller.suggestion(answer.file)
        stored = await run_in_threadpool(
            store.save, answer.file, answer.label, suggestion.text if suggestion else None,
            suggestion.confidence if suggestion else None, labeller.suggester.name)
        return {"file": answer.file, "label": stored, "progress": store.progress()}

    @app.post("/api/unreadable")
    async def unreadable(item: Item):
        await run_in_threadpool(store.mark_unreadable, item.file)
        return {"file": item.file, "progress": store.progress()}

    @app.post("/api/undo")
    async def undo():
        change = await run_in_threadpool(store.undo)
        if change is None:
            return {"file": None, "progress": store.progress()}
        suggestion = labeller.suggestion(change.file)
        return {"file": change.file, "label": change.label, "unreadable": change.unreadable,
                "suggestion": suggestion.text if suggestion else "",
                "confidence": round(suggestion.confidence, 4) if suggestion else 0.0, "progress": store.progress()}

    @app.post("/api/train")
    async def train():
        return await run_in_threadpool(labeller.job.start, labeller.suggester.predictor.path.parent)

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES, timeout=10.0)
    return app


def print_next(labeller: Labeller, count: int) -> list[str]:
    """The next `count` images to label, least confident first, as file<TAB>suggestion<TAB>confidence."""
    return [f"{item['file']}\t{item['suggestion']}\t{item['confidence']:.4f}" for item in labeller.queue()[:count]]


def run(labeller: Labeller, host: str, port: int) -> None:
    """Serves the page until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    from caocrvfy.serving.app import server_config

    progress = labeller.store.progress()
    log.info(f"labelling {labeller.store.root}: {progress['labelled']} labelled, {progress['left']} left; "
             f"suggestions by {labeller.suggester.name}; open http://{host}:{port}/")
    uvicorn.Server(server_config(create_app(labeller), host, port, log_level="warning")).run()
