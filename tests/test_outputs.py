import errno
import json
import os
import shutil

import matplotlib.image
import numpy as np
import pytest

from hf_vit_reduction.training import outputs
from hf_vit_reduction.training.arguments import parse_args
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


def test_the_run_record_drops_secrets_and_keeps_each_recipe_value_with_its_source():
    config = parse_args(["--hub_token", "hf_secret", "--lr", "0.1"])
    record = config.run_record(num_processes=2)
    assert "hf_secret" not in json.dumps(record) and "hub_token" not in record
    assert (record["lr"], record["num_processes"]) == (0.1, 2)
    assert record["recipe"]["lr"] == {"value": 0.1, "source": "command line"}
    assert record["recipe"]["epochs"] == {"value": 40, "source": "digits recipe"}


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_keeps_the_previous_file_and_says_what_was_needed(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    outputs.write_json(path, {"top1": 1.0})
    text = json.dumps({"top1": 2.0, "note": "x" * 1500}, indent=2) + "\n"
    monkeypatch.setattr(outputs.Path, "write_bytes", enospc)
    with pytest.raises(outputs.DiskFullError) as error:
        outputs.write_json(path, {"top1": 2.0, "note": "x" * 1500})
    free = shutil.disk_usage(tmp_path).free
    assert str(error.value) == (
        f"no space left in {tmp_path} for results.json: it needs {len(text) / 1000:.1f} KB, "
        f"{outputs.human_size(free)} is free there"
    )
    assert json.loads(path.read_text()) == {"top1": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_what_counts_as_a_full_disk(tmp_path, monkeypatch):
    assert outputs.is_no_space(OSError(errno.ENOSPC, "x"), tmp_path)
    assert outputs.is_no_space(OSError(errno.EDQUOT, "x"), tmp_path)
    assert not outputs.is_no_space(OSError(errno.EACCES, "x"), tmp_path)
    # safetensors words it; torch.save's zip writer does not, so the disk is asked.
    assert outputs.is_no_space(RuntimeError("I/O error: No space left on device (os error 28)"), tmp_path)
    assert not outputs.is_no_space(RuntimeError("unexpected pos 576 vs 534"), tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage._replace(free=4096))
    assert outputs.is_no_space(RuntimeError("unexpected pos 576 vs 534"), tmp_path)


@pytest.mark.parametrize(
    ("count", "text"), [(0, "0 bytes"), (999, "999 bytes"), (1500, "1.5 KB"), (2_345_678, "2.3 MB")]
)
def test_human_sizes(count, text):
    assert outputs.human_size(count) == text
