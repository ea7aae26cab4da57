"""Keystrokes per label on the labelling page, with and without the model's suggestions.

    python benchmarks/label_keystrokes.py ../shared/datasets/captcha-images-v2 --screenshot docs/images/label-page.png

50 images of a labelled folder (the test fifth by sorted name, the first 50 of them), renamed
so that no label shows in the name, are labelled on the page of a real `caocrvfy label`
process by headless Chromium (Debian's `chromium`, driven by Playwright). The driver types only
what each suggestion gets wrong: it keeps the longest right prefix of the filled-in text,
presses Backspace for the rest, types the missing characters and Enter. Each saved label is
checked against the truth.

Rows:
- none: no suggestions, every label typed whole (its length + Enter)
- base: the base reader's suggestions for all 50
- base, retrained after 20: the base's for the first 20 (the same 20, least confident first),
  then "train now" (the page's own button, `--train-minutes`), then the new model's for the
  other 30; its keystrokes on those 30 are compared with the base's on the same 30
Labels are compared case-folded when the set's labels are all one case (the page's text is
typed as the truth; a suggestion differing only in case costs the keystrokes to fix it).
Writes benchmarks/results/label-keystrokes-NAME-DATE.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import common
from own_captchas import list_items, split_test


def chromium() -> str:
    found = os.environ.get("CAOCRVFY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        sys.exit("no Chromium found: apt-get install chromium (or set CAOCRVFY_CHROMIUM)")
    return found


def keys_for(filled: str, truth: str) -> tuple[int, int]:
    """(Backspaces, characters to type) that turn `filled` into `truth` from the end."""
    keep = 0
    while keep < min(len(filled), len(truth)) and filled[keep] == truth[keep]:
        keep += 1
    return len(filled) - keep, len(truth) - keep


class Page:
    """A `caocrvfy label` process and a browser tab on it."""

    def __init__(self, browser, folder: Path, train_minutes: float):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(common.module_command("caocrvfy", "label", str(folder), "--port", str(port),
                                                              "--train-minutes", f"{train_minutes:g}"),
                                        env=common.module_env())
        for _ in range(600):
            try:
                urllib.request.urlopen(self.url + "/api/status", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        self.page = browser.new_page(viewport={"width": 1280, "height": 720})
        self.page.goto(self.url)
        self.wait_for_image()

    def wait_for_image(self) -> None:
        self.page.wait_for_function("document.getElementById('file').textContent.includes('.png')", timeout=120_000)

    def shown(self) -> str:
        return self.page.locator("#file").inner_text().split(" · ")[-1]

    def label(self, truth: str) -> int:
        """Types what the suggestion gets wrong; returns the keystrokes, Enter included."""
        before = self.shown()
        back, typed = keys_for(self.page.input_value("#text"), truth)
        for _ in range(back):
            self.page.keyboard.press("Backspace")
        self.page.keyboard.type(truth[len(truth) - typed:])
        self.page.keyboard.press("Enter")
        self.page.wait_for_function(f"document.getElementById('file').textContent.split(' · ').pop() !== {before!r}"
                                    " || !document.getElementById('done').hidden")
        return back + typed + 1

    def train(self) -> str:
        """Presses "train now" and waits for the new model's suggestions; returns its name."""
        self.page.keyboard.press("Alt+t")
        self.page.wait_for_function("document.getElementById('training').textContent.startsWith('training')")
        self.page.wait_for_function("document.getElementById('message').textContent.startsWith('suggestions now by')",
                                    timeout=3_600_000)
        self.wait_for_image()
        return json.loads(urllib.request.urlopen(self.url + "/api/status").read())["model"]

    def close(self) -> None:
        self.page.close()
        self.process.send_signal(signal.SIGINT)
        self.process.wait(60)


def fresh_folder(root: Path, items: list[tuple[str, str]], dest: Path) -> dict[str, str]:
    """The items' images as img000.png ... in `dest`, unlabelled; returns name -> truth."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    truth = {}
    for i, (name, label) in enumerate(items):
        new = f"img{i:03d}{Path(name).suffix.lower()}"
        shutil.copy(root / name, dest / new)
        truth[new] = label
    return truth


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="labelled folder")
    p.add_argument("--images", type=int, default=50, help="images to label (default 50)")
    p.add_argument("--retrain-after", type=int, default=20, help="labels before 'train now' (default 20)")
    p.add_argument("--train-minutes", type=float, default=10, help="the page's --train-minutes (default 10)")
    p.add_argument("--screenshot", type=Path, help="save a screenshot of the page during the retraining")
    p.add_argument("--work", type=Path, help="working folder (default: a new temp folder)")
    common.add_results_option(p)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    root = args.data.resolve()
    work = (args.work or Path(tempfile.mkdtemp(prefix="caocrvfy-keys-"))).resolve()
    _, test = split_test(list_items(root))
    items = test[: args.images]
    results = {"images": len(items), "retrain_after": args.retrain_after, "train_minutes": args.train_minutes}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])

        truth = fresh_folder(root, items, work / "base")
        page = Page(browser, work / "base", args.train_minutes)
        base_keys = {}
        for _ in items:
            name = page.shown()
            base_keys[name] = page.label(truth[name])
        with (work / "base" / "labels.csv").open(newline="") as fh:
            saved = dict(row[:2] for row in list(csv.reader(fh))[1:])
        assert saved == truth, "the page saved labels other than the ones typed"
        page.close()

        truth = fresh_folder(root, items, work / "retrained")
        page = Page(browser, work / "retrained", args.train_minutes)
        first, later = {}, {}
        for _ in range(args.retrain_after):
            name = page.shown()
            first[name] = page.label(truth[name])
        if args.screenshot:
            page.page.keyboard.press("Alt+t")
            page.page.wait_for_function("/epoch [1-9]/.test(document.getElementById('training').textContent)",
                                        timeout=3_600_000)
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.page.screenshot(path=str(args.screenshot))
            print(f"screenshot: {args.screenshot}")
            page.page.wait_for_function(
                "document.getElementById('message').textContent.startsWith('suggestions now by')", timeout=3_600_000)
            page.wait_for_image()
            model = json.loads(urllib.request.urlopen(page.url + "/api/status").read())["model"]
        else:
            model = page.train()
        for _ in range(len(items) - args.retrain_after):
            name = page.shown()
            later[name] = page.label(truth[name])
        page.close()
        browser.close()

    def per_label(keys: dict, names) -> float:
        names = list(names)
        return sum(keys[n] for n in names) / len(names)

    none = {n: len(t) + 1 for n, t in truth.items()}
    results["rows"] = [
        {"row": "none", "keystrokes_per_label": per_label(none, truth),
         "on_last": per_label(none, later)},
        {"row": "base", "keystrokes_per_label": per_label(base_keys, truth), "on_last": per_label(base_keys, later),
         "right_suggestions": sum(k == 1 for k in base_keys.values())},
        {"row": f"base, retrained after {args.retrain_after}", "model": model,
         "keystrokes_per_label": per_label(first | later, truth), "on_last": per_label(later, later),
         "right_suggestions": sum(k == 1 for k in (first | later).values())},
    ]
    for row in results["rows"]:
        print(f"{row['row']:28s} {row['keystrokes_per_label']:.2f} keystrokes per label; on the last "
              f"{len(later)}: {row['on_last']:.2f}" + (f"; suggestions right {row['right_suggestions']} of "
                                                       f"{len(items)}" if "right_suggestions" in row else ""))
    common.write_result(f"label-keystrokes-{common.slug(root.name)}", results, args.results_dir, started)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
