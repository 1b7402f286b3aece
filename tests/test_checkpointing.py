"""Fault tolerance: exact resume after SIGKILL, atomic checkpoints, the non-finite guard, no leaked secrets."""

import itertools
import json
import logging
import math
import os
import signal
import subprocess
import time

import pytest
from safetensors.torch import load_file
from script_runs import (
    ONE_PROCESS,
    ROOT,
    TWO_PROCESSES,
    environment,
    import_script,
    patched_script_command,
    run_command,
    script_command,
)

from hf_vit_reduction.training.checkpointing import CHECKPOINTS, TRAIN_STATE, checkpoints, resolve

# Mixup, EMA and (under two processes) repeated augmentation on; 8 updates per epoch, 2 epochs.
RUN = (
    "--max_train_samples",
    "256",
    "--max_eval_samples",
    "37",
    "--batch_size",
    "32",
    "--max_train_steps",
    "14",
    "--checkpointing_steps",
    "3",
    "--report_to",
    "none",
    "--mixup",
    "0.8",
    "--cutmix",
    "1.0",
    "--model_ema",
    "--model_ema_decay",
    "0.9",
)


def command(out, strategy, processes, workers, *extra):
    args = ("--strategy", strategy, "--output_dir", str(out), "--workers", str(workers))
    launcher = TWO_PROCESSES if processes == 2 else ONE_PROCESS
    return script_command([*args, *RUN, *extra], launcher)


def final_state(out):
    weights = load_file(out / "model.safetensors")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return weights, history


def assert_same_run(reference, resumed):
    weights, history = final_state(reference)
    again, again_history = final_state(resumed)
    assert weights.keys() == again.keys()
    for key in weights:
        assert weights[key].equal(again[key]), key  # bit for bit
    assert history == again_history


def kill_after_checkpoint(cmd, out, step):
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.time() + 240
    while not (out / CHECKPOINTS / f"step_{step:08d}").is_dir():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the whole launch: launcher and workers
    process.wait()
    assert not (out / "results.json").exists(), "killed too late: the run had finished"


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, processes, workers, kill_step",
    # Workers persist across epochs: killed in the second epoch, the resumed run starts its workers there afresh.
    [("baseline", 1, 2, 3), ("baseline", 1, 1, 9), ("grouped", 2, 0, 9)],
)
def test_resume_after_sigkill_is_exact(tmp_path, strategy, processes, workers, kill_step):
    reference = tmp_path / "reference"
    result = run_command(command(reference, strategy, processes, workers))
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = tmp_path / "resumed"
    kill_after_checkpoint(command(resumed, strategy, processes, workers), resumed, kill_step)
    result = run_command(command(resumed, strategy, processes, workers, "--resume_from_checkpoint", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    assert_same_run(reference, resumed)
    results = json.loads((resumed / "results.json").read_text())
    assert results["steps"] == 14 and results["num_processes"] == processes


# Replaces Accelerate's save_state from outside the script: the process dies right after Accelerate's files of
# checkpoint 9 are written, before ours (EMA, train state) and before the rename.
STOP_IN_CHECKPOINT_9 = """
import os
import accelerate
save_state = accelerate.Accelerator.save_state
def save_state_then_die(self, output_dir=None, **kwargs):
    save_state(self, output_dir, **kwargs)
    if output_dir.endswith("step_00000009"):
        os._exit(137)
accelerate.Accelerator.save_state = save_state_then_die
"""


@pytest.mark.slow
def test_kills_between_and_during_checkpoint_writes_resume_exactly(tmp_path):
    reference = tmp_path / "reference"
    assert run_command(command(reference, "grouped", 1, 0)).returncode == 0
    # Killed after the last checkpoint, before the results: resuming only finishes the run.
    history = final_state(reference)[1]
    (reference / "results.json").unlink()
    result = run_command(command(reference, "grouped", 1, 0, "--resume_from_checkpoint", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert final_state(reference)[1] == history
    assert json.loads((reference / "results.json").read_text())["steps"] == 14

    killed = tmp_path / "killed"
    kill_after_checkpoint(command(killed, "grouped", 1, 0), killed, 6)
    result = run_command(command(killed, "grouped", 1, 0, "--resume_from_checkpoint", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(reference, killed)

    out = tmp_path / "interrupted"
    args = command(out, "grouped", 1, 0)[2:]  # without the interpreter and the script
    result = run_command(patched_script_command(STOP_IN_CHECKPOINT_9, args))
    assert result.returncode == 137
    complete = ["step_00000003", "step_00000006", "step_00000008"]
    assert [p.name for p in checkpoints(out)] == complete
    assert (out / CHECKPOINTS / ".tmp-step_00000009").is_dir()  # half-written, ignored
    result = run_command(command(out, "grouped", 1, 0, "--resume_from_checkpoint", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step_00000008 at step 8" in result.stderr
    assert not list((out / CHECKPOINTS).glob(".tmp-*"))  # cleaned up on the next start
    assert_same_run(reference, out)
    # The newest three are kept, plus the best epoch's.
    kept = [p.name for p in checkpoints(out)]
    assert kept[-3:] == ["step_00000009", "step_00000012", "step_00000014"]
    assert len(kept) <= 4


# In-process and tiny (8 px digits): 6 updates per epoch, checkpoints every 2 updates.
TINY = (
    "--strategy",
    "thin",
    "--image_size",
    "8",
    "--max_train_samples",
    "48",
    "--max_eval_samples",
    "8",
    "--batch_size",
    "8",
    "--max_train_steps",
    "8",
    "--workers",
    "0",
    "--report_to",
    "none",
    "--mixup",
    "0.8",
    "--cutmix",
    "1.0",
    "--checkpointing_steps",
    "2",
)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch, caplog):
    script = import_script()
    build_train_criterion = script.build_train_criterion

    def nan_in_the_fifth_batch(args):
        criterion, calls = build_train_criterion(args), itertools.count(1)
        return lambda logits, targets: criterion(logits, targets) * (math.nan if next(calls) == 5 else 1.0)

    monkeypatch.setattr(script, "build_train_criterion", nan_in_the_fifth_batch)
    caplog.set_level(logging.INFO)
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as stop:
        script.main([*TINY, "--output_dir", str(out)])
    message = str(stop.value.code)
    assert message.startswith("error: non-finite loss (nan) at step 5; last good checkpoint:")
    assert message.endswith("step_00000004. Nothing was written after it.")
    assert [p.name for p in checkpoints(out)] == ["step_00000002", "step_00000004"]
    state = json.loads((out / CHECKPOINTS / "step_00000004" / TRAIN_STATE).read_text())
    assert state["step"] == 4
    assert not (out / "results.json").exists() and not (out / "model.safetensors").exists()
    # One log line per checkpoint, none of Accelerate's INFO lines.
    saved = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checkpoint ")]
    assert saved == [f"checkpoint {out / CHECKPOINTS / name}" for name in ("step_00000002", "step_00000004")]
    assert not [r for r in caplog.records if r.name.startswith("accelerate") and r.levelno < logging.WARNING]


@pytest.mark.slow
def test_a_previous_run_is_never_overwritten_silently(tmp_path):
    out = tmp_path / "run"
    assert run_command(command(out, "baseline", 1, 0, "--max_train_steps", "3")).returncode == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = run_command(command(out, "baseline", 1, 0))
    assert result.returncode == 1
    assert (
        "holds checkpoints of a previous run" in result.stderr and "--resume_from_checkpoint latest" in result.stderr
    )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    result = run_command(command(out, "baseline", 1, 0, "--max_train_steps", "4", "--overwrite_output_dir"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["steps"] == 4


def test_resume_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no checkpoint in"):
        resolve(tmp_path, "latest")
    with pytest.raises(ValueError, match=r"is not a complete checkpoint folder"):
        resolve(tmp_path, str(tmp_path / "nowhere"))
