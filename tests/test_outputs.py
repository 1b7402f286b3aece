import json

import matplotlib.image
import numpy as np
import pytest

from hf_vit_reduction.training import outputs
from hf_vit_reduction.training.history import RunHistory


def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    outputs.write_json(path, {"top1": 1.0})
    with pytest.raises(TypeError):
        outputs.write_json(path, {"top1": object()})
    assert json.loads(path.read_text()) == {"top1": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's default


def test_plot_and_history_files(tmp_path):
    history = RunHistory()
    for epoch in range(3):
        history.add({"epoch": epoch, "top1": 10.0 * epoch, "top5": 50.0, "loss": 1.0, "train_loss": 2.0})
    outputs.plot_history(tmp_path / "curves.png", history, "test")
    outputs.write_history(tmp_path / "history.jsonl", history)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(tmp_path / "curves.png")[..., :3]
    assert pixels.std() > 0.05  # not a blank canvas
    # Matplotlib's first two line colours and the red peak marker; the loss panel left, the top-1 panel right.
    half = pixels.shape[1] // 2
    rows = {
        (colour, side): np.nonzero((np.abs(pixels[:, columns] - rgb).max(-1) < 0.05).any(1))[0]
        for colour, rgb in (
            ("C0", (0x1F / 255, 0x77 / 255, 0xB4 / 255)),
            ("C1", (1, 0x7F / 255, 0x0E / 255)),
            ("red", (1, 0, 0)),
        )
        for side, columns in (("loss", slice(0, half)), ("top-1", slice(half, None)))
    }
    assert all(len(rows[key]) for key in (("C0", "loss"), ("C1", "loss"), ("C0", "top-1"), ("red", "top-1")))
    # The train loss (2.0, first colour) is drawn above the validation loss (1.0): higher up means a smaller row.
    assert np.median(rows["C0", "loss"]) < np.median(rows["C1", "loss"])
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["top1"] for line in lines] == [0.0, 10.0, 20.0]


def test_public_arguments_drop_secrets():
    assert outputs.public_arguments({"hub_token": "hf_secret", "lr": 0.1, "HUB_TOKEN_FILE": "x"}) == {"lr": 0.1}
