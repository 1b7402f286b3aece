"""Fault tolerance: exact resume after SIGKILL, atomic checkpoints, the non-finite guard, no leaked secrets."""

import contextlib
import errno
import itertools
import json
import logging
import math
import os
import signal
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from script_runs import (
    ONE_PROCESS,
    SCRIPT,
    TWO_PROCESSES,
    PausedRun,
    patched_script_command,
    run_command,
    script_command,
)

from hf_vit_reduction.training import engine
from hf_vit_reduction.training.checkpointing import (
    CHECKPOINTS,
    TRAIN_STATE,
    CheckpointSaver,
    check_output_dir,
    check_same_run,
    checkpoints,
    resolve,
)
from hf_vit_reduction.training.outputs import DiskFullError
from hf_vit_reduction.training.preemption import PREEMPTED_EXIT_STATUS
from hf_vit_reduction.training.state import TrainState

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
    """SIGKILL to the whole launch (launcher and workers) right after checkpoint `step` is complete."""
    with PausedRun(cmd, out.with_name(f"{out.name}-pause"), step) as run:
        run.wait_until_paused()
        run.kill()
    assert not (out / "results.json").exists()


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
    script = engine
    build_train_criterion = script.build_train_criterion

    def nan_in_the_fifth_batch(**recipe):
        criterion, calls = build_train_criterion(**recipe), itertools.count(1)
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
    # No log line of its own per checkpoint (the progress bar and the evaluations are the run's screen), and none
    # of Accelerate's INFO lines.
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.getMessage().startswith("checkpoint ")]
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


def test_a_checkpoint_onto_a_full_disk_keeps_the_previous_one_complete(tmp_path, monkeypatch, make_model):
    accelerator = Accelerator(cpu=True)
    model = make_model("grouped")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    saver = CheckpointSaver(accelerator, tmp_path, ema=None, every="2", keep=3)
    first = saver.save(TrainState(step=2))
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model(pixel_values=torch.randn(2, 3, 32, 32)).logits.sum().backward()
    optimizer.step()

    def fill_the_disk(self, output_dir=None, **kwargs):
        (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 1000)  # what fit before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Accelerator, "save_state", fill_the_disk)
    with pytest.raises(DiskFullError) as error:
        saver.save(TrainState(step=4))
    size = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    assert str(error.value).startswith(
        f"no space left in {tmp_path / CHECKPOINTS} for checkpoint step_00000004: it needs about "
        f"{size / 1000:.1f} KB (the size of step_00000002), "
    )
    assert checkpoints(tmp_path) == [first] and not list((tmp_path / CHECKPOINTS).glob(".*"))
    monkeypatch.undo()
    assert saver.load(first).step == 2
    for name, tensor in model.state_dict().items():
        assert tensor.equal(saved[name]), name
    # Without a previous checkpoint, what was written before the disk filled is the lower bound.
    monkeypatch.setattr(Accelerator, "save_state", fill_the_disk)
    with pytest.raises(DiskFullError, match=r"for checkpoint step_00000002: it needs more than the 1.0 KB written"):
        CheckpointSaver(accelerator, tmp_path / "fresh", ema=None, every="2", keep=3).save(TrainState(step=2))


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError) as error:
        check_output_dir(tmp_path / "notes.txt", None, False)
    assert str(error.value) == (
        f"--output_dir={str(tmp_path / 'notes.txt')!r} is a file; allowed: a folder (new, or a previous run's)"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"


def fail_for_want_of_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("what", ["checkpoint", pytest.param("results.json", marks=pytest.mark.slow)])
def test_a_full_disk_ends_in_one_line_and_the_run_resumes_once_space_is_freed(tmp_path, monkeypatch, what):
    script = engine
    out = tmp_path / "run"
    if what == "checkpoint":
        save_state = Accelerator.save_state

        def disk_fills_in_checkpoint_4(self, output_dir=None, **kwargs):
            if output_dir.endswith("step_00000004"):
                (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 1000)
                fail_for_want_of_space()
            return save_state(self, output_dir, **kwargs)

        monkeypatch.setattr(Accelerator, "save_state", disk_fills_in_checkpoint_4)
    else:
        write_bytes = Path.write_bytes

        def disk_full_for_results(self, data):
            if self.name.startswith(".results.json."):
                fail_for_want_of_space()
            return write_bytes(self, data)

        monkeypatch.setattr(Path, "write_bytes", disk_full_for_results)
    argv = [*TINY, "--max_train_steps", "5", "--output_dir", str(out)]  # checkpoints 2, 4 and 5 (the last)
    with pytest.raises(SystemExit) as stop:
        script.main(argv)
    message = str(stop.value.code)
    last = "step_00000002" if what == "checkpoint" else "step_00000005"
    where = f"{out / CHECKPOINTS} for checkpoint step_00000004" if what == "checkpoint" else f"{out} for results.json"
    assert message.startswith(f"error: no space left in {where}: it needs ") and "\n" not in message
    assert message.endswith(
        f"is free there. The last complete checkpoint is {out / CHECKPOINTS / last}: free space, then rerun the same "
        "command with --resume_from_checkpoint latest"
    )
    assert checkpoints(out)[-1].name == last and not list((out / CHECKPOINTS).glob(".*"))
    assert not (out / "results.json").exists()
    monkeypatch.undo()
    script.main([*argv, "--resume_from_checkpoint", "latest"])
    assert json.loads((out / "results.json").read_text())["steps"] == 5


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 3 MB filesystem (tmpfs, mounted as root): room for one checkpoint of TINY's model (2.3 MB), not two."""
    folder = tmp_path / "small"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)]
    mounted = subprocess.run(mount, check=False, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_a_real_full_disk_keeps_the_last_checkpoint_and_the_run_resumes_exactly(tmp_path, small_filesystem):
    reference = tmp_path / "reference"
    assert run_command(script_command([*TINY, "--output_dir", str(reference)])).returncode == 0
    out = small_filesystem / "run"
    result = run_command(script_command([*TINY, "--output_dir", str(out)]))
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"error: no space left in {out / CHECKPOINTS} for checkpoint step_00000004: it needs about "
    )
    assert "(the size of step_00000002)" in line and "Traceback" not in result.stderr
    assert line.endswith(
        f"The last complete checkpoint is {out / CHECKPOINTS / 'step_00000002'}: free space, then rerun the same "
        "command with --resume_from_checkpoint latest"
    )
    assert [p.name for p in (out / CHECKPOINTS).iterdir()] == ["step_00000002"]  # nothing half-written left
    # Space is freed (the filesystem grows), the same command resumes and ends as the uninterrupted run.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_filesystem)], check=True)
    result = run_command(script_command([*TINY, "--output_dir", str(out), "--resume_from_checkpoint", "latest"]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    assert_same_run(reference, out)


def signal_at_step(script, monkeypatch, step: int, number=signal.SIGTERM):
    """The process gets `number` while update `step` is being logged, as from a scheduler."""
    log_update = script.log_update

    def log_then_signal(run, update):
        log_update(run, update)
        if update.step == step:
            os.kill(os.getpid(), number)

    monkeypatch.setattr(script, "log_update", log_then_signal)


@pytest.mark.parametrize("number", [signal.SIGUSR1, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_signal_ends_the_run_with_a_checkpoint_and_status_75_and_auto_resumes_it(tmp_path, monkeypatch, number):
    script = engine
    out = tmp_path / "run"
    # A signal is reason enough to save. Read every 2 updates: the signal at update 1's log (read at update 2) is
    # reduced with update 3 and read at update 4, where the run stops.
    argv = [*TINY, "--checkpointing_steps", "no", "--max_train_steps", "5", "--log_interval", "2"]
    argv += ["--output_dir", str(out)]
    signal_at_step(script, monkeypatch, 1, number)
    previous = signal.getsignal(number)
    with pytest.raises(SystemExit) as stop:
        script.main([*argv, "--resume_from_checkpoint", "auto"])  # nothing to resume yet: a fresh start
    assert stop.value.code == PREEMPTED_EXIT_STATUS == 75
    assert [p.name for p in checkpoints(out)] == ["step_00000004"]
    assert not (out / "results.json").exists()
    assert signal.getsignal(number) is previous  # the handler is given back
    monkeypatch.undo()
    # The requeued job runs the same command.
    script.main([*argv, "--resume_from_checkpoint", "auto"])
    assert json.loads((out / "results.json").read_text())["steps"] == 5
    # Another run's folder is refused in one line, before anything is written.
    before = (out / "args.json").read_text()
    with pytest.raises(SystemExit) as stop:
        script.main([*argv, "--lr", "0.5", "--resume_from_checkpoint", "auto"])
    assert str(stop.value.code).startswith(
        f"error: --resume_from_checkpoint auto: {out} holds checkpoints of another run (lr 0.002 there, 0.5 here); "
    )
    assert (out / "args.json").read_text() == before


def worker(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    """The training process of `rank` that `accelerate launch` started."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == str(rank) and SCRIPT in child.cmdline():
                return child
    raise AssertionError(f"no process of rank {rank}")


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory):
    """The uninterrupted two-process run that interrupted ones must end as, bit for bit."""
    out = tmp_path_factory.mktemp("two") / "reference"
    result = run_command(command(out, "grouped", 2, 0))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_signal_to_one_of_two_processes_checkpoints_both_and_resumes_exactly(tmp_path, two_process_reference):
    out = tmp_path / "run"
    with PausedRun(command(out, "grouped", 2, 0), tmp_path / "pause", 3) as launch:
        launch.wait_until_paused(ranks=(0, 1))
        worker(launch.process, rank=1).send_signal(signal.SIGTERM)  # as a scheduler would, to one process only
        launch.go_on()
        returncode, stderr = launch.wait()
    # The processes exit 75 once the checkpoint is complete (torchrun may end the second one first, with SIGTERM,
    # as it stops every process when one exits); torchrun (accelerate launch) reports any of that as status 1.
    assert returncode == 1 and "exitcode  : 75" in stderr
    (line,) = [line for line in stderr.splitlines() if "preempted (a signal on another process) at step" in line]
    step = int(line.split(" at step ")[1].split(":")[0])
    assert 3 <= step < 14 and checkpoints(out)[-1].name == f"step_{step:08d}"
    assert not (out / "results.json").exists()
    result = run_command(command(out, "grouped", 2, 0, "--resume_from_checkpoint", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {out / CHECKPOINTS / f'step_{step:08d}'} at step {step}" in result.stderr
    assert_same_run(two_process_reference, out)


@pytest.mark.slow
def test_a_lost_process_ends_the_other_and_the_run_resumes_exactly(tmp_path, two_process_reference):
    out = tmp_path / "run"
    with PausedRun(command(out, "grouped", 2, 0), tmp_path / "pause", 3) as launch:
        launch.wait_until_paused(ranks=(0, 1))
        survivor = worker(launch.process, rank=0)
        worker(launch.process, rank=1).kill()  # SIGKILL, as the kernel's OOM killer would
        launch.go_on()  # the survivor trains on, into an all-reduce with a lost process, until torchrun ends it
        returncode, stderr = launch.wait()
    assert not survivor.is_running() and not (out / "results.json").exists()
    assert returncode == 1
    assert "exitcode  : -9" in stderr and "Signal 9 (SIGKILL) received by PID" in stderr  # torchrun's report
    result = run_command(command(out, "grouped", 2, 0, "--resume_from_checkpoint", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(two_process_reference, out)


@pytest.mark.slow
def test_without_a_launcher_the_survivor_of_a_lost_process_ends_on_its_own_with_one_line(tmp_path):
    """Ranks started one by one (as SLURM's srun does), no torchrun agent to stop the survivor: gloo notices."""
    out = tmp_path / "run"
    port = str(free_port())
    with contextlib.ExitStack() as stack:
        ranks = [
            stack.enter_context(
                PausedRun(
                    command(out, "grouped", 1, 0),
                    tmp_path / "pause",
                    3,
                    RANK=str(rank),
                    LOCAL_RANK=str(rank),
                    WORLD_SIZE="2",
                    LOCAL_WORLD_SIZE="2",
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=port,
                )
            )
            for rank in (0, 1)
        ]
        ranks[0].wait_until_paused(ranks=(0, 1))
        ranks[1].kill()
        ranks[0].go_on()  # into the next update's all-reduce, where gloo finds the other process gone
        returncode, stderr = ranks[0].wait()
    assert returncode == 1 and "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: another process of the run was lost after update ")
    assert line.endswith(
        f"The last complete checkpoint is {checkpoints(out)[-1]}: find out why it ended (the launcher names it), "
        "then rerun the same command with --resume_from_checkpoint latest"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_auto_resume_tells_this_run_from_another(tmp_path):
    (tmp_path / CHECKPOINTS / "step_00000004").mkdir(parents=True)
    config = {"lr": 0.002, "scale": (0.6, 1.0), "workers": 2, "resume_from_checkpoint": None, "recipe": {"lr": {}}}
    (tmp_path / "args.json").write_text(json.dumps(config))
    requeued = config | {"workers": 8, "resume_from_checkpoint": "auto", "recipe": {"lr": {"source": "x"}}}
    check_same_run(tmp_path, requeued)  # another machine's cores: the same run
    with pytest.raises(ValueError) as error:
        check_same_run(tmp_path, config | {"lr": 0.5, "seed": 1})
    assert str(error.value) == (
        f"--resume_from_checkpoint auto: {tmp_path} holds checkpoints of another run (lr 0.002 there, 0.5 here, seed "
        "None there, 1 here); choose another --output_dir, pass --resume_from_checkpoint latest to continue it with "
        "these flags, or --overwrite_output_dir to start over"
    )
    assert resolve(tmp_path, "auto") == tmp_path / CHECKPOINTS / "step_00000004"
    assert resolve(tmp_path / "fresh", "auto") is None


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_a_process_whose_peers_never_arrive_ends_after_ddp_timeout_in_one_line(tmp_path, rank):
    """Rank 0 waits for the others to join its store, rank 1 to reach it: either way, one line naming the address."""
    out, port = tmp_path / "run", str(free_port())
    peers = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    result = run_command(
        command(out, "grouped", 1, 0, "--ddp_timeout", "3"), RANK=str(rank), LOCAL_RANK=str(rank), **peers
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"error: the run's other processes did not arrive at 127.0.0.1:{port} within --ddp_timeout 3 s"
    )
    assert line.endswith("or pass a longer --ddp_timeout") and not out.exists()
