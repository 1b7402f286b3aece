import json
import subprocess
import sys

import pytest
from test_report import CURVES, make_run

from hf_vit_reduction.study import reproduce as reproduce_module
from hf_vit_reduction.study.reproduce import main, reproduce, training_command

TINY = ["--max_train_steps", "2", "--workers", "0", "--max_eval_samples", "64"]


def test_training_command_resumes_a_stopped_run(tmp_path):
    run_dir = tmp_path / "shallow-seed1"
    fresh = training_command("shallow", 1, run_dir, ["--epochs", "3"])
    assert fresh == [
        sys.executable,
        "-m",
        "hf_vit_reduction",
        "train",
        "--strategy",
        "shallow",
        "--seed",
        "1",
        "--output_dir",
        str(run_dir),
        "--report_to",
        "none",
        "--epochs",
        "3",
    ]
    (run_dir / "checkpoints" / "step_00000022").mkdir(parents=True)
    resumed = training_command("shallow", 1, run_dir, ["--epochs", "3"])
    assert resumed == fresh[:-2] + ["--resume_from_checkpoint", "latest", "--epochs", "3"]


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_finished_runs_are_kept_and_reported(tmp_path, monkeypatch):
    output = tmp_path / "reproduction"
    for (strategy, seed), curve in CURVES.items():
        if seed < 2:
            make_run(output / "runs" / f"{strategy}-seed{seed}", strategy, seed, curve)
    (output / "reproduce.json").write_text(json.dumps({"training_arguments": []}))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(subprocess, "Popen", no_training)
    report = reproduce(output, ["baseline", "shallow"], [0, 1], [])
    assert list(report["strategies"]) == ["baseline", "shallow"]
    assert report["strategies"]["shallow"]["t_test"]["pairs"] == 2
    assert (output / "report" / "report.md").is_file() and not any((output / "logs").iterdir())


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--output_dir", "{tmp}/busy"], "error: --output_dir '{tmp}/busy' is in use: it is not empty and holds no"),
        (
            ["--output_dir", "{tmp}/earlier", "--", "--epochs", "3"],
            "error: --output_dir '{tmp}/earlier' holds a reproduction",
        ),
        (["--output_dir", "{tmp}/new", "--", "--seed", "3"], "error: --seed after '--' is set by the reproduction"),
        (["--output_dir", "{tmp}/new", "--", "--output_dir={tmp}/x"], "error: --output_dir after '--' is set by"),
        (
            ["--output_dir", "{tmp}/new", "--seeds", "0", "0"],
            "error: --strategies ['baseline', 'grouped', 'shallow', 'thin']",
        ),
        (
            ["--output_dir", "{tmp}/new", "--strategies", "wide"],
            "error: argument --strategies: invalid choice: 'wide'",
        ),
        (["--strategies", "thin"], "error: the following arguments are required: --output_dir"),
    ],
)
def test_bad_inputs_end_in_one_error_line(arguments, message, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "reproduce.json").write_text(json.dumps({"training_arguments": ["--epochs", "5"]}))
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tmp=tmp_path) for a in arguments])
    text = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert text.startswith(message.format(tmp=tmp_path)) and text.count("\n") == 1
    assert not (tmp_path / "new").exists() and (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_failed_run_stops_the_reproduction_naming_its_log(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SystemExit) as exit_info:
        main(["--output_dir", str(tmp_path / "out"), "--strategies", "thin", "--", "--train_dir", str(missing)])
    log = tmp_path / "out" / "logs" / "thin-seed0.log"
    message = str(exit_info.value)
    assert message.startswith("error: run thin-seed0 failed (exit status 1): error: ") and str(missing) in message
    assert message.endswith(f"(log: {log}); rerun the same command to continue")


@pytest.mark.slow
def test_a_tiny_real_reproduction_then_a_rerun_that_trains_nothing(tmp_path, monkeypatch):
    output = tmp_path / "reproduction"
    report = main(["--output_dir", str(output), "--strategies", "baseline", "shallow", "--seeds", "0", "--", *TINY])
    assert list(report["strategies"]) == ["baseline", "shallow"] and report["left_out"] == []
    for strategy in ("baseline", "shallow"):
        results = json.loads((output / "runs" / f"{strategy}-seed0" / "results.json").read_text())
        assert results["steps"] == 2 and results["seed"] == 0 and results["eval_samples"] == 64
        assert report["strategies"][strategy]["top1"]["values"] == [results["final_top1"]]
    assert report["strategies"]["shallow"]["t_test"]["note"].startswith("needs at least 2 seeds")
    markdown = (output / "report" / "report.md").read_text()
    assert "| shallow | 0 | 142,026 |" in markdown
    logs = {path.name: path.read_text() for path in (output / "logs").iterdir()}
    assert set(logs) == {"baseline-seed0.log", "shallow-seed0.log"}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(reproduce_module.subprocess, "Popen", no_training)
    again = main(["--output_dir", str(output), "--strategies", "baseline", "shallow", "--seeds", "0", "--", *TINY])
    assert again["strategies"]["baseline"]["top1"] == report["strategies"]["baseline"]["top1"]
