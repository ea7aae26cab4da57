"""`caocrvfy label`: the folder's labelling state, the page's API and `--print-next`, on a tiny
folder of generated captchas read by the session's tiny trained model. The page in a real
browser is tests/test_label_browser.py."""

from __future__ import annotations

import csv
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from caocrvfy import cli  # noqa: E402
from caocrvfy.data.folders import read_folder  # noqa: E402
from caocrvfy.errors import DataError  # noqa: E402
from caocrvfy.labelling import jobs  # noqa: E402
from caocrvfy.labelling.page import MAX_BODY_BYTES, Labeller, create_app  # noqa: E402
from caocrvfy.labelling.store import STATE_DIR, LabelError, LabelStore, check_label  # noqa: E402
from caocrvfy.labelling.suggestions import latest_model, runs_of  # noqa: E402
from caocrvfy.locations import base_model  # noqa: E402

pytestmark = pytest.mark.eager_steps


@pytest.fixture
def folder(site_folder) -> Path:
    return site_folder


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize("text, problem", [("", "empty"), ("   ", "empty"), ("a b", "spaces"), ("ab\x07", "control"),
                                           ("x" * 33, "more than 32"), ("12A", "outside")])
def test_check_label_refuses_with_a_sentence(text, problem):
    with pytest.raises(LabelError, match=problem):
        check_label(text, charset="0123456789")


def test_check_label_keeps_the_characters():
    assert check_label("  a,B\"9 ") == 'a,B"9'  # CSV quoting carries commas and quotes


def test_answers_are_in_labels_csv_at_once_and_train_reads_them(folder):
    store = LabelStore(folder)
    assert store.skipped == [("notes.txt", "not an image file (by its suffix)")]
    store.save("cap01.png", "123", suggestion="128", model="m")
    store.save("cap03.png", "456")
    assert rows(folder / "labels.csv") == [["file", "label"], ["cap01.png", "123"], ["cap03.png", "456"]]
    found = read_folder(folder)
    assert [p.name for p in found.paths] == ["cap01.png", "cap03.png"] and found.labels == ["123", "456"]
    assert store.progress() | {"per_minute": None} == {"labelled": 2, "unreadable": 0, "left": 4, "total": 6,
                                                       "per_minute": None}


def test_undo_puts_back_what_each_answer_replaced(folder):
    store = LabelStore(folder)
    store.save("cap00.png", "111")
    store.save("cap00.png", "112")  # a correction after going back
    store.mark_unreadable("cap02.png")
    assert "cap02.png" not in store.unlabelled()
    assert store.undo().file == "cap02.png"
    assert "cap02.png" in store.unlabelled()
    assert store.undo().label == "111"
    assert read_folder(folder).labels == ["111"]
    assert store.undo().label is None
    assert store.undo() is None
    assert rows(folder / "labels.csv") == [["file", "label"]]


def test_a_restart_resumes_where_the_person_stopped(folder):
    store = LabelStore(folder)
    store.save("cap00.png", "321")
    store.mark_unreadable("cap04.png")
    again = LabelStore(folder)
    assert again.labelled() == {"cap00.png": "321"}
    assert again.unreadable == {"cap04.png"}
    assert again.unlabelled() == ["cap01.png", "cap02.png", "cap03.png", "cap05.png"]


def test_rows_for_other_files_are_kept(folder):
    (folder / "labels.csv").write_text("file,label\nold/elsewhere.png,999\n")
    LabelStore(folder).save("cap00.png", "123")
    assert rows(folder / "labels.csv")[1:] == [["old/elsewhere.png", "999"], ["cap00.png", "123"]]


def test_a_crash_while_writing_leaves_the_last_whole_file(folder, monkeypatch):
    store = LabelStore(folder)
    store.save("cap00.png", "123")
    before = (folder / "labels.csv").read_text()

    def killed(src, dst):
        raise KeyboardInterrupt  # as if the server died between writing and renaming

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save("cap01.png", "456")
    monkeypatch.undo()
    assert (folder / "labels.csv").read_text() == before
    assert LabelStore(folder).labelled() == {"cap00.png": "123"}


def test_concurrent_answers_are_all_kept(tmp_path):
    for i in range(40):
        (tmp_path / f"{i:02d}.png").write_bytes(b"")  # listed by name; never decoded here
    store = LabelStore(tmp_path)
    threads = [threading.Thread(target=store.save, args=(f"{i:02d}.png", str(i))) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {name: label for name, label in rows(tmp_path / "labels.csv")[1:]} == {f"{i:02d}.png": str(i)
                                                                                 for i in range(40)}


def test_the_curve_scores_each_first_suggestion_against_the_label_kept(tmp_path):
    for i in range(12):
        (tmp_path / f"{i:02d}.png").write_bytes(b"")
    store = LabelStore(tmp_path)
    for i in range(12):
        store.save(f"{i:02d}.png", "ab", suggestion="xx" if i % 3 == 0 or i == 11 else "ab", model="first" if i < 10 else "second")
    store.save("00.png", "xx", suggestion="ab")  # corrected later: the first suggestion, "xx", is now right
    points = store.curve(bucket=10)
    assert [(p["labels"], p["count"], p["model"]) for p in points] == [(10, 10, "first"), (12, 2, "second")]
    assert points[0]["accuracy"] == pytest.approx(7 / 10)  # 0 (now), 1, 2, 4, 5, 7, 8 right; 3, 6, 9 wrong
    assert points[1]["accuracy"] == pytest.approx(1 / 2)


def test_a_folder_without_images_is_one_clear_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        LabelStore(tmp_path)


@pytest.fixture
def client(folder, trained_run):
    labeller = Labeller(LabelStore(folder, charset="0123456789"), trained_run)
    with TestClient(create_app(labeller)) as c:
        yield c, labeller


def test_the_queue_is_least_confident_first_with_suggestions(client):
    c, labeller = client
    data = c.get("/api/queue").json()
    confidences = [item["confidence"] for item in data["items"]]
    assert len(confidences) == 6 and confidences == sorted(confidences)
    assert all(len(item["suggestion"]) == 3 for item in data["items"])  # the softmax head reads 3 characters
    assert {"file": "notes.txt", "reason": "not an image file (by its suffix)"} in data["skipped"]
    first = data["items"][0]["file"]
    answer = c.post("/api/label", json={"file": first, "label": "042"}).json()
    assert answer["progress"]["labelled"] == 1
    assert first not in [item["file"] for item in c.get("/api/queue").json()["items"]]
    logged = rows(labeller.store.root / STATE_DIR / "answers.csv")
    assert logged[1][1:4] == [first, "042", data["items"][0]["suggestion"]]


@pytest.mark.parametrize("path", ["/image/../labels.csv", "/image/..%2Fnotes.txt", "/image/notes.txt",
                                  "/image/%2Fetc%2Fpasswd", "/image/..%2F..%2F..%2Fetc%2Fpasswd",
                                  "/image/.caocrvfy/answers.csv", "/image/sub/cap00.png", "/static/../cli.py"])
def test_nothing_but_the_folders_images_is_served(client, path):
    c, _ = client
    c.post("/api/label", json={"file": "cap00.png", "label": "123"})  # so that labels.csv and answers.csv exist
    assert c.get(path).status_code == 404


def test_an_image_is_served_as_it_is(client, folder):
    c, _ = client
    response = c.get("/image/cap02.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (folder / "cap02.png").read_bytes()
    assert "pixelated" in c.get("/static/label.css").text
    assert 'src="/static/label.js"' in c.get("/").text


@pytest.mark.parametrize("body, status, message", [
    ({"file": "cap00.png", "label": "12a"}, 400, "outside the character set"),
    ({"file": "cap00.png", "label": ""}, 400, "empty"),
    ({"file": "../x.png", "label": "123"}, 400, "is not an image of"),
    ({"file": "cap00.png", "label": "1" * 1000}, 422, None),
    ({"file": "cap00.png", "label": "1" * MAX_BODY_BYTES}, 413, "over the limit"),
])
def test_bad_answers_get_one_sentence_and_change_nothing(client, folder, body, status, message):
    c, _ = client
    response = c.post("/api/label", json=body)
    assert response.status_code == status
    if message:
        assert message in response.json()["error"]
    assert not (folder / "labels.csv").exists()


def test_undo_over_the_api_returns_the_image_to_show(client):
    c, _ = client
    c.post("/api/label", json={"file": "cap03.png", "label": "555"})
    undone = c.post("/api/undo", json={}).json()
    assert {k: undone[k] for k in ("file", "label", "unreadable")} == {"file": "cap03.png", "label": None,
                                                                      "unreadable": False}
    assert len(undone["suggestion"]) == 3
    assert c.post("/api/undo", json={}).json()["file"] is None


def test_train_now_needs_enough_labels(client):
    c, _ = client
    response = c.post("/api/train", json={})
    assert response.status_code == 400 and f"at least {jobs.MIN_TRAIN_LABELS}" in response.json()["error"]


def test_the_training_command_is_the_users_own(folder, trained_run):
    store = LabelStore(folder, charset="0-9")
    command = jobs.train_command(store, trained_run, 2.5, folder / "out")
    assert command[1:] == ["-m", "caocrvfy.train", "--data", str(folder), "--init", str(trained_run),
                           "--time-limit", "2.5", "--out", str(folder / "out"), "--unlabelled", str(folder),
                           "--charset", "0-9"]


def test_print_next_is_the_pages_queue(folder, trained_run, capsys):
    assert cli.main(["label", str(folder), "--model", str(trained_run), "--print-next", "4"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 4
    confidences = [float(line.split("\t")[2]) for line in lines]
    assert confidences == sorted(confidences)
    LabelStore(folder).save(lines[0].split("\t")[0], "000")
    assert cli.main(["label", str(folder), "--model", str(trained_run), "--print-next", "9"]) == 0
    assert len(capsys.readouterr().out.strip().split("\n")) == 5


def test_the_default_model_is_the_last_one_trained_here(folder, trained_run):
    assert latest_model(folder) == base_model()
    run = runs_of(folder) / "20261202-120000"
    run.mkdir(parents=True)
    shutil.copy(trained_run / "model.keras", run / "model.keras")
    assert latest_model(folder) == base_model()  # no metrics.json: the training has not ended
    (run / "metrics.json").write_text("{}")
    assert latest_model(folder) == run


@pytest.mark.slow
def test_train_now_trains_in_the_background_and_its_model_suggests_next(tmp_path, tiny_spec, trained_run):
    from caocrvfy.data.synthetic import generate

    made = generate(tmp_path / "made", 14, tiny_spec, workers=1)
    folder = tmp_path / "site"
    folder.mkdir()
    truth = {}
    for i, path in enumerate(sorted(made.glob("*.png"))):
        shutil.copy(path, folder / f"cap{i:02d}.png")
        truth[f"cap{i:02d}.png"] = path.name.split("_")[0]
    labeller = Labeller(LabelStore(folder), trained_run, train_minutes=1.0)
    for name in sorted(truth)[:12]:
        labeller.store.save(name, truth[name])
    started = labeller.job.start(labeller.suggester.predictor.path)
    assert started["state"] == "running"
    with pytest.raises(LabelError, match="already running"):
        labeller.job.start(labeller.suggester.predictor.path)
    deadline = time.time() + 600
    while labeller.job.status()["state"] == "running" and time.time() < deadline:
        time.sleep(1)
    status = labeller.job.status()
    assert status["state"] == "finished", status["message"]
    run = runs_of(folder) / status["run"]
    assert labeller.suggester.name == run.name  # the new model suggests now
    assert latest_model(folder) == run
    assert {item["file"] for item in labeller.queue()} == {"cap12.png", "cap13.png"}
