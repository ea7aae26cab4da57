"""Two training processes on this machine train one model together (MultiWorkerMirroredStrategy)."""

import json
import os
import socket
import subprocess
import sys

import keras
import pytest

from caocrvfy.data.synthetic import generate
from conftest import TINY_MODEL, TINY_SPEC


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute needs the TensorFlow backend")
def test_two_workers_train_together_and_the_chief_saves(tmp_path):
    # 24 captchas leave 1 for validation: one worker's share of that batch is empty.
    data = generate(tmp_path / "data", 24, TINY_SPEC, workers=1)
    out = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    model_flags = ["--filters", ",".join(map(str, TINY_MODEL["filters"])), "--dense-units",
                   str(TINY_MODEL["dense_units"]), "--rnn-units", str(TINY_MODEL["rnn_units"])]
    cmd = [sys.executable, "-m", "caocrvfy.train", "--data", str(data), "--init", "none", "--height", "24", "--epochs", "2",
           "--batch-size", "8", "--warmup-epochs", "1", "--augment", "off", *model_flags, "--out", str(out)]
    workers = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   CUDA_VISIBLE_DEVICES="")
        workers.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for worker in workers:
        try:
            logs.append(worker.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            pytest.fail("the two workers did not finish within 5 minutes")
    # Both logs: when one worker dies the other only reports lost heartbeats.
    report = "\n".join(f"--- worker {i} (exit {w.returncode}) ---\n{log[-3000:]}"
                       for i, (w, log) in enumerate(zip(workers, logs)))
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, f"a worker failed:\n{report}"
        assert "multi-worker training: worker" in log and "2 replicas" in log
        assert "epoch   2/2" in log
    assert "(chief: writes the run folder)" in logs[0]
    model = keras.models.load_model(out / "model.keras")
    assert model.output_shape[-1] == len(TINY_SPEC.charset) + 1  # the CTC head's classes and blank
    assert json.loads((out / "config.json").read_text())["run"]["train_images"] > 0
    assert not list(out.glob(".worker-*"))  # the other worker's scratch copy is gone
