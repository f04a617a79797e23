"""A time budget plans the run and stops it; a run stopped by SIGTERM still leaves an entry
that a real ``capserve serve`` loads and answers with."""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from capserve.training.cli import duration
from capserve.training.train import cosine
from tests.conftest import REPO
from tests.servers import start_server
from tests.training_helpers import write_folder


@pytest.mark.parametrize("text, seconds", [("15m", 900), ("90s", 90), ("1h30m", 5400), ("2", 120), ("1m30s", 90),
                                           ("0.5h", 1800)])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "15 minutes", "0", "-5m", "m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_the_schedule_decays_over_the_planned_steps():
    assert cosine(0, 100, 1.0) == pytest.approx(1.0)
    assert cosine(50, 100, 1.0) == pytest.approx(0.51)
    assert cosine(100, 100, 1.0) == pytest.approx(0.02)
    assert cosine(500, 100, 1.0) == pytest.approx(0.02)  # past the plan it stays at the floor
    # stretching the plan slows the decay: the same step has a higher rate
    assert cosine(50, 400, 1.0) > cosine(50, 100, 1.0)


@pytest.mark.train
def test_a_deadline_stops_training_mid_epoch_with_the_best_weights(tmp_path):
    from capserve.core.chain import InputShape
    from capserve.training import datasets
    from capserve.training.models import ModelConfig
    from capserve.training.train import TrainConfig, fit

    folder = tmp_path / "data"
    write_folder(folder, 300, seed=1, charset="abc")
    shape = InputShape(64, 16, 1)
    data, charset = datasets.load_folder(folder, shape, datasets.default_preprocess(1))
    train, val = datasets.split(data, 0.2, seed=0)
    config = ModelConfig(height=16, width=64, channels=1, charset_size=len(charset), length=3,
                         filters=(8, 16, 16, 24), units=32)
    result = fit(config, charset, train, val,
                 TrainConfig(epochs=40, batch_size=8, augment={}, progress="none", deadline=time.monotonic()))
    # the deadline had passed: one batch, then validation of what there is, then stop
    assert result.stopped == "budget"
    assert len(result.history) == 1 and result.best_epoch == 1
    assert len(result.predictions) == len(val)


@pytest.mark.train
@pytest.mark.slow
def test_sigterm_after_the_first_epoch_leaves_an_entry_that_serves(tmp_path):
    data, out = tmp_path / "data", tmp_path / "registry"
    write_folder(data, 400, seed=3, charset="abc")
    argv = [sys.executable, "-m", "capserve.server.cli", "train", "--site", "stopped", "--data", str(data),
            "--out", str(out), "--from-scratch", "--epochs", "200", "--batch-size", "16", "--filters", "8,16,16,24", "--units", "32",
            "--augment", "none", "--progress", "epoch"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("epoch 2/"):
                proc.send_signal(signal.SIGTERM)
                break
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(seen) + stderr
    assert proc.returncode == 0, log
    assert "SIGTERM: stopping" in log
    written = json.loads(stdout.strip().splitlines()[-1])
    folder = out / "stopped" / "1"
    assert written["entry"] == str(folder)

    from capserve.core.spec import load_spec

    training = load_spec(folder / "model.yaml").training
    assert training["stopped"] == "signal" and training["stopped_early"] is True
    assert 2 <= training["epochs"] < 200

    from capserve.core.model import Model
    from capserve.plugins import manager

    images = sorted(data.iterdir())[:5]
    expected = [Model(load_spec(folder / "model.yaml"), manager.catalog()).recognize(p.read_bytes()).text for p in images]
    with start_server(out) as base:
        answers = [httpx.get(f"{base}/recognize/stopped", params={"base64Image": base64.b64encode(p.read_bytes()).decode()})
                   for p in images]
    assert [r.status_code for r in answers] == [200] * 5
    assert [r.json()["text"] for r in answers] == expected
