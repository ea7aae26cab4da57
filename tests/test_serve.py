"""The HTTP service: every kind of bad request gets a 4xx JSON error and the server goes on."""

import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")
pytest.importorskip("multipart")

import httpx2  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from caocrvfy.errors import DataError  # noqa: E402
from caocrvfy.model_enhanced import build_model  # noqa: E402
from caocrvfy.inference import Predictor  # noqa: E402
from caocrvfy.serving.app import create_app  # noqa: E402
from caocrvfy.serving.batcher import MicroBatcher  # noqa: E402
from caocrvfy.serving.requests import Limits  # noqa: E402

CHARSET = "0123456789"
SHAPE = (24, 64, 1)
LIMITS = Limits(max_body_bytes=100_000, max_images=4, max_pixels=50_000)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An untrained tiny softmax model (it always reads 3 characters) with config and metrics."""
    folder = tmp_path_factory.mktemp("serve-run")
    keras.utils.set_random_seed(0)
    model = build_model(charset=CHARSET, max_length=3, height=SHAPE[0], width=SHAPE[1], head="softmax",
                        filters=(8, 8, 8, 8), dense_units=8, rnn_units=8)
    model.save(folder / "model.keras")
    resolved = {"charset": CHARSET, "max_length": 3, "head": "softmax", "input_shape": list(SHAPE)}
    (folder / "config.json").write_text(json.dumps({"ignore_case": False, "resolved": resolved}))
    (folder / "metrics.json").write_text(json.dumps({"validation": {"full_match": 0.5, "count": 2}}))
    return folder


@pytest.fixture(scope="module")
def reader(run) -> Predictor:
    return Predictor.load(run)


@pytest.fixture(scope="module")
def client(reader):
    with TestClient(create_app(reader, LIMITS)) as c:
        yield c


@pytest.fixture(scope="module")
def pngs(generated_dir) -> list[bytes]:
    return [p.read_bytes() for p in sorted(generated_dir.glob("*.png"))]


def png(size=(64, 24), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, "white").save(buf, format="PNG")
    return buf.getvalue()


def forged_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height: a decompression bomb's first bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))


def files(*items: bytes, field: str = "file"):
    return [(field, (f"img{i}.png", data, "image/png")) for i, data in enumerate(items)]


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error


# ---------------------------------------------------------------- reading


def test_what_start_up_made_is_frozen_out_of_the_collector_while_serving(reader):
    import gc

    with TestClient(create_app(reader, LIMITS, warmup=False)) as c:
        assert gc.get_freeze_count() > 0  # no full collection walks TensorFlow's objects under load
        assert c.get("/healthz").status_code == 200
    assert gc.get_freeze_count() == 0  # given back to the collector at shutdown


def test_predict_one_and_a_batch_in_order(client, reader, pngs):
    expected = reader.predict(pngs[:3])
    one = client.post("/predict", files=files(pngs[0]))
    assert one.status_code == 200
    assert one.json() == {"predictions": [
        {"index": 0, "file": "img0.png", "text": expected[0].text, "confidence": round(expected[0].confidence, 6)}]}
    batch = client.post("/predict", files=files(*pngs[:3])).json()["predictions"]
    assert [p["text"] for p in batch] == [e.text for e in expected]
    assert [p["file"] for p in batch] == ["img0.png", "img1.png", "img2.png"]
    assert all(len(p["text"]) == 3 and 0.0 <= p["confidence"] <= 1.0 for p in batch)


def test_server_timing_says_where_the_time_went(client, reader, pngs):
    header = client.post("/predict", files=files(*pngs[:2])).headers["Server-Timing"]
    parts = dict(part.split(";", 1) for part in header.split(", "))
    assert list(parts) == ["body", "decode", "queue", "model", "text", "batch"]
    assert all(float(parts[name].removeprefix("dur=")) >= 0 for name in ("body", "decode", "queue", "model", "text"))
    assert parts["batch"] == 'desc="2 images"'
    unbatched = TestClient(create_app(reader, LIMITS, warmup=False, batch_window_ms=None))
    with unbatched:
        header = unbatched.post("/predict", files=files(pngs[0])).headers["Server-Timing"]
    assert [part.split(";")[0] for part in header.split(", ")] == ["body", "decode", "model"]


def test_predict_json_base64(client, reader, pngs):
    expected = [p.text for p in reader.predict(pngs[:2])]
    images = [base64.b64encode(pngs[0]).decode(), "data:image/png;base64," + base64.b64encode(pngs[1]).decode()]
    response = client.post("/predict", json={"images": images})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["text"] for p in predictions] == expected
    assert [p["index"] for p in predictions] == [0, 1] and "file" not in predictions[0]


def test_other_sizes_and_modes_are_resized(client):
    response = client.post("/predict", files=files(png((200, 80), "RGBA"), png((30, 10), "L")))
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2


def test_health_model_and_schema(client, reader):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["charset"] == CHARSET and info["head"] == "softmax" and info["max_length"] == 3
    assert info["input"] == {"height": 24, "width": 64, "channels": 1}
    assert info["metrics"] == {"validation": {"full_match": 0.5, "count": 2}}
    assert info["limits"]["max_images"] == LIMITS.max_images and info["format"] == "keras"
    assert info["limits"]["header_timeout"] == LIMITS.header_timeout
    # FastAPI's pages load their scripts from a CDN and are blank offline: off, the schema stays.
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize("data,status,words", [
    (b"this is not an image", 400, ["img0.png", "is not an image"]),
    (b"", 400, ["img0.png", "is empty"]),
    (forged_png(300, 300), 413, ["300x300", "over the limit of 50000"]),
    (forged_png(100_000, 100_000), 413, ["too large"]),  # past Pillow's own bomb limit as well
], ids=["not-an-image", "empty-file", "too-many-pixels", "decompression-bomb"])
def test_bad_images(client, data, status, words):
    assert_error(client.post("/predict", files=files(data)), status, *words)


def test_truncated_image(client, pngs):
    assert_error(client.post("/predict", files=files(pngs[0], pngs[1][: len(pngs[1]) // 2])), 400,
                 "img1.png", "truncated or corrupt")


def test_a_bad_image_in_a_json_batch_is_named(client, pngs):
    images = [base64.b64encode(pngs[0]).decode(), base64.b64encode(b"GIF89a broken").decode()]
    assert_error(client.post("/predict", json={"images": images}), 400, "images[1]")


@pytest.mark.parametrize("kwargs,status,words", [
    ({}, 400, ["body is empty"]),
    ({"content": b"", "headers": {"content-type": "application/json"}}, 400, ["body is empty"]),
    ({"content": b'{"images": [', "headers": {"content-type": "application/json"}}, 400, ["not valid JSON"]),
    ({"json": ["abc"]}, 400, ['{"images"']),
    ({"json": {"images": []}}, 400, ["no images"]),
    ({"json": {"images": ["@@not base64@@"]}}, 400, ["images[0] is not valid base64"]),
    ({"json": {"images": [3]}}, 400, ["images[0] is a JSON int"]),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, ["'text/plain' is not accepted"]),
    ({"files": files(png(), field="image")}, 400, ["no field `file`", "image"]),
], ids=["no-body", "empty-json", "broken-json", "json-list", "no-images", "bad-base64", "not-a-string",
        "text-plain", "wrong-field"])
def test_bad_requests(client, kwargs, status, words):
    assert_error(client.post("/predict", **kwargs), status, *words)


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
                         ids=["arrays", "objects"])
def test_json_nested_100000_deep(reader, body):
    with TestClient(create_app(reader, Limits(), warmup=False)) as c:  # the body is over LIMITS' 100 kB
        response = c.post("/predict", content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, "nested too deeply")


def test_too_many_images(client):
    five = [png()] * 5
    assert_error(client.post("/predict", files=files(*five)), 413, "more than 4 images")
    assert_error(client.post("/predict", json={"images": [base64.b64encode(i).decode() for i in five]}), 413,
                 "5 images", "limit of 4")


def test_body_over_the_size_limit(client):
    big = os.urandom(LIMITS.max_body_bytes + 1)
    assert_error(client.post("/predict", files=files(big)), 413, "over the limit of 100000")

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(3):
            yield os.urandom(LIMITS.max_body_bytes // 2)

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "over the limit")


def test_unknown_route_and_method_answer_json(client):
    assert_error(client.get("/nothing"), 404, "Not Found")
    assert_error(client.get("/predict"), 405, "Method Not Allowed")


def test_the_server_still_reads_after_bad_requests(client, pngs):
    client.post("/predict", content=b"{", headers={"content-type": "application/json"})
    client.post("/predict", files=files(forged_png(100_000, 100_000)))
    assert client.get("/healthz").status_code == 200
    assert client.post("/predict", files=files(pngs[0])).status_code == 200


# ---------------------------------------------------------------- the API key


@pytest.fixture(scope="module")
def keyed(reader):
    with TestClient(create_app(reader, LIMITS, warmup=False, api_key="s3cret")) as c:
        yield c


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"},
                                     {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}],
                         ids=["none", "wrong-bearer", "wrong-x-api-key", "no-scheme", "basic"])
def test_api_key_missing_or_wrong_gets_401(keyed, pngs, headers):
    for response in (keyed.get("/model", headers=headers),
                     keyed.post("/predict", files=files(pngs[0]), headers=headers)):
        assert_error(response, 401, "no valid API key", "Authorization: Bearer KEY", "X-API-Key: KEY")
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer s3cret"}, {"authorization": "bearer s3cret"},
                                     {"X-API-Key": "s3cret"}], ids=["bearer", "bearer-lower-case", "x-api-key"])
def test_api_key_right_is_served(keyed, pngs, headers):
    assert keyed.get("/model", headers=headers).json()["charset"] == CHARSET
    response = keyed.post("/predict", files=files(pngs[0]), headers=headers)
    assert response.status_code == 200 and len(response.json()["predictions"][0]["text"]) == 3


def test_healthz_needs_no_api_key(keyed):
    assert keyed.get("/healthz").json() == {"status": "ok"}


def test_an_empty_api_key_is_refused(reader):
    with pytest.raises(DataError, match="API key is empty"):
        create_app(reader, LIMITS, warmup=False, api_key=" ")


# ---------------------------------------------------------------- the command line


def test_caocrvfy_serve_passes_its_options_on(run, monkeypatch):
    from caocrvfy import cli
    from caocrvfy.serving import app

    calls = []
    monkeypatch.setattr(app, "run", lambda *args: calls.append(args))
    monkeypatch.setenv("CAOCRVFY_API_KEY", "from-env")
    assert cli.main(["serve", "--model", str(run), "--header-timeout", "2.5", "--body-timeout", "7",
                     "--keep-alive-timeout", "3", "--max-connections", "9", "--max-images", "5"]) == 0
    assert cli.main(["serve", "--model", str(run), "--api-key", "from-flag"]) == 0
    (_, host, port, limits, _, _, env_key), (*_, defaults, _, _, flag_key) = calls
    assert (host, port, env_key, flag_key) == ("127.0.0.1", 8000, "from-env", "from-flag")
    assert limits == Limits(max_images=5, header_timeout=2.5, body_timeout=7, keep_alive_timeout=3, max_connections=9)
    assert defaults == Limits()
    with pytest.raises(SystemExit):  # argparse: "must be at least 1"
        cli.main(["serve", "--model", str(run), "--max-connections", "0"])


# ---------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- server-side batching


def test_micro_batcher_reads_waiting_requests_together():
    started, release, sizes = threading.Event(), threading.Event(), []

    def slow_model(batch):
        sizes.append(len(batch))
        started.set()
        release.wait(5)
        return [int(x[0]) for x in batch]

    batcher = MicroBatcher(slow_model)
    first = batcher.submit([np.array([0])])
    assert started.wait(5)  # the model is busy with the first request ...
    waiting = [batcher.submit([np.array([i]), np.array([10 + i])]) for i in range(1, 4)]
    time.sleep(0.05)
    release.set()  # ... so the three that came meanwhile are read in one call
    assert first.result(5) == [0]
    assert [f.result(5) for f in waiting] == [[1, 11], [2, 12], [3, 13]]
    assert sizes == [1, 6] and (batcher.calls, batcher.images) == (2, 7)
    # queue waited, model took, images in the call: the three waited at least while the first was read
    assert first.timing[2] == 1 and [f.timing[2] for f in waiting] == [6, 6, 6]
    assert all(f.timing[0] >= 0 and f.timing[1] >= 0 for f in [first, *waiting])
    assert min(f.timing[0] for f in waiting) >= 0.05 and first.timing[1] >= 0.05
    batcher.close()
    assert not batcher.thread.is_alive()


def test_micro_batcher_passes_errors_on_and_keeps_going():
    def model(batch):
        if len(batch) == 2:
            raise ValueError("bad batch")
        return list(range(len(batch)))

    batcher = MicroBatcher(model)
    with pytest.raises(ValueError, match="bad batch"):
        batcher.submit([np.zeros(1), np.zeros(1)]).result(5)
    assert batcher.submit([np.zeros(1)]).result(5) == [0]
    batcher.close()


def test_micro_batcher_skips_requests_that_went_away_and_refuses_work_after_close():
    started, release, seen = threading.Event(), threading.Event(), []

    def model(batch):
        seen.append(len(batch))
        started.set()
        release.wait(5)
        return list(range(len(batch)))

    batcher = MicroBatcher(model)
    busy = batcher.submit([np.zeros(1)])
    assert started.wait(5)
    gone = batcher.submit([np.zeros(1), np.zeros(1)])
    assert gone.cancel()  # its client disconnected before the model got to it
    kept = batcher.submit([np.zeros(1)])
    release.set()
    assert busy.result(5) == [0] and kept.result(5) == [0]
    assert seen == [1, 1]  # the cancelled request's two images were never read
    batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit([np.zeros(1)])


def test_batched_and_unbatched_servers_read_the_same(reader, pngs):
    from concurrent.futures import ThreadPoolExecutor

    answers = {}
    for window in (None, 0.0, 20.0):
        with TestClient(create_app(reader, LIMITS, batch_window_ms=window)) as c:
            with ThreadPoolExecutor(6) as pool:
                responses = list(pool.map(lambda data: c.post("/predict", files=files(data)), pngs * 2))
            assert all(r.status_code == 200 for r in responses)
            answers[window] = [r.json()["predictions"][0]["text"] for r in responses]
            batcher = c.app.state.batcher
            assert (batcher is None) == (window is None)
            if batcher is not None:
                assert batcher.images == len(pngs) * 2 and batcher.calls <= len(pngs) * 2
    assert answers[None] == answers[0.0] == answers[20.0]


@pytest.mark.slow
def test_caocrvfy_serve_runs_uvicorn(run, pngs, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "caocrvfy", "serve", "--model", str(run), "--port", str(port), "--max-images", "2",
         "--header-timeout", "1", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "CAOCRVFY_API_KEY": "k3y"},
    )
    key = {"X-API-Key": "k3y"}
    try:
        deadline = time.monotonic() + 120  # importing TensorFlow is slow on a busy 2-core machine
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx2.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /healthz in time"
            time.sleep(0.5)
        response = httpx2.post(f"{base}/predict", files=files(pngs[0]), headers=key, timeout=30)
        assert response.status_code == 200
        assert len(response.json()["predictions"][0]["text"]) == 3
        assert httpx2.post(f"{base}/predict", files=files(*pngs[:3]), headers=key, timeout=30).status_code == 413
        assert httpx2.get(f"{base}/model", headers=key, timeout=10).json()["limits"]["max_images"] == 2
        assert httpx2.get(f"{base}/model", timeout=10).status_code == 401
        with socket.create_connection(("127.0.0.1", port), timeout=10) as half:  # --header-timeout 1
            half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert half.recv(100) == b""
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
    # uvicorn shuts down cleanly, then re-raises the signal so that the exit status shows it.
    assert server.returncode in (0, -signal.SIGTERM), (tmp_path / "serve.log").read_text()


def test_warmup_leaves_no_batch_size_to_trace(run):
    fresh = Predictor.load(run)  # a model this module has not called yet
    create_app(fresh, LIMITS)
    traced = fresh.model.predict_function.experimental_get_tracing_count()
    blank = np.zeros((fresh.height, fresh.width, fresh.channels), np.uint8)
    for size in (4, 7, 13):
        fresh.predict_arrays(np.stack([blank] * size))
    assert fresh.model.predict_function.experimental_get_tracing_count() == traced


def test_a_request_can_hold_readings_to_an_alphabet(client, pngs):
    files = [("file", ("a.png", pngs[0], "image/png")), ("file", ("b.png", pngs[1], "image/png"))]
    free = client.post("/predict", files=files).json()["predictions"]
    held = client.post("/predict?allowed=0-2&length=3", files=files).json()["predictions"]
    assert all(set(p["text"]) <= set("012") and len(p["text"]) == 3 for p in held)
    assert [p["text"] for p in client.post("/predict", files=files).json()["predictions"]] == [p["text"] for p in free]


def test_a_request_can_ask_for_the_answers_of_arithmetic_readings(client, pngs):
    files = [("file", ("a.png", pngs[0], "image/png")), ("file", ("b.png", pngs[1], "image/png"))]
    solved = client.post("/predict?solve=1", files=files).json()["predictions"]
    # The tiny model reads three digits: a bare number, which is its own answer.
    assert [p["answer"] for p in solved] == [str(int(p["text"])) for p in solved]
    assert all("answer" not in p for p in client.post("/predict?solve=0", files=files).json()["predictions"])


@pytest.mark.parametrize("query, message", [("length=x", "whole number"), ("allowed=AB", "not in the model's"),
                                            ("lenght=3", "unknown query parameter"), ("length=4", "exactly 3"),
                                            ("min_length=3&max_length=2", "longer than"),
                                            ("solve=maybe", "solve must be")])
def test_a_bad_constraint_is_a_400_naming_it(client, pngs, query, message):
    response = client.post(f"/predict?{query}", files=[("file", ("a.png", pngs[0], "image/png"))])
    assert response.status_code == 400 and message in response.json()["error"]
