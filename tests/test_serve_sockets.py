"""Stalled and hostile clients against a real uvicorn server on 127.0.0.1, over raw sockets.

Each test starts the server in a thread with timeouts of 1 s; waits are bounded by
`TIMEOUT + SLACK` (4 s), a generous upper bound for a busy 2-core machine that is still below
uvicorn's own keep-alive default of 5 s; nothing asserts how fast the server was.
"""

import contextlib
import json
import socket
import threading
import time

import keras
import pytest

# Real servers on sockets with 1 s timeouts: timed, so outside the deterministic default run.
pytestmark = pytest.mark.slow

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import uvicorn  # noqa: E402

from caocrvfy.inference import Predictor  # noqa: E402
from caocrvfy.model_enhanced import build_model  # noqa: E402
from caocrvfy.serving.app import create_app, server_config  # noqa: E402
from caocrvfy.serving.requests import Limits  # noqa: E402

TIMEOUT = 1.0
SLACK = 3.0
LONG = 60.0  # for the timeouts a test is not about, so that only the one under test can close
HALF_HEADER = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-"


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> Predictor:
    """An untrained tiny softmax model, as in test_serve.py (none of these tests reads an image)."""
    folder = tmp_path_factory.mktemp("sockets-run")
    keras.utils.set_random_seed(0)
    build_model(charset="0123456789", max_length=3, height=24, width=64, head="softmax",
                filters=(8, 8, 8, 8), dense_units=8, rnn_units=8).save(folder / "model.keras")
    resolved = {"charset": "0123456789", "max_length": 3, "head": "softmax", "input_shape": [24, 64, 1]}
    (folder / "config.json").write_text(json.dumps({"ignore_case": False, "resolved": resolved}))
    return Predictor.load(folder)


@contextlib.contextmanager
def serving(reader: Predictor, api_key: str | None = None, **limits):
    """The port of `caocrvfy serve`'s uvicorn server (`server_config`), run in a thread on a
    socket bound here, so that no other process can take the port in between."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    app = create_app(reader, Limits(**limits), warmup=False, api_key=api_key)
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, Limits(**limits), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """What the server sent before it closed `sock`, or None when it is still open at `deadline`."""
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return None


def exchange(sock: socket.socket, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """Sends one keep-alive request and reads its answer: (status, body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int({k.lower(): v for k, v in fields.items()}[b"content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), rest


def test_half_sent_headers_are_dropped(reader):
    with serving(reader, header_timeout=TIMEOUT, body_timeout=LONG, keep_alive_timeout=LONG) as port:
        stalled = [connect(port) for _ in range(50)]
        for sock in stalled:
            sock.sendall(HALF_HEADER)
        silent = [connect(port) for _ in range(5)]  # connected, sent nothing
        deadline = time.monotonic() + TIMEOUT + SLACK
        answers = [until_closed(sock, deadline) for sock in stalled + silent]
        assert answers == [b""] * 55  # every one closed, none answered
        with connect(port) as sock:  # the server goes on
            assert exchange(sock, "GET", "/healthz") == (200, b'{"status":"ok"}')
        for sock in stalled + silent:
            sock.close()


def test_a_half_sent_second_request_is_dropped(reader):
    # The keep-alive timer stops at the first byte of the next request; the header timer takes over.
    with serving(reader, header_timeout=TIMEOUT, body_timeout=LONG, keep_alive_timeout=LONG) as port:
        with connect(port) as sock:
            assert exchange(sock, "GET", "/healthz")[0] == 200
            sock.sendall(HALF_HEADER)
            assert until_closed(sock, time.monotonic() + TIMEOUT + SLACK) == b""


def test_a_stalled_body_gets_408_and_is_closed(reader):
    with serving(reader, body_timeout=TIMEOUT, header_timeout=LONG, keep_alive_timeout=LONG) as port:
        with connect(port) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b'{"images":')  # 10 bytes
            answer = until_closed(sock, time.monotonic() + TIMEOUT + SLACK)
    assert answer is not None, "the stalled body's connection is still open"
    assert answer.startswith(b"HTTP/1.1 408 ")
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert "not complete 1 s after its header" in error and "10 of 1000 bytes" in error


def test_connections_beyond_the_limit_get_503(reader):
    with serving(reader, max_connections=3, header_timeout=LONG, keep_alive_timeout=LONG) as port:
        held = [connect(port) for _ in range(3)]
        for sock in held:  # three keep-alive clients, each served once and staying
            assert exchange(sock, "GET", "/healthz")[0] == 200
        with connect(port) as extra:
            status, body = exchange(extra, "GET", "/healthz")
            assert (status, body) == (503, b"Service Unavailable")
            assert until_closed(extra, time.monotonic() + SLACK) == b""
        held.pop().close()  # once the server has seen one go, a new client is served
        deadline = time.monotonic() + SLACK
        while True:
            with connect(port) as sock:
                if exchange(sock, "GET", "/healthz")[0] == 200:
                    break
            assert time.monotonic() < deadline, "no connection was served after one of three closed"
            time.sleep(0.05)
        for sock in held:
            sock.close()


def test_an_idle_keep_alive_connection_is_closed(reader):
    with serving(reader, keep_alive_timeout=TIMEOUT, header_timeout=LONG, body_timeout=LONG) as port:
        with connect(port) as sock:
            assert exchange(sock, "GET", "/healthz")[0] == 200
            assert exchange(sock, "GET", "/healthz")[0] == 200  # kept alive between requests
            assert until_closed(sock, time.monotonic() + TIMEOUT + SLACK) == b""


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
                         ids=["arrays", "objects"])
def test_json_nested_100000_deep_gets_400(reader, body):
    with serving(reader) as port:
        with connect(port) as sock:
            status, answer = exchange(sock, "POST", "/predict", body, {"Content-Type": "application/json"})
            assert status == 400 and "nested too deeply" in json.loads(answer)["error"]
            assert exchange(sock, "GET", "/healthz")[0] == 200  # same connection, still served


def test_a_request_without_the_api_key_is_refused_before_its_body(reader):
    # The body never comes: a 401 (rather than a 408 after the body timeout) shows it was not awaited.
    with serving(reader, api_key="s3cret", body_timeout=LONG) as port:
        with connect(port) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
            answer = until_closed(sock, time.monotonic() + SLACK)
        assert answer is not None and answer.startswith(b"HTTP/1.1 401 ")
        with connect(port) as sock:
            assert exchange(sock, "GET", "/model", headers={"X-API-Key": "s3cret"})[0] == 200
            assert exchange(sock, "GET", "/healthz")[0] == 200
