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
    compile_seconds: float | None = None  # --torch_compile: this start's first update, graphs built (not restored)

    def wall_time(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def record_update(self, update: "Update") -> None:
        """Add an update's batches, every process's: the epoch's training loss is their mean."""
        self.loss_sum += update.loss_sum
        self.loss_count += update.batches
        self.seen += update.images

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
            "compile_seconds": self.compile_seconds,
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


@dataclass(frozen=True)
class Update:
    """One optimizer update as the host reads it: the mean loss over every process's batches, the images they
    trained on, whether any batch's loss was not finite, and whether any process was asked to stop."""

    step: int
    lr: float
    loss_sum: float  # over every process's batches
    batches: int  # batches of every process (grad_accum_steps x processes, fewer when a batch was all unreadable)
    images: int
    non_finite: bool
    preempted: bool

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.batches, 1)


class UpdateMeter:
    """The training loop's figures, kept on the device and read by the host once every few updates.

    Each batch adds its loss, its image count and whether its loss is finite to a small tensor on the device (no
    host sync); each update adds this process's preemption flag and reduces the tensor across processes once (one
    all-reduce, asynchronous on a GPU); `read()` copies every update since the last read to the host at once (the
    one host sync). The loop reads every --log_interval updates and before anything that evaluates, saves or ends.
    """

    FIELDS = ("loss_sum", "batches", "images", "non_finite", "preempted")

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.window = torch.zeros(len(self.FIELDS), device=accelerator.device)  # this process, this update
        self.pending: list[tuple[int, float, torch.Tensor]] = []  # (step, lr, reduced window) not yet read

    def add_batch(self, loss: torch.Tensor, images: int) -> None:
        loss = loss.detach().float().reshape(())
        self.window[0] += loss
        self.window[1] += 1
        self.window[2] += images
        self.window[3] += (~loss.isfinite()).float()

    def end_update(self, step: int, *, lr: float, preempted: bool) -> None:
        """Close update `step`: one all-reduce (a sum) of every process's window; none is read yet."""
        self.window[4] = float(preempted)
        self.pending.append((step, lr, self.accelerator.reduce(self.window, "sum")))  # reduce returns a copy
        self.window.zero_()

    def read(self) -> list[Update]:
        """The updates since the last read, in order, copied to the host together."""
        if not self.pending:
            return []
        rows = torch.stack([reduced for _, _, reduced in self.pending]).tolist()
        updates = [
            Update(
                step=step,
                lr=lr,
                loss_sum=loss_sum,
                batches=int(batches),
                images=int(images),
                non_finite=non_finite > 0,
                preempted=preempted > 0,
            )
            for (step, lr, _), (loss_sum, batches, images, non_finite, preempted) in zip(self.pending, rows)
        ]
        self.pending = []
        return updates


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
