"""`caocrvfy label` in a real browser: headless Chromium (Debian's `chromium`, launched by
Playwright with the system browser's path) drives the page of a `caocrvfy label` process.

Skipped when Playwright or Chromium is missing, unless CAOCRVFY_REQUIRE_BROWSER=1 (set by
.ci/run, which installs both): there a missing browser fails the test.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from caocrvfy.data.folders import read_folder

pytestmark = pytest.mark.slow


def chromium() -> str | None:
    return os.environ.get("CAOCRVFY_CHROMIUM") or next(
        (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("CAOCRVFY_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            raise
        pytest.skip("Playwright is not installed (pip install playwright)")
    path = chromium()
    if path is None:
        if required:
            pytest.fail("no Chromium found: apt-get install chromium, or set CAOCRVFY_CHROMIUM")
        pytest.skip("no Chromium found (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def start(folder: Path, model: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "caocrvfy", "label", str(folder), "--model", str(model),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"caocrvfy label exited {process.returncode}: {process.stdout.read()}")
        try:
            get(url + "/api/status")
            return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("caocrvfy label did not answer within 120 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def folder(site_folder) -> Path:
    return site_folder


def shown(page) -> str:
    """The file name the page shows ('3 of 6 · cap04.png')."""
    return page.locator("#file").inner_text().split(" · ")[-1]


def answer(page, text: str) -> None:
    before = shown(page)
    page.keyboard.press("Control+A")
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.getElementById('file').textContent.split(' · ').pop() !== {before!r}")


def labels_csv(folder: Path) -> list[list[str]]:
    with (folder / "labels.csv").open(newline="") as fh:
        return list(csv.reader(fh))[1:]


def test_labelling_with_the_keyboard_survives_a_reload_and_a_kill(browser, folder, trained_run):
    process, url = start(folder, trained_run)
    try:
        order = [item["file"] for item in get(url + "/api/queue")["items"]]
        assert len(order) == 6
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.getElementById('file').textContent.includes('.png')")
        assert page.evaluate("getComputedStyle(document.getElementById('captcha')).imageRendering") == "pixelated"
        suggestion = page.input_value("#text")
        assert len(suggestion) == 3  # the model's reading is filled in
        for i, text in enumerate(["101", "202", "303"]):
            assert shown(page) == order[i]  # least confident first
            answer(page, text)
        assert labels_csv(folder) == [[order[0], "101"], [order[1], "202"], [order[2], "303"]]

        page.reload()  # resumes at the first image not labelled
        page.wait_for_function("document.getElementById('file').textContent.includes('.png')")
        assert shown(page) == order[3]
        page.keyboard.press("Tab")  # skip
        assert shown(page) == order[4]
        page.keyboard.press("Shift+Tab")  # back
        assert shown(page) == order[3]
        page.keyboard.press("Control+z")  # undo the last answer: 303 on order[2]
        page.wait_for_function(f"document.getElementById('file').textContent.endsWith({order[2]!r})")
        assert labels_csv(folder) == [[order[0], "101"], [order[1], "202"]]
        answer(page, "333")
        page.keyboard.press("Control+u")  # order[3] is unreadable
        page.wait_for_function(f"document.getElementById('file').textContent.endsWith({order[4]!r})")
        assert (folder / ".caocrvfy" / "unreadable.txt").read_text() == f"{order[3]}\n"
        assert "3 labelled" in page.locator("#progress").inner_text()

        status = page.request.get(url + "/image/..%2Flabels.csv").status
        assert status == 404
        assert page.request.get(url + "/image/%2E%2E/%2E%2E/etc/passwd").status == 404
        assert page.request.get(url + f"/image/{order[0]}").status == 200

        # Killed while an answer is on its way: labels.csv stays whole, with or without it.
        page.keyboard.press("Control+A")
        page.keyboard.type("404")
        page.keyboard.press("Enter")
        process.kill()
        process.wait(10)
        kept = labels_csv(folder)
        assert kept[:3] == [[order[0], "101"], [order[1], "202"], [order[2], "333"]]
        assert kept[3:] in ([], [[order[4], "404"]])
        assert len(read_folder(folder).paths) == len(kept)
        page.close()
    finally:
        stop(process)
