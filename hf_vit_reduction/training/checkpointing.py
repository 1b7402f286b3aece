"""Checkpoints that survive a kill at any moment: written aside, renamed into place, resumed exactly.

A checkpoint is a folder `OUTPUT_DIR/checkpoints/step_NNNNNNNN` holding Accelerate's `save_state` (model,
optimizer, loss scaler, every process's RNG states), the EMA weights (safetensors) and `train_state.json` (step,
history, counters). It is written under a hidden temporary name and renamed when every process has finished, so a
folder with a final name is always complete; leftovers of an interrupted write are removed on the next start.
"""

import itertools
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import skip_first_batches
from safetensors.torch import load_model, save_model

from .outputs import folder_size, human_size, jsonable, write_json, write_together
from .state import TrainState

CHECKPOINTS = "checkpoints"
TRAIN_STATE = "train_state.json"
EMA_WEIGHTS = "ema.safetensors"
_NAME = re.compile(r"^step_(\d{8})$")
logger = logging.getLogger(__name__)


def checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)), key=lambda p: p.name)


def remove_partial_checkpoints(output_dir) -> list[Path]:
    """Delete what an interrupted write left behind; complete checkpoints are never touched."""
    folder = Path(output_dir) / CHECKPOINTS
    partial = [p for p in folder.glob(".tmp-*")] if folder.is_dir() else []
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def check_output_dir(output_dir, resume_from_checkpoint, overwrite_output_dir) -> None:
    """Refuse a file as the output folder, and a previous run's checkpoints unless told to resume or to overwrite."""
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"--output_dir={str(output_dir)!r} is a file; allowed: a folder (new, or a previous run's)")
    existing = checkpoints(output_dir)
    if not existing or resume_from_checkpoint:
        return  # "auto" compares the runs once this one's configuration is known (check_same_run)
    if overwrite_output_dir:
        shutil.rmtree(Path(output_dir) / CHECKPOINTS, ignore_errors=True)  # every process may get here
        return
    raise ValueError(
        f"output_dir={str(output_dir)!r} holds checkpoints of a previous run (latest: {existing[-1].name}). "
        "Pass --resume_from_checkpoint latest to continue it, choose another --output_dir, or pass "
        "--overwrite_output_dir to start over."
    )


AUTO = "auto"
# Flags that manage a run rather than define it: a requeued command may differ in these (the workers follow the
# cores of the machine it lands on).
RUN_MANAGEMENT = (
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "workers",
    "pin_mem",
    "report_to",
    "log_interval",
    "ddp_timeout",
    "torch_compile",
    "torch_compile_mode",
)


def resolve(output_dir, resume_from_checkpoint: str) -> Path | None:
    """The checkpoint to resume: a folder, the latest, or with "auto" the latest if any (None: start fresh)."""
    if resume_from_checkpoint == AUTO:
        existing = checkpoints(output_dir)
        return existing[-1] if existing else None
    if resume_from_checkpoint == "latest":
        existing = checkpoints(output_dir)
        if not existing:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint in {Path(output_dir) / CHECKPOINTS}")
        return existing[-1]
    path = Path(resume_from_checkpoint)
    if not (path / TRAIN_STATE).is_file():
        raise ValueError(f"--resume_from_checkpoint={resume_from_checkpoint!r} is not a complete checkpoint folder")
    return path


def check_same_run(output_dir, run_config: dict) -> None:
    """For --resume_from_checkpoint auto: refuse checkpoints that another run (another args.json) wrote."""
    saved_path = Path(output_dir) / "args.json"
    if not checkpoints(output_dir) or not saved_path.is_file():
        return
    saved, current = (_defining(config) for config in (json.loads(saved_path.read_text()), jsonable(run_config)))
    differing = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
    if differing:
        shown = ", ".join(f"{key} {saved.get(key)!r} there, {current.get(key)!r} here" for key in differing[:3])
        raise ValueError(
            f"--resume_from_checkpoint auto: {output_dir} holds checkpoints of another run ({shown}"
            f"{', ...' if len(differing) > 3 else ''}); choose another --output_dir, pass --resume_from_checkpoint "
            "latest to continue it with these flags, or --overwrite_output_dir to start over"
        )


def _defining(config: dict) -> dict:
    """A run's configuration without the flags that only manage it. The recipe's values are flags as well, so its
    record of where each came from is left out too."""
    return {key: value for key, value in config.items() if key not in (*RUN_MANAGEMENT, "recipe")}


class CheckpointSaver:
    """Writes a run's checkpoints and keeps the newest `keep` of them plus the best epoch's (as timm's saver).

    `every` is the --checkpointing_steps value: "N" (every N updates and at each epoch's end), "epoch" or "no".
    """

    def __init__(self, accelerator, output_dir, *, ema, every: str, keep: int):
        self.accelerator = accelerator
        self.folder = Path(output_dir) / CHECKPOINTS
        self.ema = ema
        self.enabled = every != "no"
        self.every = int(every) if every.isdigit() else 0
        self.keep = keep

    def due(self, step: int) -> bool:
        """Whether update `step` ends a --checkpointing_steps interval."""
        return bool(self.every) and step % self.every == 0

    def latest(self) -> Path | None:
        existing = checkpoints(self.folder.parent)
        return existing[-1] if existing else None

    def resume_hint(self, first: str) -> str:
        """Where a run that stopped early goes on from, after `first` (what the user does about the cause)."""
        latest = self.latest()
        if latest is None:
            return f"No checkpoint was written: {first}, then start the run again"
        return f"The last complete checkpoint is {latest}: {first}, then rerun the same command with " + (
            "--resume_from_checkpoint latest"
        )

    def saved(self, step: int) -> Path | None:
        """The complete checkpoint of update `step`, if there is one."""
        path = self.folder / f"step_{step:08d}"
        return path if path in checkpoints(self.folder.parent) else None

    def save(self, state: TrainState, *, force: bool = False) -> Path | None:
        """Write checkpoint `state.step` under a temporary name and rename it when every process is done.

        Nothing with --checkpointing_steps no, unless `force` (a preemption)."""
        if not (self.enabled or force):
            return None
        accelerator = self.accelerator
        state.gather(accelerator)
        final = self.folder / f"step_{state.step:08d}"
        temporary = self.folder / f".tmp-step_{state.step:08d}"

        def make_folder():
            if accelerator.is_main_process:
                shutil.rmtree(temporary, ignore_errors=True)
                temporary.mkdir(parents=True)

        def write():
            accelerator.save_state(str(temporary), safe_serialization=True)
            if accelerator.is_main_process:
                if self.ema is not None:
                    # save_model stores a shared MLP once (a grouped model lists it under each block of its group).
                    save_model(self.ema.module, str(temporary / EMA_WEIGHTS), force_contiguous=True)
                write_json(temporary / TRAIN_STATE, state.state_dict())

        # Each step is agreed by every process (a barrier as well): a full disk stops all of them together, the
        # half-written folder is removed and the previous checkpoint stays as it was.
        try:
            for step in (make_folder, write):
                write_together(
                    accelerator, step, folder=self.folder, what=f"checkpoint {final.name}", needed=self._needed
                )
        except BaseException:
            if accelerator.is_main_process:
                shutil.rmtree(temporary, ignore_errors=True)
            raise
        if accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(temporary, final)
            _fsync_dir(self.folder)
            self._remove_old(best_step=state.history.peak["step"] if state.history.rows else None)
            logger.debug("checkpoint %s", final)
        accelerator.wait_for_everyone()
        return final

    def _needed(self) -> str:
        """The space a checkpoint needs: the previous one's size, else more than what this one wrote before failing."""
        previous = self.latest()
        if previous is not None:
            return f"about {human_size(folder_size(previous))} (the size of {previous.name})"
        written = sum(folder_size(p) for p in self.folder.glob(".tmp-*"))
        return f"more than the {human_size(written)} written before the disk filled"

    def _remove_old(self, best_step: int | None) -> None:
        for old in checkpoints(self.folder.parent)[: -self.keep]:
            if best_step is None or old.name != f"step_{best_step:08d}":
                shutil.rmtree(old)

    def load(self, path: Path) -> TrainState:
        """Restore model, optimizer, scaler, RNG states and EMA; return the saved train state."""
        self.accelerator.load_state(str(path))
        if self.ema is not None:
            module = self.ema.module
            load_model(module, str(path / EMA_WEIGHTS), device=str(next(module.parameters()).device))
        return TrainState.from_state_dict(json.loads((path / TRAIN_STATE).read_text()))


def skip_batches(loader, count: int):
    """The loader's batches after the first `count`, as if those had just been consumed.

    Without workers the main process's RNG must not see the skipped transforms, so they are skipped by index;
    with workers they are replayed, so that each worker's RNG advances exactly as in the uninterrupted run.
    """
    if count == 0:
        return loader
    if loader.num_workers == 0 and not isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return skip_first_batches(loader, count)
    return itertools.islice(loader, count, None)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
