""".ci/gpu-check --device cpu: the GPU check's smoke run (tiny sizes, eager), so that the script cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from script_runs import HANG_S, ROOT, environment

from hf_vit_reduction.cli import COMMANDS


def gpu_check(out: Path, work: Path, *argv: str) -> subprocess.CompletedProcess:
    """`.ci/gpu-check --device cpu` (the smoke run) writing to `out`, its scratch in `work`."""
    return subprocess.run(
        [str(ROOT / ".ci" / "gpu-check"), "--device", "cpu", "--out", str(out), "--work", str(work), *argv],
        cwd=ROOT,
        # The script runs `python3` as a GPU machine has it: here, this environment's (not whatever the PATH has).
        env=environment(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"),
        capture_output=True,
        text=True,
        timeout=HANG_S,
        check=False,
    )


@pytest.mark.slow  # about a minute and a half on 2 cores
def test_the_gpu_check_runs_every_step_at_tiny_sizes_and_writes_its_report(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    result = gpu_check(out, work)
    report = json.loads((out / "gpu-check.json").read_text())
    steps = report["steps"]
    for name in ("environment", "benchmark", "photos", "loop", "train"):
        assert steps[name]["status"] == "passed", (name, steps[name], result.stderr[-2000:])
    if "evaluate" in COMMANDS:
        assert steps["evaluate"]["status"] == "passed", steps["evaluate"]
        assert result.returncode == 0
    else:  # the evaluate command is built on its own branch: until then the step fails, and says why
        assert steps["evaluate"]["last_lines"] == ["not run: this checkout has no `hf-vit-reduction evaluate` command"]
        assert result.returncode == 1 and "error: step evaluate failed" in result.stderr
    # The benchmark's six models, eager only; the loop's figure; the run's 8 updates of shallow.
    assert {(row["model"], row["mode"]) for row in report["benchmark"]["rows"]} == {
        (name, "eager") for name in ("baseline", "grouped", "shallow", "thin", "transformers", "timm")
    }
    assert 0 < report["loop"]["loop_vs_bare"] and report["loop"]["timed_updates"] == 4
    assert report["train"]["steps"] == 8 and report["train"]["strategy"] == "shallow"
    assert report["targets"]["loop_vs_bare_step"]["measured"] == report["loop"]["loop_vs_bare"]
    assert report["targets"]["compiled_vs_eager_worst"]["met"] is None  # nothing compiled in the smoke run
    assert (
        report["benchmark_mode"] == "eager" and "Targets (benchmark rows: eager)" in (out / "gpu-check.md").read_text()
    )
    estimate = report["h100_estimate"]
    assert estimate["seconds"] > sum(step["seconds"] for step in steps.values())
    # The two calls of a lent machine: together every step, the environment in each.
    assert {call: (c["skip"], sorted(c["steps"])) for call, c in estimate["calls"].items()} == {
        "call 1": (["train"], ["benchmark", "environment", "loop", "photos"]),
        "call 2": (["benchmark", "loop"], ["environment", "evaluate", "photos", "train"]),
    }
    assert estimate["seconds"] == sum(c["seconds"] for c in estimate["calls"].values())
    # The folder is ImageNet's layout: a folder per class of 500 x 375 JPEGs, 32 for training and 8 for validation.
    for split, count in (("train", 32), ("validation", 8)):
        images = sorted((work / "photos" / split).glob("*/*.jpg"))
        assert len(images) == count and len({image.parent.name for image in images}) == 2
        assert Image.open(images[0]).size == (500, 375)
    markdown = (out / "gpu-check.md").read_text()
    assert "| step | status | seconds |" in markdown and "| ViTReduced shallow | eager |" in markdown
    assert "H100 estimate for the GPU sizes:" in markdown


@pytest.mark.slow
def test_a_call_that_skips_the_training_run_writes_only_the_photos_the_loop_reads(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    result = gpu_check(out, work, "--skip", "benchmark", "loop", "train")
    assert result.returncode == 0, result.stderr[-2000:]  # skipped steps are not failures
    steps = json.loads((out / "gpu-check.json").read_text())["steps"]
    assert steps["benchmark"]["last_lines"] == ["not run: --skip benchmark"]
    assert steps["evaluate"]["last_lines"] == ["not run: --skip train"]
    # The CPU sizes' loop reads 16 training images (--max_train_samples); the run would read 32.
    assert len(list((work / "photos" / "train").glob("*/*.jpg"))) == 16
    assert len(list((work / "photos" / "validation").glob("*/*.jpg"))) == 8
