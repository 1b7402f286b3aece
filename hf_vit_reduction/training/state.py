"""The training loop's bookkeeping: its state (what a checkpoint records) and its epoch/update arithmetic."""

import math
import time
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object

from .history import RunHistory

BAD_IMAGE_EXAMPLES = 10  # paths kept for the warning and train_state.json's `bad_train_examples`


@dataclass
class TrainState:
    """Everything a checkpoint records besides weights, optimizer and RNG states (train_state.json)."""

    step: int = 0
    seen: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    bad_train_images: list[str] = field(default_factory=list)  # each unreadable file once, however often drawn
    history: RunHistory = field(default_factory=RunHistory)
    elapsed_before: float = 0.0  # wall time of the runs this one resumed
    started: float = field(default_factory=time.time)

    def wall_time(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def record_batch(self, *, loss: float, images: int) -> None:
        self.loss_sum += loss
        self.loss_count += 1
        self.seen += images

    def note_bad_images(self, descriptions: list[str]) -> None:
        if descriptions:
            self.bad_train_images = list(dict.fromkeys(self.bad_train_images + descriptions))

    def mean_train_loss(self) -> float:
        return self.loss_sum / max(self.loss_count, 1)

    def end_epoch(self) -> None:
        self.loss_sum, self.loss_count = 0.0, 0

    def gather(self, accelerator) -> None:
        """Every process's unreadable files (each process draws its own part of the data), on every process."""
        gathered = gather_object([self.bad_train_images]) if accelerator.num_processes > 1 else [self.bad_train_images]
        self.bad_train_images = list(dict.fromkeys(path for paths in gathered for path in paths))

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "elapsed": self.wall_time(),
            "seen": self.seen,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "bad_train_count": len(self.bad_train_images),
            "bad_train_examples": self.bad_train_images[:BAD_IMAGE_EXAMPLES],
            "bad_train_images": self.bad_train_images,
            "history": self.history.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "TrainState":
        history = RunHistory()
        history.load_state_dict(state["history"])
        return cls(
            step=state["step"],
            seen=state["seen"],
            loss_sum=state["loss_sum"],
            loss_count=state["loss_count"],
            bad_train_images=list(state.get("bad_train_images", state["bad_train_examples"])),
            history=history,
            elapsed_before=state["elapsed"],
        )


def gathered_loss_and_images(accelerator, loss: torch.Tensor, images: int) -> tuple[float, int]:
    """The mean loss over every process and the images they trained on, in one host sync per batch."""
    local = torch.stack([loss.detach().float().reshape(()), torch.tensor(float(images), device=loss.device)])
    gathered = accelerator.gather(local.reshape(1, 2)).tolist()
    losses = [row[0] for row in gathered]
    return sum(losses) / len(losses), int(sum(row[1] for row in gathered))


@dataclass(frozen=True)
class UpdatePlan:
    """The epoch/update arithmetic of a run.

    An update is one optimizer step over `grad_accum_steps` batches. An epoch holds whole accumulation windows only
    (the batches of a last, partial window are not drawn), so updates never straddle epochs and a resume always
    starts at a window's first batch. A stream has no length: its one epoch is `max_train_steps` updates.
    """

    updates_per_epoch: int
    total_updates: int
    grad_accum_steps: int

    @classmethod
    def for_run(
        cls,
        *,
        images_per_process: int | None,
        batch_size: int,
        grad_accum_steps: int,
        epochs: int,
        max_train_steps: int | None,
        num_processes: int,
    ) -> "UpdatePlan":
        """`images_per_process` is what one process's sampler yields per epoch, None for a stream."""
        if images_per_process is None:
            updates_per_epoch = max_train_steps
        else:
            updates_per_epoch = images_per_process // batch_size // grad_accum_steps  # full batches only
        if updates_per_epoch < 1:
            window = batch_size * grad_accum_steps
            raise ValueError(
                f"one update takes {window} training images per process (--batch_size {batch_size} x "
                f"--grad_accum_steps {grad_accum_steps}), but each of the {num_processes} process(es) gets "
                f"{images_per_process} per epoch; lower --batch_size or --grad_accum_steps so that their product is "
                f"at most {images_per_process}"
            )
        total_updates = max_train_steps or epochs * updates_per_epoch
        return cls(updates_per_epoch, total_updates, grad_accum_steps)

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_updates / self.updates_per_epoch)

    @property
    def schedule_epochs(self) -> float:
        """The run's length in epochs for the LR schedule (fractional when max_train_steps ends mid-epoch)."""
        return self.total_updates / self.updates_per_epoch

    def epoch_end(self, epoch: int) -> int:
        """The update count at which `epoch` ends."""
        return min((epoch + 1) * self.updates_per_epoch, self.total_updates)

    def remaining_epochs(self, step: int) -> range:
        """The epochs left to a run that has done `step` updates; a finished run has none."""
        first = step // self.updates_per_epoch if step < self.total_updates else self.num_epochs
        return range(first, self.num_epochs)

    def batches_to_skip(self, epoch: int, step: int) -> int:
        """Batches of `epoch` already trained on by a run that has done `step` updates."""
        return max(step - epoch * self.updates_per_epoch, 0) * self.grad_accum_steps
